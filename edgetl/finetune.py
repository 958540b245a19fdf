"""Transfer learning: a linear probe on cached frozen features, then staged unfreezing.

``out_dir`` receives ``best.safetensors`` + ``checkpoint.json`` (the best model by validation
accuracy), ``metrics.json`` (one entry per epoch), ``last.pt`` (for resuming) and ``result.json``.

>>> result = finetune(recipe, splits, Path("runs/x/finetune"))
>>> model, meta = load_checkpoint("runs/x/finetune")
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ._io import atomic_path, read_json, write_json
from .backbones import create_model, get_spec
from .data.dataset import LabeledImages, Splits
from .errors import RecipeError, WeightsError
from .recipe import FinetuneConfig, Recipe
from .training import (
    CHECKPOINT_FILE, META_FILE, METRICS_FILE, RESULT_FILE, STATE_FILE, cross_entropy_step, evaluate, load_weights_file,
    rng_state, save_checkpoint, seed_everything, set_rng_state, ticker,
)
from .training import accuracy as _accuracy
from .training import augment as _augment
from .training import batches as _batches
from .training import check_splits as _check_splits
from .training import fingerprint as _fingerprint
from .training import progress_bar as _progress_bar
from .training import train_epoch as _train_epoch

__all__ = ["CHECKPOINT_FILE", "META_FILE", "METRICS_FILE", "RESULT_FILE", "STATE_FILE", "FinetuneResult", "evaluate",
           "finetune", "load_checkpoint"]
PROBE = "probe"

# Each unfrozen group further from the output learns at this fraction of the one above it: deeper
# features are more generic and need less change (1.5 points on Fashion-MNIST against no decay).
LAYER_LR_DECAY = 0.7


@dataclass
class FinetuneResult:
    """What a fine-tune achieved; accuracies in percent, ``test_accuracy`` of the best checkpoint."""

    probe_val_accuracy: float
    probe_test_accuracy: float
    val_accuracy: float
    test_accuracy: float
    epochs: int  # epochs run after the probe
    seconds: float  # training time, summed over resumed runs
    checkpoint: str
    best_stage: str = PROBE
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneResult":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def finetune(recipe: Recipe, splits: Splits, out_dir: Path, *, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``recipe.model`` on ``splits``: linear probe, then ``recipe.finetune.unfreeze`` stages.

    ``splits`` must be loaded with ``get_spec(backbone).preprocess(image_size)``. A run with the same
    recipe and data returns the finished result at once, or resumes after its last completed epoch.
    """
    config = recipe.finetune
    _check_config(config)
    _check_splits(splits, recipe.model.image_size)
    out_dir = Path(out_dir)
    key = {"recipe": recipe.section_hash("model", "data", "finetune", "run"), "data": _fingerprint(splits)}
    try:
        finished = read_json(out_dir / RESULT_FILE)
        if finished.get("key") == key and (out_dir / CHECKPOINT_FILE).is_file():
            return FinetuneResult.from_dict(finished)
    except (FileNotFoundError, ValueError):
        pass
    threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _Trainer(recipe, splits, out_dir, key, progress).run()
    finally:
        torch.set_num_threads(threads)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The best fine-tuned model (eval mode) and its metadata, from a fine-tune folder or its .safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = path if path.suffix == ".safetensors" else path / CHECKPOINT_FILE
    meta_file = weights.with_name(META_FILE)
    if not weights.is_file() or not meta_file.is_file():
        raise WeightsError(f"no fine-tuned checkpoint in {weights.parent}; run `edgetl finetune` first")
    meta = read_json(meta_file)
    model = create_model(meta["backbone"], num_classes=meta["num_classes"], image_size=meta["image_size"], weights=None)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as exc:
        raise WeightsError(f"{weights} does not fit {meta['backbone']}: {exc}; rerun `edgetl finetune`") from None
    return model.eval(), meta


