"""Image data sources, registered by name: ``fashion-mnist`` (IDX files, small: decoded into memory) and ``folder``
(one sub-folder per class: files checked when listed, decoded on demand). The text sources are in ``text.py``."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, RecipeError
from ..preprocess.image import IMAGE_SUFFIXES
from .dataset import UNLABELLED, LabeledImages, Splits, split_stratified, stratified_indices
from .file_check import SkippedFile, check_files
from .image_files import DecodedCache, ImageFiles
from .registry import source

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
_REINSTALL = "reinstall them (`apt-get install --reinstall dataset-fashion-mnist`) or point data.path at intact copies"

# -- Fashion-MNIST ------------------------------------------------------------------------


def find_fashion_mnist(path: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files: ``path``, $EDGETL_FASHION_MNIST, or Debian's location."""
    # A folder the user names is the only place looked at: a wrong data.path is an error, not a fallback.
    named = path or os.environ.get("EDGETL_FASHION_MNIST")
    candidates = [Path(named)] if named else [Path(p) for p in FASHION_MNIST_DIRS]
    for folder in candidates:
        if _idx_file(folder, "train-images-idx3-ubyte") is not None:
            return folder
    raise DataError(
        f"Fashion-MNIST IDX files not found in {', '.join(map(str, candidates))}; "
        "install them with `apt-get install dataset-fashion-mnist` or set data.path to a folder holding "
        "train-images-idx3-ubyte(.gz) and its three siblings"
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; the file may be truncated, {_REINSTALL}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); {_REINSTALL}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} ends inside its IDX header; the file is truncated, {_REINSTALL}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {data.size} values but its header says {shape}; the file is truncated, "
                        f"{_REINSTALL}")
    return data.reshape(shape)


def read_fashion_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    files = {kind: _idx_file(folder, f"{prefix}-{kind}-idx{dim}-ubyte") for kind, dim in (("images", 3), ("labels", 1))}
    for kind, file in files.items():
        if file is None:
            raise DataError(f"{folder} lacks {prefix}-{kind} IDX file; {_REINSTALL}")
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    for kind, array, ndim, wanted in (("images", images, 3, "28x28 images"), ("labels", labels, 1, "labels")):
        if array.ndim != ndim:
            raise DataError(f"{files[kind]} holds a {array.ndim}-d array, not {wanted}; are the IDX files swapped? "
                            f"{_REINSTALL}")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {prefix} images but {len(labels)} labels; the IDX files do not "
                        f"belong together, {_REINSTALL}")
    return images, labels.astype(np.int64)


@source("fashion-mnist", "image")
def fashion_mnist_splits(config, preprocess) -> Splits:
    """Train/val from the official training set (stratified subset), test from the official test set."""
    folder = find_fashion_mnist(config.path or None)
    train_images, train_labels = read_fashion_mnist(folder, "train")
    test_images, test_labels = read_fashion_mnist(folder, "test")
    per_class = config.train_per_class + config.val_per_class if config.train_per_class else None
    pool = stratified_indices(train_labels, per_class, config.seed)
    train_val = _resized(train_images[pool], train_labels[pool], preprocess)
    train, val = split_stratified(train_val, _val_fraction(config, per_class), config.seed)
    test_idx = stratified_indices(test_labels, config.test_per_class or None, config.seed)
    test = _resized(test_images[np.sort(test_idx)], test_labels[np.sort(test_idx)], preprocess)
    return Splits(train, val, test)


def _val_fraction(config, per_class: int | None) -> float:
    if per_class:
        return config.val_per_class / per_class
    return config.val_fraction


def _resized(images: np.ndarray, labels: np.ndarray, preprocess) -> LabeledImages:
    resized = np.stack([preprocess.resize_image(image) for image in images])
    return LabeledImages(resized, labels, list(FASHION_MNIST_CLASSES))


# -- image folders --------------------------------------------------------------------------


