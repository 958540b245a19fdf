"""What every command shares: the consoles, the common options, one-line failures and the run tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EdgetlError
from ..train.launch import is_main_process

# Piped or logged output gets wide lines rather than a table folded to rich's 80-column default. Launched on several
# processes (accelerate launch, torchrun), only the main one prints; errors come from any.
out = Console(width=None if sys.stdout.isatty() else 200, quiet=not is_main_process())
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

RecipeArg = Annotated[Optional[Path], typer.Argument(help="Recipe TOML; none runs the built-in example.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe field: section.key=value (repeatable).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def out_print(message: str) -> None:
    out.print(message, highlight=False)


def floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise EdgetlError(f"{option} {text!r}: give numbers separated by commas, e.g. 0.485,0.456,0.406") from None


def stages_context(recipe: Path | None, overrides: list[str] | None, quiet: bool):
    """(the pipeline's stages, the recipe's RunContext): every task runs the same stages."""
    from .. import pipeline
    from ..recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    pipeline.lock.acquire(loaded.run_dir)  # held until this process ends: one process per run folder
    return pipeline, pipeline.RunContext(loaded, progress=not quiet, log=lambda m: out.print(m, highlight=False))


# What the run table shows; summary.json keeps every column (runtime, p99, spread, teacher agreement, ...).
_SUMMARY_COLUMNS = ("variant", "batch", "accuracy", "agreement", "mean_cosine", "mean_relative_error", "median_ms",
                    "p90_ms", "throughput", "size_mb", "median_rel_ci", "speedup", "verdict", "selected")


def print_summary(rows: list[dict], decisions: dict | None = None) -> None:
    from ..bench import format_table

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


def print_run(summary: dict) -> None:
    print_summary(summary["variants"], summary["decisions"])
    if "probe_test_accuracy" in summary:
        out.print(f"linear probe {summary['probe_test_accuracy']:.2f}% -> fine-tuned {summary['test_accuracy']:.2f}% "
                  "test accuracy")
        print_transfer(summary.get("transfer"))
    else:
        accuracy = summary["test_accuracy"]
        measured = f"{accuracy:.2f}% test accuracy" if accuracy is not None else "accuracy not measured (no labels)"
        out.print(f"source model {summary['source']}: {measured}", highlight=False)
    if summary["distill"]:
        print_distill(summary["distill"])
    out.print(f"bundle: {summary['bundle']}  ({summary['archive']}), default artifact {summary['default_artifact']}, "
              f"in {summary['seconds']:.0f} s")


def print_transfer(transfer: dict | None) -> None:
    """The negative-transfer check: the from-scratch baseline (when trained) and the verdict, flagged when
    fine-tuning lost to a baseline."""
    if not transfer:
        return
    if transfer.get("scratch") is not None:
        out.print(f"from scratch (random weights, same budget) {transfer['scratch']:.2f}% test accuracy", highlight=False)
    mark = "[bold red]transfer:[/]" if transfer["negative_transfer"] else "transfer:"
    out.print(f"{mark} {escape(transfer['verdict'])}", highlight=False, soft_wrap=True)


def print_distill(result: dict) -> None:
    baseline = result.get("baseline_test_accuracy")
    without = f"; without the teacher {baseline:.2f}%" if baseline is not None else ""
    out.print(f"distilled {result['student']}: {result['student_test_accuracy']:.2f}% test accuracy "
              f"({result['relative_accuracy']:.1%} of the teacher's {result['teacher_test_accuracy']:.2f}%){without}")
