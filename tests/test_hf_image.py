"""Hugging Face image classifier folders (``*ForImageClassification`` + ``preprocessor_config.json``) and hub ids
(``owner/name``) as model sources: preprocessing mapped from transformers' image processors and checked against
their own output, the reference and ONNX export against the transformers model, a hub id resolved from an offline
cache, and ``edgetl optimize owner/name`` end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import pattern_images
from edgetl.errors import RecipeError

CLASSES = ["top", "middle", "bottom"]  # pattern_images: class k is a bright band at height k
FAST = ["bench.batch_sizes=[1]", "bench.max_seconds=0.2", "bench.min_runs=5", "bench.warmup=2",
        "quantize.calibration_size=20", "quantize.min_calibration_size=8",
        "quantize.methods=['onnx-int8-static', 'openvino-int8']"]
REPO, COMMIT = "edgetl-test/tiny-vit", "0123456789abcdef0123456789abcdef01234567"


def _photo() -> Image.Image:
    """A non-square photo with smooth colour and noise (every resize filter and crop offset shows in it)."""
    rng = np.random.default_rng(0)
    x, y = np.linspace(0, 1, 301)[None, :, None], np.linspace(0, 1, 221)[:, None, None]
    pixels = 127 + 100 * np.sin(6 * x + 4 * y + np.array([0.0, 1.0, 2.0])) + rng.integers(-25, 25, (221, 301, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """A tiny ViTForImageClassification trained on the band images (id2label: the class names, squashed 32x32
    input, mean 0.5), an untrained tiny ResNet with placeholder labels and ConvNeXt's crop_pct processor, and a
    photo folder with class sub-folders at a size that is not the model's."""
    import torch
    from transformers import (ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label=dict(enumerate(CLASSES)),
                       label2id={name: i for i, name in enumerate(CLASSES)})
    vit = ViTForImageClassification(config)
    train = pattern_images(40, seed=1)
    inputs = torch.from_numpy((train.images.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
    optimizer = torch.optim.Adam(vit.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(vit(pixel_values=inputs).logits, torch.from_numpy(train.labels)).backward()
        optimizer.step()
    vit.eval().save_pretrained(root / "vit", safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                       num_labels=3))
    resnet.eval().save_pretrained(root / "resnet", safe_serialization=True)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(root / "resnet")
    photos = pattern_images(30, seed=5)
    for i, (image, label) in enumerate(zip(photos.images, photos.labels)):
        folder = root / "photos" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((48, 40)).save(folder / f"{i}.png")
    return root


def _processor_folder(tmp_path: Path, processor) -> Path:
    folder = tmp_path / type(processor).__name__
    processor.save_pretrained(folder)
    (folder / "config.json").write_text("{}")
    return folder


def _processors():
    import transformers as hf

    return {
        "vit-squash": (hf.ViTImageProcessor(size={"height": 32, "width": 32}), ("squash", 32, 1.0, "bilinear")),
        "mobilenet-shortest-edge-crop": (hf.MobileNetV2ImageProcessor(
            size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
            ("shorter-side+center-crop", 32, 0.8, "bilinear")),
        "bit-bicubic-clip-mean": (hf.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224,
                                                                                                "width": 224}),
                                  ("shorter-side+center-crop", 224, 0.875, "bicubic")),
        "convnext-crop-pct": (hf.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3),
                              ("shorter-side+center-crop", 224, 0.875, "bicubic")),
        "convnext-384-squash": (hf.ConvNextImageProcessor(size={"shortest_edge": 384}), ("squash", 384, 1.0, "bilinear")),
        "efficientnet-nearest-include-top": (hf.EfficientNetImageProcessor(size={"height": 33, "width": 33}),
                                             ("squash", 33, 1.0, "nearest")),
        "efficientnet-rescale-offset": (hf.EfficientNetImageProcessor(size={"height": 33, "width": 33},
                                                                      rescale_factor=1 / 127.5, rescale_offset=True,
                                                                      include_top=False),
                                        ("squash", 33, 1.0, "nearest")),
        "levit-256-over-224": (hf.LevitImageProcessor(size={"shortest_edge": 35}, crop_size={"height": 32,
                                                                                            "width": 32}),
                               ("shorter-side+center-crop", 32, 0.8, "bicubic")),
    }


