"""Use a trained system: model packages (`package`), language identification of new audio
(`identifier`) and network export (`export`)."""
