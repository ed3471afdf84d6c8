"""The version, in a room of its own: low modules read it without importing the package face."""

__version__ = "0.1.0"
