"""The cheap check each file of an image folder passes when the folder is listed, before anything is decoded.

``data.on_bad_file = "skip"`` (the default) leaves a file that fails it out of the data and names it
(``Splits.skipped``; ``describe_skipped`` gives the log lines); ``"error"`` stops at the first one with a one-line
``DataError``. What the check reads depends on the format (``FILE_CHECKS``, by Pillow's format name):

- JPEG (and MPO): the header (``Image.open``) and the file's last bytes, which must hold the end-of-image marker; a
  file without it (cut short by a failed copy or download, or with data appended after the image, as motion
  photos have) is decoded at 1/8 scale (``draft``) to tell the two apart. ``verify()`` reads nothing of a JPEG.
- PNG: ``verify()``: every chunk's CRC up to IEND, without inflating the pixels (a cut file fails).
- Anything else (GIF, BMP, TIFF, WebP, ...): decoded once, since ``verify()`` says little about them.

A file that passes and still fails to decode later is a ``DataError`` at that point (``image_files.decode``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..registry import Registry

_END_OF_IMAGE = b"\xff\xd9"
_TAIL_BYTES = 64  # the end-of-image marker, followed at most by a little padding
FIX = "replace or remove it"


@dataclass(frozen=True)
class SkippedFile:
    """A listed file left out of the data, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


FILE_CHECKS: Registry[Callable[[Any, Path], None]] = Registry("image file check", key="Pillow format")


@FILE_CHECKS.register("JPEG")
@FILE_CHECKS.register("MPO")
def _check_jpeg(image, path: Path) -> None:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - _TAIL_BYTES))
        tail = handle.read()
    if not tail.rstrip(b"\x00\r\n ").endswith(_END_OF_IMAGE):
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


@FILE_CHECKS.register("PNG")
def _check_png(image, path: Path) -> None:
    image.verify()


def _decode(image, path: Path) -> None:
    image.load()


def bad_image_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable image (one line), or None when it passes the check."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            check = FILE_CHECKS.get(image.format) if image.format in FILE_CHECKS else _decode
            check(image, Path(path))
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:
        return f"too large to open safely: {exc}"
    except Exception as exc:  # noqa: BLE001  Pillow refuses broken files with many types; each one means "bad"
        reason = " ".join(str(exc).replace(f" {str(path)!r}", "").split())  # the path is named beside it
        return reason or type(exc).__name__
    return None


def check_files(files: Sequence[Path], on_bad_file: str) -> tuple[np.ndarray, list[SkippedFile]]:
    """Which of ``files`` pass the check (a boolean mask), and those that do not, with why; with
    ``on_bad_file = "error"`` a DataError naming the first bad file instead."""
    if on_bad_file not in ("skip", "error"):
        raise DataError(f"data.on_bad_file must be \"skip\" or \"error\", got {on_bad_file!r}")
    passed, skipped = np.ones(len(files), dtype=bool), []
    for row, path in enumerate(files):
        reason = bad_image_reason(path)
        if reason is None:
            continue
        if on_bad_file == "error":
            raise DataError(f"cannot read image {path}: {reason}; is it a valid PNG/JPEG file? {FIX.capitalize()}, "
                            "or set data.on_bad_file = \"skip\" to leave unreadable files out")
        passed[row] = False
        skipped.append(SkippedFile(str(path), reason))
    return passed, skipped


def describe_skipped(skipped: Sequence[SkippedFile], limit: int = 10) -> list[str]:
    """Log lines for skipped files: one per file up to ``limit``, then one saying how many more."""
    lines = [f"data: skipped unreadable image {item}" for item in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"data: ... and {len(skipped) - limit} more unreadable images skipped ({len(skipped)} in all)")
    return lines
