"""Check a shipped bundle (folder or ``.tar.gz``), and extract an archive safely.

``verify`` never imports torch: ``edgetl verify`` runs on devices without it.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from .._io import sha256_file
from ..errors import BackendUnavailable, BundleError, EdgetlError
from .manifest import (BENCH_FILE, MANIFEST, REQUIRED_FILES, SLICE_FILE, BundleOutput, BundlePreprocess,
                       bundle_output, load_bundle_preprocess, model_file, read_manifest)
from .slice import ValidationSlice, check_inputs, slice_inputs

# Why an .npz may fail to load.
_NPZ_ERRORS = (BundleError, KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile)
# Written into a bundle folder after shipping (edgetl.report, edgetl.bench.remote): not flagged when unlisted.
_TARGETS_DIR, _REPORT_FILES = "targets", ("report.html", "report.json")


@dataclass
class VerifyReport:
    """The outcome of ``verify``: ``ok`` when ``problems`` is empty. ``notes`` are not failures."""

    bundle: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked_files: int = 0
    loaded_artifacts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            loaded = f", ran {', '.join(self.loaded_artifacts)}" if self.loaded_artifacts else ""
            return f"{self.bundle}: OK ({self.checked_files} files checked{loaded})"
        return f"{self.bundle}: {len(self.problems)} problem(s): " + "; ".join(self.problems)


def extract_archive(archive: Path, destination: Path) -> Path:
    """Extract a bundle ``.tar.gz`` safely into ``destination``; returns the bundle folder inside it.

    Rejects absolute paths, '..' components, links and devices before extracting anything.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise BundleError(f"{archive}: unsafe path in archive: {member.name!r}; refusing to extract")
                if not (member.isfile() or member.isdir()):
                    raise BundleError(f"{archive}: archive member {member.name!r} is a link or device; refusing")
            tops = {PurePosixPath(member.name).parts[0] for member in members if PurePosixPath(member.name).parts}
            if len(tops) != 1:
                raise BundleError(f"{archive}: expected one top-level bundle folder, found {sorted(tops) or 'none'}")
            tar.extractall(destination, filter="data")  # belt and braces on top of the checks above
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0].rstrip(":") or type(exc).__name__  # tarfile lists every method it tried
        raise BundleError(f"cannot read bundle archive {archive} ({reason}); copy it again or re-ship it with "
                          "`edgetl ship`") from None
    root = destination / tops.pop()
    if not root.is_dir():
        raise BundleError(f"{archive}: the archive holds a file, not a bundle folder")
    return root


def verify(bundle: Path, *, load: bool = True) -> VerifyReport:
    """Check a bundle folder or ``.tar.gz``: checksums, no unlisted files, labels, preprocessing, validation, and
    the validation slice and benchmark inputs when shipped.

    With ``load`` (the default) each artifact is also opened with its runtime and run on one example batch
    (of 1, or the model's fixed batch size), whose output must have shape (batch, number of labels), or for an
    embedding or regression bundle (manifest ``"output": "embedding"`` / ``"regression"``, labels.json ``[]``)
    (batch, manifest ``embedding_dim`` / ``output_dim``).

    >>> report = verify(Path("models/fmnist.tar.gz"))
    >>> report.ok, report.problems
    """
    bundle = Path(bundle)
    report = VerifyReport(bundle=bundle)
    if not bundle.exists():
        report.problems.append(f"{bundle} not found")
    elif bundle.is_dir():
        _verify_folder(bundle, report, load)
    else:
        with tempfile.TemporaryDirectory(prefix="edgetl-verify-") as tmp:
            try:
                root = extract_archive(bundle, Path(tmp))
            except BundleError as exc:
                report.problems.append(str(exc))
                return report
            _verify_folder(root, report, load)
    return report


