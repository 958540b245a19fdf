"""The bundle's own predict.py: edgetl's preprocessing and answers with numpy, Pillow or tokenizers and a runtime only.

Its image preprocessing is checked array for array against edgetl's on awkward photos (EXIF-rotated, 16-bit,
palette, RGBA, grayscale, odd sizes) under every resize policy; its answers against ``load_bundle(...).predict``
on test_bundle's hand-built colour and bag-of-words bundles and test_bundle_embedding's embedder, run in a
subprocess where neither edgetl nor torch can be imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bundle import (PREPROCESS, RUNTIMES, TEXT_CASES, artifacts, flip_byte, model_files,  # noqa: F401 - fixtures
                         ship_colours, ship_words, text_files)
from test_bundle_embedding import TEXTS, embedder, ship_embedder  # noqa: F401 - a fixture
from test_regression import regressor  # noqa: F401 - a fixture: a tiny CNN with two real outputs, and photos

from edgetl.bundle import Artifact, predict_script, ship, verify
from edgetl.bundle.predict_script import ImageInputs
from edgetl.predict import load_bundle
from edgetl.preprocess import ImagePreprocess

SCRIPT_SOURCE = Path(predict_script.__file__)
POLICIES = [("shorter-side+center-crop", 1.0), ("shorter-side+center-crop", 0.875), ("squash", 1.0),
            ("squash+center-crop", 0.875), ("letterbox", 1.0)]


def awkward_photos(folder: Path) -> list:
    """Images a user's folder holds: paths (JPEG with an EXIF rotation, 16-bit PNG, palette, RGBA, grayscale, tall
    and wide), a PIL image and a uint8 array."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (23, 41, 3), dtype=np.uint8)
    rotated = Image.fromarray(pixels)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    rotated.save(folder / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray((rng.integers(0, 65536, (17, 30)) ).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (31, 12, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (50, 7, 3), dtype=np.uint8)).save(folder / "tall.png")
    paths = [str(folder / name) for name in ("rotated.jpg", "deep.png", "palette.png", "alpha.png", "gray.png",
                                             "tall.png")]
    return [*paths, Image.fromarray(pixels), rng.integers(0, 256, (13, 8, 1), dtype=np.uint8)]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("resize,fraction", POLICIES)
def test_image_preprocessing_is_edgetls_to_the_bit(tmp_path, resize, fraction, channels):
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.5,), (0.25,))
    edgetl = ImagePreprocess(image_size=16, channels=channels, mean=mean, std=std, resample="bicubic", resize=resize,
                             crop_fraction=fraction)
    standalone = ImageInputs(json.loads(json.dumps(edgetl.to_dict())), tmp_path)
    images = awkward_photos(tmp_path / "photos")
    expected = edgetl.encode(images)
    assert expected.shape == (len(images), channels, 16, 16)
    np.testing.assert_array_equal(standalone.encode(images), expected)


def test_a_preprocess_json_without_a_resize_policy_squashes_as_edgetl_does(tmp_path):
    data = PREPROCESS.to_dict()
    del data["resize"]
    images = awkward_photos(tmp_path)
    np.testing.assert_array_equal(ImageInputs(data, tmp_path).encode(images),
                                  ImagePreprocess.from_dict(data).encode(images))


# -- the script in a bundle, where edgetl and torch cannot be imported --------------------------------------


def run_script(bundle: Path, *args: str, cwd: Path | None = None, absent: tuple[str, ...] = ()
               ) -> subprocess.CompletedProcess:
    """``python predict.py ARGS`` from ``bundle``, with edgetl, torch and the ``absent`` modules unimportable."""
    blocked = ("edgetl", "torch", "transformers", *absent)
    code = ("import runpy, sys\n"
            + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked) +
            f"sys.argv = ['predict.py', *{list(args)!r}]\n"
            f"runpy.run_path({str(bundle / 'predict.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=cwd or bundle.parent, check=False)


