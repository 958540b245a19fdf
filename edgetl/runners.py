"""One interface over every backend: ``runner.predict(batch) -> logits``, numpy in, numpy out.

Validation and benchmarking only talk to a Runner, which is why one check serves every backend.
This module imports no backend at load time: torch, onnxruntime and openvino load on first use.

>>> runner = open_runner("model.onnx", "onnxruntime:CPUExecutionProvider", threads=2)
>>> logits = runner.predict(batch)   # float32 (N, C, H, W) -> float32 (N, classes)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .errors import BackendUnavailable, EdgetlError


@dataclass(frozen=True)
class InputSpec:
    """Input shape with ``None`` for the dynamic batch axis, and its dtype."""

    shape: tuple[int | None, ...]
    dtype: str = "float32"


class Runner(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    input_spec: InputSpec

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

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

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.model(self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.model = None


# -- onnxruntime ---------------------------------------------------------------------------


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
        node = self.session.get_inputs()[0]
        self.input_name = node.name
        self.name = f"onnxruntime:{provider}"
        shape = tuple(d if isinstance(d, int) else None for d in node.shape)
        self.input_spec = input_spec or InputSpec(shape, "float16" if "float16" in node.type else "float32")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(batch, dtype=self.input_spec.dtype)
        return np.asarray(self.session.run(None, {self.input_name: feed})[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


# -- OpenVINO ------------------------------------------------------------------------------


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
        self.name = f"openvino:{device}"
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        self.input_spec = input_spec or InputSpec(shape, "float32")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32).copy()

    def close(self) -> None:
        self.request = None
        self.compiled = None


def available_backends() -> list[str]:
    return sorted(_BACKENDS)
