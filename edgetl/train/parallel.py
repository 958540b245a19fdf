"""The processes and device a fine-tune or distillation trains on, through Hugging Face ``accelerate``.

One process (``edgetl finetune``): an ``accelerate.Accelerator`` on the CPU, or on the GPU when there is one. Several,
with the same recipe: ``accelerate launch --num_processes 2 -m edgetl finetune ...`` on a machine with 2 GPUs (NCCL);
``accelerate launch --multi_gpu --num_processes 2 -m edgetl finetune ...`` or ``torchrun --nproc-per-node 2 -m edgetl
finetune ...`` on CPUs too (gloo; accelerate's ``--cpu`` alone starts one process unless given an MPI hostfile):

- ``finetune.batch_size`` stays what one optimisation step sees. Every process draws the same global order (the
  torch RNG is made the main process's at each epoch start), and each batch is dealt out between the processes
  (``shard``: rows rank, rank + N, ..., wrapped round to equal shares as torch's DistributedSampler pads); DDP
  averages the gradients. A step is the single-process step on the same rows, and the learning-rate schedule is
  the same, so results compare across process counts.
- The probe's cached features, evaluation and the teacher's cached outputs are split in contiguous parts
  (``bounds``) and gathered or summed (``map_parts``, ``accuracy``): every process takes its early-stopping and
  best-checkpoint decisions from the same all-process numbers, nothing is computed twice, nothing written to disk.
- Only the main process writes files and prints; the others wait at ``barrier`` after each write, then read what
  it wrote (one machine, or a file system all of them see). BatchNorm statistics are made the main process's after
  each epoch (``same_buffers``), so every process holds the model the main process saves.

Gradient accumulation (``finetune.grad_accumulation = k``) runs each process's share of a batch as k micro-batches
whose gradients add up (DDP syncs only the last): the same step in less memory. Mixed precision
(``finetune.mixed_precision``) autocasts the training passes: bf16 on CPU or GPU, fp16 on GPU with loss scaling.

``ONE`` (no accelerator: plain torch, one CPU process) is what the tasks' hooks use on their own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RecipeError

MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"  # what `accelerate launch --mixed_precision` sets


@dataclass(frozen=True)
class Parallel:
    """This process's place among the training processes, and the collective steps the trainer and hooks take."""

    rank: int = 0
    count: int = 1
    accumulation: int = 1  # micro-batches per process and step
    mixed_precision: str = "no"  # what runs: "no" when the device cannot do the recipe's choice
    accelerator: Any = None  # accelerate.Accelerator; None: plain torch on CPU

    @classmethod
    def start(cls, config: Any, warn: Callable[[str], None]) -> Parallel:
        """The processes this program was launched on (one when not launched), for ``config`` (FinetuneConfig):
        its ``mixed_precision`` and ``grad_accumulation``. ``warn`` (main process only) hears what was changed."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DataLoaderConfiguration

        requested = config.mixed_precision
        shared = AcceleratorState._shared_state
        if shared and shared.get("_mixed_precision") != requested:
            # accelerate keeps one precision per program; one program may train several recipes (tests, notebooks).
            # The process group (PartialState) stays.
            AcceleratorState._reset_state()
        try:
            # split_batches: batch_size is the global batch, so accelerate's scheduler steps once per step
            # cpu: without a GPU, accelerate only forms a process group (gloo) when told it runs on CPU
            accelerator = Accelerator(mixed_precision=requested, cpu=not torch.accelerator.is_available(),
                                      dataloader_config=DataLoaderConfiguration(split_batches=True))
        except ValueError as exc:  # bf16 on a GPU without it
            raise RecipeError(f"finetune.mixed_precision = {requested!r} does not run on this device ({exc}); set it "
                              "to 'fp16' or 'no'") from None
        running = requested if accelerator.native_amp else "no"
        parallel = cls(rank=accelerator.process_index, count=accelerator.num_processes,
                       accumulation=config.grad_accumulation, mixed_precision=running, accelerator=accelerator)
        if parallel.is_main:
            if running != requested:
                warn(f"warning: finetune.mixed_precision = {requested!r} needs a GPU; training on "
                     f"{accelerator.device.type} in fp32 ('bf16' runs on CPU)")
            launched = os.environ.get(MIXED_PRECISION_ENV, "no")
            if launched not in ("no", requested):
                warn(f"warning: accelerate launch --mixed_precision {launched} is not used: the recipe decides; set "
                     f"finetune.mixed_precision = {launched!r} (--set finetune.mixed_precision={launched})")
        return parallel

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def plain(self) -> bool:
        """One CPU process in fp32 without accumulation: the default, nothing to say about it."""
        return self.count == 1 and self.device.type == "cpu" and self.mixed_precision == "no" \
            and self.accumulation == 1

    def describe(self) -> str:
        backend = f" ({self.accelerator.state.backend})" if self.count > 1 else ""
        accumulation = f", {self.accumulation} micro-batches per step" if self.accumulation > 1 else ""
        precision = "fp32" if self.mixed_precision == "no" else self.mixed_precision
        processes = f"{self.count} processes" if self.count > 1 else "1 process"
        return f"training on {processes}{backend}, {self.device.type}, {precision}{accumulation}"

    # -- splitting data and work ---------------------------------------------------------------------

    def shard(self, rows: Any) -> Any:
        """This process's rows of one batch (a tensor or array of row indices): rank, rank + count, ...; a batch
        that does not divide evenly is wrapped round to its first rows, so every process gets as many."""
        if self.count == 1 or len(rows) == 0:
            return rows
        index = (np.arange(-(-len(rows) // self.count)) * self.count + self.rank) % len(rows)
        return rows[torch.from_numpy(index)] if isinstance(rows, torch.Tensor) else rows[index]

    def _splits(self, n: int) -> bool:
        return self.count > 1 and n >= self.count  # fewer rows than processes: each process does them all

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Start and stop of a process's contiguous part of ``n`` rows (this process's when ``rank`` is None)."""
        rank = self.rank if rank is None else rank
        return n * rank // self.count, n * (rank + 1) // self.count

    def map_parts(self, n: int, fn: Callable[[np.ndarray | None], Any]) -> Any:
        """``fn(rows)`` over ``n`` rows split between the processes, gathered in row order on every one.

        ``fn`` gets this process's contiguous rows (an index array), or None for all of them, and returns a tensor
        (or a tuple of tensors and Nones) with one entry per row."""
        if not self._splits(n):
            return fn(None)
        start, stop = self.bounds(n)
        out = fn(np.arange(start, stop))
        return tuple(self._gather(t, n) for t in out) if isinstance(out, tuple) else self._gather(out, n)

    def _gather(self, tensor: torch.Tensor | None, n: int) -> torch.Tensor | None:
        from accelerate.utils import gather, pad_across_processes

        if tensor is None:
            return None
        padded = pad_across_processes(tensor.to(self.device).contiguous(), dim=0)
        everything, size = gather(padded), padded.shape[0]
        pieces = []
        for rank in range(self.count):
            start, stop = self.bounds(n, rank)
            pieces.append(everything[rank * size : rank * size + stop - start])
        return torch.cat(pieces).to(tensor.device)

    def accuracy(self, n: int, fn: Callable[[np.ndarray | None], float]) -> float:
        """Top-1 accuracy (percent) over ``n`` samples split between the processes: ``fn(rows)`` is the accuracy on
        this process's rows (None: all of them); every process gets the all-process number."""
        if not self._splits(n):
            return fn(None)
        start, stop = self.bounds(n)
        correct = round(fn(np.arange(start, stop)) * (stop - start) / 100)
        return 100.0 * self.total(correct)[0] / n

    def total(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the processes (unchanged on one)."""
        if self.count == 1:
            return values
        from accelerate.utils import reduce

        return tuple(reduce(torch.tensor(values, dtype=torch.float64, device=self.device), "sum").tolist())

    # -- keeping the processes the same ----------------------------------------------------------------

    def same_rng(self) -> None:
        """Every process's torch RNG (the batch order, dropout) made the main process's."""
        if self.count > 1:
            from accelerate.utils import synchronize_rng_states

            synchronize_rng_states(["torch"] + (["cuda"] if self.device.type == "cuda" else []))

    def same_buffers(self, model: nn.Module) -> None:
        """The main process's buffers (BatchNorm statistics) on every process."""
        if self.count > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, 0)

    def barrier(self) -> None:
        if self.count > 1:
            self.accelerator.wait_for_everyone()

    def fork_seed(self, generator: torch.Generator) -> int:
        """One draw of ``generator`` (the same on every process), made this process's own seed."""
        return int(torch.randint(2**62, (1,), generator=generator)) + self.rank

    # -- training steps --------------------------------------------------------------------------------

    def prepare(self, *objects: Any) -> list[Any]:
        """Models (DDP across processes, autocast for mixed precision), then their optimizer and scheduler."""
        if self.accelerator is None:
            return list(objects)
        self.accelerator.free_memory()  # drop the last stage's wrappers first: a stale DDP would sync these params
        prepared = self.accelerator.prepare(*objects)
        return list(prepared) if isinstance(prepared, (tuple, list)) else [prepared]

    def release(self, *models: nn.Module) -> None:
        """Unwrap what ``prepare`` made of ``models``: their own forward back (without autocast)."""
        if self.accelerator is None:
            return
        for model in models:
            module = self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
            if self.mixed_precision != "no":  # unwrap left the plain forward as an attribute; the class has it
                module.__dict__.pop("forward", None)

    def to_device(self, batch: Any) -> Any:
        if self.accelerator is None:
            return batch
        from accelerate.utils import send_to_device

        return send_to_device(batch, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)  # fp16: scaled

    def run_step(self, step: Callable[..., tuple[torch.Tensor, torch.Tensor]], batch: Sequence[Any],
                 models: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of this process's share of one batch ``(inputs, labels, *extra)``, in
        ``accumulation`` micro-batches (DDP syncs the gradients on the last); returns the loss and logits."""
        pieces = micro_batches(batch, self.accumulation)
        if len(pieces) == 1:
            loss, logits = step(*batch)
            self.backward(loss)
            return loss, logits
        total = len(batch[1])
        losses, outputs = [], []
        for index, piece in enumerate(pieces):
            share = len(piece[1]) / total  # micro-batch losses are means: weighted, they add up to the batch's
            with self._no_sync(models) if index < len(pieces) - 1 else contextlib.nullcontext():
                loss, logits = step(*piece)
                self.backward(loss * share)
            losses.append(loss.detach() * share)
            outputs.append(logits.detach())
        return torch.stack(losses).sum(), torch.cat(outputs)

    @contextlib.contextmanager
    def _no_sync(self, models: Sequence[nn.Module]):
        with contextlib.ExitStack() as stack:
            for model in models:
                if self.accelerator is not None:
                    stack.enter_context(self.accelerator.no_sync(model))
            yield


def micro_batches(batch: Sequence[Any], count: int) -> list[tuple[Any, ...]]:
    """``batch`` (tensors, dicts of tensors, Nones; rows along dimension 0; the labels second) in ``count``
    consecutive pieces (fewer when it has fewer rows)."""
    rows = len(batch[1])
    count = max(1, min(count, rows))
    if count == 1:
        return [tuple(batch)]
    bounds = np.linspace(0, rows, count + 1).round().astype(int)

    def cut(value: Any, start: int, stop: int) -> Any:
        if isinstance(value, dict):
            return {key: item[start:stop] for key, item in value.items()}
        return None if value is None else value[start:stop]

    return [tuple(cut(value, start, stop) for value in batch) for start, stop in pairwise(bounds)]


ONE = Parallel()
