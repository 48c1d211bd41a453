"""The `mmf-fashion` command line (see main.py)."""
