"""The text task's side of the one trainer: a BERT-family encoder with mean pooling and a linear head, texts
tokenized per batch in length buckets (each batch padded only to its own longest text), Hugging Face checkpoint
folders, and a student that keeps some of the teacher's layers for distillation."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .._io import read_json, recover_dir, replace_dir, write_json
from ..data.text_batches import bucketed_order, clipped_lengths, run_sorted, to_tensors
from ..errors import DataError
from ..preprocess import TextPreprocess
from ..settings import Recipe
from ..train.loop import META_FILE, accuracy, device_of
from ..train.parallel import ONE, Parallel
from ..backbones.bert import MODEL_DIR

SPLITS = ("train", "val", "test")


def save_text_checkpoint(out_dir: Path, model, meta: dict[str, Any], tokenizer_dir: Path) -> None:
    """The model as ``out_dir/model/`` (Hugging Face folder + tokenizer) and its metadata as checkpoint.json."""
    from ..backbones.bert import save_text_classifier

    folder, staging = out_dir / MODEL_DIR, out_dir / f".{MODEL_DIR}.partial"
    if staging.exists():  # what a killed save left
        shutil.rmtree(staging)
    save_text_classifier(model, staging, tokenizer_dir=tokenizer_dir)
    replace_dir(staging, folder)
    write_json(out_dir / META_FILE, meta)


def predict(model: nn.Module, data, preprocess: TextPreprocess, batch_size: int, lengths: np.ndarray) -> torch.Tensor:
    """Logits (float32, on CPU, data order) of a text classifier in eval mode, on the model's device; its
    train/eval modes are restored."""
    training, device = model.training, device_of(model)
    model.eval()
    try:
        return run_sorted(lambda inputs: model(**_on(inputs, device)).logits.float().cpu(), data.texts, preprocess,
                          batch_size, lengths)
    finally:
        model.train(training)


def _on(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def text_model_dir(out_dir: str | Path) -> Path:
    """``out_dir/model``, put back first if a save was killed between swapping the old folder out and the new in."""
    return recover_dir(Path(out_dir) / MODEL_DIR)


def load_text_checkpoint(path: str | Path):
    """The best text classifier of a fine-tune or distillation folder (eval mode) and its metadata."""
    from ..backbones.bert import load_text_classifier

    path = Path(path)
    if not (path / META_FILE).is_file() or not (text_model_dir(path) / "config.json").is_file():
        raise DataError(f"no text checkpoint in {path}; run `edgetl finetune` (or `edgetl distill`) first")
    return load_text_classifier(path / MODEL_DIR), read_json(path / META_FILE)


class TextTrainHooks:
    """``TrainHooks`` for a text classifier (``edgetl.train.hooks``); ``base_dir`` is the pre-trained encoder's
    Hugging Face folder, whose tokenizer every checkpoint carries."""

    parallel: Parallel = ONE

    def __init__(self, recipe: Recipe, splits, preprocess: TextPreprocess, base_dir: Path,
                 log: Callable[[str], None] = print):
        self.recipe, self.splits, self.preprocess, self.base_dir, self.log = recipe, splits, preprocess, base_dir, log
        self.eval_batch_size = recipe.text.eval_batch_size
        self.lengths = {name: clipped_lengths(preprocess, getattr(splits, name).texts) for name in SPLITS}
        self.reset_rng()

    def use(self, parallel: Parallel) -> None:
        self.parallel = parallel

    def _map(self, split: str, fn: Callable[[Any, np.ndarray], torch.Tensor]) -> torch.Tensor:
        """``fn(texts, lengths)`` over ``split``, split between the processes and gathered in the split's order."""
        data, lengths = getattr(self.splits, split), self.lengths[split]
        return self.parallel.map_parts(len(data), lambda rows: fn(data, lengths) if rows is None
                                       else fn(data.subset(rows), lengths[rows]))

    # -- the model ---------------------------------------------------------------------------
    def new_model(self) -> nn.Module:
        from ..backbones.bert import create_text_classifier

        return create_text_classifier(self.base_dir, self.splits.classes, normalize=self.recipe.text.normalize)

    def head(self, model: nn.Module) -> nn.Module:
        return model.classifier

    def param_groups(self, model: nn.Module, stage_groups: int) -> list[list[nn.Parameter]]:
        from ..backbones.bert import layer_groups

        return layer_groups(model)[:stage_groups]  # the head, the top encoder layer, the next one, ..., embeddings

    def max_groups(self, model: nn.Module) -> int:
        from ..backbones.bert import layer_groups

        return len(layer_groups(model))

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def forward(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**inputs).logits

    # -- data --------------------------------------------------------------------------------
    def features(self, model: nn.Module, split: str) -> torch.Tensor:
        """Mean-pooled embeddings, texts run in length order."""
        device = device_of(model)
        return self._map(split, lambda data, lengths: run_sorted(
            lambda inputs: model.embed(**_on(inputs, device)).cpu(), data.texts, self.preprocess, self.eval_batch_size,
            lengths))

    def labels(self, split: str) -> torch.Tensor:
        return torch.from_numpy(getattr(self.splits, split).labels)

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self.splits.train) / batch_size)

    def train_batches(self, batch_size: int, steps: int, *, extra: tuple[torch.Tensor, ...] = ()
                      ) -> Iterator[tuple[Any, ...]]:
        """Batches of similar lengths (``text.bucketing``), each padded to its longest text: this process's share."""
        train = self.splits.train
        for rows in bucketed_order(self.lengths["train"], batch_size, self.rng, bucketing=self.recipe.text.bucketing):
            rows = self.parallel.shard(rows)
            inputs = to_tensors(self.preprocess.encode([train.texts[i] for i in rows]))
            index = torch.from_numpy(rows)
            yield (inputs, torch.from_numpy(train.labels[rows]), *(tensor[index] for tensor in extra))

    def evaluate(self, model: nn.Module, split: str) -> float:
        data, lengths = getattr(self.splits, split), self.lengths[split]

        def part_accuracy(rows: np.ndarray | None) -> float:
            part, part_lengths = (data, lengths) if rows is None else (data.subset(rows), lengths[rows])
            return accuracy(predict(model, part, self.preprocess, self.eval_batch_size, part_lengths), part.labels)

        return self.parallel.accuracy(len(data), part_accuracy)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, model: nn.Module, out_dir: Path, meta: dict[str, Any]) -> None:
        save_text_checkpoint(out_dir, model, meta, self.base_dir)

    def load_best(self, model: nn.Module, out_dir: Path) -> None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(out_dir) / MODEL_DIR / "model.safetensors")))

    def has_checkpoint(self, out_dir: Path) -> bool:
        return (text_model_dir(out_dir) / "config.json").is_file()

    def meta(self, model: nn.Module) -> dict[str, Any]:
        return {"kind": "text", "backbone": self.recipe.model.backbone, "base_model": str(self.base_dir),
                "num_classes": len(self.splits.classes), "classes": self.splits.classes,
                "num_layers": model.config.num_hidden_layers, "preprocess": self.preprocess.to_dict()}

    def rng_state(self) -> dict[str, Any]:
        return {"np_rng": self.rng.bit_generator.state}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["np_rng"]

    def reset_rng(self) -> None:
        self.rng = np.random.default_rng(self.recipe.run.seed)


