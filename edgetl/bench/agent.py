"""The device agent: one small program that measures a bundle's models where they will run.

Needs only Python 3.9+, numpy, and onnxruntime or OpenVINO; it never imports edgetl. The host copies it, with
its sibling modules (``backends.py``: the host's own runners from ``edgetl/runners/``; ``loop.py``, ``stats.py``
and ``environment.py``: its timing rule, statistics and machine facts) and the bundle files it needs, to the
device (or to a temporary folder for a local target), runs it, and reads JSON lines from its stdout:

    {"event": "facts", ...}     CPU model, cores, memory, runtime versions, emulation settings
    {"event": "inputs", ...}    what is timed: the benchmark inputs' file, rows and row shape (or random data)
    {"event": "runtime", ...}   a runtime opened (cold start, its settings) or "not available: <why>"
    {"event": "outputs", ...}   that runtime's outputs on the bundle's validation slice, under "logits" (an
                                embedding bundle's (N, D) embeddings too: the host knows which from the manifest)
    {"event": "stats", ...}     latency statistics at one batch size
    {"event": "skipped", ...}   a batch size a static-batch model cannot take
    {"event": "race", ...}      the runtimes that ran, timed back to back in interleaved rounds (``paired.py``)
    {"event": "error", ...}     timeout, a missing package, or a failure; the agent then exits non-zero
    {"event": "done"}

The request names the bundle folder (``bundle``), the files to check (``sha256``), the runs (runtime, model
file), the validation slice and the benchmark inputs (``inputs``: an .npz whose rows are repeated to each batch
size; without one, random float32 data of ``input_shape``), and the measurement policy.
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
import types
from typing import Any

# A Relu over float32 (n, 4) in ONNX (opset 13, 83 bytes, made with onnx.helper): the probe really
# opens a session on every runtime with it and runs one inference, rather than trusting a device list.
PROBE_MODEL = base64.b64decode(
    "CAcSBmVkZ2V0bDpBCgwKAXgSAXkiBFJlbHUSBXByb2JlWhQKAXgSDwoNCAESCQoDEgFuCgIIBGIUCgF5Eg8KDQgBEgkKAxIBbgoCCARCBAoAEA0="
)
EXIT_TIMEOUT = 124
EXIT_MISSING = 3  # a required package (numpy, the runtime) is not installed on the device


class AgentTimeout(Exception):
    pass


def open_runtime(backends: Any, runtime: str, model: str, threads: int) -> Any:
    """``model`` opened on ``runtime`` with the host's own runner classes (``backends.py``, shipped beside this
    file); anything that keeps it from running here is a BackendUnavailable reading "not available: <why>"."""
    backend, _, device = runtime.partition(":")
    if backend not in backends.RUNNERS:
        known = ", ".join(sorted(backends.RUNNERS))
        raise backends.unavailable(f"unknown runtime {runtime!r}; the agent knows {known}")
    try:
        return backends.RUNNERS[backend](model, device=device, threads=threads)
    except backends.BackendUnavailable:
        raise
    except backends.EdgetlError as exc:  # the runner's own one-line "cannot load" message
        raise backends.unavailable(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a runtime that fails to load is reported, not fatal
        raise backends.unavailable(f"{runtime} cannot load {os.path.basename(model)}: {_first_line(exc)}") from None


def probe_torch(backends: Any, device: str) -> str:
    """torch cannot open a bundle's ONNX/OpenVINO files; the probe still checks that torch computes on the device."""
    torch = backends.require("torch", "torch")
    device = device or "cpu"
    backends.check_torch_device(torch, device)
    float(torch.ones(4, device=device).sum().item())
    return f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else "")


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


def _check_files(root: str, files: dict[str, str]) -> None:
    for path, digest in files.items():
        with open(os.path.join(root, path), "rb") as handle:
            if hashlib.sha256(handle.read()).hexdigest() != digest:
                raise RuntimeError(f"{path} does not match the bundle's sha256: the copy to the device is damaged")


