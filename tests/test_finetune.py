"""Fine-tuning on the tiny network and a synthetic striped dataset: learning, files, resume, checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgetl import tasks
import edgetl.train.finetune as ft
from edgetl.tasks.image import load_checkpoint
from edgetl.tasks.image_train import evaluate
from edgetl.train.augment import crop_and_flip, shift
from edgetl.train.loop import CHECKPOINT_FILE, META_FILE, METRICS_FILE, RESULT_FILE, STATE_FILE
from edgetl.backbones import create_model
from edgetl.data.dataset import LabeledImages, Splits
from edgetl.preprocess import ImagePreprocess
from edgetl.errors import DataError, EdgetlError, RecipeError, WeightsError
from edgetl.recipe import load_recipe

TINY = ["model.backbone='tiny_convnet'", "model.weights='none'", "model.image_size=32", "finetune.batch_size=16",
        "finetune.probe_epochs=5", "finetune.unfreeze=[1, 3]", "finetune.stage_epochs=[2, 3]", "finetune.lr=0.01",
        "finetune.patience=0", "finetune.augment.enabled=true", "finetune.augment.random_resized_crop=[1.0, 1.0]",
        "finetune.augment.color_jitter=0.0", "finetune.augment.shift=0.125"]  # flip and shift (edgetl.train.augment)
EPOCHS = 5  # stage_epochs summed; patience 0 runs them all


def stripes(n_per_class: int, seed: int, size: int = 32) -> LabeledImages:
    """Class = stripe orientation (horizontal, vertical, diagonal); period, phase and colour are random.

    Only the orientation tells the classes apart, so a random-weight backbone gets little from a probe
    and fine-tuning has something to learn.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images, labels = [], []
    for label, coord in enumerate((rows, cols, rows + cols)):
        for _ in range(n_per_class):
            period, phase = rng.integers(4, 9), rng.integers(0, 8)
            image = rng.integers(0, 50, (size, size, 3))
            image[((coord + phase) // (period // 2)) % 2 == 1] += rng.integers(120, 206, 3)
            images.append(image.astype(np.uint8))
            labels.append(label)
    return LabeledImages(np.stack(images), np.asarray(labels, dtype=np.int64), ["horizontal", "vertical", "diagonal"])


def tiny_splits() -> Splits:
    return Splits(stripes(40, seed=0), stripes(15, seed=1), stripes(15, seed=2))


def recipe(*overrides: str):
    return load_recipe(None, [*TINY, *overrides])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run; tests that change its folder work on a copy."""
    out_dir = tmp_path_factory.mktemp("finetune")
    return out_dir, tasks.finetune(recipe(), tiny_splits(), out_dir, progress=False)


@pytest.fixture
def counted(monkeypatch):
    """Counts the probes and the training epochs (probe epochs included) that actually run."""
    calls = {"probe": 0, "epochs": 0}
    probe, train_epoch = ft._Trainer._probe, ft.train_epoch

    def counting_probe(self):
        calls["probe"] += 1
        probe(self)

    def counting_epoch(*args, **kwargs):
        calls["epochs"] += 1
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(ft._Trainer, "_probe", counting_probe)
    monkeypatch.setattr(ft, "train_epoch", counting_epoch)
    return calls


def _copy(finished, tmp_path):
    out_dir, _ = finished
    shutil.copytree(out_dir, tmp_path / "run")
    return tmp_path / "run"


def test_finetune_learns_beyond_the_probe_and_chance(finished):
    _, result = finished
    assert result.test_accuracy > 70  # 3 classes: chance is 33%
    assert result.val_accuracy >= result.probe_val_accuracy
    assert result.best_stage != ft.PROBE and result.epochs == EPOCHS


def test_files_and_one_metrics_entry_per_epoch(finished):
    out_dir, result = finished
    for name in (CHECKPOINT_FILE, META_FILE, METRICS_FILE, STATE_FILE, RESULT_FILE):
        assert (out_dir / name).is_file(), name
    metrics = json.loads((out_dir / METRICS_FILE).read_text())
    assert len(metrics) == 5 + EPOCHS and metrics == result.history
    assert [m["stage"] for m in metrics] == ["probe"] * 5 + ["stage0"] * 2 + ["stage1"] * 3
    assert {"stage", "epoch", "train_loss", "train_accuracy", "val_accuracy", "lr", "seconds"} <= set(metrics[-1])
    meta = json.loads((out_dir / META_FILE).read_text())
    assert meta["classes"] == ["horizontal", "vertical", "diagonal"] and meta["num_classes"] == 3
    assert (meta["stage"], meta["epoch"], meta["val_accuracy"]) == (result.best_stage, result.best_epoch,
                                                                    result.val_accuracy)
    first_best = max(metrics, key=lambda m: m["val_accuracy"])  # max() keeps the earliest of equals
    assert (meta["stage"], meta["epoch"]) == (first_best["stage"], first_best["epoch"])
    assert json.loads((out_dir / RESULT_FILE).read_text())["test_accuracy"] == result.test_accuracy


def test_same_recipe_returns_the_finished_result_without_training(finished, counted):
    out_dir, result = finished
    assert tasks.finetune(recipe(), tiny_splits(), out_dir, progress=False) == result
    assert counted == {"probe": 0, "epochs": 0}


def test_changed_recipe_starts_over(finished, tmp_path, counted):
    out_dir = _copy(finished, tmp_path)
    result = tasks.finetune(recipe("finetune.stage_epochs=[1, 1]"), tiny_splits(), out_dir, progress=False)
    assert counted == {"probe": 1, "epochs": 5 + 2} and len(result.history) == 5 + 2


def test_changed_pixels_with_the_same_shapes_and_labels_start_over(finished, tmp_path, counted):
    out_dir = _copy(finished, tmp_path)
    splits = tiny_splits()
    splits.train.images[0, 0, 0, 0] ^= 1  # one value of one pixel: same count, shapes and labels
    tasks.finetune(recipe(), splits, out_dir, progress=False)
    assert counted["probe"] == 1 and counted["epochs"] == 5 + EPOCHS


def test_without_result_json_resumes_from_the_recorded_epoch(finished, tmp_path, counted):
    out_dir = _copy(finished, tmp_path)
    (out_dir / RESULT_FILE).unlink()
    result = tasks.finetune(recipe(), tiny_splits(), out_dir, progress=False)
    assert counted == {"probe": 0, "epochs": 0}
    assert result.history == finished[1].history and result.test_accuracy == finished[1].test_accuracy


def test_interrupted_run_resumes_after_its_last_completed_epoch(finished, tmp_path, monkeypatch, counted):
    out_dir = tmp_path / "run"
    save_state = ft._Trainer._save_state

    def interrupt_after_third_epoch(self, state):
        save_state(self, state)
        if (state["stage"], state["epoch"]) == (1, 1):  # probe, stage0 epochs 1-2, stage1 epoch 1 done
            raise KeyboardInterrupt

    monkeypatch.setattr(ft._Trainer, "_save_state", interrupt_after_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        tasks.finetune(recipe(), tiny_splits(), out_dir, progress=False)
    interrupted = json.loads((out_dir / METRICS_FILE).read_text())
    assert len(interrupted) == 5 + 3 and not (out_dir / RESULT_FILE).exists()

    monkeypatch.setattr(ft._Trainer, "_save_state", save_state)
    counted.update(probe=0, epochs=0)
    result = tasks.finetune(recipe(), tiny_splits(), out_dir, progress=False)
    assert counted == {"probe": 0, "epochs": 2}  # stage1 epochs 2 and 3 only
    assert result.history[:8] == interrupted and len(result.history) == 5 + EPOCHS
    # Model, optimizer, scheduler and RNG states all came back: the same numbers as an unbroken run.
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in finished[1].history]


def test_corrupt_state_file_starts_over_and_says_so_even_when_quiet(finished, tmp_path, counted, capsys):
    out_dir = _copy(finished, tmp_path)
    (out_dir / RESULT_FILE).unlink()
    (out_dir / STATE_FILE).write_bytes((out_dir / STATE_FILE).read_bytes()[:100])  # a truncated copy
    result = tasks.finetune(recipe(), tiny_splits(), out_dir, progress=False)
    assert f"cannot read {out_dir / STATE_FILE}" in capsys.readouterr().out.replace("\n", "")
    assert counted == {"probe": 1, "epochs": 5 + EPOCHS} and len(result.history) == 5 + EPOCHS


TRAINED = {"fc.weight", "fc.bias", "stages.2.0.weight", "stages.2.1.weight", "stages.2.1.bias"}
STATISTICS = {"stages.2.1.running_mean", "stages.2.1.running_var", "stages.2.1.num_batches_tracked"}


@pytest.mark.parametrize(("pretrained", "learned_statistics"), [(True, set()), (False, STATISTICS)])
def test_probe_and_stages_leave_frozen_weights_untouched(tmp_path, pretrained, learned_statistics):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(1)
    save_file(create_model("tiny_convnet", num_classes=3, image_size=32, weights=None).state_dict(),
              str(tmp_path / "init.safetensors"))
    weights = f"model.weights='{tmp_path / 'init.safetensors'}'" if pretrained else "model.weights='none'"
    tasks.finetune(recipe(weights, "finetune.unfreeze=[]", "finetune.stage_epochs=[]"), tiny_splits(),
                tmp_path / "probe", progress=False)
    probed = load_checkpoint(tmp_path / "probe")[0].state_dict()
    if pretrained:  # the probe changed the head only, BatchNorm statistics included (eval mode)
        initial = load_file(str(tmp_path / "init.safetensors"))
        assert {k for k, v in probed.items() if not torch.equal(v, initial[k])} == {"fc.weight", "fc.bias"}

    tasks.finetune(recipe(weights, "finetune.unfreeze=[1]", "finetune.stage_epochs=[2]"), tiny_splits(),
                tmp_path / "stage", progress=False)
    last = torch.load(tmp_path / "stage" / STATE_FILE, weights_only=True)["model"]
    # Same seed, same start: only the head and the one unfrozen group (output side) moved. Pre-trained
    # BatchNorm keeps its statistics; a randomly initialised one learns them.
    assert {k for k, v in last.items() if not torch.equal(v, probed[k])} == TRAINED | learned_statistics


def test_load_checkpoint_round_trips_the_model(finished):
    out_dir, result = finished
    model, meta = load_checkpoint(out_dir)
    same, _ = load_checkpoint(out_dir / CHECKPOINT_FILE)
    assert not model.training and meta["backbone"] == "tiny_convnet"
    test = tiny_splits().test
    preprocess = ImagePreprocess(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = torch.from_numpy(preprocess.normalize(test.images))
    with torch.no_grad():
        assert torch.equal(model(batch), same(batch))
    assert evaluate(model, test, preprocess, batch_size=7) == pytest.approx(result.test_accuracy)


def test_load_checkpoint_without_a_run_says_what_to_do(tmp_path):
    with pytest.raises(WeightsError, match="run `edgetl finetune` first"):
        load_checkpoint(tmp_path)


def test_evaluate_restores_training_mode(tiny_model):
    tiny_model.train()
    data = stripes(4, seed=3)
    accuracy = evaluate(tiny_model, data, ImagePreprocess(image_size=32), batch_size=5)
    assert 0 <= accuracy <= 100 and tiny_model.training


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda s: Splits(s.train, s.train.subset(np.arange(0)), s.test), DataError, "val split is empty"),
        (lambda s: Splits(s.train, LabeledImages(s.val.images, s.val.labels, ["a", "b", "c"]), s.test), DataError,
         "same source"),
        (lambda s: Splits(s.train, s.val, LabeledImages(s.test.images[:, :16, :16], s.test.labels, s.test.classes)),
         DataError, "model.image_size"),
    ],
)
def test_bad_data_says_what_to_fix(tmp_path, change, error, words):
    with pytest.raises(error, match=words):
        tasks.finetune(recipe(), change(tiny_splits()), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("override", "words"),
    [("finetune.stage_epochs=[2]", "one epoch count per stage"), ("finetune.unfreeze=[4, 9]", "at most 3")],
)
def test_bad_recipe_says_what_to_fix(tmp_path, override, words):
    with pytest.raises(RecipeError, match=words):
        tasks.finetune(recipe(override), tiny_splits(), tmp_path, progress=False)
    assert issubclass(RecipeError, EdgetlError)


def test_augment_flips_and_shifts_within_bounds():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    flipped = crop_and_flip(batch, (1.0, 1.0), True, torch.Generator())
    for image, out in zip(batch, flipped):
        assert torch.equal(out, image) or torch.equal(out, image.flip(2))
    shifted = shift(batch, 1 / 8, torch.Generator())  # up to 1 of 8 pixels
    assert shifted.shape == batch.shape and not torch.equal(shifted, batch)


@pytest.mark.parametrize("decay", [0.5, 1.0])
def test_each_deeper_group_learns_at_layer_lr_decay_times_the_one_above(tmp_path, decay):
    tasks.finetune(recipe("finetune.unfreeze=[3]", "finetune.stage_epochs=[1]", f"finetune.layer_lr_decay={decay}",
                          "finetune.probe_epochs=1"), tiny_splits(), tmp_path, progress=False)
    groups = torch.load(tmp_path / STATE_FILE, weights_only=False)["optimizer"]["param_groups"]
    assert len(groups) >= 3  # the head, then the unfrozen groups from the output side
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01 * decay**i for i in range(len(groups))])
