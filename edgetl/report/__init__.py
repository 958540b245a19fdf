"""``report.html``: the trade-off of a run or a bundle on one self-contained page.

Accuracy against latency and size with the Pareto frontier, throughput, target devices against this host,
training curves, the accuracy-aware search's layers and the shipped artifact's confusion matrix, with the
decisions and the environment. ``record`` gathers the data (plain JSON, shipped in bundles as ``report.json``),
``figures`` draws each figure (matplotlib, inline SVG), ``page`` assembles the HTML.

>>> write_report(Path("runs/fashion-mnist-lite0"))        # also writes runs/fashion-mnist-lite0/report.json
PosixPath('runs/fashion-mnist-lite0/report.html')
>>> write_report(Path("models/fashion-mnist-lite0"))      # the bundle's report.json, plus bench --target results
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import write_json, write_text
from ..errors import EdgetlError
from .record import (
    REPORT_HTML,
    REPORT_JSON,
    SUMMARY_FILE,
    TARGETS_DIR,
    archive_reader,
    collect,
    from_bundle,
    saved_targets,
    target_file_name,
)

__all__ = ["REPORT_HTML", "REPORT_JSON", "TARGETS_DIR", "collect", "render_html", "target_file_name", "write_report"]

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def write_report(source: Path, out: Path | None = None, *, summary: dict | None = None) -> Path:
    """Write ``report.html`` for a run folder, a bundle folder or a bundle ``.tar.gz``; returns its path.

    A run folder (``runs/<name>/``): the record is collected from it (``summary``: the run's summary, else
    ``summary.json``) and also written beside the page as ``report.json``; target results saved in its bundle
    folder are drawn too. A bundle: its ``report.json`` (or, without one, its manifest) and the ``edgetl bench
    --target`` results saved in the folder's ``targets/`` (for an archive, in the bundle folder beside it).
    ``out`` defaults to ``report.html`` in the run or bundle folder (a bundle whose manifest checksums its own
    report.html, and an archive, get ``<name>.report.html`` beside them instead)."""
    source = Path(source)
    if not source.exists():
        raise EdgetlError(f"{source} not found; give a run folder (runs/NAME) or a bundle folder or .tar.gz")
    if source.is_file():
        if not source.name.endswith(_ARCHIVE_SUFFIXES):
            raise EdgetlError(f"{source} is not a bundle archive (.tar.gz); give a run folder (runs/NAME) or a bundle "
                              "folder or .tar.gz")
        name = _archive_name(source)
        record = from_bundle(source, read=archive_reader(source))
        sibling = source.parent / name
        record["targets"] = saved_targets(sibling if (sibling / "manifest.json").is_file() else None)
        default_out = source.parent / f"{name}.{REPORT_HTML}"
    elif (source / "manifest.json").is_file():
        record = from_bundle(source)
        record["targets"] = saved_targets(source)
        default_out = source / REPORT_HTML
        if _checksummed(source, REPORT_HTML):  # the shipped page stays as shipped: verify would flag a change
            default_out = source.parent / f"{source.name}.{REPORT_HTML}"
    elif (source / SUMMARY_FILE).is_file() or summary is not None:
        record = collect(source, summary)
        write_json(source / REPORT_JSON, record)
        record = {**record, "targets": saved_targets(_run_bundle(source, record))}
        default_out = source / REPORT_HTML
    else:
        raise EdgetlError(f"{source} is neither a run folder (with {SUMMARY_FILE}: finish it with `edgetl run`) nor a "
                          "bundle folder (with manifest.json)")
    return write_text(out or default_out, render_html(record))


def render_html(record: dict[str, Any]) -> str:
    """The page for a report record (its figures drawn now)."""
    from .figures import draw_all
    from .page import render

    return render(record, draw_all(record))


def _archive_name(archive: Path) -> str:
    return next(archive.name[: -len(suffix)] for suffix in _ARCHIVE_SUFFIXES if archive.name.endswith(suffix))


def _checksummed(bundle: Path, rel: str) -> bool:
    import json

    try:
        return rel in json.loads((bundle / "manifest.json").read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return False


def _run_bundle(run_dir: Path, record: dict[str, Any]) -> Path | None:
    """The run's bundle folder, where ``bench --target`` saved its results: as the summary names it (relative to
    where the run was started, usually the folder above ``runs/``)."""
    if not record.get("bundle"):
        return None
    bundle = Path(record["bundle"])
    for candidate in (bundle, run_dir.resolve().parent.parent / bundle):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None
