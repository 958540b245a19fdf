"""Image files read as the uint8 (N, H, W, C) array they stand for: decoded and resized on demand, never all at
once, with a bounded LRU cache of decoded images.

``ImageFiles`` is what an image folder's split holds in ``LabeledImages.images``: ``len``, ``shape``, ``dtype``,
``ndim`` and indexing by an int, a slice, an int array or a boolean mask give what the eager array would (a
real uint8 ndarray; an int gives one image (H, W, C)), so quantizer calibration, validation slices and training
batches need not know which one they hold. ``subset`` is another lazy view over the same files and cache.
``np.asarray(files)`` and ``files.astype(...)`` decode everything: for small sets and tests only.

Only numpy and Pillow (through ``ImagePreprocess``): no torch here. Decoding in DataLoader worker processes while
training is ``edgetl.train.image_loader``.

>>> images = ImageFiles(["a.jpg", "b.png"], ImagePreprocess(image_size=224), cache=DecodedCache.of_mb(64))
>>> images[[1, 0]].shape
(2, 224, 224, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

_MB = 2**20


class DecodedCache:
    """Least-recently-used decoded images, keyed by file path, at most ``limit_bytes`` of pixels in all (0: keep
    nothing). One cache serves one preprocessing: every view of one loaded folder shares it, so the bound holds
    for the whole dataset, not per split. ``hits`` and ``misses`` count lookups (a miss is one decode)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(0, int(limit_bytes))
        self.nbytes = 0
        self.hits = self.misses = 0
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def of_mb(cls, megabytes: int) -> DecodedCache:
        return cls(int(megabytes) * _MB)

    def get(self, key: str) -> np.ndarray | None:
        image = self._images.get(key)
        if image is None:
            self.misses += 1
            return None
        self.hits += 1
        self._images.move_to_end(key)
        return image

    def peek(self, key: str) -> bool:
        """Whether ``key`` is cached, without counting a lookup or refreshing its place."""
        return key in self._images

    def put(self, key: str, image: np.ndarray) -> None:
        if image.nbytes > self.limit_bytes or key in self._images:
            return
        image.setflags(write=False)  # callers get copies; the cached pixels never change
        self._images[key] = image
        self.nbytes += image.nbytes
        while self.nbytes > self.limit_bytes:
            _, evicted = self._images.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._images)

    def __getstate__(self) -> dict[str, Any]:  # a copy sent to another process starts empty
        return {"limit_bytes": self.limit_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["limit_bytes"])


