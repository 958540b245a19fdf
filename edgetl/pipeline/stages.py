"""The stages, each callable alone (``edgetl finetune``, ``edgetl validate``, ...) and chained by ``run``:
finetune (and, with ``finetune.scratch_baseline``, the same backbone from scratch) -> distill -> export -> quantize ->
validate (shape contract, then the shared check) -> bench.

Every stage works for every task: what differs comes from ``ctx.task``. Records are reused while their key (the
checkpoint and the recipe sections they depend on) is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .._io import read_json, write_json
from ..tasks import STUDENT, TEACHER
from .artifacts import ensure, made, qat
from .context import RunContext, is_fresh
from .plan import QAT, Planned
from .transfer import train_scratch, without_scratch

if TYPE_CHECKING:
    from ..progress import Steps

CONTRACT_FILE = "contract.json"
CONTRACT_VERSION = 2  # in the contract record's key: a change of measure re-runs the contract


def finetune_stage(ctx: RunContext):
    """The teacher: fine-tuned from the recipe's backbone (linear probe, then staged unfreezing), or the user's
    ``model.source`` imported into the run (``ctx.origin``)."""
    return ctx.origin.teacher(ctx)


def scratch_stage(ctx: RunContext):
    """The from-scratch baseline (``finetune.scratch_baseline``): the recipe's backbone from random weights on the
    fine-tune's budget, in ``runs/<name>/scratch/``; its FinetuneResult, or None when the switch is off
    (``edgetl.pipeline.transfer``)."""
    return train_scratch(ctx)


def distill_stage(ctx: RunContext):
    """Knowledge distillation of the fine-tuned teacher into the recipe's student; None when disabled (or the
    model is the user's own)."""
    return ctx.origin.student(ctx)


def export_stage(ctx: RunContext) -> list[dict[str, Any]]:
    """FP32 ONNX / OpenVINO exports of every model (one progress step each)."""
    exported = [a for a in ctx.plan() if a.exported]
    with ctx.steps(len(exported), "export") as bar:
        return list(_each(ctx, bar, exported, lambda a: ensure(ctx, a), "export.json").values())


def quantize_stage(ctx: RunContext) -> dict[str, dict[str, Any] | None]:
    """Every quantization method on every model it applies to, then QAT where post-training INT8 missed the
    gate (``quantize.qat``); None marks a variant that was skipped or not needed. One progress step per
    post-training variant; the accuracy-aware search and QAT show theirs under it."""
    planned = [a for a in ctx.plan() if a.quantized]
    post_training = [a for a in planned if a.kind != QAT]  # QAT is trained by qat_stage, never by ensure
    with ctx.steps(len(post_training), "quantize") as bar:
        made_now = _each(ctx, bar, post_training, lambda a: ensure(ctx, a), "export.json", "skipped.json")
        results = {a.name: made_now.get(a.name) for a in planned}
        results.update(qat_stage(ctx))
    return results


def qat_stage(ctx: RunContext) -> dict[str, dict[str, Any] | None]:
    """Quantization-aware training where every OpenVINO post-training INT8 variant failed the shared check."""
    return qat(ctx, validate_artifact)


def contract_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The task's shape contract on every exported and quantized artifact (a task without one: {})."""
    results = {}
    for artifact in made(ctx):
        if artifact.format == "torch":
            continue
        record = ctx.artifact_dir(artifact) / CONTRACT_FILE
        key = {"checkpoint": ctx.checkpoint_hash(artifact.model), "contract": CONTRACT_VERSION,
               "recipe": without_scratch(ctx.recipe).section_hash("export", "quantize", *ctx.task.sections)}
        if is_fresh(record, key):
            results[artifact.name] = read_json(record)["contract"]
            continue
        contract = ctx.task.contract(ctx, artifact)
        if contract is None:
            continue
        write_json(record, {"key": key, "contract": contract})
        results[artifact.name] = contract
    return results


