"""Benchmark a bundle on targets: this machine, an emulated small device, and devices over SSH.

Every target runs the same device agent (``agent.py``): in a local subprocess, or copied with the bundle
to the device over one SSH session. The agent returns latencies and its outputs on the bundle's validation
slice; here the shared validation check judges those outputs against the host's reference, so a device that
computes different answers fails whatever its speed. Targets run in parallel (local ones one at a time,
since they share this CPU), and the merged results are written atomically after each target finishes.

>>> report = bench_targets("models/fmnist.tar.gz", ["local-cpu", "local-cpu-1core", "raspberry-pi-4"],
...                        json_path="bench-targets.json")
>>> print_table(report.rows())
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._io import write_json
from ..errors import BundleError, EdgetlError, RemoteError
from .ssh import remote_path, run_streaming, ssh_argv, ssh_failure, stop_all
from .targets import TargetProfile, load_target

AGENT_FILES = ("agent.py", "loop.py", "stats.py", "environment.py")  # what the device needs, all stdlib + numpy
_HERE = Path(__file__).resolve().parent
# Local targets share this machine's cores: measuring two at once would slow both, so they take turns.
_LOCAL_CPU = threading.Lock()


@dataclass
class RuntimeResult:
    """One runtime on one target: loaded or "not available: <why>", cold start, stats per batch size,
    the validation verdict on the device's outputs, and budget problems."""

    runtime: str
    status: str
    artifact: str | None = None
    cold_start_s: float | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    budget: list[str] = field(default_factory=list)
    model_size_bytes: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TargetResult:
    target: str
    address: str
    emulated: bool = False
    description: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    emulation: dict[str, Any] = field(default_factory=dict)
    runtimes: list[RuntimeResult] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def runtime(self, name: str) -> RuntimeResult:
        return next(r for r in self.runtimes if r.runtime == name)


@dataclass
class TargetsReport:
    """All targets' results; ``rows()`` is the merged table."""

    bundle: str
    results: dict[str, TargetResult] = field(default_factory=dict)
    created: str = ""

    @property
    def ok(self) -> bool:
        """No target failed and every validated runtime passed. A target where nothing is available (no
        CUDA device on a CPU machine) is skipped, not failed."""
        return all(r.error is None or r.error_kind == "runtime" for r in self.results.values()) and all(
            rt.validation is None or rt.validation["passed"] for r in self.results.values() for rt in r.runtimes)

    def rows(self, *, wide: bool = False) -> list[dict[str, Any]]:
        """The merged table: one row per target, runtime and batch size. ``wide`` adds min, mean and std."""
        return [row for result in self.results.values() for row in target_rows(result, wide=wide)]

    def choices(self) -> dict[str, dict[str, Any]]:
        """Per target, the fastest (artifact, runtime) that ran, passed the device-side validation check and kept
        within the profile's budgets, at the smallest batch size measured; or why there is none."""
        picks: dict[str, dict[str, Any]] = {}
        for name, result in self.results.items():
            fit = [(min(rt.stats, key=lambda s: s["batch_size"]), rt) for rt in result.runtimes
                   if rt.ok and rt.stats and not rt.budget and (rt.validation is None or rt.validation["passed"])]
            if not fit:
                why = result.error or "no runtime ran, passed validation and kept within the budgets"
                picks[name] = {"artifact": None, "reason": why}
                continue
            stats, best = min(fit, key=lambda pair: pair[0]["median_ms"])
            picks[name] = {"artifact": best.artifact, "runtime": best.runtime, "batch_size": stats["batch_size"],
                           "median_ms": stats["median_ms"], "validated": best.validation is not None}
        return picks

    def notes(self) -> list[str]:
        """Per target the pick, then one line per runtime that did not run and per target that failed, saying why."""
        results = self.results.values()
        lines = [f"{name}: use {c['artifact']} on {c['runtime']} ({c['median_ms']:.3g} ms at batch {c['batch_size']}"
                 f"{'' if c['validated'] else ', not validated: the bundle has no validation slice'})"
                 if c["artifact"] else f"{name}: nothing to use: {c['reason']}" for name, c in self.choices().items()]
        lines += [f"{r.target} {rt.runtime}: {rt.status}" for r in results for rt in r.runtimes if not rt.ok]
        lines += [f"{r.target}: error: {r.error}" for r in results if r.error and r.error_kind != "runtime"]
        lines += [f"{r.target}: EMULATED on this machine ({r.emulation}), a stand-in, not the device itself"
                  for r in self.results.values() if r.emulated]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "created": self.created, "rows": self.rows(wide=True), "notes": self.notes(),
                "choices": self.choices(),
                "targets": {name: result.to_dict() for name, result in self.results.items()}}


