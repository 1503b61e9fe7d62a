"""collapse: recursive-training studies of model collapse."""

__version__ = "0.1.0"
