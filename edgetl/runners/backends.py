"""The runner of each backend (torch, onnxruntime, OpenVINO): open a model on a device, ``predict(batch)``.

This file imports nothing from edgetl (only its errors, with a stand-in where edgetl is absent), numpy at
most at load time, and each backend on first use: the device agent ships it beside itself, so the host and
every device open, feed and refuse runtimes with the same code (``edgetl.runners`` adds the registry).

A model input (a batch) is one array, or a dict of named arrays for a model with several inputs; the helpers
at the end (``batch_size``, ``take_rows``, ``repeat_rows``, ``pad_rows``, ``npz_inputs``) handle both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, Union

import numpy as np

try:
    from ..errors import BackendUnavailable, EdgetlError
except ImportError:  # beside the device agent, where edgetl is not installed

    class EdgetlError(Exception):  # type: ignore[no-redef]
        """Stand-in for edgetl.errors.EdgetlError on a device."""

    class BackendUnavailable(EdgetlError):  # type: ignore[no-redef]
        """Stand-in for edgetl.errors.BackendUnavailable on a device."""


@dataclass(frozen=True)
class InputSpec:
    """The first input's shape (``None`` for dynamic axes) and dtype; ``names``: every input, in model order."""

    shape: tuple[int | None, ...]
    dtype: str = "float32"
    names: tuple[str, ...] = ()

    @property
    def fixed_batch(self) -> int | None:
        """The batch size a static-batch export takes (and no other), or None when the batch axis is dynamic."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


# One array for a single-input model, or named arrays for a model with several inputs.
Batch = Union[np.ndarray, Mapping[str, np.ndarray]]


class Runner(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    input_spec: InputSpec

    def predict(self, batch: Batch) -> np.ndarray: ...

    def close(self) -> None: ...


def unavailable(why: str) -> BackendUnavailable:
    """The error for a runtime that cannot run here; the message reads ``not available: <why>``."""
    return BackendUnavailable(f"not available: {why}")


def require(module: str, extra: str) -> Any:
    """Import ``module``, or raise ``not available: <module> is not installed here; run `pip install <extra>```."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise unavailable(f"{module} is not installed here; run `pip install {extra}`") from None


