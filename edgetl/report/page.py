"""``report.html``: one self-contained page (inline SVG figures, inline CSS, no script, nothing fetched) from a
report record and its drawn figures. Every text from the record is escaped.

>>> html = render(record, draw_all(record))
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from .figures import Drawn
from .record import class_errors

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;margin-top:0}.note{color:#8a6d3b;background:#fcf8e3;padding:.4em .7em;border-radius:4px}
.bad{color:#b00020;font-weight:bold}.good{color:#1b7a1b}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.shipped td{background:#fff8dc}tr.default td{background:#ffefb0;font-weight:bold}tr.failed td{color:#888}
figure{margin:.5em 0}svg{max-width:100%;height:auto}
ul.decisions li{margin:.15em 0}code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
"""


def render(record: dict[str, Any], figures: list[Drawn]) -> str:
    """The whole page."""
    run = record.get("run") or "run"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgetl report: {_e(run)}</title><style>{_CSS}</style></head><body>",
        f"<h1>edgetl report: {_e(run)}</h1>",
        f'<p class="meta">{_e(_meta(record))}</p>',
        *(f'<p class="note">{_e(note)}</p>' for note in record.get("notes") or []),
        *_outcome(record),
        *_decisions(record),
        *_variants(record),
    ]
    for drawn in figures:
        parts += _figure_section(record, drawn)
    parts += _targets(record)
    parts += _environment(record)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _meta(record: dict[str, Any]) -> str:
    words = [f"task {record['task']}" if record.get("task") else None,
             f"from the {'run folder' if record.get('source') == 'run' else 'bundle'}",
             f"bundle {record['bundle']}" if record.get("bundle") else None,
             f"recorded {record['created']}" if record.get("created") else None,
             f"run took {record['seconds']:.0f} s" if record.get("seconds") else None]
    return "; ".join(w for w in words if w)


def _outcome(record: dict[str, Any]) -> list[str]:
    """What shipped, and the training verdicts, as the terminal says them."""
    lines = []
    default = record.get("default_artifact")
    if default:
        reason = next((a.get("reason") for a in record["artifacts"] if a["name"] == default), None)
        lines.append(f"<p>Shipped default artifact: <b>{_e(default)}</b>" + (f": {_e(reason)}" if reason else "")
                     + "</p>")
    accuracy = record.get("accuracy") or {}
    items = []
    if accuracy.get("probe") is not None and accuracy.get("teacher") is not None:
        items.append(f"linear probe {accuracy['probe']:.2f}% → fine-tuned {accuracy['teacher']:.2f}% test accuracy")
    if accuracy.get("scratch") is not None:
        items.append(f"from scratch (random weights, same budget) {accuracy['scratch']:.2f}% test accuracy")
    transfer = record.get("transfer")
    if transfer and transfer.get("verdict"):
        mark = '<span class="bad">transfer:</span>' if transfer.get("negative_transfer") else "transfer:"
        items.append(f"{mark} {_e(transfer['verdict'])}")
    distill = record.get("distill")
    if distill and distill.get("student_test_accuracy") is not None:
        without = (f"; without the teacher {distill['baseline_test_accuracy']:.2f}%"
                   if distill.get("baseline_test_accuracy") is not None else "")
        relative = (f" ({distill['relative_accuracy']:.1%} of the teacher's {distill['teacher_test_accuracy']:.2f}%)"
                    if distill.get("relative_accuracy") is not None and distill.get("teacher_test_accuracy") is not None
                    else "")
        items.append(f"distilled {_e(distill.get('student'))}: {distill['student_test_accuracy']:.2f}% test "
                     f"accuracy{relative}{without}")
    if items:
        lines.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
    return lines


def _decisions(record: dict[str, Any]) -> list[str]:
    rows = [a for a in record["artifacts"] if a.get("reason") and a.get("status") != "reference"]
    if not rows:
        return []
    order = {"shipped": 0, "lost": 1, "skipped": 2}
    items = [f"<li><b>{_e(a['name'])}</b>: {_e(a['status'])}{' (default)' if a['default'] else ''} - {_e(a['reason'])}"
             "</li>" for a in sorted(rows, key=lambda a: (order.get(a["status"], 3), not a["default"]))]
    return ["<h2>Decisions</h2>", '<ul class="decisions">', *items, "</ul>"]


