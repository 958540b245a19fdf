"""`edgetl bench MODEL_FILE --target ...`: a bare .onnx or OpenVINO .xml staged as a bundle with random inputs of
its own shapes and timed on the local targets like any bundle (tiny graphs made here with onnx.helper).

Covered: an image-like ONNX with external weights (timed on onnxruntime only) and its OpenVINO conversion (through
the CLI, with the JSON), a dynamic non-batch dim that needs --shape, a text-like int64 model (token inputs,
--seq-len), nothing measured -> exit 1, and the errors of the input options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.bench.model_file import MODEL_FORMATS, NOT_VALIDATED
from edgetl.bench.random_inputs import DEFAULT_ROWS, TOKEN_IDS, InputOptions, ModelInput, make_inputs
from edgetl.bench.remote import bench_targets
from edgetl.bench.targets import SHIPPED_DIR, load_target
from edgetl.bundle import BENCH_FILE
from edgetl.cli import app
from edgetl.errors import EdgetlError

from test_ssh import sshd  # noqa: F401 - a fixture: a throwaway OpenSSH server on localhost

ORT, OV = "onnxruntime:CPUExecutionProvider", "openvino:CPU"
TOKENS = ("input_ids", "attention_mask", "token_type_ids")


def conv_model(path: Path, dims: tuple = ("batch", 3, 8, 8), *, external: bool = False) -> Path:
    """Conv -> Relu -> global average pool -> MatMul to 5 logits; ``external``: weights in ``<name>.data``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"]),
         helper.make_node("MatMul", ["features", "head"], ["logits"])],
        "tiny-conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 5])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                     numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "head")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=external, location=f"{path.name}.data", size_threshold=0)
    return path


