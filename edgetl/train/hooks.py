"""What a task hands the one trainer: everything about a model and its data that differs between image and text.

The trainer (``edgetl.train.finetune`` and ``edgetl.train.distill``) owns the schedule: the probe on cached
features, staged unfreezing with layer-wise learning-rate decay, early stopping, resuming after every epoch,
checkpoints and records. A ``TrainHooks`` object (one per task: ``edgetl.tasks.image_train``,
``edgetl.tasks.text_train``) owns the rest: how a model is built, which parameters each unfreeze stage trains,
how a batch is drawn and fed, how a split is evaluated, and how a checkpoint is written.

On several processes (``edgetl.train.parallel``) the trainer lends the hooks its ``Parallel`` (``use``): training
batches are then this process's share of each global batch (``Parallel.shard`` of the rows, drawn in the same
order on every process), and what runs over a whole split (``features``, ``evaluate``, ``cache_teacher``) is split
between the processes with ``Parallel.map_parts`` / ``Parallel.accuracy`` and returns every process's result.
Inputs go to the device of the model they are fed to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import nn

from .parallel import Parallel


class TrainHooks(Protocol):
    """One trained model's data and architecture as the trainer sees them (see the module docstring)."""

    parallel: Parallel  # what ``use`` lent; ``edgetl.train.parallel.ONE`` (one CPU process) until then

    def use(self, parallel: Parallel) -> None:
        """Train on ``parallel``'s processes and device from now on."""

    def new_model(self) -> nn.Module:
        """The pre-trained model with a new head for the task's classes (after the trainer seeded the RNGs)."""

    def head(self, model: nn.Module) -> nn.Module:
        """The classification head (the probe trains it alone)."""

    def param_groups(self, model: nn.Module, stage_groups: int) -> list[list[nn.Parameter]]:
        """The parameters trained with ``finetune.unfreeze = stage_groups``, head first, then each group deeper;
        group i learns at ``lr * finetune.layer_lr_decay ** i``."""

    def max_groups(self, model: nn.Module) -> int:
        """The largest ``finetune.unfreeze`` value this model accepts."""

    def features(self, model: nn.Module, split: str) -> torch.Tensor:
        """Frozen-backbone features of every sample of ``split`` (the probe's inputs), in the split's order (each
        process computes its part; every process gets them all)."""

    def labels(self, split: str) -> torch.Tensor:
        """The int64 labels of ``split``."""

    def steps(self, batch_size: int) -> int:
        """Optimisation steps in one epoch over the training split."""

    def train_batches(self, batch_size: int, steps: int, *, extra: tuple[torch.Tensor, ...] = ()
                      ) -> Iterator[tuple[Any, ...]]:
        """One epoch of ``(inputs, labels, *extra rows)`` training batches (this process's share of each, on CPU);
        ``extra`` are per-sample tensors (the teacher's cached logits) sliced to each batch. ``labels``: int64
        classes, or (N, classes) soft targets when the task's augmentation mixed the batch (mixup, cutmix)."""

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Logits of ``model`` for one batch of inputs."""

    def train_mode(self, model: nn.Module) -> None:
        """Put ``model`` in training mode (a task may keep some layers' statistics frozen)."""

    def evaluate(self, model: nn.Module, split: str) -> float:
        """Top-1 accuracy (percent) of ``model`` on ``split`` (over every process's part); train/eval modes
        restored."""

    def save(self, model: nn.Module, out_dir: Path, meta: dict[str, Any]) -> None:
        """Write the best checkpoint and its metadata into ``out_dir``."""

    def load_best(self, model: nn.Module, out_dir: Path) -> None:
        """Load the weights ``save`` wrote back into ``model``."""

    def has_checkpoint(self, out_dir: Path) -> bool:
        """Whether ``out_dir`` holds a checkpoint ``load_best`` can read."""

    def meta(self, model: nn.Module) -> dict[str, Any]:
        """Checkpoint metadata: backbone, classes, preprocessing, ..."""

    def rng_state(self) -> dict[str, Any]:
        """State of any RNG of the hooks' own (saved with the trainer's for resuming); {} when none."""

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what ``rng_state`` returned."""

    def reset_rng(self) -> None:
        """Re-seed the hooks' own RNG (each distillation run starts from the same draws)."""


class DistillHooks(TrainHooks, Protocol):
    """A student's hooks: the trainer's, plus the teacher's side of knowledge distillation."""

    student_name: str
    baseline_needs_teacher: bool  # the no-teacher ablation still starts from the teacher's weights

    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """The teacher ready for inference (memory format etc.)."""

    def new_student(self, teacher: nn.Module) -> tuple[nn.Module, int]:
        """The initial student (after the trainer seeded the RNGs) and how many tensors came from the teacher."""

    def evaluate_teacher(self, teacher: nn.Module, split: str) -> float:
        """The teacher's top-1 accuracy (percent) on ``split``, with the teacher's own preprocessing."""

    def cache_teacher(self, teacher: nn.Module, hint: bool) -> None:
        """Compute the teacher's outputs on the training split once, when the inputs never change."""

    def student_batches(self, batch_size: int, steps: int, teacher: nn.Module | None, hint: bool
                        ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """One epoch of ``(student inputs, labels, teacher logits, teacher hint map)``; ``teacher`` None (the
        ablation): no teacher outputs. Augmented, the teacher's outputs are for the same augmented batch."""

    def hint_adapter(self, student: nn.Module, teacher: nn.Module) -> nn.Module:
        """A module mapping the student's hint feature map to the teacher's (``distill.hint_weight`` > 0)."""

    def result_extra(self) -> dict[str, Any]:
        """Task-specific fields for the distillation's result.json."""