def script_json(bundle: Path, *args: str) -> list[dict]:
    result = run_script(bundle, *args, "--json", "-")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def noisy_photos(folder: Path) -> list[str]:
    """Colour-ish noise of several sizes: the colour model's probabilities on them are far from 0 and 1."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (height, width) in enumerate([(12, 12), (20, 9), (7, 31), (8, 8), (15, 15)]):
        tint = rng.integers(0, 256, 3)
        pixels = np.clip(tint + rng.integers(-90, 90, (height, width, 3)), 0, 255).astype(np.uint8)
        paths.append(str(folder / f"photo{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_the_bundle_ships_predict_py_listed_and_verified(model_files, tmp_path):  # noqa: F811 - the imported fixture
    shipped = ship_colours(artifacts(model_files), tmp_path)
    entry = shipped.manifest["files"]["predict.py"]
    source = SCRIPT_SOURCE.read_bytes()
    assert (shipped.path / "predict.py").read_bytes() == source
    assert entry == {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)}
    assert verify(shipped.archive).ok
    readme = (shipped.path / "README.md").read_text()
    how_to = readme[readme.index("## How to run"):]
    assert how_to.index("python predict.py photo.jpg") < how_to.index("edgetl predict")  # the plain one first
    assert "pip install numpy pillow onnxruntime" in how_to and "python predict.py photo.jpg --runtime openvino" in how_to

    flip_byte(shipped.path / "predict.py")
    assert any(p.startswith("predict.py") for p in verify(shipped.path).problems)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_py_gives_edgetls_labels_and_probabilities(model_files, tmp_path, runtime):  # noqa: F811 - the imported fixture
    shipped = ship_colours(artifacts(model_files), tmp_path / "models")
    photos = noisy_photos(tmp_path / "photos")
    records = script_json(shipped.path, *photos, "--runtime", runtime, "--top-k", "4")
    with load_bundle(shipped.path, runtime=f"{runtime}:{'CPU' if runtime == 'openvino' else 'CPUExecutionProvider'}") \
            as model:
        assert model.artifact == RUNTIMES[model.runtime]
        expected = model.predict(photos, top_k=4)
    assert [r["input"] for r in records] == photos
    assert [r["label"] for r in records] == [p.label for p in expected]
    for record, prediction in zip(records, expected):
        assert [t["label"] for t in record["top_k"]] == [label for label, _ in prediction.top_k]
        np.testing.assert_allclose([t["probability"] for t in record["top_k"]], [p for _, p in prediction.top_k],
                                   rtol=0, atol=1e-5)
    assert max(r["probability"] for r in records) < 0.999  # not a test of saturated probabilities


def test_predict_py_runs_from_anywhere_and_prints_one_line_per_image(model_files, tmp_path):  # noqa: F811 - the imported fixture
    shipped = ship_colours(artifacts(model_files), tmp_path / "models")
    moved = tmp_path / "elsewhere" / "colours"
    shutil.copytree(shipped.path, moved)  # a copy on a device, run from another folder
    photo = tmp_path / "blue.png"
    Image.new("RGB", (9, 5), (0, 0, 250)).save(photo)
    result = run_script(moved, str(photo), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo}: blue (") and "top-3: blue" in result.stdout

    missing = run_script(moved, str(tmp_path / "nope.png"), cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: image not found: {tmp_path / 'nope.png'}; " \
                                                                  "check the path"
    flip_byte(moved / "model/onnx-fp32/colours.onnx")
    damaged = run_script(moved, str(photo), cwd=tmp_path)
    assert damaged.returncode == 1 and "model/onnx-fp32/colours.onnx is missing or does not match" in damaged.stderr
    assert "Traceback" not in damaged.stderr


def test_predict_py_on_a_text_bundle(text_files, tmp_path):  # noqa: F811 - the imported fixture
    shipped = ship_words(text_files, tmp_path)
    texts = [*TEXT_CASES, "refund my card money back please", "top up"]
    for runtime, name in (("onnxruntime", "onnxruntime:CPUExecutionProvider"), ("openvino", "openvino:CPU")):
        records = script_json(shipped.path, *texts, "--runtime", runtime, "--top-k", "3")
        with load_bundle(shipped.path, runtime=name) as model:
            expected = model.predict(texts, top_k=3)
        assert [r["label"] for r in records] == [p.label for p in expected]
        assert [r["label"] for r in records[:3]] == list(TEXT_CASES.values())
        np.testing.assert_allclose([[t["probability"] for t in r["top_k"]] for r in records],
                                   [[p for _, p in pred.top_k] for pred in expected], rtol=0, atol=1e-5)
    readme = (shipped.path / "README.md").read_text()
    assert 'python predict.py "where is my card?"' in readme and "pip install numpy tokenizers onnxruntime" in readme


def test_predict_py_on_an_embedding_bundle(embedder, tmp_path):  # noqa: F811 - the imported fixture
    shipped = ship_embedder(embedder, tmp_path)
    records = script_json(shipped.path, *TEXTS)
    assert {r["output"] for r in records} == {"embedding"}
    np.testing.assert_allclose([r["values"] for r in records], embedder["reference"](TEXTS), rtol=0, atol=1e-5)
    with load_bundle(shipped.path) as model:
        np.testing.assert_allclose([r["values"] for r in records], model.embed(TEXTS), rtol=0, atol=1e-6)


def test_a_fixed_batch_model_gets_padded_rows(model_files, tmp_path):  # noqa: F811 - the imported fixture
    """A model exported with batch 2 takes exactly 2 rows a call: predict.py pads and drops as edgetl does."""
    import onnx

    model = onnx.load(model_files["onnx"][0])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, fixed)
    item = dataclasses.replace(artifacts(model_files)[1], files=[fixed])
    shipped = ship_colours([item], tmp_path / "models")
    photos = noisy_photos(tmp_path / "photos")  # 5: two full calls and one padded
    records = script_json(shipped.path, *photos)
    with load_bundle(shipped.path) as loaded:
        assert loaded.runner.input_spec.fixed_batch == 2
        expected = loaded.predict(photos)
    np.testing.assert_allclose([r["probability"] for r in records], [p.probability for p in expected], atol=1e-5)


def test_a_device_with_one_runtime_runs_an_artifact_it_has(model_files, tmp_path):  # noqa: F811 - the imported fixture
    """The default artifact is OpenVINO, the device has only onnxruntime: predict.py runs the ONNX one, unasked;
    asked for OpenVINO, it says what to install."""
    shipped = ship_colours(artifacts(model_files), tmp_path / "models", default="openvino-fp32")
    photo = tmp_path / "red.png"
    Image.new("RGB", (6, 6), (240, 0, 0)).save(photo)
    result = run_script(shipped.path, str(photo), "--json", "-", absent=("openvino",))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["label"] == "red"
    asked = run_script(shipped.path, str(photo), "--runtime", "openvino", absent=("openvino",))
    assert asked.returncode == 1 and "openvino is not installed here; run `pip install openvino`" in asked.stderr


def test_predict_py_on_a_regression_bundle(regressor, tmp_path):  # noqa: F811 - the imported fixture
    shipped = ship([Artifact("onnx-fp32", "onnx", [regressor["onnx"]], "onnxruntime:CPUExecutionProvider",
                             {"passed": True, "reasons": []})],
                   name="reg", output_dir=tmp_path, labels=[], output="regression", output_dim=2, recipe_toml="",
                   recipe_hash="r", card={}, preprocess=ImagePreprocess(image_size=32))
    photos = [str(p) for p in sorted(regressor["photos"].iterdir())[:5]]
    records = script_json(shipped.path, *photos)
    with load_bundle(shipped.path) as model:
        expected = model.predict(photos)
    assert {r["output"] for r in records} == {"regression"} and expected.shape == (5, 2)
    np.testing.assert_allclose([r["values"] for r in records], expected, rtol=0, atol=1e-5)


def test_an_extra_file_cannot_take_predict_pys_name(model_files, tmp_path):  # noqa: F811 - the imported fixture
    from edgetl.errors import BundleError

    mine = tmp_path / "predict.py"
    mine.write_text("print('not the bundle script')\n")
    with pytest.raises(BundleError, match="extra file name 'predict.py' is taken"):
        ship_colours(artifacts(model_files), tmp_path / "models", extra_files={"predict.py": mine})
    assert not (tmp_path / "models" / "colours").exists()
