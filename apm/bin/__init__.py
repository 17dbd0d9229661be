"""Command-line tools, one module each (`python -m apm.bin.<tool> --help`)."""
