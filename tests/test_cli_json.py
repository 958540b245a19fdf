"""`--json PATH` on every command: the record the files hold, written atomically to PATH, or alone on stdout with
`--json -` (tables and logs go to stderr), so `edgetl ... --json - | jq` works.

Cheap commands run in-process (typer's CliRunner keeps stdout and stderr apart); one subprocess checks the real
file descriptors; one slow test runs the pipeline's commands on a tiny recipe."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.cli.console import jsonable

from conftest import needs_fashion_mnist
from test_bundle import colour_pngs, flip_byte, text_files  # noqa: F401 - a fixture (the embedder needs it)
from test_bundle_embedding import TEXTS, embedder, shipped  # noqa: F401 - fixtures
from test_targets import LABELS, _fast_profiles, make_bundle


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def stdout_json(result):
    """The command's stdout, which must be nothing but one JSON document."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("json-bundle"))


# -- the shared helpers -------------------------------------------------------------------------------------------


@dataclass
class _Record:
    path: Path
    value: np.float32


def test_jsonable_turns_paths_numpy_dataclasses_and_nan_into_plain_json():
    record = {"a": _Record(Path("x/y.onnx"), np.float32(0.5)), "n": np.int64(3), "v": np.arange(3),
              "t": (1, float("nan")), "inf": float("inf"), 7: {"ok"}}
    assert jsonable(record) == {"a": {"path": "x/y.onnx", "value": 0.5}, "n": 3, "v": [0, 1, 2], "t": [1, None],
                                "inf": None, "7": ["ok"]}
    json.dumps(jsonable(record), allow_nan=False)  # strict JSON: jq would reject NaN
    with pytest.raises(TypeError, match="cannot write object as JSON"):
        jsonable(object())


