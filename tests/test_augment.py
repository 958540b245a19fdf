"""Training-time augmentation (``[finetune.augment]``, ``edgetl.train.augment``): the recipe section, every op
against PIL's own or an exact expectation, crop/flip/mixing, determinism, and the hook-up: training batches only
(never evaluation or the probe's features), nothing changed when disabled, the teacher seeing the student's images,
and short fine-tune and distillation runs on the tiny network with augmentation on."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import pattern_images
from PIL import Image, ImageEnhance, ImageOps

import edgetl.train.finetune as ft
from edgetl import tasks
from edgetl.data.dataset import Splits
from edgetl.errors import RecipeError
from edgetl.preprocess import ImagePreprocess
from edgetl.recipe import Recipe, load_recipe
from edgetl.settings import AugmentConfig
from edgetl.tasks.image import load_checkpoint
from edgetl.tasks.image_train import ImageDistillHooks, ImageTrainHooks
from edgetl.train import augment as aug
from edgetl.train.loop import METRICS_FILE, cross_entropy_step, kd_loss, model_hash

FAST = ["model.backbone='tiny_convnet'", "model.weights='none'", "model.image_size=32", "finetune.batch_size=16",
        "finetune.probe_epochs=2", "finetune.unfreeze=[1, 3]", "finetune.stage_epochs=[1, 2]", "finetune.lr=0.01",
        "finetune.patience=0", "finetune.threads=1"]
ON = ["finetune.augment.enabled=true", "finetune.augment.policy='trivialaugment'", "finetune.augment.mixup=0.4",
      "finetune.augment.cutmix=1.0", "finetune.augment.shift=0.125"]
ON_CONFIG = AugmentConfig(enabled=True, policy="trivialaugment", mixup=0.4, cutmix=1.0, shift=0.125)


def recipe(*overrides: str) -> Recipe:
    return load_recipe(None, [*FAST, *overrides])


def splits() -> Splits:
    return Splits(pattern_images(16, seed=0), pattern_images(6, seed=1), pattern_images(6, seed=2))


def noise(n: int = 8, size: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)


def nhwc(images: torch.Tensor) -> np.ndarray:
    return images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# -- the recipe section -----------------------------------------------------------------------------------------


def test_defaults_are_off_and_mild():
    config = Recipe().finetune.augment
    assert config == AugmentConfig() and not config.enabled
    assert (config.random_resized_crop, config.hflip, config.color_jitter, config.policy) == ([0.5, 1.0], True, 0.2,
                                                                                             "none")
    assert (config.mixup, config.cutmix, config.shift) == (0.0, 0.0, 0.0)
    loaded = load_recipe(None, ["finetune.augment.enabled=true", "finetune.augment.random_resized_crop=[0.08, 1]"])
    assert loaded.finetune.augment.enabled and loaded.finetune.augment.random_resized_crop == [0.08, 1.0]


def test_the_old_boolean_off_still_loads_as_off(tmp_path):
    """A recipe (or a run folder's recipe.toml) from before the section: `augment = false` meant off, and still does."""
    path = tmp_path / "old.toml"
    path.write_text("[finetune]\naugment = false\n")
    assert load_recipe(path).finetune.augment == AugmentConfig(enabled=False)
    assert load_recipe(None, ["finetune.augment=false"]).finetune.augment == AugmentConfig()


def test_section_round_trips_through_toml(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(recipe(*ON).to_toml())
    assert load_recipe(path).finetune.augment == ON_CONFIG


@pytest.mark.parametrize(("override", "words"), [
    ("finetune.augment=true", r"finetune.augment is a table now: write \[finetune.augment\] enabled"),
    ("finetune.augment.enable=true", "unknown recipe key finetune.augment.enable; known keys here: .*enabled"),
    ("finetune.augment.random_resized_crop=[0.9, 0.5]", r"random_resized_crop must be \[min, max\] with 0 < min"),
    ("finetune.augment.random_resized_crop=[0, 1]", r"random_resized_crop must be \[min, max\]"),
    ("finetune.augment.random_resized_crop=[0.5]", r"random_resized_crop must be \[min, max\]"),
    ("finetune.augment.random_resized_crop=[0.5, 1.5]", r"random_resized_crop must be \[min, max\]"),
    ("finetune.augment.color_jitter=1.5", r"finetune\.augment\.color_jitter must be within \[0, 1\], got 1.5"),
    ("finetune.augment.policy='autoaugment'", "finetune.augment.policy must be one of 'none', 'trivialaugment'"),
    ("finetune.augment.mixup=-0.2", r"finetune\.augment\.mixup must be >= 0, got -0.2; Beta"),
    ("finetune.augment.cutmix=-1", r"finetune\.augment\.cutmix must be >= 0"),
    ("finetune.augment.randaugment_magnitude=31", r"randaugment_magnitude must be within \[0, 30\]"),
    ("finetune.augment.randaugment_ops=0", r"randaugment_ops must be within \[1, 14\]"),
    ("finetune.augment.shift=0.6", r"finetune\.augment\.shift must be within \[0, 0\.5\]"),
    ("finetune.augment.hflip=1", "finetune.augment.hflip must be bool, got 1"),
])
def test_bad_settings_name_the_key(override, words):
    with pytest.raises(RecipeError, match=words):
        load_recipe(None, [override])


# -- the augmenter ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("config", [
    AugmentConfig(enabled=True), AugmentConfig(enabled=True, policy="randaugment", random_resized_crop=[0.08, 1.0]),
    ON_CONFIG, replace(ON_CONFIG, mixup=0.0), replace(ON_CONFIG, cutmix=0.0),
], ids=["crop-flip-jitter", "randaugment", "trivial-mixup-cutmix", "cutmix", "mixup"])
def test_shapes_dtypes_and_label_mixing(channels, config):
    images, labels = noise(channels=channels), torch.arange(8) % 4
    out, targets = aug.Augmenter(config, num_classes=4, seed=0)(images, labels)
    assert out.dtype == np.uint8 and out.shape == images.shape and not np.array_equal(out, images)
    if config.mixup or config.cutmix:
        assert targets.dtype == torch.float32 and targets.shape == (8, 4)
        assert torch.allclose(targets.sum(1), torch.ones(8)) and (targets >= 0).all()
        own_and_partner = F.one_hot(labels, 4) + F.one_hot(labels.flip(0), 4) > 0
        assert (targets[~own_and_partner] == 0).all()  # shares of the own and the mirrored image's labels only
    else:
        assert targets is labels


