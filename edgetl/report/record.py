"""The report's data: one plain-JSON record gathered from a run folder (``collect``) or a bundle (``from_bundle``).

The record is what ``report.html`` is drawn from and what a bundle ships as ``report.json``, so ``edgetl report
BUNDLE`` redraws the page without the run folder. Every part may be missing (a run of a ``model.source`` has no
training curves, an old run no confusion matrix): the page says so instead of failing.

>>> record = collect(Path("runs/fashion-mnist-lite0"))
>>> record["default_artifact"], [a["name"] for a in record["artifacts"]][:2]
"""

from __future__ import annotations

import json
import re
import statistics
import tarfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import tomllib

from .._io import read_json
from ..errors import BundleError, EdgetlError

RECORD_VERSION = 1
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
TARGETS_DIR = "targets"  # a bundle's saved ``bench --target`` results, one <target>.json each (not checksummed)
SUMMARY_FILE = "summary.json"

# Training histories of a run folder: (record key, metrics file under the run folder).
TRAINING_FILES = (
    ("finetune", "finetune/metrics.json"),  # linear probe, then the unfreeze stages
    ("scratch", "scratch/metrics.json"),  # finetune.scratch_baseline: the backbone from random weights
    ("distill", "distill/metrics.json"),  # the student, taught by the teacher
    ("no_teacher", "distill/baseline/metrics.json"),  # the ablation: the same student without the teacher
)
_BUNDLE_FILES = (REPORT_JSON, "manifest.json", "labels.json", "recipe.toml")  # what ``from_bundle`` reads
_HISTORY_KEYS = ("stage", "groups", "epoch", "train_loss", "train_accuracy", "val_accuracy", "lr")
_LATENCY_KEYS = ("batch_size", "median_ms", "p90_ms", "p99_ms", "throughput", "median_rel_ci")


def collect(run_dir: Path, summary: dict | None = None) -> dict[str, Any]:
    """The report record of a run folder (``runs/<name>/``): its artifacts with their validation, latency, size
    and the selection's decision; training histories; the accuracy-aware search's layers; the shipped default
    artifact's confusion matrix; the gate; the race; and where the latencies were measured.

    ``summary``: the run's summary (what ``edgetl run`` returns); None reads ``summary.json``.
    """
    run_dir = Path(run_dir)
    if summary is None:
        if not (run_dir / SUMMARY_FILE).is_file():
            raise EdgetlError(f"{run_dir} has no {SUMMARY_FILE}: finish the run with `edgetl run` first, or give a "
                              "bundle folder or .tar.gz")
        summary = read_json(run_dir / SUMMARY_FILE)
    decisions: dict[str, dict[str, Any]] = summary.get("decisions") or {}
    default = summary.get("default_artifact") or next(
        (name for name, d in decisions.items() if d.get("default")), None)
    artifacts, exports = _run_artifacts(run_dir, summary, decisions, default)
    recipe = _read_toml(run_dir / "recipe.toml")
    gate = recipe.get("validate", {}).get("gate") or next((a["gate"] for a in artifacts if a.get("gate")), {})
    distill = summary.get("distill") or {}
    record = {
        "format": RECORD_VERSION,
        "source": "run",
        "run": summary.get("run") or run_dir.name,
        "task": summary.get("task"),
        "created": _now(),
        "default_artifact": default,
        "bundle": summary.get("bundle"),
        "labels": _labels(exports, default),
        "gate": gate,
        "quantize_gate": {k: recipe.get("quantize", {}).get(k) for k in ("min_agreement", "max_accuracy_drop")},
        "min_relative_accuracy": recipe.get("distill", {}).get("min_relative_accuracy"),
        "artifacts": artifacts,
        "accuracy": {
            "probe": summary.get("probe_test_accuracy"),
            "teacher": summary.get("test_accuracy"),
            "student": distill.get("student_test_accuracy"),
            "no_teacher": distill.get("baseline_test_accuracy"),
            "scratch": (summary.get("transfer") or {}).get("scratch"),
        },
        "transfer": summary.get("transfer") or _transfer_from(run_dir),
        "distill": distill or None,
        "training": _training(run_dir),
        "quantization": _quantization(exports),
        "confusion": _confusion(artifacts, default),
        "race": _race(run_dir),
        "environment": _environment(artifacts),
        "stage_seconds": summary.get("stage_seconds"),
        "seconds": summary.get("seconds"),
        "notes": [],
    }
    return _slim(record)


