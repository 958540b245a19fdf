"""A source model's class names, and matching a dataset's class names to them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError, RecipeError


def read_labels(path: str | Path) -> list[str]:
    """Class names from a file: a JSON list, or one per line (blank lines ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RecipeError(f"model.labels {str(path)!r} is not a file; give a file with one class name per line")
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"model.labels {path} is not a valid JSON list ({exc.msg} at line {exc.lineno}); "
                              "fix it or give one class name per line") from None
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels or len(set(map(str, labels))) != len(labels):
        raise RecipeError(f"model.labels {path} must list distinct class names, one per model output")
    return [str(label) for label in labels]


def _names(label: str) -> set[str]:
    """A label and its aliases, normalised: ImageNet's "tabby, tabby cat" answers to "tabby" and "tabby_cat"."""
    return {re.sub(r"[\s_\-]+", " ", alias).strip().lower() for alias in label.split(",") if alias.strip()}


def match_labels(data_classes: list[str], labels: list[str]) -> list[int]:
    """For each of the data's class names, the index of the model label it names (exact first, then a
    case/underscore/alias-insensitive match); a DataError lists the names no label matches."""
    exact = {label: i for i, label in enumerate(labels)}
    loose: dict[str, int] = {}
    for i, label in enumerate(labels):
        for name in _names(label):
            loose.setdefault(name, i)
    found, missing = [], []
    for name in data_classes:
        index = exact.get(name)
        if index is None:
            index = next((loose[n] for n in _names(name) if n in loose), None)
        if index is None:
            missing.append(name)
        found.append(index)
    if missing:
        examples = ", ".join(repr(label) for label in labels[:4])
        raise DataError(f"data classes {missing[:5]} are not among the model's {len(labels)} labels (e.g. {examples}); "
                        "name the class folders after the model's labels, or give model.labels (--labels) the "
                        "model's own class names")
    return [int(i) for i in found]
