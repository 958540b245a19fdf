"""Labelled datasets and their sources: Fashion-MNIST (IDX files), image folders, text files and banking77;
deterministic splits. ``SOURCES`` (``data.source`` names) is complete once this package is imported."""

from . import sources, text  # noqa: F401  (each registers its sources)
from .dataset import LabeledImages, Splits, load_splits
from .registry import SOURCES
from .text import LabeledTexts

__all__ = ["SOURCES", "LabeledImages", "LabeledTexts", "Splits", "load_splits"]
