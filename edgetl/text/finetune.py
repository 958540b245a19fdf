"""Text transfer learning: a linear probe on cached mean-pooled embeddings, then the top encoder layers unfrozen.

The same shape as ``edgetl.finetune`` (images): the frozen encoder embeds every text once and the head is
trained on those features; then ``finetune.unfreeze[i]`` groups (head, top layer, next layer, ..., embeddings;
see ``layer_groups``) train for ``finetune.stage_epochs[i]`` epochs with layer-wise learning-rate decay,
early stopping on validation accuracy, length-bucketed batches and a checkpoint after every epoch.

``out_dir`` receives ``model/`` (the best classifier as a Hugging Face folder with its tokenizer),
``checkpoint.json`` (classes, preprocessing, stage), ``lengths.json`` (token-length distribution and the
max_length chosen from it), ``metrics.json`` (one entry per epoch), ``last.pt`` (resume) and ``result.json``.

>>> result = finetune_text(recipe, splits, Path("runs/x/finetune"))
>>> model, meta = load_text_checkpoint("runs/x/finetune")
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_path, read_json, write_json
from ..data.text import length_summary
from ..errors import DataError, RecipeError
from ..finetune import LAYER_LR_DECAY, FinetuneResult
from ..recipe import Recipe
from ..training import (
    META_FILE, METRICS_FILE, RESULT_FILE, STATE_FILE, progress_bar, rng_state, seed_everything, set_rng_state, ticker,
    train_epoch,
)
from .backbones import create_text_classifier, layer_groups, load_text_classifier, resolve_model_dir, save_text_classifier
from .batching import accuracy, clipped_lengths, predict_torch, run_sorted, train_batches
from .preprocess import TextPreprocess

MODEL_DIR = "model"  # the best classifier, a Hugging Face folder (config.json, model.safetensors, tokenizer)
LENGTHS_FILE = "lengths.json"
PROBE = "probe"


# -- shared with distillation and the pipeline ---------------------------------------------------


def base_model_dir(recipe: Recipe) -> Path:
    """The pre-trained encoder's folder: ``model.weights`` when it names a folder, else ``model.backbone``
    (a registered name such as "all-minilm-l6-v2", a folder, or a hub id)."""
    weights = recipe.model.weights
    if weights == "none":
        raise RecipeError('model.weights = "none": text models start from pre-trained weights; '
                          'use "package", "hub" or a local Hugging Face folder')
    return resolve_model_dir(recipe.model.backbone if weights in ("package", "hub") else weights)


def text_preprocess(recipe: Recipe, splits, model_dir: Path) -> tuple[TextPreprocess, dict[str, Any]]:
    """The TextPreprocess to train and ship with, and the token-length report its max_length came from.

    ``text.max_length`` 0 picks the ``text.length_percentile`` of the training texts' token counts, rounded up to
    a multiple of 8 and capped at the model's position limit.
    """
    full = TextPreprocess.from_model_dir(model_dir)
    limit = full.max_length
    summary = length_summary(splits, full, cap=limit, percentile=recipe.text.length_percentile)
    chosen = recipe.text.max_length or summary["max_length"]
    if chosen > limit:
        raise RecipeError(f"text.max_length {chosen} exceeds the model's {limit} positions; choose at most {limit}")
    summary.update({"max_length": chosen, "chosen_from": "text.max_length" if recipe.text.max_length else
                    f"p{recipe.text.length_percentile:g} of the training texts", "model_limit": limit})
    if recipe.text.max_length:  # recount truncation at the length actually used
        counts = {name: full.token_lengths(part.texts) for name, part in
                  (("train", splits.train), ("val", splits.val), ("test", splits.test))}
        summary["truncated"] = {name: int(np.sum(np.asarray(v) > chosen)) for name, v in counts.items()}
    return TextPreprocess.from_model_dir(model_dir, max_length=chosen), summary


def check_text_splits(splits) -> None:
    """Every split non-empty with the train split's classes; every class present in train."""
    for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if len(split) == 0:
            raise DataError(f"the {name} split is empty; give the data source more texts or set data.{name}_per_class")
        if split.classes != splits.classes:
            raise DataError(f"the {name} split's classes differ from train's; load all splits from one source")
    if len(splits.classes) < 2:
        raise DataError(f"training needs at least 2 classes, got {len(splits.classes)}")
    missing = [c for c, n in splits.train.class_counts().items() if n == 0]
    if missing:
        raise DataError(f"the train split has no texts of class {missing[0]!r}; add some or remove the class")


