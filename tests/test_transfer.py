"""The negative-transfer check: the verdict on hand-made numbers, the from-scratch baseline's recipe copy and its
refusals, and a tiny end-to-end run with ``finetune.scratch_baseline`` off, then on (the baseline trains, nothing else
does), then on again (nothing trains)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import RecipeError
from edgetl.pipeline.transfer import (
    BASELINE_FILE,
    SCRATCH_DIR,
    check_scratch,
    scratch_recipe,
    transfer_of,
    transfer_verdict,
    without_scratch,
)
from edgetl.recipe import load_recipe

# -- the verdict ------------------------------------------------------------------------------------------------


def test_beating_both_baselines_says_by_how_much():
    result = transfer_verdict(82.0, 90.4, 69.4)
    assert result["verdict"] == "fine-tuning beat the linear probe by 8.40 points and training from scratch by 21.00 points"
    assert result["beat_probe"] is True and result["beat_scratch"] is True and result["negative_transfer"] is False
    assert (result["probe"], result["finetuned"], result["scratch"]) == (82.0, 90.4, 69.4)


def test_losing_to_the_probe_is_negative_transfer_with_what_to_do():
    result = transfer_verdict(74.0, 71.2, 60.0)
    assert result["negative_transfer"] is True and result["beat_probe"] is False and result["beat_scratch"] is True
    assert result["verdict"].startswith("NEGATIVE TRANSFER: fine-tuning (71.20%) did not beat the linear probe (74.00%)")
    assert "lower finetune.lr, unfreeze fewer groups, or ship the probe" in result["verdict"]
    assert "it beat training from scratch by 11.20 points" in result["verdict"]


def test_losing_to_scratch_says_the_pretrained_features_do_not_help():
    result = transfer_verdict(60.0, 71.2, 75.0)
    assert result["negative_transfer"] is True and result["beat_probe"] is True and result["beat_scratch"] is False
    assert result["verdict"].startswith("NEGATIVE TRANSFER: fine-tuning (71.20%) did not beat training from scratch "
                                        "(75.00%): the pre-trained features do not help on this data")
    assert "ship the probe" not in result["verdict"]


def test_losing_to_both_names_both():
    verdict = transfer_verdict(74.0, 71.2, 75.0)["verdict"]
    assert "did not beat the linear probe (74.00%)" in verdict
    assert "did not beat training from scratch (75.00%) either" in verdict


def test_without_scratch_only_the_probe_is_compared():
    result = transfer_verdict(82.0, 90.4)
    assert result["verdict"] == "fine-tuning beat the linear probe by 8.40 points"
    assert result["scratch"] is None and result["beat_scratch"] is None and not result["negative_transfer"]


def test_a_tie_or_a_kept_probe_did_not_beat_it():
    assert transfer_verdict(74.0, 74.0)["negative_transfer"] is True
    kept = transfer_verdict(74.0, 74.0, kept_probe=True)
    assert kept["negative_transfer"] and "so the model is the probe (74.00% test)" in kept["verdict"]


# -- the recipe copy and the refusals -------------------------------------------------------------------------

TINY = ["model.backbone=tiny_convnet", "model.weights=none", "model.image_size=32", "finetune.unfreeze=[1, 2]",
        "finetune.stage_epochs=[2, 3]", "finetune.probe_epochs=4"]


def test_scratch_recipe_is_random_weights_every_group_and_the_same_epochs():
    recipe = load_recipe(None, [*TINY, "model.weights=package", "finetune.scratch_baseline=true"])
    copy = scratch_recipe(recipe)
    assert copy.model.weights == "none" and copy.finetune.unfreeze == [3]  # tiny_convnet has 3 groups
    assert copy.finetune.stage_epochs == [5] and copy.finetune.probe_epochs == 4 and not copy.finetune.scratch_baseline
    assert copy.finetune.layer_lr_decay == 1.0 and recipe.finetune.layer_lr_decay == 0.7  # random layers: one lr
    same = {"lr", "batch_size", "patience", "weight_decay", "label_smoothing", "augment", "threads"}
    assert all(getattr(copy.finetune, k) == getattr(recipe.finetune, k) for k in same)
    assert copy.data == recipe.data and copy.run == recipe.run and copy.model.backbone == recipe.model.backbone


def test_the_switch_is_invisible_to_the_teacher_and_its_artifacts():
    on, off = load_recipe(None, [*TINY, "finetune.scratch_baseline=true"]), load_recipe(None, TINY)
    assert on.section_hash("finetune") != off.section_hash("finetune")
    assert without_scratch(on).section_hash() == off.section_hash() and without_scratch(off) is off


def test_scratch_is_refused_for_a_source_model_and_for_text():
    recipe = load_recipe(None, [*TINY, "finetune.scratch_baseline=true"])
    source = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, source="model.onnx"))
    with pytest.raises(RecipeError, match="finetune.scratch_baseline .* a model.source is not fine-tuned"):
        check_scratch(source)
    text = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, task="text-classification"))
    with pytest.raises(RecipeError, match="text-classification models cannot start from random weights"):
        check_scratch(text)
    check_scratch(dataclasses.replace(text, finetune=dataclasses.replace(text.finetune, scratch_baseline=False)))


def test_a_source_model_has_no_transfer_entry():
    recipe = load_recipe(None, TINY)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, source="model.onnx"))
    assert transfer_of(SimpleNamespace(recipe=recipe)) is None


# -- end to end -----------------------------------------------------------------------------------------------


def stripe_folder(root: Path, per_class: int = 40, size: int = 32) -> Path:
    """Class = stripe orientation; period, phase and colour random (as tests/test_finetune.py's stripes)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:size, :size]
    for name, coord in (("horizontal", rows), ("vertical", cols), ("diagonal", rows + cols)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            period, phase = rng.integers(4, 9), rng.integers(0, 8)
            image = rng.integers(0, 50, (size, size, 3))
            image[((coord + phase) // (period // 2)) % 2 == 1] += rng.integers(120, 206, 3)
            Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def small_run(root: Path, *extra: str) -> list[str]:
    return [f"run.output_dir={root / 'runs'}", f"ship.output_dir={root / 'models'}", "run.name=transfer",
            "data.source=folder", f"data.path={root / 'photos'}", *TINY, "finetune.batch_size=16",
            "finetune.probe_epochs=2", "finetune.stage_epochs=[1, 1]", "finetune.lr=0.01", "distill.enabled=false",
            'export.formats=["onnx"]', 'ship.formats=["onnx"]', "quantize.methods=[]",
            "validate.gate.min_agreement=0", "validate.gate.max_accuracy_drop=100", "bench.batch_sizes=[1]",
            "bench.min_runs=2", "bench.max_seconds=0.1", "bench.warmup=1", "ship.validation_slice=8", *extra]


def stamps(folder: Path) -> dict[str, int]:
    """Every file's modification time in nanoseconds: unchanged when nothing rewrote it."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run three times: scratch_baseline off, on, on again; what each left behind."""
    from edgetl.pipeline import run

    root = tmp_path_factory.mktemp("transfer")
    stripe_folder(root / "photos")
    run_dir, seen = root / "runs" / "transfer", {}
    for name, extra in (("off", ()), ("on", ("finetune.scratch_baseline=true",)),
                        ("again", ("finetune.scratch_baseline=true",))):
        logged: list[str] = []
        summary = run(load_recipe(None, small_run(root, *extra)), progress=False, log=logged.append)
        seen[name] = {"summary": summary, "log": logged, "teacher": stamps(run_dir / "finetune"),
                      "artifacts": stamps(run_dir / "artifacts"),
                      "scratch": stamps(run_dir / SCRATCH_DIR) if (run_dir / SCRATCH_DIR).is_dir() else None,
                      "card": (root / "models" / "transfer" / "README.md").read_text()}
    return root, seen


def test_off_nothing_extra_runs(runs):
    seen = runs[1]
    off = seen["off"]
    assert off["scratch"] is None and "scratch" not in off["summary"]["stage_seconds"]
    transfer = off["summary"]["transfer"]
    assert transfer["scratch"] is None and transfer["finetuned"] == off["summary"]["test_accuracy"]
    assert transfer["probe"] == off["summary"]["probe_test_accuracy"] and "scratch" not in transfer["verdict"]
    assert "Same backbone trained from random weights, same budget | not trained" in off["card"]


def test_on_trains_the_baseline_and_nothing_else(runs):
    root, seen = runs
    on, run_dir = seen["on"], root / "runs" / "transfer"
    assert on["teacher"] == seen["off"]["teacher"]  # the teacher was not retrained
    assert on["artifacts"] == seen["off"]["artifacts"]  # nor exported, validated or benchmarked again
    assert {"best.safetensors", "result.json", BASELINE_FILE, "recipe.toml"} <= set(on["scratch"])
    result = json.loads((run_dir / SCRATCH_DIR / "result.json").read_text())
    transfer = on["summary"]["transfer"]
    assert transfer["scratch"] == result["test_accuracy"] and "training from scratch" in transfer["verdict"]
    assert 'weights = "none"' in (run_dir / SCRATCH_DIR / "recipe.toml").read_text()
    assert "scratch" in on["summary"]["stage_seconds"] and any("scratch baseline" in line for line in on["log"])
    written = json.loads((run_dir / "summary.json").read_text())["transfer"]
    assert written["verdict"] == transfer["verdict"]
    assert "## Transfer learning" in on["card"] and transfer["verdict"] in on["card"]
    assert f"same budget | {result['test_accuracy']:.4g} |" in on["card"]


def test_a_rerun_does_not_retrain_the_baseline(runs):
    seen = runs[1]
    assert seen["again"]["scratch"] == seen["on"]["scratch"]  # no file in scratch/ rewritten
    assert not any("scratch baseline" in line for line in seen["again"]["log"])
    assert seen["again"]["summary"]["transfer"] == seen["on"]["summary"]["transfer"]


def test_the_finetune_command_prints_the_verdict(runs):
    root, seen = runs
    args = [a for item in small_run(root, "finetune.scratch_baseline=true") for a in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "edgetl", "finetune", "--quiet", *args], capture_output=True,
                            text=True, cwd=root, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    transfer = seen["on"]["summary"]["transfer"]
    assert f"from scratch (random weights, same budget) {transfer['scratch']:.2f}%" in result.stdout
    assert "transfer: " + transfer["verdict"] in " ".join(result.stdout.split())


def test_print_run_shows_the_verdict(runs, capsys):
    from edgetl.cli.console import print_run

    seen = runs[1]
    print_run(seen["on"]["summary"])
    printed = " ".join(capsys.readouterr().out.split())
    assert seen["on"]["summary"]["transfer"]["verdict"] in printed


def test_a_text_run_compares_with_its_probe_and_refuses_scratch(tmp_path):
    """The text trainer trains a probe too, so a text run gets the verdict against it; text encoders cannot start
    from random weights, so the scratch baseline is refused before anything trains."""
    import random

    from edgetl.backbones.bert import build_tiny_bert
    from edgetl.pipeline import run

    rng, rows = random.Random(0), []
    FILLER = ["the", "a", "my", "is", "how", "do", "i", "can", "you", "please"]
    for label, phrases in (("lost", ["card lost", "card stolen"]), ("refund", ["refund", "money back"]),
                           ("top_up", ["top up", "cash atm"])):
        for _ in range(30):
            words = [rng.choice(FILLER) for _ in range(rng.randint(1, 4))]
            words.insert(rng.randint(0, len(words)), rng.choice(phrases))
            rows.append({"utterance": " ".join(words), "intent": label})
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sets = [f"run.output_dir={tmp_path / 'runs'}", "run.name=text", "model.task=text-classification",
            f"model.backbone={build_tiny_bert(tmp_path / 'base', num_labels=3)}", "data.source=text-file",
            f"data.path={data}", "data.text_column=utterance", "data.label_column=intent", "data.train_per_class=0",
            "data.val_per_class=0", "data.test_per_class=0", "finetune.probe_epochs=10", "finetune.unfreeze=[1]",
            "finetune.stage_epochs=[1]", "finetune.batch_size=16", "finetune.threads=1", "distill.enabled=false",
            'export.formats=["onnx"]', 'ship.formats=["onnx"]', "quantize.methods=[]",
            "validate.gate.max_accuracy_drop=100", "validate.gate.min_agreement=0", "bench.batch_sizes=[1]",
            "bench.warmup=1", "bench.min_runs=2", "bench.max_seconds=0.02", "bench.threads=1",
            f"ship.output_dir={tmp_path / 'models'}", "ship.validation_slice=0"]
    with pytest.raises(RecipeError, match="finetune.scratch_baseline"):
        run(load_recipe(None, [*sets, "finetune.scratch_baseline=true"]), progress=False, log=lambda m: None)
    assert not (tmp_path / "runs" / "text" / "finetune").exists()
    summary = run(load_recipe(None, sets), progress=False, log=lambda m: None)
    transfer = summary["transfer"]
    assert transfer["probe"] == summary["probe_test_accuracy"] and transfer["finetuned"] == summary["test_accuracy"]
    assert transfer["scratch"] is None and "linear probe" in transfer["verdict"]
    assert transfer["verdict"] in (tmp_path / "models" / "text" / "README.md").read_text()


def test_a_probe_already_perfect_on_validation_is_a_ceiling_not_negative_transfer():
    from edgetl.pipeline.transfer import transfer_verdict

    ceiling = transfer_verdict(98.33, 98.33, kept_probe=True, probe_val=100.0)
    assert not ceiling["negative_transfer"] and ceiling["beat_probe"] is None
    assert ceiling["verdict"].startswith("no verdict against the linear probe: it is already 100% right")
    assert transfer_verdict(98.33, 98.33, kept_probe=True, probe_val=99.0)["negative_transfer"]
    assert transfer_verdict(98.33, 98.33, 99.5, kept_probe=True, probe_val=100.0)["verdict"].startswith(
        "NEGATIVE TRANSFER: fine-tuning (98.33%) did not beat training from scratch")
