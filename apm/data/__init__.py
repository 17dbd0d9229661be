"""Kaldi data dirs, OLR trials, lhotse manifests and training datasets."""