def from_bundle(root: Path, *, read=None) -> dict[str, Any]:
    """The record a bundle folder ships (``report.json``), or, for a bundle shipped without one, what its manifest
    says: the shipped artifacts' validation and latency, nothing about training or the artifacts that lost.

    ``read(rel) -> bytes | None`` reads a file of the bundle (an archive member); default: from the folder."""
    read = read or (lambda rel: (root / rel).read_bytes() if (root / rel).is_file() else None)
    shipped = read(REPORT_JSON)
    if shipped is not None:
        try:
            record = json.loads(shipped)
        except ValueError as exc:
            raise BundleError(f"{root}/{REPORT_JSON} does not load ({exc}); re-ship the bundle with `edgetl ship`")
        record["source"] = "bundle"
        return record
    manifest_bytes = read("manifest.json")
    if manifest_bytes is None:
        raise BundleError(f"{root} has no manifest.json: not a bundle; give a bundle folder or .tar.gz made by "
                          "`edgetl ship`, or a run folder")
    manifest = json.loads(manifest_bytes)
    labels_bytes = read("labels.json")
    default = manifest.get("default_artifact")
    artifacts = []
    for name, entry in (manifest.get("artifacts") or {}).items():
        artifacts.append(_artifact(name, entry.get("validation") or {}, entry.get("benchmark"),
                                   {"format": entry.get("format"), "runtime": entry.get("runtime")},
                                   {"status": "shipped", "default": name == default}))
    recipe = tomllib.loads(read("recipe.toml").decode()) if read("recipe.toml") else {}
    gate = recipe.get("validate", {}).get("gate") or next((a["gate"] for a in artifacts if a.get("gate")), {})
    record = {
        "format": RECORD_VERSION, "source": "bundle", "run": manifest.get("name") or root.name,
        "task": manifest.get("kind"), "created": manifest.get("created_utc"), "default_artifact": default,
        "bundle": str(root), "labels": json.loads(labels_bytes) if labels_bytes else [], "gate": gate,
        "quantize_gate": {}, "min_relative_accuracy": None, "artifacts": artifacts, "accuracy": {},
        "transfer": None, "distill": None, "training": {}, "quantization": [],
        "confusion": _confusion(artifacts, default), "race": None, "environment": _environment(artifacts),
        "stage_seconds": None, "seconds": None,
        "notes": [(f"this bundle carries no {REPORT_JSON} (shipped before reports): only its shipped artifacts are "
                   "shown; run `edgetl report runs/<name>` for the whole run")],
    }
    return _slim(record)


