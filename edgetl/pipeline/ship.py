"""The ship stage: bundle what ``select`` chose into ``models/<name>/`` and a .tar.gz, with the task's extra files
(a tokenizer), a validation slice and benchmark inputs for devices, and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import read_json
from ..errors import BundleError
from ..tasks import STUDENT, TEACHER
from .context import RunContext
from .plan import Planned
from .select import decide
from .stages import bench_stage, validate_stage


def ship_stage(ctx: RunContext, validation: dict | None = None, benchmarks: dict | None = None,
               decisions: dict | None = None, extra_files: dict[str, Path] | None = None):
    """Bundle the shipped artifacts; returns the ``ShippedBundle``. ``extra_files`` ({name in the bundle: source
    file}, e.g. ``{"report.html": ..., "report.json": ...}``) go into the bundle and its manifest beside the task's
    own (a tokenizer); the model card links a ``report.html``."""
    from ..bundle import Artifact, ship

    validation = validation or validate_stage(ctx)
    benchmarks = benchmarks or bench_stage(ctx)
    decisions = decisions or decide(ctx, validation, benchmarks)
    chosen, default = shipped_artifacts(ctx, decisions)
    artifacts = [Artifact(name=a.name, format=a.format, files=ctx.shipped_files(a), runtime=a.runtime,
                          validation=validation[a.name], benchmark=benchmarks.get(a.name)) for a in chosen]
    model_key = chosen[0].model
    bench = ctx.task.bench_inputs(ctx, model_key)
    return ship(artifacts, name=bundle_folder(ctx).name, output_dir=bundle_folder(ctx).parent,
                labels=ctx.model(TEACHER)[1]["classes"], preprocess=ctx.preprocess_of(model_key),
                recipe_toml=ctx.recipe.to_toml(), recipe_hash=ctx.recipe.section_hash(),
                card=card(ctx, chosen, decisions),
                data_sha256=ctx.task.fingerprint(ctx.splits), source_model=ctx.origin.provenance(ctx),
                default=default, extra_files={**ctx.task.bundle_files(ctx, model_key), **(extra_files or {})},
                validation_slice=validation_slice(ctx, model_key),
                bench_inputs=bench[0] if bench else None, bench_description=bench[1] if bench else None,
                output=ctx.task.output,
                output_dim=ctx.reference_logits(model_key).shape[1] if ctx.task.output != "logits" else None)


def bundle_folder(ctx: RunContext) -> Path:
    """Where the run's bundle goes: ``ship.output_dir/<ship.name or run.name>``."""
    return Path(ctx.recipe.ship.output_dir) / (ctx.recipe.ship.name or ctx.recipe.run.name)


def report_files(ctx: RunContext, summary: dict[str, Any]) -> dict[str, Path]:
    """``report.html`` (and the ``report.json`` it is drawn from) for the run folder, to ship in the bundle too:
    {name in the bundle: file}. The summary is the run's so far (what ``summary.json`` will hold)."""
    from ..report import REPORT_HTML, REPORT_JSON, write_report

    page = write_report(ctx.run_dir, summary={**summary, "bundle": str(bundle_folder(ctx))})
    return {REPORT_HTML: page, REPORT_JSON: ctx.run_dir / REPORT_JSON}


def shipped_artifacts(ctx: RunContext, decisions: dict[str, dict]) -> tuple[list[Planned], str]:
    """The artifacts ``select`` shipped and the default one's name, logging why each other one was left out;
    a BundleError with every failure when nothing passed."""
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
    """``ship.validation_slice`` test samples with the shipped model's FP32 outputs, which each target device is
    held to; None when the recipe ships none."""
    from ..bundle import ValidationSlice

    if not ctx.recipe.ship.validation_slice:
        return None
    return ValidationSlice.from_split(ctx.splits.test, ctx.preprocess_of(model_key), ctx.reference_logits(model_key),
                                      size=ctx.recipe.ship.validation_slice, seed=ctx.recipe.run.seed,
                                      reference=ctx.reference_name(model_key))


def card(ctx: RunContext, chosen: list[Planned], decisions: dict[str, dict] | None = None) -> dict[str, Any]:
    """The model card's fields: the task's own, the data sizes, the measured accuracies and why each shipped
    artifact was chosen."""
    fields = {
        "backbone": ", ".join(sorted({ctx.model_metadata(a.model)["backbone"] for a in chosen})),
        **ctx.task.card(ctx, chosen),
        "data_sizes": ctx.splits.sizes(),
        **ctx.origin.card(ctx),
    }
    if decisions:
        fields["shipped_because"] = {a.name: decisions[a.name]["reason"] for a in chosen if a.name in decisions}
    if ctx.recipe.distill.enabled and (ctx.model_dir(STUDENT) / "result.json").is_file():
        # The keys of edgetl.train.distill.DistillResult, as result.json holds them (the pipeline once read the
        # student's accuracy as "test_accuracy", so the card said "student_test_accuracy: –"; test_card checks them).
        distilled = read_json(ctx.model_dir(STUDENT) / "result.json")
        fields.update({"teacher_backbone": ctx.recipe.model.backbone, "student": distilled.get("student"),
                       "student_test_accuracy": distilled.get("student_test_accuracy")})
        if distilled.get("baseline_test_accuracy") is not None:  # the no-teacher ablation ran
            fields["student_without_teacher_test_accuracy"] = distilled["baseline_test_accuracy"]
    return fields