def _load_inputs(backends: Any, root: str, path: str | None) -> Any:
    """The model inputs stored in a bundle's .npz (``inputs`` or ``inputs.<name>``), or None without a file."""
    if not path:
        return None
    import numpy as np

    with np.load(os.path.join(root, path)) as npz:
        inputs = backends.npz_inputs(npz)
    if inputs is None:
        raise RuntimeError(f"{path} holds no model inputs (inputs or inputs.<name> arrays); re-ship the bundle")
    return inputs


def _logits_on(backends: Any, runner: Any, inputs: Any) -> Any:
    """The runner's outputs (logits or embeddings, one row per sample) on every row of ``inputs``, in batches its
    input takes (zero-padded to a static batch)."""
    import numpy as np

    fixed = runner.input_spec.fixed_batch
    step, total, outputs = fixed or 32, backends.batch_size(inputs), []
    for start in range(0, total, step):
        chunk = backends.take_rows(inputs, slice(start, start + step))
        count = backends.batch_size(chunk)
        outputs.append(runner.predict(backends.pad_rows(chunk, step) if fixed else chunk)[:count])
    return np.concatenate(outputs)


def _timed_batch(backends: Any, rows: Any, input_shape: list[int] | None, size: int, dtype: str) -> Any:
    """What is timed at one batch size: the bundle's benchmark rows repeated to ``size`` rows, or (for a bundle
    that has none) reproducible random float32 data of one item's ``input_shape``."""
    import numpy as np

    if rows is not None:
        batch = backends.repeat_rows(rows, size)
    else:
        batch = np.random.default_rng(0).standard_normal((size, *input_shape), dtype=np.float32)
    # One array is cast to the model's dtype now, so the timed call does not include the cast.
    return batch if isinstance(batch, dict) else batch.astype(dtype, copy=False)


def _describe_inputs(backends: Any, rows: Any, source: str | None, input_shape: list[int] | None) -> dict[str, Any]:
    """What is timed: its source, how many distinct rows, and one row's shape (per named input)."""
    if rows is None:
        return {"source": "random float32", "rows": None, "shape": input_shape}
    shape = {name: list(a.shape[1:]) for name, a in rows.items()} if isinstance(rows, dict) else list(rows.shape[1:])
    return {"source": source, "rows": backends.batch_size(rows), "shape": shape}


def bench(request: dict[str, Any], events: Events) -> None:
    here = _siblings()
    backends = here.backends
    root, threads = request["bundle"], int(request.get("threads", 0))
    _check_files(root, request.get("sha256", {}))
    slice_inputs = _load_inputs(backends, root, request.get("slice"))
    rows = _load_inputs(backends, root, request.get("inputs"))
    events.emit("inputs", **_describe_inputs(backends, rows, request.get("inputs"), request.get("input_shape")))
    sizes = sorted(int(b) for b in request["batch_sizes"])
    warmup = int(request["warmup"])
    racers: dict[str, Any] = {}  # runtime -> predict on a batch of sizes[0], kept open for the race
    try:
        for run in request["runs"]:
            _bench_run(here, backends, request, run, root, threads, sizes, warmup, rows, slice_inputs, events, racers)
        rounds = int(request.get("race_rounds", 0))
        if rounds and len(racers) > 1:
            times = here.paired.interleaved_rounds({rt: call for rt, (call, _) in racers.items()}, rounds=rounds,
                                                   calls_per_round=int(request.get("race_calls", 5)))
            events.emit("race", batch_size=sizes[0], rounds=rounds, times_ms=times)
    finally:
        for _, runner in racers.values():
            runner.close()