def target_rows(result: TargetResult, *, wide: bool = False) -> list[dict[str, Any]]:
    """Rows of one target: one per runtime and batch size, one per runtime that did not run, one for an error
    (short statuses; ``TargetsReport.notes`` gives the reasons)."""
    name = result.target + (" (emulated)" if result.emulated else "")
    rows: list[dict[str, Any]] = []
    for rt in result.runtimes:
        if not rt.ok:
            rows.append({"target": name, "runtime": rt.runtime, "status": "not available"})
            continue
        verdict = "no slice"
        if rt.validation is not None:
            verdict = "pass" if rt.validation["passed"] else "FAIL"
        for s in rt.stats:
            row = {"target": name, "runtime": rt.runtime, "batch": s["batch_size"]}
            row |= {"min_ms": s["min_ms"]} if wide else {}
            row |= {"median_ms": s["median_ms"]} | ({"mean_ms": s["mean_ms"]} if wide else {})
            row |= {"p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"]} | ({"std_ms": s["std_ms"]} if wide else {})
            row |= {"throughput": s["throughput"], "median_rel_ci": s["median_rel_ci"], "cold_start_s": rt.cold_start_s,
                    "peak_mb": s.get("peak_rss_mb"), "validation": verdict, "budget": "; ".join(rt.budget) or "ok"}
            rows.append(row)
    if result.error and result.error_kind != "runtime":  # "runtime": every runtime has its own row already
        rows.append({"target": name, "status": "error"})
    return rows


# -- running the agent ------------------------------------------------------------------------------------


@dataclass
class _Bundle:
    root: Path
    manifest: dict[str, Any]
    slice: dict[str, np.ndarray] | None
    gate: dict[str, Any] | None


def _load_bundle(root: Path) -> _Bundle:
    from ..bundle import SLICE_FILE, read_manifest

    manifest = read_manifest(root)
    data = None
    if (manifest.get("validation_slice") or {}).get("file") == SLICE_FILE:
        with np.load(root / SLICE_FILE) as npz:
            data = {key: npz[key] for key in npz.files}
    gates = [e.get("validation", {}).get("gate") for e in manifest["artifacts"].values()]
    return _Bundle(root, manifest, data, next((g for g in gates if g), None))


def _plan(bundle: _Bundle, profile: TargetProfile) -> tuple[list[dict[str, Any]], list[RuntimeResult]]:
    """Which artifact each runtime runs: (agent runs, runtimes with nothing to run)."""
    from ..predict import select_artifact

    runs, missing = [], []
    files = bundle.manifest["files"]
    for runtime in profile.runtimes:
        if runtime.startswith("torch"):
            runs.append({"runtime": runtime, "artifact": None, "model": ""})  # the agent says why not
            continue
        try:
            name = select_artifact(bundle.manifest, runtime=runtime)
        except EdgetlError as exc:  # no artifact in the bundle that this runtime opens
            missing.append(RuntimeResult(runtime, f"not available: {exc}"))
            continue
        entry = bundle.manifest["artifacts"][name]
        runs.append({"runtime": runtime, "artifact": name, "model": entry["model_file"],
                     "sha256": {f: files[f]["sha256"] for f in entry["files"]}})
    return runs, missing


def _request(bundle: _Bundle, profile: TargetProfile, runs: list[dict[str, Any]]) -> dict[str, Any]:
    m = profile.measure
    text = bundle.manifest.get("kind") == "text"
    return {
        "target": profile.name, "threads": profile.threads, "batch_sizes": profile.batch_sizes,
        "input_shape": bundle.manifest.get("input_shape"), "warmup": m.warmup, "min_runs": m.min_runs,
        "max_seconds": m.max_seconds, "target_rel_ci": m.target_rel_ci, "timeout_s": m.timeout_s,
        "runs": runs, "slice": "validation/slice.npz" if bundle.slice is not None else None,
        **({"text": text_bench_rows(bundle, max(profile.batch_sizes))} if text else {}),
    }


