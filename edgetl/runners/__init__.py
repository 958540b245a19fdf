"""One interface over every backend: ``runner.predict(batch) -> logits``, numpy in, numpy out.

Validation and benchmarking only talk to a Runner, which is why one check serves every backend. The runners
themselves live in ``backends.py``, which the device agent ships beside itself, so a device opens a model
exactly as the host does. Nothing here imports a backend at load time: torch, onnxruntime and openvino load
on first use.

>>> runner = open_runner("model.onnx", "onnxruntime:CPUExecutionProvider", threads=2)
>>> logits = runner.predict(batch)   # float32 (N, C, H, W) -> float32 (N, classes)

A model with several inputs takes a dict of named arrays, e.g. ``{"input_ids": ..., "attention_mask": ...}``
(int64, (N, L)); entries the model has no input for are ignored, so one encoder output serves models with and
without ``token_type_ids``.

Runtimes are ``backend:device`` strings; ``RUNTIMES`` holds the backends, so other code validates a runtime
with ``RUNTIMES.get(runtime.partition(":")[0], key=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import EdgetlError
from ..registry import Registry
from .backends import RUNNERS, Batch, InputSpec, OpenVinoRunner, OrtRunner, Runner, TorchRunner

__all__ = ["RUNTIMES", "Batch", "InputSpec", "OpenVinoRunner", "OrtRunner", "Runner", "TorchRunner",
           "backend_for_file", "open_runner", "parse_runtime"]

RUNTIMES: Registry[type] = Registry(
    "runtime", hint="a runtime is backend:device, e.g. onnxruntime:CPUExecutionProvider, openvino:CPU, torch:cpu")
for _backend, _runner in RUNNERS.items():
    RUNTIMES.register(_backend, _runner)


def parse_runtime(runtime: str) -> tuple[str, str]:
    """``"openvino:CPU"`` -> ("openvino", "CPU"); a bare backend gets its default device ("")."""
    backend, _, device = runtime.partition(":")
    RUNTIMES.get(backend, error=EdgetlError)
    return backend, device


def open_runner(model: Any, runtime: str, *, threads: int = 0, input_spec: InputSpec | None = None) -> Runner:
    """Open ``model`` (a file path, or a torch module for the torch backend) on ``runtime``.

    Raises BackendUnavailable ("not available: <why>") when the backend or device is missing here, including an
    onnxruntime GPU provider that would silently run on the CPU."""
    backend, device = parse_runtime(runtime)
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists():
        raise EdgetlError(f"model file not found: {model}; export it first (`edgetl export`)")
    return RUNTIMES.get(backend)(model, device=device, threads=threads, input_spec=input_spec)


def backend_for_file(path: str | os.PathLike) -> str:
    """The default runtime for a model file: .onnx -> onnxruntime, .xml -> openvino."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return "onnxruntime:CPUExecutionProvider"
    if suffix == ".xml":
        return "openvino:CPU"
    raise EdgetlError(f"cannot tell the runtime for {path}: expected a .onnx or .xml (OpenVINO IR) file")