def _verify_folder(root: Path, report: VerifyReport, load: bool) -> None:
    try:
        manifest = read_manifest(root)
    except BundleError as exc:
        report.problems.append(str(exc))
        return
    problems = report.problems
    listed: dict[str, Any] = manifest["files"]
    damaged = _check_checksums(root, listed, report)

    labels = _load_json(root, "labels.json", listed, damaged, problems, _parse_labels)
    preprocess = _load_json(root, "preprocess.json", listed, damaged, problems,
                            lambda data: load_bundle_preprocess(data, root))
    if preprocess is not None:
        missing = [rel for rel in preprocess.required_files() if rel not in listed]
        problems.extend(f"manifest does not list {rel}, which preprocess.json needs" for rel in missing)
        if missing or damaged.intersection(preprocess.required_files()):
            preprocess = None  # its files are missing or damaged, already reported: nothing runs through it
    output = None
    if labels is not None:
        try:
            output = bundle_output(manifest, labels)
        except BundleError as exc:
            problems.append(str(exc))
    loadable = _check_artifacts(manifest, listed, damaged, problems)
    if output is not None and preprocess is not None:
        _check_inputs_files(root, manifest, listed, damaged, preprocess, output, problems)
        if load:
            for name in loadable:
                _smoke_test(root, name, manifest["artifacts"][name], preprocess, output, report)


def _check_checksums(root: Path, listed: dict[str, Any], report: VerifyReport) -> set[str]:
    """Each listed file against its size and sha256, no unlisted files or links; returns the damaged paths."""
    problems = report.problems
    damaged: set[str] = set()
    for rel, meta in listed.items():
        parts = PurePosixPath(rel).parts
        path = root / rel
        if rel.startswith("/") or ".." in parts:
            problems.append(f"manifest lists an unsafe path {rel!r}")
        elif path.is_symlink() or not path.is_file():
            problems.append(f"{rel}: missing" + (" (a link, not a file)" if path.is_symlink() else ""))
        elif path.stat().st_size != meta.get("size"):
            problems.append(f"{rel}: size {path.stat().st_size} bytes, manifest says {meta.get('size')}")
        elif sha256_file(path) != meta.get("sha256"):
            problems.append(f"{rel}: sha256 does not match the manifest (modified or corrupted)")
        else:
            report.checked_files += 1
            continue
        damaged.add(rel)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{rel}: links are not allowed in a bundle")
        elif path.is_file() and rel != MANIFEST and rel not in listed and not _added_later(rel):
            problems.append(f"{rel}: unlisted file (not in the manifest)")
    problems.extend(f"manifest does not list {rel}" for rel in REQUIRED_FILES if rel not in listed)
    return damaged


def _added_later(rel: str) -> bool:
    """Files a bundle folder gains after shipping, outside the checksums: ``edgetl bench --target`` results under
    ``targets/`` and the page ``edgetl report`` (re)writes with them; listed in the manifest, they are checked."""
    return rel.startswith(f"{_TARGETS_DIR}/") or rel in _REPORT_FILES


def _check_artifacts(manifest: dict[str, Any], listed: dict[str, Any], damaged: set[str],
                     problems: list[str]) -> list[str]:
    """Each artifact passed validation and has its files listed; returns the names intact enough to run."""
    artifacts: dict[str, Any] = manifest["artifacts"]
    if manifest.get("default_artifact") not in artifacts:
        problems.append(f"default artifact {manifest.get('default_artifact')!r} is not among {sorted(artifacts)}")
    loadable = []
    for name, entry in artifacts.items():
        validation = entry.get("validation") or {}
        if validation.get("passed") is not True:
            problems.append(f"artifact {name}: validation did not pass ({'; '.join(validation.get('reasons') or [])})")
        unlisted = [f for f in entry.get("files", []) if f not in listed]
        if unlisted or not entry.get("files"):
            problems.append(f"artifact {name}: files not covered by the manifest checksums: {unlisted or 'none'}")
        try:
            model_file(entry)
        except BundleError as exc:
            problems.append(f"artifact {name}: {exc}")
            continue
        if not unlisted and not damaged.intersection(entry["files"]):
            loadable.append(name)
    return loadable


