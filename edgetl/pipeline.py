"""``run(recipe)``: finetune -> distill -> export -> quantize -> validate -> bench -> select -> ship.

Every stage is also callable alone. Everything lands in ``runs/<name>/``: ``finetune/`` (the
teacher), ``distill/`` (the student), ``artifacts/<artifact>/`` (one folder per deployable variant,
with its export, validation and benchmark records) and ``summary.json``. A stage whose inputs have
not changed is skipped: its JSON record holds a key made of the recipe sections and input files it
depends on. An interrupted fine-tune or distillation resumes from its last checkpoint.

Artifacts are named ``[student-]<variant>``: ``onnx-fp32`` is the fine-tuned model exported to
ONNX, ``student-openvino-int8`` the distilled student quantized by NNCF.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ._io import read_json, sha256_file, write_json, write_text
from .errors import EdgetlError, QuantizationSkipped, RecipeError
from .recipe import Recipe

TEACHER, STUDENT = "teacher", "student"


@dataclass(frozen=True)
class Variant:
    """One FP32 export format: how it is made and what runs it."""

    name: str
    format: str
    runtime: str
    file: str  # the main model file, relative to the artifact folder
    make: Callable[["RunContext", str, Path], Any]  # (ctx, model key, folder) -> ExportInfo


def _make_onnx(ctx: "RunContext", model_key: str, folder: Path):
    from .export import export_onnx

    model, _ = ctx.model(model_key)
    return export_onnx(
        model, folder / "model.onnx", input_shape=ctx.preprocess_of(model_key).input_shape, opset=ctx.recipe.export.opset,
        dynamo=ctx.recipe.export.dynamo, metadata=ctx.model_metadata(model_key),
    )


def _make_openvino(ctx: "RunContext", model_key: str, folder: Path):
    from .export import export_openvino

    return export_openvino(
        ctx.artifact_file(ctx.fp32_artifact(model_key, "onnx")), folder / "model.xml",
        compress_to_fp16=ctx.recipe.export.compress_to_fp16, metadata=ctx.model_metadata(model_key),
    )


# Registry of FP32 export formats, keyed by the names used in recipe.export.formats.
VARIANTS: dict[str, Variant] = {
    "onnx": Variant("onnx-fp32", "onnx", "onnxruntime:CPUExecutionProvider", "model.onnx", _make_onnx),
    "openvino": Variant("openvino-fp32", "openvino", "openvino:CPU", "model.xml", _make_openvino),
}
TORCH_VARIANT = "torch-fp32"
QAT, QAT_NAME = "qat", "openvino-int8-qat"  # made by qat_stage, only when post-training INT8 misses the gate


@dataclass(frozen=True)
class Planned:
    """One artifact the run produces: which model it comes from and how it is made and run."""

    name: str  # folder under artifacts/, e.g. "student-onnx-int8-static"
    model: str  # TEACHER or STUDENT
    kind: str  # "torch", an export format ("onnx", "openvino") or a quantization method
    format: str  # "torch", "onnx" or "openvino"
    runtime: str
    file: str | None  # main model file inside the artifact folder; None for torch

    @property
    def shippable(self) -> bool:
        return self.format != "torch"


def _prefix(model_key: str) -> str:
    return "" if model_key == TEACHER else f"{model_key}-"


@dataclass
class RunContext:
    """What the stages share: the recipe, its run folder and lazily loaded data and models."""

    recipe: Recipe
    progress: bool = True
    log: Callable[[str], None] = print
    _models: dict[str, Any] = field(default_factory=dict, repr=False)
    _references: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    @property
    def finetune_dir(self) -> Path:
        return self.run_dir / "finetune"

    @property
    def distill_dir(self) -> Path:
        return self.run_dir / "distill"

    def model_dir(self, model_key: str) -> Path:
        return self.finetune_dir if model_key == TEACHER else self.distill_dir

    @cached_property
    def spec(self):
        from .backbones import get_spec

        return get_spec(self.recipe.model.backbone)

    @cached_property
    def preprocess(self):
        return self.spec.preprocess(self.recipe.model.image_size)

    def preprocess_of(self, model_key: str = TEACHER):
        """The input normalisation of one trained model (a student may differ from the teacher)."""
        if model_key == TEACHER:
            return self.preprocess
        from .backbones import get_spec

        return get_spec(self.model(model_key)[1]["backbone"]).preprocess(self.recipe.model.image_size)

    @cached_property
    def splits(self):
        from .data import load_splits

        return load_splits(self.recipe.data, self.preprocess)

    # -- models ---------------------------------------------------------------------------------

    def model_keys(self) -> list[str]:
        return [TEACHER, STUDENT] if self.recipe.distill.enabled else [TEACHER]

    def model(self, model_key: str = TEACHER):
        """A trained torch model (eval mode) and its checkpoint metadata."""
        if model_key not in self._models:
            from .finetune import load_checkpoint

            self.checkpoint_hash(model_key)  # a clear error when the stage has not run
            self._models[model_key] = load_checkpoint(self.model_dir(model_key))
        return self._models[model_key]

    def checkpoint_hash(self, model_key: str = TEACHER) -> str:
        from .finetune import CHECKPOINT_FILE

        path = self.model_dir(model_key) / CHECKPOINT_FILE
        if not path.is_file():
            command = "finetune" if model_key == TEACHER else "distill"
            raise EdgetlError(f"no {model_key} checkpoint in {path.parent}; run `edgetl {command}` first")
        return sha256_file(path)[:16]

    def forget_model(self, model_key: str) -> None:
        self._models.pop(model_key, None)
        self._references.pop(model_key, None)

    def model_metadata(self, model_key: str = TEACHER) -> dict[str, Any]:
        _, meta = self.model(model_key)
        return {"labels": meta["classes"], "preprocess": self.preprocess_of(model_key).to_dict(),
                "backbone": meta.get("backbone", self.recipe.model.backbone), "producer": "edgetl"}

    # -- artifacts ------------------------------------------------------------------------------

    def plan(self) -> list[Planned]:
        """Every artifact of this run, in table order: per model, torch, FP32 exports, quantized."""
        from .quantize import QUANTIZERS

        unknown = [f for f in self.recipe.export.formats if f not in VARIANTS]
        if unknown:
            raise EdgetlError(f"export.formats: unknown format {unknown[0]!r}; choose from {sorted(VARIANTS)}")
        unknown = [m for m in self.recipe.quantize.methods if m not in QUANTIZERS]
        if unknown:
            raise EdgetlError(f"quantize.methods: unknown method {unknown[0]!r}; choose from {sorted(QUANTIZERS)}")
        planned = []
        for key in self.model_keys():
            prefix = _prefix(key)
            planned.append(Planned(prefix + TORCH_VARIANT, key, "torch", "torch", "torch:cpu", None))
            for fmt in self.recipe.export.formats:
                v = VARIANTS[fmt]
                planned.append(Planned(prefix + v.name, key, fmt, v.format, v.runtime, v.file))
            if key in self.recipe.quantize.models:
                for method in self.recipe.quantize.methods:
                    q = QUANTIZERS[method]
                    planned.append(Planned(prefix + q.name, key, method, q.format, q.runtime, q.file))
                if self.recipe.quantize.qat:
                    planned.append(Planned(prefix + QAT_NAME, key, QAT, "openvino", "openvino:CPU", "model.xml"))
        return planned

    def fp32_artifact(self, model_key: str, fmt: str) -> Planned:
        v = VARIANTS[fmt]
        return Planned(_prefix(model_key) + v.name, model_key, fmt, v.format, v.runtime, v.file)

    def artifact_dir(self, artifact: Planned | str) -> Path:
        return self.run_dir / "artifacts" / (artifact if isinstance(artifact, str) else artifact.name)

    def artifact_file(self, artifact: Planned) -> Path:
        """The artifact's model file, made first if needed (an OpenVINO export needs the ONNX one)."""
        self.make_artifact(artifact)
        return self.artifact_dir(artifact) / artifact.file

    def make_artifact(self, artifact: Planned) -> dict[str, Any] | None:
        """Export or quantize one artifact unless its record is fresh; None when it was skipped."""
        if artifact.format == "torch":
            return None
        folder = self.artifact_dir(artifact)
        record, skipped = folder / "export.json", folder / "skipped.json"
        quantized = artifact.kind not in VARIANTS
        key = {"checkpoint": self.checkpoint_hash(artifact.model), "export": self.recipe.section_hash("export")}
        if quantized:
            key["quantize"] = self.recipe.section_hash("quantize")
        if _is_fresh(record, key) and (folder / artifact.file).is_file():
            return read_json(record)
        if _is_fresh(skipped, key) or artifact.kind == QAT:  # QAT is trained by qat_stage, never here
            return None
        if quantized:
            info = self._quantize(artifact, folder, key)
            if info is None:
                return None
        else:
            self.log(f"export: {artifact.name}")
            info = VARIANTS[artifact.kind].make(self, artifact.model, folder)
        data = {"key": key, "variant": artifact.name, **info.to_dict()}
        write_json(record, data)
        skipped.unlink(missing_ok=True)
        return data

    def _quantize(self, artifact: Planned, folder: Path, key: dict[str, Any]):
        from .quantize import QUANTIZERS, ValidationSet, quantize_file

        quantizer = QUANTIZERS[artifact.kind]
        source = self.artifact_file(self.fp32_artifact(artifact.model, quantizer.source))
        self.log(f"quantize: {artifact.name}")
        config, preprocess = self.recipe.quantize, self.preprocess_of(artifact.model)
        try:
            return quantize_file(
                source, artifact.kind, folder, config=config,
                calibration=self.calibration(preprocess) if quantizer.needs_calibration else None,
                validation=ValidationSet(self.splits.val, preprocess) if quantizer.needs_validation else None,
            )
        except QuantizationSkipped as exc:
            self.log(f"quantize: {artifact.name} skipped: {exc}")
            write_json(folder / "skipped.json", {"key": key, "variant": artifact.name, "reason": str(exc)})
            return None

    def calibration(self, preprocess):
        """``quantize.calibration_size`` training images, normalized (a text context gives token batches)."""
        from .quantize import calibration_images

        return calibration_images(self.splits.train, preprocess, self.recipe.quantize.calibration_size,
                                  seed=self.recipe.run.seed)

    def open(self, artifact: Planned, threads: int):
        from .runners import open_runner

        if artifact.format == "torch":
            model, _ = self.model(artifact.model)
            return open_runner(model, "torch:cpu", threads=threads), None
        path = self.artifact_dir(artifact) / artifact.file
        return open_runner(path, artifact.runtime, threads=threads), path

    def made(self, artifact: Planned) -> bool:
        return artifact.format == "torch" or (self.artifact_dir(artifact) / "export.json").is_file()

    def skip_reason(self, artifact: Planned | str) -> str | None:
        record = self.artifact_dir(artifact) / "skipped.json"
        return read_json(record)["reason"] if record.is_file() else None

    # -- references -----------------------------------------------------------------------------

    def reference_logits(self, model_key: str = TEACHER) -> np.ndarray:
        """A torch FP32 model's logits on the test split: what its exports are held to."""
        if model_key in self._references:
            return self._references[model_key]
        from .runners import open_runner
        from .validate import predict_logits

        path = self.run_dir / "reference" / f"{model_key}_test_logits.npy"
        record = path.with_suffix(".json")
        key = {"checkpoint": self.checkpoint_hash(model_key), "data": self.recipe.section_hash("data", "model")}
        if _is_fresh(record, key) and path.is_file():
            logits = np.load(path)
        else:
            model, _ = self.model(model_key)
            logits = predict_logits(open_runner(model, "torch:cpu"), self.splits.test, self.preprocess_of(model_key),
                                    self.recipe.validate.batch_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            with open(tmp, "wb") as handle:
                np.save(handle, logits)
            tmp.replace(path)
            write_json(record, {"key": key, "shape": list(logits.shape)})
        self._references[model_key] = logits
        return logits


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
    ctx.forget_model(TEACHER)
    return result


def distill_stage(ctx: RunContext):
    """Knowledge distillation of the fine-tuned teacher into the recipe's student; None when disabled."""
    if not ctx.recipe.distill.enabled:
        return None
    from .distill import distill

    teacher, _ = ctx.model(TEACHER)
    result = distill(ctx.recipe, ctx.splits, teacher, ctx.distill_dir, progress=ctx.progress)
    ctx.forget_model(STUDENT)
    return result


def export_stage(ctx: RunContext) -> list[dict[str, Any]]:
    """FP32 ONNX / OpenVINO exports of every model."""
    return [ctx.make_artifact(a) for a in ctx.plan() if a.kind in VARIANTS]


def quantize_stage(ctx: RunContext) -> dict[str, dict[str, Any] | None]:
    """Every quantization method on every model it applies to, then QAT where post-training INT8 missed the
    gate (``quantize.qat``); None marks a variant that was skipped or not needed."""
    made = {a.name: ctx.make_artifact(a) for a in ctx.plan() if a.format != "torch" and a.kind not in VARIANTS}
    made.update(qat_stage(ctx))
    return made


def qat_stage(ctx: RunContext) -> dict[str, dict[str, Any] | None]:
    """Quantization-aware training for each model whose OpenVINO post-training INT8 variants all fail the gate.

    QAT makes OpenVINO IR, so it stands in for NNCF post-training quantization: when one of those passes
    (or none was tried), QAT is not needed and the artifact is recorded as skipped with the reason.
    """
    from .quantize import QUANTIZERS, qat_finetune

    results: dict[str, dict[str, Any] | None] = {}
    for artifact in [a for a in ctx.plan() if a.kind == QAT]:
        folder = ctx.artifact_dir(artifact)
        record, skipped = folder / "export.json", folder / "skipped.json"
        key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
               "recipe": ctx.recipe.section_hash("data", "model", "quantize", "validate")}
        if _is_fresh(record, key) and (folder / artifact.file).is_file():
            results[artifact.name] = read_json(record)
            continue
        ptq = [a for a in ctx.plan() if a.model == artifact.model and a.kind in QUANTIZERS
               and a.format == "openvino" and "int8" in a.kind and ctx.made(a)]
        verdicts = {a.name: validate_artifact(ctx, a)["passed"] for a in ptq}
        if not ptq or any(verdicts.values()):
            reason = (f"not needed: {next(n for n, ok in verdicts.items() if ok)} passed the gate" if ptq else
                      "no OpenVINO post-training INT8 variant to improve on (add openvino-int8 to quantize.methods)")
            write_json(skipped, {"key": key, "variant": artifact.name, "reason": reason})
            record.unlink(missing_ok=True)  # a QAT model from an earlier recipe is not this run's artifact
            results[artifact.name] = None
            continue
        ctx.log(f"quantize: {artifact.name}: post-training INT8 missed the gate "
                f"({', '.join(verdicts)}), quantization-aware fine-tune for {ctx.recipe.quantize.qat_epochs} epoch(s)")
        model, _ = ctx.model(artifact.model)
        info = qat_finetune(model, ctx.splits, ctx.preprocess_of(artifact.model), ctx.recipe.quantize, folder,
                            batch_size=ctx.recipe.finetune.batch_size,
                            metadata={k: json.dumps(v) if not isinstance(v, str) else v
                                      for k, v in ctx.model_metadata(artifact.model).items()},
                            log=ctx.log)
        data = {"key": key, "variant": artifact.name, **info.to_dict()}
        write_json(record, data)
        skipped.unlink(missing_ok=True)
        results[artifact.name] = data
    return results