class ImageFiles:
    """A lazy uint8 (N, size, size, channels) array over image files: row i is ``preprocess.resize_image(files[i])``.

    ``files`` should have passed ``edgetl.data.file_check`` (a folder source checks them when it lists them): a
    file that fails to decode later has changed since, and is a ``DataError`` naming it whatever
    ``data.on_bad_file`` says, because a training batch cannot silently lose a row.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, files: Sequence[str | os.PathLike] | np.ndarray, preprocess, *,
                 cache: DecodedCache | None = None) -> None:
        self.files = np.asarray([str(f) for f in files], dtype=object)
        self.preprocess = preprocess
        self.cache = cache if cache is not None else DecodedCache(0)

    # -- what the eager array has ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        size, channels = self.preprocess.image_size, self.preprocess.channels
        return (len(self.files), size, size, channels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Any) -> np.ndarray:
        """An int -> one image (H, W, C); a slice, int array/list or boolean mask -> a batch (n, H, W, C), rows in
        the order asked (repeats allowed); a tuple indexes the decoded images further (``files[:, :16, :16]``)."""
        if isinstance(key, tuple):
            rows, rest = (key[0], key[1:]) if key else (slice(None), ())
            selected = self[rows]
            return selected[rest] if selected.ndim == 3 else selected[(slice(None), *rest)]
        rows = self._rows(key)
        if np.ndim(rows) == 0:
            return self._image(int(rows)).copy()
        batch = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for out, row in enumerate(rows):
            batch[out] = self._image(int(row))
        return batch

    def __iter__(self) -> Iterator[np.ndarray]:
        for row in range(len(self)):
            yield self[row]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every image decoded into one array: what the lazy array avoids; for small sets and tests."""
        array = self[:]
        return array if dtype is None else array.astype(dtype)

    def astype(self, dtype, **kwargs) -> np.ndarray:
        """Every image decoded, as ``dtype`` (``ImagePreprocess.normalize(split.images)`` on a small split)."""
        return self[:].astype(dtype, **kwargs)

    def __repr__(self) -> str:
        return (f"ImageFiles({len(self)} files -> uint8 {self.shape}, cache {len(self.cache)} images "
                f"/ {self.cache.limit_bytes // _MB} MB)")

    # -- views ---------------------------------------------------------------------------------------
    def subset(self, indices: Any) -> ImageFiles:
        """The rows ``indices`` (as ``__getitem__`` takes them), lazily, sharing this cache."""
        rows = self._rows(indices)
        return ImageFiles(self.files[np.atleast_1d(rows)], self.preprocess, cache=self.cache)

    def uncached(self) -> ImageFiles:
        """The same files without a cache (what a DataLoader worker decodes with: the cache stays in one process)."""
        return ImageFiles(self.files, self.preprocess)

    def is_cached(self, row: int) -> bool:
        return self.cache.peek(self.files[row])

    def remember(self, row: int, image: np.ndarray) -> None:
        """Put row ``row``'s decoded ``image`` (decoded elsewhere, e.g. in a worker) into the cache."""
        if image.nbytes <= self.cache.limit_bytes:
            self.cache.put(self.files[row], np.array(image, dtype=np.uint8))

    # -- the content hash ------------------------------------------------------------------------------
    def update_digest(self, digest) -> None:
        """Feed ``digest`` what the pixels are made from: the preprocessing (its whole saved form), Pillow's
        version (its decoders and resamplers make the pixels) and every file's bytes in row order, so an image
        edited in place changes the digest, while nothing is decoded (about 1 s per GB of files)."""
        import PIL

        digest.update(json.dumps(self.preprocess.to_dict(), sort_keys=True, default=str).encode())
        digest.update(f"Pillow {PIL.__version__}".encode())
        for path in self.files:
            try:
                file_hash = hashlib.sha256()
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):  # hashlib.file_digest is Python 3.11+
                        file_hash.update(chunk)
                digest.update(file_hash.digest())
            except OSError as exc:
                raise DataError(f"cannot read image {path} ({exc.strerror or exc}); it was there when the folder "
                                "was listed: put it back, or rerun to list the folder again") from None

    # -- inside --------------------------------------------------------------------------------------
    def _rows(self, key: Any) -> np.ndarray | int:
        """``key`` as non-negative row numbers: an int, or a 1-d int64 array."""
        n = len(self.files)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -n <= key < n:
                raise IndexError(f"index {key} is out of bounds for {n} images")
            return int(key) % n
        rows = np.asarray(key)
        if rows.ndim == 0 and rows.dtype.kind in "iu":  # a 0-d array (or tensor) is an int, as numpy takes it
            return self._rows(int(rows))
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} does not match {n} images")
            return np.flatnonzero(rows)
        if rows.size == 0:
            return np.zeros(0, dtype=np.int64)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise IndexError(f"images are indexed by an int, a slice, a 1-d int array or a boolean mask, not "
                             f"{rows.dtype} {rows.shape}")
        if rows.min() < -n or rows.max() >= n:
            raise IndexError(f"index {int(rows.max() if rows.max() >= n else rows.min())} is out of bounds for "
                             f"{n} images")
        return rows.astype(np.int64) % n

    def _image(self, row: int) -> np.ndarray:
        path = self.files[row]
        image = self.cache.get(path)
        if image is None:
            image = decode(path, self.preprocess)
            self.cache.put(path, image)
        return image


def decode(path: str, preprocess) -> np.ndarray:
    """One listed file at the model's size; a DataError naming it (and saying it changed since it was listed)
    when it no longer decodes."""
    try:
        return preprocess.resize_image(Path(path))
    except DataError as exc:
        raise DataError(f"{exc} It passed the check when the folder was listed, so it changed since or is damaged "
                        "past what the check reads: replace or remove it and rerun") from None
