"""The pipeline's commands: run, optimize, and each stage alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EdgetlError
from .console import (JsonOpt, QuietOpt, RecipeArg, SetOpt, emit, fail, floats, json_command, out, out_print,
                      print_distill, print_run, stages_context)


@json_command
def run(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False, json_path: JsonOpt = None) -> None:
    """Fine-tune, distill, export, quantize, validate, benchmark and ship, from one recipe (--json: the run's
    summary.json)."""
    from ..pipeline import run as run_pipeline
    from ..recipe import load_recipe

    loaded = load_recipe(recipe, set_)
    summary = run_pipeline(loaded, progress=not quiet, log=lambda m: out.print(m, highlight=False))
    if summary:  # {}: one of the other processes of a distributed launch
        print_run(summary)
        emit(summary, json_path)


@json_command
def optimize(
    model: Annotated[str, typer.Argument(help="Your model: .onnx, OpenVINO .xml, torch.export .pt2, a Hugging Face "
                                                "folder or hub id (owner/name), or package.module:factory with "
                                                "--weights.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Image folder, one sub-folder per class (named after "
                                       "the model's labels) or images alone; for text, a .csv/.tsv/.jsonl file.")],
    labels: Annotated[Optional[Path], typer.Option(help="The model's class names, one per line (when the model "
                                                   "does not carry them).")] = None,
    task: Annotated[Optional[str], typer.Option(help="What the model does: image-classification (the default for "
                                                "files), text-classification, text-embedding, image-regression (a "
                                                "Hugging Face folder says which itself).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Bundle path, e.g. models/NAME (default: models/<model stem>).")
                   ] = None,
    size: Annotated[Optional[int], typer.Option(help="Input size when the model's is dynamic.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Pixel mean in [0, 1], e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Pixel std in [0, 1], e.g. 0.229,0.224,0.225.")] = None,
    resize: Annotated[Optional[str], typer.Option(help="How photos become square: shorter-side+center-crop "
                                                  "(default), squash, squash+center-crop or letterbox.")] = None,
    crop_fraction: Annotated[Optional[float], typer.Option(help="Center-crop share of the shorter side, e.g. "
                                                           "0.875 (resize 256, crop 224).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="A text model's tokenizer folder (tokenizer.json or "
                                                      "vocab.txt), when the model is an ONNX file.")] = None,
    output: Annotated[Optional[str], typer.Option(help="The model output to use, by name, when it has several.")
                      ] = None,
    weights: Annotated[Optional[Path], typer.Option(help="The .safetensors state dict for a "
                                                    "package.module:factory model.")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="Also bench the bundle on these "
                                                        "targets (repeatable).")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Your own model -> export, quantize, validate against the original on your data, bench, ship a bundle
    (--json: the run's summary, with the --target results under "targets")."""
    from ..pipeline.optimize import optimize as run_optimize
    from .device_commands import bench_on_targets

    summary = run_optimize(model, data, labels=labels, task=task, out=out, size=size, mean=floats(mean, "--mean"),
                           std=floats(std, "--std"), resize=resize, crop_fraction=crop_fraction,
                           tokenizer=tokenizer, output=output, weights=weights, overrides=set_ or [],
                           progress=not quiet, log=out_print)
    print_run(summary)
    if target:
        report = bench_on_targets(Path(summary["archive"]), target, quiet=quiet, emit_failure=False)
        emit({**summary, "targets": report.to_dict()}, json_path)
        if report.failure():
            fail(report.failure(), 1)
    else:
        emit(summary, json_path)


@json_command
def finetune(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False, json_path: JsonOpt = None
             ) -> None:
    """Transfer learning: linear probe on the frozen backbone, then staged unfreezing (and, with
    finetune.scratch_baseline, the same backbone from random weights to compare with). --json: the teacher's
    result.json, with "transfer" (the negative-transfer verdict)."""
    from ..pipeline.stages import scratch_stage
    from ..pipeline.transfer import check_scratch, transfer_of
    from .console import print_transfer

    stages, ctx = stages_context(recipe, set_, quiet)
    if ctx.recipe.model.source:
        raise EdgetlError(f"model.source is your own model ({ctx.recipe.model.source}): there is nothing to fine-tune; "
                          "`edgetl run RECIPE` imports, validates, benches and ships it")
    check_scratch(ctx.recipe)  # before the teacher trains
    result = stages.finetune_stage(ctx)
    scratch_stage(ctx)
    out.print(f"linear probe {result.probe_test_accuracy:.2f}% -> fine-tuned {result.test_accuracy:.2f}% test accuracy")
    transfer = transfer_of(ctx)
    print_transfer(transfer)
    emit({**_teacher_record(ctx), "transfer": transfer}, json_path)