@pytest.mark.parametrize("case", ["vit-squash", "mobilenet-shortest-edge-crop", "bit-bicubic-clip-mean",
                                  "convnext-crop-pct", "convnext-384-squash", "efficientnet-nearest-include-top",
                                  "efficientnet-rescale-offset", "levit-256-over-224"])
def test_image_processor_settings_map_onto_edgetl_preprocessing(case, tmp_path):
    """edgetl's preprocessing from preprocessor_config.json gives the processor's own pixel_values on non-square
    photos: identical (max |diff| 0.0: the same PIL resize) where the crop's margin is even; where it is odd the
    crop sits one pixel further right or down (torchvision's rounding, which edgetl uses, against transformers'
    floor), and the pixels are otherwise the same."""
    from edgetl.imported.hf_image import image_preprocess

    processor, (resize, size, fraction, resample) = _processors()[case]
    preprocess = image_preprocess(_processor_folder(tmp_path, processor))
    assert (preprocess.resize, preprocess.image_size, preprocess.resample) == (resize, size, resample)
    assert preprocess.crop_fraction == pytest.approx(fraction)
    even, odd = _photo(), _photo().resize((97, 70))  # 97x70 -> 55x40 -> crop 32: a margin of 23 for MobileNet
    expected = processor(even, return_tensors="np")["pixel_values"][0]
    assert np.abs(preprocess([even])[0] - expected).max() < 1e-5
    ours, expected = preprocess([odd])[0], processor(odd, return_tensors="np")["pixel_values"][0]
    assert ours.shape == expected.shape
    assert any(np.abs(ours[:, : size - dy, : size - dx] - expected[:, dy:, dx:]).max() < 1e-5
               for dy in (0, 1) for dx in (0, 1))


def test_settings_the_config_omits_take_the_processor_class_defaults(tmp_path):
    """A hand-written preprocessor_config.json: ConvNeXt's class defaults are mean/std 0.5 and crop_pct 224/256,
    MobileNetV2's a 256 shorter side and a 224 crop (not ImageNet's mean: transformers' own choice)."""
    import transformers as hf

    from edgetl.imported.hf_image import image_preprocess

    for name, processor_class, expected in [
        ("convnext", hf.ConvNextImageProcessor, ((0.5, 0.5, 0.5), 224, 224 / 256)),
        ("mobilenet", hf.MobileNetV2ImageProcessor, ((0.5, 0.5, 0.5), 224, 224 / 256)),
        # DeiT and BEiT squash to 256x256, then crop 224: edgetl's squash+center-crop
        ("deit", hf.DeiTImageProcessor, (tuple(hf.DeiTImageProcessor().image_mean), 224, 224 / 256)),
        ("beit", hf.BeitImageProcessor, ((0.5, 0.5, 0.5), 224, 224 / 256)),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        size = {"shortest_edge": 224} if name == "convnext" else None
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"image_processor_type": processor_class.__name__, **({"size": size} if size else {})}))
        preprocess = image_preprocess(folder)
        assert (preprocess.mean, preprocess.image_size) == expected[:2]
        assert preprocess.crop_fraction == pytest.approx(expected[2])
        photo = _photo()
        reference = processor_class.from_pretrained(folder)(photo, return_tensors="np")["pixel_values"][0]
        assert np.abs(preprocess([photo])[0] - reference).max() < 1e-4


