"""The device agent: one small program that measures a bundle's models where they will run.

Needs only Python 3.9+, numpy, and onnxruntime or OpenVINO; it never imports edgetl. The host copies it,
with its sibling modules ``loop.py``, ``stats.py`` and ``environment.py`` and the bundle, to the device
(or runs it in a local subprocess), and reads JSON lines from its stdout, one event per line:

    {"event": "facts", ...}     CPU model, cores, memory, runtime versions, emulation settings
    {"event": "runtime", ...}   a runtime opened (cold start) or "not available: <why>"
    {"event": "outputs", ...}   that runtime's logits on the bundle's validation slice
    {"event": "stats", ...}     latency statistics at one batch size
    {"event": "error", ...}     timeout, a missing package, or a failure; the agent then exits non-zero
    {"event": "done"}

Events are flushed as they happen, so whatever was measured before a timeout reaches the host.

    python agent.py request.json          # measure: warm-up, timed runs until the median is stable
    python agent.py --probe request.json  # which runtimes really load here (a tiny built-in model)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any, Callable

# A Relu over float32 (n, 4) in ONNX (opset 13, 83 bytes, made with onnx.helper): the probe really
# opens a session on every runtime with it and runs one inference, rather than trusting a device list.
PROBE_MODEL = base64.b64decode(
    "CAcSBmVkZ2V0bDpBCgwKAXgSAXkiBFJlbHUSBXByb2JlWhQKAXgSDwoNCAESCQoDEgFuCgIIBGIUCgF5Eg8KDQgBEgkKAxIBbgoCCARCBAoAEA0="
)
EXIT_TIMEOUT = 124
EXIT_MISSING = 3  # a required package (numpy, the runtime) is not installed on the device


class Unavailable(Exception):
    """A runtime cannot run here; the message says why and is reported as 'not available: <message>'."""


class AgentTimeout(Exception):
    pass


class Session:
    """A model opened on one runtime: ``predict(batch)`` -> float32 logits."""

    def __init__(self, name: str, predict: Callable[[Any], Any], batch_axis: Any, settings: dict[str, Any]):
        self.name, self.predict, self.batch_axis, self.settings = name, predict, batch_axis, settings


def _cuda_device_present() -> bool:
    # Desktop/server GPUs show /dev/nvidia0, Jetson boards /dev/nvhost-gpu (or nvgpu); no node, no CUDA.
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvgpu/igpu0/ctrl"))


def open_onnxruntime(model: str, device: str, threads: int) -> Session:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed on this device (pip install onnxruntime)") from None
    provider = device or "CPUExecutionProvider"
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and not _cuda_device_present():
        raise Unavailable("no CUDA device")
    if provider not in ort.get_available_providers():
        has = ", ".join(ort.get_available_providers())
        raise Unavailable(f"onnxruntime {ort.__version__} here has no {provider} (has {has})")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=[provider])
    if session.get_providers()[0] != provider:  # a GPU provider that fails to start falls back to the CPU
        raise Unavailable(f"{provider} did not start (onnxruntime fell back to {session.get_providers()[0]})")
    nodes = session.get_inputs()
    node = nodes[0]
    dtype = "float16" if "float16" in node.type else "float32"
    import numpy as np

    def predict(batch):
        if isinstance(batch, dict):  # a text model: named int64 token arrays, the ones the model takes
            feed = {n.name: np.ascontiguousarray(batch[n.name], dtype=np.int64) for n in nodes}
        else:
            feed = {node.name: np.ascontiguousarray(batch, dtype=dtype)}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    settings = {"intra_op_num_threads": threads, "providers": session.get_providers(), "onnxruntime": ort.__version__}
    return Session(f"onnxruntime:{provider}", predict, node.shape[0], settings)


def open_openvino(model: str, device: str, threads: int) -> Session:
    try:
        import openvino as ov
    except ImportError:
        raise Unavailable("OpenVINO is not installed on this device (pip install openvino)") from None
    device = device or "CPU"
    core = ov.Core()
    if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise Unavailable(f"OpenVINO sees no {device} device here (has {', '.join(core.available_devices) or 'none'})")
    # FP32 artifacts run in f32: on CPUs with AVX-512 BF16 / AMX the plugin would otherwise pick bf16.
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, device, config)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    import numpy as np

    names = [port.get_any_name() for port in compiled.inputs]

    def predict(batch):
        if isinstance(batch, dict):  # a text model: named int64 token arrays, the ones the model takes
            result = request.infer({name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in names})
        else:
            result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(result[output], dtype=np.float32).copy()

    dim = compiled.input(0).get_partial_shape()[0]
    settings = {"inference_num_threads": threads, "device": device, "openvino": ov.__version__}
    return Session(f"openvino:{device}", predict, dim.get_length() if dim.is_static else None, settings)


def open_torch_probe(device: str) -> str:
    """torch cannot open a bundle's ONNX/OpenVINO files; the probe still checks that torch reaches the device."""
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed on this device") from None
    device = device or "cpu"
    if device.startswith("cuda"):
        if not _cuda_device_present():
            raise Unavailable("no CUDA device")
        if torch.version.cuda is None:
            raise Unavailable(f"no CUDA in torch {torch.__version__}: a CPU-only build (install a CUDA build of torch)")
        if not torch.cuda.is_available():
            raise Unavailable("no CUDA device usable by torch (torch.cuda.is_available() is False: driver?)")
    float(torch.ones(4, device=device).sum().item())
    return f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else "")


