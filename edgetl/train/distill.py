"""Knowledge distillation for every task: train a smaller student on the fine-tuned teacher's soft targets.

Loss (Hinton et al. 2015): ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - alpha) * cross_entropy(student, labels)``, plus ``hint_weight`` times the mean squared error between the
student's hint feature map (through a 1x1 convolution) and the teacher's, for models with a ``hint_layer()``.

The same run without the teacher (``distill.ablation``: alpha 0, same student, init and budget) goes to
``out_dir/baseline``. What differs between tasks (building the student, batches, checkpoints) comes from the
task's ``DistillHooks``. ``out_dir`` receives the student like a fine-tune folder, ``baseline/`` and
``result.json`` comparing the two with the teacher.

Like fine-tuning it trains on the processes it was launched on (``edgetl.train.parallel``): the student is shared
out with DDP, the frozen teacher sits on every process, its cached outputs are computed in parts and gathered, and
only the main process writes and prints.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_path, write_json
from ..settings import Recipe
from .finetune import finished_result, load_state, start_parallel, with_threads
from .hooks import DistillHooks
from .loop import METRICS_FILE, RESULT_FILE, STATE_FILE, device_of, kd_loss, progress_bar, rng_state, \
    seed_everything, set_rng_state, ticker, train_epoch
from .parallel import Parallel

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
    processes: int = 1  # what trained it (edgetl.train.parallel)
    device: str = "cpu"
    mixed_precision: str = "no"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillResult":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def run_distill(recipe: Recipe, hooks: DistillHooks, teacher: nn.Module, out_dir: Path, key: dict[str, Any], *,
                sections: tuple[str, ...], progress: bool = True, checkpoint: str = "",
                parallel: Parallel | None = None) -> DistillResult:  # fmt: skip
    """Distil ``teacher`` into the student the ``hooks`` build; with ``distill.ablation`` also train the student
    without the teacher (same init, same budget) in ``out_dir/baseline``.

    ``key`` identifies recipe, data and teacher; ``sections`` are the recipe sections a student run depends on.
    A rerun with the same key returns the finished result; an interrupted one resumes after its last epoch.
    ``parallel``: the processes to train on; None: those this program was launched on.
    """
    out_dir = Path(out_dir)
    done = finished_result(out_dir, key, hooks, DistillResult)
    if done is not None:
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    job = _Distillation(recipe, hooks, teacher, out_dir, key, sections, progress, checkpoint, parallel)
    return with_threads(recipe.finetune.threads, job.run)


class _Distillation:
    """The teacher and the student runs (with the teacher, then the baseline)."""

    def __init__(self, recipe: Recipe, hooks: DistillHooks, teacher: nn.Module, out_dir: Path, key: dict[str, Any],
                 sections: tuple[str, ...], progress: bool, checkpoint: str, parallel: Parallel | None):
        self.recipe, self.config, self.hooks, self.out_dir, self.key = recipe, recipe.distill, hooks, out_dir, key
        self.sections, self.checkpoint = sections, checkpoint or str(out_dir)
        self.parallel = start_parallel(recipe, hooks, parallel, progress_bar(False).console)
        if device_of(teacher) != self.parallel.device:  # a copy: the caller's teacher stays where it is
            teacher = copy.deepcopy(teacher).to(self.parallel.device)
        self.teacher = hooks.prepare_teacher(teacher.eval())
        self.teacher.requires_grad_(False)
        self.verbose = progress and self.parallel.is_main
        self.bar = progress_bar(self.verbose)

    def run(self) -> DistillResult:
        start = time.perf_counter()
        with self.bar:
            teacher_accuracy = self.hooks.evaluate_teacher(self.teacher, "test")
            student = _StudentRun(self, self.out_dir, self.config.alpha, self.config.hint_weight).run()
            baseline = _StudentRun(self, self.out_dir / BASELINE_DIR, 0.0, 0.0).run() if self.config.ablation else None
        denominator = max(teacher_accuracy, 1e-9)  # a teacher at 0% makes the ratio meaningless, not an error
        relative = student["test_accuracy"] / denominator
        result = DistillResult(
            student=self.hooks.student_name, teacher=self.recipe.model.backbone,
            student_test_accuracy=student["test_accuracy"], student_val_accuracy=student["val_accuracy"],
            teacher_test_accuracy=teacher_accuracy, relative_accuracy=round(relative, 4),
            meets_min_relative_accuracy=relative >= self.config.min_relative_accuracy,
            student_params=student["params"], teacher_params=sum(p.numel() for p in self.teacher.parameters()),
            epochs=student["epochs"], seconds=round(student["seconds"] + (baseline or {}).get("seconds", 0.0), 1),
            checkpoint=self.checkpoint, copied_from_teacher=student["copied"],
            temperature=self.config.temperature, alpha=self.config.alpha, hint_weight=self.config.hint_weight,
            history=student["history"], processes=self.parallel.count, device=self.parallel.device.type,
            mixed_precision=self.parallel.mixed_precision,
        )
        if baseline is not None:
            result.baseline_test_accuracy = baseline["test_accuracy"]
            result.baseline_val_accuracy = baseline["val_accuracy"]
            result.baseline_relative_accuracy = round(baseline["test_accuracy"] / denominator, 4)
            result.baseline_epochs, result.baseline_history = baseline["epochs"], baseline["history"]
        if self.parallel.is_main:
            write_json(self.out_dir / RESULT_FILE, {"key": self.key, **asdict(result), **self.hooks.result_extra()})
        self.parallel.barrier()
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
        digest = hashlib.sha256(json.dumps({k: data[k] for k in self.sections}, sort_keys=True).encode()).hexdigest()
        teacher = self.key["teacher"] if not baseline or self.hooks.baseline_needs_teacher else None
        return {"recipe": digest[:16], "data": self.key["data"], "teacher": teacher, "alpha": alpha,
                "hint_weight": hint_weight}

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
        self.job, self.config, self.hooks, self.out_dir = job, job.config, job.hooks, out_dir
        self.alpha, self.hint_weight = alpha, hint_weight
        self.name = "student" if alpha > 0 else "student (no teacher)"
        self.key, self.parallel = job.run_key(alpha, hint_weight), job.parallel
        seed_everything(job.recipe.run.seed)
        self.model, self.copied = self.hooks.new_student(job.teacher)
        self.model.to(self.parallel.device)
        self.hooks.reset_rng()
        self.adapter = self.hooks.hint_adapter(self.model, job.teacher) if hint_weight > 0 else None
        if self.adapter is not None:
            self.adapter.to(self.parallel.device)
        self.trained, self.trained_adapter = self.model, self.adapter  # what ``prepare`` makes of them while training
        self.history: list[dict[str, Any]] = []
        self.best = {"val_accuracy": -1.0, "epoch": 0}
        self.seconds, self.started = 0.0, time.perf_counter()

    def run(self) -> dict[str, Any]:
        config, hooks, parallel = self.config, self.hooks, self.parallel
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += list(self.adapter.parameters()) if self.adapter else []
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=self.job.recipe.finetune.weight_decay)
        steps = hooks.steps(config.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)
        state = self._load_state(optimizer, scheduler) or {"epoch": 0, "bad_epochs": 0, "done": False}
        parallel.barrier()  # nobody writes before every process has read what was there
        hint, with_teacher = self.hint_weight > 0, self.alpha > 0 or self.hint_weight > 0
        if not state["done"] and with_teacher:
            hooks.cache_teacher(self.job.teacher, hint)  # before the first epoch, so epoch times stay comparable
        models = [self.model] + ([self.adapter] if self.adapter is not None else [])
        *trained, optimizer, scheduler = parallel.prepare(*models, optimizer, scheduler)
        self.trained, self.trained_adapter = trained[0], trained[1] if self.adapter is not None else None
        tick = ticker(self.job.bar, self.name, config.epochs * steps, completed=state["epoch"] * steps)
        epoch = state["epoch"]
        while not state["done"]:
            epoch += 1
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            self.model.train()
            if self.adapter is not None:
                self.adapter.train()
            parallel.same_rng()
            batches = hooks.student_batches(config.batch_size, steps, self.job.teacher if with_teacher else None, hint)
            loss, train_accuracy = train_epoch(self._step, batches, optimizer, scheduler, tick, parallel=parallel,
                                               models=trained)
            parallel.same_buffers(self.model)
            val_accuracy = hooks.evaluate(self.model, "val")
            self._record(epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
            improved = val_accuracy > self.best["val_accuracy"]
            if improved:
                self._save_best(val_accuracy, epoch)
            state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
            state.update(epoch=epoch, done=epoch >= config.epochs or 0 < config.patience <= state["bad_epochs"])
            self._save_state(state, optimizer, scheduler)
        parallel.release(*trained)
        self.trained, self.trained_adapter = self.model, self.adapter
        hooks.load_best(self.model, self.out_dir)
        test_accuracy = hooks.evaluate(self.model, "test")
        self.seconds += time.perf_counter() - self.started
        self.job.log(f"{self.name}: best epoch {self.best['epoch']}, val {self.best['val_accuracy']:.2f}%, "
                     f"test {test_accuracy:.2f}%")
        return {"test_accuracy": test_accuracy, "val_accuracy": self.best["val_accuracy"], "epochs": len(self.history),
                "history": self.history, "seconds": self.seconds, "copied": self.copied,
                "params": sum(p.numel() for p in self.model.parameters())}

    def _step(self, inputs: Any, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
              teacher_map: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with _capture(self.model if self.adapter is not None else None) as student_map:
            logits = self.hooks.forward(self.trained, inputs)
        loss = kd_loss(logits, teacher_logits, labels, temperature=self.config.temperature, alpha=self.alpha,
                       label_smoothing=self.job.recipe.finetune.label_smoothing)
        if self.adapter is not None:
            projected = self.trained_adapter(student_map[0])
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
        if self.parallel.is_main:
            write_json(self.out_dir / METRICS_FILE, self.history)
        self.job.log(f"{self.name} epoch {epoch}: loss {loss:.4f}, train {train_accuracy:.2f}%, val {val:.2f}%, "
                     f"lr {lr:.2e}, {seconds:.1f} s")

    def _save_best(self, val_accuracy: float, epoch: int) -> None:
        self.best = {"val_accuracy": val_accuracy, "epoch": epoch}
        meta = {**self.hooks.meta(self.model), "teacher": self.job.recipe.model.backbone, "alpha": self.alpha,
                "temperature": self.config.temperature, "stage": "distill" if self.alpha else "baseline", **self.best}
        if self.parallel.is_main:
            self.hooks.save(self.model, self.out_dir, meta)

    def _save_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """What a resumed run needs (main process); the others wait until it and the best checkpoint are written."""
        now = time.perf_counter()
        self.seconds, self.started = self.seconds + now - self.started, now
        if self.parallel.is_main:
            payload = {**state, "key": self.key, "model": self.model.state_dict(), "best": self.best,
                       "history": self.history, "seconds": self.seconds, "rng": rng_state(),
                       "hooks_rng": self.hooks.rng_state(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(),
                       "adapter": self.adapter.state_dict() if self.adapter is not None else {}}
            with atomic_path(self.out_dir / STATE_FILE) as tmp:
                torch.save(payload, tmp)
        self.parallel.barrier()

    def _load_state(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any] | None:
        """The state of an interrupted (or finished) run with this key, else None (start over)."""
        saved = load_state(self.out_dir, self.key, self.hooks, self.job.log)
        if saved is None:
            return None
        self.model.load_state_dict(saved["model"])
        if self.adapter is not None:
            self.adapter.load_state_dict(saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        self.best, self.history, self.seconds = saved["best"], saved["history"], saved["seconds"]
        set_rng_state(saved["rng"])
        self.hooks.set_rng_state(saved["hooks_rng"])
        return {k: saved[k] for k in ("epoch", "bad_epochs", "done")}
