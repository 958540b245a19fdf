"""Labelled images (in memory, or image files decoded on demand: ``ImageFiles``) and deterministic
train/val/test splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .file_check import SkippedFile
from .image_files import ImageFiles

UNLABELLED = -1  # the label of every sample of an unlabelled set (images straight in a folder)


class Labeled:
    """What every split shares (images or texts): int64 ``labels`` indexing ``classes``, or all ``UNLABELLED``
    for data without labels (then only agreement with a reference can be measured, not accuracy)."""

    labels: np.ndarray
    classes: list[str]

    def _check_labels(self, samples: int, what: str) -> None:
        if samples != len(self.labels):
            raise DataError(f"{samples} {what} but {len(self.labels)} labels")
        if not len(self.labels) or (self.labels == UNLABELLED).all():
            return
        if self.labels.min() < 0 or self.labels.max() >= len(self.classes):
            raise DataError(f"labels must lie in [0, {len(self.classes)}), found {self.labels.min()}..{self.labels.max()}")

    @property
    def labelled(self) -> bool:
        return not (len(self.labels) and (self.labels == UNLABELLED).all())

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        if not self.labelled:
            return {}
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}


@dataclass
class LabeledImages(Labeled):
    """uint8 images (N, H, W, C) with int64 labels and the class names they index. ``images`` is an array in
    memory, or ``ImageFiles`` (an image folder: decoded on demand, indexed like the array)."""

    images: np.ndarray | ImageFiles
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.images, (np.ndarray, ImageFiles)):
            raise DataError(f"images must be a uint8 array (N, H, W, C) or ImageFiles, got {type(self.images).__name__}")
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        self._check_labels(len(self.images), "images")

    def subset(self, indices: np.ndarray) -> "LabeledImages":
        """The rows ``indices``; image files stay files (a lazy view sharing their cache)."""
        images = self.images.subset(indices) if isinstance(self.images, ImageFiles) else self.images[indices]
        return LabeledImages(images, self.labels[indices], self.classes)


@dataclass
class Splits:
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    # Files of an image folder left out because they are not readable images (data.on_bad_file = "skip");
    # ``edgetl.data.describe_skipped`` words them for the run's log.
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def stratified_indices(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of each class, chosen by ``seed``; all of them when None."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        chosen.append(idx if per_class is None else idx[:per_class])
    out = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    rng.shuffle(out)
    return out


def split_stratified(data: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """Split off ``fraction`` of every class (at least one item per class when it has two or more)."""
    rng = np.random.default_rng(seed)
    held, kept = [], []
    for cls in np.unique(data.labels):  # UNLABELLED data splits as one group
        idx = np.flatnonzero(data.labels == cls)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return data.subset(np.sort(np.concatenate(kept))), data.subset(np.sort(np.concatenate(held)))


def load_splits(config, preprocess=None) -> Splits:
    """Load the recipe's data source (images resized by ``preprocess``) and split it deterministically."""
    from .registry import SOURCES  # complete: edgetl.data imported every source module first

    return SOURCES.get(config.source)(config, preprocess)
