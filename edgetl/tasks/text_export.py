"""Text classifiers to ONNX (optimum-onnx) and OpenVINO IR (optimum-intel), and the shape contract.

Both exports take a model folder (``save_text_classifier`` output), run Optimum's "text-classification" export
with dynamic batch and sequence axes, and copy the tokenizer files beside the model, so each output folder is
self-contained: model file(s), config.json, tokenizer.json (+ companions).

The shape contract runs every exported variant against the torch reference at several batch sizes and
sequence lengths, with padded rows, and raises ExportError on any mismatch.

>>> onnx_info = export_onnx_optimum("runs/x/teacher", "runs/x/artifacts/onnx-fp32")
>>> ov_info = export_openvino_optimum("runs/x/teacher", "runs/x/artifacts/openvino-fp32")
>>> report = check_shape_contract(model, {"onnx": (onnx_info.model_file, "onnxruntime:CPUExecutionProvider")})
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .._io import replace_dir
from ..errors import BackendUnavailable, ExportError
from ..backbones.bert import copy_tokenizer_files, load_text_classifier

TASK = "text-classification"
DEFAULT_OPSET = 18  # Optimum warns that BERT wants at least 18 (its attention export); ORT and OpenVINO read it
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"
# Shape contract: batch sizes x sequence lengths, and the deviation from the torch model allowed per precision.
CONTRACT_BATCHES = (1, 8)
CONTRACT_LENGTHS = (8, 32, 128)
# FP32/FP16: the largest |logit| difference. INT8: the largest |logit| difference of a row as a fraction of that
# row's reference logit range (max - min). An absolute bound cannot tell a sound INT8 BERT from a broken one on
# the contract's random-token inputs: measured on the banking77 MiniLM and its 3-layer student, the INT8 variants
# that passed the accuracy gate (98.7-99.2% agreement) deviated by 0.05-0.27 of the range, the ones that did not
# (onnx static INT8 with every op quantized: 17-58% agreement) by 0.21-1.85, mostly above 0.5.
CONTRACT_ATOL = {"fp32": 1e-3, "fp16": 5e-2}
CONTRACT_RELATIVE = {"int8": 0.35}
CONTRACT_VERSION = 2  # in the pipeline's record key: a change of measure re-runs the contract


def contract_limit(precision: str) -> tuple[str, float]:
    """("abs", max |Δlogit|) or ("relative", max |Δlogit| / the row's logit range) for a precision."""
    if precision in CONTRACT_RELATIVE:
        return "relative", CONTRACT_RELATIVE[precision]
    return "abs", CONTRACT_ATOL[precision]


def contract_deviation(got: np.ndarray, expected: np.ndarray, measure: str) -> float:
    diff = np.abs(got - expected)
    if measure == "abs":
        return float(diff.max())
    spread = np.maximum(expected.max(axis=1) - expected.min(axis=1), 1e-6)
    return float((diff.max(axis=1) / spread).max())


@dataclass
class TextExportInfo:
    """What an export wrote: the folder, the model file to open, format, opset (ONNX), precision, seconds."""

    folder: str
    model_file: str
    format: str  # "onnx" or "openvino"
    precision: str = "fp32"
    opset: int | None = None
    inputs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exporter: str = ""  # e.g. "optimum-onnx 0.1.0"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx_optimum(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> TextExportInfo:
    """Export the classifier in ``model_dir`` to ``out_dir``/model.onnx with optimum-onnx (dynamic batch/sequence),
    ``metadata`` in its metadata_props. ``out_dir`` is replaced whole, only once everything is written."""
    exporter = _require("optimum.exporters.onnx", "optimum-onnx")
    model = load_text_classifier(model_dir)
    start = time.perf_counter()
    with _staging(out_dir) as stage:
        try:
            # The in-memory model keeps edgetl's mean-pooling head (main_export would rebuild the folder's model
            # through AutoModelForSequenceClassification, i.e. BERT's [CLS] pooler). Validation is ours: the
            # shape contract below, which blocks, where Optimum's only warns.
            with _as_transformers_class(model):
                exporter.onnx_export_from_model(model, stage, opset=opset, task=TASK, do_validation=False)
        except Exception as exc:
            raise ExportError(f"optimum-onnx could not export {model_dir}: {_first_line(exc)}") from None
        _finish(model_dir, stage)
        if metadata:
            import onnx

            proto = onnx.load(str(stage / ONNX_FILE))
            onnx.helper.set_model_props(proto, metadata)
            onnx.save(proto, str(stage / ONNX_FILE))
    import onnx

    out = Path(out_dir)
    proto = onnx.load(str(out / ONNX_FILE), load_external_data=False)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return TextExportInfo(
        folder=str(out), model_file=str(out / ONNX_FILE), format="onnx", opset=opset_used,
        inputs=[i.name for i in proto.graph.input], files=sorted(p.name for p in out.iterdir()),
        seconds=round(time.perf_counter() - start, 2), exporter=f"optimum-onnx {_version('optimum-onnx')}",
    )  # fmt: skip


def export_openvino_optimum(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, fp16: bool = False,
    metadata: dict[str, str] | None = None, xml_name: str = OPENVINO_FILE,
) -> TextExportInfo:
    """Export the classifier in ``model_dir`` to OpenVINO IR ``out_dir/xml_name`` with optimum-intel; weights FP32
    unless ``fp16``; ``metadata`` in the IR's rt_info. ``out_dir`` is replaced whole, once everything is written."""
    exporter = _require("optimum.exporters.openvino", "optimum-intel")
    model = load_text_classifier(model_dir)
    start = time.perf_counter()
    ov_config = None
    if fp16:
        from optimum.intel import OVConfig

        ov_config = OVConfig(dtype="fp16")
    with _staging(out_dir) as stage:
        try:
            with _as_transformers_class(model):
                exporter.export_from_model(model, stage, task=TASK, ov_config=ov_config, stateful=False)
        except Exception as exc:
            raise ExportError(f"optimum-intel could not export {model_dir}: {_first_line(exc)}") from None
        if not (stage / OPENVINO_FILE).is_file():
            raise ExportError(
                f"optimum-intel wrote no {OPENVINO_FILE} for {model_dir}; "
                f"files: {sorted(p.name for p in stage.iterdir())}"
            )
        _finish(model_dir, stage)
        if metadata or xml_name != OPENVINO_FILE:
            import openvino as ov

            ir = ov.Core().read_model(str(stage / OPENVINO_FILE))
            for name, value in (metadata or {}).items():
                ir.set_rt_info(value, ["model_info", name])
            ov.save_model(ir, str(stage / f".{xml_name}"), compress_to_fp16=fp16)
            for suffix in (".xml", ".bin"):
                (stage / OPENVINO_FILE).with_suffix(suffix).unlink()
                (stage / f".{xml_name}").with_suffix(suffix).rename((stage / xml_name).with_suffix(suffix))
    import openvino as ov

    out = Path(out_dir)
    ov_model = ov.Core().read_model(str(out / xml_name))
    return TextExportInfo(
        folder=str(out), model_file=str(out / xml_name), format="openvino", precision="fp16" if fp16 else "fp32",
        inputs=[p.get_any_name() for p in ov_model.inputs], files=sorted(p.name for p in out.iterdir()),
        seconds=round(time.perf_counter() - start, 2), exporter=f"optimum-intel {_version('optimum-intel')}",
    )  # fmt: skip


@contextlib.contextmanager
def _staging(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces it only when the export succeeded."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        replace_dir(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


@contextlib.contextmanager
def _as_transformers_class(model: Any) -> Iterator[None]:
    """Let Optimum treat edgetl's classifier as the transformers BERT model it is.

    Optimum infers the model's library from the class's module name (``transformers.*``) and refuses others;
    for the export only, the model gets a subclass that declares a transformers module. Its config
    (model_type "bert"), inputs and ``logits`` output are already those of a BERT text classifier.
    """
    original = type(model)
    if original.__module__.startswith("transformers"):
        yield
        return
    model.__class__ = type(original.__name__, (original,), {"__module__": "transformers.models.bert.edgetl"})
    try:
        yield
    finally:
        model.__class__ = original


def _finish(model_dir: str | os.PathLike, stage: Path) -> None:
    copy_tokenizer_files(model_dir, stage)


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f'{module} is not importable ({exc}); run `pip install -c constraints.txt -e ".[text]"` ({package})'
        ) from None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# -- the shape contract -------------------------------------------------------------------------


@dataclass
class ContractCase:
    variant: str
    runtime: str
    batch: int
    length: int
    max_abs_diff: float
    agreement: float
    passed: bool
    deviation: float = 0.0  # what the limit is on: max_abs_diff, or (INT8) relative to the row's logit range


def describe_deviation(value: float, measure: str) -> str:
    return f"max |Δlogit| {value:.3g}" if measure == "abs" else f"max |Δlogit| {value:.3g} of the logit range"


def contract_inputs(batch: int, length: int, *, vocab_size: int, seed: int = 0, cls_id: int = 2, sep_id: int = 3,
                    pad_id: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Token batches of ``length`` where rows after the first are padded to random shorter lengths."""
    rng = np.random.default_rng(seed + 1000 * batch + length)
    ids = rng.integers(5, vocab_size, (batch, length), dtype=np.int64)
    lengths = np.full(batch, length)
    if batch > 1:
        lengths[1:] = rng.integers(2, length + 1, batch - 1)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = cls_id
    ids[np.arange(batch), lengths - 1] = sep_id
    ids[mask == 0] = pad_id
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def check_shape_contract(reference, variants: dict[str, tuple[str | os.PathLike, str]], *,
                         batches: Sequence[int] = CONTRACT_BATCHES, lengths: Sequence[int] = CONTRACT_LENGTHS,
                         precision: str = "fp32", atol: float | None = None, threads: int = 0,
                         preprocess=None, raise_on_failure: bool = True) -> list[ContractCase]:  # fmt: skip
    """Run every variant {name: (model file, runtime)} against the torch ``reference`` model at each batch size
    and sequence length; every case must give logits of shape (batch, classes) within the precision's limit
    (``contract_limit``; ``atol`` overrides it with an absolute bound) of the reference.

    ``preprocess`` (a TextPreprocess) supplies the real [CLS]/[SEP]/[PAD] ids; without it BERT's usual layout
    of a WordPiece vocabulary is assumed. Raises ExportError listing the failing cases (unless
    ``raise_on_failure`` is False).
    """
    from ..runners import open_runner

    measure, tolerance = ("abs", atol) if atol is not None else contract_limit(precision)
    vocab_size = int(reference.config.vocab_size)
    special = {"cls_id": 2, "sep_id": 3, "pad_id": int(reference.config.pad_token_id or 0)}
    if preprocess is not None:
        tokenizer = preprocess.tokenizer()
        for key, token in (("cls_id", "[CLS]"), ("sep_id", "[SEP]"), ("pad_id", preprocess.pad_token)):
            if tokenizer.token_to_id(token) is not None:
                special[key] = tokenizer.token_to_id(token)
    positions = int(reference.config.max_position_embeddings)
    torch_runner = open_runner(reference, "torch:cpu")
    cases: list[ContractCase] = []
    for variant, (path, runtime) in variants.items():
        runner = open_runner(path, runtime, threads=threads)
        try:
            for length in lengths:
                if length > positions:
                    raise ExportError(f"shape contract length {length} exceeds the model's {positions} positions")
                for batch in batches:
                    feed = contract_inputs(batch, length, vocab_size=vocab_size, **special)
                    expected = torch_runner.predict(feed)
                    got = runner.predict(feed)
                    if got.shape != expected.shape or not np.isfinite(got).all():
                        cases.append(ContractCase(variant, runner.name, batch, length, float("inf"), 0.0, False,
                                                  float("inf")))
                        continue
                    diff = float(np.abs(got - expected).max())
                    deviation = contract_deviation(got, expected, measure)
                    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
                    cases.append(ContractCase(variant, runner.name, batch, length, diff, agreement,
                                              deviation <= tolerance, deviation))
        finally:
            runner.close()
    failed = [case for case in cases if not case.passed]
    if failed and raise_on_failure:
        worst = ", ".join(
            f"{c.variant} batch {c.batch} x {c.length} tokens: {describe_deviation(c.deviation, measure)}"
            for c in failed[:4]
        )
        raise ExportError(f"shape contract failed for {len(failed)} case(s) (limit "
                          f"{describe_deviation(tolerance, measure)}): {worst}; re-export the model")
    return cases


# -- the pipeline's export and benchmark inputs -----------------------------------------------------


def export_text(model_folder: Path, fmt: str, out_dir: Path, export_config, metadata: dict[str, Any]) -> dict[str, Any]:
    """Export a saved text classifier with Optimum: "onnx" -> model.onnx, "openvino" -> model.xml + model.bin.

    Labels and preprocessing go into the ONNX metadata_props / the IR's rt_info, like the image exports.
    ONNX needs opset 18 or later for BERT's attention in Optimum; a lower ``export.opset`` is raised to 18.
    """
    import json

    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    if fmt == "onnx":
        info = export_onnx_optimum(model_folder, out_dir, opset=max(export_config.opset, DEFAULT_OPSET),
                                   metadata=strings)
    elif fmt == "openvino":
        info = export_openvino_optimum(model_folder, out_dir, fp16=export_config.compress_to_fp16, metadata=strings,
                                       xml_name="model.xml")
    else:
        raise ExportError(f"export.formats: {fmt!r} is not a text export; use onnx or openvino")
    return info.to_dict()


class TokenRunner:
    """A Runner over int64 token ids (N, L) for ``edgetl.bench.benchmark``: feeds ids, mask and type ids.

    The dict for a batch is built once per batch object, so the timed calls measure the model alone.
    """

    def __init__(self, runner, input_names, pad_id: int = 0):
        self.runner, self.input_names, self.pad_id = runner, tuple(input_names), pad_id
        self._last: tuple[int, dict[str, np.ndarray]] | None = None

    def __getattr__(self, name: str):  # name, input_spec, session / compiled (for runtime_settings)
        return getattr(self.runner, name)

    def predict(self, ids: np.ndarray) -> np.ndarray:
        if self._last is None or self._last[0] != id(ids):
            arrays = {"input_ids": ids, "attention_mask": (ids != self.pad_id).astype(np.int64),
                      "token_type_ids": np.zeros_like(ids)}
            self._last = (id(ids), {k: arrays[k] for k in self.input_names})
        return self.runner.predict(self._last[1])

    def close(self) -> None:
        self.runner.close()


def bench_inputs(data, preprocess, length: int) -> Callable[[int], np.ndarray]:
    """``make_input(batch)``: real test texts of ``length`` tokens (the closest there are), as token ids."""
    cache: dict[int, np.ndarray] = {}

    def make_input(batch: int) -> np.ndarray:
        if batch not in cache:
            cache[batch] = preprocess.encode(texts_of_length(data, preprocess, length, batch))["input_ids"]
        return cache[batch]

    return make_input


def texts_of_length(data, preprocess, length: int, count: int) -> list[str]:
    """The ``count`` texts of ``data`` whose token count is closest to ``length``."""
    from ..data.text_batches import clipped_lengths

    order = np.argsort(np.abs(clipped_lengths(preprocess, data.texts) - length), kind="stable")
    return [data.texts[i] for i in order[:count]]
