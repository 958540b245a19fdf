"""Labelled datasets: Fashion-MNIST (IDX files), image folders, deterministic splits, preprocessing."""

from .dataset import LabeledImages, Splits, load_splits
from .preprocess import Preprocess

__all__ = ["LabeledImages", "Splits", "Preprocess", "load_splits"]
