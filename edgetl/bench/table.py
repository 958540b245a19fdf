"""The latency table printed after a benchmark. Rows are plain dicts, so the pipeline can merge in
validation columns (accuracy, agreement) before printing; rich is imported only when a table is made.

>>> rows = rows_from_result(result, variant="int8")
>>> rows[0]["accuracy"] = 91.2
>>> print_table(rows, title="Fashion-MNIST, local CPU")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .timing import BenchResult


def _text(value: Any) -> str:
    return str(value)


def _ms(value: float) -> str:
    # Three significant-ish digits whether a call takes 0.05 ms or 500 ms.
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def _throughput(value: float) -> str:
    # Millions as "1.32M": a tiny model at a large batch would otherwise need the widest column.
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}" if value < 1e6 else f"{value / 1e6:,.2f}M"


def _spread(value: float) -> str:
    return f"±{value * 100:.1f}%"


def _other(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Column:
    """A known row key: its header, how to show a value, and whether it is numeric (right-aligned)."""

    key: str
    header: str
    show: Callable[[Any], str]
    numeric: bool = True


# The known columns, in display order; a column appears when any row has its key.
COLUMNS: tuple[Column, ...] = (
    Column("target", "target", _text, numeric=False),
    Column("variant", "variant", _text, numeric=False),
    Column("runtime", "runtime", _text, numeric=False),
    Column("batch", "batch", _text),
    Column("accuracy", "accuracy %", lambda v: f"{v:.2f}"),
    Column("min_ms", "min ms", _ms),
    Column("median_ms", "median ms", _ms),
    Column("mean_ms", "mean ms", _ms),
    Column("p90_ms", "p90 ms", _ms),
    Column("p99_ms", "p99 ms", _ms),
    Column("std_ms", "std ms", _ms),
    Column("throughput", "items/s", _throughput),
    Column("size_mb", "size MB", lambda v: f"{v:.2f}"),
    Column("median_rel_ci", "spread", _spread),
    Column("cold_start_s", "cold start s", lambda v: f"{v:.3f}"),
    Column("peak_mb", "peak MB", lambda v: f"{v:.0f}"),
)
_DEFAULT_KEYS = ("runtime", "batch", "median_ms", "p90_ms", "p99_ms", "throughput", "median_rel_ci")


def rows_from_result(result: BenchResult, *, variant: str | None = None) -> list[dict[str, Any]]:
    """One row per batch size of ``result``, with the keys ``format_table`` knows."""
    rows = []
    for stats in result.stats:
        row: dict[str, Any] = {} if variant is None else {"variant": variant}
        row |= {
            "runtime": result.runtime,
            "batch": stats.batch_size,
            "median_ms": stats.median_ms,
            "p90_ms": stats.p90_ms,
            "p99_ms": stats.p99_ms,
            "throughput": stats.throughput,
            "median_rel_ci": stats.median_rel_ci,
        }
        if result.model_size_bytes is not None:
            row["size_mb"] = result.model_size_bytes / 1e6
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], *, title: str | None = None) -> Table:
    """A rich Table of benchmark rows.

    Known keys: variant, runtime, batch, accuracy, median_ms, p90_ms, p99_ms, throughput, size_mb and
    median_rel_ci (shown as "spread", ± percent). A known column appears when any row has it; other
    keys follow as extra columns in first-seen order. Missing, None or infinite values show as "-".
    """
    from rich import box
    from rich.table import Table

    present = {key for row in rows for key in row}
    known = [c for c in COLUMNS if c.key in present] if rows else [c for c in COLUMNS if c.key in _DEFAULT_KEYS]
    known_keys = {c.key for c in COLUMNS}
    extra = [
        Column(key, key, _other, numeric=_is_numeric(rows, key))
        for key in dict.fromkeys(key for row in rows for key in row)  # ordered, unique
        if key not in known_keys
    ]
    columns = known + extra

    # No vertical rules and collapsed padding: ten columns then fit an 80-character terminal.
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for column in columns:
        # Long text (runtime names) folds on a narrow terminal instead of being cut off with "…".
        table.add_column(column.header, justify="right" if column.numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(_cell(column, row.get(column.key)) for column in columns))
    return table


def print_table(rows: Sequence[dict[str, Any]], *, title: str | None = None, console: Console | None = None) -> None:
    """Print ``format_table(rows)`` to ``console`` (default: a new rich Console on stdout)."""
    from rich.console import Console

    (console or Console()).print(format_table(rows, title=title))


def _is_numeric(rows: Sequence[dict[str, Any]], key: str) -> bool:
    values = [row[key] for row in rows if row.get(key) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _cell(column: Column, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return column.show(value)
