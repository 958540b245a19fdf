"""The bundle's model card (README.md): what the model is, how well and how fast each artifact runs, how to use it.

Wording about the model's input comes from the preprocessing's ``card_fields()``: ``task``, ``description``,
``samples`` (plural noun: "images"), ``input`` (the input line), ``steps`` (the preprocessing), ``example`` (a sample
for the command line), ``example_code`` (the same in Python), ``needs`` (the packages to install), ``not_needed``
("no torch") and ``unlike`` (what accuracy is not promised on). The caller's ``card`` dict can override the task,
description, intended use and limitations.
"""

from __future__ import annotations

from typing import Any

from .manifest import BundlePreprocess

# Card keys with their own place in the README; other keys go under "Other results" or "Other details".
_CARD_PLACED = {"description", "backbone", "task", "dataset", "dataset_license", "weights_license", "intended_use",
                "limitations", "exporter"}
_ACCURACY_KEYS = ("accuracy", "macro_f1", "agreement", "accuracy_drop")
_LATENCY_KEYS = ("target", "device", "runtime", "threads", "batch_size", "median_ms", "mean_ms", "p90_ms", "p99_ms",
                 "throughput", "peak_rss_mb")
_DEFAULT_LIMITS = ("Accuracy was measured on held-out data from the training distribution only; expect less on "
                   "{unlike}. Every input is forced into one of the classes. Check on your own data first.")


def render_card(manifest: dict[str, Any], labels: list[str], preprocess: BundlePreprocess, card: dict[str, Any]) -> str:
    """The bundle's README.md from its manifest, labels, preprocessing and the caller's ``card`` details."""
    name, artifacts, default = manifest["name"], manifest["artifacts"], manifest["default_artifact"]
    fields = preprocess.card_fields()
    classes = ", ".join(labels[:40]) + (f", … ({len(labels) - 40} more)" if len(labels) > 40 else "")
    overview = [
        ["Backbone", card.get("backbone", "not recorded")],
        ["Task", card.get("task", fields["task"])],
        ["Classes", f"{len(labels)}: {classes}"],
        ["Input", fields["input"]],
        ["Preprocessing", f"{fields['steps']} (preprocess.json)"],
        ["Default artifact", f"{default} ({artifacts[default]['runtime']})"],
        ["Built", f"{manifest['created_utc']}, edgetl {manifest['edgetl_version']}, recipe {manifest['recipe_hash']}"
                  + (f", data sha256 {manifest['data_sha256'][:16]}" if manifest.get("data_sha256") else "")],
    ]
    accuracy = [
        [n, e["format"], e["runtime"], *(e["validation"].get(k) for k in _ACCURACY_KEYS),
         "passed" if e["validation"].get("passed") else "failed"]
        for n, e in artifacts.items()
    ]
    results = {k: v for k, v in card.items() if k not in _CARD_PLACED and ("accuracy" in k or "f1" in k)}
    latency = [{"artifact": n, **row} for n, e in artifacts.items() for row in _bench_rows(e.get("benchmark"))]
    columns = [key for key in ("artifact", *_LATENCY_KEYS) if any(key in row for row in latency)]
    other = [[k, v] for k, v in card.items() if k not in _CARD_PLACED and k not in results]

    lines = [f"# {name}", "", str(card.get("description") or fields["description"]), ""]
    lines += _table(["", ""], overview)
    lines += ["", "## Accuracy", "", "Held-out accuracy of each artifact, and its agreement with the reference.", ""]
    lines += _table(["Artifact", "Format", "Runtime", "Accuracy %", "Macro-F1 %", "Agreement", "Drop (points)",
                     "Gate"], accuracy)
    lines += ["", *(f"- {key}: {_fmt(value)}" for key, value in results.items())] if results else []
    lines += ["", "## Latency", ""]
    lines += _table(columns, [[row.get(c) for c in columns] for row in latency]) if latency else [
        "No benchmark recorded; `edgetl bench` measures these artifacts on your targets."]
    lines += [
        "", "## Data and licences", "",
        f"- Training data: {card.get('dataset', 'not recorded')}",
        f"- Data licence: {card.get('dataset_license', 'not recorded')}",
        f"- Weights licence: {card.get('weights_license', 'not recorded')}",
        *([f"- Exported with: {card['exporter']}"] if card.get("exporter") else []),
        "", "## How to run", "", f"Needs {fields['needs']}; {fields['not_needed']}.", "", "```bash",
        f"edgetl verify {name}.tar.gz     # checksums, labels, preprocessing, one test inference per artifact",
        f"edgetl predict {name}/ {fields['example']}                          # top-3 labels, default artifact",
        f"edgetl predict {name}/ {fields['example']} --runtime openvino:CPU",
        "```", "", "```python", "from edgetl.predict import load_bundle", "",
        f"print(load_bundle(\"{name}\").predict([{fields['example_code']}], top_k=3))", "```",
        "", "## Intended use and limitations", "",
        str(card.get("intended_use") or f"Sorting {fields['samples']} into the {len(labels)} classes above."),
        "", str(card.get("limitations") or _DEFAULT_LIMITS.format(unlike=fields["unlike"])),
    ]
    lines += ["", "## Other details", "", *_table(["", ""], other)] if other else []
    return "\n".join(lines) + "\n"


def _bench_rows(benchmark: Any) -> list[dict[str, Any]]:
    """Benchmark JSON as table rows: a BenchResult dict ("stats" per batch size), {target: result}, or flat."""
    if not isinstance(benchmark, dict) or not benchmark:
        return []
    for key in ("stats", "results"):
        if isinstance(benchmark.get(key), list):
            context = {k: benchmark[k] for k in ("target", "runtime", "threads") if k in benchmark}
            cpu = (benchmark.get("environment") or {}).get("cpu")
            context.update({"device": cpu} if cpu else {})
            return [{**context, **row} for row in benchmark[key] if isinstance(row, dict)]
    if all(isinstance(value, dict) for value in benchmark.values()):
        return [{"target": target, **row} for target, value in benchmark.items() for row in _bench_rows(value)]
    return [benchmark]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows),
    ]
