"""Training batches of an image folder decoded in ``data.workers`` DataLoader processes, in the trainer's order.

The trainer chooses the rows of every batch (its shuffle, its RNG); ``decoded_batches`` only decodes them. With
``workers = 0``, or images already in memory, a batch is ``images[rows]`` in this process. With workers, a torch
DataLoader runs over a batch sampler of exactly those row lists, so batch k is the trainer's batch k whatever the
number of workers. The decoded-image cache (``data.cache_mb``) stays in this process and bounds memory once, not
once per worker: the sampler sends workers only the rows the cache lacks, and their images join the cache here.

torch is imported only when workers decode; the DataLoader gets its own ``torch.Generator``, so starting workers
leaves the global RNG (dropout, the next epoch's shuffle) exactly where ``workers = 0`` leaves it.

>>> for rows, images in decoded_batches(splits.train.images, trainer_rows, workers=2):
...     labels = splits.train.labels[rows]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..data.image_files import ImageFiles
from ..errors import DataError


def decoded_batches(images: Any, row_batches: Iterable[Any], *, workers: int = 0) -> Iterator[tuple[Any, np.ndarray]]:
    """``(rows, images[rows])`` for each ``rows`` of ``row_batches`` (int arrays or CPU tensors), in that order:
    uint8 (len(rows), H, W, C); ``rows`` is yielded as given. Decoded in ``workers`` processes for ``ImageFiles``."""
    if workers < 0:
        raise DataError(f"data.workers must be 0 or more, got {workers}")
    if workers == 0 or not isinstance(images, ImageFiles):
        for rows in row_batches:
            yield rows, images[_row_array(rows)]
        return
    yield from _from_workers(images, row_batches, workers)


def _from_workers(images: ImageFiles, row_batches: Iterable[Any], workers: int) -> Iterator[tuple[Any, np.ndarray]]:
    import torch

    planned: deque[tuple[Any, np.ndarray, list[int]]] = deque()
    loader = torch.utils.data.DataLoader(
        _Decoder(images.uncached()), batch_sampler=_MissingRows(images, row_batches, planned), num_workers=workers,
        collate_fn=_as_is, generator=torch.Generator())
    for decoded in loader:
        rows, row_array, missing = planned.popleft()
        if isinstance(decoded, _Failure):
            raise DataError(decoded.message)
        fresh = dict(zip(missing, decoded.numpy()))
        batch = np.empty((len(row_array), *images.shape[1:]), dtype=np.uint8)
        for out, row in enumerate(row_array.tolist()):
            batch[out] = fresh[row] if row in fresh else images[row]  # cached (or evicted since: decoded here)
        for row, image in fresh.items():
            images.remember(row, image)
        yield rows, batch


def _row_array(rows: Any) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64).reshape(-1)


class _MissingRows:
    """The batch sampler: for each planned batch, the rows the cache lacks (unique, sorted); what each batch was
    is queued in ``planned`` for the consumer, which DataLoader serves in the same order."""

    def __init__(self, images: ImageFiles, row_batches: Iterable[Any], planned: deque) -> None:
        self.images, self.row_batches, self.planned = images, row_batches, planned

    def __iter__(self) -> Iterator[list[int]]:
        for rows in self.row_batches:
            row_array = _row_array(rows)
            missing = sorted({row for row in row_array.tolist() if not self.images.is_cached(row)})
            self.planned.append((rows, row_array, missing))
            yield missing


class _Decoder:
    """What a worker holds: the files without a cache; a batch of rows -> a uint8 tensor, or the DataError's
    message (raised again in the training process as one line, not DataLoader's wrapped traceback)."""

    def __init__(self, images: ImageFiles) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, rows: list[int]):
        import torch

        try:
            return torch.from_numpy(self.images[np.asarray(rows, dtype=np.int64)])
        except DataError as exc:
            return _Failure(str(exc))

    def __getitem__(self, row: int):
        return self.__getitems__([row])


class _Failure:
    def __init__(self, message: str) -> None:
        self.message = message


def _as_is(batch: Any) -> Any:
    return batch
