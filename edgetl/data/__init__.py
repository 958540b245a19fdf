"""Labelled datasets and their sources: Fashion-MNIST (IDX files), image folders (files decoded on demand:
``ImageFiles``; unreadable ones skipped and named: ``Splits.skipped``, ``describe_skipped``), text files and
banking77; deterministic splits. ``SOURCES`` (``data.source`` names) is complete once this package is imported."""

from . import sources, text  # noqa: F401  (each registers its sources)
from .dataset import LabeledImages, Splits, load_splits
from .file_check import SkippedFile, describe_skipped
from .image_files import DecodedCache, ImageFiles
from .registry import SOURCES
from .text import LabeledTexts

__all__ = ["SOURCES", "DecodedCache", "ImageFiles", "LabeledImages", "LabeledTexts", "SkippedFile", "Splits",
           "describe_skipped", "load_splits"]