def test_the_same_seed_draws_the_same_augmentations():
    images, labels = noise(), torch.arange(8) % 4
    first, second, other = (aug.Augmenter(ON_CONFIG, num_classes=4, seed=seed) for seed in (0, 0, 1))
    a, b = first(images, labels), second(images, labels)
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not np.array_equal(a[0], other(images, labels)[0])
    state = first.state()
    following = first(images, labels)[0]
    first.set_state(state)
    assert np.array_equal(first(images, labels)[0], following) and not np.array_equal(following, a[0])
    first.reset()
    assert np.array_equal(first(images, labels)[0], a[0])


def test_trivialaugment_and_randaugment_use_every_op(monkeypatch):
    chosen, randint = [], torch.randint

    def recording(high, size, generator=None):
        drawn = randint(high, size, generator=generator)
        if high == len(aug.OPS):  # the draw of each image's op
            chosen.append(drawn)
        return drawn

    monkeypatch.setattr(torch, "randint", recording)
    images, generator = nchw(noise(n=200, size=8)), torch.Generator().manual_seed(0)
    for policy in (aug.trivial_augment, aug.rand_augment):
        chosen.clear()
        policy(images, AugmentConfig(policy="randaugment"), generator)
        assert len(chosen) == (1 if policy is aug.trivial_augment else 2)  # RandAugment's N = 2
        assert torch.cat(chosen).unique().tolist() == list(range(len(aug.OPS)))


# -- each op: bounds, and PIL's result where PIL has the op --------------------------------------------------------


def _pil_each(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(image))) for image in images])


PIL_OPS = [  # op, value, PIL's version, tolerance in levels
    ("brightness", 0.6, lambda im: ImageEnhance.Brightness(im).enhance(1.6), 1),
    ("contrast", -0.5, lambda im: ImageEnhance.Contrast(im).enhance(0.5), 1),
    ("color", 0.8, lambda im: ImageEnhance.Color(im).enhance(1.8), 2),
    ("sharpness", 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9), 2),
    ("posterize", 3, lambda im: ImageOps.posterize(im, 3), 0),
    ("solarize", 100, lambda im: ImageOps.solarize(im, 100), 0),
    ("autocontrast", 0, ImageOps.autocontrast, 1),
    ("equalize", 0, ImageOps.equalize, 0),
]


@pytest.mark.parametrize(("name", "value", "pil", "tolerance"), PIL_OPS, ids=[p[0] for p in PIL_OPS])
def test_photometric_ops_match_pil(name, value, pil, tolerance):
    # levels 40..167, crowded at the dark end: room to brighten, stretch and equalize
    images = ((noise(n=4, size=32) / 255.0) ** 2 * 127 + 40).astype(np.uint8)  # 1024 pixels: equalize acts
    ours = nhwc(aug.OPS.get(name).apply(nchw(images), torch.full((4,), float(value))))
    theirs = _pil_each(images, pil)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= tolerance
    assert not np.array_equal(ours, images)