def _made(ctx: RunContext) -> list[Planned]:
    for artifact in ctx.plan():
        ctx.make_artifact(artifact)
    return [a for a in ctx.plan() if ctx.made(a)]


def validate_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The shared validation check on every artifact, against the FP32 torch model it came from.

    A student's artifacts are also held to the teacher: their accuracy must keep
    ``distill.min_relative_accuracy`` of the teacher's, and their agreement with it is recorded.
    """
    return {artifact.name: validate_artifact(ctx, artifact) for artifact in _made(ctx)}


def validate_artifact(ctx: RunContext, artifact: Planned) -> dict[str, Any]:
    """The shared validation check on one made artifact; its record is reused while inputs are unchanged."""
    from .validate import predict_logits, validate

    record = ctx.artifact_dir(artifact) / "validation.json"
    key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
           "teacher": ctx.checkpoint_hash(TEACHER),
           "recipe": ctx.recipe.section_hash("data", "model", "export", "quantize", "validate", "distill")}
    if _is_fresh(record, key):
        return read_json(record)["report"]
    runner, _ = ctx.open(artifact, ctx.recipe.bench.threads)
    try:
        preprocess = ctx.preprocess_of(artifact.model)
        logits = predict_logits(runner, ctx.splits.test, preprocess, ctx.recipe.validate.batch_size)
        report = validate(runner, ctx.splits.test, preprocess, reference=ctx.reference_logits(artifact.model),
                          gate=ctx.recipe.validate.gate, artifact=artifact.name, logits=logits)
    finally:
        runner.close()
    data = report.to_dict()
    data.update(_against_teacher(ctx, artifact, logits, report))
    ctx.log("validate: " + report.summary() if data["passed"] else
            f"validate: {artifact.name} FAIL: " + "; ".join(data["reasons"]))
    write_json(record, {"key": key, "report": data})
    return data


def _against_teacher(ctx: RunContext, artifact: Planned, logits: np.ndarray, report) -> dict[str, Any]:
    """Teacher agreement for every artifact; for a student's, the relative-accuracy verdict too."""
    teacher = ctx.reference_logits(TEACHER)
    teacher_accuracy = float((teacher.argmax(1) == ctx.splits.test.labels).mean() * 100)
    extra: dict[str, Any] = {
        "model": artifact.model,
        "teacher_agreement": float((logits.argmax(1) == teacher.argmax(1)).mean()),
        "teacher_accuracy": teacher_accuracy,
        "relative_accuracy": report.accuracy / teacher_accuracy if teacher_accuracy else None,
    }
    if artifact.model != TEACHER:
        needed = ctx.recipe.distill.min_relative_accuracy
        if extra["relative_accuracy"] is not None and extra["relative_accuracy"] < needed:
            extra["passed"] = False
            extra["reasons"] = list(report.reasons) + [
                f"keeps {extra['relative_accuracy']:.1%} of the teacher's {teacher_accuracy:.2f}% accuracy "
                f"< {needed:.0%} required (distill.min_relative_accuracy)"]
    return extra