def text_fingerprint(splits) -> str:
    """Identity of the texts and labels of every split."""
    digest = hashlib.sha256(repr(splits.classes).encode())
    for split in (splits.train, splits.val, splits.test):
        digest.update("\x00".join(split.texts).encode())
        digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()[:16]


def save_text_checkpoint(out_dir: Path, model, meta: dict[str, Any], tokenizer_dir: Path) -> None:
    """The model as ``out_dir/model/`` (Hugging Face folder + tokenizer) and its metadata as checkpoint.json."""
    folder = out_dir / MODEL_DIR
    staging = out_dir / f".{MODEL_DIR}.partial"
    save_text_classifier(model, staging, tokenizer_dir=tokenizer_dir)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    staging.rename(folder)
    write_json(out_dir / META_FILE, meta)


def load_text_checkpoint(path: str | Path):
    """The best text classifier of a fine-tune or distillation folder (eval mode) and its metadata."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file() or not (path / MODEL_DIR / "config.json").is_file():
        raise DataError(f"no text checkpoint in {path}; run `edgetl finetune` (or `edgetl distill`) first")
    return load_text_classifier(path / MODEL_DIR), read_json(meta_file)


def checkpoint_preprocess(meta: dict[str, Any], folder: Path) -> TextPreprocess:
    return TextPreprocess.from_dict(meta["preprocess"], root=Path(folder) / MODEL_DIR)


# -- fine-tuning ----------------------------------------------------------------------------------


def finetune_text(recipe: Recipe, splits, out_dir: Path, *, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``recipe.model`` (a text backbone) on text ``splits``: linear probe, then the unfreeze stages.

    A rerun with the same recipe and data returns the finished result, or resumes after its last epoch.
    """
    config = recipe.finetune
    if len(config.unfreeze) != len(config.stage_epochs):
        raise RecipeError(f"finetune.unfreeze has {len(config.unfreeze)} stages but finetune.stage_epochs has "
                          f"{len(config.stage_epochs)}; give one epoch count per stage")
    if min([*config.unfreeze, *config.stage_epochs, config.probe_epochs, config.batch_size - 1], default=1) < 1:
        raise RecipeError("finetune.unfreeze, stage_epochs and probe_epochs take positive numbers, batch_size >= 2")
    check_text_splits(splits)
    out_dir = Path(out_dir)
    key = {"recipe": recipe.section_hash("model", "data", "finetune", "run", "text"), "data": text_fingerprint(splits)}
    try:
        finished = read_json(out_dir / RESULT_FILE)
        if finished.get("key") == key and (out_dir / MODEL_DIR / "config.json").is_file():
            return FinetuneResult.from_dict(finished)
    except (FileNotFoundError, ValueError):
        pass
    threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _TextTrainer(recipe, splits, out_dir, key, progress).run()
    finally:
        torch.set_num_threads(threads)