OPENERS: dict[str, Callable[[str, str, int], Session]] = {"onnxruntime": open_onnxruntime, "openvino": open_openvino}


def open_runtime(runtime: str, model: str, threads: int) -> Session:
    backend, _, device = runtime.partition(":")
    if backend == "torch":
        raise Unavailable("a bundle has no torch model (torch:* runtimes measure a run: edgetl bench RECIPE)")
    if backend not in OPENERS:
        raise Unavailable(f"unknown runtime {runtime!r}; the agent knows {', '.join(sorted(OPENERS))} and torch")
    try:
        return OPENERS[backend](model, device, threads)
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime that fails to load is reported, not fatal
        raise Unavailable(f"{runtime} cannot load {os.path.basename(model)}: {_first_line(exc)}") from None


# -- the program ------------------------------------------------------------------------------


class Events:
    """JSON lines on the real stdout. fd 1 itself is pointed at stderr, so a runtime's own prints
    (native code writes to fd 1 too) cannot break the protocol."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def emit(self, event: str, **data: Any) -> None:
        self._out.write(json.dumps({"event": event, **data}, default=_plain, allow_nan=False) + "\n")
        self._out.flush()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def apply_emulation(pin_cpus: list[int] | None, memory_mb: int) -> dict[str, Any]:
    """Pin this process to ``pin_cpus`` and cap its address space, before any runtime starts threads."""
    applied: dict[str, Any] = {}
    if pin_cpus:
        os.sched_setaffinity(0, set(pin_cpus))
        applied["cpus"] = sorted(os.sched_getaffinity(0))
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        applied["memory_mb"] = memory_mb
    return applied


def _check_files(files: dict[str, str]) -> None:
    for path, digest in files.items():
        with open(path, "rb") as handle:
            if hashlib.sha256(handle.read()).hexdigest() != digest:
                raise RuntimeError(f"{path} does not match the bundle's sha256: the copy to the device is damaged")


def _rows(inputs: Any, start: int, stop: int) -> Any:
    """Rows of model inputs: an image array, or {name: token array} for a text model."""
    if isinstance(inputs, dict):
        return {name: array[start:stop] for name, array in inputs.items()}
    return inputs[start:stop]


def _count(inputs: Any) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def _pad_rows(inputs: Any, size: int) -> Any:
    """Zero rows up to ``size``: a fixed-batch model takes no fewer."""
    import numpy as np

    def pad(array):
        return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])

    return {name: pad(a) for name, a in inputs.items()} if isinstance(inputs, dict) else pad(inputs)


def _slice_inputs(npz: Any) -> Any:
    """A slice.npz's inputs: ``inputs`` (images), or ``inputs.<name>`` token arrays (text)."""
    if "inputs" in npz.files:
        return npz["inputs"]
    return {key[len("inputs."):]: npz[key] for key in npz.files if key.startswith("inputs.")}


def _slice_logits(session: Session, inputs: Any) -> Any:
    import numpy as np

    step = session.batch_axis if isinstance(session.batch_axis, int) and session.batch_axis > 0 else 32
    outputs = []
    total = _count(inputs)
    for start in range(0, total, step):
        chunk = _rows(inputs, start, start + step)
        count = _count(chunk)
        if isinstance(session.batch_axis, int) and count < step:  # a fixed-batch model gets zero padding
            chunk = _pad_rows(chunk, step)
        outputs.append(session.predict(chunk)[:count])
    return np.concatenate(outputs)


def _bench_batch(request: dict[str, Any], size: int) -> Any:
    """The timed input at one batch size: random float32 of the model's input shape, or for a text model the
    token arrays the host sent (real texts of the benchmark's sequence length), repeated to ``size`` rows."""
    import numpy as np

    text = request.get("text")
    if not text:
        return np.random.default_rng(0).standard_normal((size, *request["input_shape"]), dtype=np.float32)
    rows = {name: np.asarray(values, dtype=np.int64) for name, values in text["rows"].items()}
    available = _count(rows)
    picks = [i % available for i in range(size)]
    return {name: np.ascontiguousarray(array[picks]) for name, array in rows.items()}