def scan_image_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and labels of an image-folder dataset: ``root/<class>/<image>``, classes sorted by name; images
    straight in ``root`` (no class sub-folders) are unlabelled (labels ``UNLABELLED``, no classes)."""
    if not root.is_dir():
        problem = f"image folder {root} is a file" if root.exists() else f"image folder not found: {root}"
        raise DataError(f"{problem}; data.path must be a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not classes and loose:  # images straight in the folder: unlabelled (a source model is held to agreement)
        return loose, np.full(len(loose), UNLABELLED, dtype=np.int64), []
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class sub-folder(s); an image folder needs at least 2, one "
                        f"sub-folder per class holding its images ({root}/<class>/<image>.jpg)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"class folder {root / name} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


@source("folder", "image")
def folder_splits(config, preprocess) -> Splits:
    """One sub-folder per class; val and test split off deterministically (or read from train/val/test). The
    images stay files, decoded on demand (``ImageFiles``, one cache of ``data.cache_mb`` for all splits); files
    that fail the listing check are skipped and named in ``Splits.skipped`` (``data.on_bad_file``)."""
    if not config.path:
        raise RecipeError("data.path: the folder source needs a path to a folder with one sub-folder per class")
    root = Path(config.path)
    reader = FolderReader(preprocess, config.on_bad_file, DecodedCache.of_mb(config.cache_mb))
    if all((root / part).is_dir() for part in ("train", "test")):
        train_val = reader.load(root / "train")
        test = reader.load(root / "test", train_val.classes)
        if (root / "val").is_dir():
            return Splits(train_val, reader.load(root / "val", train_val.classes), test, reader.skipped)
        train, val = split_stratified(train_val, config.val_fraction, config.seed)
        return Splits(train, val, test, reader.skipped)
    data = reader.load(root)
    rest, test = split_stratified(data, config.test_fraction, config.seed)
    train, val = split_stratified(rest, config.val_fraction / (1 - config.test_fraction), config.seed + 1)
    return Splits(train, val, test, reader.skipped)


@dataclass
class FolderReader:
    """Reads image folders with one preprocessing: lists and checks the files (``check_files``), keeps the
    readable ones as ``ImageFiles`` sharing ``cache``, and collects the skipped ones in ``skipped``."""

    preprocess: Any
    on_bad_file: str = "skip"
    cache: DecodedCache = field(default_factory=lambda: DecodedCache.of_mb(1024))
    skipped: list[SkippedFile] = field(default_factory=list)

    def load(self, root: Path, expected_classes: list[str] | None = None) -> LabeledImages:
        files, labels, classes = scan_image_folder(root)
        if expected_classes is not None and classes != expected_classes:
            raise DataError(f"{root} has classes {classes} but the training folder has {expected_classes}; give it "
                            "the same class sub-folders")
        passed, skipped = check_files(files, self.on_bad_file)
        if skipped:
            self.skipped += skipped
            files, labels = [f for f, ok in zip(files, passed) if ok], labels[passed]
            _require_readable(root, labels, classes, len(skipped))
        return LabeledImages(ImageFiles(files, self.preprocess, cache=self.cache), labels, classes)


def _require_readable(root: Path, labels: np.ndarray, classes: list[str], skipped: int) -> None:
    """A DataError when skipping left a class (or an unlabelled folder) without a single readable image."""
    empty = [name for label, name in enumerate(classes) if not (labels == label).any()]
    if empty or not len(labels):
        where = root / empty[0] if empty else root
        raise DataError(f"{where} has no readable images ({skipped} unreadable file(s) skipped in {root}); replace "
                        "them with valid PNG/JPEG files")


def _load_folder(root: Path, preprocess, expected_classes: list[str] | None = None) -> LabeledImages:
    """One image folder with the default settings (unreadable files skipped, a 1 GB cache)."""
    return FolderReader(preprocess).load(root, expected_classes)
