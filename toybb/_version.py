"""The package version (read by the run records and `toybb --version`)."""

__version__ = "0.1.0"