def text_bench_rows(bundle: _Bundle, count: int) -> dict[str, Any]:
    """What a text model is timed on over there (the device has no tokenizer): ``count`` token rows of the
    sequence length the host benchmarked at (the test texts' median), padded to one width.

    The rows are the slice's real test texts closest to that length; a bundle without a slice encodes a filler
    text of that length with its own tokenizer here.
    """
    from ..bundle import default_bench_length, slice_inputs

    manifest = bundle.manifest
    length = default_bench_length(manifest)
    if bundle.slice is not None:
        inputs = slice_inputs(bundle.slice)
        lengths = inputs["attention_mask"].sum(1) if "attention_mask" in inputs else np.full(len(bundle.slice["labels"]), length)
        order = np.argsort(np.abs(lengths - length), kind="stable")[:count]
        width = int(lengths[order].max())
        rows = {name: array[order, :width].tolist() for name, array in inputs.items()}
    else:
        import json

        from ..bundle import load_bundle_preprocess

        preprocess = load_bundle_preprocess(json.loads((bundle.root / "preprocess.json").read_text()), bundle.root)
        encoded = preprocess.encode([" ".join(["account"] * max(1, length - 2))] * count)
        rows = {name: array.tolist() for name, array in encoded.items()}
    return {"inputs": list(manifest.get("inputs") or rows), "sequence_length": length, "rows": rows}


def _emulation(profile: TargetProfile) -> dict[str, Any]:
    if not profile.emulated:
        return {}
    usable = sorted(os.sched_getaffinity(0))
    return {"pin_cpus": usable[: profile.emulate.cores] if profile.emulate.cores else None,
            "memory_mb": profile.emulate.memory_mb}


def _agent_command(profile: TargetProfile, request: dict[str, Any], bundle_root: Path, *, probe: bool,
                   trust_new_host: bool, workdir: Path) -> tuple[list[str], Path | None]:
    """The command that runs the agent for ``profile``, and the archive to feed its stdin (SSH only)."""
    flags = ["--probe"] if probe else []
    if profile.is_local:
        request = {**request, **_emulation(profile)}
        if request.get("slice"):
            request["slice"] = str(bundle_root / request["slice"])
        for run in request.get("runs", []):
            run["model"] = str(bundle_root / run["model"]) if run["model"] else ""
            run["sha256"] = {str(bundle_root / f): d for f, d in run.get("sha256", {}).items()}
        write_json(workdir / "request.json", request)
        return [sys.executable, str(_HERE / "agent.py"), *flags, str(workdir / "request.json")], None
    # SSH: one archive with the agent, the request and the bundle files it needs, unpacked into a fresh
    # folder on the device that is removed when the agent ends, whatever the outcome.
    for run in request.get("runs", []):
        run["model"] = f"bundle/{run['model']}" if run["model"] else ""
        run["sha256"] = {f"bundle/{f}": d for f, d in run.get("sha256", {}).items()}
    if request.get("slice"):
        request["slice"] = f"bundle/{request['slice']}"
    write_json(workdir / "request.json", request)
    archive = workdir / "payload.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in AGENT_FILES:
            tar.add(_HERE / name, arcname=f"agent/{name}")
        tar.add(workdir / "request.json", arcname="request.json")
        needed = {f for run in request.get("runs", []) for f in run.get("sha256", {})}
        needed |= {request["slice"]} if request.get("slice") else set()
        for rel in sorted(needed):
            tar.add(bundle_root / rel.removeprefix("bundle/"), arcname=rel)
    script = (
        'set -e; work=$(mktemp -d "${TMPDIR:-/tmp}/edgetl-agent.XXXXXX"); trap \'rm -rf "$work"\' EXIT; '
        'tar -xzf - -C "$work"; cd "$work"; '
        f"{remote_path(profile.connection.python)} agent/agent.py {' '.join(flags)} request.json"
    )
    return ssh_argv(profile.connection, f"sh -c {shlex.quote(script)}", trust_new_host=trust_new_host), archive


def _run_agent(profile: TargetProfile, request: dict[str, Any], bundle_root: Path, *, probe: bool,
               trust_new_host: bool) -> tuple[list[dict[str, Any]], RemoteError | None]:
    """Run the agent for ``profile``; returns the events it sent and the error that ended it, if any."""
    events: list[dict[str, Any]] = []

    def on_line(line: str) -> None:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the agent sends only JSON lines; anything else came from the remote shell

    # Past the agent's own limit the host gives ssh time to connect and copy, then stops it.
    deadline = request["timeout_s"] + profile.connection.connect_timeout_s + 60
    with tempfile.TemporaryDirectory(prefix="edgetl-target-") as tmp:
        argv, archive = _agent_command(profile, request, bundle_root, probe=probe, trust_new_host=trust_new_host,
                                       workdir=Path(tmp))
        with open(archive, "rb") if archive else open(os.devnull, "rb") as stdin:
            _, code, stderr = run_streaming(argv, timeout_s=deadline, stdin=stdin, on_line=on_line)
    return events, _failure(profile, events, code, stderr)


