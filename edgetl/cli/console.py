"""What every command shares: the consoles, the common options, one-line failures and the run tables."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional, TextIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from .._io import write_json
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
JsonOpt = Annotated[
    Optional[str],
    typer.Option("--json", metavar="PATH", help="Also write the result as JSON to PATH; - prints only the JSON on "
                                                "stdout (everything else goes to stderr)."),
]


def fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def out_print(message: str) -> None:
    out.print(message, highlight=False)


# -- --json: the record a command's files hold, for scripts --------------------------------------------------------

JSON_STDOUT = "-"
_json_stream: TextIO | None = None  # the real stdout while a command runs with --json -
Command = TypeVar("Command", bound=Callable[..., Any])


def json_command(command: Command) -> Command:
    """Wrap a command with a ``json_path: JsonOpt`` parameter: a folder given as ``--json`` is refused before any
    work, and with ``--json -`` everything the command prints (tables, logs, progress, native libraries) goes to
    stderr while it runs, so stdout holds only the JSON that ``emit`` writes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_path = kwargs.get("json_path")
        if json_path not in (None, JSON_STDOUT) and Path(json_path).is_dir():
            raise EdgetlError(f"--json {json_path} is a folder; give a file path, e.g. "
                              f"{Path(json_path) / (command.__name__.split('_')[0] + '.json')}")
        if json_path != JSON_STDOUT:
            return command(*args, **kwargs)
        with _stdout_to_stderr():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send stdout to stderr, Python's and (when stdout is a real file) file descriptor 1 too, where OpenVINO and
    other native code write; ``_json_stream`` keeps the real stdout for ``emit``."""
    global _json_stream
    stdout = sys.stdout
    stdout.flush()
    try:
        fd, to = stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # captured (tests): Python's streams are all there is
        fd = to = None
    saved = os.dup(fd) if fd is not None else None
    previous = _json_stream
    _json_stream = open(saved, "w", closefd=False) if saved is not None else stdout
    try:
        if fd is not None:
            sys.stderr.flush()
            os.dup2(to, fd)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        stdout.flush()  # what was written to the original stdout object belongs to stderr, before fd 1 is restored
        sys.stderr.flush()
        _json_stream.flush()
        if saved is not None:
            os.dup2(saved, fd)
            _json_stream.close()
            os.close(saved)
        _json_stream = previous


def emit(record: Any, json_path: str | None) -> None:
    """The ``--json`` output: ``record`` (made JSON-safe by ``jsonable``) written atomically to ``json_path``, or
    printed on stdout when it is ``-``; nothing without ``--json``, or on the other processes of a distributed
    launch."""
    if json_path is None or not is_main_process():
        return
    data = jsonable(record)
    if json_path != JSON_STDOUT:
        write_json(json_path, data)
        return
    stream = _json_stream or sys.stdout
    stream.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    stream.flush()


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses as dicts, paths as strings, numpy scalars and arrays as numbers and
    lists, tuples and sets as lists; NaN and infinities (not JSON) as null."""
    import dataclasses
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


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
