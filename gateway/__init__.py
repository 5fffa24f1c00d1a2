"""Bluezone entrance gateway."""

__version__ = "0.1.0"
