"""The resize policy (shorter side + center crop, squash, letterbox) and EXIF orientation, checked against
references computed here, and the same photo through training-time loading, predict and the bundle's
validation slice giving identical model inputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import needs_fashion_mnist
from PIL import Image

from edgetl.errors import DataError
from edgetl.preprocess import ImagePreprocess, load_preprocess

POLICIES = ("shorter-side+center-crop", "squash", "squash+center-crop", "letterbox")
BILINEAR = Image.Resampling.BILINEAR
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB image (height, width, 3) with no symmetry: horizontal, vertical and diagonal ramps plus noise."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width))
    channels = [x * 200 // max(1, width - 1), y * 200 // max(1, height - 1), (x + 2 * y) % 200]
    return np.stack([(c + noise) % 256 for c in channels], axis=-1).astype(np.uint8)


def pil_resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), BILINEAR))


# -- shorter side + center crop: torchvision's Resize(int) + CenterCrop arithmetic ----------------------

# (width, height, image_size, crop_fraction) -> (resized width, height), (crop left, top); worked by hand from
# torchvision: short side = round(size / crop_fraction), long side = int(short * long / short_old),
# offsets int(round((side - crop) / 2.0)) (Python's round: 80.5 -> 80, 81.5 -> 82).
CROPS = {
    (300, 200, 224, 0.875): ((384, 256), (80, 16)),
    (200, 300, 224, 0.875): ((256, 384), (16, 80)),
    (301, 200, 224, 0.875): ((385, 256), (80, 16)),  # (385 - 224) / 2 = 80.5 rounds to even
    (303, 200, 224, 0.875): ((387, 256), (82, 16)),  # 81.5 rounds to even: 82
    (300, 200, 64, 1.0): ((96, 64), (16, 0)),
    (200, 300, 64, 1.0): ((64, 96), (0, 16)),
    (97, 61, 32, 1.0): ((50, 32), (9, 0)),  # int(32 * 97 / 61) = 50
}


@pytest.mark.parametrize("case", sorted(CROPS), ids=str)
def test_shorter_side_center_crop_matches_torchvision_arithmetic(case):
    width, height, size, fraction = case
    (new_w, new_h), (left, top) = CROPS[case]
    source = gradient(width, height)
    pre = ImagePreprocess(image_size=size, crop_fraction=fraction)
    assert pre.resize == "shorter-side+center-crop"  # the default
    want = pil_resize(source, new_w, new_h)[top : top + size, left : left + size]
    got = pre.resize_image(source)
    assert got.shape == (size, size, 3)
    np.testing.assert_array_equal(got, want)
    if fraction == 0.875 and size == 224:
        assert pre.scaled_size == 256


def test_center_crop_keeps_the_middle_not_a_squashed_whole():
    """A wide photo with a red left third, green middle and blue right third: the crop sees only green."""
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, :100, 0] = image[:, 100:200, 1] = image[:, 200:, 2] = 255
    cropped = ImagePreprocess(image_size=50).resize_image(image)
    inner = cropped[:, 2:-2]  # the edge columns blend with the neighbouring thirds (bilinear)
    assert (inner[:, :, 1] == 255).all() and inner[:, :, [0, 2]].max() == 0
    squashed = ImagePreprocess(image_size=50, resize="squash").resize_image(image)
    assert squashed[:, :10, 0].min() == 255 and squashed[:, -10:, 2].min() == 255


# -- squash and letterbox ---------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300), (33, 17)])
def test_squash_is_the_plain_stretch_it_always_was(width, height):
    source = gradient(width, height, seed=1)
    for resample, code in (("bilinear", 2), ("bicubic", 3), ("nearest", 0)):
        pre = ImagePreprocess(image_size=64, resize="squash", resample=resample)
        want = np.asarray(Image.fromarray(source).resize((64, 64), code))
        np.testing.assert_array_equal(pre.resize_image(source), want)


# (width, height, size) -> fitted (width, height), paste (left, top)
LETTERBOXES = {
    (300, 200, 64): ((64, 43), (0, 10)),  # 200 * 64 / 300 = 42.67 -> 43; (64 - 43) // 2 = 10
    (200, 300, 64): ((43, 64), (10, 0)),
    (100, 25, 32): ((32, 8), (0, 12)),
    (1, 50, 10): ((1, 10), (4, 0)),  # a one-pixel-wide image keeps one column
}


@pytest.mark.parametrize("case", sorted(LETTERBOXES), ids=str)
def test_letterbox_fits_the_whole_image_and_pads_with_the_mean_pixel(case):
    width, height, size = case
    (fit_w, fit_h), (left, top) = LETTERBOXES[case]
    source = gradient(width, height, seed=2)
    pre = ImagePreprocess(image_size=size, resize="letterbox", **IMAGENET)
    fill = [round(m * 255) for m in IMAGENET["mean"]]
    assert list(pre.fill_pixel) == fill == [124, 116, 104]
    want = np.empty((size, size, 3), np.uint8)
    want[:] = fill
    want[top : top + fit_h, left : left + fit_w] = pil_resize(source, fit_w, fit_h)
    got = pre.resize_image(source)
    np.testing.assert_array_equal(got, want)
    padding = np.ones((size, size), bool)
    padding[top : top + fit_h, left : left + fit_w] = False
    normalised = pre.normalize(got[None])[0]  # (C, H, W)
    assert np.abs(normalised[:, padding]).max() < 0.01  # the padding is (about) zero after normalisation


def test_letterbox_grayscale_pads_with_its_one_mean():
    pre = ImagePreprocess(image_size=16, channels=1, resize="letterbox", mean=(0.25,), std=(0.5,))
    got = pre.resize_image(np.full((8, 16), 200, np.uint8))
    assert got.shape == (16, 16, 1)
    assert (got[:4] == 64).all() and (got[12:] == 64).all() and (got[4:12] == 200).all()


# -- square images: every policy is the old squash, byte for byte -------------------------------------


@pytest.mark.parametrize("side,size", [(28, 64), (100, 64), (64, 64), (224, 224)])
def test_square_images_are_identical_under_every_policy(side, size):
    rng = np.random.default_rng(side)
    images = [rng.integers(0, 256, (side, side), dtype=np.uint8),  # Fashion-MNIST's grayscale arrays
              rng.integers(0, 256, (side, side, 3), dtype=np.uint8)]
    squash = ImagePreprocess(image_size=size, resize="squash", **IMAGENET)
    old = [np.asarray(Image.fromarray(i).convert("RGB").resize((size, size), BILINEAR)) for i in images]
    assert all(np.array_equal(a, b) for a, b in zip(map(squash.resize_image, images), old))  # today's behaviour
    for policy in POLICIES:
        pre = ImagePreprocess(image_size=size, resize=policy, **IMAGENET)
        assert pre(images).tobytes() == squash(images).tobytes(), policy


@needs_fashion_mnist
def test_fashion_mnist_inputs_do_not_change():
    """The built-in example's 28x28 images upscaled to 64: the new default and letterbox give today's bytes."""
    from edgetl.data.sources import find_fashion_mnist, read_fashion_mnist

    images, _ = read_fashion_mnist(find_fashion_mnist(), "test")
    sample = list(images[:50])
    squash = ImagePreprocess(image_size=64, resize="squash")(sample)
    assert ImagePreprocess(image_size=64)(sample).tobytes() == squash.tobytes()
    assert ImagePreprocess(image_size=64, resize="letterbox")(sample).tobytes() == squash.tobytes()


# -- the saved form ---------------------------------------------------------------------------------


def test_old_preprocess_json_without_resize_loads_as_squash():
    old = {"kind": "image", "image_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
           "resample": "bilinear", "layout": "NCHW", "dtype": "float32", "extra": {}}
    pre = load_preprocess(old)
    assert (pre.resize, pre.crop_fraction) == ("squash", 1.0)
    wide = gradient(60, 30)
    np.testing.assert_array_equal(pre.resize_image(wide), pil_resize(wide, 32, 32))


def test_new_preprocess_json_records_the_policy_and_round_trips():
    pre = ImagePreprocess(image_size=224, crop_fraction=0.875, **IMAGENET)
    saved = json.loads(json.dumps(pre.to_dict()))
    assert saved["resize"] == "shorter-side+center-crop" and saved["crop_fraction"] == 0.875
    assert load_preprocess(saved) == pre
    letterbox = ImagePreprocess(image_size=32, resize="letterbox")
    assert ImagePreprocess.from_dict(letterbox.to_dict()) == letterbox


def test_the_policy_is_stated_in_words():
    pre = ImagePreprocess(image_size=224, crop_fraction=0.875)
    assert "resize the shorter side to 256" in pre.describe() and "center-crop 224x224" in pre.describe()
    assert "resize the shorter side to 256" in pre.card_fields()["steps"]
    assert "center-crop 224×224" in pre.card_fields()["steps"]
    assert "EXIF" in pre.describe()
    assert "aspect ratio not kept" in ImagePreprocess(image_size=8, resize="squash").describe()
    assert "padded with the mean pixel" in ImagePreprocess(image_size=8, resize="letterbox").card_fields()["steps"]


@pytest.mark.parametrize("fields,message", [
    ({"resize": "crop"}, "unknown resize policy 'crop'; choose one of: letterbox, shorter-side"),
    ({"resize": ["squash"]}, "unknown resize policy"),
    ({"crop_fraction": 0}, "crop_fraction must be > 0 and <= 1, got 0"),
    ({"crop_fraction": 1.5}, "crop_fraction must be > 0 and <= 1, got 1.5"),
    ({"crop_fraction": float("nan")}, "crop_fraction must be > 0 and <= 1"),
    ({"crop_fraction": "0.9"}, "crop_fraction must be > 0 and <= 1, got '0.9'"),
    ({"resize": "letterbox", "crop_fraction": 0.875}, "only applies to resize 'shorter-side\\+center-crop'"),
])
def test_bad_policies_are_refused_in_one_line(fields, message):
    with pytest.raises(DataError, match=message):
        ImagePreprocess(image_size=32, **fields)
    with pytest.raises(DataError, match=message):
        load_preprocess({"image_size": 32, **fields})


# -- EXIF orientation -------------------------------------------------------------------------------

# EXIF orientation -> the displayed image from the stored pixels (numpy, independent of Pillow's transpose)
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # stored turned left: rotate 90 clockwise to view
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def save_with_orientation(image: Image.Image, path: Path, orientation: int, **options) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_png_exif_orientation_is_applied(orientation, tmp_path):
    stored = gradient(24, 24, seed=orientation)
    path = save_with_orientation(Image.fromarray(stored), tmp_path / "o.png", orientation)
    want = ORIENTED[orientation](stored)
    pre = ImagePreprocess(image_size=24)
    np.testing.assert_array_equal(pre.resize_image(path), want)
    with Image.open(path) as opened:  # a PIL image handed in is turned too
        np.testing.assert_array_equal(pre.resize_image(opened), want)
    if orientation != 1:
        assert not np.array_equal(want, stored)  # the check above can fail


def test_a_phone_jpeg_tagged_rotate_90_comes_out_upright_and_cropped(tmp_path):
    """A 40x24 JPEG tagged 6 is a 24x40 portrait: the shorter side is already 24, the crop takes rows 8..32."""
    path = save_with_orientation(Image.fromarray(gradient(40, 24)), tmp_path / "phone.jpg", 6, quality=95)
    with Image.open(path) as raw:
        stored = np.asarray(raw.convert("RGB"))  # the decoded pixels, as stored (Pillow does not turn them)
    upright = np.rot90(stored, -1)
    assert upright.shape == (40, 24, 3)
    got = ImagePreprocess(image_size=24).resize_image(path)
    np.testing.assert_array_equal(got, upright[8:32])
    squashed = ImagePreprocess(image_size=24, resize="squash").resize_image(path)
    np.testing.assert_array_equal(squashed, pil_resize(np.ascontiguousarray(upright), 24, 24))


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "L", "I;16"])
def test_exif_orientation_with_odd_modes(mode, tmp_path):
    """Rotation and the odd-mode handling together: the same colour layout comes out for every mode."""
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = 250  # the left half bright: after orientation 8 (rotate 90 counter-clockwise) the bottom half
    if mode == "I;16":
        image = Image.fromarray(stored[:, :, 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(stored).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = save_with_orientation(image, tmp_path / f"odd{suffix}", 8, **({"quality": 95} if mode == "CMYK" else {}))
    got = ImagePreprocess(image_size=16, channels=3).resize_image(path).astype(int)
    assert got.shape == (16, 16, 3)
    assert got[12:].min() > 200 and got[:4].max() < 50, mode  # center crop of the 16x32 portrait: rows 8..24


def test_unreadable_exif_does_not_lose_the_photo(tmp_path):
    path = tmp_path / "bad-exif.jpg"
    Image.fromarray(gradient(30, 20)).save(path, exif=b"Exif\x00\x00not a TIFF header", quality=95)
    assert ImagePreprocess(image_size=20).resize_image(path).shape == (20, 20, 3)


# -- one photo, one input: training-time loading, predict, the bundle's slice --------------------------


def photo_folder(root: Path) -> Path:
    """train/val/test folders of two classes: non-square PNGs and JPEGs, one portrait tagged EXIF 6, a palette
    PNG and an RGBA PNG."""
    for split_index, split in enumerate(("train", "val", "test")):
        for class_index, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            seed = 10 * split_index + class_index
            Image.fromarray(gradient(300, 200, seed)).save(folder / "wide.png")
            Image.fromarray(gradient(200, 300, seed + 1)).save(folder / "tall.jpg", quality=90)
            save_with_orientation(Image.fromarray(gradient(90, 60, seed + 2)), folder / "phone.jpg", 6, quality=90)
            Image.fromarray(gradient(50, 70, seed + 3)).convert("P").save(folder / "palette.png")
            Image.fromarray(gradient(64, 40, seed + 4)).convert("RGBA").save(folder / "alpha.png")
    return root


class RecordingRunner:
    """A runner that keeps the inputs predict hands it (what the model would see) and answers zeros."""

    name = "recording"

    def __init__(self, image_size: int) -> None:
        self.input_spec = SimpleNamespace(shape=[None, 3, image_size, image_size])
        self.inputs: list[np.ndarray] = []

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        self.inputs.append(np.array(inputs))
        return np.zeros((len(inputs), 2), np.float32)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("policy", POLICIES)
def test_the_same_photo_gives_identical_inputs_in_training_predict_and_the_bundle(policy, tmp_path):
    from edgetl.bundle import ValidationSlice
    from edgetl.data import load_splits
    from edgetl.data.sources import scan_image_folder
    from edgetl.predict import BundleModel
    from edgetl.settings import DataConfig

    root = photo_folder(tmp_path / "photos")
    pre = ImagePreprocess(image_size=48, resize=policy, **IMAGENET)
    splits = load_splits(DataConfig(source="folder", path=str(root)), pre)  # what fine-tuning trains on
    shipped = load_preprocess(json.loads(json.dumps(pre.to_dict())))  # what a bundle's predict.py loads
    assert shipped == pre
    for split_name in ("train", "val", "test"):
        split = getattr(splits, split_name)
        files, labels, _ = scan_image_folder(root / split_name)
        assert np.array_equal(split.labels, labels)
        training = pre.inputs(split, np.arange(len(split)))  # the normalised batch the model is trained on
        paths = [str(p) for p in files]
        np.testing.assert_array_equal(training, pre(paths))
        runner = RecordingRunner(48)
        model = BundleModel(tmp_path, {"output": "logits"}, "onnx-fp32", runner, ["cat", "dog"], shipped)
        model.predict_logits(paths, batch_size=4)
        assert np.concatenate(runner.inputs).tobytes() == training.tobytes()
        device = ValidationSlice.from_split(split, pre, np.zeros((len(split), 2), np.float32), size=len(split))
        assert np.asarray(device.inputs).tobytes() == training.tobytes()  # what a device's agent is sent
        phone = files.index(next(p for p in files if p.name == "phone.jpg"))
        with Image.open(files[phone]) as raw:
            upright = Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(raw.convert("RGB")), -1)))
        np.testing.assert_array_equal(split.images[phone], pre.resize_image(upright))  # turned, then resized


# -- the recipe reaches the task's preprocessing ------------------------------------------------------


def test_recipe_resize_reaches_the_tasks_preprocessing(tmp_path):
    from edgetl.recipe import load_recipe
    from edgetl.tasks import get_task

    root = photo_folder(tmp_path / "photos")
    recipe = load_recipe(None, ["model.resize=letterbox", "model.backbone=tiny_convnet", "model.image_size=32",
                                "data.source=folder", f"data.path={root}", "distill.enabled=false"])
    task = get_task(recipe)
    pre = task.teacher_preprocess(recipe)
    assert (pre.resize, pre.crop_fraction, pre.image_size) == ("letterbox", 1.0, 32)
    splits = task.load_splits(recipe)
    files, _, _ = scan(root / "train")
    np.testing.assert_array_equal(splits.train.images, np.stack([pre.resize_image(p) for p in files]))
    assert not np.array_equal(splits.train.images,
                              np.stack([ImagePreprocess(image_size=32).resize_image(p) for p in files]))

    cropped = load_recipe(None, ["model.crop_fraction=0.875", "model.backbone=tiny_convnet",
                                 "model.image_size=224", "distill.enabled=false"])
    pre = get_task(cropped).teacher_preprocess(cropped)
    assert (pre.resize, pre.crop_fraction, pre.scaled_size) == ("shorter-side+center-crop", 0.875, 256)


def scan(folder: Path):
    from edgetl.data.sources import scan_image_folder

    return scan_image_folder(folder)


def test_a_source_model_takes_the_recipe_policy_unless_its_own_metadata_has_one(tmp_path):
    import dataclasses

    from edgetl.recipe import load_recipe
    from edgetl.tasks import get_task

    recipe = load_recipe(None, ["model.resize=letterbox"])
    # mean/std as `edgetl optimize --mean/--std` give them (the recipe check wants a model.source file for them)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, mean=[0.5] * 3, std=[0.5] * 3))
    task = get_task(recipe)
    bare = SimpleNamespace(preprocess=None, path=tmp_path / "model.onnx",
                           inputs=[SimpleNamespace(name="pixels", shape=[None, 3, 40, 40])])
    assert task.source_preprocess(recipe, bare).resize == "letterbox"
    old_metadata = ImagePreprocess(image_size=40).to_dict()
    del old_metadata["resize"], old_metadata["crop_fraction"]  # an edgetl model from before the policy was saved
    own = SimpleNamespace(**{**vars(bare), "preprocess": old_metadata})
    assert task.source_preprocess(recipe, own).resize == "squash"
    cropped = ImagePreprocess(image_size=40, crop_fraction=0.5).to_dict()
    assert task.source_preprocess(recipe, SimpleNamespace(**{**vars(bare), "preprocess": cropped})).crop_fraction == 0.5


def test_a_checkpoint_keeps_the_policy_it_was_trained_with():
    from edgetl.tasks import TASKS

    task = TASKS.get("image-classification")
    meta = {"backbone": "tiny_convnet", "image_size": 32,
            "preprocess": ImagePreprocess(image_size=32, resize="letterbox").to_dict()}
    assert task.preprocess_of(meta, Path(".")).resize == "letterbox"
    old = {"backbone": "tiny_convnet", "image_size": 32,
           "preprocess": {k: v for k, v in ImagePreprocess(image_size=32).to_dict().items()
                          if k not in ("resize", "crop_fraction")}}
    assert task.preprocess_of(old, Path(".")).resize == "squash"  # trained before the policy was recorded
    assert task.preprocess_of({"backbone": "tiny_convnet", "image_size": 32}, Path(".")).resize == "squash"


def test_squash_then_center_crop_is_deit_s_geometry():
    """Squash to round(size / crop_fraction) square (aspect not kept), then cut the centre: 301x221 -> 256x256 -> the
    224 square at offset 16."""
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (221, 301, 3), dtype=np.uint8))
    ours = ImagePreprocess(image_size=224, resize="squash+center-crop", crop_fraction=224 / 256).resize_image(image)
    expected = np.asarray(image.resize((256, 256), Image.BILINEAR))[16:240, 16:240]
    assert np.array_equal(ours, expected)
    assert "squashed: aspect ratio not kept, center-crop 224x224" in ImagePreprocess(
        image_size=224, resize="squash+center-crop", crop_fraction=0.875).describe()
