"""The package version, in a module of its own so that modules can read it without the root."""

__version__ = "0.1.0"
