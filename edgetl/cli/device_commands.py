"""Measuring on devices: ``edgetl bench`` and the ``edgetl targets`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EdgetlError
from .console import (JSON_STDOUT, JsonOpt, QuietOpt, SetOpt, emit, err, fail, json_command, out, print_summary,
                      stages_context)

targets_app = typer.Typer(help="Target devices: list, show and check the profiles in targets/.", no_args_is_help=True)
TargetArg = Annotated[str, typer.Argument(help="Target name (see `edgetl targets list`) or path to a .toml.")]


@json_command
def bench(
    source: Annotated[
        Optional[Path],
        typer.Argument(help="Recipe TOML (none: the built-in example), or with --target a bundle; or a model file "
                            "(.onnx, .xml), on local-cpu unless --target says where."),
    ] = None,
    target: Annotated[
        Optional[list[str]],
        typer.Option("--target", "-t", help="Target name or .toml (repeatable): bench the bundle SOURCE there."),
    ] = None,
    shape: Annotated[
        Optional[list[str]],
        typer.Option("--shape", help="Model file only: an input's full shape, batch first, for its dynamic axes: "
                                     "NAME=1x3x224x224 (repeatable; a dynamic batch axis is timed at each "
                                     "target's batch_sizes)."),
    ] = None,
    seq_len: Annotated[
        Optional[int],
        typer.Option("--seq-len", help="Model file only: sequence length of token inputs (input_ids, "
                                       "attention_mask, token_type_ids) with a dynamic length (default 128)."),
    ] = None,
    trust_new_host: Annotated[
        bool, typer.Option("--trust-new-host", help="Accept and record an SSH host key never seen before.")
    ] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Also show min, mean and std per batch size.")] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Measure latency: every variant of a run on this CPU, or a bundle on --target devices.

    --json: a run's summary rows and decisions; with --target, the merged report, rewritten as each
    target finishes.

    A model file (.onnx on onnxruntime, .xml on openvino) is timed like a bundle,
    on random inputs of its own shapes and dtypes (token inputs: small ids,
    a mask of ones, type ids of zero); it is not validated (no validation slice).

    Example: edgetl bench model.onnx -t local-cpu-1core --shape image=1x3x224x224
    """
    from ..bench.model_file import is_model_file
    from ..bench.random_inputs import InputOptions

    if not target and source is not None and is_model_file(source):
        target = ["local-cpu"]
    if not target:
        if shape or seq_len is not None:
            raise EdgetlError("--shape and --seq-len apply to a model file (.onnx, .xml): edgetl bench model.onnx "
                              "--shape NAME=1x3x224x224")
        stages, ctx = stages_context(source, set_, quiet)
        validation, benchmarks = stages.validate_stage(ctx), stages.bench_stage(ctx)
        decisions = stages.decide(ctx, validation, benchmarks)
        rows = stages.summary_rows(validation, benchmarks, decisions)
        print_summary(rows, decisions)
        emit({"variants": rows, "decisions": decisions}, json_path)
        return
    if source is None:
        raise EdgetlError("--target needs a bundle or a model file: edgetl bench models/NAME.tar.gz --target local-cpu")
    bench_on_targets(source, target, inputs=InputOptions.parse(shape or [], seq_len), trust_new_host=trust_new_host,
                     json_path=json_path, wide=wide, quiet=quiet)


def bench_on_targets(source: Path, target: list[str], *, inputs=None, trust_new_host: bool = False,
                     json_path: str | None = None, wide: bool = False, quiet: bool = False,
                     emit_failure: bool = True):
    """Bench ``source`` on the targets, print the merged table and notes; returns the TargetsReport.

    ``json_path`` (a file) is rewritten as each target finishes; ``-`` prints the report on stdout at the end.
    ``emit_failure`` False leaves failing (exit 1) to the caller, which prints its own record first."""
    from ..bench import format_table
    from ..bench.remote import bench_targets

    report = bench_targets(source, target, inputs=inputs, trust_new_host=trust_new_host,
                           json_path=None if json_path == JSON_STDOUT else json_path,
                           log=(lambda m: None) if quiet else (lambda m: err.print(m, highlight=False)))
    out.print(format_table(report.rows(wide=wide), title=f"{source} on {len(report.results)} target(s)"))
    for note in report.notes():
        out.print(note, highlight=False, soft_wrap=True)
    if json_path == JSON_STDOUT:
        emit(report.to_dict(), json_path)
    elif json_path is not None:
        out.print(f"results: {json_path}")
    failure = report.failure()  # a failed target, a failed check, or nothing timed anywhere
    if failure and emit_failure:
        fail(failure, 1)
    return report


@targets_app.command("list")
@json_command
def targets_list(json_path: JsonOpt = None) -> None:
    """List the target profiles: name, how it is reached, architecture, runtimes (--json: every profile, every
    setting resolved)."""
    from rich.table import Table

    from ..bench.targets import list_targets

    table = Table()
    for header in ("name", "reach", "arch", "runtimes", "description"):
        table.add_column(header, overflow="fold", no_wrap=header == "name")
    profiles = list_targets()
    for profile in profiles:
        table.add_row(profile.name, profile.address, profile.arch, "\n".join(profile.runtimes), profile.description)
    out.print(table)
    emit([profile.to_dict() for profile in profiles], json_path)


@targets_app.command("show")
@json_command
def targets_show(name: TargetArg, json_path: JsonOpt = None) -> None:
    """Print one target profile, every setting resolved."""
    import json

    from ..bench.targets import load_target

    profile = load_target(name).to_dict()
    out.print_json(json.dumps(profile))
    emit(profile, json_path)


@targets_app.command("check")
@json_command
def targets_check(
    name: TargetArg,
    trust_new_host: Annotated[bool, typer.Option("--trust-new-host", help="Accept an unknown SSH host key.")] = False,
    json_path: JsonOpt = None,
) -> None:
    """Is the target reachable, and which of its runtimes really load there? (--json: the check's result: machine
    facts, emulation, each runtime's status)"""
    from ..bench.remote import check_target
    from ..bench.targets import load_target

    result = check_target(load_target(name), trust_new_host=trust_new_host)
    env = result.environment
    out.print(f"{result.target}: reachable ({result.address}); {env.get('cpu')}, {env.get('usable_cores')} usable "
              f"cores, {env.get('memory_total_mb') or 0:.0f} MB, python {env.get('python')}", highlight=False)
    if result.emulated:
        out.print(f"{result.target}: EMULATED small device on this machine ({result.emulation})")
    for runtime in result.runtimes:
        out.print(f"  {runtime.runtime}: {'loads' if runtime.ok else runtime.status}", highlight=False)
    emit(result.to_dict(), json_path)
    if not any(runtime.ok for runtime in result.runtimes):
        raise typer.Exit(1)