def bench_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Local CPU latency of every artifact at the recipe's batch sizes and threads."""
    from .bench import benchmark

    results = {}
    for artifact in _made(ctx):
        record = ctx.artifact_dir(artifact) / "benchmark.json"
        key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
               "recipe": ctx.recipe.section_hash("model", "export", "quantize", "bench")}
        if _is_fresh(record, key):
            results[artifact.name] = read_json(record)["result"]
            continue
        ctx.log(f"bench: {artifact.name}")
        runner, path = ctx.open(artifact, ctx.recipe.bench.threads)
        try:
            result = benchmark(runner, batch_sizes=ctx.recipe.bench.batch_sizes, config=ctx.recipe.bench,
                               input_shape=ctx.preprocess_of(artifact.model).input_shape, model_path=path)
        finally:
            runner.close()
        write_json(record, {"key": key, "result": result.to_dict()})
        results[artifact.name] = result.to_dict()
    return results


# -- selection ------------------------------------------------------------------------------------


def _latency(bench: dict[str, Any] | None) -> tuple[int, float] | None:
    """(batch, median ms) at the smallest batch size measured."""
    stats = [s for s in (bench or {}).get("stats", []) if s.get("median_ms")]
    if not stats:
        return None
    first = min(stats, key=lambda s: s["batch_size"])
    return first["batch_size"], first["median_ms"]