@pytest.mark.parametrize("name", [n for n in aug.OPS.names() if n != "identity"])
def test_every_op_at_full_strength_changes_pixels_within_bounds(name):
    images = nchw(noise(n=6, size=16) // 2 + 40)
    out = aug.apply_ops(images, torch.full((6,), aug.OPS.names().index(name)), torch.ones(6), torch.ones(6),
                        wide=True)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())
    assert not torch.equal(out, images)
    if name in ("brightness", "color", "contrast", "sharpness", "rotate", "shear_x", "shear_y", "translate_x",
                "translate_y"):  # a level of 0 is no change at all
        same = aug.apply_ops(images, torch.full((6,), aug.OPS.names().index(name)), torch.zeros(6), torch.ones(6),
                             wide=True)
        assert torch.equal(same, images)


def test_identity_and_colour_ops_on_grey_images_change_nothing():
    grey_rgb = nchw(np.repeat(noise(channels=1), 3, axis=3))
    one_channel = nchw(noise(channels=1))
    for images in (grey_rgb, one_channel):
        assert torch.equal(aug.saturation(images, torch.full((8,), 1.9)).round(), images)
        assert torch.equal(aug.OPS.get("identity").apply(images, torch.zeros(8)), images)


def test_geometric_ops_move_pixels_exactly():
    images = nchw(noise(n=2, size=9))
    quarter = aug.rotate(images, torch.full((2,), 90.0))
    assert any(torch.equal(quarter, images.rot90(k, (2, 3))) for k in (1, -1))
    moved = aug.OPS.get("translate_x").apply(images, torch.full((2,), 2 / 9))  # 2 of 9 columns
    assert torch.equal(moved[..., 2:], images[..., :-2]) and (moved[..., :2] == 0).all()
    down = aug.OPS.get("translate_y").apply(images, torch.full((2,), -3 / 9))
    assert torch.equal(down[..., :-3, :], images[..., 3:, :]) and (down[..., -3:, :] == 0).all()
    sheared_x = aug.OPS.get("shear_x").apply(images, torch.full((2,), 0.5))
    sheared_y = aug.OPS.get("shear_y").apply(images, torch.full((2,), 0.5))
    assert torch.equal(sheared_x[..., 4, :], images[..., 4, :]) and not torch.equal(sheared_x, images)
    assert torch.equal(sheared_y[..., :, 4], images[..., :, 4]) and not torch.equal(sheared_y, images)


def test_posterize_keeps_the_high_bits_and_solarize_inverts_above_the_threshold():
    images = nchw(noise())
    two_bits = aug.posterize(images, torch.full((8,), 2.0))
    assert set(two_bits.unique().tolist()) <= {0.0, 64.0, 128.0, 192.0}
    assert torch.equal(aug.solarize(images, torch.zeros(8)), 255 - images)
    assert torch.equal(aug.solarize(images, torch.full((8,), 256.0)), images)


# -- crop, flip, shift, jitter, mixing ------------------------------------------------------------------------


def test_flip_only_mirrors_exactly_and_crop_boxes_stay_inside_in_range():
    images = nchw(noise(n=32))
    flipped = aug.crop_and_flip(images, (1.0, 1.0), True, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out, image.flip(2)) for out, image in zip(flipped, images)]
    assert all(m or torch.equal(out, image) for m, out, image in zip(mirrored, flipped, images))
    assert 0 < sum(mirrored) < 32
    assert torch.equal(aug.crop_and_flip(images, (1.0, 1.0), False, torch.Generator()), images)
    boxes = aug.crop_boxes(500, 64, 64, (0.25, 0.5), torch.Generator().manual_seed(0))
    left, top, width, height = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (left + width <= 64).all() and (top + height <= 64).all()
    area = width * height / 64**2
    assert area.min() >= 0.2 and area.max() <= 0.56  # [0.25, 0.5] up to whole-pixel rounding
    ratio = width / height
    assert ratio.min() >= 0.7 and ratio.max() <= 1.4
    # nothing fits a 40x10 image at full area with aspect 3/4..4/3: torchvision's centred fallback
    assert aug.crop_boxes(3, 10, 40, (1.0, 1.0), torch.Generator()).tolist() == [[13.0, 0.0, 13.0, 10.0]] * 3


