"""Loaders for the public data-set formats the models are trained on (FER2013 / FER+, UTKFace)."""
from training.data.cache import DataFormatError

__all__ = ["DataFormatError"]
