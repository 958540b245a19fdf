"""Text knowledge distillation: a shallower copy of the fine-tuned teacher (DistilBERT-style: every other encoder
layer, e.g. layers 0, 2, 4 of 6) trained on the teacher's soft targets with the same loss as the image students
(``edgetl.distill.kd_loss``), and the ablation: the same student, same init and budget, without the teacher.

``out_dir`` receives the student like a fine-tune folder (``model/``, ``checkpoint.json``, ``metrics.json``,
``last.pt``), ``baseline/`` with the no-teacher student, and ``result.json`` (``edgetl.distill.DistillResult``).

>>> teacher, meta = load_text_checkpoint("runs/x/finetune")
>>> result = distill_text(recipe, splits, teacher, meta, Path("runs/x/distill"))
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path, read_json, write_json
from ..distill import BASELINE_DIR, DistillResult, kd_loss
from ..errors import RecipeError
from ..recipe import Recipe
from ..training import (
    METRICS_FILE, RESULT_FILE, STATE_FILE, model_hash, progress_bar, rng_state, seed_everything, set_rng_state, ticker,
    train_epoch,
)
from .backbones import make_student
from .batching import accuracy, clipped_lengths, predict_torch, train_batches
from .finetune import MODEL_DIR, check_text_splits, save_text_checkpoint, text_fingerprint
from .preprocess import TextPreprocess


def student_layers(recipe: Recipe, teacher_layers: int) -> list[int]:
    """``text.student_layers``, or every other teacher layer from the first (DistilBERT's choice)."""
    layers = list(recipe.text.student_layers) or list(range(0, teacher_layers, 2))
    if not layers or any(not 0 <= i < teacher_layers for i in layers) or layers != sorted(set(layers)):
        raise RecipeError(f"text.student_layers must be distinct, increasing indices in [0, {teacher_layers}), "
                          f"got {layers}")
    return layers


def distill_text(recipe: Recipe, splits, teacher, teacher_meta: dict[str, Any], out_dir: Path, *,
                 tokenizer_dir: Path, progress: bool = True) -> DistillResult:  # fmt: skip
    """Distil the text ``teacher`` into a student keeping ``student_layers`` of it; with ``distill.ablation``
    also train the same student without the teacher in ``out_dir/baseline``. Resumable like fine-tuning."""
    config = recipe.distill
    if not config.temperature > 0 or not 0 <= config.alpha <= 1:
        raise RecipeError("distill.temperature must be > 0 and distill.alpha within [0, 1]")
    if config.epochs < 1 or config.batch_size < 2 or not config.lr > 0 or config.patience < 0:
        raise RecipeError("distill.epochs must be >= 1, batch_size >= 2, lr > 0 and patience >= 0 (0: no early stop)")
    if config.hint_weight > 0:
        raise RecipeError("distill.hint_weight is for image students; set it to 0 for text models")
    check_text_splits(splits)
    out_dir = Path(out_dir)
    key = {"recipe": recipe.section_hash("distill", "model", "data", "finetune", "run", "text"),
           "data": text_fingerprint(splits), "teacher": model_hash(teacher)}
    try:
        finished = read_json(out_dir / RESULT_FILE)
        if finished.get("key") == key and (out_dir / MODEL_DIR / "config.json").is_file():
            return DistillResult.from_dict(finished)
    except (FileNotFoundError, ValueError):
        pass
    threads = torch.get_num_threads()
    if recipe.finetune.threads > 0:
        torch.set_num_threads(recipe.finetune.threads)
    try:
        return _TextDistillation(recipe, splits, teacher, teacher_meta, out_dir, key, tokenizer_dir, progress).run()
    finally:
        torch.set_num_threads(threads)


class _TextDistillation:
    def __init__(self, recipe, splits, teacher, teacher_meta, out_dir, key, tokenizer_dir, progress):
        self.recipe, self.config, self.splits, self.out_dir, self.key = recipe, recipe.distill, splits, out_dir, key
        self.teacher, self.teacher_meta, self.tokenizer_dir = teacher.eval(), teacher_meta, Path(tokenizer_dir)
        self.teacher.requires_grad_(False)
        self.preprocess = TextPreprocess.from_dict(teacher_meta["preprocess"], root=self.tokenizer_dir)
        self.layers = student_layers(recipe, teacher.config.num_hidden_layers)
        self.lengths = {name: clipped_lengths(self.preprocess, getattr(splits, name).texts)
                        for name in ("train", "val", "test")}
        self.teacher_logits: torch.Tensor | None = None
        self.bar, self.verbose = progress_bar(progress), progress

    def log(self, message: str) -> None:
        if self.verbose:
            self.bar.console.print(message, highlight=False)

    def evaluate(self, model, split: str) -> float:
        part = getattr(self.splits, split)
        logits = predict_torch(model, part, self.preprocess, self.recipe.text.eval_batch_size, self.lengths[split])
        return accuracy(logits, part.labels)

    def cached_teacher_logits(self) -> torch.Tensor:
        """The teacher's logits on every training text, computed once (eval mode: no dropout)."""
        if self.teacher_logits is None:
            start = time.perf_counter()
            self.teacher_logits = predict_torch(self.teacher, self.splits.train, self.preprocess,
                                                self.recipe.text.eval_batch_size, self.lengths["train"])
            self.log(f"teacher logits on {len(self.splits.train)} training texts cached in "
                     f"{time.perf_counter() - start:.1f} s")
        return self.teacher_logits

    def new_student(self):
        """The teacher with only ``layers`` kept; everything trains except the word embeddings, which stay the
        teacher's (on MiniLM 11.7 M of the student's 17.4 M parameters: a dense gradient and optimizer update per
        step that buys little for a student distilled from the same vocabulary)."""
        seed_everything(self.recipe.run.seed)
        student = make_student(self.teacher, self.layers)
        student.requires_grad_(True)
        student.bert.embeddings.word_embeddings.requires_grad_(False)
        return student

    def run(self) -> DistillResult:
        start = time.perf_counter()
        with self.bar:
            teacher_accuracy = self.evaluate(self.teacher, "test")
            student = _StudentRun(self, self.out_dir, self.config.alpha).run()
            baseline = _StudentRun(self, self.out_dir / BASELINE_DIR, 0.0).run() if self.config.ablation else None
        denominator = max(teacher_accuracy, 1e-9)
        relative = student["test_accuracy"] / denominator
        result = DistillResult(
            student=f"{self.recipe.model.backbone} layers {','.join(map(str, self.layers))}",
            teacher=self.recipe.model.backbone,
            student_test_accuracy=student["test_accuracy"], student_val_accuracy=student["val_accuracy"],
            teacher_test_accuracy=teacher_accuracy, relative_accuracy=round(relative, 4),
            meets_min_relative_accuracy=relative >= self.config.min_relative_accuracy,
            student_params=student["params"], teacher_params=sum(p.numel() for p in self.teacher.parameters()),
            epochs=student["epochs"], seconds=round(student["seconds"] + (baseline or {}).get("seconds", 0.0), 1),
            checkpoint=str(self.out_dir / MODEL_DIR), copied_from_teacher=student["copied"],
            temperature=self.config.temperature, alpha=self.config.alpha, hint_weight=0.0,
            history=student["history"],
        )
        if baseline is not None:
            result.baseline_test_accuracy = baseline["test_accuracy"]
            result.baseline_val_accuracy = baseline["val_accuracy"]
            result.baseline_relative_accuracy = round(baseline["test_accuracy"] / denominator, 4)
            result.baseline_epochs, result.baseline_history = baseline["epochs"], baseline["history"]
        write_json(self.out_dir / RESULT_FILE, {"key": self.key, **asdict(result), "student_layers": self.layers})
        self.log(f"teacher {teacher_accuracy:.2f}%, student {result.student_test_accuracy:.2f}% "
                 f"({100 * relative:.1f}% of the teacher)"
                 + (f", without the teacher {result.baseline_test_accuracy:.2f}%" if baseline else "")
                 + f"; {time.perf_counter() - start:.0f} s")
        return result


class _StudentRun:
    """One student run in ``out_dir``: AdamW + cosine, early stopping on val accuracy, resumable after each epoch."""

    def __init__(self, job: _TextDistillation, out_dir: Path, alpha: float):
        self.job, self.config, self.out_dir, self.alpha = job, job.config, Path(out_dir), alpha
        self.name = "student" if alpha > 0 else "student (no teacher)"
        self.model = job.new_student()
        self.copied = len(self.model.state_dict())  # every tensor starts as the teacher's (both runs)
        self.key = self._key()
        self.history: list[dict[str, Any]] = []
        self.best = {"val_accuracy": -1.0, "epoch": 0}
        self.seconds, self.started = 0.0, time.perf_counter()
        self.rng = np.random.default_rng(job.recipe.run.seed)

    def _key(self) -> dict[str, Any]:
        """What this run depends on: not the ablation switch or the goal; the baseline not the loss mix."""
        ignored = {"enabled", "ablation", "min_relative_accuracy"} | ({"alpha", "temperature"} if self.alpha == 0 else set())
        data = self.job.recipe.to_dict()
        data["distill"] = {k: v for k, v in data["distill"].items() if k not in ignored}
        digest = hashlib.sha256(json.dumps({k: data[k] for k in ("distill", "model", "data", "finetune", "run", "text")},
                                           sort_keys=True).encode()).hexdigest()[:16]
        return {"recipe": digest, "data": self.job.key["data"], "teacher": self.job.key["teacher"], "alpha": self.alpha}

    def run(self) -> dict[str, Any]:
        config, job = self.config, self.job
        self.out_dir.mkdir(parents=True, exist_ok=True)
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                      weight_decay=job.recipe.finetune.weight_decay)
        steps = math.ceil(len(job.splits.train) / config.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)
        state = self._load_state(optimizer, scheduler) or {"epoch": 0, "bad_epochs": 0, "done": False}
        extra = (job.cached_teacher_logits(),) if self.alpha > 0 and not state["done"] else ()
        tick = ticker(job.bar, self.name, config.epochs * steps, completed=state["epoch"] * steps)
        smoothing = job.recipe.finetune.label_smoothing

        def step(inputs, labels, teacher_logits=None):
            logits = self.model(**inputs).logits
            loss = kd_loss(logits, teacher_logits, labels, temperature=config.temperature, alpha=self.alpha,
                           label_smoothing=smoothing)
            return loss, logits

        epoch = state["epoch"]
        while not state["done"]:
            epoch += 1
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            self.model.train()
            batches = train_batches(job.splits.train, job.preprocess, config.batch_size, lengths=job.lengths["train"],
                                    rng=self.rng, bucketing=job.recipe.text.bucketing, extra=extra)
            loss, train_accuracy = train_epoch(step, batches, optimizer, scheduler, tick)
            val_accuracy = job.evaluate(self.model, "val")
            self._record(epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
            improved = val_accuracy > self.best["val_accuracy"]
            if improved:
                self._save_best(val_accuracy, epoch)
            state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
            state.update(epoch=epoch, done=epoch >= config.epochs or 0 < config.patience <= state["bad_epochs"])
            self._save_state(state, optimizer, scheduler)
        self._load_best()
        test_accuracy = job.evaluate(self.model, "test")
        self.seconds += time.perf_counter() - self.started
        job.log(f"{self.name}: best epoch {self.best['epoch']}, val {self.best['val_accuracy']:.2f}%, "
                f"test {test_accuracy:.2f}%")
        return {"test_accuracy": test_accuracy, "val_accuracy": self.best["val_accuracy"], "epochs": len(self.history),
                "history": self.history, "seconds": self.seconds, "copied": self.copied,
                "params": sum(p.numel() for p in self.model.parameters())}

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
        meta = {**{k: v for k, v in job.teacher_meta.items() if k not in ("val_accuracy", "stage", "epoch")},
                "backbone": f"{job.recipe.model.backbone} (layers {','.join(map(str, job.layers))})",
                "num_layers": len(job.layers), "student_layers": job.layers, "teacher": job.recipe.model.backbone,
                "alpha": self.alpha, "temperature": self.config.temperature,
                "stage": "distill" if self.alpha else "baseline", **self.best}
        save_text_checkpoint(self.out_dir, self.model, meta, job.tokenizer_dir)

    def _load_best(self) -> None:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(self.out_dir / MODEL_DIR / "model.safetensors")))

    def _save_state(self, state: dict[str, Any], optimizer, scheduler) -> None:
        now = time.perf_counter()
        self.seconds, self.started = self.seconds + now - self.started, now
        payload = {**state, "key": self.key, "model": self.model.state_dict(), "best": self.best,
                   "history": self.history, "seconds": self.seconds, "rng": rng_state(),
                   "np_rng": self.rng.bit_generator.state, "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict()}
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(payload, tmp)

    def _load_state(self, optimizer, scheduler) -> dict[str, Any] | None:
        path = self.out_dir / STATE_FILE
        if not path.is_file() or not (self.out_dir / MODEL_DIR / "config.json").is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # another version's state, or a truncated copy: start over
            return None
        if saved.get("key") != self.key:
            return None
        self.model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        self.best, self.history, self.seconds = saved["best"], saved["history"], saved["seconds"]
        set_rng_state(saved["rng"])
        self.rng.bit_generator.state = saved["np_rng"]
        return {k: saved[k] for k in ("epoch", "bad_epochs", "done")}
