"""The model card's YAML front matter, in the Hugging Face model card format, so a bundle can be pushed to a model
hub as it is: ``library_name``, ``license``, ``tags``, ``datasets``, ``pipeline_tag`` and a ``model-index`` with
the measured test metrics of every shipped artifact (and of the FP32 models before export, when the run measured
them).

The spec: https://huggingface.co/docs/hub/model-cards#model-card-metadata (``huggingface_hub.ModelCardData`` parses
it). The YAML is written by hand (edgetl does not depend on a YAML library): block style, identifier-like strings
plain, every other string a JSON string, which is a valid YAML double-quoted scalar.
"""

from __future__ import annotations

import json
import math
import re
from numbers import Integral, Real
from typing import Any

# Licence ids the Hugging Face hub knows (https://huggingface.co/docs/hub/repositories-licenses), by the SPDX-ish
# name a card records (lower-cased); anything else is "unknown" (the card's text still says it in full).
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "cc0-1.0", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0",
    "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "mpl-2.0", "epl-2.0", "isc",
    "unlicense", "zlib", "openrail", "odc-by", "odbl", "pddl", "wtfpl", "artistic-2.0", "bsl-1.0", "ecl-2.0",
})
# Hub dataset ids of the datasets edgetl knows, by how a card's "dataset" starts; a card may give "dataset_id".
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "banking77": "PolyAI/banking77"}
# The hub's pipeline_tag for a card's task (overview "Task"); a task not listed has none (regression).
PIPELINE_TAGS = {"image classification": "image-classification", "text classification": "text-classification",
                 "text embedding": "feature-extraction", "image embedding": "image-feature-extraction"}
# Card keys with a test accuracy measured before export, and how the model-index names them.
MODEL_ACCURACIES = {
    "test_accuracy": "Test accuracy % of the {model} model before export",
    "student_test_accuracy": "Test accuracy % of the distilled student before export",
}
_PRECISIONS = ("int8", "fp16", "fp32")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")  # a key or string YAML reads as the same string
_YAML_WORDS = {"yes", "no", "on", "off", "true", "false", "null"}  # plain, YAML 1.1 reads them as booleans or null


def card_metadata(manifest: dict[str, Any], card: dict[str, Any], task: str) -> dict[str, Any]:
    """The front matter's fields for a bundle's manifest, the caller's ``card`` details and the card's ``task``
    words ("image classification")."""
    artifacts: dict[str, Any] = manifest["artifacts"]
    default = artifacts[manifest["default_artifact"]]
    pipeline_tag = PIPELINE_TAGS.get(task)
    formats = sorted({entry["format"] for entry in artifacts.values()})
    precisions = [p for p in _PRECISIONS if any(p in name for name in artifacts)]
    tags = ["edgetl", *formats, *precisions, pipeline_tag or _slug(task)]
    tags += ["knowledge-distillation"] if card.get("student_test_accuracy") is not None else []
    dataset_id = card.get("dataset_id") or next(
        (hub_id for prefix, hub_id in HUB_DATASETS.items() if str(card.get("dataset", "")).startswith(prefix)), None)
    data: dict[str, Any] = {
        "library_name": default["format"],
        "license": license_id(card.get("weights_license")),
        "tags": tags,
        **({"datasets": [dataset_id]} if dataset_id else {}),
        **({"pipeline_tag": pipeline_tag} if pipeline_tag else {}),
        **({"base_model": manifest["source_model"]["hub_id"]}
           if isinstance(manifest.get("source_model"), dict) and manifest["source_model"].get("hub_id") else {}),
    }
    metrics = _metrics(artifacts, card)
    if metrics:
        dataset_name = str(card.get("dataset") or "held-out test split")
        data["model-index"] = [{"name": manifest["name"], "results": [{
            "task": {"type": pipeline_tag or _slug(task), "name": task[:1].upper() + task[1:]},
            "dataset": {"name": dataset_name, "type": dataset_id or _slug(dataset_name), "split": "test"},
            "metrics": metrics,
        }]}]
    return data


def license_id(text: Any) -> str:
    """The hub's licence id for a card's licence text: "Apache-2.0" -> "apache-2.0", "BSD-3-Clause (torchvision)"
    -> "bsd-3-clause"; "unknown" for anything else."""
    candidate = str(text or "").split(" (")[0].strip().lower()
    return candidate if candidate in HUB_LICENSES else "unknown"


def _metrics(artifacts: dict[str, Any], card: dict[str, Any]) -> list[dict[str, Any]]:
    """Test accuracy and macro-F1 (in %) of each shipped artifact, then of the FP32 models before export."""
    metrics = []
    for name, entry in artifacts.items():
        report = entry.get("validation") or {}
        where = f"{name}, {entry['runtime']}"
        for key, kind, words in (("accuracy", "accuracy", "Test accuracy %"), ("macro_f1", "f1", "Macro-F1 %")):
            if _number(report.get(key)):
                metrics.append({"type": kind, "value": report[key], "name": f"{words} ({where})"})
    model = "source" if card.get("source_model") else "fine-tuned"
    for key, words in MODEL_ACCURACIES.items():
        if _number(card.get(key)):
            metrics.append({"type": "accuracy", "value": card[key], "name": words.format(model=model)})
    return metrics


def front_matter(data: dict[str, Any]) -> list[str]:
    """``data`` as the lines of a YAML front matter block, ``---`` to ``---``."""
    return ["---", *_yaml(data, 0), "---"]


def _yaml(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if _is_block(item):
                lines += [f"{pad}{_key(key)}:", *_yaml(item, indent + 2)]
            else:
                lines.append(f"{pad}{_key(key)}: {_scalar(item)}")
        return lines
    lines = []
    for item in value:
        if _is_block(item):
            block = _yaml(item, indent + 2)
            lines += [f"{pad}- {block[0][indent + 2:]}", *block[1:]]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _is_block(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple)) and len(value) > 0


def _key(key: str) -> str:
    plain = _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS
    return key if plain else json.dumps(key, ensure_ascii=False)


def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):  # empty
        return "{}" if isinstance(value, dict) else "[]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value)) if math.isfinite(value) else "null"
    if _PLAIN_KEY.match(str(value)) and str(value).lower() not in _YAML_WORDS:  # e.g. image-classification, fp32
        return str(value)
    text = json.dumps(str(value), ensure_ascii=False)
    # YAML reads these as line breaks even inside quotes; JSON leaves them as they are.
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\x85")


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "unknown"
