"""The bundle's README.md as a Hugging Face model card: YAML front matter that parses (``huggingface_hub.ModelCard``
where installed), a model-index with the measured numbers, no "–" for a measure the run did not take, the
distillation's accuracies from the record distillation writes, and a link to the run's report when shipped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bundle import artifacts, model_files, passing, ship_colours, text_files  # noqa: F401 - fixtures
from test_bundle_embedding import embedder, ship_embedder  # noqa: F401 - a fixture

from edgetl._io import write_json
from edgetl.bundle import verify
from edgetl.bundle.card_metadata import front_matter, license_id

yaml = pytest.importorskip("yaml", reason="parsing the front matter needs PyYAML (installed with huggingface_hub)")

CARD = {"backbone": "hand-written linear", "dataset": "fashion-mnist", "dataset_license": "MIT",
        "weights_license": "Apache-2.0", "test_accuracy": 90.7, "probe_test_accuracy": 82.85,
        "student_test_accuracy": 91.6, "student_without_teacher_test_accuracy": None}


def metadata(readme: str) -> dict:
    """The README's front matter, parsed; it must open the file."""
    assert readme.startswith("---\n"), readme[:80]
    return yaml.safe_load(readme.split("---\n", 2)[1])


def colours_with(model_files, tmp_path: Path, card: dict | None = None, **overrides):  # noqa: F811
    items = artifacts(model_files, onnx_validation=passing(accuracy=97.25, macro_f1=96.5))
    shipped = ship_colours(items, tmp_path, card=card or CARD, **overrides)
    return shipped, (shipped.path / "README.md").read_text()


def test_the_card_opens_with_hugging_face_metadata_of_the_measured_numbers(model_files, tmp_path):  # noqa: F811
    _, readme = colours_with(model_files, tmp_path)
    data = metadata(readme)
    assert data["library_name"] == "onnx" and data["license"] == "apache-2.0"  # the default artifact's format
    assert data["pipeline_tag"] == "image-classification" and data["datasets"] == ["zalando-datasets/fashion_mnist"]
    assert data["tags"] == ["edgetl", "onnx", "openvino", "fp32", "image-classification", "knowledge-distillation"]
    (entry,) = data["model-index"]
    (result,) = entry["results"]
    assert entry["name"] == "colours" and result["task"] == {"type": "image-classification",
                                                              "name": "Image classification"}
    assert result["dataset"] == {"name": "fashion-mnist", "type": "zalando-datasets/fashion_mnist", "split": "test"}
    values = {metric["name"]: (metric["type"], metric["value"]) for metric in result["metrics"]}
    assert values == {
        "Test accuracy % (openvino-fp32, openvino:CPU)": ("accuracy", 100.0),
        "Macro-F1 % (openvino-fp32, openvino:CPU)": ("f1", 100.0),
        "Test accuracy % (onnx-fp32, onnxruntime:CPUExecutionProvider)": ("accuracy", 97.25),
        "Macro-F1 % (onnx-fp32, onnxruntime:CPUExecutionProvider)": ("f1", 96.5),
        "Test accuracy % of the fine-tuned model before export": ("accuracy", 90.7),
        "Test accuracy % of the distilled student before export": ("accuracy", 91.6),
    }
    assert readme.split("---\n", 2)[2].lstrip().startswith("# colours\n")  # the card itself follows