def archive_reader(archive: Path):
    """``read(rel) -> bytes | None`` over the files ``from_bundle`` reads in the bundle folder inside a ``.tar.gz``
    (read into memory once; nothing is extracted to disk)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                rel = "/".join(PurePosixPath(member.name).parts[1:])
                handle = tar.extractfile(member) if member.isfile() and rel in _BUNDLE_FILES else None
                if handle is not None:
                    found[rel] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"cannot read bundle archive {archive} ({exc}); copy it again or re-ship it with "
                          "`edgetl ship`") from None
    return found.get


def saved_targets(bundle_dir: Path | None) -> dict[str, dict[str, Any]]:
    """The ``bench --target`` results saved under a bundle folder's ``targets/`` (``edgetl.bench.remote``), by
    target name; {} when there are none."""
    if bundle_dir is None or not (Path(bundle_dir) / TARGETS_DIR).is_dir():
        return {}
    found = {}
    for path in sorted((Path(bundle_dir) / TARGETS_DIR).glob("*.json")):
        try:
            data = read_json(path)
        except (OSError, ValueError):
            continue  # a half-copied file: the others still show
        target = data.get("target") if isinstance(data, dict) else None
        if isinstance(target, dict) and target.get("target"):
            found[target["target"]] = {**target, "created": data.get("created"), "choice": data.get("choice")}
    return found


def target_file_name(target: str) -> str:
    """``targets/<name>.json`` for a target name (anything but letters, digits, '.', '_' and '-' becomes '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", target) + ".json"


def class_errors(confusion: dict[str, Any], labels: list[str]) -> list[dict[str, Any]]:
    """Per class of a confusion matrix (rows true, columns predicted): samples, recall, precision and the class
    it is most often mistaken for; the worst recall first."""
    matrix = confusion["matrix"]
    width = len(matrix)
    names = labels if len(labels) == width else [f"class {i}" for i in range(width)]
    predicted = [sum(row[j] for row in matrix) for j in range(width)]
    rows = []
    for i, row in enumerate(matrix):
        total = sum(row)
        if not total:
            continue
        wrong = [(count, j) for j, count in enumerate(row) if j != i and count]
        count, j = max(wrong) if wrong else (0, None)
        rows.append({"class": names[i], "samples": total, "recall": 100.0 * row[i] / total,
                     "precision": 100.0 * row[i] / predicted[i] if predicted[i] else None,
                     "confused_with": names[j] if j is not None else None, "confused_count": count})
    return sorted(rows, key=lambda r: (r["recall"], -r["samples"]))


# -- a run folder's parts ------------------------------------------------------------------------------------
def _run_artifacts(run_dir: Path, summary: dict, decisions: dict, default: str | None
                   ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(every validated artifact in the run table's order, their export records by name)."""
    folder = run_dir / "artifacts"
    order = list(dict.fromkeys(row["variant"] for row in summary.get("variants") or []))
    present = sorted(p.name for p in folder.iterdir() if (p / "validation.json").is_file()) if folder.is_dir() else []
    artifacts, exports = [], {}
    for name in order + [n for n in present if n not in order]:
        if name not in present:
            continue
        validation = _record(folder / name / "validation.json", "report")
        bench = _record(folder / name / "benchmark.json", "result")
        export = _record(folder / name / "export.json", None)
        exports[name] = export or {}
        decision = {**decisions.get(name, {}), "default": name == default}
        artifact = _artifact(name, validation or {}, bench, export or {}, decision)
        rows = [row for row in summary.get("variants") or [] if row.get("variant") == name and row.get("median_ms")]
        if not artifact["latency"] and rows:  # no benchmark record (remeasured since): the summary's table rows
            artifact["latency"] = [{"batch_size": row.get("batch"), **{k: row.get(k) for k in _LATENCY_KEYS[1:]}}
                                   for row in rows]
            artifact["size_mb"] = artifact["size_mb"] or rows[0].get("size_mb")
        artifacts.append(artifact)
    return artifacts, exports


def _record(path: Path, key: str | None) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data.get(key) if key else data


def _artifact(name: str, validation: dict, bench: dict | None, export: dict, decision: dict) -> dict[str, Any]:
    """One artifact's row: what the page and the figures need, nothing else."""
    bench = bench or {}
    size = bench.get("model_size_bytes")
    runtime = validation.get("runtime") or bench.get("runtime") or export.get("runtime")
    fmt = export.get("format") or ("torch" if (runtime or "").startswith("torch") else None)
    return {
        "name": name,
        "model": validation.get("model") or ("student" if name.startswith("student-") else "teacher"),
        "format": fmt,
        "method": export.get("method"),
        "runtime": runtime,
        "output": validation.get("output", "logits"),
        "accuracy": validation.get("accuracy"),
        "reference_accuracy": validation.get("reference_accuracy"),
        "agreement": validation.get("agreement"),
        "teacher_agreement": validation.get("teacher_agreement"),
        "macro_f1": validation.get("macro_f1"),
        "mean_cosine": validation.get("mean_cosine"),
        "mean_relative_error": validation.get("mean_relative_error"),
        "samples": validation.get("samples"),
        "passed": validation.get("passed"),
        "reasons": validation.get("reasons") or [],
        "status": decision.get("status"),
        "default": bool(decision.get("default")),
        "reason": decision.get("reason"),
        "size_mb": size / 1e6 if size else None,
        "latency": [{k: s.get(k) for k in _LATENCY_KEYS} for s in bench.get("stats") or [] if s.get("median_ms")],
        "environment": bench.get("environment"),
        "confusion": validation.get("confusion"),
        "gate": validation.get("gate"),
    }


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    """The record without what its artifacts carried only to fill it: the confusion matrix (kept once, for the
    default artifact), the gate and the machine facts (kept once each)."""
    for artifact in record["artifacts"]:
        for key in ("confusion", "gate", "environment"):
            artifact.pop(key, None)
    return record


def _labels(exports: dict[str, dict], default: str | None) -> list[str]:
    """The class names, from the export metadata every artifact carries (the default artifact's first)."""
    for name in [default, *exports]:
        labels = ((exports.get(name) or {}).get("metadata") or {}).get("labels")
        if isinstance(labels, str):
            try:
                labels = json.loads(labels)
            except ValueError:
                continue
        if isinstance(labels, list) and labels:
            return [str(label) for label in labels]
    return []


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _training(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    histories = {}
    for key, rel in TRAINING_FILES:
        rows = _record(run_dir / rel, None) if (run_dir / rel).is_file() else None
        if isinstance(rows, list) and rows:
            histories[key] = [{k: row.get(k) for k in _HISTORY_KEYS if k in row} for row in rows]
    return histories


def _transfer_from(run_dir: Path) -> dict[str, Any] | None:
    """A run summarised before ``transfer`` was recorded: the verdict from its fine-tune result."""
    result = _record(run_dir / "finetune" / "result.json", None)
    if not result or result.get("test_accuracy") is None:
        return None
    from ..pipeline.transfer import transfer_verdict

    return transfer_verdict(result.get("probe_test_accuracy"), result["test_accuracy"],
                            kept_probe=result.get("best_stage") == "probe",
                            probe_val=result.get("probe_val_accuracy"))


def _quantization(exports: dict[str, dict]) -> list[dict[str, Any]]:
    """The accuracy-aware searches: which layers stayed FP32 (most sensitive first) and, where recorded, what
    quantizing each layer alone cost."""
    found = []
    for name, export in exports.items():
        settings = export.get("settings") or {}
        if "fp32_layers" not in settings:
            continue
        found.append({
            "artifact": name, "method": export.get("method"),
            "fp32_layers": settings["fp32_layers"], "ranked_layers": settings.get("ranked_layers"),
            "layer_costs": settings.get("layer_costs"),  # [{layer, agreement, mean_kl}] most costly first
            "all_int8_agreement": settings.get("all_int8_agreement"), "agreement": settings.get("agreement"),
            "all_int8_accuracy_drop": settings.get("all_int8_accuracy_drop"),
            "accuracy_drop": settings.get("accuracy_drop"), "min_agreement": settings.get("min_agreement"),
            "validation_samples": settings.get("validation_samples"),
        })
    return found


def _confusion(artifacts: list[dict[str, Any]], default: str | None) -> dict[str, Any] | None:
    for artifact in artifacts:
        if artifact["name"] == default and artifact.get("confusion"):
            return {"artifact": default, "runtime": artifact["runtime"], "samples": artifact.get("samples"),
                    "matrix": artifact["confusion"]}
    return None


def _race(run_dir: Path) -> dict[str, Any] | None:
    race = _record(run_dir / "race.json", "result")
    if not race or not race.get("times_ms"):
        return None
    return {"batch_size": race.get("batch_size"), "rounds": race.get("rounds"),
            "median_ms": {name: statistics.median(times) for name, times in race["times_ms"].items() if times}}


def _environment(artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the latencies were measured (the benchmark records' machine), or this machine when none was."""
    for artifact in artifacts:
        if artifact.get("environment"):
            return {**artifact["environment"], "source": "the machine that ran the benchmarks"}
    from ..bench import environment

    return {**environment(), "source": "the machine that wrote this report (no benchmark record)"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
