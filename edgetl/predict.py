"""Run a shipped bundle: raw samples (images, texts) in, labels (or embeddings, or values) out, with onnxruntime or
OpenVINO alone.

The bundle's preprocessing (``preprocess.json``, loaded by ``edgetl.preprocess.load_preprocess``) turns raw samples
into model inputs; this module never asks which modality it holds. Needs only numpy, what that preprocessing needs
(Pillow for images, the ``tokenizers`` package for texts) and a runtime; never imports torch or transformers, so it
runs on devices that cannot install them.

>>> model = load_bundle("models/fmnist", runtime="openvino:CPU")
>>> [p.label for p in model.predict(["shoe.png", "bag.png"])]
['Sneaker', 'Bag']
>>> load_bundle("models/banking77").predict(["I still have not received my new card"])[0].label
'card_arrival'

An embedding bundle (manifest ``"output": "embedding"``, no labels) returns vectors instead: ``embed``. A
regression bundle (``"output": "regression"``, no labels) returns its real values from ``predict``, as a float32
(N, K) array.

>>> load_bundle("models/minilm").embed(["where is my card?", "my card has not arrived"]).shape
(2, 384)
>>> load_bundle("models/age").predict(["face.png"])
array([[34.2]], dtype=float32)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import sha256_file
from .bundle import (BundleOutput, BundlePreprocess, ModelInputs, bundle_output, extract_archive, model_file,
                     read_manifest)
from .errors import BackendUnavailable, BundleError, DataError, EdgetlError
from .preprocess import load_preprocess
from .runners import Runner, backend_for_file, open_runner, parse_runtime
from .validate import OUTPUT_KINDS

# Which artifact formats each backend can open, best first (OpenVINO also reads ONNX directly).
_FORMATS_FOR_BACKEND = {"onnxruntime": ("onnx",), "openvino": ("openvino", "onnx")}


@dataclass
class Prediction:
    """The top label of one sample, its softmax probability, and the ``top_k`` (label, probability) list."""

    label: str
    index: int
    probability: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    source: str = ""  # the file name or text, or "<kind> #i" for in-memory samples

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "index": self.index,
            "probability": self.probability,
            "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
        }


class BundleModel:
    """A bundle opened on one runtime. Use ``predict`` (a classifier: labels; a regression model, whose ``output``
    is "regression": its values) or ``embed`` (an embedding model, whose ``output`` is "embedding"); ``close`` (or
    a ``with`` block) frees the runtime."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        artifact: str,
        runner: Runner,
        labels: list[str],
        preprocess: BundlePreprocess,
        workdir: tempfile.TemporaryDirectory | None = None,
        output: BundleOutput | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.artifact = artifact
        self.runner = runner
        self.runtime = runner.name
        self.labels = labels
        self.preprocess = preprocess
        self._workdir = workdir  # holds an extracted .tar.gz alive as long as the model
        self._output = output or bundle_output(manifest, labels)

    @property
    def kind(self) -> str:
        """What the bundle classifies: its preprocessing's kind ("image", "text")."""
        return self.preprocess.kind

    @property
    def output(self) -> str:
        """What the model returns per sample: "logits" (a classifier; use ``predict``), "embedding" (``embed``) or
        "regression" (real values; ``predict``)."""
        return self._output.kind

    @property
    def embedding_dim(self) -> int | None:
        """The length of each embedding, for an embedding bundle; None for a classifier."""
        return self._output.width if self._output.is_embedding else None

    @property
    def output_dim(self) -> int | None:
        """The width of each output row of a bundle without labels (the embedding dimension, the number of
        regression values); None for a classifier, whose width is its labels."""
        return None if self._output.labelled else self._output.width

    def predict(self, samples: Sequence[Any], top_k: int = 3, batch_size: int = 32) -> list[Prediction] | np.ndarray:
        """Classify raw samples, whatever the bundle's preprocessing takes (image paths, PIL images or uint8 HWC
        arrays; texts); one Prediction per sample, in order. On a regression bundle: the model's values instead,
        float32 (len(samples), output_dim), one row per sample in order (``top_k`` does not apply).

        Raises DataError naming the sample when one is missing or cannot be read, and BundleError on an
        embedding bundle (it has no labels: use ``embed``).

        >>> load_bundle("models/age").predict(["face.png", "other.png"]).shape
        (2, 1)
        """
        if self._output.kind == "regression":  # no labels to rank: the values are the prediction
            return self._outputs(samples, batch_size)
        self._require("logits", "predict")
        if top_k < 1:
            raise EdgetlError(f"top_k must be at least 1, got {top_k}")
        samples = _as_list(samples)
        probabilities = _softmax(self.predict_logits(samples, batch_size=batch_size))
        k = min(top_k, len(self.labels))
        predictions = []
        for position, row in enumerate(probabilities):
            order = np.argsort(-row, kind="stable")[:k]
            ranked = [(self.labels[i], float(row[i])) for i in order]
            source = self._describe(samples[position], position)
            predictions.append(Prediction(ranked[0][0], int(order[0]), ranked[0][1], ranked, source))
        return predictions

    def predict_logits(self, samples: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Raw model outputs, float32 (len(samples), number of labels)."""
        self._require("logits", "predict_logits")
        return self._outputs(samples, batch_size)

    def embed(self, samples: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """The embeddings of raw samples (whatever the preprocessing takes), float32 (len(samples), embedding_dim),
        one row per sample in order, as the model returns them (not re-normalised).

        Raises BundleError on a classifier bundle (use ``predict``), DataError naming a sample that cannot be read.

        >>> load_bundle("models/minilm").embed(["where is my card?"]).shape
        (1, 384)
        """
        self._require("embedding", "embed")
        return self._outputs(samples, batch_size)

    def describe_outputs(self, samples: Sequence[Any], batch_size: int = 32) -> list[str]:
        """One line per sample of a bundle without labels, "<sample>: <its output>", worded by the output kind
        (an embedding's dimension, L2 norm and first values; a regression model's values): what ``edgetl predict``
        prints. BundleError on a classifier (``predict`` gives its labels)."""
        spec = self._output.spec
        if spec.row_text is None:
            raise BundleError(f"{self.path} is a classifier over {self._output.describe()}; call predict(samples) "
                              "for its labels")
        samples = _as_list(samples)
        return [f"{self._describe(sample, i)}: {spec.row_text(row)}"
                for i, (sample, row) in enumerate(zip(samples, self._outputs(samples, batch_size)))]

    def _require(self, output: str, method: str) -> None:
        """BundleError, pointing to the right method, when the bundle's output is not ``output``."""
        if self._output.kind == output:
            return
        spec, width = self._output.spec, self._output.width
        if not spec.labelled:
            raise BundleError(f"{self.path} is {spec.article} {spec.name} model ({self._output.describe()} per sample, "
                              f"no labels), so it has no {method}; call {spec.method}(samples) for its float32 "
                              f"(N, {width}) {spec.rows}")
        wanted = OUTPUT_KINDS.get(output)
        raise BundleError(f"{self.path} is a classifier over {self._output.describe()}, not {wanted.article} {output} "
                          f"model, so it has no {method}; call predict(samples) for labels or predict_logits(samples) "
                          "for scores")

    def _outputs(self, samples: Sequence[Any], batch_size: int) -> np.ndarray:
        """The model's outputs on raw samples, float32 (len(samples), its output width), checked against it."""
        samples = _as_list(samples)
        width = self._output.width
        static = self.runner.input_spec.shape[0] if self.runner.input_spec.shape else None
        # A model exported with a fixed batch size takes exactly that many rows per call.
        fixed = static if isinstance(static, int) and static > 0 else None
        step = fixed or max(1, batch_size)
        outputs = []
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            batch = self._encode(chunk, start)
            logits = np.asarray(self.runner.predict(_pad_rows(batch, fixed) if fixed else batch))[: len(chunk)]
            if logits.ndim != 2 or logits.shape[1] != width:
                raise BundleError(
                    f"{self.artifact} returned outputs of shape {logits.shape} for {self._output.describe()}; "
                    f"the bundle is inconsistent, run `edgetl verify {self.path}`"
                )
            outputs.append(logits)
        if not outputs:
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32)

    def _encode(self, chunk: list[Any], start: int) -> ModelInputs:
        """The model inputs of ``chunk`` (samples ``start`` on); a DataError names the sample that failed."""
        try:
            return self.preprocess.encode(chunk)
        except (DataError, OSError, ValueError, TypeError) as exc:  # OSError: e.g. a truncated, lazily loaded image
            failed = exc
        for offset, sample in enumerate(chunk):  # only on failure: find which sample it was
            try:
                self.preprocess.encode([sample])
            except (DataError, OSError, ValueError, TypeError) as exc:
                if isinstance(sample, str) and isinstance(exc, DataError):
                    raise  # the preprocessing already named the file, or the failure is no sample's fault
                name = self._describe(sample, start + offset)
                if isinstance(exc, DataError):
                    raise DataError(f"{name}: {exc}") from None
                raise DataError(f"cannot read {self.kind} {name}: {exc}") from None
        raise failed

    def _describe(self, sample: Any, position: int) -> str:
        if isinstance(sample, str):
            return sample
        filename = getattr(sample, "filename", "")  # PIL images opened from a file remember it
        return str(filename) if filename else f"{self.kind} #{position}"

    def close(self) -> None:
        """Free the runtime and remove a temporary extraction of a .tar.gz bundle."""
        self.runner.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "BundleModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BundleModel({self.path}, artifact={self.artifact}, runtime={self.runtime}, {self._output.describe()})"


