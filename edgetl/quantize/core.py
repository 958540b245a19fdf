"""The quantization core: the method registry (``QUANTIZERS``), calibration sets, ``quantize_file`` and the
checks every method shares. The methods themselves live in ``_ort.py``, ``_openvino.py`` and ``qat.py``."""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BackendUnavailable, CalibrationError, EdgetlError, QuantizationError, QuantizationSkipped
from ..settings import QuantizeConfig
from ..registry import Registry


@dataclass
class QuantizeInfo:
    """What one quantization produced: its files (relative to the variant folder) and how it was made."""

    method: str
    format: str  # "onnx" or "openvino"
    files: list[str]
    source: str  # the FP32 model it started from
    runtime: str
    settings: dict[str, Any] = field(default_factory=dict)
    calibration_images: int = 0
    seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stratified_first(labels: np.ndarray, size: int) -> np.ndarray:
    """Sorted indices of at most ``size`` samples, stratified over the classes present (fixed seed)."""
    from ..data.dataset import stratified_indices

    if len(labels) <= size:
        return np.arange(len(labels))
    per_class = -(-size // len(np.unique(labels)))  # the groups present (unlabelled data: one)
    return np.sort(stratified_indices(labels, per_class, 0)[:size])


@dataclass
class ValidationSet:
    """Labelled held-out images for accuracy-aware quantization: uint8 images and the model's preprocessing."""

    data: Any  # edgetl.data.LabeledImages
    preprocess: Any  # edgetl.data.ImagePreprocess

    def subset(self, size: int, method: str) -> Any:
        """At most ``size`` samples, stratified over the classes present (fixed seed), or a one-line error when
        empty."""
        data = self.data
        if len(data) > size:
            data = data.subset(stratified_first(data.labels, size))
        if len(data) == 0:
            raise QuantizationError(f"{method} needs validation samples; the validation split is empty")
        return data


# make(source, folder, calibration=..., validation=..., config=...) -> QuantizeInfo (settings, files)
MakeFn = Callable[..., QuantizeInfo]


@dataclass(frozen=True)
class Quantizer:
    """One quantization method: which FP32 export it starts from, what it writes, what runs it."""

    name: str
    format: str  # "onnx" | "openvino"
    runtime: str  # for edgetl.runners.open_runner
    file: str  # the main model file inside the variant folder
    source: str  # "onnx" | "openvino": the FP32 export it starts from
    needs_calibration: bool
    make: MakeFn
    needs_validation: bool = False
    description: str = ""


QUANTIZERS: Registry[Quantizer] = Registry("quantization method", key="quantize.methods")


def register_quantizer(quantizer: Quantizer) -> Quantizer:
    return QUANTIZERS.register(quantizer.name, quantizer)


def get_quantizer(method: str) -> Quantizer:
    return QUANTIZERS.get(method, error=QuantizationError, key="")


# -- calibration data ---------------------------------------------------------------------------


def calibration_rows(train, size: int, seed: int) -> np.ndarray:
    """``size`` training rows (stratified over classes, fixed by ``seed``; topped up from the rest when classes
    have few samples), sorted."""
    from ..data.dataset import stratified_indices

    if len(train) == 0:
        raise CalibrationError("the training split is empty; static quantization needs training samples to calibrate")
    per_class = -(-size // max(len(train.classes), 1))
    chosen = stratified_indices(train.labels, per_class, seed)[:size]
    if len(chosen) < min(size, len(train)):  # classes with few samples (or none): top up from the rest
        rest = np.setdiff1d(np.arange(len(train)), chosen)
        extra = np.random.default_rng(seed).permutation(rest)[: min(size, len(train)) - len(chosen)]
        chosen = np.concatenate([chosen, extra])
    return np.sort(chosen)


def calibration_images(train, preprocess, size: int, *, seed: int = 0) -> np.ndarray:
    """``size`` training images, preprocessed to one float32 NCHW array."""
    return preprocess.inputs(train, calibration_rows(train, size, seed))


def calibration_batches(train, preprocess, size: int, *, seed: int = 0, batch_size: int = 8) -> list[Any]:
    """``size`` training samples as a list of model-input batches in ``preprocess.batch_order`` (texts of similar
    length together: little padding); a model with named inputs gets ``{input name: array}`` batches."""
    subset = train.subset(calibration_rows(train, size, seed))
    order = preprocess.batch_order(subset)
    return [preprocess.inputs(subset, order[start : start + batch_size]) for start in range(0, len(order), batch_size)]


def is_token_batches(calibration: Any) -> bool:
    """True for calibration data given as batches of named inputs (a list of ``{input name: array}`` dicts)."""
    return isinstance(calibration, (list, tuple)) and bool(calibration) and all(isinstance(b, dict) for b in calibration)


def calibration_count(calibration: Any) -> int:
    """Samples in a calibration set: images of an array, texts of a list of token batches."""
    if calibration is None:
        return 0
    if is_token_batches(calibration):
        return sum(len(next(iter(batch.values()))) for batch in calibration)
    return len(calibration)


def check_token_batches(batches: list[dict[str, np.ndarray]], input_names: list[str], *, minimum: int,
                        source: str) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Text calibration batches restricted to the model's inputs as int64, or a one-line error."""
    checked, count = [], 0
    for position, batch in enumerate(batches):
        missing = [name for name in input_names if name not in batch]
        if missing:
            raise CalibrationError(f"calibration batch {position} lacks {', '.join(missing)} that {source} takes "
                                   f"(has {', '.join(batch)}); encode texts with the model's TextPreprocess")
        arrays = {name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in input_names}
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise CalibrationError(f"calibration batch {position}: token arrays must share one (N, L) shape, got {shapes}")
        count += len(next(iter(arrays.values())))
        checked.append(arrays)
    if count < minimum:
        raise CalibrationError(
            f"the calibration set has {count} text(s), fewer than the {minimum} required "
            "(quantize.min_calibration_size); give more texts (the calibration set comes from the training split), "
            "raise quantize.calibration_size if it is below that, or lower quantize.min_calibration_size"
        )
    return checked


def check_calibration(
    calibration: np.ndarray | None, input_shape: tuple[int | None, ...], *, minimum: int, source: str
) -> np.ndarray:
    """The calibration set as float32 NCHW, or a one-line error: empty, too small, wrong shape or dtype."""
    if calibration is None or len(calibration) == 0:
        raise CalibrationError(
            "the calibration set is empty; give quantize.calibration_size training images (static INT8 needs them)"
        )
    calibration = np.asarray(calibration)
    if calibration.dtype == np.uint8:
        raise CalibrationError(
            f"calibration images are uint8 {calibration.shape}; pass them preprocessed (ImagePreprocess.normalize) "
            "as float32 (N, C, H, W)"
        )
    expected = tuple(input_shape[1:])
    if calibration.ndim != len(input_shape) or any(
        want is not None and want != got for want, got in zip(expected, calibration.shape[1:])
    ):
        shown = "(N, " + ", ".join("?" if d is None else str(d) for d in expected) + ")"
        raise CalibrationError(
            f"calibration images have shape {tuple(calibration.shape)} but {source} expects {shown}; "
            "preprocess them with the model's own ImagePreprocess (same image size and channels)"
        )
    if len(calibration) < minimum:
        raise CalibrationError(
            f"the calibration set has {len(calibration)} image(s), fewer than the {minimum} required "
            "(quantize.min_calibration_size); give more images (the calibration set comes from the training split: "
            "30% of the data for `edgetl optimize`), or lower quantize.min_calibration_size"
        )
    if not np.isfinite(calibration).all():
        raise CalibrationError("the calibration set holds NaN or infinite values; check the preprocessing")
    return np.ascontiguousarray(calibration, dtype=np.float32)


# -- the entry point ----------------------------------------------------------------------------


def quantize_file(
    model_path: str | Path,
    method: str,
    out_dir: str | Path,
    *,
    calibration: np.ndarray | None = None,
    validation: ValidationSet | None = None,
    config: QuantizeConfig | None = None,
    check: bool = True,
    scheme: str = "default",
) -> QuantizeInfo:
    """Quantize the FP32 model file ``model_path`` (``.onnx`` or OpenVINO ``.xml``) with ``method`` into ``out_dir``.

    ``calibration``: preprocessed float32 (N, C, H, W) training images, for static INT8 methods.
    ``validation``: labelled held-out samples, for the accuracy-aware methods.
    ``scheme``: the task's quantization scheme ("transformer": INT8 on MatMul/Gemm only, NNCF's transformer type).
    The files are made in a temporary folder, loaded once on their runtime (``check``), and only then
    moved into ``out_dir``: a failure leaves whatever ``out_dir`` already held untouched.
    Raises QuantizationSkipped when this variant cannot be made here (the run can go on without it).
    """
    quantizer = get_quantizer(method)
    config = config or QuantizeConfig()
    model_path = Path(model_path).resolve()  # the quantizers run in a temporary working directory
    if not model_path.is_file():
        raise QuantizationError(f"model file not found: {model_path}; export it first (`edgetl export`)")
    if quantizer.source == "onnx" and model_path.suffix != ".onnx":
        raise QuantizationError(f"{method} quantizes an ONNX file, got {model_path.name}; pass the onnx-fp32 export")
    if model_path.suffix not in (".onnx", ".xml"):
        raise QuantizationError(f"{model_path.name}: expected a .onnx or OpenVINO .xml file")
    input_shape, output_shape = model_io_shapes(model_path)
    inputs = model_inputs(model_path)
    if quantizer.needs_calibration:
        if is_token_batches(calibration):
            calibration = check_token_batches(calibration, [name for name, _ in inputs],
                                              minimum=config.min_calibration_size, source=model_path.name)
        else:
            calibration = check_calibration(
                calibration, input_shape, minimum=config.min_calibration_size, source=model_path.name
            )
    if quantizer.needs_validation and validation is None:
        raise QuantizationError(f"{method} needs labelled validation images (ValidationSet); pass validation=...")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{method}.", dir=out_dir) as tmp:
        work = Path(tmp).resolve()
        # onnxruntime's quantizers leave a uuid-named .data file in the working directory for some graphs (measured
        # on Optimum's BERT export): run them inside the temporary folder, which is removed afterwards.
        with contextlib.chdir(work):
            info = quantizer.make(model_path, work, calibration=calibration, validation=validation,
                                  config=config, scheme=scheme)
        info.seconds = round(time.perf_counter() - start, 2)
        if check:
            _check_runs(quantizer, work, input_shape, output_shape, calibration, inputs)
        for name in info.files:  # the weights before the file that names them
            if name != quantizer.file:
                (work / name).replace(out_dir / name)
        (work / quantizer.file).replace(out_dir / quantizer.file)
    return info


def model_io_shapes(path: Path) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """Input and output shapes of an ONNX or OpenVINO model file (None: a dynamic axis)."""
    if path.suffix == ".onnx":
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:
            raise QuantizationError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        initializers = {init.name for init in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]

        def dims(value) -> tuple[int | None, ...]:
            return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)

        return dims(inputs[0]), dims(graph.output[0])
    model = read_model(path)
    return tuple(_partial(model.input(0))), tuple(_partial(model.output(0)))


def model_inputs(path: Path) -> list[tuple[str, str]]:
    """(name, numpy dtype) of every input of an ONNX or OpenVINO model file, in model order."""
    if path.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        initializers = {init.name for init in graph.initializer}
        types = {onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.FLOAT16: "float16"}
        return [(i.name, types.get(i.type.tensor_type.elem_type, "float32")) for i in graph.input
                if i.name not in initializers]
    types = {"i64": "int64", "i32": "int32", "f16": "float16"}
    return [(port.get_any_name(), types.get(port.get_element_type().get_type_name(), "float32"))
            for port in read_model(path).inputs]


def _partial(port) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _check_runs(quantizer: Quantizer, folder: Path, input_shape, output_shape, calibration, inputs=()) -> None:
    """Load the new model on its runtime and run one batch; a model that cannot run is skipped, not shipped."""
    from ..runners import open_runner

    probe: Any
    if is_token_batches(calibration):
        probe = {name: array[:2] for name, array in calibration[0].items()}
    elif calibration is not None:
        probe = calibration[:2]
    elif inputs and all(dtype.startswith("int") for _, dtype in inputs):  # a text model: a short token batch
        probe = {name: np.ones((2, 8), dtype=dtype) for name, dtype in inputs}
    else:
        probe = np.zeros((2, *[d or 1 for d in input_shape[1:]]), dtype=np.float32)
    try:
        runner = open_runner(folder / quantizer.file, quantizer.runtime)
        logits = runner.predict(probe)
        runner.close()
    except EdgetlError as exc:
        raise QuantizationSkipped(f"{quantizer.name}: the quantized model does not run on {quantizer.runtime}: {exc}") from None
    want = (len(next(iter(probe.values()))) if isinstance(probe, dict) else len(probe), *output_shape[1:])
    if logits.shape != tuple(d if d is not None else got for d, got in zip(want, logits.shape)):
        raise QuantizationSkipped(f"{quantizer.name}: output shape {logits.shape} differs from the FP32 model's {want}")
    if not np.isfinite(logits).all():
        raise QuantizationSkipped(f"{quantizer.name}: the quantized model returns NaN or infinite logits")


# Messages a backend gives for what it can never do with this graph: the same input fails the same way again.
_DETERMINISTIC = re.compile(r"not supported|unsupported|not implemented|cannot be quantized|no kernel|NOT_IMPLEMENTED|"
                            r"INVALID_GRAPH|is not a registered function|No conversion rule", re.IGNORECASE)


def failure_from(exc: BaseException, method: str, op_types: set[str], backend: str) -> BaseException:
    """What a backend's exception means for the variant, as the exception to raise.

    A known, deterministic inability (the message names one of the graph's operators, or says it is not
    supported/implemented) becomes QuantizationSkipped, which the pipeline records and reuses. Anything else may
    be transient (out of memory, a killed worker, a full disk, a bug): memory and OS errors pass through as they
    are, the rest become a QuantizationError that stops the run without caching anything, so a rerun retries."""
    if isinstance(exc, (MemoryError, OSError)):
        return exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    named = sorted(op for op in op_types if re.search(rf"\b{re.escape(op)}\b", str(exc)))
    if named or isinstance(exc, NotImplementedError) or _DETERMINISTIC.search(str(exc)):
        where = f" at operator {', '.join(named)}" if named else ""
        return QuantizationSkipped(f"{method}: {backend} cannot quantize this model{where} ({message[:200]}); "
                                   "variant skipped")
    return QuantizationError(
        f"{method}: {backend} failed ({type(exc).__name__}: {message[:200]}); nothing was recorded, so rerunning "
        f"retries it; if it fails the same way again, remove {method} from quantize.methods and report the error")


def openvino_module():
    """``openvino``, or a BackendUnavailable that says how to install it."""
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("openvino is not installed; run `pip install openvino`") from None
    return ov


def read_model(path: Path):
    """An ``ov.Model`` from an IR ``.xml`` or an ONNX file; an operator OpenVINO cannot read is named."""
    ov = openvino_module()
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:
        op_types: set[str] = set()
        if path.suffix == ".onnx":
            import onnx

            op_types = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        raise failure_from(exc, f"openvino ({path.name})", op_types, "OpenVINO") from None