def test_crop_resamples_a_flat_image_to_itself_and_the_shift_reflects():
    flat = torch.full((4, 3, 16, 16), 77.0)
    assert torch.equal(aug.crop_and_flip(flat, (0.08, 0.5), True, torch.Generator()).round(), flat)
    images = nchw(noise(n=16))
    shifted = aug.shift(images, 0.125, torch.Generator().manual_seed(0))  # up to 2 of 16 pixels
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    assert (shifted != 0).float().mean() > 0.99  # reflected, not black


def test_color_jitter_stays_within_its_strength():
    images = nchw(np.full((64, 4, 4, 3), 100, dtype=np.uint8))  # flat grey: only brightness changes it
    out = aug.color_jitter(images, 0.2, torch.Generator().manual_seed(0))
    assert out.min() >= 80 and out.max() <= 120 and len(out.unique()) > 10


def test_mixup_blends_by_the_targets_weights():
    images, labels = nchw(noise()), torch.arange(8)  # 8 classes: each pair's two labels differ
    mixed, targets = aug.mix(images, labels, 8, mixup=0.4, cutmix=0.0, generator=torch.Generator().manual_seed(0))
    lam = targets[torch.arange(8), labels]
    assert torch.allclose(targets.sum(1), torch.ones(8)) and torch.allclose(lam, lam[0].expand(8))
    assert torch.allclose(targets[torch.arange(8), labels.flip(0)], 1 - lam)
    assert (mixed - (lam[0] * images + (1 - lam[0]) * images.flip(0))).abs().max() < 1e-3


def test_cutmix_pastes_a_box_whose_area_is_the_partner_share():
    images, labels = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 3, 32, 32), torch.arange(4)  # image i: all i
    pasted = 0.0
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        mixed, targets = aug.mix(images, labels, 4, mixup=0.0, cutmix=1.0, generator=generator)
        for i in range(4):
            assert set(mixed[i].unique().tolist()) <= {float(i), float(3 - i)}
            partner_share = float((mixed[i, 0] == 3 - i).float().mean())
            assert math.isclose(float(targets[i, 3 - i]), partner_share, abs_tol=1e-6)
            assert math.isclose(float(targets[i].sum()), 1.0, abs_tol=1e-6)
            pasted += partner_share
    assert pasted > 0