# -- checks ---------------------------------------------------------------------------------------


def _check_config(config: FinetuneConfig) -> None:
    if len(config.unfreeze) != len(config.stage_epochs):
        raise RecipeError(f"finetune.unfreeze has {len(config.unfreeze)} stages but finetune.stage_epochs has "
                          f"{len(config.stage_epochs)}; give one epoch count per stage")
    if min([*config.unfreeze, *config.stage_epochs, config.probe_epochs, config.batch_size - 1]) < 1:
        raise RecipeError("finetune.unfreeze, stage_epochs and probe_epochs take positive numbers, batch_size >= 2")


# -- the training run -----------------------------------------------------------------------------


class _Trainer:
    """One fine-tune run: holds the model, the best-so-far record and the history; writes out_dir."""

    def __init__(self, recipe: Recipe, splits: Splits, out_dir: Path, key: dict[str, str], progress: bool):
        self.recipe, self.config, self.splits, self.out_dir, self.key = recipe, recipe.finetune, splits, out_dir, key
        self.preprocess = get_spec(recipe.model.backbone).preprocess(recipe.model.image_size)
        weights = None if recipe.model.weights == "none" else recipe.model.weights
        seed_everything(recipe.run.seed)
        self.model = create_model(recipe.model.backbone, num_classes=len(splits.classes),
                                  image_size=recipe.model.image_size, weights=weights)
        # NHWC is about 1.5x faster for these depthwise convolutions on CPU, in training and inference.
        self.model = self.model.to(memory_format=torch.channels_last)
        self.groups = self.model.unfreeze_groups()
        too_many = [n for n in self.config.unfreeze if n > len(self.groups)]
        if too_many:
            raise RecipeError(f"finetune.unfreeze asks for {too_many[0]} groups but {recipe.model.backbone} has "
                              f"{len(self.groups)}; use at most {len(self.groups)}")
        self.history: list[dict[str, Any]] = []
        self.best = {"val_accuracy": -1.0, "stage": PROBE, "epoch": 0}
        self.probe = {"val_accuracy": 0.0, "test_accuracy": 0.0}
        self.seconds = 0.0
        self.started = time.perf_counter()
        self.verbose, self.bar = progress, _progress_bar(progress)

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

    # -- stage 0: linear probe on cached features ------------------------------------------------

    def _probe(self) -> None:
        """Train only the head on features the frozen backbone computes once per split."""
        config, head = self.config, self.model.head()
        self.model.eval()
        self.model.requires_grad_(False)
        train, val, test = (self._features(split) for split in (self.splits.train, self.splits.val, self.splits.test))
        head.requires_grad_(True)
        steps = math.ceil(len(train[0]) / config.batch_size)
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.probe_lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.probe_epochs * steps)
        tick = self._ticker(PROBE, config.probe_epochs * steps)
        best_head, best_val, best_epoch = head.state_dict(), -1.0, 0
        for epoch in range(1, config.probe_epochs + 1):
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            order = torch.randperm(len(train[0])).split(config.batch_size)
            batches = ((train[0][rows], train[1][rows]) for rows in order)
            loss, accuracy = _train_epoch(cross_entropy_step(head, config.label_smoothing), batches, optimizer,
                                          scheduler, tick)
            with torch.inference_mode():
                val_accuracy = _accuracy(head(val[0]), val[1])
            if val_accuracy > best_val:
                best_val, best_epoch = val_accuracy, epoch
                best_head = {k: v.clone() for k, v in head.state_dict().items()}
            self._record(PROBE, 0, epoch, loss, accuracy, val_accuracy, lr, time.perf_counter() - start)
        head.load_state_dict(best_head)
        with torch.inference_mode():
            self.probe = {"val_accuracy": best_val, "test_accuracy": _accuracy(head(test[0]), test[1])}
        self._save_best(best_val, PROBE, best_epoch)
        self._save_state({"stage": -1, "epoch": config.probe_epochs, "done": True})

    def _features(self, split: LabeledImages) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            batches = _batches(split, self.preprocess, 2 * self.config.batch_size)
            features = torch.cat([self.model.forward_features(x) for x, _ in batches])
        return features.clone(), torch.from_numpy(split.labels)  # a clone outside inference mode can train

    # -- stages 1..n: staged unfreezing ----------------------------------------------------------

    def _stage(self, index: int, resume: dict[str, Any] | None) -> None:
        """Train the head and the first ``unfreeze[index]`` groups, starting from the best model so far."""
        config, name = self.config, f"stage{index}"
        n_groups, epochs = config.unfreeze[index], config.stage_epochs[index]
        if resume is None:
            self._load_best()
        optimizer = self._optimizer(n_groups)
        steps = len(self.splits.train) // config.batch_size or 1  # whole batches: BatchNorm needs more than one
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
        state = {"stage": index, "epoch": 0, "done": False, "stage_best": -1.0, "bad_epochs": 0}
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            state.update({k: resume[k] for k in ("epoch", "stage_best", "bad_epochs")})
        tick = self._ticker(f"{name} ({n_groups} groups)", epochs * steps, completed=state["epoch"] * steps)
        for epoch in range(state["epoch"] + 1, epochs + 1):
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]  # the head's; deeper groups get less
            self._train_mode()
            loss, accuracy = _train_epoch(cross_entropy_step(self.model, config.label_smoothing),
                                          self._train_batches(steps), optimizer, scheduler, tick)
            val_accuracy = evaluate(self.model, self.splits.val, self.preprocess, 2 * config.batch_size)
            self._record(name, n_groups, epoch, loss, accuracy, val_accuracy, lr, time.perf_counter() - start)
            if val_accuracy > self.best["val_accuracy"]:
                self._save_best(val_accuracy, name, epoch)
            improved = val_accuracy > state["stage_best"]
            state.update(epoch=epoch, stage_best=max(val_accuracy, state["stage_best"]),
                         bad_epochs=0 if improved else state["bad_epochs"] + 1)
            state["done"] = epoch == epochs or 0 < config.patience <= state["bad_epochs"]  # patience 0: no stopping
            self._save_state({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            if state["done"]:
                break

    def _train_batches(self, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` shuffled, normalised and (if the recipe says so) augmented training batches."""
        train, size = self.splits.train, self.config.batch_size
        for rows in torch.randperm(len(train))[: steps * size].split(size):
            batch = torch.from_numpy(self.preprocess.normalize(train.images[rows.numpy()]))
            if self.config.augment:
                batch = _augment(batch, max_shift=self.recipe.model.image_size // 8)
            yield batch.contiguous(memory_format=torch.channels_last), torch.from_numpy(train.labels[rows.numpy()])

    def _optimizer(self, n_groups: int) -> torch.optim.Optimizer:
        """AdamW over the head and the first ``n_groups`` groups, each deeper group at a lower lr."""
        self.model.requires_grad_(False)
        param_groups = [{"params": list(self.model.head().parameters()), "lr": self.config.lr}]
        for depth, group in enumerate(self.groups[:n_groups]):
            params = [p for module in group for p in module.parameters()]
            param_groups.append({"params": params, "lr": self.config.lr * LAYER_LR_DECAY ** (depth + 1)})
        for group in param_groups:
            for param in group["params"]:
                param.requires_grad_(True)
        return torch.optim.AdamW(param_groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _train_mode(self) -> None:
        """Train mode (dropout on), but BatchNorm keeps its running statistics unless it must learn them.

        Frozen layers always keep theirs; pre-trained ones too: batch statistics of a new domain (grey
        clothes vs ImageNet) shift every feature the probe's head was fitted to, which cost Fashion-MNIST
        5+ points. Trainable layers of a randomly initialised backbone have no statistics worth keeping.
        """
        self.model.train()
        keep_statistics = self.recipe.model.weights != "none"
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if keep_statistics or not any(p.requires_grad for p in module.parameters()):
                    module.eval()

    # -- records and files -----------------------------------------------------------------------

    def _ticker(self, name: str, steps: int, completed: int = 0) -> Any:
        return ticker(self.bar, name, steps, completed)

    def _log(self, message: str) -> None:
        if self.verbose:
            self.bar.console.print(message, highlight=False)

    def _record(self, stage: str, groups: int, epoch: int, loss: float, accuracy: float, val: float, lr: float,
                seconds: float) -> None:
        self.history.append({"stage": stage, "groups": groups, "epoch": epoch, "train_loss": round(loss, 5),
                             "train_accuracy": round(accuracy, 3), "val_accuracy": round(val, 3), "lr": lr,
                             "seconds": round(seconds, 3)})
        write_json(self.out_dir / METRICS_FILE, self.history)
        if stage != PROBE or epoch == self.config.probe_epochs:
            self._log(f"{stage} epoch {epoch}: loss {loss:.4f}, train {accuracy:.2f}%, val {val:.2f}%, "
                         f"lr {lr:.2e}, {seconds:.1f} s")

    def _save_best(self, val_accuracy: float, stage: str, epoch: int) -> None:
        self.best = {"val_accuracy": val_accuracy, "stage": stage, "epoch": epoch}
        save_checkpoint(self.out_dir, self.model, {
            "backbone": self.recipe.model.backbone, "num_classes": len(self.splits.classes),
            "image_size": self.recipe.model.image_size, "classes": self.splits.classes,
            "preprocess": self.preprocess.to_dict(), **self.best,
        })

    def _load_best(self) -> None:
        load_weights_file(self.model, self.out_dir)

    def _save_state(self, state: dict[str, Any]) -> None:
        """Everything a resumed run needs, after each completed epoch (and after the probe)."""
        now = time.perf_counter()
        self.seconds, self.started = self.seconds + now - self.started, now
        payload = {
            **state, "key": self.key, "model": self.model.state_dict(), "best": self.best, "probe": self.probe,
            "history": self.history, "seconds": self.seconds, "rng": rng_state(),
        }
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(payload, tmp)

    def _load_state(self) -> dict[str, Any] | None:
        """The saved state of an interrupted run of this recipe and data, else None (start over)."""
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a state file from another version or a truncated copy: start over
            return None
        if state.get("key") != self.key or not (self.out_dir / CHECKPOINT_FILE).is_file():
            return None
        self.model.load_state_dict(state["model"])
        self.best, self.probe, self.history = state["best"], state["probe"], state["history"]
        self.seconds = state["seconds"]
        set_rng_state(state["rng"])
        return state

    def _finish(self) -> FinetuneResult:
        self._load_best()
        test_accuracy = (self.probe["test_accuracy"] if self.best["stage"] == PROBE
                         else evaluate(self.model, self.splits.test, self.preprocess, 2 * self.config.batch_size))
        self.seconds += time.perf_counter() - self.started
        result = FinetuneResult(
            probe_val_accuracy=self.probe["val_accuracy"], probe_test_accuracy=self.probe["test_accuracy"],
            val_accuracy=self.best["val_accuracy"], test_accuracy=test_accuracy,
            epochs=sum(1 for h in self.history if h["stage"] != PROBE), seconds=round(self.seconds, 1),
            checkpoint=str(self.out_dir / CHECKPOINT_FILE), best_stage=self.best["stage"],
            best_epoch=self.best["epoch"], history=self.history,
        )
        write_json(self.out_dir / RESULT_FILE, {"key": self.key, **asdict(result)})
        self._log(f"best: {result.best_stage} epoch {result.best_epoch}, val {result.val_accuracy:.2f}%, "
                  f"test {result.test_accuracy:.2f}%; {result.seconds:.0f} s of training")
        return result
