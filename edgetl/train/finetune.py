"""Transfer learning for every task: a linear probe on cached frozen features, then staged unfreezing.

One trainer serves image and text models; what differs (building the model, drawing and feeding batches,
checkpoint files) comes from the task's ``TrainHooks`` (``edgetl.train.hooks``). ``out_dir`` receives the best
model by validation accuracy (the hooks' checkpoint format, with ``checkpoint.json``), ``metrics.json`` (one entry
per epoch), ``last.pt`` (for resuming) and ``result.json``.

It trains on the processes and device it was launched on (``edgetl.train.parallel``: one CPU process by default;
``accelerate launch`` or ``torchrun`` for several, GPUs when present): every process trains on its share of each
batch, and only the main process writes ``out_dir`` and prints.

>>> result = edgetl.tasks.finetune(recipe, splits, Path("runs/x/finetune"))   # the task builds the hooks
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .._io import atomic_path, read_json, write_json
from ..settings import Recipe
from .hooks import TrainHooks
from .loop import (
    METRICS_FILE, RESULT_FILE, STATE_FILE, accuracy, cross_entropy_step, progress_bar, rng_state, seed_everything,
    set_rng_state, ticker, train_epoch,
)
from .parallel import Parallel

PROBE = "probe"

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
    processes: int = 1  # what trained it (edgetl.train.parallel)
    device: str = "cpu"
    mixed_precision: str = "no"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneResult":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def finished_result(out_dir: Path, key: dict[str, Any], hooks: TrainHooks, cls: type) -> Any:
    """The result of a finished run with this ``key`` whose checkpoint is still there, else None."""
    try:
        finished = read_json(out_dir / RESULT_FILE)
    except (FileNotFoundError, ValueError):
        return None
    if finished.get("key") == key and hooks.has_checkpoint(out_dir):
        return cls.from_dict(finished)
    return None


def with_threads(threads: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with torch using ``threads`` threads (0: leave the default), restoring the setting after."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def run_finetune(recipe: Recipe, hooks: TrainHooks, out_dir: Path, key: dict[str, Any], *, progress: bool = True,
                 checkpoint: str = "", parallel: Parallel | None = None) -> FinetuneResult:  # fmt: skip
    """Fine-tune the model the ``hooks`` build: linear probe, then the ``recipe.finetune.unfreeze`` stages.

    ``key`` identifies the recipe and data: a rerun with the same key returns the finished result at once, or
    resumes after its last completed epoch. ``checkpoint`` is recorded as the result's checkpoint path.
    ``parallel``: the processes to train on; None: those this program was launched on (``Parallel.start``).
    """
    out_dir = Path(out_dir)
    done = finished_result(out_dir, key, hooks, FinetuneResult)
    if done is not None:
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    return with_threads(recipe.finetune.threads,
                        lambda: _Trainer(recipe, hooks, out_dir, key, progress, checkpoint, parallel).run())


def start_parallel(recipe: Recipe, hooks: Any, parallel: Parallel | None, console: Any) -> Parallel:
    """``parallel``, or the processes this program was launched on, lent to the ``hooks``."""
    if parallel is None:
        parallel = Parallel.start(recipe.finetune, lambda message: console.print(message, highlight=False))
    hooks.use(parallel)
    return parallel


class _Trainer:
    """One fine-tune run: holds the model, the best-so-far record and the history; writes out_dir."""

    def __init__(self, recipe: Recipe, hooks: TrainHooks, out_dir: Path, key: dict[str, Any], progress: bool,
                 checkpoint: str, parallel: Parallel | None):
        self.recipe, self.config, self.hooks, self.out_dir, self.key = recipe, recipe.finetune, hooks, out_dir, key
        self.checkpoint = checkpoint or str(out_dir)
        self.parallel = parallel = start_parallel(recipe, hooks, parallel, progress_bar(False).console)
        seed_everything(recipe.run.seed)
        self.model = hooks.new_model().to(parallel.device)
        limit = hooks.max_groups(self.model)
        too_many = [n for n in self.config.unfreeze if n > limit]
        if too_many:
            from ..errors import RecipeError

            raise RecipeError(f"finetune.unfreeze asks for {too_many[0]} groups but {recipe.model.backbone} has "
                              f"{limit}; use at most {limit}")
        self.history: list[dict[str, Any]] = []
        self.best = {"val_accuracy": -1.0, "stage": PROBE, "epoch": 0}
        self.probe = {"val_accuracy": 0.0, "test_accuracy": 0.0}
        self.seconds = 0.0
        self.started = time.perf_counter()
        self.verbose = progress and parallel.is_main
        self.bar = progress_bar(self.verbose)
        if parallel.accelerator is not None and not parallel.plain:
            self._log(parallel.describe())

    def run(self) -> FinetuneResult:
        state = self._load_state()
        self.parallel.barrier()  # nobody writes before every process has read what was there
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
        """Train only the head on features the frozen backbone computes once per split (split between the
        processes and gathered, on several)."""
        config, head, hooks, parallel = self.config, self.hooks.head(self.model), self.hooks, self.parallel
        self.model.eval()
        self.model.requires_grad_(False)
        start = time.perf_counter()
        train, val, test = ((hooks.features(self.model, split).to(parallel.device),
                             hooks.labels(split).to(parallel.device)) for split in ("train", "val", "test"))
        self._log(f"probe: features of {len(train[0]) + len(val[0]) + len(test[0])} samples computed once in "
                  f"{time.perf_counter() - start:.1f} s")
        head.requires_grad_(True)
        steps = math.ceil(len(train[0]) / config.batch_size)
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.probe_lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.probe_epochs * steps)
        trained_head, optimizer, scheduler = parallel.prepare(head, optimizer, scheduler)
        tick = ticker(self.bar, PROBE, config.probe_epochs * steps)
        best_head, best_val, best_epoch = {k: v.clone() for k, v in head.state_dict().items()}, -1.0, 0
        for epoch in range(1, config.probe_epochs + 1):
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]
            parallel.same_rng()
            order = torch.randperm(len(train[0])).split(config.batch_size)
            batches = ((train[0][rows], train[1][rows]) for rows in map(parallel.shard, order))
            loss, train_accuracy = train_epoch(cross_entropy_step(trained_head, config.label_smoothing), batches,
                                               optimizer, scheduler, tick, parallel=parallel, models=[trained_head])
            val_accuracy = self._probe_accuracy(head, val)
            if val_accuracy > best_val:
                best_val, best_epoch = val_accuracy, epoch
                best_head = {k: v.clone() for k, v in head.state_dict().items()}
            self._record(PROBE, 0, epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
        parallel.release(trained_head)
        head.load_state_dict(best_head)
        self.probe = {"val_accuracy": best_val, "test_accuracy": self._probe_accuracy(head, test)}
        self._save_best(best_val, PROBE, best_epoch)
        self._save_state({"stage": -1, "epoch": config.probe_epochs, "done": True})

    def _probe_accuracy(self, head: torch.nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> float:
        features, labels = split
        with torch.inference_mode():
            return self.parallel.accuracy(len(labels), lambda rows: accuracy(
                head(features if rows is None else features[rows]), labels if rows is None else labels[rows]))

    # -- stages 1..n: staged unfreezing ----------------------------------------------------------

    def _stage(self, index: int, resume: dict[str, Any] | None) -> None:
        """Train the parameter groups of ``unfreeze[index]``, starting from the best model so far."""
        config, name, hooks = self.config, f"stage{index}", self.hooks
        n_groups, epochs, parallel = config.unfreeze[index], config.stage_epochs[index], self.parallel
        if resume is None:
            hooks.load_best(self.model, self.out_dir)
        optimizer = self._optimizer(n_groups)
        steps = hooks.steps(config.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
        state = {"stage": index, "epoch": 0, "done": False, "stage_best": -1.0, "bad_epochs": 0}
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            state.update({k: resume[k] for k in ("epoch", "stage_best", "bad_epochs")})
        model, optimizer, scheduler = parallel.prepare(self.model, optimizer, scheduler)
        tick = ticker(self.bar, f"{name} ({n_groups} groups)", epochs * steps, completed=state["epoch"] * steps)
        step = cross_entropy_step(lambda inputs: hooks.forward(model, inputs), config.label_smoothing)
        for epoch in range(state["epoch"] + 1, epochs + 1):
            start, lr = time.perf_counter(), scheduler.get_last_lr()[0]  # the head's; deeper groups get less
            hooks.train_mode(self.model)
            parallel.same_rng()
            loss, train_accuracy = train_epoch(step, hooks.train_batches(config.batch_size, steps), optimizer,
                                               scheduler, tick, parallel=parallel, models=[model])
            parallel.same_buffers(self.model)
            val_accuracy = hooks.evaluate(self.model, "val")
            self._record(name, n_groups, epoch, loss, train_accuracy, val_accuracy, lr, time.perf_counter() - start)
            if val_accuracy > self.best["val_accuracy"]:
                self._save_best(val_accuracy, name, epoch)
            improved = val_accuracy > state["stage_best"]
            state.update(epoch=epoch, stage_best=max(val_accuracy, state["stage_best"]),
                         bad_epochs=0 if improved else state["bad_epochs"] + 1)
            state["done"] = epoch == epochs or 0 < config.patience <= state["bad_epochs"]  # patience 0: no stopping
            self._save_state({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            if state["done"]:
                break
        parallel.release(model)

    def _optimizer(self, n_groups: int) -> torch.optim.Optimizer:
        """AdamW over the stage's parameter groups (head first), each deeper group at a lower lr."""
        self.model.requires_grad_(False)
        param_groups = []
        for depth, params in enumerate(self.hooks.param_groups(self.model, n_groups)):
            param_groups.append({"params": params, "lr": self.config.lr * self.config.layer_lr_decay**depth})
            for param in params:
                param.requires_grad_(True)
        return torch.optim.AdamW(param_groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    # -- records and files -----------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.verbose:
            self.bar.console.print(message, highlight=False)

    def _warn(self, message: str) -> None:
        """Printed with or without --quiet (by the main process): something the user must know happened."""
        if self.parallel.is_main:
            self.bar.console.print(message, highlight=False)

    def _record(self, stage: str, groups: int, epoch: int, loss: float, train_accuracy: float, val: float, lr: float,
                seconds: float) -> None:
        self.history.append({"stage": stage, "groups": groups, "epoch": epoch, "train_loss": round(loss, 5),
                             "train_accuracy": round(train_accuracy, 3), "val_accuracy": round(val, 3), "lr": lr,
                             "seconds": round(seconds, 3)})
        if self.parallel.is_main:
            write_json(self.out_dir / METRICS_FILE, self.history)
        if stage != PROBE or epoch == self.config.probe_epochs:
            self._log(f"{stage} epoch {epoch}: loss {loss:.4f}, train {train_accuracy:.2f}%, val {val:.2f}%, "
                      f"lr {lr:.2e}, {seconds:.1f} s")

    def _save_best(self, val_accuracy: float, stage: str, epoch: int) -> None:
        self.best = {"val_accuracy": val_accuracy, "stage": stage, "epoch": epoch}
        if self.parallel.is_main:
            self.hooks.save(self.model, self.out_dir, {**self.hooks.meta(self.model), **self.best})

    def _save_state(self, state: dict[str, Any]) -> None:
        """Everything a resumed run needs, after each completed epoch (and after the probe); the other processes
        wait until it (and the best checkpoint) is written."""
        now = time.perf_counter()
        self.seconds, self.started = self.seconds + now - self.started, now
        if self.parallel.is_main:
            payload = {
                **state, "key": self.key, "model": self.model.state_dict(), "best": self.best, "probe": self.probe,
                "history": self.history, "seconds": self.seconds, "rng": rng_state(),
                "hooks_rng": self.hooks.rng_state(),
            }
            with atomic_path(self.out_dir / STATE_FILE) as tmp:
                torch.save(payload, tmp)
        self.parallel.barrier()

    def _load_state(self) -> dict[str, Any] | None:
        """The saved state of an interrupted run of this recipe and data, else None (start over)."""
        state = load_state(self.out_dir, self.key, self.hooks, self._warn)
        if state is None:
            return None
        self.model.load_state_dict(state["model"])
        self.best, self.probe, self.history = state["best"], state["probe"], state["history"]
        self.seconds = state["seconds"]
        set_rng_state(state["rng"])
        self.hooks.set_rng_state(state["hooks_rng"])
        self._log(f"resuming after {state['stage'] if state['stage'] >= 0 else PROBE} epoch {state.get('epoch', 0)}")
        return state

    def _finish(self) -> FinetuneResult:
        self.hooks.load_best(self.model, self.out_dir)
        test_accuracy = (self.probe["test_accuracy"] if self.best["stage"] == PROBE
                         else self.hooks.evaluate(self.model, "test"))
        self.seconds += time.perf_counter() - self.started
        parallel = self.parallel
        result = FinetuneResult(
            probe_val_accuracy=self.probe["val_accuracy"], probe_test_accuracy=self.probe["test_accuracy"],
            val_accuracy=self.best["val_accuracy"], test_accuracy=test_accuracy,
            epochs=sum(1 for h in self.history if h["stage"] != PROBE), seconds=round(self.seconds, 1),
            checkpoint=self.checkpoint, best_stage=self.best["stage"], best_epoch=self.best["epoch"],
            history=self.history, processes=parallel.count, device=parallel.device.type,
            mixed_precision=parallel.mixed_precision,
        )
        if parallel.is_main:
            write_json(self.out_dir / RESULT_FILE, {"key": self.key, **asdict(result)})
        parallel.barrier()
        self._log(f"best: {result.best_stage} epoch {result.best_epoch}, val {result.val_accuracy:.2f}%, "
                  f"test {result.test_accuracy:.2f}% (probe {result.probe_test_accuracy:.2f}%); "
                  f"{result.seconds:.0f} s of training")
        return result


def load_state(out_dir: Path, key: dict[str, Any], hooks: TrainHooks, log: Callable[[str], None]
               ) -> dict[str, Any] | None:
    """The ``last.pt`` of an interrupted run with this ``key`` (and its checkpoint), else None: start over.

    A state file that cannot be read (truncated, another version's) is said on the console, not silently dropped.
    """
    path = out_dir / STATE_FILE
    if not path.is_file() or not hooks.has_checkpoint(out_dir):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated copy or another version's format: start over, and say so
        log(f"warning: cannot read {path} ({type(exc).__name__}); training starts over from the beginning")
        return None
    if state.get("key") != key or "hooks_rng" not in state:
        return None
    return state
