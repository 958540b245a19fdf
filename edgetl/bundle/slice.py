"""Preprocessed inputs that travel in a bundle: the validation slice and the benchmark inputs.

Both are ``.npz`` files under ``validation/``, so a device needs neither a tokenizer nor an image decoder. A model
input is one array, stored as ``inputs``, or named arrays, stored as ``inputs.<name>`` (``inputs.input_ids``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from .._io import atomic_path
from ..errors import BundleError
from .manifest import BundleOutput, BundlePreprocess

# One model input: a single array, or {input name: array} for models with several inputs.
ModelInputs = Union[np.ndarray, Mapping[str, np.ndarray]]


def input_rows(inputs: ModelInputs) -> int:
    """How many samples ``inputs`` hold; BundleError when named arrays disagree."""
    counts = {len(a) for a in inputs.values()} if isinstance(inputs, Mapping) else {len(inputs)}
    if len(counts) != 1:
        raise BundleError(f"input arrays hold different numbers of rows {sorted(counts)}; they must agree")
    return counts.pop()


def check_inputs(inputs: ModelInputs, preprocess: BundlePreprocess, what: str) -> int:
    """The number of rows of ``inputs`` after checking that the model takes them; BundleError names ``what``."""
    rows = input_rows(inputs)
    problem = preprocess.input_problem(inputs)
    if problem:
        raise BundleError(f"{what} {problem}")
    if not rows:
        raise BundleError(f"{what} holds no rows")
    return rows


def input_arrays(inputs: ModelInputs) -> dict[str, np.ndarray]:
    """``inputs`` as the arrays of an .npz: ``inputs``, or ``inputs.<name>``; floats as float32, integers as int64."""
    def stored(array: Any) -> np.ndarray:
        array = np.asarray(array)
        return array.astype(np.int64 if array.dtype.kind in "biu" else np.float32)

    if isinstance(inputs, Mapping):
        return {f"inputs.{name}": stored(array) for name, array in inputs.items()}
    return {"inputs": stored(inputs)}


def slice_inputs(npz: Any) -> np.ndarray | dict[str, np.ndarray]:
    """The model inputs of a loaded slice.npz or bench.npz (or a dict of its arrays): one array or named arrays."""
    files = list(npz.files if hasattr(npz, "files") else npz)
    if "inputs" in files:
        return npz["inputs"]
    return {key.removeprefix("inputs."): npz[key] for key in files if key.startswith("inputs.")}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


@dataclass
class ValidationSlice:
    """A few preprocessed held-out samples with their labels and the reference model's outputs on them.

    Shipped in the bundle as ``validation/slice.npz``; ``edgetl bench --target`` runs it on each device
    and holds the device's outputs to the reference with the shared validation check. For an embedding or
    regression bundle the reference outputs are embeddings (N, D) or values (N, K) and the labels are unused
    (``UNLABELLED``, -1, for data without them); the .npz keeps the key ``reference_logits`` either way, which
    devices and older bundles read."""

    inputs: ModelInputs  # float32 (N, C, H, W), or {input name: int64 (N, L)}
    labels: np.ndarray  # int64 (N,)
    reference_logits: np.ndarray  # float32 (N, classes), (N, D) embeddings or (N, K) regression values
    reference: str = "torch-fp32"  # which model produced reference_logits

    @classmethod
    def from_split(cls, data: Any, preprocess: BundlePreprocess, reference_logits: np.ndarray, *, size: int = 128,
                   seed: int = 0, reference: str = "torch-fp32") -> "ValidationSlice":
        """``size`` samples of a split, taken at random with ``seed``, preprocessed by ``preprocess.inputs``, with the
        matching rows of ``reference_logits`` (the reference model's logits, embeddings or values on the split)."""
        if len(reference_logits) != len(data):
            raise BundleError(f"{len(reference_logits)} reference outputs for {len(data)} samples; they must match")
        chosen = np.sort(np.random.default_rng(seed).permutation(len(data))[: max(1, size)])
        inputs = preprocess.inputs(data, chosen)
        return cls(inputs, np.asarray(data.labels)[chosen], np.asarray(reference_logits)[chosen], reference)

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, preprocess: BundlePreprocess, output: BundleOutput | int) -> None:
        """BundleError unless inputs, labels and reference outputs agree in rows, the outputs have ``output``'s
        columns (a plain int: that many labels) and the model takes the inputs."""
        output = output if isinstance(output, BundleOutput) else BundleOutput("logits", output)
        n = len(self.labels)
        rows = input_rows(self.inputs)
        if not (n and rows == n and np.shape(self.reference_logits) == (n, output.width)):
            what = output.spec.rows
            raise BundleError(f"validation slice: {rows} inputs, {n} labels and reference {what} "
                              f"{np.shape(self.reference_logits)} must agree (N, {output.describe()})")
        check_inputs(self.inputs, preprocess, "validation slice")

    def save(self, path: Path) -> None:
        save_npz(path, {**input_arrays(self.inputs), "labels": np.asarray(self.labels).astype(np.int64),
                        "reference_logits": np.asarray(self.reference_logits).astype(np.float32)})

    @classmethod
    def load(cls, path: Path) -> "ValidationSlice":
        with np.load(path) as npz:
            return cls(slice_inputs(npz), npz["labels"], npz["reference_logits"])
