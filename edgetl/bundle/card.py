"""The bundle's model card (README.md): what the model is, how well and how fast each artifact runs, how to use it.

It opens with YAML front matter in the Hugging Face model card format (``card_metadata``: licence, tags, dataset,
pipeline tag and a model-index of the measured test metrics), so the bundle folder can be pushed to a model hub as
it is. "How to run" shows the bundle's own ``predict.py`` first (no edgetl needed), then ``edgetl``.

Wording about the model's input comes from the preprocessing's ``card_fields()``: ``task``, ``description``,
``samples`` (plural noun: "images"), ``input`` (the input line), ``steps`` (the preprocessing), ``example`` (a sample
for the command line), ``example_code`` (the same in Python), ``needs`` (the packages to install), ``not_needed``
("no torch") and ``unlike`` (what accuracy is not promised on). The caller's ``card`` dict can override the task,
description, intended use and limitations. What differs between a classifier, an embedding model and a regression
model (manifest ``output``) is data: ``_WORDING``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ..validate import OUTPUT_KINDS
from .card_metadata import card_metadata, front_matter
from .manifest import PREDICT_SCRIPT, REPORT_FILE, BundlePreprocess
from .predict_script import FORMATS_FOR_BACKEND, NEEDS, RUNTIME_PACKAGES

# Card keys with their own place in the README; other keys go under "Other results" or "Other details".
_CARD_PLACED = {"description", "backbone", "task", "dataset", "dataset_id", "dataset_license", "weights_license",
                "intended_use", "limitations", "exporter", "transfer", "shipped_because"}
_SIX_DECIMALS = {"mean_cosine", "min_cosine"}
_LATENCY_KEYS = ("target", "device", "runtime", "threads", "batch_size", "median_ms", "mean_ms", "p90_ms", "p99_ms",
                 "throughput", "peak_rss_mb")


@dataclass(frozen=True)
class _Wording:
    """What the card says for one kind of model output (manifest ``output``). Texts take ``{samples}``, ``{sample}``,
    ``{count}`` (labels, the embedding dimension or the number of values), ``{unlike}``, ``{name}`` and
    ``{example}``."""

    heading: str  # the title of the section on each artifact's validation
    intro: str
    columns: tuple[tuple[str, str], ...]  # (header, validation report key), in order
    optional: tuple[str, ...]  # report keys whose column is shown only when some artifact's report has them
    cli_note: str  # the comment on the `edgetl predict` example
    python: str
    intended_use: str
    limitations: str
    output_row: str = ""  # the overview's "Output" row; "": a "Classes" row listing the labels
    task: str = ""  # the task and description lines, when the preprocessing's (a classifier's) do not fit
    description: str = ""


_WORDING = {
    "logits": _Wording(
        "Accuracy", "Held-out accuracy of each artifact, and its agreement with the reference.",
        (("Accuracy %", "accuracy"), ("Macro-F1 %", "macro_f1"), ("Agreement", "agreement"),
         ("Drop (points)", "accuracy_drop")), (),
        "top-3 labels, default artifact", 'print(load_bundle("{name}").predict([{example}], top_k=3))',
        "Sorting {samples} into the {count} classes above.",
        "Accuracy was measured on held-out data from the training distribution only; expect less on {unlike}. "
        "Every input is forced into one of the classes. Check on your own data first."),
    "embedding": _Wording(
        "Agreement with the reference",
        "Each artifact's embeddings on held-out data against the reference model's: cosine similarity (mean, and "
        "the worst sample) and nearest-neighbour agreement (the share of samples whose nearest other sample is the "
        "same under both).",
        (("NN agreement", "agreement"), ("Mean cosine", "mean_cosine"), ("Min cosine", "min_cosine")),
        ("mean_cosine", "min_cosine"),
        "dimension, L2 norm and first values, default artifact",
        'print(load_bundle("{name}").embed([{example}]).shape)  # (1, {count})',
        "Turning {samples} into {count}-dim vectors for similarity search, clustering or as features.",
        "The embeddings were compared with the reference model's on held-out data only; expect other behaviour on "
        "{unlike}. Check on your own data first.",
        "{count}-dim embedding", "{sample} embedding", "{Sample} embedding model shipped by edgetl."),
    "regression": _Wording(
        "Agreement with the reference",
        "Each artifact's values on held-out data against the reference model's: each sample's relative error "
        "‖y − y_ref‖ / ‖y_ref‖ (the denominator at least 1e-3 of the references' RMS; mean, 99th percentile and "
        "worst sample) and the share of samples within the gate's tolerance.",
        (("Within tolerance", "agreement"), ("Mean rel. error", "mean_relative_error"),
         ("p99 rel. error", "p99_relative_error"), ("Max rel. error", "max_relative_error")),
        ("mean_relative_error", "p99_relative_error", "max_relative_error"),
        "the values, default artifact",
        'print(load_bundle("{name}").predict([{example}]))  # float32 (1, {count})',
        "Estimating {count} real value(s) per {sample} (a score, an age, a measurement).",
        "The values were compared with the reference model's on held-out data only: how close the reference itself "
        "is to the truth was not measured here. Expect other behaviour on {unlike}. Check on your own data first.",
        "{count} real value(s)", "{sample} regression", "{Sample} regression model shipped by edgetl."),
}


def render_card(manifest: dict[str, Any], labels: list[str], preprocess: BundlePreprocess, card: dict[str, Any],
                files: Collection[str] = ()) -> str:
    """The bundle's README.md from its manifest, labels, preprocessing and the caller's ``card`` details: YAML front
    matter in the Hugging Face model card format (``card_metadata``), then the card. ``files``: the bundle's other
    files, by bundle-relative name; the card shows how to run ``predict.py`` and links ``report.html`` when they are
    among them."""
    name, artifacts, default = manifest["name"], manifest["artifacts"], manifest["default_artifact"]
    fields = preprocess.card_fields()
    kind = manifest.get("output", "logits")
    wording = _WORDING[kind]
    samples = fields["samples"]
    count = manifest.get(OUTPUT_KINDS.get(kind).width_key) if wording.output_row else len(labels)
    sample = samples.removesuffix("s")
    words = {"samples": samples, "sample": sample, "Sample": sample.capitalize(), "count": count,
             "unlike": fields["unlike"], "name": name, "example": fields["example_code"]}
    if wording.output_row:  # the preprocessing's wording is a classifier's
        fields = {**fields, "task": wording.task.format(**words), "description": wording.description.format(**words)}
        what = ["Output", wording.output_row.format(**words)]
    else:
        classes = ", ".join(labels[:40]) + (f", … ({len(labels) - 40} more)" if len(labels) > 40 else "")
        what = ["Classes", f"{len(labels)}: {classes}"]
    overview = [
        ["Backbone", card.get("backbone", "not recorded")],
        ["Task", card.get("task", fields["task"])],
        what,
        ["Input", fields["input"]],
        ["Preprocessing", f"{fields['steps']} (preprocess.json)"],
        ["Default artifact", f"{default} ({artifacts[default]['runtime']})"],
        ["Built", f"{manifest['created_utc']}, edgetl {manifest['edgetl_version']}, recipe {manifest['recipe_hash']}"
                  + (f", data sha256 {manifest['data_sha256'][:16]}" if manifest.get("data_sha256") else "")],
    ]
    columns_shown = [(header, key) for header, key in wording.columns
                     if key not in wording.optional or any(e["validation"].get(key) is not None
                                                           for e in artifacts.values())]
    accuracy = [
        [n, e["format"], e["runtime"], *(_cell(key, e["validation"].get(key)) for _, key in columns_shown),
         "passed" if e["validation"].get("passed") else "failed"]
        for n, e in artifacts.items()
    ]
    measured = [k for k in card if k not in _CARD_PLACED and ("accuracy" in k or "f1" in k)]
    # A measure the run did not take (e.g. no ablation) is left out, not printed as "–".
    results = {k: card[k] for k in measured if card[k] is not None}
    latency = [{"artifact": n, **row} for n, e in artifacts.items() for row in _bench_rows(e.get("benchmark"))]
    columns = [key for key in ("artifact", *_LATENCY_KEYS) if any(key in row for row in latency)]
    other = [[k, v] for k, v in card.items() if k not in _CARD_PLACED and k not in measured]
    task = str(overview[1][1])

    lines = [*front_matter(card_metadata(manifest, card, task)), ""]
    lines += [f"# {name}", "", str(card.get("description") or fields["description"]), ""]
    lines += _table(["", ""], overview)
    if REPORT_FILE in files:
        lines += ["", (f"The accuracy–latency trade-off of every artifact the run made, with plots: [{REPORT_FILE}]"
                       f"({REPORT_FILE}) (one self-contained page; open it in a browser).")]
    lines += ["", f"## {wording.heading}", "", wording.intro, ""]
    lines += _table(["Artifact", "Format", "Runtime", *(header for header, _ in columns_shown), "Gate"], accuracy)
    lines += ["", *(f"- {key}: {_fmt(value)}" for key, value in results.items())] if results else []
    lines += _transfer_lines(card.get("transfer"))
    lines += ["", "## Latency", ""]
    lines += _table(columns, [[row.get(c) for c in columns] for row in latency]) if latency else [
        "No benchmark recorded; `edgetl bench` measures these artifacts on your targets."]
    if card.get("shipped_because"):  # the run's decision for each shipped artifact, with the latency ratio behind it
        lines += ["", "Why these artifacts:", "", *(f"- {n}: {why}" for n, why in card["shipped_because"].items())]
    lines += [
        "", "## Data and licences", "",
        f"- Training data: {card.get('dataset', 'not recorded')}",
        f"- Data licence: {card.get('dataset_license', 'not recorded')}",
        f"- Weights licence: {card.get('weights_license', 'not recorded')}",
        *([f"- Exported with: {card['exporter']}"] if card.get("exporter") else []),
        "", "## How to run", "", f"Needs {fields['needs']}; {fields['not_needed']}.", "",
        *(_script_lines(manifest, preprocess.kind, fields["example"], wording.cli_note) if PREDICT_SCRIPT in files
          else []),
        "```bash",
        f"edgetl verify {name}.tar.gz     # checksums, labels, preprocessing, one test inference per artifact",
        f"edgetl predict {name}/ {fields['example']}                          # {wording.cli_note}",
        f"edgetl predict {name}/ {fields['example']} --runtime openvino:CPU",
        "```", "", "```python", "from edgetl.predict import load_bundle", "",
        wording.python.format(**words), "```",
        "", "## Intended use and limitations", "",
        str(card.get("intended_use") or wording.intended_use.format(**words)),
        "", str(card.get("limitations") or wording.limitations.format(**words)),
    ]
    lines += ["", "## Other details", "", *_table(["", ""], other)] if other else []
    return "\n".join(lines) + "\n"


def _script_lines(manifest: dict[str, Any], kind: str, example: str, note: str) -> list[str]:
    """How to run the bundle's own predict.py: what to install, then the command lines, the default artifact first
    and another runtime's after it when the bundle has an artifact that runtime opens."""
    artifacts = manifest["artifacts"]
    runtime = RUNTIME_PACKAGES[artifacts[manifest["default_artifact"]]["format"]]
    others = [backend for backend, formats in FORMATS_FOR_BACKEND.items()
              if backend != runtime and any(e["format"] in formats for e in artifacts.values())]
    return [
        f"`{PREDICT_SCRIPT}` in this folder runs it without edgetl:", "", "```bash",
        f"pip install {' '.join(NEEDS[kind])} {runtime}",
        f"python {PREDICT_SCRIPT} {example}                          # {note}",
        *(f"python {PREDICT_SCRIPT} {example} --runtime {backend}" for backend in others),
        "```", "", "With edgetl installed:", "",
    ]


