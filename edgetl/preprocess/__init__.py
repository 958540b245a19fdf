"""How raw samples become model inputs, defined once and saved with every bundle as ``preprocess.json``.

Each modality has one preprocessing class (``ImagePreprocess``, ``TextPreprocess``), registered by its ``kind``.
They share one protocol, so validation, calibration, bundles and ``predict`` never ask which one they hold:

- ``kind`` and ``to_dict()`` / ``from_dict(data, root)``: the saved form (``describe()`` is a one-line summary);
- ``inputs(data, rows)``: the model inputs for some rows of a split (a float32 array, or named int64 arrays);
- ``batch_order(data)``: the order that keeps batches cheap (texts of similar length together);
- ``encode(samples)``: raw samples (image paths/arrays, or strings) to model inputs.

Only numpy, Pillow and ``tokenizers``: a bundle's predict path imports this package without torch.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ..errors import BundleError
from ..registry import Registry
from .image import ImagePreprocess
from .text import TextPreprocess

PREPROCESSORS: Registry[type] = Registry("preprocessing kind", key="preprocess.json kind")
PREPROCESSORS.register("image", ImagePreprocess)
PREPROCESSORS.register("text", TextPreprocess)


def load_preprocess(data: dict[str, Any], root: str | os.PathLike | None = None):
    """A saved ``preprocess.json`` as its class (``kind``, "image" when absent); a text one reads its
    tokenizer from ``root``."""
    kind = data.get("kind", "image")
    if kind not in PREPROCESSORS:
        raise BundleError(f"preprocess.json has kind {kind!r}; this edgetl knows {', '.join(PREPROCESSORS)}: "
                          "upgrade edgetl or re-ship the bundle")
    return PREPROCESSORS.get(kind).from_dict(data, root=root)


def iter_batches(preprocess, data, batch_size: int) -> Iterator[tuple[np.ndarray, Any]]:
    """``(rows, inputs)`` for every batch of ``data``, in ``preprocess.batch_order(data)``."""
    order = preprocess.batch_order(data)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, preprocess.inputs(data, rows)


__all__ = ["PREPROCESSORS", "ImagePreprocess", "TextPreprocess", "iter_batches", "load_preprocess"]
