"""Numba's threading layer for crfcore (placeholder, chosen by measurement)."""


def configure():
    """Called before crfcore's first parallel launch."""
