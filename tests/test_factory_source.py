"""A PyTorch model given as ``package.module:factory`` plus a safetensors state dict: located, read, brought into a
run with its factory's name, held to itself run in torch, exported to ONNX, shipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fit_briefly, pattern_images
from PIL import Image

import edgetl.imported.factory  # noqa: F401  (registers the torch-factory format)
from edgetl.errors import EdgetlError, RecipeError, WeightsError

CLASSES = ["top", "middle", "bottom"]  # pattern_images: class k is a bright band at height k
FAST = ["bench.batch_sizes=[1]", "bench.max_seconds=0.2", "bench.min_runs=5", "bench.warmup=2",
        "quantize.calibration_size=20", "quantize.min_calibration_size=8",
        "quantize.methods=['onnx-int8-static', 'openvino-int8']"]
NORMALISE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

# The user's own code: plain torch, nothing from edgetl.
TINYNETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, classes=3, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def make():
    return TinyNet()


def make_twin():
    return TinyNet()


def make_wide():
    return TinyNet(width=16)


def make_text():
    return "not a model"


def make_pair():
    class Pair(TinyNet):
        def forward(self, x):
            return super().forward(x), x
    return Pair()


COUNT = 3
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """tinynets.py in tmp_path (on sys.path), and the state dicts of a make() and a make_wide() model."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "tinynets.py").write_text(TINYNETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tinynets", raising=False)
    import tinynets

    torch.manual_seed(0)
    save_file(tinynets.make().state_dict(), str(tmp_path / "net.safetensors"))
    save_file(tinynets.make().state_dict(), str(tmp_path / "other.safetensors"))
    save_file(tinynets.make_wide().state_dict(), str(tmp_path / "wide.safetensors"))
    yield tmp_path
    sys.modules.pop("tinynets", None)


def _config(spec: str, weights, size: int = 32):
    from edgetl.settings import ModelConfig

    return ModelConfig(source=spec, weights=str(weights), image_size=size)


def _reference(spec_attr: str, weights: Path):
    """The model as the user's own code builds and loads it, independently of edgetl."""
    import tinynets
    from safetensors.torch import load_file

    model = getattr(tinynets, spec_attr)()
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def test_a_factory_spec_locates_its_weights_and_reads_as_an_image_classifier(nets):
    import torch

    from edgetl.imported.factory import load_model
    from edgetl.imported.model import locate_source, read_source, source_format

    config = _config("tinynets:make", nets / "net.safetensors")
    assert locate_source("tinynets:make", config) == nets / "net.safetensors"
    model = read_source("tinynets:make", config)
    assert model.format == "torch-factory" and source_format(model.path).name == "torch-factory"
    assert [(i.shape, i.dtype) for i in model.inputs] == [((None, 3, 32, 32), "float32")]
    assert model.output_shape == (None, 3) and model.num_outputs == 3
    assert read_source("tinynets:make", _config("tinynets:make", nets / "net.safetensors", size=48)).inputs[0].shape \
        == (None, 3, 48, 48)
    # the weights were loaded: the module edgetl builds computes what the user's own code does
    x = torch.randn(4, 3, 32, 32)
    built, spec, size = load_model(model.path, config)
    assert (spec, size) == ("tinynets:make", 32) and not built.training
    with torch.no_grad():
        assert torch.equal(built(x), _reference("make", nets / "net.safetensors")(x))


def test_the_sha256_covers_the_spec_the_weights_and_the_code(nets):
    from edgetl.imported.model import read_source

    def sha(spec, weights):
        return read_source(spec, _config(spec, nets / weights)).sha256()

    base = sha("tinynets:make", "net.safetensors")
    assert sha("tinynets:make", "net.safetensors") == base  # stable
    assert sha("tinynets:make_twin", "net.safetensors") != base  # same architecture, another factory
    assert sha("tinynets:make", "other.safetensors") != base  # same factory, other weights
    (nets / "tinynets.py").write_text(TINYNETS + "\n# edited\n")  # the module's code changed (not re-imported)
    assert sha("tinynets:make", "net.safetensors") != base