def _check_inputs_files(root: Path, manifest: dict[str, Any], listed: dict[str, Any], damaged: set[str],
                        preprocess: BundlePreprocess, output: BundleOutput, problems: list[str]) -> None:
    """The validation slice and the benchmark inputs, when the manifest names them, load and fit the model."""
    def slice_fits(path: Path) -> None:
        ValidationSlice.load(path).check(preprocess, output)

    def bench_fits(path: Path) -> None:
        with np.load(path) as npz:
            rows = check_inputs(slice_inputs(npz), preprocess, "benchmark inputs")
        if rows != manifest["bench_inputs"].get("rows"):
            raise BundleError(f"{rows} rows, the manifest says {manifest['bench_inputs'].get('rows')}")

    checks: dict[str, tuple[str, Callable[[Path], None]]] = {
        "validation_slice": (SLICE_FILE, slice_fits), "bench_inputs": (BENCH_FILE, bench_fits)}
    for key, (rel, fits) in checks.items():
        entry = manifest.get(key)
        if not entry:
            continue
        if not isinstance(entry, dict) or entry.get("file") != rel or rel not in listed:
            problems.append(f"manifest's {key} must be the listed file {rel}")
        elif rel not in damaged:
            try:
                fits(root / rel)
            except _NPZ_ERRORS as exc:
                problems.append(f"{rel} does not load: {exc}")


def _load_json(root: Path, rel: str, listed: dict, damaged: set[str], problems: list[str], parse) -> Any:
    """Parse one listed, intact JSON file with ``parse``; a failure becomes a problem and None."""
    if rel not in listed or rel in damaged:
        return None  # already reported by the checksum pass
    try:
        return parse(json.loads((root / rel).read_text()))
    except (ValueError, TypeError, AttributeError, EdgetlError) as exc:  # JSONDecodeError is a ValueError
        problems.append(f"{rel} does not load: {exc}")
        return None


def _parse_labels(data: Any) -> list[str]:
    # Empty only for an embedding or regression bundle: bundle_output holds labels.json to the manifest's output.
    if not isinstance(data, list) or not all(isinstance(label, str) for label in data):
        raise ValueError("expected a list of strings")
    return data


def _smoke_test(
    root: Path, name: str, entry: dict, preprocess: BundlePreprocess, output: BundleOutput, report: VerifyReport
) -> None:
    """Open one artifact and run the preprocessing's example batch through it; the output must be (batch, labels),
    or (batch, the manifest's width) for an embedding or regression bundle."""
    from ..runners import backend_for_file, open_runner  # light, but only needed with load=True

    path = root / model_file(entry)
    runner = None
    # A bundle benchmarked on a GPU still verifies on a CPU-only host: fall back to the backend's CPU default.
    for runtime in dict.fromkeys([entry.get("runtime") or backend_for_file(path), backend_for_file(path)]):
        try:
            runner = open_runner(path, runtime)
            break
        except BackendUnavailable as exc:
            report.notes.append(f"artifact {name}: not loaded with {runtime} here ({exc})")
        except EdgetlError as exc:
            report.problems.append(f"artifact {name}: {exc}")
            return
    if runner is None:
        return
    static = runner.input_spec.shape[0] if runner.input_spec.shape else None
    count = static if isinstance(static, int) and static > 0 else 1  # a fixed-batch export takes only its size
    try:
        logits = runner.predict(preprocess.example_inputs(count))
    except Exception as exc:  # runtimes raise their own types on a bad model; report, don't crash verify
        report.problems.append(f"artifact {name}: inference on an example batch failed: {str(exc).splitlines()[0]}")
        return
    finally:
        runner.close()
    if logits.shape != (count, output.width):
        source = f"the manifest's {output.spec.width_key}" if output.spec.width_key else "labels.json"
        report.problems.append(f"artifact {name}: outputs {logits.shape}, {source} expects ({count}, {output.width})")
    elif not np.isfinite(logits).all():
        report.problems.append(f"artifact {name}: non-finite outputs on an example batch")
    else:
        report.loaded_artifacts.append(name)