def _transfer_lines(transfer: dict[str, Any] | None) -> list[str]:
    """The "Transfer learning" section: the fine-tuned backbone against a linear probe on its frozen pre-trained
    features and against the same backbone trained from random weights, with the run's verdict (none: a model
    edgetl did not fine-tune)."""
    if not transfer:
        return []
    scratch = transfer.get("scratch")
    rows = [["Linear probe (a new head on the frozen pre-trained features)", transfer.get("probe")],
            ["Fine-tuned pre-trained backbone", transfer["finetuned"]],
            ["Same backbone trained from random weights, same budget",
             scratch if scratch is not None else "not trained (finetune.scratch_baseline = false)"]]
    verdict = transfer["verdict"]
    intro = ("Did starting from pre-trained weights pay? Test accuracy of the fine-tuned backbone against two "
             "baselines on the same held-out data.")
    return ["", "## Transfer learning", "", intro, "",
            *_table(["", "Test accuracy %"], rows), "",
            f"**Verdict: {verdict}.**" if transfer.get("negative_transfer") else f"Verdict: {verdict}."]


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


def _cell(key: str, value: Any) -> Any:
    # Cosine similarities of a good artifact sit just below 1, where 4 significant digits would all read "1".
    return f"{value:.6f}" if key in _SIX_DECIMALS and isinstance(value, float) else value


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
