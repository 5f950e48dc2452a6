"""The package version, where every layer may read it (the package root imports the whole API)."""

__version__ = "0.2.0"