def select(ctx: RunContext, validation: dict[str, dict], benchmarks: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Pick what ships, and say why every other artifact lost.

    The overall fastest passing artifact wins and becomes the bundle's default; the bundle ships
    one model (the winner's), so with it goes the fastest passing artifact of each other shipped
    format from that same model. Returns ``{artifact: {"status": "shipped" | "lost" | "skipped" |
    "reference", "reason": ..., "default": bool}}``.
    """
    decisions: dict[str, dict[str, Any]] = {}
    candidates = []
    for artifact in ctx.plan():
        report = validation.get(artifact.name)
        if report is None:
            decisions[artifact.name] = {"status": "skipped", "reason": ctx.skip_reason(artifact) or "not made"}
        elif not artifact.shippable:
            decisions[artifact.name] = {"status": "reference", "reason": "torch model: the reference, not shipped"}
        elif artifact.format not in ctx.recipe.ship.formats:
            decisions[artifact.name] = {"status": "lost", "reason": f"format {artifact.format} not in ship.formats"}
        elif not report["passed"]:
            decisions[artifact.name] = {"status": "lost", "reason": "failed the gate: " + "; ".join(report["reasons"])}
        elif _latency(benchmarks.get(artifact.name)) is None:
            decisions[artifact.name] = {"status": "lost", "reason": "not benchmarked"}
        else:
            candidates.append(artifact)
    if not candidates:
        return decisions
    by_speed = sorted(candidates, key=lambda a: _latency(benchmarks[a.name])[1])
    fastest = by_speed[0]
    winners: dict[str, Planned] = {}
    for artifact in by_speed:
        if artifact.model == fastest.model:
            winners.setdefault(artifact.format, artifact)
    for artifact in by_speed:
        batch, ms = _latency(benchmarks[artifact.name])
        best = winners.get(artifact.format, fastest)
        best_ms = _latency(benchmarks[best.name])[1]
        if best is artifact:
            decisions[artifact.name] = {
                "status": "shipped", "default": artifact is fastest,
                "reason": f"fastest passing{'' if artifact is fastest else ' ' + artifact.format} artifact "
                          f"({ms:.3g} ms at batch {batch})"}
        elif artifact.model != fastest.model:
            decisions[artifact.name] = {
                "status": "lost", "reason": f"{artifact.model} model: the bundle ships the {fastest.model}, whose "
                f"{fastest.name} is faster ({best_ms:.3g} vs {ms:.3g} ms at batch {batch})"}
        else:
            decisions[artifact.name] = {"status": "lost", "reason": f"slower: {ms:.3g} ms vs {best_ms:.3g} ms for "
                                        f"{best.name} at batch {batch} ({ms / best_ms:.2f}×)"}
    return decisions


def ship_stage(ctx: RunContext, validation: dict | None = None, benchmarks: dict | None = None,
               decisions: dict | None = None):
    """Bundle what ``select`` chose into models/<name>/ and a .tar.gz, with a validation slice for devices."""
    from .bundle import Artifact, ship

    validation = validation or validate_stage(ctx)
    benchmarks = benchmarks or bench_stage(ctx)
    decisions = decisions or select(ctx, validation, benchmarks)
    chosen, default = shipped_artifacts(ctx, decisions)
    artifacts = []
    for artifact in chosen:
        folder = ctx.artifact_dir(artifact)
        files = [folder / f for f in read_json(folder / "export.json")["files"]]
        artifacts.append(Artifact(name=artifact.name, format=artifact.format, files=files, runtime=artifact.runtime,
                                  validation=validation[artifact.name], benchmark=benchmarks.get(artifact.name)))
    model_key = chosen[0].model
    return ship(artifacts, name=ctx.recipe.ship.name or ctx.recipe.run.name, output_dir=Path(ctx.recipe.ship.output_dir),
                labels=ctx.model(TEACHER)[1]["classes"], preprocess=ctx.preprocess_of(model_key), recipe_toml=ctx.recipe.to_toml(),
                recipe_hash=ctx.recipe.section_hash(), card=_card(ctx, chosen), default=default,
                validation_slice=validation_slice(ctx, model_key))


def shipped_artifacts(ctx: RunContext, decisions: dict[str, dict]) -> tuple[list[Planned], str]:
    """The artifacts ``select`` shipped and the default one's name, logging why each other one was left out;
    a BundleError with every failure when nothing passed."""
    from .errors import BundleError

    chosen = [a for a in ctx.plan() if decisions[a.name]["status"] == "shipped"]
    if not chosen:
        failed = [f"{name}: {d['reason']}" for name, d in decisions.items() if d["status"] == "lost"]
        raise BundleError("nothing to ship: no artifact passed validation (" + "; ".join(failed) +
                          "); loosen validate.gate or fix the failing variants")
    for name, decision in decisions.items():
        if decision["status"] in ("lost", "skipped"):
            ctx.log(f"ship: {name} left out: {decision['reason']}")
    return chosen, next(a.name for a in chosen if decisions[a.name].get("default"))


def validation_slice(ctx: RunContext, model_key: str):
    """``ship.validation_slice`` test samples (images, or tokenized texts) with the shipped model's FP32 outputs,
    which each target device is held to; None when the recipe ships none."""
    from .bundle import ValidationSlice

    if not ctx.recipe.ship.validation_slice:
        return None
    return ValidationSlice.from_split(ctx.splits.test, ctx.preprocess_of(model_key), ctx.reference_logits(model_key),
                                      size=ctx.recipe.ship.validation_slice, seed=ctx.recipe.run.seed,
                                      reference=_prefix(model_key) + TORCH_VARIANT)


def _card(ctx: RunContext, chosen: list[Planned]) -> dict[str, Any]:
    finetuned = read_json(ctx.finetune_dir / "result.json")
    source = ctx.recipe.data.source
    card = {
        "backbone": ", ".join(sorted({ctx.model_metadata(a.model)["backbone"] for a in chosen})),
        "weights_license": ctx.spec.license,
        "dataset": source if source != "folder" else ctx.recipe.data.path,
        "dataset_license": "MIT (Fashion-MNIST, Zalando Research)" if source == "fashion-mnist" else "",
        "data_sizes": ctx.splits.sizes(),
        "test_accuracy": finetuned.get("test_accuracy"), "probe_test_accuracy": finetuned.get("probe_test_accuracy"),
    }
    if any(a.model == STUDENT for a in chosen):
        distilled = read_json(ctx.distill_dir / "result.json")
        card.update({"teacher_backbone": ctx.recipe.model.backbone,
                     "student_test_accuracy": distilled.get("test_accuracy"),
                     "student_without_teacher_test_accuracy": distilled.get("baseline_test_accuracy")})
    return card


# -- summary --------------------------------------------------------------------------------------


def summary_rows(validation: dict[str, dict], benchmarks: dict[str, dict],
                 decisions: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """One row per artifact and batch size: accuracy, agreement, latency, verdict, and the selection."""
    rows = []
    for name, report in validation.items():
        bench = benchmarks.get(name) or {}
        torch_ms = {s["batch_size"]: s["median_ms"] for s in (benchmarks.get(_torch_of(name)) or {}).get("stats", [])}
        for stats in bench.get("stats", []) or [{}]:
            batch = stats.get("batch_size")
            row = {
                "variant": name, "runtime": report["runtime"], "batch": batch,
                "accuracy": report["accuracy"], "agreement": report["agreement"],
                "teacher_agreement": report.get("teacher_agreement"),
                "median_ms": stats.get("median_ms"), "p90_ms": stats.get("p90_ms"), "p99_ms": stats.get("p99_ms"),
                "throughput": stats.get("throughput"),
                "size_mb": bench["model_size_bytes"] / 1e6 if bench.get("model_size_bytes") else None,
                "median_rel_ci": stats.get("median_rel_ci"),
                "speedup": torch_ms[batch] / stats["median_ms"] if batch in torch_ms and stats.get("median_ms") else None,
                "verdict": "pass" if report["passed"] else "FAIL",
            }
            if decisions:
                row["selected"] = decisions.get(name, {}).get("status")
            rows.append(row)
    return rows


def _torch_of(name: str) -> str:
    return ("student-" if name.startswith("student-") else "") + TORCH_VARIANT


def distill_summary(result) -> dict[str, Any] | None:
    if result is None:
        return None
    from dataclasses import asdict

    return {k: v for k, v in asdict(result).items() if not k.endswith("history")}


# model.kind -> the module with that kind's stages: the same names as this module's (Context, run, finetune_stage,
# distill_stage, export_stage, quantize_stage, validate_stage, bench_stage, select, summary_rows, ship_stage).
STAGES: dict[str, str] = {"image": __name__, "text": "edgetl.text.pipeline"}


def stages_for(recipe: Recipe) -> ModuleType:
    """The stage module for ``recipe.model.kind``; a RecipeError names the known kinds."""
    kind = recipe.model.kind
    if kind not in STAGES:
        raise RecipeError(f"model.kind {kind!r} is not known; use one of {', '.join(map(repr, STAGES))}")
    return importlib.import_module(STAGES[kind])


def new_context(recipe: Recipe, *, progress: bool = True, log: Callable[[str], None] = print) -> RunContext:
    """The RunContext for the recipe's model kind (a TextRunContext for text)."""
    return stages_for(recipe).Context(recipe, progress=progress, log=log)


def run(recipe: Recipe, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole pipeline on one recipe; returns the run summary (also written to summary.json).

    A text recipe (``model.kind = "text"``) runs ``edgetl.text.pipeline.run``."""
    if recipe.model.kind != "image":
        return stages_for(recipe).run(recipe, progress=progress, log=log)
    start = time.perf_counter()
    ctx = RunContext(recipe, progress=progress, log=log)
    finetuned = finetune_stage(ctx)
    distilled = distill_stage(ctx)
    export_stage(ctx)
    quantize_stage(ctx)
    validation = validate_stage(ctx)
    benchmarks = bench_stage(ctx)
    decisions = select(ctx, validation, benchmarks)
    shipped = ship_stage(ctx, validation, benchmarks, decisions)
    summary = {
        "run": recipe.run.name,
        "probe_test_accuracy": finetuned.probe_test_accuracy,
        "test_accuracy": finetuned.test_accuracy,
        "distill": distill_summary(distilled),
        "variants": summary_rows(validation, benchmarks, decisions),
        "decisions": decisions,
        "default_artifact": shipped.default_artifact,
        "bundle": str(shipped.path),
        "archive": str(shipped.archive),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(ctx.run_dir / "summary.json", summary)
    return summary


Context = RunContext  # the name stages_for() callers use, for every kind
