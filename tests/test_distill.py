"""Distillation on the tiny network and synthetic stripes: loss math, files, ablation, resume, init, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgetl import tasks
import edgetl.train.distill as kd
from edgetl.tasks.image import load_checkpoint
from edgetl.tasks.image_train import evaluate
from edgetl.backbones import copy_matching_weights, create_model
from edgetl.preprocess import ImagePreprocess
from edgetl.errors import RecipeError
from edgetl.recipe import load_recipe
from test_finetune import TINY, tiny_splits

STUDENT = [*TINY, "distill.student='tiny_convnet'", "distill.epochs=3", "distill.batch_size=16", "distill.lr=0.01",
           "distill.patience=0", "distill.init_from_teacher=false", "finetune.augment.enabled=false",
           "finetune.threads=1"]


def recipe(*overrides: str):
    return load_recipe(None, [*STUDENT, *overrides])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("teacher")
    tasks.finetune(load_recipe(None, [*TINY, "finetune.threads=1"]), tiny_splits(), out_dir, progress=False)
    return load_checkpoint(out_dir)[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, teacher):
    out_dir = tmp_path_factory.mktemp("distill")
    return out_dir, tasks.distill(recipe(), tiny_splits(), teacher, out_dir, progress=False)


@pytest.fixture
def counted(monkeypatch):
    """Counts the training epochs that actually run."""
    calls = {"epochs": 0}
    train_epoch = kd.train_epoch

    def counting_epoch(*args, **kwargs):
        calls["epochs"] += 1
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(kd, "train_epoch", counting_epoch)
    return calls


# -- the loss ---------------------------------------------------------------------------------------


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    teacher = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 0.0, 2.0]])
    labels = torch.tensor([0, 2])
    temperature, alpha = 2.0, 0.7

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_teacher, p_student = softmax(teacher.numpy() / temperature), softmax(student.numpy() / temperature)
    kl = (p_teacher * (np.log(p_teacher) - np.log(p_student))).sum(1).mean()
    ce = -np.log(softmax(student.numpy())[[0, 1], labels.numpy()]).mean()
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    got = kd.kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_alpha_zero_is_cross_entropy_and_same_logits_cost_nothing():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = F.cross_entropy(student, labels, label_smoothing=0.1)
    assert torch.equal(kd.kd_loss(student, teacher, labels, temperature=4, alpha=0, label_smoothing=0.1), ce)
    assert torch.equal(kd.kd_loss(student, None, labels, temperature=4, alpha=0), F.cross_entropy(student, labels))
    assert float(kd.kd_loss(student, student, labels, temperature=3, alpha=1)) == pytest.approx(0, abs=1e-6)


def test_kd_loss_scales_soft_targets_by_t_squared():
    """Soft loss = T^2 * KL at temperature T: doubling T with logits doubled too quadruples the loss."""
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(4, 6), torch.randn(4, 6), torch.randint(0, 6, (4,))
    at_1 = kd.kd_loss(student, teacher, labels, temperature=1, alpha=1)
    at_2 = kd.kd_loss(2 * student, 2 * teacher, labels, temperature=2, alpha=1)
    assert float(at_2) == pytest.approx(4 * float(at_1), rel=1e-5)


# -- a run, its files and the ablation --------------------------------------------------------------


def test_distill_writes_a_loadable_student_and_the_ablation(finished):
    out_dir, result = finished
    for name in ("best.safetensors", "checkpoint.json", "metrics.json", "last.pt", "result.json"):
        assert (out_dir / name).is_file(), name
        if name != "result.json":
            assert (out_dir / kd.BASELINE_DIR / name).is_file(), name
    student, meta = load_checkpoint(out_dir)
    baseline, baseline_meta = load_checkpoint(out_dir / kd.BASELINE_DIR)
    assert meta["backbone"] == baseline_meta["backbone"] == "tiny_convnet"
    assert meta["classes"] == ["horizontal", "vertical", "diagonal"]
    assert (meta["alpha"], baseline_meta["alpha"]) == (0.7, 0)
    preprocess = ImagePreprocess(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    test = tiny_splits().test
    assert evaluate(student, test, preprocess) == pytest.approx(result.student_test_accuracy)
    assert evaluate(baseline, test, preprocess) == pytest.approx(result.baseline_test_accuracy)
    assert not torch.equal(student.fc.weight, baseline.fc.weight)  # the teacher changed what the student learnt

    saved = json.loads((out_dir / "result.json").read_text())
    for key in ("student_test_accuracy", "baseline_test_accuracy", "teacher_test_accuracy", "relative_accuracy",
                "student_params", "teacher_params", "epochs", "baseline_epochs", "seconds",
                "meets_min_relative_accuracy"):
        assert saved[key] == getattr(result, key), key
    assert result.relative_accuracy == pytest.approx(result.student_test_accuracy / result.teacher_test_accuracy,
                                                     abs=1e-4)
    assert result.meets_min_relative_accuracy == (result.relative_accuracy >= 0.97)
    assert result.epochs == result.baseline_epochs == 3 and result.copied_from_teacher == 0
    assert result.student_test_accuracy > 50  # 3 classes: chance is 33%
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics == result.history
    assert [m["stage"] for m in result.baseline_history] == ["baseline"] * 3


def test_same_inputs_return_the_finished_result_without_training(finished, teacher, counted):
    out_dir, result = finished
    assert tasks.distill(recipe(), tiny_splits(), teacher, out_dir, progress=False) == result
    assert counted["epochs"] == 0


def test_a_changed_teacher_or_recipe_trains_again(finished, teacher, tmp_path, counted):
    out_dir = tmp_path / "run"
    shutil.copytree(finished[0], out_dir)
    tasks.distill(recipe("distill.alpha=0.5"), tiny_splits(), teacher, out_dir, progress=False)
    assert counted["epochs"] == 3  # the baseline (alpha 0 either way) is still valid: only the student reruns
    other = create_model("tiny_convnet", num_classes=3, image_size=32, weights=None)
    tasks.distill(recipe("distill.alpha=0.5"), tiny_splits(), other, out_dir, progress=False)
    assert counted["epochs"] == 3 + 3  # a new teacher: the student again; the baseline never saw the teacher
    tasks.distill(recipe("distill.alpha=0.5", "distill.epochs=2"), tiny_splits(), other, out_dir, progress=False)
    assert counted["epochs"] == 6 + 2 + 2  # a new budget: both


def test_interrupted_run_resumes_after_its_last_completed_epoch(finished, teacher, tmp_path, monkeypatch, counted):
    out_dir = tmp_path / "run"
    save_state = kd._StudentRun._save_state

    def interrupt_after_second_epoch(self, state, *args):
        save_state(self, state, *args)
        if self.alpha > 0 and state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(kd._StudentRun, "_save_state", interrupt_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        tasks.distill(recipe(), tiny_splits(), teacher, out_dir, progress=False)
    assert not (out_dir / "result.json").exists() and counted["epochs"] == 2

    monkeypatch.setattr(kd._StudentRun, "_save_state", save_state)
    counted["epochs"] = 0
    result = tasks.distill(recipe(), tiny_splits(), teacher, out_dir, progress=False)
    assert counted["epochs"] == 1 + 3  # the student's third epoch, then the baseline
    # Model, optimizer, scheduler and RNG states came back: the same numbers as an unbroken run.
    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(result.history) == strip(finished[1].history)
    assert result.student_test_accuracy == finished[1].student_test_accuracy


def test_hint_loss_and_augmentation_ask_the_teacher_every_batch(teacher, tmp_path):
    calls = []
    handle = teacher.register_forward_hook(lambda module, inputs, output: calls.append(len(output)))
    try:
        result = tasks.distill(recipe("distill.hint_weight=1.0", "distill.ablation=false", "distill.epochs=1",
                                   "finetune.augment.enabled=true"), tiny_splits(), teacher, tmp_path, progress=False)
    finally:
        handle.remove()
    steps = len(tiny_splits().train) // 16
    assert calls.count(16) >= steps  # one teacher pass per training batch, none cached
    assert result.baseline_test_accuracy is None and result.hint_weight == 1.0
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])


# -- students and their initialisation --------------------------------------------------------------


def test_slim_student_takes_each_kept_block_from_the_teacher():
    torch.manual_seed(0)
    teacher = create_model("efficientnet_lite0", num_classes=10, image_size=32, weights=None)
    student = create_model("efficientnet_lite0_slim", num_classes=10, image_size=32, weights=None)
    copied = copy_matching_weights(student, teacher)
    assert set(copied) == set(student.state_dict())  # every tensor has a source
    assert student.block_sources == [0, 1, 3, 5, 8, 11, 15]  # the first block of each of the 7 stages
    for index, source in enumerate(student.block_sources):
        for name, value in student._blocks[index].state_dict().items():
            assert torch.equal(value, teacher._blocks[source].state_dict()[name]), (index, name)
    assert torch.equal(student._conv_head.weight, teacher._conv_head.weight)
    assert torch.equal(student._fc.weight, teacher._fc.weight)


def test_init_from_teacher_copies_into_the_run(teacher, tmp_path):
    result = tasks.distill(recipe("distill.init_from_teacher=true", "distill.ablation=false", "distill.epochs=1"),
                        tiny_splits(), teacher, tmp_path, progress=False)
    assert result.copied_from_teacher == len(teacher.state_dict())


@pytest.mark.parametrize(
    ("override", "words"),
    [("distill.student='resnet9000'", "efficientnet_lite0_slim"), ("distill.temperature=0", "temperature must be > 0"),
     ("distill.alpha=1.5", r"alpha must be within \[0, 1\]"), ("distill.alpha=-0.1", "alpha"),
     ("distill.hint_weight=-1", "hint_weight")],
)
def test_bad_config_says_what_to_fix(teacher, tmp_path, override, words):
    with pytest.raises(RecipeError, match=words):
        tasks.distill(recipe(override), tiny_splits(), teacher, tmp_path, progress=False)


def test_turning_the_ablation_on_later_trains_only_the_baseline(teacher, tmp_path, counted):
    tasks.distill(recipe("distill.ablation=false"), tiny_splits(), teacher, tmp_path, progress=False)
    assert counted["epochs"] == 3 and not (tmp_path / kd.BASELINE_DIR).exists()
    result = tasks.distill(recipe(), tiny_splits(), teacher, tmp_path, progress=False)
    assert counted["epochs"] == 3 + 3 and result.baseline_test_accuracy is not None
