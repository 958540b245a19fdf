"""One interface over every backend: ``runner.predict(batch) -> logits``, numpy in, numpy out.

Validation and benchmarking only talk to a Runner, which is why one check serves every backend.
This module imports no backend at load time: torch, onnxruntime and openvino load on first use.

>>> runner = open_runner("model.onnx", "onnxruntime:CPUExecutionProvider", threads=2)
>>> logits = runner.predict(batch)   # float32 (N, C, H, W) -> float32 (N, classes)

Text models take several inputs: ``predict`` also accepts a dict of named arrays, e.g.
``{"input_ids": ..., "attention_mask": ..., "token_type_ids": ...}`` (int64, (N, L)); inputs the model does not
have are ignored, so one tokenizer output serves models with and without ``token_type_ids``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Union

import numpy as np

from .errors import BackendUnavailable, EdgetlError


@dataclass(frozen=True)
class InputSpec:
    """The first input's shape (``None`` for dynamic axes) and dtype; ``names``: every input, in model order."""

    shape: tuple[int | None, ...]
    dtype: str = "float32"
    names: tuple[str, ...] = ()


# One array for single-input models (images), or named arrays for multi-input models (text).
Batch = Union[np.ndarray, Mapping[str, np.ndarray]]


class Runner(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    input_spec: InputSpec

    def predict(self, batch: Batch) -> np.ndarray: ...

    def close(self) -> None: ...


_BACKENDS: dict[str, Callable[..., Runner]] = {}


def register_backend(name: str):
    def wrap(factory):
        _BACKENDS[name] = factory
        return factory

    return wrap


def parse_runtime(runtime: str) -> tuple[str, str]:
    """``"openvino:CPU"`` -> ("openvino", "CPU"); a bare backend gets its default device."""
    backend, _, device = runtime.partition(":")
    if backend not in _BACKENDS:
        raise EdgetlError(f"unknown runtime {runtime!r}; backends: {', '.join(sorted(_BACKENDS))}")
    return backend, device


def open_runner(model: Any, runtime: str, *, threads: int = 0, input_spec: InputSpec | None = None) -> Runner:
    """Open ``model`` (a file path, or a torch module for the torch backend) on ``runtime``."""
    backend, device = parse_runtime(runtime)
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists():
        raise EdgetlError(f"model file not found: {model}; export it first (`edgetl export`)")
    return _BACKENDS[backend](model, device=device, threads=threads, input_spec=input_spec)


def backend_for_file(path: str | os.PathLike) -> str:
    """The default runtime for a model file: .onnx -> onnxruntime, .xml -> openvino."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return "onnxruntime:CPUExecutionProvider"
    if suffix == ".xml":
        return "openvino:CPU"
    raise EdgetlError(f"cannot tell the runtime for {path}: expected a .onnx or .xml (OpenVINO IR) file")


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(f"{module} is not installed ({exc}); run `pip install {extra}`") from None


def _named_feed(batch: Mapping[str, np.ndarray], inputs: list[tuple[str, str]], runner: str) -> dict[str, np.ndarray]:
    """The arrays for a model's ``inputs`` [(name, dtype)] out of a dict batch; extra entries are ignored."""
    missing = [name for name, _ in inputs if name not in batch]
    if missing:
        raise EdgetlError(
            f"{runner}: the batch lacks input(s) {', '.join(missing)} (has {', '.join(batch)}); "
            "encode texts with the model's TextPreprocess"
        )
    return {name: np.ascontiguousarray(batch[name], dtype=dtype) for name, dtype in inputs}


def _logits(output: Any) -> Any:
    """The logits of a model output: a tensor, a transformers ModelOutput, or a tuple whose first item they are."""
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


# -- torch ---------------------------------------------------------------------------------


@register_backend("torch")
class TorchRunner:
    def __init__(self, model: Any, *, device: str = "", threads: int = 0, input_spec: InputSpec | None = None):
        torch = _require("torch", "torch")
        device = device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("not available: no CUDA device")
        if threads:
            torch.set_num_threads(threads)
        if isinstance(model, (str, os.PathLike)):
            raise EdgetlError("the torch runner takes a loaded nn.Module; use edgetl.finetune.load_checkpoint")
        self._torch = torch
        self.model = model.eval().to(device)
        self.device = device
        self.name = f"torch:{device}"
        self.input_spec = input_spec or InputSpec((None,))

    def predict(self, batch: Batch) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if isinstance(batch, Mapping):
                tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in batch.items()}
                out = self.model(**tensors)
            else:
                out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return _logits(out).float().cpu().numpy()

    def close(self) -> None:
        self.model = None