@pytest.mark.parametrize("processor, words", [
    ({"image_processor_type": "DeiTImageProcessor", "size": {"height": 200, "width": 200},
      "crop_size": {"height": 224, "width": 224}}, ["crops 224x224 out of a 200x200 image", "crop_size is at most"]),
    ({"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 48}},
     ["makes 32x48 (size) images", "square"]),
    ({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}, "do_center_crop": False},
     ["keeps the aspect ratio without a crop", "do_center_crop true"]),
    ({"image_processor_type": "ViTImageProcessor", "resample": 1}, ["PIL filter 1 (lanczos)", "bicubic (3)"]),
    ({"image_processor_type": "ViTImageProcessor", "do_resize": False}, ["does not resize"]),
    ({"image_processor_type": "PoolFormerImageProcessor"}, ["does not map the PoolFormerImageProcessor", "--mean"]),
])
def test_processor_settings_edgetl_cannot_reproduce_are_one_line_errors(processor, words, tmp_path):
    from edgetl.imported.hf_image import image_preprocess

    settings = {"image_processor_type": processor} if isinstance(processor, str) else processor
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(RecipeError) as caught:
        image_preprocess(tmp_path)
    assert all(w in str(caught.value) for w in words) and "\n" not in str(caught.value), str(caught.value)


def test_an_image_classifier_folder_reads_as_pixel_values_labels_and_its_task(hf_files, tmp_path):
    import shutil

    from edgetl.imported import read_source
    from edgetl.imported.hf import task_of

    vit = read_source(hf_files / "vit")
    assert vit.format == "hf" and task_of(hf_files / "vit") == "image-classification"
    assert [(i.name, i.shape, i.dtype) for i in vit.inputs] == [("pixel_values", (None, 3, 32, 32), "float32")]
    assert vit.num_outputs == 3 and vit.labels == CLASSES
    assert vit.preprocess["resize"] == "squash" and vit.preprocess["mean"] == [0.5, 0.5, 0.5]
    resnet = read_source(hf_files / "resnet")
    assert resnet.labels is None and resnet.num_outputs == 3  # LABEL_0.. placeholders: the data names the classes
    assert resnet.preprocess["resize"] == "shorter-side+center-crop" and resnet.inputs[0].shape == (None, 3, 32, 32)
    bare = tmp_path / "bare-vit"  # no preprocessor_config.json: config.json's image_size, flags give the rest
    shutil.copytree(hf_files / "vit", bare)
    (bare / "preprocessor_config.json").unlink()
    model = read_source(bare)
    assert model.inputs[0].shape == (None, 3, 32, 32) and model.preprocess is None


def test_the_reference_is_the_transformers_model_and_the_onnx_export_matches_it(hf_files, tmp_path):
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForImageClassification

    from edgetl.imported.hf import HF_FOLDER

    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for name in ("vit", "resnet"):
        expected = AutoModelForImageClassification.from_pretrained(hf_files / name).eval()(
            pixel_values=torch.from_numpy(pixels)).logits.detach().numpy()
        with torch.no_grad():
            reference = HF_FOLDER.reference(hf_files / name)(torch.from_numpy(pixels)).numpy()
        assert np.array_equal(reference, expected)
        record = HF_FOLDER.to_onnx(hf_files / name, tmp_path / f"{name}.onnx", {"producer": "test"})
        assert record["exporter"] == f"torch.onnx (TorchScript) of {name}'s image classifier"
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert [i.shape for i in session.get_inputs()] == [["batch", 3, 32, 32]]  # batch 3 runs: dynamic
        assert np.abs(session.run(None, {"pixel_values": pixels})[0] - expected).max() < 1e-4


