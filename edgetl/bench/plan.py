"""What a target is asked to measure, read from a bundle: the artifact each runtime runs, the files the device
agent needs (with their sha256), the validation slice its outputs are checked on, and the inputs it times.

The timed inputs are the rows the host measured with (``validation/bench.npz``), else the validation slice's
inputs, else random float32 data of the manifest's ``input_shape``; the agent repeats rows up to each batch
size. Nothing here asks which modality a bundle holds: inputs are one array or named arrays either way. A bare
model file is staged as such a bundle (``model_file``); its manifest's ``bare_model_file`` limits the runs to
the runtime its suffix gets.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, EdgetlError
from .results import RuntimeResult
from .targets import TargetProfile


@dataclass
class BundleData:
    """A bundle folder as benchmarking reads it: the manifest, the validation slice's arrays (inputs, labels,
    reference logits or embeddings), the validation gate its artifacts passed, and the .npz whose inputs are timed
    (None: random data of ``manifest["input_shape"]``)."""

    root: Path
    manifest: dict[str, Any]
    slice: dict[str, np.ndarray] | None
    gate: dict[str, Any] | None
    timed_inputs: str | None

    @property
    def output(self) -> str:
        """What the models return per sample: "logits", or "embedding" (a manifest without "output" predates it)."""
        return self.manifest.get("output", "logits")

    @property
    def slice_file(self) -> str | None:
        from ..bundle import SLICE_FILE

        return SLICE_FILE if self.slice is not None else None

    def artifact_sizes(self) -> dict[str, int]:
        """Bytes on disk of each artifact (model file plus weights)."""
        files = self.manifest["files"]
        artifacts = self.manifest["artifacts"]
        return {name: sum(files[f]["size"] for f in entry["files"]) for name, entry in artifacts.items()}


def load_bundle(root: Path) -> BundleData:
    """Read a bundle folder for benchmarking; BundleError when it gives nothing to time a model on."""
    from ..bundle import BENCH_FILE, SLICE_FILE, read_manifest

    manifest = read_manifest(root)
    data = None
    if (manifest.get("validation_slice") or {}).get("file") == SLICE_FILE:
        data = _read_slice(root, manifest)
    gates = [e.get("validation", {}).get("gate") for e in manifest["artifacts"].values()]
    timed = BENCH_FILE if BENCH_FILE in manifest["files"] else SLICE_FILE if data is not None else None
    if timed is None and not manifest.get("input_shape"):
        raise BundleError(f"{root} has no benchmark inputs ({BENCH_FILE}), no validation slice and no input_shape "
                          "to time its models on; re-ship it with this edgetl (`edgetl ship`)")
    return BundleData(root, manifest, data, next((g for g in gates if g), None), timed)


def _read_slice(root: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The validation slice's arrays, after checking the file against the manifest (a damaged slice would judge
    every device wrongly)."""
    from .._io import sha256_file
    from ..bundle import SLICE_FILE

    path = root / SLICE_FILE
    fix = "run `edgetl verify` on the bundle, and re-ship it (`edgetl ship`)"
    if not path.is_file() or sha256_file(path) != (manifest["files"].get(SLICE_FILE) or {}).get("sha256"):
        raise BundleError(f"the bundle's {SLICE_FILE} is missing or does not match the manifest; {fix}")
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"the bundle's {SLICE_FILE} does not load ({exc}); {fix}") from None


def plan_runs(bundle: BundleData, profile: TargetProfile) -> tuple[list[dict[str, Any]], list[RuntimeResult]]:
    """Which artifact each of the profile's runtimes runs: (agent runs, runtimes with nothing to run)."""
    from ..bundle import model_file
    from ..predict import select_artifact

    runs, missing = [], []
    bare = bundle.manifest.get("bare_model_file")  # staged by model_file.py: its suffix's runtime only
    for runtime in profile.runtimes:
        if bare and runtime.partition(":")[0] != bare["backend"]:
            missing.append(RuntimeResult(runtime, f"not available: {bare['name']} is timed on {bare['backend']} "
                                                  f"only, the runtime for {bare['suffix']} files"))
            continue
        try:
            name = select_artifact(bundle.manifest, runtime=runtime)
        except EdgetlError as exc:  # no artifact in the bundle that this runtime opens (a torch:* runtime, too)
            missing.append(RuntimeResult(runtime, f"not available: {exc}"))
            continue
        entry = bundle.manifest["artifacts"][name]
        runs.append({"runtime": runtime, "artifact": name, "model": entry.get("model_file") or model_file(entry),
                     "files": entry["files"]})
    return runs, missing


def agent_request(bundle: BundleData, profile: TargetProfile, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The device agent's request: the runs, the files to check, the inputs, the measurement policy. Paths are
    relative to the bundle folder, which the launcher sets (``bundle``) where the agent finds it."""
    m = profile.measure
    needed = [f for run in runs for f in run["files"]] + [f for f in (bundle.slice_file, bundle.timed_inputs) if f]
    files = bundle.manifest["files"]
    return {
        "target": profile.name, "threads": profile.threads, "batch_sizes": profile.batch_sizes,
        "warmup": m.warmup, "min_runs": m.min_runs, "max_seconds": m.max_seconds, "target_rel_ci": m.target_rel_ci,
        "timeout_s": m.timeout_s, "race_rounds": m.race_rounds, "race_calls": m.race_calls, "runs": runs, "slice": bundle.slice_file, "inputs": bundle.timed_inputs,
        "input_shape": bundle.manifest.get("input_shape"),
        "sha256": {f: files[f]["sha256"] for f in dict.fromkeys(needed)},
    }