def _variants(record: dict[str, Any]) -> list[str]:
    artifacts = record["artifacts"]
    if not artifacts:
        return ['<h2>Variants</h2><p class="note">no validated artifact in this record</p>']
    batches = sorted({s["batch_size"] for a in artifacts for s in a["latency"]})
    accuracy = any(a.get("accuracy") is not None for a in artifacts)
    head = ["variant", "model", "runtime"] + (["accuracy %"] if accuracy else []) + ["agreement %"]
    head += [f"b{b} median ms" for b in batches] + ([f"b{batches[-1]} items/s"] if batches else [])
    head += ["size MB", "gate", "status"]
    rows = []
    for a in artifacts:
        stats = {s["batch_size"]: s for s in a["latency"]}
        cells = [_e(a["name"]), _e(a["model"]), _e(a["runtime"])]
        cells += [_num(a.get("accuracy"), ".2f")] if accuracy else []
        cells += [_num(a["agreement"] * 100 if a.get("agreement") is not None else None, ".2f")]
        cells += [_num((stats.get(b) or {}).get("median_ms"), "ms") for b in batches]
        cells += [_num((stats.get(batches[-1]) or {}).get("throughput"), ",.0f")] if batches else []
        cells += [_num(a.get("size_mb"), ".2f"), "pass" if a["passed"] else '<span class="bad">FAIL</span>',
                  _e((a.get("status") or "") + (" (default)" if a["default"] else ""))]
        css = "default" if a["default"] else "shipped" if a.get("status") == "shipped" else (
            "failed" if not a["passed"] else "")
        rows.append((css, cells))
    return ["<h2>Variants</h2>", _table(head, rows)]


def _figure_section(record: dict[str, Any], drawn: Drawn) -> list[str]:
    parts = [f'<section id="{_e(drawn.key)}"><h2>{_e(drawn.title)}</h2>']
    if drawn.svg:
        parts.append(f"<figure>{drawn.svg}</figure>")
    if drawn.note:
        parts.append(f'<p class="note">{_e(drawn.note)}</p>')
    if drawn.key == "sensitivity":
        parts += _kept_layers(record)
    if drawn.key == "confusion" and drawn.svg:
        parts += _worst_classes(record)
    parts.append("</section>")
    return parts


def _kept_layers(record: dict[str, Any]) -> list[str]:
    parts = []
    for search in record.get("quantization") or []:
        layers = search.get("fp32_layers") or []
        if not layers:
            continue
        rows = [("", [str(rank), f"<code>{_e(layer)}</code>"]) for rank, layer in enumerate(layers, start=1)]
        ranked = _e(search.get("ranked_layers") or "?")
        what = f"{len(layers)} of {ranked} layers kept in FP32, most sensitive first"
        parts += [f"<p>{_e(search['artifact'])}: {what}</p>",
                  _table(["rank", "layer"], rows)]
    return parts


def _worst_classes(record: dict[str, Any]) -> list[str]:
    errors = [row for row in class_errors(record["confusion"], record.get("labels") or []) if row["recall"] < 100]
    if not errors:
        return ["<p>Every test sample of every class is right.</p>"]
    rows = [("", [_e(r["class"]), _num(r["samples"], "d"), _num(r["recall"], ".1f"), _num(r["precision"], ".1f"),
                  _e(f"{r['confused_with']} ({r['confused_count']})" if r["confused_with"] else "")])
            for r in errors[:10]]
    return ["<p>The worst classes (lowest recall first):</p>",
            _table(["class", "test samples", "recall %", "precision %", "most often predicted instead"], rows)]


