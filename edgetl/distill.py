"""Knowledge distillation: train a smaller student on the fine-tuned teacher's soft targets.

Loss (Hinton et al. 2015): ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - alpha) * cross_entropy(student, labels)``, plus ``hint_weight`` times the mean squared
error between the student's last feature map (through a 1x1 convolution) and the teacher's.

``out_dir`` receives the student like a fine-tune folder (``best.safetensors`` + ``checkpoint.json``,
``metrics.json``, ``last.pt``), ``baseline/`` with the same student trained without the teacher
(``distill.ablation``), and ``result.json`` comparing the two with the teacher.

>>> teacher, _ = load_checkpoint("runs/x/finetune")
>>> result = distill(recipe, splits, teacher, Path("runs/x/distill"))
>>> student, meta = load_checkpoint("runs/x/distill")
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_path, read_json, write_json
from .backbones import copy_matching_weights, create_model, get_spec
from .data.dataset import Splits
from .data.preprocess import Preprocess
from .errors import RecipeError
from .recipe import DistillConfig, Recipe
from .training import (
    METRICS_FILE, RESULT_FILE, STATE_FILE, augment, batches, check_splits, evaluate, fingerprint, load_weights_file,
    model_hash, progress_bar, rng_state, save_checkpoint, seed_everything, set_rng_state, ticker, train_epoch,
)

BASELINE_DIR = "baseline"


@dataclass
class DistillResult:
    """Student with and without the teacher, and the teacher; accuracies in percent on the test split."""

    student: str
    teacher: str
    student_test_accuracy: float
    student_val_accuracy: float
    teacher_test_accuracy: float
    relative_accuracy: float  # student / teacher test accuracy
    meets_min_relative_accuracy: bool
    student_params: int
    teacher_params: int
    epochs: int
    seconds: float  # training time of both runs, summed over resumed runs
    checkpoint: str
    copied_from_teacher: int  # student tensors initialised from the teacher (0: none)
    baseline_test_accuracy: float | None = None  # the same student, init and budget, alpha = 0
    baseline_val_accuracy: float | None = None
    baseline_relative_accuracy: float | None = None
    baseline_epochs: int | None = None
    temperature: float = 0.0
    alpha: float = 0.0
    hint_weight: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline_history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillResult":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, *,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's distillation loss: soft targets at ``temperature`` (scaled by T^2) weighted ``alpha``,
    cross-entropy on the labels weighted ``1 - alpha``. ``alpha = 0`` is plain cross-entropy.

    The T^2 factor keeps the soft-target gradients the same size whatever the temperature.
    """
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    if teacher_logits is None:
        raise ValueError("kd_loss with alpha > 0 needs the teacher's logits")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * temperature**2
    return alpha * soft + (1 - alpha) * hard


def distill(recipe: Recipe, splits: Splits, teacher: nn.Module, out_dir: Path, *,
            progress: bool = True) -> DistillResult:
    """Distil ``teacher`` into ``recipe.distill.student`` on ``splits``; with ``ablation`` also train the
    student without the teacher (same init, same budget) in ``out_dir/baseline``.

    ``splits`` are the fine-tune's (loaded with the teacher backbone's preprocessing at
    ``model.image_size``); each network gets its own normalisation. A rerun with the same recipe,
    data and teacher returns the finished result; an interrupted one resumes after its last epoch.
    """
    config = recipe.distill
    _check_config(config)
    check_splits(splits, recipe.model.image_size)
    out_dir = Path(out_dir)
    key = {"recipe": recipe.section_hash("distill", "model", "data", "finetune", "run"), "data": fingerprint(splits),
           "teacher": model_hash(teacher)}
    try:
        finished = read_json(out_dir / RESULT_FILE)
        if finished.get("key") == key and (out_dir / "best.safetensors").is_file():
            return DistillResult.from_dict(finished)
    except (FileNotFoundError, ValueError):
        pass
    threads = torch.get_num_threads()
    if recipe.finetune.threads > 0:
        torch.set_num_threads(recipe.finetune.threads)
    try:
        return _Distillation(recipe, splits, teacher, out_dir, key, progress).run()
    finally:
        torch.set_num_threads(threads)