def _hub_cache(root: Path, folder: Path) -> Path:
    """``folder`` laid out as huggingface_hub caches a download of REPO at COMMIT: files in blobs/ named by their
    sha256, the snapshot's files symlinked to them, refs/main naming the commit."""
    cache = root / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / digest).write_bytes(path.read_bytes())
        (repo / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / COMMIT / path.name).symlink_to(Path("../../blobs") / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(hf_files, tmp_path, monkeypatch):
    from huggingface_hub import constants, scan_cache_dir

    from edgetl.imported import read_source
    from edgetl.imported.model import locate_source

    cache = _hub_cache(tmp_path, hf_files / "vit")
    scanned = {repo.repo_id: repo for repo in scan_cache_dir(cache).repos}  # huggingface_hub reads the layout
    assert [r.commit_hash for r in scanned[REPO].revisions] == [COMMIT]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert locate_source(REPO) == locate_source(f"{REPO}@{COMMIT}") == snapshot
    model = read_source(REPO)
    assert model.labels == CLASSES and model.metadata["hub_id"] == REPO and model.metadata["hub_commit"] == COMMIT
    with pytest.raises(RecipeError) as caught:
        locate_source("edgetl-test/not-cached")
    message = str(caught.value)
    assert all(w in message for w in ["'edgetl-test/not-cached'", "switched off here (HF_HUB_OFFLINE)",
                                      "not in the local cache", "huggingface-cli download edgetl-test/not-cached",
                                      "give a local folder"]) and "\n" not in message, message
    (tmp_path / "models").mkdir()
    for path_like in ("models/mine", "nowhere/model.onnx"):  # paths with a typo are not hub ids
        with pytest.raises(RecipeError, match=f"model.source '{path_like}' does not exist"):
            locate_source(path_like)


def test_an_unreachable_hub_falls_back_to_the_cache(hf_files, tmp_path, monkeypatch):
    """Online but nothing answers (a closed local port): the cached id resolves, an uncached one says so."""
    from huggingface_hub import constants

    from edgetl.imported.hub import locate_hub_id

    cache = _hub_cache(tmp_path, hf_files / "vit")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert locate_hub_id(REPO).name == COMMIT
    with pytest.raises(RecipeError, match="the Hugging Face hub could not be reached and edgetl-test/other is not "
                                          "in the local cache"):
        locate_hub_id("edgetl-test/other")


def _edgetl(cwd: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_optimize_a_hub_id_ships_a_verified_bundle_with_the_processor_preprocessing(hf_files, tmp_path):
    """``edgetl optimize owner/name --data photos/`` offline, from the cache: the folder's labels matched to the
    class folders, its processor's preprocessing in the bundle, every variant held to the transformers model."""
    env = {"HF_HUB_CACHE": str(_hub_cache(tmp_path, hf_files / "vit")), "HF_HUB_OFFLINE": "1"}
    args = ["optimize", REPO, "--data", str(hf_files / "photos"), "--out", "models/vit", "--quiet",
            *[a for item in FAST for a in ("--set", item)]]
    result = _edgetl(tmp_path, *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/vit/summary.json").read_text())
    assert summary["test_accuracy"] > 90  # the original on the held-out photos: id2label matched to the folders
    reports = {row["variant"]: row for row in summary["variants"]}
    assert set(reports) == {"onnx-fp32", "openvino-fp32", "onnx-int8-static", "openvino-int8"}
    assert reports["onnx-fp32"]["agreement"] == 1.0
    fp32 = json.loads((tmp_path / "runs/vit/artifacts/onnx-fp32/validation.json").read_text())["report"]
    assert fp32["max_abs_logit_diff"] < 1e-4  # the ONNX export against the folder's model run by torch
    preprocess = json.loads((tmp_path / "models/vit/preprocess.json").read_text())
    assert (preprocess["resize"], preprocess["image_size"], preprocess["mean"]) == ("squash", 32, [0.5, 0.5, 0.5])
    assert json.loads((tmp_path / "models/vit/labels.json").read_text()) == CLASSES
    verify = _edgetl(tmp_path, "verify", "models/vit.tar.gz")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    photo = next((hf_files / "photos" / "bottom").iterdir())
    predicted = _edgetl(tmp_path, "predict", "models/vit", str(photo))
    assert predicted.returncode == 0 and ": bottom (" in predicted.stdout, predicted.stdout + predicted.stderr
    source = json.loads((tmp_path / "models/vit/manifest.json").read_text())["source_model"]
    assert source["format"] == "hf" and source["hub_id"] == REPO and source["hub_commit"] == COMMIT