@pytest.mark.parametrize("spec, weights, error, words", [
    ("nosuchmod.nets:make", "net.safetensors", RecipeError, ["cannot import module 'nosuchmod.nets'",
                                                            "run edgetl in the folder that holds it"]),
    ("tinynets:missing", "net.safetensors", RecipeError, ["has no attribute 'missing'", "name the function"]),
    ("tinynets:COUNT", "net.safetensors", RecipeError, ["is a int, not a function"]),
    ("tinynets:make_text", "net.safetensors", RecipeError, ["returned a str, not a torch.nn.Module"]),
    ("tinynets:make_pair", "net.safetensors", RecipeError, ["forward returns a tuple", "one (N, classes) tensor"]),
    ("tinynets:make", "net.pt", RecipeError, ["is a pickle, which edgetl never loads",
                                              'safetensors.torch.save_file(model.state_dict(), "net.safetensors")']),
    ("tinynets:make", "package", RecipeError, ["needs its weights", "model.weights (--weights)"]),
    ("tinynets:make", "gone.safetensors", RecipeError, ["gone.safetensors' does not exist"]),
    ("tinynets:make", "garbage.safetensors", WeightsError, ["not a readable safetensors file"]),
    ("tinynets:make", "headless.safetensors", WeightsError, ["2 missing (head.weight, head.bias) keys"]),
    ("tinynets:make", "extra.safetensors", WeightsError, ["4 unexpected (extra.0, extra.1, extra.2, ...) keys"]),
    ("tinynets:make", "wide.safetensors", WeightsError, ["tensors have the wrong shape",
                                                         "features.0.weight [16, 3, 3, 3] (the model's: [8, 3, "]),
])
def test_what_is_wrong_with_a_factory_or_its_weights_is_one_line(nets, spec, weights, error, words):
    import torch
    from safetensors.torch import load_file, save_file

    from edgetl.imported.model import read_source

    torch.save({}, nets / "net.pt")
    (nets / "garbage.safetensors").write_bytes(b"not safetensors at all")
    state = load_file(str(nets / "net.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("head.")}, str(nets / "headless.safetensors"))
    save_file({**state, **{f"extra.{i}": torch.zeros(1) for i in range(4)}}, str(nets / "extra.safetensors"))
    with pytest.raises(error) as caught:
        read_source(spec, _config(spec, weights if weights == "package" else nets / weights))
    message = str(caught.value)
    assert all(w in message for w in words) and "\n" not in message, message


def test_weights_given_as_the_source_say_to_name_the_factory(nets):
    from edgetl.imported.model import read_source

    with pytest.raises(RecipeError, match=r'holds weights only; .*model.source = "package.module:factory"'):
        read_source(nets / "net.safetensors", _config(str(nets / "net.safetensors"), "package"))


def test_only_module_attribute_specs_are_factories(nets):
    from edgetl.imported.factory import parse_spec

    assert parse_spec("mypkg.nets:make_net") == ("mypkg.nets", "make_net")
    assert parse_spec("tinynets:make") == ("tinynets", "make")
    for spec in ("C:net", "C:\\models\\net.onnx", "owner/name", "model.onnx", "pkg.nets:", ":make", "pkg..nets:make",
                 "pkg.nets:make.sub", "pkg-nets:make"):
        assert parse_spec(spec) is None, spec


def test_the_recipe_check_takes_a_factory_and_its_safetensors_weights(nets, monkeypatch):
    from edgetl.recipe import load_recipe

    monkeypatch.chdir(nets)  # the module is found from the current directory, as python -m finds it
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(nets)])
    monkeypatch.delitem(sys.modules, "tinynets")
    base = ["model.source='tinynets:make'", "model.image_size=32", "model.mean=[0.5,0.5,0.5]",
            "model.std=[0.5,0.5,0.5]", "quantize.qat=false", "distill.enabled=false"]
    recipe = load_recipe(None, [*base, "model.weights='net.safetensors'"])
    assert recipe.model.weights == "net.safetensors"
    (nets / "net.pt").write_bytes(b"a pickle")
    with pytest.raises(RecipeError, match="is a pickle, which edgetl never loads"):
        load_recipe(None, [*base, "model.weights='net.pt'"])