def test_soft_targets_and_label_smoothing_agree_with_class_labels():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 5), torch.randint(5, (8,))
    onehot = F.one_hot(labels, 5).float()

    def step_loss(targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_step(lambda x: x, 0.1)(logits, targets)[0]

    assert torch.allclose(step_loss(labels), step_loss(onehot))
    # a mixed target is the same mix of the two losses, label smoothing included
    partner = labels.roll(1)
    mixed = 0.3 * onehot + 0.7 * F.one_hot(partner, 5).float()
    assert torch.allclose(step_loss(mixed), 0.3 * step_loss(labels) + 0.7 * step_loss(partner))
    teacher = torch.randn(8, 5)
    assert torch.allclose(kd_loss(logits, teacher, onehot, temperature=4, alpha=0.7, label_smoothing=0.1),
                          kd_loss(logits, teacher, labels, temperature=4, alpha=0.7, label_smoothing=0.1))


# -- the hook-up ------------------------------------------------------------------------------------------------


def hooks_for(*overrides: str) -> ImageTrainHooks:
    r = recipe(*overrides)
    return ImageTrainHooks(r, splits(), r.model.backbone, ImagePreprocess(32, mean=(0.5,) * 3, std=(0.5,) * 3),
                           eval_batch_size=32)


def test_augmentation_runs_on_training_batches_only():
    plain, augmented = hooks_for(), hooks_for(*ON)
    assert plain.augmenter is None and augmented.augmenter is not None
    calls = []
    inner = augmented.augmenter
    augmented.augmenter = lambda images, labels: calls.append(len(images)) or inner(images, labels)
    torch.manual_seed(0)
    model = plain.new_model().eval()
    for split in ("train", "val", "test"):
        assert torch.equal(augmented.features(model, split), plain.features(model, split))
        assert augmented.evaluate(model, split) == plain.evaluate(model, split)
    assert calls == []  # the probe's features and every evaluation: never augmented
    torch.manual_seed(1)
    batches = list(augmented.train_batches(16, 3))
    torch.manual_seed(1)
    plain_batches = list(plain.train_batches(16, 3))
    assert calls == [16, 16, 16] and batches[0][1].shape == (16, 3)  # mixed: soft targets
    assert plain_batches[0][1].dtype == torch.int64
    assert not torch.equal(batches[0][0], plain_batches[0][0])


def test_disabled_section_trains_the_very_same_weights(tmp_path, monkeypatch):
    """Switched off, the other settings change nothing: no draw, no call, the same weights and history."""
    default = tasks.finetune(recipe(), splits(), tmp_path / "default", progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("augmentation ran although finetune.augment.enabled = false")

    monkeypatch.setattr(aug.Augmenter, "__call__", refuse)
    off = tasks.finetune(recipe("finetune.augment.policy='randaugment'", "finetune.augment.mixup=1.0",
                                "finetune.augment.cutmix=1.0", "finetune.augment.color_jitter=0.9"),
                         splits(), tmp_path / "off", progress=False)
    assert model_hash(load_checkpoint(tmp_path / "default")[0]) == model_hash(load_checkpoint(tmp_path / "off")[0])
    assert without_times(default.history) == without_times(off.history)


def test_a_short_finetune_with_augmentation_repeats_exactly_and_resumes(tmp_path, monkeypatch):
    first = tasks.finetune(recipe(*ON), splits(), tmp_path / "a", progress=False)
    again = tasks.finetune(recipe(*ON), splits(), tmp_path / "b", progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in first.history) and first.epochs == 3
    weights = model_hash(load_checkpoint(tmp_path / "a")[0])
    assert weights == model_hash(load_checkpoint(tmp_path / "b")[0]) and first.history[-1] == {
        **again.history[-1], "seconds": first.history[-1]["seconds"]}
    plain = tasks.finetune(recipe(), splits(), tmp_path / "plain", progress=False)
    assert [h["train_loss"] for h in plain.history[2:]] != [h["train_loss"] for h in first.history[2:]]

    save_state = ft._Trainer._save_state

    def interrupt_after_stage0(self, state):
        save_state(self, state)
        if state["stage"] == 0 and state.get("done"):
            raise KeyboardInterrupt

    monkeypatch.setattr(ft._Trainer, "_save_state", interrupt_after_stage0)
    with pytest.raises(KeyboardInterrupt):
        tasks.finetune(recipe(*ON), splits(), tmp_path / "c", progress=False)
    assert len(json.loads((tmp_path / "c" / METRICS_FILE).read_text())) == 2 + 1
    monkeypatch.setattr(ft._Trainer, "_save_state", save_state)
    resumed = tasks.finetune(recipe(*ON), splits(), tmp_path / "c", progress=False)
    assert without_times(resumed.history) == without_times(first.history)  # the augmentation stream came back too


class _Recorder(torch.nn.Module):
    """A stand-in teacher: records its inputs, answers zeros."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return torch.zeros(len(x), 3)


def test_the_teacher_sees_the_students_augmented_images():
    r = recipe(*ON, "distill.student='tiny_convnet'")
    teacher_preprocess = ImagePreprocess(32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    from edgetl.tasks.image import recipe_preprocess

    hooks = ImageDistillHooks(r, splits(), teacher_preprocess, recipe_preprocess(r, "tiny_convnet"))
    teacher = _Recorder()
    hooks.cache_teacher(teacher, hint=False)
    assert hooks.cache is None and teacher.inputs == []  # augmented inputs change every epoch: nothing cached
    batches = list(hooks.student_batches(16, 2, teacher, hint=False))
    assert len(teacher.inputs) == 2
    for (student_inputs, targets, logits, _), teacher_inputs in zip(batches, teacher.inputs):
        pixels = [inputs * torch.tensor(p.std).reshape(1, 3, 1, 1) + torch.tensor(p.mean).reshape(1, 3, 1, 1)
                  for inputs, p in ((student_inputs, hooks.preprocess), (teacher_inputs, teacher_preprocess))]
        assert (pixels[0] - pixels[1]).abs().max() < 1e-5  # the same images, each network's own normalisation
        assert targets.shape == (16, 3) and logits.shape == (16, 3)


def test_a_short_distillation_with_augmentation_runs(tmp_path):
    teacher_dir = tmp_path / "teacher"
    tasks.finetune(recipe(), splits(), teacher_dir, progress=False)
    teacher = load_checkpoint(teacher_dir)[0]
    student = [*ON, "distill.student='tiny_convnet'", "distill.epochs=2", "distill.batch_size=16", "distill.lr=0.01",
               "distill.patience=0"]
    result = tasks.distill(recipe(*student), splits(), teacher, tmp_path / "student", progress=False)
    assert len(result.history) == 2 and len(result.baseline_history) == 2
    assert all(np.isfinite(h["train_loss"]) for h in result.history + result.baseline_history)
    assert 0 <= result.student_test_accuracy <= 100
