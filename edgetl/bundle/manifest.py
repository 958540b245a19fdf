"""The bundle's manifest.json: its constants, reading it, the file table, the model file of an artifact.

The manifest lists the sha256 and size of every other file, the runtime versions it was built with, the
artifacts with their validation reports and benchmarks, what the model takes as input (from the preprocessing),
what it returns (``output``: class logits, one column per label of labels.json, or an ``embedding`` of
``embedding_dim`` columns with no labels) and where the validation slice and benchmark inputs are.
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

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The file a runtime opens, per artifact format; the other files (.onnx.data, .bin) sit beside it.
MODEL_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
# Distributions whose versions go into the manifest. Read from package metadata: importing torch
# just to learn its version would defeat the point of a torch-free bundle.
_VERSIONED = ("onnxruntime", "openvino", "onnx", "torch", "numpy", "pillow", "tokenizers", "optimum",
              "optimum-onnx", "optimum-intel", "transformers")
REQUIRED_FILES = ("labels.json", "preprocess.json", "recipe.toml", "README.md")
# Preprocessed inputs, labels and the reference model's logits: what a device is checked against.
SLICE_FILE = "validation/slice.npz"
# Preprocessed inputs a device times the models on (it may have no tokenizer or image decoder).
BENCH_FILE = "validation/bench.npz"
# What a bundle's models return per sample (manifest "output"): class logits, one column per label, or an
# embedding of manifest "embedding_dim" columns (labels.json is []). A manifest without "output" predates
# embeddings: logits.
OUTPUTS = ("logits", "embedding")


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
    """What a bundle's models return for each sample: ``kind`` ("logits" or "embedding") in ``width`` columns
    (the number of labels, or the embedding dimension)."""

    kind: str
    width: int

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"

    def describe(self) -> str:
        """"4 labels" or "a 384-dim embedding": what one row of output stands for, for messages."""
        return f"a {self.width}-dim embedding" if self.is_embedding else f"{self.width} labels"

    def manifest_fields(self) -> dict[str, Any]:
        return {"output": self.kind, **({"embedding_dim": self.width} if self.is_embedding else {})}


def bundle_output(manifest: dict[str, Any], labels: list[str]) -> BundleOutput:
    """What a shipped bundle's models return, from its manifest ("output", "embedding_dim") and labels.json;
    BundleError when they disagree (labels for an embedding, none for logits, no usable dimension)."""
    kind = manifest.get("output", "logits")
    if kind not in OUTPUTS:
        raise BundleError(f"manifest's output {kind!r} is not one of {', '.join(OUTPUTS)}; upgrade edgetl or "
                          "re-ship the bundle")
    if kind == "logits":
        if not labels:
            raise BundleError('labels.json is empty, but only an embedding bundle (manifest output "embedding") has '
                              "no labels; re-ship the bundle with its labels")
        return BundleOutput(kind, len(labels))
    dim = manifest.get("embedding_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise BundleError(f"manifest's embedding_dim {dim!r} is not a positive integer; re-ship the bundle")
    if labels:
        raise BundleError(f"labels.json lists {len(labels)} labels, but an embedding bundle has none "
                          "(labels.json is []); re-ship the bundle")
    return BundleOutput(kind, dim)


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