def load_bundle(
    path: str | os.PathLike,
    runtime: str | None = None,
    threads: int = 0,
    *,
    artifact: str | None = None,
    check_files: bool = True,
) -> BundleModel:
    """Open a bundle folder (or its .tar.gz) for prediction (``predict``: labels, or a regression bundle's values)
    or, for an embedding bundle, ``embed``.

    ``runtime`` ("onnxruntime:CPUExecutionProvider", "openvino:CPU", ...) picks an artifact that backend runs;
    ``artifact`` picks one by name; neither: the manifest's default. ``check_files`` compares the sha256 of the
    files used against the manifest first, so a damaged model is refused rather than run.

    >>> model = load_bundle("models/fmnist.tar.gz", runtime="openvino:CPU", threads=2)
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}; give a bundle folder or its .tar.gz (`edgetl ship` makes them)")
    workdir = tempfile.TemporaryDirectory(prefix="edgetl-bundle-") if path.is_file() else None
    try:
        root = extract_archive(path, Path(workdir.name)) if workdir is not None else path
        manifest = read_manifest(root)
        name = select_artifact(manifest, runtime=runtime, artifact=artifact)
        entry = manifest["artifacts"][name]
        if check_files:
            _check_files(root, manifest, ["labels.json", "preprocess.json", *entry["files"]])
        labels = json.loads((root / "labels.json").read_text())
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError("labels.json is not a list of strings")
        output = bundle_output(manifest, labels)  # labels.json [] only for an embedding or regression bundle
        preprocess = load_preprocess(json.loads((root / "preprocess.json").read_text()), root=root)
        if check_files:  # e.g. a tokenizer
            _check_files(root, manifest, preprocess.required_files())
        model = root / model_file(entry)
        # A manifest without the artifact's runtime (hand-edited, or older) runs on its format's CPU default.
        runner = _open(model, runtime or entry.get("runtime") or backend_for_file(model), threads,
                       fallback=runtime is None)
    except BaseException as exc:
        if workdir is not None:
            workdir.cleanup()
        if isinstance(exc, (OSError, ValueError, TypeError)):  # unreadable files, malformed JSON
            raise BundleError(f"cannot load bundle {path}: {exc}; run `edgetl verify {path}`") from None
        raise
    return BundleModel(path, manifest, name, runner, labels, preprocess, workdir, output)


def select_artifact(manifest: dict[str, Any], runtime: str | None = None, artifact: str | None = None) -> str:
    """The artifact to run: the named one, else one whose format ``runtime`` can open, else the default."""
    artifacts: dict[str, Any] = manifest["artifacts"]
    if artifact is not None:
        if artifact not in artifacts:
            raise BundleError(f"no artifact {artifact!r} in this bundle; it has {', '.join(artifacts)}")
        return artifact
    if runtime is None:
        default = manifest.get("default_artifact")
        if default not in artifacts:
            raise BundleError(f"manifest.json's default_artifact {default!r} is not among its artifacts "
                              f"({', '.join(artifacts)}); choose one with --runtime, or re-ship the bundle")
        return default
    exact = [name for name, entry in artifacts.items() if entry.get("runtime") == runtime]
    if exact:
        return exact[0]
    backend, _ = parse_runtime(runtime)
    for fmt in _FORMATS_FOR_BACKEND.get(backend, ()):
        # Same format on another device (e.g. openvino:GPU for an artifact validated on openvino:CPU).
        matches = [name for name, entry in artifacts.items() if entry.get("format") == fmt]
        if matches:
            return manifest.get("default_artifact") if manifest.get("default_artifact") in matches else matches[0]
    raise BundleError(
        f"no artifact in this bundle runs on {runtime}; it has "
        + ", ".join(f"{name} ({entry.get('runtime')})" for name, entry in artifacts.items())
    )


def _open(model: Path, runtime: str, threads: int, *, fallback: bool) -> Runner:
    try:
        return open_runner(model, runtime, threads=threads)
    except BackendUnavailable:
        # The artifact was validated on, say, CUDA; with no runtime asked for, the CPU default will do.
        if not fallback or backend_for_file(model) == runtime:
            raise
        return open_runner(model, backend_for_file(model), threads=threads)


def _check_files(root: Path, manifest: dict[str, Any], files: list[str]) -> None:
    listed = manifest["files"]
    for rel in files:
        path = root / rel
        if rel not in listed or not path.is_file() or sha256_file(path) != listed[rel].get("sha256"):
            raise BundleError(f"{rel} is missing or does not match the manifest; run `edgetl verify {root}`")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)  # subtract the max: no overflow
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _as_list(samples: Sequence[Any]) -> list[Any]:
    """Samples as a list, paths as strings; a lone path or text is an easy mistake (a str is a Sequence of
    characters), so it becomes a list of one."""
    if isinstance(samples, (str, os.PathLike)):
        samples = [samples]
    return [os.fspath(sample) if isinstance(sample, os.PathLike) else sample for sample in samples]


def _pad_rows(batch: ModelInputs, rows: int) -> ModelInputs:
    """``batch`` padded with zero rows up to ``rows`` (a fixed-batch model); the extra outputs are dropped."""
    def pad(array: np.ndarray) -> np.ndarray:
        missing = rows - len(array)
        return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)]) if missing > 0 else array

    return {name: pad(array) for name, array in batch.items()} if isinstance(batch, dict) else pad(batch)
