"""Benchmark a bundle on targets: this machine, an emulated small device, and devices over SSH.

Every target runs the same device agent (``agent.py``, with the host's own runners): in a local subprocess, or
copied with the bundle to the device over one SSH session (``launch``). The agent returns latencies on the inputs
the host measured with (``plan``) and its outputs on the bundle's validation slice; here the shared validation
check judges those outputs (logits, or an embedding bundle's embeddings by cosine similarity) against the host's
reference, so a device that computes different answers fails
whatever its speed. Targets run in parallel (local ones one at a time, since they share this CPU), and the merged
results (``results``) are written atomically after each target finishes. A bare model file (.onnx, .xml) is
staged as a bundle with random inputs and no validation slice (``model_file``) and then timed the same way.

>>> report = bench_targets("models/fmnist.tar.gz", ["local-cpu", "local-cpu-1core", "raspberry-pi-4"],
...                        json_path="bench-targets.json")
>>> print_table(report.rows())
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._io import write_json
from ..errors import BundleError, EdgetlError, RemoteError
from .launch import AGENT_FILES, run_agent
from .model_file import NOT_VALIDATED, is_model_file, stage_model_file
from .plan import BundleData, agent_request, load_bundle, plan_runs
from .random_inputs import InputOptions
from .results import RuntimeResult, TargetResult, TargetsReport, over_budget, target_rows
from .ssh import stop_all
from .targets import TargetProfile, load_target

__all__ = ["AGENT_FILES", "InputOptions", "RemoteError", "RuntimeResult", "TargetResult", "TargetsReport",
           "bench_target", "bench_targets", "check_target", "target_rows"]

# Local targets share this machine's cores: measuring two at once would slow both, so they take turns.
_LOCAL_CPU = threading.Lock()


def bench_target(bundle_root: Path, profile: TargetProfile, *, trust_new_host: bool = False,
                 _bundle: BundleData | None = None) -> TargetResult:
    """Measure every runtime of ``profile`` on a bundle folder and check the device's outputs against the
    bundle's validation slice (``bench_targets`` also takes a ``.tar.gz``, and several targets).

    Raises RemoteError (with ``.partial``, the TargetResult so far) when the target cannot be reached,
    refuses the connection, times out, lacks a package, or none of its runtimes loads."""
    started = time.perf_counter()
    bundle = _bundle or load_bundle(Path(bundle_root))
    result = _new_result(profile)
    runs, result.runtimes = plan_runs(bundle, profile)
    error: RemoteError | None = None
    if runs:
        with _LOCAL_CPU if profile.is_local else contextlib.nullcontext():
            events, error = run_agent(profile, agent_request(bundle, profile, runs), bundle.root, probe=False,
                                      trust_new_host=trust_new_host)
        _read_measurements(result, events, bundle, profile)
        order = {runtime: index for index, runtime in enumerate(profile.runtimes)}
        result.runtimes.sort(key=lambda rt: order.get(rt.runtime, len(order)))  # the profile's order
    if error is None and not any(rt.ok for rt in result.runtimes):
        error = RemoteError(f"target {profile.name}: none of its runtimes loads there: "
                            + "; ".join(f"{rt.runtime} ({rt.status})" for rt in result.runtimes), kind="runtime")
    return _finish(result, started, error)


def check_target(profile: TargetProfile, *, trust_new_host: bool = False) -> TargetResult:
    """Is ``profile`` reachable, and which of its runtimes really load there (a tiny model opened and run on
    each)? Raises RemoteError when it cannot be reached; runtimes that do not load are "not available"."""
    started = time.perf_counter()
    result = _new_result(profile)
    request = {"runtimes": profile.runtimes, "threads": profile.threads, "timeout_s": 120}
    with tempfile.TemporaryDirectory(prefix="edgetl-check-") as tmp:
        events, error = run_agent(profile, request, Path(tmp), probe=True, trust_new_host=trust_new_host)
    for event in events:
        _read_facts(result, event)
        if event.get("event") == "runtime":
            detail = {"detail": event.get("detail")}
            result.runtimes.append(RuntimeResult(event["runtime"], event["status"], settings=detail))
    return _finish(result, started, error)


def bench_targets(
    bundle: str | os.PathLike,
    targets: Sequence[str | TargetProfile],
    *,
    inputs: InputOptions | None = None,
    trust_new_host: bool = False,
    json_path: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> TargetsReport:
    """Benchmark a bundle folder or ``.tar.gz`` on several targets at once, one SSH session per remote target.

    ``bundle`` may also be a bare model file (``.onnx`` on onnxruntime, OpenVINO ``.xml`` on openvino): it is
    staged as a bundle with random inputs of its own input shapes (``inputs``: the shapes of dynamic axes and
    the sequence length of token inputs) and no validation slice, then timed the same way.
    A target that fails keeps what it measured and its one-line error; the others go on. ``json_path``
    is rewritten atomically as each target finishes, so an interrupted run keeps the finished targets.
    ``report.measured`` says whether anything was timed at all (``edgetl bench`` fails when nothing was)."""
    from ..bundle import extract_archive

    profiles = [t if isinstance(t, TargetProfile) else load_target(t) for t in targets]
    if not profiles:
        raise EdgetlError("no targets given; pass --target NAME (see `edgetl targets list`)")
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise EdgetlError(f"target names must be unique, got {names}; pass each target once")
    if json_path is not None and Path(json_path).is_dir():  # found now, not after every target was measured
        raise EdgetlError(f"--json {json_path} is a folder; give a file path, e.g. {Path(json_path) / 'bench.json'}")
    path = Path(bundle)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}; give a bundle folder or its .tar.gz (`edgetl ship` makes them), "
                          "or a model file (.onnx, .xml)")
    bare = is_model_file(path)
    if inputs is not None and inputs.given and not bare:
        raise EdgetlError(f"--shape and --seq-len apply to a bare model file (.onnx, .xml); {path} is a bundle, "
                          "timed on its own benchmark inputs: drop them")
    report = TargetsReport(str(path), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        if bare:
            staged = stage_model_file(path, Path(tmp), inputs)
            root, report.unvalidated, report.remarks = staged.root, NOT_VALIDATED, [staged.remark]
            log(f"{path.name}: a bare model file, timed on random inputs of its own shapes, not validated")
        else:
            root = extract_archive(path, Path(tmp)) if path.is_file() else path
        loaded = load_bundle(root)
        keep = None if bare else _results_folder(path, root)

        def one(profile: TargetProfile) -> None:
            log(f"{profile.name}: measuring on {profile.address}" + (" (EMULATED)" if profile.emulated else ""))
            try:
                result = bench_target(root, profile, trust_new_host=trust_new_host, _bundle=loaded)
            except RemoteError as exc:
                result = exc.partial
                log(f"{profile.name}: {'skipped' if exc.kind == 'runtime' else 'failed'}: {exc}")
            with lock:
                report.results[profile.name] = result
                if json_path is not None:
                    write_json(json_path, report.to_dict())
                if keep is not None:
                    _save_target(keep, result, str(path), log)
            log(f"{profile.name}: done in {result.seconds:.1f} s")

        with ThreadPoolExecutor(max_workers=len(profiles), thread_name_prefix="edgetl-target") as pool:
            try:
                list(pool.map(one, profiles))
            except KeyboardInterrupt:
                stop_all()  # agents run in their own process groups: Ctrl-C does not reach them by itself
                raise
    report.results = {name: report.results[name] for name in names}  # the order asked for
    if json_path is not None:
        write_json(json_path, report.to_dict())
    return report


def _results_folder(bundle: Path, root: Path) -> Path | None:
    """Where a bundle's target results are kept: the bundle folder itself, or for an archive the bundle folder
    beside it (``models/NAME/`` for ``models/NAME.tar.gz``) when that holds the same bundle (the same manifest);
    None when there is no such folder."""
    if bundle.is_dir():
        return bundle
    name = bundle.name.removesuffix(".tar.gz").removesuffix(".tgz")
    sibling = bundle.parent / name
    try:
        same = (sibling / "manifest.json").read_bytes() == (root / "manifest.json").read_bytes()
    except OSError:
        return None
    return sibling if same else None


def _save_target(folder: Path, result: TargetResult, bundle: str, log: Callable[[str], None]) -> None:
    """One target's result as ``targets/<target>.json`` in the bundle folder, which ``edgetl report BUNDLE`` draws
    (outside the manifest's checksums: ``verify`` ignores the folder). Not saved (and said) when the folder is
    read-only."""
    from ..report.record import TARGETS_DIR, target_file_name

    path = folder / TARGETS_DIR / target_file_name(result.target)
    choice = TargetsReport(bundle, {result.target: result}).choices()[result.target]
    record = {"bundle": bundle, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "target": result.to_dict(), "choice": choice}
    try:
        write_json(path, record)
    except OSError as exc:
        log(f"{result.target}: result not saved in {path} ({exc})")


# -- reading the agent's events ---------------------------------------------------------------------------


def _new_result(profile: TargetProfile) -> TargetResult:
    return TargetResult(profile.name, profile.address, profile.emulated, profile.description)


def _read_facts(result: TargetResult, event: dict[str, Any]) -> None:
    if event.get("event") == "facts":
        result.environment, result.emulation = event["environment"], event.get("emulation", {})


def _read_measurements(result: TargetResult, events: list[dict[str, Any]], bundle: BundleData,
                       profile: TargetProfile) -> None:
    """Fill ``result`` from a measuring agent's events; its outputs on the slice get the shared validation check."""
    from ..settings import GateConfig
    from ..validate import validate

    gate = GateConfig(**bundle.gate) if bundle.gate else GateConfig()
    sizes = bundle.artifact_sizes()
    by_runtime: dict[str, RuntimeResult] = {}
    for event in events:
        _read_facts(result, event)
        kind = event.get("event")
        if kind == "inputs":
            result.inputs = {key: value for key, value in event.items() if key != "event"}
        elif kind == "runtime":
            rt = RuntimeResult(event["runtime"], event["status"], event.get("artifact"), event.get("cold_start_s"),
                               settings=event.get("settings", {}), model_size_bytes=sizes.get(event.get("artifact")))
            by_runtime[rt.runtime] = rt
            result.runtimes.append(rt)
        elif kind == "outputs" and bundle.slice is not None:
            rt = by_runtime[event["runtime"]]
            outputs = np.asarray(event["logits"], dtype=np.float32)  # logits, or an embedding bundle's embeddings
            report = validate(None, _SliceLabels(bundle.slice["labels"]), None, logits=outputs,
                              reference=bundle.slice["reference_logits"], gate=gate, artifact=rt.artifact or "",
                              output=bundle.output)
            report.runtime = f"{rt.runtime} on {profile.name}"
            rt.validation = report.to_dict()
        elif kind == "stats":
            by_runtime[event["runtime"]].stats.append(event["stats"])
        elif kind == "skipped":
            by_runtime[event["runtime"]].skipped.append(f"batch {event['batch_size']}: {event['reason']}")
        elif kind == "race":
            result.race = {"batch_size": event["batch_size"], "rounds": event["rounds"], "times_ms": event["times_ms"],
                           "margin": profile.measure.race_margin}
    for rt in result.runtimes:
        rt.budget = over_budget(profile, rt)


def _finish(result: TargetResult, started: float, error: RemoteError | None) -> TargetResult:
    """``result`` with its duration; with ``error``, the error raised with the result as its ``partial``."""
    result.seconds = round(time.perf_counter() - started, 2)
    if error is not None:
        result.error, result.error_kind = str(error), error.kind
        error.partial = result
        raise error
    return result


@dataclass
class _SliceLabels:
    """What ``validate`` reads from a dataset when the outputs are already computed: the labels."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)
