"""The bundle's manifest.json: its constants, reading it, the file table, the model file of an artifact.

The manifest lists the sha256 and size of every other file, the runtime versions it was built with, the
artifacts with their validation reports and benchmarks, what the model takes as input (from the preprocessing),
what it returns (``output``: class logits, one column per label of labels.json; an ``embedding`` of
``embedding_dim`` columns; or ``regression`` values in ``output_dim`` columns; the last two with no labels) and where
the validation slice and benchmark inputs are.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._io import sha256_file
from ..errors import BundleError
from ..preprocess import load_preprocess
from ..validate import OUTPUT_KINDS, OutputKind

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The file a runtime opens, per artifact format; the other files (.onnx.data, .bin) sit beside it.
MODEL_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
# Distributions whose versions go into the manifest. Read from package metadata: importing torch
# just to learn its version would defeat the point of a torch-free bundle.
_VERSIONED = ("onnxruntime", "openvino", "onnx", "torch", "numpy", "pillow", "tokenizers", "optimum",
              "optimum-onnx", "optimum-intel", "transformers")
REQUIRED_FILES = ("labels.json", "preprocess.json", "recipe.toml", "README.md")
# The bundle's own prediction script (edgetl/bundle/predict_script.py): numpy, Pillow or tokenizers and a runtime,
# no edgetl. Not required: bundles shipped before it, or of a kind the script does not read, have none.
PREDICT_SCRIPT = "predict.py"
# The run's HTML report, when the caller ships it (``ship(extra_files={"report.html": path})``); the card links it.
REPORT_FILE = "report.html"
# Preprocessed inputs, labels and the reference model's logits: what a device is checked against.
SLICE_FILE = "validation/slice.npz"
# Preprocessed inputs a device times the models on (it may have no tokenizer or image decoder).
BENCH_FILE = "validation/bench.npz"
# What a bundle's models return per sample (manifest "output"): class logits, one column per label; an embedding of
# manifest "embedding_dim" columns; regression values in manifest "output_dim" columns (labels.json is [] for both).
# Each kind's width key and wording are edgetl.validate.OUTPUT_KINDS' data. A manifest without "output" predates
# embeddings: logits.
OUTPUTS = tuple(OUTPUT_KINDS.names())


class BundlePreprocess(Protocol):
    """What a bundle asks of its preprocessing (``ImagePreprocess``, ``TextPreprocess``; see edgetl.preprocess)."""

    kind: str

    def to_dict(self) -> dict[str, Any]: ...
    def describe(self) -> str: ...
    def encode(self, samples: Any) -> Any: ...
    def inputs(self, data: Any, rows: np.ndarray) -> Any: ...
    def required_files(self) -> list[str]: ...
    def example_inputs(self, count: int) -> Any: ...
    def input_problem(self, inputs: Any) -> str | None: ...
    def manifest_fields(self) -> dict[str, Any]: ...
    def card_fields(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class BundleOutput:
    """What a bundle's models return for each sample: ``kind`` (an ``OUTPUTS`` name: "logits", "embedding",
    "regression") in ``width`` columns (the number of labels, the embedding dimension, the number of values)."""

    kind: str
    width: int

    @property
    def spec(self) -> OutputKind:
        """The kind's registered description (``edgetl.validate.OUTPUT_KINDS``)."""
        return OUTPUT_KINDS.get(self.kind)

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"

    @property
    def labelled(self) -> bool:
        """Whether each output column is a class with a label in labels.json."""
        return self.spec.labelled

    def describe(self) -> str:
        """"4 labels", "a 384-dim embedding" or "2 values": what one row of output stands for, for messages."""
        return self.spec.describe(self.width)

    def manifest_fields(self) -> dict[str, Any]:
        key = self.spec.width_key
        return {"output": self.kind, **({key: self.width} if key else {})}


def bundle_output(manifest: dict[str, Any], labels: list[str]) -> BundleOutput:
    """What a shipped bundle's models return, from its manifest ("output", and "embedding_dim" or "output_dim") and
    labels.json; BundleError when they disagree (labels for an embedding or values, none for logits, no usable
    width)."""
    kind = manifest.get("output", "logits")
    if kind not in OUTPUT_KINDS:
        raise BundleError(f"manifest's output {kind!r} is not one of {', '.join(OUTPUTS)}; upgrade edgetl or "
                          "re-ship the bundle")
    spec = OUTPUT_KINDS.get(kind)
    if spec.labelled:
        if not labels:
            unlabelled = " or ".join(f'{k.article} {k.name} bundle (manifest output "{k.name}")'
                                     for k in OUTPUT_KINDS.values() if not k.labelled)
            raise BundleError(f"labels.json is empty, but only {unlabelled} has no labels; re-ship the bundle with "
                              "its labels")
        return BundleOutput(kind, len(labels))
    width = manifest.get(spec.width_key)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise BundleError(f"manifest's {spec.width_key} {width!r} is not a positive integer; re-ship the bundle")
    if labels:
        raise BundleError(f"labels.json lists {len(labels)} labels, but {spec.article} {kind} bundle has none "
                          "(labels.json is []); re-ship the bundle")
    return BundleOutput(kind, width)


def read_manifest(root: Path) -> dict[str, Any]:
    """Load and shape-check ``root/manifest.json``; BundleError says what is wrong."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} is missing, so {root} is not an edgetl bundle (or a damaged one); give the folder "
                          "or .tar.gz that `edgetl ship` wrote")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is damaged, ship it again") from None
    tables = [manifest.get(key) if isinstance(manifest, dict) else None for key in ("files", "artifacts")]
    if not all(isinstance(t, dict) and t and all(isinstance(v, dict) for v in t.values()) for t in tables):
        raise BundleError(f"{path} lacks its 'files' or 'artifacts' table; the bundle is damaged, ship it again")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path} is bundle format {manifest['format_version']}; upgrade edgetl to read it")
    return manifest


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` but the manifest, by bundle-relative path."""
    return {
        path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST
    }


def model_file(entry: dict[str, Any]) -> str:
    """The bundle-relative path of the file a runtime opens for a manifest artifact entry."""
    suffix = MODEL_SUFFIX.get(entry.get("format", ""), "")
    matches = [f for f in entry.get("files", []) if f.endswith(suffix)] if suffix else []
    if len(matches) != 1:
        raise BundleError(f"artifact entry lists {entry.get('files')}; expected exactly one {suffix or 'model'} file")
    return matches[0]


def runtime_versions() -> dict[str, str]:
    """Python and the installed runtime/library versions, read from package metadata (nothing imported)."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def load_bundle_preprocess(data: dict[str, Any], root: str | os.PathLike) -> BundlePreprocess:
    """A bundle's preprocess.json as its class, reading any files it needs (a tokenizer) from ``root``."""
    return load_preprocess(data, root=root)