def _failure(profile: TargetProfile, events: list[dict[str, Any]], code: int | None, stderr: str) -> RemoteError | None:
    """The error that ended the agent, from its own last words, ssh's exit status and message, or the shell's."""
    where = f"target {profile.name} ({profile.address})"
    errors = [e for e in events if e.get("event") == "error"]
    if code is None:
        return RemoteError(f"{where}: timed out after {profile.measure.timeout_s} s (measure.timeout_s); "
                           "results gathered so far are kept", kind="timeout")
    if errors:
        kind = {"timeout": "timeout", "missing": "missing"}.get(errors[-1].get("kind"), "agent")
        hint = {"timeout": "; raise measure.timeout_s or lower measure.max_seconds (results so far are kept)",
                "missing": f"; install it for {profile.connection.python} or point connection.python at one with it"}
        return RemoteError(f"{where}: {errors[-1].get('message')}{hint.get(kind, '')}", kind=kind)
    if code == 0 and any(e.get("event") == "done" for e in events):
        return None
    if code == 255 and not profile.is_local:
        found = ssh_failure(stderr, profile.connection)
        if found is not None:
            return RemoteError(f"{where}: {found}", kind=found.kind)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
    if code == 127:
        return RemoteError(f"{where}: no python at {profile.connection.python} on the device ({last}); "
                           "set connection.python to an interpreter with numpy and a runtime", kind="missing")
    return RemoteError(f"{where}: the agent failed ({last})", kind="agent")


# -- public API ----------------------------------------------------------------------------------------


def bench_target(bundle_root: Path, profile: TargetProfile, *, trust_new_host: bool = False,
                 _bundle: _Bundle | None = None) -> TargetResult:
    """Measure every runtime of ``profile`` on a bundle folder and check the device's outputs against the
    bundle's validation slice (``bench_targets`` also takes a ``.tar.gz``, and several targets).

    Raises RemoteError (with ``.partial``, the TargetResult so far) when the target cannot be reached,
    refuses the connection, times out, lacks a package, or none of its runtimes loads."""
    from ..recipe import GateConfig
    from ..validate import validate

    started = time.perf_counter()
    bundle = _bundle or _load_bundle(Path(bundle_root))
    result = TargetResult(profile.name, profile.address, profile.emulated, profile.description)
    runs, result.runtimes = _plan(bundle, profile)
    error: RemoteError | None = None
    if runs:
        with _LOCAL_CPU if profile.is_local else contextlib.nullcontext():
            events, error = _run_agent(profile, _request(bundle, profile, runs), bundle.root, probe=False,
                                       trust_new_host=trust_new_host)
        gate = GateConfig(**bundle.gate) if bundle.gate else GateConfig()
        sizes = {name: sum(bundle.manifest["files"][f]["size"] for f in e["files"])
                 for name, e in bundle.manifest["artifacts"].items()}
        by_runtime: dict[str, RuntimeResult] = {}
        for event in events:
            kind = event.get("event")
            if kind == "facts":
                result.environment, result.emulation = event["environment"], event.get("emulation", {})
            elif kind == "runtime":
                rt = RuntimeResult(event["runtime"], event["status"], event.get("artifact"), event.get("cold_start_s"),
                                   settings=event.get("settings", {}),
                                   model_size_bytes=sizes.get(event.get("artifact")))
                by_runtime[rt.runtime] = rt
                result.runtimes.append(rt)
            elif kind == "outputs" and bundle.slice is not None:
                rt = by_runtime[event["runtime"]]
                logits = np.asarray(event["logits"], dtype=np.float32)
                report = validate(None, _SliceLabels(bundle.slice["labels"]), None, logits=logits,
                                  reference=bundle.slice["reference_logits"], gate=gate,
                                  artifact=rt.artifact or "")
                report.runtime = f"{rt.runtime} on {profile.name}"
                rt.validation = report.to_dict()
            elif kind == "stats":
                by_runtime[event["runtime"]].stats.append(event["stats"])
            elif kind == "skipped":
                by_runtime[event["runtime"]].skipped.append(f"batch {event['batch_size']}: {event['reason']}")
        for rt in result.runtimes:
            rt.budget = _over_budget(profile, rt)
        if error is None and not any(rt.ok for rt in result.runtimes):
            error = RemoteError(f"target {profile.name}: none of its runtimes loads there: "
                                + "; ".join(f"{rt.runtime} ({rt.status})" for rt in result.runtimes), kind="runtime")
    result.seconds = round(time.perf_counter() - started, 2)
    if error is not None:
        result.error, result.error_kind = str(error), error.kind
        error.partial = result
        raise error
    return result