def _bench_run(here, backends, request, run, root, threads, sizes, warmup, rows, slice_inputs, events,
               racers) -> None:
    """One runtime: open it, its outputs on the slice, its stats per batch size; left open in ``racers`` when it
    can take the smallest batch size (the race), else closed."""
    runtime, artifact = run["runtime"], run.get("artifact")
    start = time.perf_counter_ns()
    try:
        runner = open_runtime(backends, runtime, os.path.join(root, run["model"]), threads)
    except backends.BackendUnavailable as exc:
        events.emit("runtime", runtime=runtime, artifact=artifact, status=str(exc))
        return
    fixed = runner.input_spec.fixed_batch

    def batch_of(size: int) -> Any:
        return _timed_batch(backends, rows, request.get("input_shape"), size, runner.input_spec.dtype)

    runner.predict(batch_of(fixed or sizes[0]))
    cold_start_s = (time.perf_counter_ns() - start) / 1e9
    events.emit("runtime", runtime=runtime, artifact=artifact, status="ok", cold_start_s=cold_start_s,
                settings=here.environment.runtime_settings(runner))
    if slice_inputs is not None:
        events.emit("outputs", runtime=runtime, logits=_logits_on(backends, runner, slice_inputs))
    for size in sizes:
        if fixed is not None and size != fixed:
            events.emit("skipped", runtime=runtime, batch_size=size,
                        reason=f"the model's batch size is fixed at {fixed}")
            continue
        batch = batch_of(size)
        timed = here.loop.timed_runs(lambda b=batch: runner.predict(b), warmup=warmup,
                                     min_runs=int(request["min_runs"]),
                                     max_seconds=float(request["max_seconds"]),
                                     target_rel_ci=float(request["target_rel_ci"]))
        summary = here.stats.summarize(timed.samples_ns, batch_size=size, stopped_by=timed.stopped_by,
                                       peak_rss_mb=here.environment.peak_rss_mb(), first_run_ms=timed.first_run_ms,
                                       warmup_runs=warmup, timed_seconds=timed.timed_seconds)
        events.emit("stats", runtime=runtime, stats=summary.to_dict())
    if fixed is None or fixed == sizes[0]:
        first = batch_of(sizes[0])
        racers[runtime] = (lambda: runner.predict(first), runner)
    else:
        runner.close()


def probe(request: dict[str, Any], events: Events) -> None:
    import numpy as np

    here = _siblings()
    with tempfile.TemporaryDirectory(prefix="edgetl-probe-") as folder:
        model = os.path.join(folder, "probe.onnx")
        with open(model, "wb") as handle:
            handle.write(PROBE_MODEL)
        for runtime in request["runtimes"]:
            backend, _, device = runtime.partition(":")
            try:
                if backend == "torch":  # no torch model to open: check that torch computes on the device
                    detail = probe_torch(here.backends, device)
                else:
                    runner = open_runtime(here.backends, runtime, model, int(request.get("threads", 0)))
                    out = runner.predict(np.array([[-1.0, 0.0, 1.0, 2.0]], dtype=np.float32))
                    if out.tolist() != [[0.0, 0.0, 1.0, 2.0]]:
                        raise here.backends.unavailable(f"{runtime} loads but computes Relu wrongly: {out.tolist()}")
                    detail = json.dumps(here.environment.runtime_settings(runner))
                    runner.close()
                events.emit("runtime", runtime=runtime, status="ok", detail=detail)
            except here.backends.BackendUnavailable as exc:
                events.emit("runtime", runtime=runtime, status=str(exc))


def _siblings() -> Any:
    """The modules the agent runs with (``backends``: the runners; ``loop``, ``stats``, ``environment``): the
    package's own inside edgetl, the copies beside this file on a device. Importing them needs numpy."""
    if __package__:
        from ..runners import backends
        from . import environment, loop, paired, stats
    else:
        import backends  # type: ignore[no-redef]
        import environment  # type: ignore[no-redef]
        import loop  # type: ignore[no-redef]
        import paired  # type: ignore[no-redef]
        import stats  # type: ignore[no-redef]
    return types.SimpleNamespace(backends=backends, environment=environment, loop=loop, paired=paired, stats=stats)


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
            environment = _siblings().environment
        except ImportError as exc:  # backends, loop and stats need numpy
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