def _check_config(config: DistillConfig) -> None:
    try:
        get_spec(config.student)
    except RecipeError as exc:
        raise RecipeError(f"distill.student: {exc}") from None
    if not config.temperature > 0:
        raise RecipeError(f"distill.temperature must be > 0, got {config.temperature}; 2 to 8 is usual")
    if not 0 <= config.alpha <= 1:
        raise RecipeError(f"distill.alpha must be within [0, 1], got {config.alpha}; it weights the soft-target loss")
    if config.hint_weight < 0:
        raise RecipeError(f"distill.hint_weight must be >= 0, got {config.hint_weight}; 0 turns the hint loss off")
    if config.epochs < 1 or config.batch_size < 2 or not config.lr > 0 or config.patience < 0:
        raise RecipeError("distill.epochs must be >= 1, batch_size >= 2, lr > 0 and patience >= 0 (0: no early stop)")
    if not 0 < config.min_relative_accuracy <= 1:
        raise RecipeError(f"distill.min_relative_accuracy is a fraction in (0, 1], got {config.min_relative_accuracy}")


class _Distillation:
    """The teacher, its cached outputs, and the student runs (with the teacher, then the baseline)."""

    def __init__(self, recipe: Recipe, splits: Splits, teacher: nn.Module, out_dir: Path, key: dict[str, str],
                 progress: bool):
        self.recipe, self.config, self.splits, self.out_dir, self.key = recipe, recipe.distill, splits, out_dir, key
        size = recipe.model.image_size
        self.teacher_preprocess = get_spec(recipe.model.backbone).preprocess(size)
        self.student_preprocess = get_spec(self.config.student).preprocess(size)
        self.teacher = teacher.eval().to(memory_format=torch.channels_last)
        self.teacher.requires_grad_(False)
        if self.config.hint_weight > 0:
            for name, net in (("teacher", teacher), ("student", self._build_student())):
                if not hasattr(net, "hint_layer"):
                    raise RecipeError(f"the {name} {type(net).__name__} has no hint_layer() for distill.hint_weight; "
                                      "set distill.hint_weight=0 or use an EfficientNet-Lite")
        self.cache: dict[str, torch.Tensor] | None = None
        self.bar, self.verbose = progress_bar(progress), progress

    def run(self) -> DistillResult:
        start = time.perf_counter()
        with self.bar:
            teacher_accuracy = evaluate(self.teacher, self.splits.test, self.teacher_preprocess,
                                        2 * self.config.batch_size)
            student = _StudentRun(self, self.out_dir, self.config.alpha, self.config.hint_weight).run()
            baseline = _StudentRun(self, self.out_dir / BASELINE_DIR, 0.0, 0.0).run() if self.config.ablation else None
        denominator = max(teacher_accuracy, 1e-9)  # a teacher at 0% makes the ratio meaningless, not an error
        relative = student["test_accuracy"] / denominator
        result = DistillResult(
            student=self.config.student, teacher=self.recipe.model.backbone,
            student_test_accuracy=student["test_accuracy"], student_val_accuracy=student["val_accuracy"],
            teacher_test_accuracy=teacher_accuracy, relative_accuracy=round(relative, 4),
            meets_min_relative_accuracy=relative >= self.config.min_relative_accuracy,
            student_params=student["params"], teacher_params=sum(p.numel() for p in self.teacher.parameters()),
            epochs=student["epochs"], seconds=round(student["seconds"] + (baseline or {}).get("seconds", 0.0), 1),
            checkpoint=str(self.out_dir / "best.safetensors"), copied_from_teacher=student["copied"],
            temperature=self.config.temperature, alpha=self.config.alpha, hint_weight=self.config.hint_weight,
            history=student["history"],
        )
        if baseline is not None:
            result.baseline_test_accuracy = baseline["test_accuracy"]
            result.baseline_val_accuracy = baseline["val_accuracy"]
            result.baseline_relative_accuracy = round(baseline["test_accuracy"] / denominator, 4)
            result.baseline_epochs, result.baseline_history = baseline["epochs"], baseline["history"]
        write_json(self.out_dir / RESULT_FILE, {"key": self.key, **asdict(result)})
        self.log(f"teacher {teacher_accuracy:.2f}%, student {result.student_test_accuracy:.2f}% "
                 f"({100 * relative:.1f}% of the teacher)"
                 + (f", without the teacher {result.baseline_test_accuracy:.2f}%" if baseline else "")
                 + f"; {time.perf_counter() - start:.0f} s")
        return result

    def run_key(self, alpha: float, hint_weight: float) -> dict[str, Any]:
        """What one student run depends on: not the ablation switch or the accuracy goal; a baseline
        (alpha 0, no hint) not the loss mix either, nor the teacher unless it starts from its weights."""
        ignored = ["enabled", "ablation", "min_relative_accuracy"]
        baseline = alpha == 0 and hint_weight == 0
        if baseline:
            ignored += ["alpha", "temperature", "hint_weight"]
        data = self.recipe.to_dict()
        data["distill"] = {k: v for k, v in data["distill"].items() if k not in ignored}
        digest = hashlib.sha256(json.dumps({k: data[k] for k in ("distill", "model", "data", "finetune", "run")},
                                           sort_keys=True).encode()).hexdigest()[:16]
        teacher = self.key["teacher"] if not baseline or self.config.init_from_teacher else None
        return {"recipe": digest, "data": self.key["data"], "teacher": teacher, "alpha": alpha,
                "hint_weight": hint_weight}

    def _build_student(self) -> nn.Module:
        weights = None if self.recipe.model.weights == "none" else self.recipe.model.weights
        if weights is not None and weights not in ("package", "hub"):
            weights = "package"  # a local file holds the teacher backbone's weights, not the student's
        if weights is not None and not get_spec(self.config.student).package and weights == "package":
            weights = None  # a student without published weights (e.g. a test network) starts at random
        return create_model(self.config.student, num_classes=len(self.splits.classes),
                            image_size=self.recipe.model.image_size, weights=weights)

    def new_student(self) -> tuple[nn.Module, int]:
        """The initial student, the same for every run: seeded, then (optionally) the teacher's weights."""
        seed_everything(self.recipe.run.seed)
        student = self._build_student()
        copied = copy_matching_weights(student, self.teacher) if self.config.init_from_teacher else []
        return student.to(memory_format=torch.channels_last), len(copied)

    def teacher_outputs(self, inputs: torch.Tensor, rows: torch.Tensor | None, hint: bool
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits (and hint feature map) for a training batch: cached when inputs are fixed."""
        if rows is not None:
            cache = self._cached(hint)
            return cache["logits"][rows], cache["hints"][rows] if hint else None
        with torch.inference_mode(), _capture(self.teacher if hint else None) as feature:
            logits = self.teacher(inputs)
        return logits.clone(), feature[0].clone() if hint else None

    def _cached(self, hint: bool) -> dict[str, torch.Tensor]:
        """Teacher outputs on every training image, computed once (augmentation off: the inputs never change)."""
        if self.cache is None:
            logits, hints = [], []
            for inputs, _ in batches(self.splits.train, self.teacher_preprocess, 2 * self.config.batch_size):
                with torch.inference_mode(), _capture(self.teacher if hint else None) as feature:
                    logits.append(self.teacher(inputs))
                hints.extend(feature)
            self.cache = {"logits": torch.cat(logits).clone(), "hints": torch.cat(hints).clone() if hints else None}
        return self.cache

    def log(self, message: str) -> None:
        if self.verbose:
            self.bar.console.print(message, highlight=False)


class _capture:
    """Context manager: record the output of ``model.hint_layer()`` on each forward pass (None: nothing)."""

    def __init__(self, model: nn.Module | None):
        self.model, self.outputs, self.handle = model, [], None

    def __enter__(self) -> list[torch.Tensor]:
        if self.model is not None:
            self.handle = self.model.hint_layer().register_forward_hook(lambda m, i, out: self.outputs.append(out))
        return self.outputs

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()


class _StudentRun:
    """One student training run in ``out_dir``: AdamW + cosine, early stopping on val accuracy, resumable."""

    def __init__(self, job: _Distillation, out_dir: Path, alpha: float, hint_weight: float):
        self.job, self.config, self.out_dir = job, job.config, out_dir
        self.alpha, self.hint_weight = alpha, hint_weight
        self.name = "student" if alpha > 0 else "student (no teacher)"
        self.key = job.run_key(alpha, hint_weight)
        self.model, self.copied = job.new_student()
        self.adapter = self._adapter() if hint_weight > 0 else None
        self.history: list[dict[str, Any]] = []
        self.best = {"val_accuracy": -1.0, "epoch": 0}
        self.seconds, self.started = 0.0, time.perf_counter()

    def _adapter(self) -> nn.Module:
        """1x1 convolution from the student's hint channels to the teacher's."""
        probe = torch.zeros(1, 3, self.job.recipe.model.image_size, self.job.recipe.model.image_size)
        with torch.no_grad(), _capture(self.model) as student_map, _capture(self.job.teacher) as teacher_map:
            self.model.eval()(probe)
            self.job.teacher(probe)
        torch.manual_seed(self.job.recipe.run.seed)
        return nn.Conv2d(student_map[0].shape[1], teacher_map[0].shape[1], 1)

    def run(self) -> dict[str, Any]:
        config = self.config
        params = list(self.model.parameters()) + (list(self.adapter.parameters()) if self.adapter else [])
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=self.job.recipe.finetune.weight_decay)
        steps = len(self.job.splits.train) // config.batch_size or 1  # whole batches: BatchNorm needs more than one
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)
        state = self._load_state(optimizer, scheduler) or {"epoch": 0, "bad_epochs": 0, "done": False}
        if not state["done"] and (self.alpha > 0 or self.hint_weight > 0) and not self.job.recipe.finetune.augment:
            self.job._cached(self.hint_weight > 0)  # before the first epoch, so epoch times stay comparable
        tick = ticker(self.job.bar, self.name, config.epochs * steps, completed=state["epoch"] * steps)
        epoch = state["epoch"]
        while not state["done"]:
            epoch += 1
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            self.model.train()
            if self.adapter is not None:
                self.adapter.train()
            loss, train_accuracy = train_epoch(self._step, self._train_batches(steps), optimizer, scheduler, tick)
            val_accuracy = evaluate(self.model, self.job.splits.val, self.job.student_preprocess, 2 * config.batch_size)
            self._record(epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
            improved = val_accuracy > self.best["val_accuracy"]
            if improved:
                self._save_best(val_accuracy, epoch)
            state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
            state.update(epoch=epoch, done=epoch >= config.epochs or 0 < config.patience <= state["bad_epochs"])
            self._save_state(state, optimizer, scheduler)
        load_weights_file(self.model, self.out_dir)
        test_accuracy = evaluate(self.model, self.job.splits.test, self.job.student_preprocess, 2 * config.batch_size)
        self.seconds += time.perf_counter() - self.started
        self.job.log(f"{self.name}: best epoch {self.best['epoch']}, val {self.best['val_accuracy']:.2f}%, "
                     f"test {test_accuracy:.2f}%")
        return {"test_accuracy": test_accuracy, "val_accuracy": self.best["val_accuracy"], "epochs": len(self.history),
                "history": self.history, "seconds": self.seconds, "copied": self.copied,
                "params": sum(p.numel() for p in self.model.parameters())}

    def _train_batches(self, steps: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled whole batches: student inputs, labels, and the teacher's logits and hint map for them."""
        train, size, job = self.job.splits.train, self.config.batch_size, self.job
        augmenting, hint = self.job.recipe.finetune.augment, self.hint_weight > 0
        for rows in torch.randperm(len(train))[: steps * size].split(size):
            images = train.images[rows.numpy()]
            labels = torch.from_numpy(train.labels[rows.numpy()])
            inputs = _normalize(images, job.student_preprocess)
            if self.alpha == 0 and not hint:  # the baseline never asks the teacher
                if augmenting:
                    inputs = augment(inputs, max_shift=job.recipe.model.image_size // 8)
                yield inputs.contiguous(memory_format=torch.channels_last), labels, None, None
                continue
            if not augmenting:
                teacher_logits, teacher_map = job.teacher_outputs(inputs, rows, hint)
            else:
                # One flip and shift for both networks: draw it on the student's inputs, replay it on the
                # teacher's (different normalisation) from the same RNG state.
                rng = torch.get_rng_state()
                inputs = augment(inputs, max_shift=job.recipe.model.image_size // 8)
                after = torch.get_rng_state()
                torch.set_rng_state(rng)
                teacher_inputs = augment(_normalize(images, job.teacher_preprocess),
                                         max_shift=job.recipe.model.image_size // 8)
                torch.set_rng_state(after)
                teacher_logits, teacher_map = job.teacher_outputs(
                    teacher_inputs.contiguous(memory_format=torch.channels_last), None, hint)
            yield inputs.contiguous(memory_format=torch.channels_last), labels, teacher_logits, teacher_map

    def _step(self, inputs: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
              teacher_map: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with _capture(self.model if self.adapter is not None else None) as student_map:
            logits = self.model(inputs)
        loss = kd_loss(logits, teacher_logits, labels, temperature=self.config.temperature, alpha=self.alpha,
                       label_smoothing=self.job.recipe.finetune.label_smoothing)
        if self.adapter is not None:
            projected = self.adapter(student_map[0])
            if projected.shape[-2:] != teacher_map.shape[-2:]:  # match the smaller map
                size = tuple(min(a, b) for a, b in zip(projected.shape[-2:], teacher_map.shape[-2:]))
                projected = F.adaptive_avg_pool2d(projected, size)
                teacher_map = F.adaptive_avg_pool2d(teacher_map, size)
            loss = loss + self.hint_weight * F.mse_loss(projected, teacher_map)
        return loss, logits

    # -- records and files -----------------------------------------------------------------------

    def _record(self, epoch: int, loss: float, train_accuracy: float, val: float, lr: float, seconds: float) -> None:
        self.history.append({"stage": "distill" if self.alpha > 0 else "baseline", "epoch": epoch,
                             "train_loss": round(loss, 5), "train_accuracy": round(train_accuracy, 3),
                             "val_accuracy": round(val, 3), "lr": lr, "seconds": round(seconds, 3)})
        write_json(self.out_dir / METRICS_FILE, self.history)
        self.job.log(f"{self.name} epoch {epoch}: loss {loss:.4f}, train {train_accuracy:.2f}%, val {val:.2f}%, "
                     f"lr {lr:.2e}, {seconds:.1f} s")

    def _save_best(self, val_accuracy: float, epoch: int) -> None:
        self.best = {"val_accuracy": val_accuracy, "epoch": epoch}
        job = self.job
        save_checkpoint(self.out_dir, self.model, {
            "backbone": self.config.student, "num_classes": len(job.splits.classes),
            "image_size": job.recipe.model.image_size, "classes": job.splits.classes,
            "preprocess": job.student_preprocess.to_dict(), "teacher": job.recipe.model.backbone,
            "alpha": self.alpha, "temperature": self.config.temperature,
            "stage": "distill" if self.alpha else "baseline",
            **self.best,
        })

    def _save_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        now = time.perf_counter()
        self.seconds, self.started = self.seconds + now - self.started, now
        payload = {**state, "key": self.key, "model": self.model.state_dict(), "best": self.best,
                   "history": self.history, "seconds": self.seconds, "rng": rng_state(),
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "adapter": self.adapter.state_dict() if self.adapter is not None else {}}
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(payload, tmp)

    def _load_state(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any] | None:
        """The state of an interrupted (or finished) run with this key, else None (start over)."""
        path = self.out_dir / STATE_FILE
        if not path.is_file() or not (self.out_dir / "best.safetensors").is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a state file from another version or a truncated copy: start over
            return None
        if saved.get("key") != self.key:
            return None
        self.model.load_state_dict(saved["model"])
        if self.adapter is not None:
            self.adapter.load_state_dict(saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        self.best, self.history, self.seconds = saved["best"], saved["history"], saved["seconds"]
        set_rng_state(saved["rng"])
        return {k: saved[k] for k in ("epoch", "bad_epochs", "done")}


def _normalize(images: Any, preprocess: Preprocess) -> torch.Tensor:
    return torch.from_numpy(preprocess.normalize(images))