def check_target(profile: TargetProfile, *, trust_new_host: bool = False) -> TargetResult:
    """Is ``profile`` reachable, and which of its runtimes really load there (a tiny model opened and run on
    each)? Raises RemoteError when it cannot be reached; runtimes that do not load are "not available"."""
    started = time.perf_counter()
    result = TargetResult(profile.name, profile.address, profile.emulated, profile.description)
    request = {"runtimes": profile.runtimes, "threads": profile.threads, "timeout_s": 120}
    with tempfile.TemporaryDirectory(prefix="edgetl-check-") as tmp:
        events, error = _run_agent(profile, request, Path(tmp), probe=True, trust_new_host=trust_new_host)
    for event in events:
        if event.get("event") == "facts":
            result.environment, result.emulation = event["environment"], event.get("emulation", {})
        elif event.get("event") == "runtime":
            detail = {"detail": event.get("detail")}
            result.runtimes.append(RuntimeResult(event["runtime"], event["status"], settings=detail))
    result.seconds = round(time.perf_counter() - started, 2)
    if error is not None:
        result.error, result.error_kind = str(error), error.kind
        error.partial = result
        raise error
    return result


def bench_targets(
    bundle: str | os.PathLike,
    targets: Sequence[str | TargetProfile],
    *,
    trust_new_host: bool = False,
    json_path: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> TargetsReport:
    """Benchmark a bundle folder or ``.tar.gz`` on several targets at once, one SSH session per remote target.

    A target that fails keeps what it measured and its one-line error; the others go on. ``json_path``
    is rewritten atomically as each target finishes, so an interrupted run keeps the finished targets."""
    from ..bundle import extract_archive

    profiles = [t if isinstance(t, TargetProfile) else load_target(t) for t in targets]
    if not profiles:
        raise EdgetlError("no targets given; pass --target NAME (see `edgetl targets list`)")
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise EdgetlError(f"target names must be unique, got {names}")
    path = Path(bundle)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}; give a bundle folder or its .tar.gz (`edgetl ship` makes them)")
    report = TargetsReport(str(path), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        root = extract_archive(path, Path(tmp)) if path.is_file() else path
        loaded = _load_bundle(root)

        def one(profile: TargetProfile) -> None:
            log(f"{profile.name}: measuring on {profile.address}" + (" (EMULATED)" if profile.emulated else ""))
            try:
                result = bench_target(root, profile, trust_new_host=trust_new_host, _bundle=loaded)
            except RemoteError as exc:
                result = exc.partial
                log(f"{profile.name}: {exc}")
            with lock:
                report.results[profile.name] = result
                if json_path is not None:
                    write_json(json_path, report.to_dict())
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


# -- helpers ------------------------------------------------------------------------------------------


@dataclass
class _SliceLabels:
    """What ``validate`` reads from a dataset when the outputs are already computed: the labels."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _over_budget(profile: TargetProfile, rt: RuntimeResult) -> list[str]:
    budgets, problems = profile.budgets, []
    if not rt.ok:
        return problems
    smallest = min(rt.stats, key=lambda s: s["batch_size"], default=None)
    if budgets.latency_ms and smallest and smallest["batch_size"] == 1 and smallest["median_ms"] > budgets.latency_ms:
        problems.append(f"latency {smallest['median_ms']:.3g} ms > {budgets.latency_ms:g} ms")
    if budgets.model_mb and rt.model_size_bytes and rt.model_size_bytes / 1e6 > budgets.model_mb:
        problems.append(f"model {rt.model_size_bytes / 1e6:.3g} MB > {budgets.model_mb:g} MB")
    peak = max((s.get("peak_rss_mb") or 0.0 for s in rt.stats), default=0.0)
    if budgets.memory_mb and peak > budgets.memory_mb:
        problems.append(f"memory {peak:.0f} MB > {budgets.memory_mb:g} MB")
    return problems
