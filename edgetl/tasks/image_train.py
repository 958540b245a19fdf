"""The image task's side of the one trainer: CNN backbones from the registry, in-memory uint8 images normalised
per batch (channels-last), BatchNorm statistics kept while fine-tuning, the recipe's augmentation
(``finetune.augment``, ``edgetl.train.augment``) on the uint8 training batches, and a teacher/student pair with their
own normalisations for distillation (hint maps included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..backbones import copy_matching_weights, create_model, get_spec
from ..data.dataset import LabeledImages, Splits
from ..errors import DataError
from ..preprocess import ImagePreprocess
from ..settings import Recipe
from ..train.augment import Augmenter
from ..train.loop import CHECKPOINT_FILE, device_of, load_weights_file, save_checkpoint
from ..train.parallel import ONE, Parallel


def image_batches(images: LabeledImages, preprocess: ImagePreprocess, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised NCHW (channels-last in memory) batches and their labels, in order."""
    for start in range(0, len(images), size):
        batch = torch.from_numpy(preprocess.normalize(images.images[start : start + size]))
        yield batch.contiguous(memory_format=torch.channels_last), torch.from_numpy(images.labels[start : start + size])


def evaluate(model: nn.Module, images: LabeledImages, preprocess: ImagePreprocess, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model`` on ``images``, in percent; the model's train/eval modes are restored."""
    if len(images) == 0:
        raise DataError("cannot evaluate on an empty split; give the data source more images")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    correct, device = 0, device_of(model)
    try:
        with torch.inference_mode():
            for batch, labels in image_batches(images, preprocess, batch_size):
                correct += int((model(batch.to(device)).argmax(1) == labels.to(device)).sum())
    finally:
        for module, training in modes.items():
            module.train(training)
    return 100.0 * correct / len(images)


def _channels_last(batch: torch.Tensor) -> torch.Tensor:
    return batch.contiguous(memory_format=torch.channels_last)


class ImageTrainHooks:
    """``TrainHooks`` for an image classifier built from the backbone registry (``edgetl.train.hooks``)."""

    parallel: Parallel = ONE

    def __init__(self, recipe: Recipe, splits: Splits, backbone: str, preprocess: ImagePreprocess, *,
                 eval_batch_size: int):
        self.recipe, self.splits, self.backbone, self.preprocess = recipe, splits, backbone, preprocess
        self.eval_batch_size = eval_batch_size
        config = recipe.finetune.augment
        self.augmenter = (Augmenter(config, num_classes=len(splits.classes), seed=recipe.run.seed)
                          if config.enabled else None)

    def use(self, parallel: Parallel) -> None:
        self.parallel = parallel

    def _part(self, split: str, rows: np.ndarray | None) -> LabeledImages:
        data = getattr(self.splits, split)
        return data if rows is None else data.subset(rows)

    # -- the model ---------------------------------------------------------------------------
    def _weights(self) -> str | None:
        return None if self.recipe.model.weights == "none" else self.recipe.model.weights

    def new_model(self) -> nn.Module:
        # NHWC is about 1.5x faster for these depthwise convolutions on CPU, in training and inference.
        return create_model(self.backbone, num_classes=len(self.splits.classes), image_size=self.recipe.model.image_size,
                            weights=self._weights()).to(memory_format=torch.channels_last)

    def head(self, model: nn.Module) -> nn.Module:
        return model.head()

    def param_groups(self, model: nn.Module, stage_groups: int) -> list[list[nn.Parameter]]:
        groups = [list(model.head().parameters())]
        return groups + [[p for module in group for p in module.parameters()]
                         for group in model.unfreeze_groups()[:stage_groups]]

    def max_groups(self, model: nn.Module) -> int:
        return len(model.unfreeze_groups())

    def train_mode(self, model: nn.Module) -> None:
        """Train mode (dropout on), but BatchNorm keeps its running statistics unless it must learn them.

        Frozen layers always keep theirs; pre-trained ones too: batch statistics of a new domain (grey
        clothes vs ImageNet) shift every feature the probe's head was fitted to, which cost Fashion-MNIST
        5+ points. Trainable layers of a randomly initialised backbone have no statistics worth keeping.
        """
        model.train()
        keep_statistics = self.recipe.model.weights != "none"
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if keep_statistics or not any(p.requires_grad for p in module.parameters()):
                    module.eval()

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    # -- data --------------------------------------------------------------------------------
    def features(self, model: nn.Module, split: str) -> torch.Tensor:
        def part(rows: np.ndarray | None) -> torch.Tensor:
            with torch.inference_mode():
                batches = image_batches(self._part(split, rows), self.preprocess, self.eval_batch_size)
                features = torch.cat([model.forward_features(x.to(device)) for x, _ in batches])
            return features.clone()  # a clone outside inference mode can train

        device = device_of(model)
        return self.parallel.map_parts(len(getattr(self.splits, split)), part)

    def labels(self, split: str) -> torch.Tensor:
        return torch.from_numpy(getattr(self.splits, split).labels)

    def steps(self, batch_size: int) -> int:
        return len(self.splits.train) // batch_size or 1  # whole batches: BatchNorm needs more than one

    def _rows(self, batch_size: int, steps: int) -> list[torch.Tensor]:
        """The rows of each batch: this process's share (the order is the same on every process)."""
        batches = torch.randperm(len(self.splits.train))[: steps * batch_size].split(batch_size)
        return [self.parallel.shard(rows) for rows in batches] if self.parallel.count > 1 else batches

    def _train_batches(self, batch_size: int, steps: int) -> Iterator[tuple[torch.Tensor, np.ndarray, torch.Tensor]]:
        """(rows, uint8 images, labels) of ``steps`` shuffled training batches, decoded in ``data.workers``
        processes for images read from files, augmented when the recipe says so (the labels then soft targets if
        mixup or cutmix mixed them)."""
        from ..train.image_loader import decoded_batches

        train = self.splits.train
        for rows, images in decoded_batches(train.images, self._rows(batch_size, steps),
                                            workers=self.recipe.data.workers):
            labels = torch.from_numpy(train.labels[rows.numpy()])
            yield (rows, images, labels) if self.augmenter is None else (rows, *self._augmenter()(images, labels))

    def _augmenter(self) -> Augmenter:
        """The augmenter; on several processes, one per batch and process, seeded from one draw of the shared stream
        (which stays the same on every process and resumes with the run)."""
        if self.parallel.count == 1:
            return self.augmenter
        return Augmenter(self.augmenter.config, num_classes=self.augmenter.num_classes,
                         seed=self.parallel.fork_seed(self.augmenter.generator))

    def train_batches(self, batch_size: int, steps: int, *, extra: tuple[torch.Tensor, ...] = ()
                      ) -> Iterator[tuple[Any, ...]]:
        """``steps`` shuffled, (if the recipe says so) augmented and normalised training batches."""
        for rows, images, labels in self._train_batches(batch_size, steps):
            batch = torch.from_numpy(self.preprocess.normalize(images))
            yield (_channels_last(batch), labels, *(t[rows] for t in extra))

    def evaluate(self, model: nn.Module, split: str) -> float:
        return self.parallel.accuracy(len(getattr(self.splits, split)), lambda rows: evaluate(
            model, self._part(split, rows), self.preprocess, self.eval_batch_size))

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, model: nn.Module, out_dir: Path, meta: dict[str, Any]) -> None:
        save_checkpoint(out_dir, model, meta)

    def load_best(self, model: nn.Module, out_dir: Path) -> None:
        load_weights_file(model, out_dir)

    def has_checkpoint(self, out_dir: Path) -> bool:
        return (Path(out_dir) / CHECKPOINT_FILE).is_file()

    def meta(self, model: nn.Module) -> dict[str, Any]:
        return {"backbone": self.backbone, "num_classes": len(self.splits.classes),
                "image_size": self.recipe.model.image_size, "classes": self.splits.classes,
                "preprocess": self.preprocess.to_dict()}

    def rng_state(self) -> dict[str, Any]:
        # The batch order comes from torch's global RNG, which the trainer saves; the augmentation has its own.
        return {} if self.augmenter is None else {"augment": self.augmenter.state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if self.augmenter is not None and "augment" in state:
            self.augmenter.set_state(state["augment"])

    def reset_rng(self) -> None:
        if self.augmenter is not None:
            self.augmenter.reset()


class ImageDistillHooks(ImageTrainHooks):
    """``DistillHooks`` for an image student: its own normalisation beside the teacher's, a teacher-output cache
    (when inputs never change), one augmented batch seen by both networks, hint maps."""

    baseline_needs_teacher = False

    def __init__(self, recipe: Recipe, splits: Splits, teacher_preprocess: ImagePreprocess,
                 student_preprocess: ImagePreprocess):
        student = recipe.distill.student
        super().__init__(recipe, splits, student, student_preprocess, eval_batch_size=2 * recipe.distill.batch_size)
        self.teacher_preprocess = teacher_preprocess
        self.student_name = student
        self.baseline_needs_teacher = recipe.distill.init_from_teacher
        self.cache: dict[str, torch.Tensor | None] | None = None

    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        teacher = teacher.to(memory_format=torch.channels_last)
        if self.recipe.distill.hint_weight > 0:
            from ..errors import RecipeError

            for name, net in (("teacher", teacher), ("student", self._build_student())):
                if not hasattr(net, "hint_layer"):
                    raise RecipeError(f"the {name} {type(net).__name__} has no hint_layer() for distill.hint_weight; "
                                      "set distill.hint_weight=0 or use an EfficientNet-Lite")
        return teacher

    def _build_student(self) -> nn.Module:
        weights = self._weights()
        if weights is not None and weights not in ("package", "hub"):
            weights = "package"  # a local file holds the teacher backbone's weights, not the student's
        if weights is not None and not get_spec(self.backbone).package and weights == "package":
            weights = None  # a student without published weights (e.g. a test network) starts at random
        return create_model(self.backbone, num_classes=len(self.splits.classes),
                            image_size=self.recipe.model.image_size, weights=weights)

    def new_student(self, teacher: nn.Module) -> tuple[nn.Module, int]:
        student = self._build_student()
        copied = copy_matching_weights(student, teacher) if self.recipe.distill.init_from_teacher else []
        return student.to(memory_format=torch.channels_last), len(copied)

    def evaluate_teacher(self, teacher: nn.Module, split: str) -> float:
        return self.parallel.accuracy(len(getattr(self.splits, split)), lambda rows: evaluate(
            teacher, self._part(split, rows), self.teacher_preprocess, self.eval_batch_size))

    def hint_adapter(self, student: nn.Module, teacher: nn.Module) -> nn.Module:
        """1x1 convolution from the student's hint channels to the teacher's."""
        from ..train.distill import _capture

        size = self.recipe.model.image_size
        probe = torch.zeros(1, 3, size, size)
        with torch.no_grad(), _capture(student) as student_map, _capture(teacher) as teacher_map:
            student.eval()(probe.to(device_of(student)))
            teacher(probe.to(device_of(teacher)))
        torch.manual_seed(self.recipe.run.seed)
        adapter = nn.Conv2d(student_map[0].shape[1], teacher_map[0].shape[1], 1)
        return adapter.to(memory_format=torch.channels_last)  # its gradients' layout (DDP checks they match)

    def cache_teacher(self, teacher: nn.Module, hint: bool) -> None:
        """Teacher outputs on every training image, computed once (augmentation off: the inputs never change)."""
        if self.cache is not None or self.augmenter is not None:
            return
        from ..train.distill import _capture

        def part(rows: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            logits, hints = [], []
            for inputs, _ in image_batches(self._part("train", rows), self.teacher_preprocess, self.eval_batch_size):
                with torch.inference_mode(), _capture(teacher if hint else None) as feature:
                    logits.append(teacher(inputs.to(device)))
                hints.extend(feature)
            return torch.cat(logits).clone(), torch.cat(hints).clone() if hints else None

        device = device_of(teacher)
        logits, hints = self.parallel.map_parts(len(self.splits.train), part)
        self.cache = {"logits": logits, "hints": hints}

    def _teacher_outputs(self, teacher: nn.Module, inputs: torch.Tensor, hint: bool
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from ..train.distill import _capture

        with torch.inference_mode(), _capture(teacher if hint else None) as feature:
            logits = teacher(inputs.to(device_of(teacher)))
        return logits.clone(), feature[0].clone() if hint else None

    def student_batches(self, batch_size: int, steps: int, teacher: nn.Module | None, hint: bool
                        ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Shuffled whole batches: student inputs, labels (soft targets when mixed), and the teacher's logits and
        hint map for them; augmented, the teacher sees the very images the student sees (its own normalisation)."""
        for rows, images, labels in self._train_batches(batch_size, steps):
            inputs = _channels_last(torch.from_numpy(self.preprocess.normalize(images)))
            if teacher is None:  # the baseline never asks the teacher
                yield inputs, labels, None, None
            elif self.augmenter is None:
                cache = self.cache
                yield inputs, labels, cache["logits"][rows], cache["hints"][rows] if hint else None
            else:
                teacher_inputs = _channels_last(torch.from_numpy(self.teacher_preprocess.normalize(images)))
                yield inputs, labels, *self._teacher_outputs(teacher, teacher_inputs, hint)

    def result_extra(self) -> dict[str, Any]:
        return {}