def test_huggingface_hub_reads_the_card_as_a_model_card(model_files, tmp_path):  # noqa: F811
    hub = pytest.importorskip("huggingface_hub", reason="the hub's own parser comes with huggingface_hub")
    _, readme = colours_with(model_files, tmp_path)
    card = hub.ModelCard(readme)  # raises on a model-index it cannot read
    assert card.data.license == "apache-2.0" and card.data.model_name == "colours"
    results = {(r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert ("Test accuracy % of the distilled student before export", 91.6) in results and len(results) == 6
    assert all(r.task_type == "image-classification" and r.dataset_split == "test" for r in card.data.eval_results)
    assert "# colours" in card.text


def test_a_measure_not_taken_is_left_out_not_printed_as_a_dash(model_files, tmp_path):  # noqa: F811
    _, readme = colours_with(model_files, tmp_path)
    assert "- student_test_accuracy: 91.6" in readme and "- test_accuracy: 90.7" in readme
    assert "student_without_teacher" not in readme and ": –" not in readme


def test_the_ship_stage_reads_the_students_accuracy_from_the_distillation_record(model_files, tmp_path):  # noqa: F811
    """The card's distillation fields come from the keys DistillResult writes (the pipeline once asked for
    "test_accuracy", and the card said "student_test_accuracy: –" while the student scored 91.60%)."""
    from edgetl.pipeline.ship import card
    from edgetl.tasks import STUDENT
    from edgetl.train.distill import DistillResult

    result = DistillResult(student="lite0_slim", teacher="lite0", student_test_accuracy=91.6,
                           student_val_accuracy=90.4, teacher_test_accuracy=90.7, relative_accuracy=1.0099,
                           meets_min_relative_accuracy=True, student_params=1_413_386, teacher_params=3_383_818,
                           epochs=5, seconds=973.9, checkpoint="best.safetensors", copied_from_teacher=0)
    write_json(tmp_path / STUDENT / "result.json", {"key": {}, **dataclasses.asdict(result)})
    ctx = SimpleNamespace(
        model_metadata=lambda key: {"backbone": "lite0_slim"}, task=SimpleNamespace(card=lambda ctx, chosen: {}),
        splits=SimpleNamespace(sizes=lambda: {"test": 2000}), origin=SimpleNamespace(card=lambda ctx: {}),
        recipe=SimpleNamespace(distill=SimpleNamespace(enabled=True), model=SimpleNamespace(backbone="lite0")),
        model_dir=lambda key: tmp_path / key)
    fields = card(ctx, [SimpleNamespace(name="student-onnx-fp32", model=STUDENT)])
    assert fields["student_test_accuracy"] == 91.6 and fields["student"] == "lite0_slim"
    assert "student_without_teacher_test_accuracy" not in fields  # no ablation ran

    write_json(tmp_path / STUDENT / "result.json",
               {"key": {}, **dataclasses.asdict(dataclasses.replace(result, baseline_test_accuracy=90.75))})
    fields = card(ctx, [SimpleNamespace(name="student-onnx-fp32", model=STUDENT)])
    assert fields["student_without_teacher_test_accuracy"] == 90.75
    _, readme = colours_with(model_files, tmp_path / "models", card=fields)
    assert "- student_test_accuracy: 91.6" in readme and "- student_without_teacher_test_accuracy: 90.75" in readme
    assert 91.6 in [m["value"] for m in metadata(readme)["model-index"][0]["results"][0]["metrics"]]


def test_a_shipped_report_is_listed_verified_and_linked(model_files, tmp_path):  # noqa: F811
    report = tmp_path / "run" / "report.html"
    report.parent.mkdir()
    report.write_text("<!doctype html><title>report</title>")
    (report.parent / "report.json").write_text(json.dumps({"artifacts": []}))
    shipped, readme = colours_with(model_files, tmp_path / "models",
                                   extra_files={"report.html": report, "report.json": report.parent / "report.json"})
    assert {"report.html", "report.json"} <= set(shipped.manifest["files"])
    assert (shipped.path / "report.html").read_text() == report.read_text() and verify(shipped.archive).ok
    assert "[report.html](report.html)" in readme
    _, without = colours_with(model_files, tmp_path / "plain")
    assert "report.html" not in without


def test_an_embedding_card_has_metadata_but_no_accuracy_index(embedder, tmp_path):  # noqa: F811
    shipped = ship_embedder(embedder, tmp_path, card={"backbone": "word table", "weights_license": "MIT"})
    readme = (shipped.path / "README.md").read_text()
    data = metadata(readme)
    assert data["pipeline_tag"] == "feature-extraction" and data["license"] == "mit"
    assert "model-index" not in data and "datasets" not in data  # no accuracy measured, no known dataset
    assert "Classes" not in readme and "top_k" not in readme


@pytest.mark.parametrize("text", ['a "quoted": value # not a comment', "fp32", "On", "zalando-datasets/x.y",
                                  "C:\\data\\photos", "déjà vu – 🙂", "line\nbreak\u2028and\u0085more",
                                  "- looks like a list", "yes", "1.0", ""])
def test_front_matter_keeps_any_string_as_it_is(text):
    data = {"name": text, "list": [text, {"key": text, "n": 3, "x": 0.25, "flag": False, "none": None}],
            "weird key: #": text, "empty": [], "nested": {"deeper": [1, 2]}}
    lines = front_matter(data)
    assert lines[0] == lines[-1] == "---"
    assert yaml.safe_load("\n".join(lines[1:-1])) == data


@pytest.mark.parametrize("text,expected", [("Apache-2.0", "apache-2.0"), ("BSD-3-Clause (torchvision)", "bsd-3-clause"),
                                           ("MIT (Fashion-MNIST, Zalando Research)", "mit"), ("CC-BY-4.0", "cc-by-4.0"),
                                           ("the source model's own (edgetl did not train it)", "unknown"),
                                           (None, "unknown")])
def test_licence_ids_are_the_hubs(text, expected):
    assert license_id(text) == expected