def bench(request: dict[str, Any], events: Events) -> None:
    import numpy as np

    from_here = _siblings()
    environment, loop, stats = from_here["environment"], from_here["loop"], from_here["stats"]
    threads = int(request.get("threads", 0))
    slice_data = np.load(request["slice"]) if request.get("slice") else None
    for run in request["runs"]:
        runtime, artifact = run["runtime"], run.get("artifact")
        try:
            _check_files(run.get("sha256", {}))
            start = time.perf_counter_ns()
            session = open_runtime(runtime, run["model"], threads)
        except Unavailable as exc:
            events.emit("runtime", runtime=runtime, artifact=artifact, status=f"not available: {exc}")
            continue
        sizes = sorted(int(b) for b in request["batch_sizes"])
        fixed = session.batch_axis if isinstance(session.batch_axis, int) and session.batch_axis > 0 else None
        session.predict(_bench_batch(request, fixed or sizes[0]))
        cold_start_s = (time.perf_counter_ns() - start) / 1e9
        events.emit("runtime", runtime=runtime, artifact=artifact, status="ok", cold_start_s=cold_start_s,
                    settings=session.settings)
        if slice_data is not None:
            events.emit("outputs", runtime=runtime, logits=_slice_logits(session, _slice_inputs(slice_data)))
        for size in sizes:
            if fixed is not None and size != fixed:
                events.emit("skipped", runtime=runtime, batch_size=size,
                            reason=f"the model's batch size is fixed at {fixed}")
                continue
            batch = _bench_batch(request, size)
            run_ = loop.timed_runs(lambda: session.predict(batch), warmup=int(request["warmup"]),
                                   min_runs=int(request["min_runs"]), max_seconds=float(request["max_seconds"]),
                                   target_rel_ci=float(request["target_rel_ci"]))
            summary = stats.summarize(run_.samples_ns, batch_size=size, stopped_by=run_.stopped_by,
                                      peak_rss_mb=environment.peak_rss_mb(), first_run_ms=run_.first_run_ms,
                                      warmup_runs=int(request["warmup"]), timed_seconds=run_.timed_seconds)
            events.emit("stats", runtime=runtime, stats=summary.to_dict())
        session = None


def probe(request: dict[str, Any], events: Events) -> None:
    with tempfile.TemporaryDirectory(prefix="edgetl-probe-") as folder:
        model = os.path.join(folder, "probe.onnx")
        with open(model, "wb") as handle:
            handle.write(PROBE_MODEL)
        for runtime in request["runtimes"]:
            backend, _, device = runtime.partition(":")
            try:
                if backend == "torch":
                    detail = open_torch_probe(device)
                else:
                    session = open_runtime(runtime, model, int(request.get("threads", 0)))
                    import numpy as np

                    out = session.predict(np.array([[-1.0, 0.0, 1.0, 2.0]], dtype=np.float32))
                    if out.tolist() != [[0.0, 0.0, 1.0, 2.0]]:
                        raise Unavailable(f"{runtime} loads but computes Relu wrongly: {out.tolist()}")
                    detail = json.dumps(session.settings)
                events.emit("runtime", runtime=runtime, status="ok", detail=detail)
            except Unavailable as exc:
                events.emit("runtime", runtime=runtime, status=f"not available: {exc}")


def _siblings() -> dict[str, Any]:
    """loop, stats and environment: the package's modules inside edgetl, the copies beside this file on a device."""
    if __package__:
        from . import environment, loop, stats
    else:
        import environment  # type: ignore[no-redef]
        import loop  # type: ignore[no-redef]
        import stats  # type: ignore[no-redef]
    return {"environment": environment, "loop": loop, "stats": stats}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _on_alarm(signum: int, frame: Any) -> None:
    raise AgentTimeout()


def main(argv: list[str]) -> int:
    events = Events()
    probe_mode = "--probe" in argv
    args = [a for a in argv if a != "--probe"]
    if len(args) != 1:
        events.emit("error", kind="usage", message="usage: agent.py [--probe] REQUEST.json")
        return 2
    with open(args[0]) as handle:
        request = json.load(handle)
    timeout_s = int(request.get("timeout_s") or 0)
    if timeout_s and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(timeout_s)
    try:
        emulation = apply_emulation(request.get("pin_cpus"), int(request.get("memory_mb") or 0))
        try:
            environment = _siblings()["environment"]
        except ImportError as exc:  # loop/stats need numpy
            events.emit("error", kind="missing",
                        message=f"{sys.executable} lacks {exc.name} (pip install numpy onnxruntime)")
            return EXIT_MISSING
        events.emit("facts", environment=environment.environment(), emulation=emulation, python=sys.executable)
        (probe if probe_mode else bench)(request, events)
    except AgentTimeout:
        events.emit("error", kind="timeout", message=f"the agent ran past its {timeout_s} s limit")
        return EXIT_TIMEOUT
    except Exception as exc:  # noqa: BLE001 - reported to the host as one line
        events.emit("error", kind="agent", message=f"{type(exc).__name__}: {_first_line(exc)}")
        return 1
    events.emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
