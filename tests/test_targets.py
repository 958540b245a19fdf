"""Target profiles, `edgetl targets list/show/check`, and benchmarking a tiny bundle on the local targets.

The bundle holds a hand-built colour model (mean colour -> linear layer, no torch), a validation slice whose
reference logits are computed with numpy, so the device-side verdict is known in advance, and benchmark inputs.
A second bundle (test_bundle's bag-of-words model, named int64 inputs) checks a multi-input model the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.bench.plan import agent_request, load_bundle, plan_runs
from edgetl.bench.remote import AGENT_FILES, RemoteError, bench_target, bench_targets, check_target
from edgetl.bench.results import TargetsReport
from edgetl.bench.targets import SHIPPED_DIR, TargetProfile, list_targets, load_target
from edgetl.bundle import BENCH_FILE, SLICE_FILE, Artifact, ValidationSlice, ship, verify
from edgetl.cli import app
from edgetl.preprocess import ImagePreprocess
from edgetl.errors import BundleError, TargetError

from test_bundle import TEXT_CASES, TEXT_LABELS, ship_words, text_files, text_preprocess  # noqa: F401 - a fixture

LABELS = ["red", "green", "blue", "dark"]
PREPROCESS = ImagePreprocess(image_size=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
WEIGHT = 3.0 * np.array([[1, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1]], dtype=np.float32)
BIAS = np.array([0, 0, 0, -4.5], dtype=np.float32)
SHIPPED = {"local-cpu", "local-cpu-1core", "cuda-gpu", "raspberry-pi-4", "jetson-orin-nano", "intel-igpu"}


def colour_logits(inputs: np.ndarray) -> np.ndarray:
    """What the colour model computes, in numpy: the reference the devices are held to."""
    return inputs.mean(axis=(2, 3)) @ WEIGHT + BIAS


def make_bundle(folder: Path, *, wrong_reference: bool = False, validation: bool = True, bench: bool = True) -> Path:
    """Ship the colour model (ONNX and OpenVINO IR) with a 40-sample validation slice and 4 solid colours as its
    benchmark inputs (``validation``/``bench`` False: without them); returns the bundle folder."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("MatMul", ["features", "weight"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ],
        "colours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(WEIGHT, "weight"), numpy_helper.from_array(BIAS, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx_path = folder / "src" / "colours.onnx"
    onnx_path.parent.mkdir(parents=True)
    onnx.save(model, onnx_path)
    xml_path = folder / "src" / "ov" / "colours.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]], dtype=np.int64)
    images = np.clip(colours[labels][:, None, None, :] + rng.integers(-30, 30, (40, 8, 8, 3)), 0, 255).astype(np.uint8)
    inputs = PREPROCESS.normalize(images)
    reference = colour_logits(inputs)
    if wrong_reference:  # a reference that disagrees with what any correct runtime computes
        reference = np.roll(reference, 1, axis=1)
    solid = PREPROCESS.normalize(np.repeat(np.repeat(colours[:, None, None, :], 8, 1), 8, 2).astype(np.uint8))
    gate = {"max_accuracy_drop": 1.0, "min_agreement": 0.99, "max_abs_logit_diff": 0.0, "min_accuracy": 0.0}
    passing = {"passed": True, "reasons": [], "accuracy": 100.0, "agreement": 1.0, "gate": gate}
    shipped = ship(
        [Artifact("onnx-fp32", "onnx", [onnx_path], "onnxruntime:CPUExecutionProvider", passing),
         Artifact("openvino-fp32", "openvino", [xml_path, xml_path.with_suffix(".bin")], "openvino:CPU", passing)],
        name="colours", output_dir=folder / "models", labels=LABELS, preprocess=PREPROCESS, recipe_toml="",
        recipe_hash="test", card={}, bench_inputs=solid if bench else None,
        validation_slice=ValidationSlice(inputs, labels, reference) if validation else None,
    )
    return shipped.path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def quick(name: str, **changes) -> TargetProfile:
    """A shipped profile with a measurement policy small enough for a test."""
    profile = load_target(name)
    profile.batch_sizes = [1, 4]
    profile.measure.warmup, profile.measure.min_runs, profile.measure.max_seconds = 2, 10, 0.2
    for key, value in changes.items():
        setattr(profile, key, value)
    return profile