def _targets(record: dict[str, Any]) -> list[str]:
    targets = record.get("targets") or {}
    parts = ["<h2>Per target</h2>"]
    if not targets:
        return [*parts, ('<p class="note">no target results: run <code>edgetl bench BUNDLE --target NAME</code>, '
                         "then <code>edgetl report BUNDLE</code></p>")]
    host = {a["name"]: {s["batch_size"]: s["median_ms"] for s in a["latency"]} for a in record["artifacts"]}
    rows = []
    for name, result in targets.items():
        label = name + (" (emulated)" if result.get("emulated") else "")
        for rt in result.get("runtimes") or []:
            if rt.get("status") != "ok":
                rows.append(("failed", [_e(label), _e(rt.get("runtime")), _e(rt.get("artifact") or ""), "", "", "",
                                        "", "", _e(rt.get("status"))]))
                continue
            validation = rt.get("validation")
            verdict = "no slice" if validation is None else (
                f"pass ({validation['agreement']:.2%})" if validation.get("passed") and validation.get("agreement")
                is not None else "pass" if validation.get("passed") else
                f'<span class="bad">FAIL</span>: {_e("; ".join(validation.get("reasons") or []))}')
            for stats in rt.get("stats") or []:
                here = host.get(rt.get("artifact"), {}).get(stats["batch_size"])
                ratio = stats["median_ms"] / here if here else None
                rows.append(("", [_e(label), _e(rt["runtime"]), _e(rt.get("artifact") or ""), str(stats["batch_size"]),
                                  _num(stats["median_ms"], "ms"), _num(here, "ms"), _num(ratio, ".2f"), verdict,
                                  _e("; ".join(rt.get("budget") or []) or "ok")]))
        if result.get("error"):
            rows.append(("failed", [_e(label), "", "", "", "", "", "", "", _e(result["error"])]))
    parts.append(_table(["target", "runtime", "artifact", "batch", "device median ms", "host median ms",
                         "device / host", "validation on the device", "budget / status"], rows))
    picks = [(name, result.get("choice")) for name, result in targets.items() if result.get("choice")]
    items = [f"<li>{_e(name)}: use {_e(c['artifact'])} on {_e(c['runtime'])} ({c['median_ms']:.3g} ms at batch "
             f"{c['batch_size']})</li>" if c.get("artifact") else
             f"<li>{_e(name)}: nothing to use: {_e(c.get('reason'))}</li>" for name, c in picks]
    if items:
        parts += ["<ul>", *items, "</ul>"]
    dates = sorted({str(r["created"]) for r in targets.values() if r.get("created")})
    if dates:
        parts.append(f'<p class="meta">measured {_e(", ".join(dates))}</p>')
    return parts


def _environment(record: dict[str, Any]) -> list[str]:
    env = record.get("environment") or {}
    if not env:
        return []
    cores = f"{env.get('usable_cores')} usable of {env.get('logical_cores')} logical"
    rows = [("", [_e(key), _e(value)]) for key, value in (
        ("CPU", f"{env.get('cpu')} ({env.get('arch')}), {cores}"),
        ("CPU flags", ", ".join(env.get("cpu_flags") or []) or "none of the relevant ones"),
        ("memory", f"{env['memory_total_mb']:.0f} MB" if env.get("memory_total_mb") else "unknown"),
        ("OS", env.get("os")), ("Python", env.get("python")),
        *((name, version) for name, version in (env.get("versions") or {}).items() if version),
    )]
    stages = record.get("stage_seconds") or {}
    if stages:
        rows.append(("", ["stage seconds", _e(", ".join(f"{k} {v:g}" for k, v in stages.items()))]))
    return [f"<h2>Environment</h2><p>Latencies above were measured on {_e(env.get('source') or 'this machine')}.</p>",
            _table(["", ""], rows)]


def _table(head: Iterable[str], rows: list[tuple[str, list[str]]]) -> str:
    """An HTML table; cells are already escaped HTML, numbers right-aligned (``_num`` marks them)."""
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for css, cells in rows:
        tds = "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in cells)
        body.append(f'<tr class="{css}">{tds}</tr>' if css else f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _num(value: Any, spec: str) -> str:
    """A right-aligned number cell (empty for None); ``spec`` "ms": three significant digits, never exponents."""
    if not isinstance(value, (int, float)):
        return "<td></td>"
    if spec == "ms":
        spec = ".0f" if value >= 100 else ".3g"
    return f'<td class="num">{format(value, spec)}</td>'


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))
