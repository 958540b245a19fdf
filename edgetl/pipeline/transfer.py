"""Did transfer learning pay? The fine-tuned model against two baselines on the same test split: the linear probe
(a new head on the frozen pre-trained features, which every fine-tune trains first) and, with
``finetune.scratch_baseline``, the same backbone trained from random weights on the same budget
(``runs/<name>/scratch/``). ``transfer_verdict`` says plainly when fine-tuning lost to either (negative transfer);
the run summary (``transfer``), the CLI and the bundle's model card carry it. Runs of a ``model.source`` have none:
nothing was fine-tuned.

The scratch run is the task's own fine-tune on a copy of the recipe (``scratch_recipe``): ``model.weights =
"none"``, every parameter group trainable from the start in one stage of ``sum(finetune.stage_epochs)`` epochs at
one learning rate (``layer_lr_decay = 1``: staged unfreezing and lower rates for deeper groups protect pre-trained
features, and random ones have none to protect), everything else as the recipe says. The trainer's linear probe still runs its ``probe_epochs`` first: on
random features it only warms up the head, and its accuracy is not reported. The scratch run is cached and resumed
like the teacher (the trainer's key covers the copy's recipe and the data), and the teacher, the student and their
artifacts never see the switch (``without_scratch``): turning it on trains the baseline and nothing else.

>>> transfer_verdict(82.85, 90.7, 70.0)["verdict"]
'fine-tuning beat the linear probe by 7.85 points and training from scratch by 20.70 points'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from .._io import is_fresh, read_json, write_json, write_text
from ..errors import RecipeError
from ..registry import Registry
from ..settings import Recipe
from ..train.launch import is_main_process
from ..tasks import TEACHER, get_task

SCRATCH_DIR = "scratch"
BASELINE_FILE = "baseline.json"  # the scratch run's accuracy, under a key of its recipe and the teacher's data

# Task kinds whose backbones can start from random weights: the number of parameter groups the trainer can unfreeze
# (all of them: the whole backbone) for a recipe's backbone. Text encoders refuse model.weights = "none".
SCRATCH_GROUPS: Registry[Callable[[str, int], int]] = Registry("from-scratch baseline", key="model.task")


@SCRATCH_GROUPS.register("image")
@lru_cache(maxsize=8)
def _image_groups(backbone: str, image_size: int) -> int:
    from ..backbones import create_model

    return len(create_model(backbone, num_classes=2, image_size=image_size, weights=None).unfreeze_groups())


def without_scratch(recipe: Recipe) -> Recipe:
    """The recipe as the teacher, the student and their artifacts see it: ``finetune.scratch_baseline`` off, so the
    switch never retrains or re-measures them."""
    if not recipe.finetune.scratch_baseline:
        return recipe
    return dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune, scratch_baseline=False))


def check_scratch(recipe: Recipe) -> None:
    """A RecipeError, before anything trains, when ``finetune.scratch_baseline`` is on and cannot run: a
    ``model.source`` (nothing is fine-tuned) or a task whose models cannot start from random weights."""
    if not recipe.finetune.scratch_baseline:
        return
    if recipe.model.source:
        raise RecipeError("finetune.scratch_baseline trains the recipe's backbone from random weights to compare with "
                          "fine-tuning; a model.source is not fine-tuned: set finetune.scratch_baseline = false")
    task = get_task(recipe)
    if task.kind not in SCRATCH_GROUPS:
        raise RecipeError(f"finetune.scratch_baseline: {task.name} models cannot start from random weights "
                          f"(model.weights = \"none\" is refused for {task.kind} backbones); set "
                          "finetune.scratch_baseline = false")


def scratch_recipe(recipe: Recipe) -> Recipe:
    """The copy of ``recipe`` the from-scratch baseline trains: random weights, every group trainable in one stage
    of the fine-tune's total epochs at one learning rate (random layers have nothing to protect), the switch itself
    off."""
    check_scratch(recipe)
    finetune = recipe.finetune
    groups = SCRATCH_GROUPS.get(get_task(recipe).kind)(recipe.model.backbone, recipe.model.image_size)
    return dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, weights="none"),
        finetune=dataclasses.replace(finetune, unfreeze=[groups], stage_epochs=[sum(finetune.stage_epochs)],
                                     layer_lr_decay=1.0, scratch_baseline=False))


def train_scratch(ctx) -> Any:
    """Train (or reuse) the from-scratch baseline in ``runs/<name>/scratch/``; its FinetuneResult, or None when
    ``finetune.scratch_baseline`` is off."""
    if not ctx.recipe.finetune.scratch_baseline:
        return None
    recipe, folder = scratch_recipe(ctx.recipe), ctx.run_dir / SCRATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # launched on several processes: only the main one writes
        _write_if_changed(folder / "recipe.toml", recipe.to_toml())  # what this baseline ran, beside it
    result = ctx.task.finetune(recipe, ctx.splits, folder, progress=ctx.progress, log=ctx.log)
    if not is_main_process():
        return result
    record = {"key": _baseline_key(ctx, recipe), "test_accuracy": result.test_accuracy,
              "val_accuracy": result.val_accuracy, "epochs": result.epochs, "groups": recipe.finetune.unfreeze[0],
              "seconds": result.seconds}
    if not (folder / BASELINE_FILE).is_file() or read_json(folder / BASELINE_FILE) != record:  # a rerun says nothing
        write_json(folder / BASELINE_FILE, record)
        ctx.log(f"scratch baseline: {recipe.model.backbone} from random weights, all {record['groups']} groups for "
                f"{recipe.finetune.stage_epochs[0]} epochs: {result.test_accuracy:.2f}% test accuracy")
    return result


def _write_if_changed(path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)


def _baseline_key(ctx, recipe: Recipe) -> dict[str, Any]:
    """What decides the baseline: its recipe and the data (the teacher's training key, taken whole)."""
    return {"recipe": recipe.section_hash(*ctx.task.sections), "teacher": _teacher_result(ctx)["key"]}


def _teacher_result(ctx) -> dict[str, Any]:
    from ..train.loop import RESULT_FILE

    return read_json(ctx.model_dir(TEACHER) / RESULT_FILE)


def scratch_accuracy(ctx) -> float | None:
    """The baseline's test accuracy when it was trained for this recipe and data; else None."""
    record = ctx.run_dir / SCRATCH_DIR / BASELINE_FILE
    if not ctx.recipe.finetune.scratch_baseline or not record.is_file():
        return None
    return read_json(record)["test_accuracy"] if is_fresh(record, _baseline_key(ctx, scratch_recipe(ctx.recipe))) \
        else None


def transfer_of(ctx) -> dict[str, Any] | None:
    """The run's ``transfer`` entry from its fine-tune (and baseline) results; None when nothing was fine-tuned."""
    from ..train.finetune import PROBE
    from ..train.loop import RESULT_FILE

    if ctx.recipe.model.source or not (ctx.model_dir(TEACHER) / RESULT_FILE).is_file():
        return None
    finetuned = _teacher_result(ctx)
    return transfer_verdict(finetuned.get("probe_test_accuracy"), finetuned["test_accuracy"], scratch_accuracy(ctx),
                            kept_probe=finetuned.get("best_stage") == PROBE,
                            probe_val=finetuned.get("probe_val_accuracy"))


_PROBE_ADVICE = "the frozen features do better than fine-tuning them: lower finetune.lr, unfreeze fewer groups"
_SCRATCH_ADVICE = "the pre-trained features do not help on this data"


def transfer_verdict(probe: float | None, finetuned: float, scratch: float | None = None, *,
                     kept_probe: bool = False, probe_val: float | None = None) -> dict[str, Any]:
    """Fine-tuned test accuracy (percent) against the linear probe's and the from-scratch baseline's (None: not
    measured); ``kept_probe``: no fine-tuning stage beat the probe on validation, so the model is the probe. When
    the probe's validation accuracy (``probe_val``) is already 100%, nothing could beat it there: that is a ceiling,
    not negative transfer, and the verdict says so.

    Returns ``probe``, ``finetuned``, ``scratch``, ``beat_probe``, ``beat_scratch`` (None where not measured),
    ``negative_transfer`` and a plain ``verdict``; "did not beat" includes a tie."""
    beat_probe = None if probe is None else finetuned > probe and not kept_probe
    beat_scratch = None if scratch is None else finetuned > scratch
    lost, won = [], []
    ceiling = kept_probe and probe is not None and probe_val is not None and probe_val >= 100
    if ceiling:
        beat_probe = None
    elif kept_probe and probe is not None:
        lost.append(f"no fine-tuning stage beat the linear probe on the validation split, so the model is the probe "
                    f"({probe:.2f}% test); {_PROBE_ADVICE}, or give it more data")
    elif beat_probe is False:
        lost.append(f"fine-tuning ({finetuned:.2f}%) did not beat the linear probe ({probe:.2f}%); {_PROBE_ADVICE}, "
                    "or ship the probe")
    elif beat_probe:
        won.append(f"the linear probe by {finetuned - probe:.2f} points")
    if beat_scratch is False:
        lost.append(f"{'it' if lost else f'fine-tuning ({finetuned:.2f}%)'} did not beat training from scratch "
                    f"({scratch:.2f}%){' either' if lost else ''}: {_SCRATCH_ADVICE}")
    elif beat_scratch:
        won.append(f"training from scratch by {finetuned - scratch:.2f} points")
    if lost:
        verdict = "NEGATIVE TRANSFER: " + "; ".join(lost) + (f" (it beat {won[0]})" if won else "")
    elif won:
        verdict = "fine-tuning beat " + " and ".join(won)
    else:
        verdict = "no baseline measured: nothing to compare fine-tuning with"
    if ceiling:
        verdict = ((verdict + "; against the linear probe: no verdict: ") if lost or won else "no verdict against "
                   "the linear probe: ") + (f"it is already 100% right on the validation split, so no fine-tuning "
                                             f"stage could beat it there and the model is the probe ({probe:.2f}% "
                                             "test); a harder validation set would tell whether fine-tuning helps")
    return {"probe": probe, "finetuned": finetuned, "scratch": scratch, "beat_probe": beat_probe,
            "beat_scratch": beat_scratch, "negative_transfer": bool(lost), "verdict": verdict}
