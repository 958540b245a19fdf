"""Each artifact made once: ``ensure(ctx, artifact)`` exports or quantizes it unless its record is fresh.

An artifact folder holds ``export.json`` (its files and how they were made, under a key of the checkpoint and
recipe sections it depends on) or ``skipped.json`` (why this variant cannot be made here). QAT is the exception:
it is trained only when post-training INT8 missed the gate (``qat``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import read_json, write_json
from ..errors import QuantizationSkipped
from .context import RunContext, is_fresh
from .plan import QAT, Planned


def ensure(ctx: RunContext, artifact: Planned) -> dict[str, Any] | None:
    """The artifact's export record, making it first unless fresh; None for torch or a skipped variant."""
    if artifact.format == "torch":
        return None
    folder = ctx.artifact_dir(artifact)
    record, skipped = folder / "export.json", folder / "skipped.json"
    key = {"checkpoint": ctx.checkpoint_hash(artifact.model), "export": ctx.recipe.section_hash("export")}
    if artifact.quantized:
        key["quantize"] = ctx.recipe.section_hash("quantize")
    if is_fresh(record, key) and (folder / artifact.file).is_file():
        return read_json(record)
    if is_fresh(skipped, key) or artifact.kind == QAT:  # QAT is trained by qat(), never here
        return None
    if artifact.quantized:
        info = _quantize(ctx, artifact, key)
        if info is None:
            return None
    else:
        ctx.log(f"export: {artifact.name}")
        info = ctx.origin.export(ctx, artifact.model, artifact.kind, folder,
                                 lambda fmt: artifact_file(ctx, ctx.fp32_artifact(artifact.model, fmt)))
    data = {"key": key, "variant": artifact.name, **info}
    write_json(record, data)
    skipped.unlink(missing_ok=True)
    return data


def artifact_file(ctx: RunContext, artifact: Planned) -> Path:
    """The artifact's model file, made first if needed (a quantized model needs its FP32 export)."""
    ensure(ctx, artifact)
    return ctx.artifact_dir(artifact) / artifact.file


def _quantize(ctx: RunContext, artifact: Planned, key: dict[str, Any]) -> dict[str, Any] | None:
    from ..quantize import QUANTIZERS, ValidationSet, quantize_file

    quantizer = QUANTIZERS.get(artifact.kind)
    folder = ctx.artifact_dir(artifact)
    source = artifact_file(ctx, ctx.fp32_artifact(artifact.model, quantizer.source))
    ctx.log(f"quantize: {artifact.name}")
    preprocess = ctx.preprocess_of(artifact.model)
    try:
        info = quantize_file(
            source, artifact.kind, folder, config=ctx.recipe.quantize, scheme=ctx.task.quantize_scheme,
            calibration=ctx.task.calibration(ctx, preprocess) if quantizer.needs_calibration else None,
            validation=ValidationSet(ctx.splits.val, preprocess) if quantizer.needs_validation else None,
        )
    except QuantizationSkipped as exc:  # a known inability: recorded, and reused while the key holds
        ctx.log(f"quantize: {artifact.name} skipped: {exc}")
        write_json(folder / "skipped.json", {"key": key, "variant": artifact.name, "reason": str(exc)})
        return None
    for note in info.notes:  # fallbacks and caveats (a failed pre-processing step, lost metadata) are said here too
        ctx.log(f"quantize: {artifact.name}: note: {note}")
    return info.to_dict()


def made(ctx: RunContext) -> list[Planned]:
    """Every planned artifact that exists (making what is missing first)."""
    for artifact in ctx.plan():
        ensure(ctx, artifact)
    return [a for a in ctx.plan() if ctx.made(a)]


def qat(ctx: RunContext, validate_artifact) -> dict[str, dict[str, Any] | None]:
    """Quantization-aware training for each model whose OpenVINO post-training INT8 variants all fail the gate.

    QAT makes OpenVINO IR, so it stands in for NNCF post-training quantization: when one of those passes
    (or none was tried), QAT is not needed and the artifact is recorded as skipped with the reason.
    ``validate_artifact(ctx, artifact) -> report`` is the shared validation check of the validate stage.
    """
    from ..quantize import QUANTIZERS, qat_finetune

    results: dict[str, dict[str, Any] | None] = {}
    for artifact in [a for a in ctx.plan() if a.kind == QAT]:
        folder = ctx.artifact_dir(artifact)
        record, skipped = folder / "export.json", folder / "skipped.json"
        key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
               "recipe": ctx.recipe.section_hash("data", "model", "quantize", "validate")}
        if is_fresh(record, key) and (folder / artifact.file).is_file():
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