# -- onnxruntime ---------------------------------------------------------------------------

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32"}  # fmt: skip


@register_backend("onnxruntime")
class OrtRunner:
    def __init__(self, model: Any, *, device: str = "", threads: int = 0, input_spec: InputSpec | None = None):
        ort = _require("onnxruntime", "onnxruntime")
        provider = device or "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"not available: onnxruntime has no {provider} here (has {', '.join(ort.get_available_providers())})"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(model), options, providers=[provider])
        except Exception as exc:
            raise EdgetlError(f"onnxruntime cannot load {model}: {str(exc).splitlines()[0]}") from None
        nodes = self.session.get_inputs()
        node = nodes[0]
        self.input_name = node.name
        self.inputs = [(n.name, _ORT_DTYPES.get(n.type, "float32")) for n in nodes]
        self.name = f"onnxruntime:{provider}"
        shape = tuple(d if isinstance(d, int) else None for d in node.shape)
        names = tuple(name for name, _ in self.inputs)
        self.input_spec = input_spec or InputSpec(shape, self.inputs[0][1], names)

    def predict(self, batch: Batch) -> np.ndarray:
        if isinstance(batch, Mapping):
            feed = _named_feed(batch, self.inputs, self.name)
        else:
            feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_spec.dtype)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


# -- OpenVINO ------------------------------------------------------------------------------

_OV_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32"}


@register_backend("openvino")
class OpenVinoRunner:
    def __init__(
        self,
        model: Any,
        *,
        device: str = "",
        threads: int = 0,
        input_spec: InputSpec | None = None,
        precision: str = "f32",
    ):
        ov = _require("openvino", "openvino")
        device = device or "CPU"
        core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise BackendUnavailable(
                f"not available: OpenVINO has no {device} device here (has {', '.join(core.available_devices)})"
            )
        # Run at the precision the artifact was saved in: on CPUs with AVX-512 BF16 / AMX, OpenVINO
        # would otherwise silently execute FP32 IR in bf16 and change the answers.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(str(model), device, config)
        except Exception as exc:
            raise EdgetlError(f"OpenVINO cannot load {model}: {str(exc).splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        port = self.compiled.input(0)
        self.inputs = [(_port_name(p, i), _OV_DTYPES.get(p.get_element_type().get_type_name(), "float32"))
                       for i, p in enumerate(self.compiled.inputs)]  # fmt: skip
        self.name = f"openvino:{device}"
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        names = tuple(name for name, _ in self.inputs)
        self.input_spec = input_spec or InputSpec(shape, self.inputs[0][1], names)

    def predict(self, batch: Batch) -> np.ndarray:
        if isinstance(batch, Mapping):
            feed = _named_feed(batch, self.inputs, self.name)
            result = self.request.infer({i: feed[name] for i, (name, _) in enumerate(self.inputs)})
        else:
            result = self.request.infer({0: np.ascontiguousarray(batch, dtype=self.input_spec.dtype)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32).copy()

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _port_name(port: Any, index: int) -> str:
    names = sorted(port.get_names())  # an IR converted from ONNX names every input; a hand-built one may not
    return port.get_any_name() if names else f"input{index}"


def available_backends() -> list[str]:
    return sorted(_BACKENDS)