# Desktop/server GPUs show /dev/nvidia0, Jetson boards /dev/nvhost-gpu (or nvgpu), WSL2 /dev/dxg.
_CUDA_NODES = ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvgpu/igpu0/ctrl", "/dev/dxg")
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def cuda_device_present() -> bool:
    """Whether this machine shows a CUDA device node at all (no node, no CUDA, whatever is installed)."""
    return any(os.path.exists(path) for path in _CUDA_NODES)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _named_feed(batch: Mapping[str, np.ndarray], inputs: list[tuple[str, str]], runner: str) -> dict[str, np.ndarray]:
    """The arrays for a model's ``inputs`` [(name, dtype)] out of a dict batch; extra entries are ignored."""
    missing = [name for name, _ in inputs if name not in batch]
    if missing:
        raise EdgetlError(
            f"{runner}: the batch lacks input(s) {', '.join(missing)} (has {', '.join(batch)}); "
            "encode the samples with the model's preprocessing"
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


def check_torch_device(torch: Any, device: str) -> None:
    """Raise ``not available: <why>`` when torch cannot compute on ``device`` ("cpu", "cuda", "cuda:1")."""
    if not device.startswith("cuda") or torch.cuda.is_available():
        return
    if not cuda_device_present():
        raise unavailable("no CUDA device")
    if torch.version.cuda is None:
        raise unavailable(f"no CUDA in torch {torch.__version__}: a CPU-only build (install a CUDA build of torch)")
    raise unavailable("no CUDA device usable by torch (torch.cuda.is_available() is False: check the driver)")


class TorchRunner:
    """A loaded ``torch.nn.Module`` (not a file: a bundle has no torch model) on ``device``."""

    def __init__(self, model: Any, *, device: str = "", threads: int = 0, input_spec: InputSpec | None = None):
        torch = require("torch", "torch")
        device = device or "cpu"
        check_torch_device(torch, device)
        if threads:
            torch.set_num_threads(threads)
        if isinstance(model, (str, os.PathLike)):
            raise EdgetlError("the torch runner takes a loaded nn.Module; use the task's load_checkpoint (e.g. edgetl.tasks.image.load_checkpoint)")
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


class OrtRunner:
    """An ONNX file on one onnxruntime execution provider; refuses a GPU provider that silently fell back."""

    def __init__(self, model: Any, *, device: str = "", threads: int = 0, input_spec: InputSpec | None = None):
        ort = require("onnxruntime", "onnxruntime")
        provider = device or "CPUExecutionProvider"
        if provider in _CUDA_PROVIDERS and not cuda_device_present():
            raise unavailable("no CUDA device")
        available = ort.get_available_providers()
        if provider not in available:
            raise unavailable(f"onnxruntime {ort.__version__} here has no {provider} (has {', '.join(available)})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(model), options, providers=[provider])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a bad model
            raise EdgetlError(f"onnxruntime cannot load {model}: {_first_line(exc)}") from None
        running = self.session.get_providers()
        if provider not in running:
            # A GPU provider that fails to start (no CUDA libraries, a driver mismatch) only logs a warning and
            # runs the session on the CPU: a latency measured there must not be reported as the GPU's.
            self.session = None
            raise unavailable(f"{provider} requested but onnxruntime fell back to {', '.join(running)}: "
                              "install onnxruntime-gpu and check the CUDA driver and libraries")
        nodes = self.session.get_inputs()
        self.input_name = nodes[0].name
        self.inputs = [(n.name, _ORT_DTYPES.get(n.type, "float32")) for n in nodes]
        self.name = f"onnxruntime:{provider}"
        shape = tuple(d if isinstance(d, int) else None for d in nodes[0].shape)
        self.input_spec = input_spec or InputSpec(shape, self.inputs[0][1], tuple(name for name, _ in self.inputs))

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


class OpenVinoRunner:
    """An OpenVINO IR (.xml + .bin) compiled for one device, at the artifact's precision (``precision``)."""

    def __init__(
        self,
        model: Any,
        *,
        device: str = "",
        threads: int = 0,
        input_spec: InputSpec | None = None,
        precision: str = "f32",
    ):
        ov = require("openvino", "openvino")
        device = device or "CPU"
        core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            has = ", ".join(core.available_devices) or "none"
            raise unavailable(f"OpenVINO sees no {device} device here (has {has})")
        # Run at the precision the artifact was saved in: on CPUs with AVX-512 BF16 / AMX, OpenVINO
        # would otherwise silently execute FP32 IR in bf16 and change the answers.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(str(model), device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for anything
            raise EdgetlError(f"OpenVINO cannot load {model}: {_first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = [(_port_name(p, i), _OV_DTYPES.get(p.get_element_type().get_type_name(), "float32"))
                       for i, p in enumerate(self.compiled.inputs)]  # fmt: skip
        self.name = f"openvino:{device}"
        shape = tuple(d.get_length() if d.is_static else None for d in self.compiled.input(0).get_partial_shape())
        self.input_spec = input_spec or InputSpec(shape, self.inputs[0][1], tuple(name for name, _ in self.inputs))

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


# Backend name -> runner class; ``edgetl.runners.RUNTIMES`` registers these, the device agent reads them here.
RUNNERS: dict[str, type] = {"torch": TorchRunner, "onnxruntime": OrtRunner, "openvino": OpenVinoRunner}


# -- batches: one array or named arrays, rows along the first axis ---------------------------


def batch_size(batch: Batch) -> int:
    """The number of rows of a batch."""
    return len(next(iter(batch.values()))) if isinstance(batch, Mapping) else len(batch)


def take_rows(batch: Batch, rows: Any) -> Batch:
    """``batch[rows]`` for every array (``rows``: a slice or an index array)."""
    if isinstance(batch, Mapping):
        return {name: np.ascontiguousarray(array[rows]) for name, array in batch.items()}
    return np.ascontiguousarray(batch[rows])


def repeat_rows(batch: Batch, size: int) -> Batch:
    """Exactly ``size`` rows: the batch's rows in order, repeated from the first as often as needed."""
    return take_rows(batch, np.arange(size) % batch_size(batch))


def pad_rows(batch: Batch, size: int) -> Batch:
    """Zero rows appended up to ``size`` (a static-batch model takes no fewer)."""

    def pad(array: np.ndarray) -> np.ndarray:
        return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])

    return {name: pad(a) for name, a in batch.items()} if isinstance(batch, Mapping) else pad(batch)


def npz_inputs(npz: Any) -> Batch | None:
    """The batch stored in a loaded .npz (or a dict of its arrays), as a bundle's ``validation/slice.npz`` and
    ``validation/bench.npz`` store it: one array ``inputs``, or ``inputs.<name>`` per named input; None if none."""
    files: Sequence[str] = list(npz.files if hasattr(npz, "files") else npz)
    if "inputs" in files:
        return np.asarray(npz["inputs"])
    named = {key[len("inputs."):]: np.asarray(npz[key]) for key in files if key.startswith("inputs.")}
    return named or None