class TextDistillHooks(TextTrainHooks):
    """``DistillHooks`` for a text student that keeps ``layers`` of the teacher (DistilBERT-style); the teacher's
    logits on the training texts are computed once."""

    baseline_needs_teacher = True  # the student starts from the teacher's own layers, with or without KD

    def __init__(self, recipe: Recipe, splits, preprocess: TextPreprocess, tokenizer_dir: Path, layers: list[int],
                 log: Callable[[str], None] = print):
        super().__init__(recipe, splits, preprocess, tokenizer_dir, log)
        self.layers = layers
        self.student_name = f"{recipe.model.backbone} layers {','.join(map(str, layers))}"
        self.teacher_logits: torch.Tensor | None = None

    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        return teacher

    def new_student(self, teacher: nn.Module) -> tuple[nn.Module, int]:
        """The teacher with only ``layers`` kept; everything trains except the word embeddings, which stay the
        teacher's (on MiniLM 11.7 M of the student's 17.4 M parameters: a dense gradient and optimizer update per
        step that buys little for a student distilled from the same vocabulary)."""
        from ..backbones.bert import make_student

        student = make_student(teacher, self.layers)
        student.requires_grad_(True)
        student.bert.embeddings.word_embeddings.requires_grad_(False)
        return student, len(student.state_dict())  # every tensor starts as the teacher's

    def evaluate_teacher(self, teacher: nn.Module, split: str) -> float:
        return self.evaluate(teacher, split)

    def cache_teacher(self, teacher: nn.Module, hint: bool) -> None:
        """The teacher's logits on every training text, computed once (eval mode: no dropout)."""
        if self.teacher_logits is None:
            start = time.perf_counter()
            self.teacher_logits = self._map("train", lambda data, lengths: predict(
                teacher, data, self.preprocess, self.eval_batch_size, lengths))
            if self.parallel.is_main:
                self.log(f"teacher logits on {len(self.splits.train)} training texts cached in "
                         f"{time.perf_counter() - start:.1f} s")

    def student_batches(self, batch_size: int, steps: int, teacher: nn.Module | None, hint: bool
                        ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor | None, None]]:
        extra = (self.teacher_logits,) if teacher is not None else ()
        for inputs, labels, *rows in self.train_batches(batch_size, steps, extra=extra):
            yield inputs, labels, rows[0] if rows else None, None

    def hint_adapter(self, student: nn.Module, teacher: nn.Module) -> nn.Module:
        from ..errors import RecipeError

        raise RecipeError("distill.hint_weight is for image students; set it to 0 for text models")

    def meta(self, model: nn.Module) -> dict[str, Any]:
        layers = ",".join(map(str, self.layers))
        return {**super().meta(model), "backbone": f"{self.recipe.model.backbone} (layers {layers})",
                "num_layers": len(self.layers), "student_layers": self.layers}

    def result_extra(self) -> dict[str, Any]:
        return {"student_layers": self.layers}