def _teacher_record(ctx) -> dict:
    """What the teacher's result.json holds (its key, accuracies, history)."""
    from .._io import read_json
    from ..tasks import TEACHER
    from ..train.loop import RESULT_FILE

    return read_json(ctx.model_dir(TEACHER) / RESULT_FILE)


@json_command
def distill(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False, json_path: JsonOpt = None
            ) -> None:
    """Knowledge distillation of the fine-tuned teacher into a smaller student (with the no-teacher ablation).
    --json: the distillation summary (as in summary.json); null when distillation is off."""
    stages, ctx = stages_context(recipe, set_, quiet)
    result = stages.distill_stage(ctx)
    if result is None:
        out.print("distillation is off in this recipe (distill.enabled = false)")
        emit(None, json_path)
        return
    from ..pipeline import distill_summary

    summary = distill_summary(result)
    print_distill(summary)
    emit(summary, json_path)


@json_command
def export(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False, json_path: JsonOpt = None) -> None:
    """Export the fine-tuned model to ONNX and OpenVINO IR (--json: each variant's export record)."""
    stages, ctx = stages_context(recipe, set_, quiet)
    records = stages.export_stage(ctx)
    for record in records:
        out.print(f"{record['variant']}: {', '.join(record['files'])} ({record['exporter']}, opset {record['opset']})")
    emit(records, json_path)


@json_command
def quantize(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False, json_path: JsonOpt = None
             ) -> None:
    """Quantize the exported models with every method in quantize.methods (INT8 static/dynamic, FP16), then
    quantization-aware training where post-training INT8 misses the gate (quantize.qat). --json: each variant's
    record by name, {"skipped": why} for one that was skipped or not needed."""
    stages, ctx = stages_context(recipe, set_, quiet)
    records = {}
    for name, record in stages.quantize_stage(ctx).items():
        if record is None:
            reason = ctx.skip_reason(name)
            out.print(f"{name}: skipped: {reason or 'see the log above'}")
            records[name] = {"skipped": reason}
        else:
            out.print(f"{name}: {', '.join(record['files'])} from {record['source']}")
            records[name] = record
    emit(records, json_path)


@json_command
def validate(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe TOML (none: the built-in example), or a model file "
                                                     "(.onnx, .xml) made elsewhere, with --reference and --data.")
                      ] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Model file only: the original it must agree with.")
                         ] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Model file only: image folder to check on.")
                    ] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Model file only: the original's class names.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Model file only: pixel mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Model file only: pixel std, e.g. 0.229,0.224,0.225.")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Run the shared validation check on every exported variant (or on one model file against its original);
    exit 1 if any fails. --json: the validation reports by artifact (written before the exit)."""
    from ..pipeline.optimize import MODEL_FILE_RUNTIMES, validate_file
    from ..validate import describe_measures

    if recipe is not None and recipe.suffix.lower() in MODEL_FILE_RUNTIMES:
        if reference is None or data is None:
            raise EdgetlError(f"validating the model file {recipe.name} needs --reference ORIGINAL and --data DATA")
        report = validate_file(recipe, reference, data, labels=labels, mean=floats(mean, "--mean"),
                               std=floats(std, "--std"), overrides=set_ or [], log=out_print)
        reports = {recipe.name: report}
    elif reference is not None or data is not None:
        raise EdgetlError("--reference and --data go with a model file: edgetl validate model.onnx --reference "
                          "original.onnx --data photos/")
    else:
        stages, ctx = stages_context(recipe, set_, quiet)
        reports = stages.validate_stage(ctx)
    for name, report in reports.items():
        verdict = "pass" if report["passed"] else "FAIL: " + "; ".join(report["reasons"])
        out.print(f"{name}: {describe_measures(report)} -> {verdict}", highlight=False)
    emit(reports, json_path)
    failed = [name for name, r in reports.items() if not r["passed"]]
    if failed:
        fail(f"{len(failed)} of {len(reports)} failed the validation gate ({', '.join(failed[:4])}"
              f"{', ...' if len(failed) > 4 else ''}); see the reasons above, or loosen [validate.gate]", 1)


@json_command
def ship(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False, json_path: JsonOpt = None) -> None:
    """Bundle the variants that passed validation into models/<name>/ and a .tar.gz (--json: the bundle's path,
    archive, default artifact and manifest)."""
    stages, ctx = stages_context(recipe, set_, quiet)
    shipped = stages.ship_stage(ctx)
    out.print(f"bundle: {shipped.path}  ({shipped.archive})")
    emit({"bundle": shipped.path, "archive": shipped.archive, "default_artifact": shipped.default_artifact,
          "manifest": shipped.manifest}, json_path)