def test_json_dash_keeps_the_real_stdout_for_json_only():
    """A real process: stdout (file descriptor 1) holds only the JSON; the pretty print went to stderr."""
    result = subprocess.run([sys.executable, "-m", "edgetl", "env", "--json", "-"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["python"] and facts["cpu"] and "onnxruntime" in json.dumps(facts)
    assert '"python"' in result.stderr  # the human output is not lost, only moved


def test_json_file_is_written_and_the_human_output_stays(tmp_path):
    path = tmp_path / "out" / "env.json"
    result = invoke("env", "--json", str(path))
    assert result.exit_code == 0, result.output
    facts = json.loads(path.read_text())
    assert facts["python"] and '"python"' in result.stdout
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary left behind


def test_a_folder_as_json_path_is_one_line_before_any_work(tmp_path):
    result = invoke("backbones", "--json", str(tmp_path))
    assert result.exit_code != 0
    assert f"--json {tmp_path} is a folder" in str(result.exception) and "backbones.json" in str(result.exception)
    assert "efficientnet_lite0" not in result.output  # refused before listing anything


# -- cheap commands -----------------------------------------------------------------------------------------------


def test_backbones_json_lists_every_spec_without_its_builder():
    specs = stdout_json(invoke("backbones", "--json", "-"))
    by_name = {spec["name"]: spec for spec in specs}
    lite = by_name["efficientnet_lite0"]
    assert lite["kind"] == "image" and lite["default_image_size"] == 224 and len(lite["mean"]) == 3
    assert lite["input"] == "224px" and "builder" not in lite
    assert any(spec["kind"] == "text" and spec["hub_id"] for spec in specs)


def test_targets_list_and_show_json_are_the_profiles():
    profiles = stdout_json(invoke("targets", "list", "--json", "-"))
    names = {profile["name"]: profile for profile in profiles}
    assert {"local-cpu", "local-cpu-1core", "raspberry-pi-4"} <= set(names)
    assert names["raspberry-pi-4"]["connection"]["kind"] == "ssh"
    shown = stdout_json(invoke("targets", "show", "local-cpu-1core", "--json", "-"))
    assert shown == names["local-cpu-1core"] and shown["threads"] == 1


def test_targets_check_json_is_the_check_result():
    result = invoke("targets", "check", "local-cpu", "--json", "-")
    check = stdout_json(result)
    assert check["target"] == "local-cpu" and check["environment"]["python"]
    runtimes = {rt["runtime"]: rt["status"] for rt in check["runtimes"]}
    assert runtimes["onnxruntime:CPUExecutionProvider"] == "ok"
    assert "reachable" in result.stderr and "reachable" not in result.stdout


def test_verify_json_passes_and_fails_with_the_problems(bundle, tmp_path):
    record = stdout_json(invoke("verify", str(bundle), "--json", "-"))
    assert record["ok"] is True and record["problems"] == [] and record["checked_files"] >= 5
    assert set(record["loaded_artifacts"]) == {"onnx-fp32", "openvino-fp32"}
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    flip_byte(broken / "labels.json")
    result = invoke("verify", str(broken), "--json", "-")
    assert result.exit_code == 1  # unchanged by --json; the record comes first
    record = json.loads(result.stdout)
    assert record["ok"] is False and any("labels.json" in problem for problem in record["problems"])
    assert "failed verification" in result.stderr


def test_predict_json_gives_label_probability_and_top_k(bundle, tmp_path):
    images = colour_pngs(tmp_path)
    records = stdout_json(invoke("predict", str(bundle), *map(str, images), "--top-k", "2", "--json", "-"))
    assert [r["input"] for r in records] == [str(p) for p in images]
    assert [r["label"] for r in records] == LABELS  # red, green, blue, dark: the colour model's known answers
    for record in records:
        assert [t["label"] for t in record["top_k"]][0] == record["label"] and len(record["top_k"]) == 2
        assert record["probability"] == record["top_k"][0]["probability"] > 0.5


def test_predict_json_on_an_embedding_bundle_gives_the_vectors(embedder, shipped):  # noqa: F811 - fixtures
    records = stdout_json(invoke("predict", str(shipped.path), *TEXTS[:3], "--json", "-"))
    assert [r["input"] for r in records] == TEXTS[:3] and {r["output"] for r in records} == {"embedding"}
    values = np.array([r["values"] for r in records], dtype=np.float32)
    np.testing.assert_allclose(values, embedder["reference"](TEXTS[:3]), rtol=1e-4, atol=1e-5)
    assert all(r["description"].startswith("4-dim embedding, L2 norm") for r in records)


def test_bench_target_json_dash_is_the_merged_report(bundle, tmp_path, monkeypatch):
    _fast_profiles(tmp_path / "targets")
    monkeypatch.setenv("EDGETL_TARGETS", str(tmp_path / "targets"))
    result = invoke("bench", str(bundle), "--target", "local-cpu", "--json", "-")
    report = stdout_json(result)
    assert set(report) == {"bundle", "created", "rows", "notes", "choices", "targets"}
    assert list(report["targets"]) == ["local-cpu"] and report["choices"]["local-cpu"]["artifact"]
    timed = [row for row in report["rows"] if "batch" in row]
    assert timed and all(row["validation"] == "pass" and row["median_ms"] > 0 for row in timed)
    assert "local-cpu" in result.stderr  # the table went to stderr


# -- the pipeline's commands, on a tiny recipe --------------------------------------------------------------------


@pytest.mark.slow
@needs_fashion_mnist
def test_pipeline_commands_print_their_records(tmp_path):
    from test_faults import SETTINGS

    settings = {**SETTINGS, "run.name": "json", "distill.enabled": "false", "quantize.models": '["teacher"]',
                "quantize.methods": '["onnx-int8-dynamic"]'}
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    env = {**os.environ, "COLUMNS": "250", "EDGETL_LOG_DIR": str(tmp_path / "logs")}

    def edgetl(*args: str, code: int = 0):
        result = subprocess.run([sys.executable, "-m", "edgetl", *args, *sets, "--quiet", "--json", "-"],
                                capture_output=True, text=True, cwd=tmp_path, env=env)
        assert result.returncode == code, result.stderr[-3000:]
        return json.loads(result.stdout)

    summary = edgetl("run")
    on_disk = json.loads((tmp_path / "runs/json/summary.json").read_text())
    assert summary["default_artifact"] == on_disk["default_artifact"] and summary["bundle"] == on_disk["bundle"]
    assert [row["variant"] for row in summary["variants"]] == [row["variant"] for row in on_disk["variants"]]
    assert math.isclose(summary["test_accuracy"], on_disk["test_accuracy"])

    finetuned = edgetl("finetune")  # finished: read back, not retrained
    assert finetuned["test_accuracy"] == on_disk["test_accuracy"] and "transfer" in finetuned and finetuned["key"]
    assert edgetl("distill") is None  # off in this recipe
    exported = edgetl("export")
    assert {"onnx-fp32", "openvino-fp32"} <= {record["variant"] for record in exported}
    assert all(record["files"] for record in exported)
    quantized = edgetl("quantize")
    assert quantized["onnx-int8-dynamic"]["files"]
    reports = edgetl("validate")
    assert set(reports) >= {"onnx-fp32", "onnx-int8-dynamic"} and all("passed" in r for r in reports.values())
    benched = edgetl("bench")
    assert set(benched) == {"variants", "decisions"} and set(benched["decisions"]) == set(on_disk["decisions"])
    shipped_record = edgetl("ship")
    assert shipped_record["default_artifact"] == on_disk["default_artifact"]
    assert shipped_record["manifest"]["default_artifact"] == on_disk["default_artifact"]
