"""``run(recipe)``: finetune -> export -> validate -> bench -> ship, each stage also callable alone.

Everything lands in ``runs/<name>/``. A stage whose inputs have not changed is skipped (its
JSON records a key made of the recipe sections and input files it depends on); an interrupted
fine-tune resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._io import read_json, sha256_file, write_json, write_text
from .errors import EdgetlError
from .recipe import Recipe


@dataclass(frozen=True)
class Variant:
    """One deployable form of the model: where it lives, how it is made, what runs it."""

    name: str
    format: str
    runtime: str
    file: str  # the main model file, relative to the variant folder
    make: Callable[["RunContext", Path], Any]


def _make_onnx(ctx: "RunContext", folder: Path):
    from .export import export_onnx

    model, _ = ctx.model()
    return export_onnx(
        model, folder / "model.onnx", input_shape=ctx.preprocess.input_shape, opset=ctx.recipe.export.opset,
        dynamo=ctx.recipe.export.dynamo, metadata=ctx.model_metadata(),
    )


def _make_openvino(ctx: "RunContext", folder: Path):
    from .export import export_openvino

    onnx_file = ctx.variant_dir(VARIANTS["onnx"]) / VARIANTS["onnx"].file
    if not onnx_file.is_file():
        ctx.export_variant(VARIANTS["onnx"])
    return export_openvino(
        onnx_file, folder / "model.xml", compress_to_fp16=ctx.recipe.export.compress_to_fp16,
        metadata=ctx.model_metadata(),
    )


# Registry of exportable variants, keyed by the name used in recipe.export.formats.
VARIANTS: dict[str, Variant] = {
    "onnx": Variant("onnx-fp32", "onnx", "onnxruntime:CPUExecutionProvider", "model.onnx", _make_onnx),
    "openvino": Variant("openvino-fp32", "openvino", "openvino:CPU", "model.xml", _make_openvino),
}
TORCH_VARIANT = "torch-fp32"


@dataclass
class RunContext:
    """What the stages share: the recipe, its run folder and lazily loaded data and model."""

    recipe: Recipe
    progress: bool = True
    log: Callable[[str], None] = print
    _model: Any = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    @property
    def finetune_dir(self) -> Path:
        return self.run_dir / "finetune"

    @cached_property
    def spec(self):
        from .backbones import get_spec

        return get_spec(self.recipe.model.backbone)

    @cached_property
    def preprocess(self):
        return self.spec.preprocess(self.recipe.model.image_size)

    @cached_property
    def splits(self):
        from .data import load_splits

        return load_splits(self.recipe.data, self.preprocess)

    def model(self):
        """The fine-tuned torch model and its checkpoint metadata."""
        if self._model is None:
            from .finetune import load_checkpoint

            self._model = load_checkpoint(self.finetune_dir)
        return self._model

    def checkpoint_hash(self) -> str:
        from .finetune import CHECKPOINT_FILE

        path = self.finetune_dir / CHECKPOINT_FILE
        if not path.is_file():
            raise EdgetlError(f"no fine-tuned checkpoint in {self.finetune_dir}; run `edgetl finetune` first")
        return sha256_file(path)[:16]

    def model_metadata(self) -> dict[str, Any]:
        _, meta = self.model()
        return {"labels": meta["classes"], "preprocess": self.preprocess.to_dict(),
                "backbone": self.recipe.model.backbone, "producer": "edgetl"}

    def variant_dir(self, variant: Variant) -> Path:
        return self.run_dir / "artifacts" / variant.name

    def variants(self) -> list[Variant]:
        unknown = [f for f in self.recipe.export.formats if f not in VARIANTS]
        if unknown:
            raise EdgetlError(f"export.formats: unknown format {unknown[0]!r}; choose from {sorted(VARIANTS)}")
        return [VARIANTS[f] for f in self.recipe.export.formats]

    def export_variant(self, variant: Variant) -> dict[str, Any]:
        folder = self.variant_dir(variant)
        key = {"checkpoint": self.checkpoint_hash(), "export": self.recipe.section_hash("export")}
        record = folder / "export.json"
        if _is_fresh(record, key) and (folder / variant.file).is_file():
            return read_json(record)
        self.log(f"export: {variant.name}")
        data = {"key": key, "variant": variant.name, **variant.make(self, folder).to_dict()}
        write_json(record, data)
        return data


def _is_fresh(record: Path, key: dict[str, Any]) -> bool:
    try:
        return read_json(record).get("key") == key
    except (FileNotFoundError, json.JSONDecodeError):
        return False


# -- stages ---------------------------------------------------------------------------------------


def finetune_stage(ctx: RunContext):
    from .finetune import finetune

    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    write_text(ctx.run_dir / "recipe.toml", ctx.recipe.to_toml())
    sizes = ctx.splits.sizes()
    ctx.log(f"data: {ctx.recipe.data.source} {sizes} at {ctx.preprocess.image_size}px, {len(ctx.splits.classes)} classes")
    result = finetune(ctx.recipe, ctx.splits, ctx.finetune_dir, progress=ctx.progress)
    ctx._model = None
    return result


def export_stage(ctx: RunContext) -> list[dict[str, Any]]:
    return [ctx.export_variant(variant) for variant in ctx.variants()]


def reference_logits(ctx: RunContext) -> np.ndarray:
    """The FP32 torch model's logits on the test split: the reference every artifact is held to."""
    from .runners import open_runner
    from .validate import predict_logits

    path = ctx.run_dir / "reference" / "test_logits.npy"
    record = path.with_suffix(".json")
    key = {"checkpoint": ctx.checkpoint_hash(), "data": ctx.recipe.section_hash("data", "model")}
    if _is_fresh(record, key) and path.is_file():
        return np.load(path)
    model, _ = ctx.model()
    logits = predict_logits(open_runner(model, "torch:cpu"), ctx.splits.test, ctx.preprocess,
                            ctx.recipe.validate.batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp.npy"), "wb") as handle:
        np.save(handle, logits)
    path.with_suffix(".tmp.npy").replace(path)
    write_json(record, {"key": key, "shape": list(logits.shape)})
    return logits


def _open_variant(ctx: RunContext, name: str, threads: int):
    from .runners import open_runner

    if name == TORCH_VARIANT:
        model, _ = ctx.model()
        return open_runner(model, "torch:cpu", threads=threads), None
    variant = next(v for v in VARIANTS.values() if v.name == name)
    path = ctx.variant_dir(variant) / variant.file
    return open_runner(path, variant.runtime, threads=threads), path


def _variant_names(ctx: RunContext) -> list[str]:
    return [TORCH_VARIANT] + [v.name for v in ctx.variants()]


def validate_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Run the shared validation check on every variant; write validation.json beside each."""
    from .validate import validate

    export_stage(ctx)
    reference = reference_logits(ctx)
    reports = {}
    for name in _variant_names(ctx):
        folder = ctx.run_dir / "artifacts" / name
        record = folder / "validation.json"
        key = {"checkpoint": ctx.checkpoint_hash(), "recipe": ctx.recipe.section_hash("data", "model", "export", "validate")}
        if _is_fresh(record, key):
            reports[name] = read_json(record)["report"]
            continue
        runner, _ = _open_variant(ctx, name, ctx.recipe.bench.threads)
        try:
            report = validate(runner, ctx.splits.test, ctx.preprocess, reference=reference,
                              gate=ctx.recipe.validate.gate, batch_size=ctx.recipe.validate.batch_size, artifact=name)
        finally:
            runner.close()
        ctx.log(f"validate: {report.summary()}")
        write_json(record, {"key": key, "report": report.to_dict()})
        reports[name] = report.to_dict()
    return reports


def bench_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Local CPU latency of every variant at the recipe's batch sizes and threads."""
    from .bench import benchmark

    export_stage(ctx)
    results = {}
    for name in _variant_names(ctx):
        record = ctx.run_dir / "artifacts" / name / "benchmark.json"
        key = {"checkpoint": ctx.checkpoint_hash(), "recipe": ctx.recipe.section_hash("model", "export", "bench")}
        if _is_fresh(record, key):
            results[name] = read_json(record)["result"]
            continue
        ctx.log(f"bench: {name}")
        runner, path = _open_variant(ctx, name, ctx.recipe.bench.threads)
        try:
            result = benchmark(runner, batch_sizes=ctx.recipe.bench.batch_sizes, config=ctx.recipe.bench,
                               input_shape=ctx.preprocess.input_shape, model_path=path)
        finally:
            runner.close()
        write_json(record, {"key": key, "result": result.to_dict()})
        results[name] = result.to_dict()
    return results


def ship_stage(ctx: RunContext, validation: dict | None = None, benchmarks: dict | None = None):
    """Bundle every exported variant that passed validation into models/<name>/ and a .tar.gz."""
    from .bundle import Artifact, ship

    validation = validation or validate_stage(ctx)
    benchmarks = benchmarks or bench_stage(ctx)
    _, meta = ctx.model()
    artifacts = []
    for variant in ctx.variants():
        if variant.format not in ctx.recipe.ship.formats:
            continue
        folder = ctx.variant_dir(variant)
        files = [folder / f for f in read_json(folder / "export.json")["files"]]
        artifacts.append(Artifact(name=variant.name, format=variant.format, files=files, runtime=variant.runtime,
                                  validation=validation[variant.name], benchmark=benchmarks.get(variant.name)))
    failed = [a for a in artifacts if not a.validation["passed"]]
    for artifact in failed:
        ctx.log(f"ship: {artifact.name} left out: " + "; ".join(artifact.validation["reasons"]))
    finetuned = read_json(ctx.finetune_dir / "result.json")
    card = {
        "backbone": ctx.recipe.model.backbone, "weights_license": ctx.spec.license,
        "dataset": ctx.recipe.data.source if ctx.recipe.data.source != "folder" else ctx.recipe.data.path,
        "dataset_license": "MIT (Fashion-MNIST, Zalando Research)" if ctx.recipe.data.source == "fashion-mnist" else "",
        "data_sizes": ctx.splits.sizes(),
        "test_accuracy": finetuned.get("test_accuracy"), "probe_test_accuracy": finetuned.get("probe_test_accuracy"),
    }
    shipped = ship([a for a in artifacts if a.validation["passed"]] or artifacts,
                   name=ctx.recipe.ship.name or ctx.recipe.run.name, output_dir=Path(ctx.recipe.ship.output_dir),
                   labels=meta["classes"], preprocess=ctx.preprocess, recipe_toml=ctx.recipe.to_toml(),
                   recipe_hash=ctx.recipe.section_hash(), card=card)
    return shipped


def summary_rows(validation: dict[str, dict], benchmarks: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per variant and batch size: accuracy, agreement, latency, verdict."""
    rows = []
    for name, report in validation.items():
        bench = benchmarks.get(name) or {}
        for stats in bench.get("stats", []) or [{}]:
            rows.append({
                "variant": name, "runtime": report["runtime"], "batch": stats.get("batch_size"),
                "accuracy": report["accuracy"], "agreement": report["agreement"],
                "median_ms": stats.get("median_ms"), "p90_ms": stats.get("p90_ms"), "p99_ms": stats.get("p99_ms"),
                "throughput": stats.get("throughput"), "size_mb": (bench.get("model_size_bytes") or 0) / 1e6,
                "spread": stats.get("median_rel_ci"), "verdict": "pass" if report["passed"] else "FAIL",
            })
    return rows


def run(recipe: Recipe, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole pipeline on one recipe; returns the run summary (also written to summary.json)."""
    start = time.perf_counter()
    ctx = RunContext(recipe, progress=progress, log=log)
    finetuned = finetune_stage(ctx)
    export_stage(ctx)
    validation = validate_stage(ctx)
    benchmarks = bench_stage(ctx)
    shipped = ship_stage(ctx, validation, benchmarks)
    summary = {
        "run": recipe.run.name,
        "probe_test_accuracy": finetuned.probe_test_accuracy,
        "test_accuracy": finetuned.test_accuracy,
        "variants": summary_rows(validation, benchmarks),
        "bundle": str(shipped.path),
        "archive": str(shipped.archive),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(ctx.run_dir / "summary.json", summary)
    return summary