# -- profiles ----------------------------------------------------------------------------------------------


def test_the_shipped_profiles_load():
    profiles = {p.name: p for p in list_targets()}
    assert SHIPPED <= set(profiles)
    assert profiles["local-cpu"].is_local and not profiles["local-cpu"].emulated
    one_core = profiles["local-cpu-1core"]
    assert one_core.emulated and one_core.threads == 1 and one_core.emulate.cores == 1
    assert "EMULATED" in one_core.description
    pi = profiles["raspberry-pi-4"]
    assert (pi.connection.kind, pi.arch, pi.connection.port) == ("ssh", "aarch64", 22)
    assert "onnxruntime:CUDAExecutionProvider" in profiles["cuda-gpu"].runtimes
    assert "torch:cuda" in profiles["cuda-gpu"].runtimes
    assert profiles["intel-igpu"].runtimes[0] == "openvino:GPU"
    assert all(Path(p.source).parent == SHIPPED_DIR for p in profiles.values() if p.name in SHIPPED)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('runtimes = ["onnxruntime:CPUExecutionProvider"]\n[connection]\nhots = "pi"\n', "unknown key connection.hots"),
        ("threads = 'four'\n", "threads must be int"),
        ("batch_sizes = 8\n", "batch_sizes must be a list"),
        ('runtimes = ["tensorflow:CPU"]\n', "runtime 'tensorflow:CPU'"),
        ('[connection]\nkind = "ssh"\n', "needs connection.host"),
        ('[connection]\nkind = "telnet"\n', "connection.kind must be 'local' or 'ssh'"),
        ("[measure]\nmin_runs = 0\n", "measure.min_runs must be >= 1, got 0"),
        ("threads = \n", "not valid TOML"),
    ],
)
def test_a_bad_profile_names_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=message) as caught:
        load_target(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_target_lists_the_known_ones(tmp_path: Path, monkeypatch):
    with pytest.raises(TargetError, match="unknown target 'pi5'.*raspberry-pi-4"):
        load_target("pi5")
    (tmp_path / "my-board.toml").write_text('[connection]\nkind = "ssh"\nhost = "10.0.0.7"\nport = 2222\n')
    monkeypatch.setenv("EDGETL_TARGETS", str(tmp_path))
    board = load_target("my-board")
    assert (board.name, board.connection.host, board.connection.port) == ("my-board", "10.0.0.7", 2222)
    assert "my-board" in {p.name for p in list_targets()}


# -- the CLI ------------------------------------------------------------------------------------------------


def test_targets_list_and_show():
    runner = CliRunner()
    listed = runner.invoke(app, ["targets", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    for name in SHIPPED:
        assert name in listed.output
    shown = runner.invoke(app, ["targets", "show", "raspberry-pi-4"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert "raspberrypi.local" in shown.output and "aarch64" in shown.output and "target_rel_ci" in shown.output
    missing = runner.invoke(app, ["targets", "show", "nope"])
    assert isinstance(missing.exception, TargetError) and missing.exception.exit_code == 2


def test_check_local_cpu_loads_its_runtimes_for_real():
    result = check_target(load_target("local-cpu"))
    assert {rt.runtime: rt.status for rt in result.runtimes} == {
        "onnxruntime:CPUExecutionProvider": "ok", "openvino:CPU": "ok"}
    assert result.environment["logical_cores"] >= 1 and result.environment["versions"]["onnxruntime"]


def test_check_cuda_gpu_without_a_gpu_says_not_available():
    if any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-gpu")):
        pytest.skip("this machine has a CUDA device")
    result = check_target(load_target("cuda-gpu"))
    assert [rt.status for rt in result.runtimes] == ["not available: no CUDA device"] * 3
    output = CliRunner().invoke(app, ["targets", "check", "cuda-gpu"], env={"COLUMNS": "200"}).output
    assert "not available: no CUDA device" in output and "reachable" in output


# -- benchmarking the bundle on local targets ----------------------------------------------------------------


def test_bundle_carries_a_verified_validation_slice(bundle: Path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validation_slice"] == {"file": "validation/slice.npz", "samples": 40, "reference": "torch-fp32"}
    assert "validation/slice.npz" in manifest["files"]
    assert verify(bundle, load=False).ok


def test_local_cpu_measures_and_validates_on_the_device(bundle: Path):
    result = bench_target(bundle, quick("local-cpu"))
    assert result.error is None and not result.emulated
    for runtime in ("onnxruntime:CPUExecutionProvider", "openvino:CPU"):
        rt = result.runtime(runtime)
        assert rt.ok and rt.validation["passed"] and rt.validation["agreement"] == 1.0
        assert rt.validation["samples"] == 40 and rt.validation["max_abs_logit_diff"] < 1e-4
        assert [s["batch_size"] for s in rt.stats] == [1, 4]
        s = rt.stats[0]
        assert s["runs"] >= 10 and s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p99_ms"]
        assert s["throughput"] == pytest.approx(1000 / s["median_ms"])
        assert rt.cold_start_s > 0 and s["peak_rss_mb"] > 0
    assert result.runtime("openvino:CPU").artifact == "openvino-fp32"
    assert result.environment["cpu"] and result.environment["versions"]["openvino"]
    # The pick rests on the race: both runtimes timed in the same rounds, the runner-up's ratio recorded.
    assert set(result.race["times_ms"]) == {"onnxruntime:CPUExecutionProvider", "openvino:CPU"}
    report = TargetsReport("b", {"local-cpu": result})
    pick = report.choices()["local-cpu"]
    assert pick["ratio"]["vs"] != pick["runtime"] and pick["ratio"]["rounds"] == result.race["rounds"]
    assert pick["ratio"]["low"] <= pick["ratio"]["ratio"] <= pick["ratio"]["high"]
    assert "paired rounds" in report.notes()[0]


def test_one_core_target_is_pinned_capped_and_says_it_is_emulated(bundle: Path):
    result = bench_target(bundle, quick("local-cpu-1core", batch_sizes=[1]))
    assert result.emulated
    assert len(result.emulation["cpus"]) == 1 and result.emulation["memory_mb"] == 2048
    assert result.environment["usable_cores"] == 1  # the agent saw one core
    assert all(rt.ok and rt.validation["passed"] for rt in result.runtimes)
    assert result.runtime("onnxruntime:CPUExecutionProvider").settings["intra_op_num_threads"] == 1


def test_a_device_that_computes_different_answers_fails(tmp_path: Path):
    wrong = make_bundle(tmp_path, wrong_reference=True)
    result = bench_target(wrong, quick("local-cpu", runtimes=["onnxruntime:CPUExecutionProvider"], batch_sizes=[1]))
    verdict = result.runtime("onnxruntime:CPUExecutionProvider").validation
    assert verdict["passed"] is False and any("agreement" in reason for reason in verdict["reasons"])


def test_missing_runtime_is_a_not_available_row_and_an_error_when_nothing_loads(bundle: Path):
    profile = quick("local-cpu", runtimes=["onnxruntime:TensorrtExecutionProvider", "openvino:GPU"])
    with pytest.raises(RemoteError, match="none of its runtimes loads there") as caught:
        bench_target(bundle, profile)
    assert caught.value.kind == "runtime" and "\n" not in str(caught.value)
    statuses = [rt.status for rt in caught.value.partial.runtimes]
    assert all(status.startswith("not available:") for status in statuses)


def _fast_profiles(folder: Path, **extra: str) -> None:
    """The local profiles with a quick measurement policy, plus ``extra`` {name: TOML text}, in ``folder``."""
    folder.mkdir()
    for name in ("local-cpu", "local-cpu-1core"):
        text = (SHIPPED_DIR / f"{name}.toml").read_text().replace("min_runs = 30", "min_runs = 8")
        (folder / f"{name}.toml").write_text(text.replace("max_seconds = 5.0", "max_seconds = 0.1")
                                             .replace("warmup = 10", "warmup = 1").replace("[1, 8]", "[1]"))
    for name, text in extra.items():
        (folder / f"{name}.toml").write_text(text)


def test_bench_command_merges_local_targets(bundle: Path, tmp_path: Path, monkeypatch):
    _fast_profiles(tmp_path / "targets")
    monkeypatch.setenv("EDGETL_TARGETS", str(tmp_path / "targets"))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(bundle), "--target", "local-cpu", "--target", "local-cpu-1core",
                                      "--json", str(out)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "local-cpu-1core (emulated)" in result.output and "pass" in result.output
    data = json.loads(out.read_text())
    assert list(data["targets"]) == ["local-cpu", "local-cpu-1core"]
    assert {row["target"] for row in data["rows"]} == {"local-cpu", "local-cpu-1core (emulated)"}
    assert all(row["validation"] == "pass" for row in data["rows"])


def test_targets_report_keeps_a_failed_targets_error(bundle: Path):
    report = bench_targets(bundle, [quick("local-cpu", runtimes=["openvino:GPU"])])
    result = report.results["local-cpu"]
    assert result.error_kind == "runtime" and report.ok  # nothing available there: skipped, not failed
    assert report.rows() == [{"target": "local-cpu", "runtime": "openvino:GPU", "status": "not available"}]
    assert report.notes()[0].startswith("local-cpu: nothing to use: target local-cpu")  # no pick, and why
    assert report.notes()[1].startswith("local-cpu openvino:GPU: not available: OpenVINO sees no GPU device")


def test_bench_command_fails_when_nothing_was_measured(bundle: Path, tmp_path: Path, monkeypatch):
    """A target where nothing runs is skipped beside others that ran; alone, the command fails."""
    _fast_profiles(tmp_path / "targets", **{"nothing-here": 'runtimes = ["torch:cpu", "openvino:NOSUCHDEVICE"]\n'})
    monkeypatch.setenv("EDGETL_TARGETS", str(tmp_path / "targets"))
    alone = CliRunner().invoke(app, ["bench", str(bundle), "--target", "nothing-here"], env={"COLUMNS": "250"})
    assert alone.exit_code == 1, alone.output
    assert "nothing was measured" in alone.output
    assert "torch:cpu: not available: no artifact in this bundle runs on torch:cpu" in alone.output
    beside = CliRunner().invoke(app, ["bench", str(bundle), "-t", "local-cpu", "-t", "nothing-here"],
                                env={"COLUMNS": "250"})
    assert beside.exit_code == 0, beside.output
    assert "nothing-here: skipped: target nothing-here: none of its runtimes loads there" in beside.output
    assert "nothing-here: nothing to use" in beside.output and "nothing was measured" not in beside.output


def test_the_agent_runs_without_edgetl(bundle: Path, tmp_path: Path):
    """What is copied to a device works there alone: edgetl made unimportable, only the agent's files present.
    It probes a runtime, then measures the bundle with the host's own runners (shipped as backends.py)."""
    for name, source in AGENT_FILES.items():
        shutil.copy(source, tmp_path / name)
    assert set(AGENT_FILES) == {"agent.py", "backends.py", "loop.py", "stats.py", "paired.py", "environment.py"}
    loaded = load_bundle(bundle)
    profile = quick("local-cpu", batch_sizes=[1])
    runs, _ = plan_runs(loaded, profile)
    (tmp_path / "probe.json").write_text(json.dumps({"runtimes": ["onnxruntime:CPUExecutionProvider"]}))
    (tmp_path / "bench.json").write_text(json.dumps({**agent_request(loaded, profile, runs), "bundle": str(bundle)}))

    def agent(*args: str) -> list[dict]:
        code = ("import runpy, sys; sys.modules['edgetl'] = None; sys.path.insert(0, sys.argv[1]); "
                "sys.argv = ['agent.py', *sys.argv[2:]]; runpy.run_path('agent.py', run_name='__main__')")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path), *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    events = agent("--probe", "probe.json")
    assert [e["event"] for e in events] == ["facts", "runtime", "done"]
    assert events[0]["environment"]["versions"]["edgetl"] is None  # it really ran without edgetl
    assert events[1]["status"] == "ok"
    events = agent("bench.json")
    assert events[1] == {"event": "inputs", "source": BENCH_FILE, "rows": 4, "shape": [3, 8, 8]}
    opened = [e for e in events if e["event"] == "runtime"]
    assert [e["status"] for e in opened] == ["ok", "ok"] and opened[0]["settings"]["intra_op_num_threads"] == 0
    assert len([e for e in events if e["event"] == "stats"]) == 2 and events[-1] == {"event": "done"}
    race = next(e for e in events if e["event"] == "race")  # both runtimes timed back to back
    assert race["batch_size"] == 1 and {k: len(v) for k, v in race["times_ms"].items()} == {
        "onnxruntime:CPUExecutionProvider": race["rounds"], "openvino:CPU": race["rounds"]}


def test_what_is_timed_without_bench_inputs_or_a_slice(tmp_path: Path):
    """Bench inputs shipped: those; else the slice's inputs; else random data of the manifest's input_shape."""
    profile = quick("local-cpu", runtimes=["onnxruntime:CPUExecutionProvider"], batch_sizes=[1, 4])
    slice_only = bench_target(make_bundle(tmp_path / "slice-only", bench=False), profile)
    assert slice_only.inputs == {"source": SLICE_FILE, "rows": 40, "shape": [3, 8, 8]}
    neither = make_bundle(tmp_path / "neither", validation=False, bench=False)
    result = bench_target(neither, profile)
    assert result.inputs == {"source": "random float32", "rows": None, "shape": [3, 8, 8]}
    rt = result.runtime("onnxruntime:CPUExecutionProvider")
    assert rt.validation is None and [s["batch_size"] for s in rt.stats] == [1, 4]
    manifest = json.loads((neither / "manifest.json").read_text())
    del manifest["input_shape"]
    (neither / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no benchmark inputs .*re-ship it") as caught:
        bench_target(neither, profile)
    assert "\n" not in str(caught.value)


def test_a_model_with_named_token_inputs_is_timed_on_its_bench_rows(text_files, tmp_path: Path):
    """A bundle whose model takes several named int64 inputs (a tokenized text model): the device needs no
    tokenizer; it is checked on the slice's rows and timed on the bench rows, repeated up to each batch size."""
    preprocess = text_preprocess(text_files)
    tokens = preprocess.encode(list(TEXT_CASES))
    labels = np.array([TEXT_LABELS.index(label) for label in TEXT_CASES.values()])
    reference = np.eye(len(TEXT_LABELS), dtype=np.float32)[labels]
    timed = preprocess.encode(["my card was stolen and where is my money back", "top up"])
    width = timed["input_ids"].shape[1]
    shipped = ship_words(text_files, tmp_path, validation_slice=ValidationSlice(tokens, labels, reference),
                         bench_inputs=timed)
    profile = quick("local-cpu", batch_sizes=[1, 4])
    result = bench_target(shipped.path, profile)
    assert result.error is None
    assert result.inputs == {"source": BENCH_FILE, "rows": 2,
                             "shape": {"input_ids": [width], "attention_mask": [width]}}
    for runtime in ("onnxruntime:CPUExecutionProvider", "openvino:CPU"):
        rt = result.runtime(runtime)
        assert rt.ok and rt.validation["passed"] and rt.validation["samples"] == 3 and rt.validation["agreement"] == 1
        assert [s["batch_size"] for s in rt.stats] == [1, 4]
    without = ship_words(text_files, tmp_path / "no-bench", validation_slice=ValidationSlice(tokens, labels, reference))
    assert bench_target(without.path, profile).inputs["source"] == SLICE_FILE


def test_validation_slice_from_a_split():
    from edgetl.data.dataset import LabeledImages

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (30, 8, 8, 3), dtype=np.uint8)
    split = LabeledImages(images, np.arange(30) % 4, LABELS)
    reference = colour_logits(PREPROCESS.normalize(images))
    chosen = ValidationSlice.from_split(split, PREPROCESS, reference, size=12, seed=3)
    assert chosen.inputs.shape == (12, 3, 8, 8) and chosen.labels.shape == (12,)
    np.testing.assert_allclose(colour_logits(chosen.inputs), chosen.reference_logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(BundleError, match="reference outputs for 30 samples"):
        ValidationSlice.from_split(split, PREPROCESS, reference[:5])