class _TextTrainer:
    def __init__(self, recipe: Recipe, splits, out_dir: Path, key: dict[str, str], progress: bool):
        self.recipe, self.config, self.splits, self.out_dir, self.key = recipe, recipe.finetune, splits, out_dir, key
        self.base_dir = base_model_dir(recipe)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.preprocess, lengths = text_preprocess(recipe, splits, self.base_dir)
        write_json(out_dir / LENGTHS_FILE, lengths)
        self.lengths = {name: clipped_lengths(self.preprocess, part.texts)
                        for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
        seed_everything(recipe.run.seed)
        self.rng = np.random.default_rng(recipe.run.seed)
        self.model = create_text_classifier(self.base_dir, splits.classes, normalize=recipe.text.normalize)
        self.groups = layer_groups(self.model)
        too_many = [n for n in self.config.unfreeze if n > len(self.groups)]
        if too_many:
            raise RecipeError(f"finetune.unfreeze asks for {too_many[0]} groups but {recipe.model.backbone} has "
                              f"{len(self.groups)} (head, each encoder layer, embeddings); use at most {len(self.groups)}")
        self.history: list[dict[str, Any]] = []
        self.best = {"val_accuracy": -1.0, "stage": PROBE, "epoch": 0}
        self.probe = {"val_accuracy": 0.0, "test_accuracy": 0.0}
        self.seconds, self.started = 0.0, time.perf_counter()
        self.verbose, self.bar = progress, progress_bar(progress)
        self._log(f"max_length {self.preprocess.max_length} ({lengths['chosen_from']}; train p50 "
                  f"{lengths['splits']['train']['p50']:g}, p99 {lengths['splits']['train']['p99']:g}, max "
                  f"{lengths['splits']['train']['max']} tokens; {lengths['truncated']['train']} training texts truncated)")

    def run(self) -> FinetuneResult:
        state = self._load_state()
        with self.bar:
            if state is None:
                self._probe()
                state = {"stage": -1, "done": True}
            for index in range(len(self.config.unfreeze)):
                if index < state["stage"] or (index == state["stage"] and state["done"]):
                    continue
                self._stage(index, state if index == state["stage"] else None)
        return self._finish()

    # -- stage 0: linear probe on cached embeddings ----------------------------------------------

    def _probe(self) -> None:
        config, head = self.config, self.model.classifier
        self.model.eval()
        self.model.requires_grad_(False)
        start = time.perf_counter()
        features = {name: self._embed(name) for name in ("train", "val", "test")}
        self._log(f"probe: embedded {sum(len(f) for f in features.values())} texts once in "
                  f"{time.perf_counter() - start:.1f} s")
        train_x, train_y = features["train"], torch.from_numpy(self.splits.train.labels)
        head.requires_grad_(True)
        steps = math.ceil(len(train_x) / config.batch_size)
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.probe_lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.probe_epochs * steps)
        tick = ticker(self.bar, PROBE, config.probe_epochs * steps)
        best_head, best_val, best_epoch = {k: v.clone() for k, v in head.state_dict().items()}, -1.0, 0

        def step(inputs: torch.Tensor, labels: torch.Tensor):
            logits = head(inputs)
            return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing), logits

        for epoch in range(1, config.probe_epochs + 1):
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            order = torch.randperm(len(train_x)).split(config.batch_size)
            loss, train_accuracy = train_epoch(step, ((train_x[r], train_y[r]) for r in order), optimizer, scheduler,
                                               tick)
            with torch.inference_mode():
                val_accuracy = accuracy(head(features["val"]), self.splits.val.labels)
            if val_accuracy > best_val:
                best_val, best_epoch = val_accuracy, epoch
                best_head = {k: v.clone() for k, v in head.state_dict().items()}
            self._record(PROBE, 0, epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
        head.load_state_dict(best_head)
        with torch.inference_mode():
            self.probe = {"val_accuracy": best_val,
                          "test_accuracy": accuracy(head(features["test"]), self.splits.test.labels)}
        self._log(f"probe: val {best_val:.2f}%, test {self.probe['test_accuracy']:.2f}% (epoch {best_epoch})")
        self._save_best(best_val, PROBE, best_epoch)
        self._save_state({"stage": -1, "epoch": config.probe_epochs, "done": True})

    def _embed(self, split: str) -> torch.Tensor:
        part = getattr(self.splits, split)
        return run_sorted(lambda inputs: self.model.embed(**inputs), part.texts, self.preprocess,
                          self.recipe.text.eval_batch_size, self.lengths[split])

    # -- stages 1..n: the top layers unfrozen ----------------------------------------------------

    def _stage(self, index: int, resume: dict[str, Any] | None) -> None:
        config, name = self.config, f"stage{index}"
        n_groups, epochs = config.unfreeze[index], config.stage_epochs[index]
        if resume is None:
            self._load_best()
        optimizer = self._optimizer(n_groups)
        steps = math.ceil(len(self.splits.train) / config.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
        state = {"stage": index, "epoch": 0, "done": False, "stage_best": -1.0, "bad_epochs": 0}
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            state.update({k: resume[k] for k in ("epoch", "stage_best", "bad_epochs")})
        layers = n_groups - 1
        tick = ticker(self.bar, f"{name} (head+{layers} layer{'s' if layers != 1 else ''})", epochs * steps,
                      completed=state["epoch"] * steps)

        def step(inputs: dict[str, torch.Tensor], labels: torch.Tensor):
            logits = self.model(**inputs).logits
            return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing), logits

        for epoch in range(state["epoch"] + 1, epochs + 1):
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            self.model.train()
            batches = train_batches(self.splits.train, self.preprocess, config.batch_size,
                                    lengths=self.lengths["train"], rng=self.rng, bucketing=self.recipe.text.bucketing)
            loss, train_accuracy = train_epoch(step, batches, optimizer, scheduler, tick)
            val_accuracy = self._evaluate("val")
            self._record(name, n_groups, epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
            if val_accuracy > self.best["val_accuracy"]:
                self._save_best(val_accuracy, name, epoch)
            improved = val_accuracy > state["stage_best"]
            state.update(epoch=epoch, stage_best=max(val_accuracy, state["stage_best"]),
                         bad_epochs=0 if improved else state["bad_epochs"] + 1)
            state["done"] = epoch == epochs or 0 < config.patience <= state["bad_epochs"]
            self._save_state({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            if state["done"]:
                break

    def _optimizer(self, n_groups: int) -> torch.optim.Optimizer:
        """AdamW over the head and the top ``n_groups - 1`` groups, each deeper group at a lower lr."""
        self.model.requires_grad_(False)
        param_groups = []
        for depth, params in enumerate(self.groups[:n_groups]):
            param_groups.append({"params": params, "lr": self.config.lr * LAYER_LR_DECAY**depth})
            for param in params:
                param.requires_grad_(True)
        return torch.optim.AdamW(param_groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _evaluate(self, split: str) -> float:
        part = getattr(self.splits, split)
        logits = predict_torch(self.model, part, self.preprocess, self.recipe.text.eval_batch_size, self.lengths[split])
        return accuracy(logits, part.labels)

    # -- records and files -----------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.verbose:
            self.bar.console.print(message, highlight=False)

    def _record(self, stage: str, groups: int, epoch: int, loss: float, train_accuracy: float, val: float, lr: float,
                seconds: float) -> None:
        self.history.append({"stage": stage, "groups": groups, "epoch": epoch, "train_loss": round(loss, 5),
                             "train_accuracy": round(train_accuracy, 3), "val_accuracy": round(val, 3), "lr": lr,
                             "seconds": round(seconds, 3)})
        write_json(self.out_dir / METRICS_FILE, self.history)
        if stage != PROBE or epoch == self.config.probe_epochs:
            self._log(f"{stage} epoch {epoch}: loss {loss:.4f}, train {train_accuracy:.2f}%, val {val:.2f}%, "
                      f"lr {lr:.2e}, {seconds:.1f} s")

    def _meta(self) -> dict[str, Any]:
        return {"kind": "text", "backbone": self.recipe.model.backbone, "base_model": str(self.base_dir),
                "num_classes": len(self.splits.classes), "classes": self.splits.classes,
                "num_layers": self.model.config.num_hidden_layers, "preprocess": self.preprocess.to_dict(), **self.best}

    def _save_best(self, val_accuracy: float, stage: str, epoch: int) -> None:
        self.best = {"val_accuracy": val_accuracy, "stage": stage, "epoch": epoch}
        save_text_checkpoint(self.out_dir, self.model, self._meta(), self.base_dir)

    def _load_best(self) -> None:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(self.out_dir / MODEL_DIR / "model.safetensors")))

    def _save_state(self, state: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.seconds, self.started = self.seconds + now - self.started, now
        payload = {**state, "key": self.key, "model": self.model.state_dict(), "best": self.best, "probe": self.probe,
                   "history": self.history, "seconds": self.seconds, "rng": rng_state(),
                   "np_rng": self.rng.bit_generator.state}
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(payload, tmp)

    def _load_state(self) -> dict[str, Any] | None:
        path = self.out_dir / STATE_FILE
        if not path.is_file() or not (self.out_dir / MODEL_DIR / "config.json").is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a state file from another version or a truncated copy: start over
            return None
        if state.get("key") != self.key:
            return None
        self.model.load_state_dict(state["model"])
        self.best, self.probe, self.history = state["best"], state["probe"], state["history"]
        self.seconds = state["seconds"]
        set_rng_state(state["rng"])
        self.rng.bit_generator.state = state["np_rng"]
        self._log(f"resuming after {state['stage'] if state['stage'] >= 0 else PROBE} epoch {state.get('epoch', 0)}")
        return state

    def _finish(self) -> FinetuneResult:
        self._load_best()
        test_accuracy = self.probe["test_accuracy"] if self.best["stage"] == PROBE else self._evaluate("test")
        self.seconds += time.perf_counter() - self.started
        result = FinetuneResult(
            probe_val_accuracy=self.probe["val_accuracy"], probe_test_accuracy=self.probe["test_accuracy"],
            val_accuracy=self.best["val_accuracy"], test_accuracy=test_accuracy,
            epochs=sum(1 for h in self.history if h["stage"] != PROBE), seconds=round(self.seconds, 1),
            checkpoint=str(self.out_dir / MODEL_DIR), best_stage=self.best["stage"], best_epoch=self.best["epoch"],
            history=self.history,
        )
        write_json(self.out_dir / RESULT_FILE, {"key": self.key, **asdict(result),
                                                "max_length": self.preprocess.max_length})
        self._log(f"best: {result.best_stage} epoch {result.best_epoch}, val {result.val_accuracy:.2f}%, "
                  f"test {result.test_accuracy:.2f}% (probe {result.probe_test_accuracy:.2f}%); "
                  f"{result.seconds:.0f} s of training")
        return result