def text_model(path: Path) -> Path:
    """A bag-of-embeddings text classifier: (token + type embeddings) * mask, summed over the sequence."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in TOKENS]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["words", "input_ids"], ["word_vectors"]),
         helper.make_node("Gather", ["types", "token_type_ids"], ["type_vectors"]),
         helper.make_node("Add", ["word_vectors", "type_vectors"], ["vectors"]),
         helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
         helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
         helper.make_node("ReduceSum", ["masked", "sequence_axis"], ["logits"], keepdims=0)],
        "tiny-text", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((TOKEN_IDS[1], 4)).astype(np.float32), "words"),
                     numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "types"),
                     numpy_helper.from_array(np.array([-1], np.int64), "last"),
                     numpy_helper.from_array(np.array([1], np.int64), "sequence_axis")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def to_openvino(onnx_path: Path) -> Path:
    import openvino as ov

    xml = onnx_path.parent / "ov" / f"{onnx_path.stem}.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def quick(name: str = "local-cpu-1core", **changes):
    """A shipped local profile with a measurement policy small enough for a test."""
    profile = load_target(name)
    profile.batch_sizes = [1, 4]
    profile.measure.warmup, profile.measure.min_runs, profile.measure.max_seconds = 1, 8, 0.1
    for key, value in changes.items():
        setattr(profile, key, value)
    return profile


@pytest.fixture
def fast_targets(tmp_path: Path, monkeypatch) -> Path:
    """EDGETL_TARGETS with quick copies of the local profiles and an onnxruntime-only one."""
    folder = tmp_path / "targets"
    folder.mkdir()
    for name in ("local-cpu", "local-cpu-1core"):
        text = (SHIPPED_DIR / f"{name}.toml").read_text()
        for slow, fast in (("min_runs = 30", "min_runs = 8"), ("max_seconds = 5.0", "max_seconds = 0.1"),
                           ("warmup = 10", "warmup = 1"), ("[1, 8]", "[1]")):
            text = text.replace(slow, fast)
        (folder / f"{name}.toml").write_text(text)
    (folder / "ort-only.toml").write_text('runtimes = ["onnxruntime:CPUExecutionProvider"]\n[measure]\nmin_runs = 8\n'
                                          "max_seconds = 0.1\nwarmup = 1\n")
    monkeypatch.setenv("EDGETL_TARGETS", str(folder))
    return folder


def cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "250"})


# -- timing model files on the local targets ------------------------------------------------------------------


def test_onnx_file_is_staged_with_its_external_weights_and_timed_on_onnxruntime(tmp_path: Path):
    model = conv_model(tmp_path / "conv.onnx", external=True)
    assert (tmp_path / "conv.onnx.data").is_file()  # onnxruntime cannot open the staged copy without it
    report = bench_targets(model, [quick()])
    result = report.results["local-cpu-1core"]
    assert result.error is None and report.measured and report.failure() is None
    assert result.inputs == {"source": BENCH_FILE, "rows": DEFAULT_ROWS, "shape": [3, 8, 8]}
    timed = result.runtime(ORT)
    assert timed.ok and timed.artifact == "conv.onnx" and timed.validation is None
    assert [s["batch_size"] for s in timed.stats] == [1, 4] and all(s["runs"] >= 8 for s in timed.stats)
    assert timed.model_size_bytes == model.stat().st_size + (tmp_path / "conv.onnx.data").stat().st_size
    assert result.runtime(OV).status == "not available: conv.onnx is timed on onnxruntime only, the runtime for .onnx files"
    assert [row["validation"] for row in report.rows() if "batch" in row] == ["no slice", "no slice"]
    notes = report.notes()
    assert notes[0].startswith("conv.onnx: timed on random inputs of conv.onnx's own shapes: image float32 "
                               "(batch, 3, 8, 8) standard normal; not validated")
    assert notes[1].startswith("local-cpu-1core: use conv.onnx on onnxruntime") and NOT_VALIDATED in notes[1]


def test_openvino_ir_through_the_cli_table_and_json(tmp_path: Path, fast_targets: Path):
    xml = to_openvino(conv_model(tmp_path / "conv.onnx"))
    out = tmp_path / "bench.json"
    result = cli(str(xml), "--target", "local-cpu-1core", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "local-cpu-1core (emulated)" in result.output and "not validated: " + NOT_VALIDATED in result.output
    data = json.loads(out.read_text())
    assert set(data) == {"bundle", "created", "rows", "notes", "choices", "targets"}  # the bundle report's keys
    assert data["bundle"] == str(xml)
    timed = [row for row in data["rows"] if "batch" in row]
    assert [(r["runtime"], r["batch"], r["validation"]) for r in timed] == [(OV, 1, "no slice")]
    assert timed[0]["median_ms"] > 0
    assert {"target": "local-cpu-1core (emulated)", "runtime": ORT, "status": "not available"} in data["rows"]
    assert data["choices"]["local-cpu-1core"] == {**data["choices"]["local-cpu-1core"], "artifact": "conv.xml",
                                                  "runtime": OV, "validated": False}
    # without --target, a model file is timed on local-cpu (this machine)
    default = cli(str(xml), "--json", str(out))
    assert default.exit_code == 0, default.output
    assert list(json.loads(out.read_text())["targets"]) == ["local-cpu"]


def test_nothing_measured_exits_non_zero(tmp_path: Path, fast_targets: Path):
    xml = to_openvino(conv_model(tmp_path / "conv.onnx"))
    result = cli(str(xml), "-t", "ort-only")
    assert result.exit_code == 1, result.output
    assert "nothing was measured" in result.output
    assert "conv.xml is timed on openvino only, the runtime for .xml files" in result.output


def test_a_dynamic_image_size_needs_shape(tmp_path: Path, fast_targets: Path):
    model = conv_model(tmp_path / "dynamic.onnx", ("batch", 3, "height", "width"))
    refused = cli(str(model), "-t", "local-cpu-1core")
    assert refused.exit_code == 1
    assert isinstance(refused.exception, EdgetlError) and "\n" not in str(refused.exception)
    assert str(refused.exception) == ("dynamic.onnx: input 'image' (batch, 3, height, width) has dynamic dims height, "
                                      "width; pass its full shape, batch first: --shape image=1x3x<height>x<width>")
    out = tmp_path / "bench.json"
    given = cli(str(model), "-t", "local-cpu-1core", "--shape", "image=1x3x16x16", "--json", str(out))
    assert given.exit_code == 0, given.output
    target = json.loads(out.read_text())["targets"]["local-cpu-1core"]
    assert target["inputs"]["shape"] == [3, 16, 16]
    assert [s["batch_size"] for s in target["runtimes"][0]["stats"]] == [1]


def test_a_text_model_gets_token_inputs_of_the_sequence_length(tmp_path: Path):
    model = text_model(tmp_path / "text.onnx")
    info = MODEL_FORMATS.get(".onnx").read(model)
    assert [(m.name, m.dims, m.dtype) for m in info.inputs] == [(n, ("batch", "sequence"), "int64") for n in TOKENS]
    batch, described = make_inputs(info.inputs, InputOptions(), source="text.onnx")
    assert {name: (a.shape, a.dtype) for name, a in batch.items()} == {n: ((DEFAULT_ROWS, 128), np.int64) for n in TOKENS}
    ids = batch["input_ids"]
    assert ids.min() >= TOKEN_IDS[0] and ids.max() < TOKEN_IDS[1] and len(np.unique(ids)) > 10
    assert (batch["attention_mask"] == 1).all() and (batch["token_type_ids"] == 0).all()
    assert "input_ids int64 (batch, 128) token ids 1-99" in described
    # a --shape on one token input sets the sequence length of all of them; --seq-len wins over it
    shaped, _ = make_inputs(info.inputs, InputOptions.parse(["input_ids=1x32"]), source="text.onnx")
    assert {a.shape for a in shaped.values()} == {(DEFAULT_ROWS, 32)}
    report = bench_targets(model, [quick()], inputs=InputOptions.parse([], seq_len=16))
    result = report.results["local-cpu-1core"]
    assert result.error is None, result.error
    assert result.inputs["shape"] == {name: [16] for name in TOKENS}
    assert [s["batch_size"] for s in result.runtime(ORT).stats] == [1, 4]


@pytest.mark.ssh
def test_a_model_file_with_external_weights_on_a_device_over_ssh(sshd, tmp_path: Path):
    """The payload carries the staged model, its weights file (hard-linked in staging, a file in the archive) and
    the random inputs; the device times them with no edgetl and no onnx package needed."""
    model = conv_model(tmp_path / "conv.onnx", external=True)
    profile = sshd.profile(name="ssh-device")
    report = bench_targets(model, [profile])
    result = report.results["ssh-device"]
    assert result.error is None, result.error
    assert result.inputs == {"source": BENCH_FILE, "rows": DEFAULT_ROWS, "shape": [3, 8, 8]}
    assert [s["batch_size"] for s in result.runtime(ORT).stats] == [1, 4]
    assert not result.runtime(OV).ok and report.failure() is None


# -- the input options and their errors ----------------------------------------------------------------------


IMAGE = [ModelInput("image", ("batch", 3, "height", "width"), "float32")]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (["image=1x3x16"], "has 3 dims; dynamic.onnx's input 'image' has 4: Nx3xNxN"),
        (["image=1x4x16x16"], "axis 1 of dynamic.onnx's input 'image' is fixed at 3"),
        (["pixels=1x3x16x16"], "--shape names 'pixels', not an input of dynamic.onnx; its inputs are image"),
        (["image=1x3xax16"], "expected NAME=DIMS with positive integer dims"),
        (["image=1x3x0x16"], "expected NAME=DIMS with positive integer dims"),
        (["image=1x3x8x8", "image=1x3x9x9"], "--shape image is given twice"),
    ],
)
def test_a_bad_shape_is_a_one_line_error(shapes: list[str], message: str):
    with pytest.raises(EdgetlError, match=message) as caught:
        make_inputs(IMAGE, InputOptions.parse(shapes), source="dynamic.onnx")
    assert "\n" not in str(caught.value)


def test_an_unnamed_shape_fits_a_single_input_model_only():
    batch, _ = make_inputs(IMAGE, InputOptions.parse(["1x3x12x10"]), source="dynamic.onnx")
    assert batch.shape == (DEFAULT_ROWS, 3, 12, 10) and batch.dtype == np.float32
    two = [*IMAGE, ModelInput("scale", ("batch", 1), "float32")]
    with pytest.raises(EdgetlError, match="needs the input's name, as NAME=DIMS: dynamic.onnx has inputs image, scale"):
        make_inputs(two, InputOptions.parse(["1x3x12x10"]), source="dynamic.onnx")


def test_a_static_batch_is_kept_and_unfed_dtypes_are_refused():
    batch, described = make_inputs([ModelInput("x", (2, 6), "float16")], InputOptions(), source="m.xml")
    assert batch.shape == (2, 6) and batch.dtype == np.float16 and "x float16 (2, 6)" in described
    with pytest.raises(EdgetlError, match="input 'flag' is bool; edgetl's runners feed float32, float16, int64, int32"):
        make_inputs([ModelInput("flag", ("batch", 1), "bool")], InputOptions(), source="m.onnx")


def test_shape_options_are_refused_for_a_bundle_and_a_recipe(tmp_path: Path):
    with pytest.raises(EdgetlError, match="apply to a bare model file .* is a bundle"):
        bench_targets(tmp_path, ["local-cpu"], inputs=InputOptions.parse(["image=1x3x8x8"]))
    recipe = cli("--shape", "image=1x3x8x8")
    assert recipe.exit_code == 1 and "apply to a model file" in str(recipe.exception)
    missing = cli(str(tmp_path / "nowhere.onnx"), "-t", "local-cpu")
    assert missing.exit_code == 1 and "not found" in str(missing.exception)