def test_the_run_folder_alone_holds_the_reference_and_the_export(nets, tmp_path_factory):
    """Brought into a run, the model works without the user's weights file; a module gone later is named."""
    import importlib

    import onnxruntime as ort
    import torch

    from edgetl.imported.factory import FACTORY_FILE, TORCH_FACTORY
    from edgetl.imported.model import read_source

    model = read_source("tinynets:make", _config("tinynets:make", nets / "net.safetensors"))
    run = tmp_path_factory.mktemp("run") / "source"
    TORCH_FACTORY.bring_into(model, run / TORCH_FACTORY.file)
    settings = json.loads((run / FACTORY_FILE).read_text())
    assert settings["factory"] == "tinynets:make" and settings["image_size"] == 32
    expected = _reference("make", nets / "net.safetensors")
    (nets / "net.safetensors").rename(nets / "moved.safetensors")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(TORCH_FACTORY.reference(run / "model.safetensors")(x), expected(x))
    record = TORCH_FACTORY.to_onnx(run / "model.safetensors", run / "model.onnx", {"labels": json.dumps(CLASSES)})
    assert "tinynets:make" in record["exporter"] and record["opset"] == 18
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    assert np.allclose(session.run(None, {name: x.numpy()})[0], expected(x).detach().numpy(), atol=1e-4)
    assert session.get_modelmeta().custom_metadata_map["labels"] == json.dumps(CLASSES)
    (nets / "tinynets.py").rename(nets / "renamed.py")
    sys.modules.pop("tinynets")
    importlib.invalidate_caches()
    with pytest.raises(EdgetlError, match=r"factory.json 'tinynets:make': cannot import module 'tinynets'") as caught:
        TORCH_FACTORY.reference(run / "model.safetensors")
    assert "\n" not in str(caught.value)


def test_optimize_ships_a_verified_bundle_of_a_factory_model(nets, monkeypatch):
    """``edgetl optimize tinynets:make --weights net.safetensors``: the ONNX export equals the module in torch."""
    import onnxruntime as ort
    import tinynets
    import torch
    from safetensors.torch import save_file

    from edgetl.bundle.verify import verify
    from edgetl.pipeline.optimize import optimize
    from edgetl.preprocess import ImagePreprocess

    preprocess = ImagePreprocess(image_size=32, channels=3, **NORMALISE)
    train = pattern_images(40, seed=1)
    torch.manual_seed(0)
    model = tinynets.make()
    fit_briefly(model, preprocess, train)
    save_file(model.state_dict(), str(nets / "trained.safetensors"))
    photos = pattern_images(30, seed=5)
    for i, (image, label) in enumerate(zip(photos.images, photos.labels)):
        (nets / "photos" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((48, 40)).save(nets / "photos" / CLASSES[label] / f"{i}.png")
    (nets / "labels.txt").write_text("\n".join(CLASSES) + "\n")

    monkeypatch.chdir(nets)
    summary = optimize("tinynets:make", nets / "photos", weights=nets / "trained.safetensors", size=32,
                       labels=nets / "labels.txt", overrides=FAST, progress=False, log=lambda m: None, **NORMALISE)
    assert [row["variant"] for row in summary["variants"]] == ["onnx-fp32", "openvino-fp32", "onnx-int8-static",
                                                               "openvino-int8"]
    assert summary["test_accuracy"] > 90
    run = nets / "runs/make"
    assert json.loads((run / "source/factory.json").read_text())["factory"] == "tinynets:make"
    export = json.loads((run / "artifacts/onnx-fp32/export.json").read_text())
    assert "torch.onnx (dynamo) from tinynets:make" in export["exporter"]
    validation = json.loads((run / "artifacts/onnx-fp32/validation.json").read_text())["report"]
    assert validation["max_abs_logit_diff"] < 1e-4  # held to the module itself, run by torch
    session = ort.InferenceSession(str(run / "artifacts/onnx-fp32/model.onnx"), providers=["CPUExecutionProvider"])
    x = preprocess.normalize(photos.images[:8])
    expected = _reference("make", nets / "trained.safetensors")(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-4)
    report = verify(nets / "models/make.tar.gz")
    assert report.ok, report.problems
    manifest = json.loads((nets / "models/make/manifest.json").read_text())
    assert manifest["source_model"]["format"] == "torch-factory"