def validate_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The shared validation check on every artifact, against the FP32 torch model it came from; then the shape
    contract's verdict folded in.

    A student's artifacts are also held to the teacher: their accuracy must keep
    ``distill.min_relative_accuracy`` of the teacher's, and their agreement with it is recorded.
    """
    contracts = contract_stage(ctx)
    artifacts = made(ctx)
    with ctx.steps(len(artifacts), "validate") as bar:
        reports = _each(ctx, bar, artifacts, lambda a: validate_artifact(ctx, a), "validation.json")
    for name, contract in contracts.items():
        if name in reports:
            reports[name] = _with_contract(ctx, name, contract)
    return reports


def _with_contract(ctx: RunContext, name: str, contract: dict[str, Any]) -> dict[str, Any]:
    record = ctx.artifact_dir(name) / "validation.json"
    stored = read_json(record)
    base = stored.get("before_contract", stored["report"])  # the check's own verdict, before any folding
    report = dict(base, shape_contract={k: contract[k] for k in ("passed", "precision", "measure", "limit")})
    if not contract["passed"]:
        report["passed"] = False
        report["reasons"] = list(base.get("reasons") or []) + contract["reasons"][:2]
    if report != stored["report"]:
        write_json(record, {**stored, "report": report, "before_contract": base})
    return report


def validate_artifact(ctx: RunContext, artifact: Planned) -> dict[str, Any]:
    """The shared validation check on one made artifact; its record is reused while inputs are unchanged."""
    from ..validate import predict_logits, validate

    record = ctx.artifact_dir(artifact) / "validation.json"
    key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
           "teacher": ctx.checkpoint_hash(TEACHER),
           "recipe": ctx.recipe.section_hash("data", "model", "export", "quantize", "validate", "distill")}
    if is_fresh(record, key):
        return read_json(record)["report"]
    runner, _ = ctx.open(artifact, ctx.recipe.bench.threads)
    try:
        preprocess = ctx.preprocess_of(artifact.model)
        output = ctx.task.output
        logits = predict_logits(runner, ctx.splits.test, preprocess, ctx.recipe.validate.batch_size, output=output)
        report = validate(runner, ctx.splits.test, preprocess, reference=ctx.reference_logits(artifact.model),
                          gate=ctx.recipe.validate.gate, artifact=artifact.name, logits=logits, output=output)
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
    if report.output != "logits":  # one model, held to its original: the report says it all
        return {"model": artifact.model, "teacher_agreement": report.agreement}
    teacher = ctx.reference_logits(TEACHER)
    labelled = ctx.splits.test.labelled
    teacher_accuracy = float((teacher.argmax(1) == ctx.splits.test.labels).mean() * 100) if labelled else None
    extra: dict[str, Any] = {
        "model": artifact.model,
        "teacher_agreement": float((logits.argmax(1) == teacher.argmax(1)).mean()),
        "teacher_accuracy": teacher_accuracy,
        "relative_accuracy": report.accuracy / teacher_accuracy if teacher_accuracy else None,
    }
    if artifact.model == STUDENT:
        needed = ctx.recipe.distill.min_relative_accuracy
        if extra["relative_accuracy"] is not None and extra["relative_accuracy"] < needed:
            extra["passed"] = False
            extra["reasons"] = list(report.reasons) + [
                f"keeps {extra['relative_accuracy']:.1%} of the teacher's {teacher_accuracy:.2f}% accuracy "
                f"< {needed:.0%} required (distill.min_relative_accuracy)"]
    return extra


def bench_stage(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Local CPU latency of every artifact at the recipe's batch sizes and threads, on the task's inputs (one
    progress step per artifact and batch size)."""
    artifacts, sizes = made(ctx), list(ctx.recipe.bench.batch_sizes)
    with ctx.steps(len(artifacts) * len(sizes), "bench") as bar:
        return {artifact.name: _bench_artifact(ctx, artifact, bar) for artifact in artifacts}


def _bench_artifact(ctx: RunContext, artifact: Planned, bar: Steps) -> dict[str, Any]:
    """One artifact's benchmark record, measured unless fresh; ``bar`` advances once per batch size."""
    from ..bench import benchmark

    sizes = list(ctx.recipe.bench.batch_sizes)
    record = ctx.artifact_dir(artifact) / "benchmark.json"
    key = {"checkpoint": ctx.checkpoint_hash(artifact.model),
           "recipe": without_scratch(ctx.recipe).section_hash("export", "quantize", "bench", *ctx.task.sections)}
    if is_fresh(record, key):
        for size in sizes:
            bar.advance(f"{artifact.name} batch {size}", reused=True)
        return read_json(record)["result"]
    ctx.log(f"bench: {artifact.name}")
    bar.show(f"{artifact.name} batch {sizes[0]} ..." if sizes else artifact.name)
    runner, path = ctx.open(artifact, ctx.recipe.bench.threads)
    timed, inputs, settings = ctx.task.bench_setup(ctx, artifact.model, runner)

    upcoming = iter(sizes[1:])  # benchmark measures the sizes in order

    def measured(stats) -> None:
        bar.advance(f"{artifact.name} batch {stats.batch_size}: {stats.median_ms:.2f} ms")
        following = next(upcoming, None)
        if following is not None:
            bar.show(f"{artifact.name} batch {following} ...")

    try:
        result = benchmark(timed, batch_sizes=sizes, config=ctx.recipe.bench, model_path=path,
                           on_measured=measured, **inputs)
    finally:
        timed.close()
    data = result.to_dict()
    data["settings"].update(settings)
    if path is not None:  # the whole artifact: an IR's .bin, an ONNX file's external data
        data["model_size_bytes"] = sum(p.stat().st_size for p in ctx.shipped_files(artifact))
    write_json(record, {"key": key, "result": data})
    return data


def _each(ctx: RunContext, bar: Steps, artifacts: list[Planned], work: Callable[[Planned], Any],
          *records: str) -> dict[str, Any]:
    """``work(artifact)`` for each artifact, one progress step each (by name). A step that rewrote none of the
    artifact's ``records`` (file names in its folder) reused them: the bar moves, the log gets no line."""
    results = {}
    for artifact in artifacts:
        files = [ctx.artifact_dir(artifact) / name for name in records]
        before = _stamps(files)
        bar.show(f"{artifact.name} ...")
        results[artifact.name] = work(artifact)
        bar.advance(artifact.name, reused=_stamps(files) == before)
    return results


def _stamps(files: list[Path]) -> list[tuple[int, int] | None]:
    """Which version of each file is there: records are replaced whole (``edgetl._io``), so a rewrite changes it."""
    stamps = []
    for file in files:
        try:
            stat = file.stat()
        except FileNotFoundError:
            stamps.append(None)
            continue
        stamps.append((stat.st_ino, stat.st_mtime_ns))
    return stamps
