"""Ship validated artifacts as a self-checking bundle, and verify one.

A bundle is a folder (and a ``.tar.gz`` of it) that runs with onnxruntime or OpenVINO alone::

    <name>/
      model/<artifact>/...   one folder per artifact: .onnx (+ .onnx.data), or OpenVINO .xml + .bin
      labels.json  preprocess.json  recipe.toml  README.md
      manifest.json          sha256 + size of every other file, versions, validation reports, benchmarks

This module never imports torch, at import or at call time: ``edgetl verify`` runs on devices without it.

>>> shipped = ship([onnx_fp32, openvino_fp32], name="fmnist", output_dir=Path("models"), labels=classes,
...                preprocess=preprocess, recipe_toml=text, recipe_hash=digest, card={"backbone": "mobilenet_v2"})
>>> verify(shipped.archive).ok
True
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import tarfile
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import __version__
from ._io import atomic_path, sha256_file, write_json, write_text
from .data.preprocess import Preprocess
from .errors import BackendUnavailable, BundleError, EdgetlError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The file a runtime opens, per artifact format; the other files (.onnx.data, .bin) sit beside it.
MODEL_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
# Distributions whose versions go into the manifest. Read from package metadata: importing torch
# just to learn its version would defeat the point of a torch-free bundle.
_VERSIONED = ("onnxruntime", "openvino", "onnx", "torch", "numpy", "pillow", "tokenizers", "optimum",
              "optimum-onnx", "optimum-intel", "transformers")
_REQUIRED_FILES = ("labels.json", "preprocess.json", "recipe.toml", "README.md")
# Preprocessed inputs, labels and the reference model's logits: what a device is checked against.
SLICE_FILE = "validation/slice.npz"


@dataclass
class Artifact:
    """One exported model variant ready to ship, with its validation report (and benchmark, if measured)."""

    name: str  # e.g. "onnx-fp32"; becomes the folder model/<name>/
    format: str  # "onnx" | "openvino"
    files: list[Path]  # .onnx (+ .onnx.data), or .xml + .bin
    runtime: str  # e.g. "onnxruntime:CPUExecutionProvider"
    validation: dict[str, Any]  # has at least "passed" and "reasons"
    benchmark: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        # Strictly a boolean (numpy's included): a stray "false" string or a missing key must not ship.
        return isinstance(self.validation.get("passed"), (bool, np.bool_)) and bool(self.validation["passed"])


@dataclass
class ValidationSlice:
    """A few preprocessed held-out samples with their labels and the reference model's logits on them.

    Shipped in the bundle as ``validation/slice.npz``; ``edgetl bench --target`` runs it on each device
    and holds the device's outputs to the reference with the shared validation check. Image inputs are one
    float32 array ``inputs``; text inputs are named int64 token arrays, stored as ``inputs.<name>``
    (``inputs.input_ids``, ``inputs.attention_mask``, ...), so the device needs no tokenizer."""

    inputs: np.ndarray | dict[str, np.ndarray]  # float32 (N, C, H, W), or {input name: int64 (N, L)}
    labels: np.ndarray  # int64 (N,)
    reference_logits: np.ndarray  # float32 (N, classes)
    reference: str = "torch-fp32"  # which model produced reference_logits

    @classmethod
    def from_split(cls, data: Any, preprocess: Any, reference_logits: np.ndarray, *, size: int = 128,
                   seed: int = 0, reference: str = "torch-fp32") -> "ValidationSlice":
        """``size`` samples of a split (LabeledImages, or LabeledTexts with a TextPreprocess), taken at random
        with ``seed``, with the matching rows of ``reference_logits`` (the reference model's logits on the split)."""
        if len(reference_logits) != len(data):
            raise BundleError(f"{len(reference_logits)} reference outputs for {len(data)} samples; they must match")
        chosen = np.sort(np.random.default_rng(seed).permutation(len(data))[: max(1, size)])
        if hasattr(data, "texts"):  # tokenized once here, padded to the longest chosen text
            inputs: Any = preprocess.encode([data.texts[i] for i in chosen])
        else:
            inputs = preprocess.normalize(data.images[chosen])
        return cls(inputs, np.asarray(data.labels)[chosen], np.asarray(reference_logits)[chosen], reference)

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, preprocess: Any, num_labels: int) -> None:
        n = len(self.labels)
        counts = {len(a) for a in self.inputs.values()} if isinstance(self.inputs, dict) else {len(self.inputs)}
        if not (n and counts == {n} and self.reference_logits.shape == (n, num_labels)):
            raise BundleError(f"validation slice: {sorted(counts)} inputs, {n} labels and reference logits "
                              f"{self.reference_logits.shape} must agree (N, {num_labels} labels)")
        if _is_text(preprocess):
            names = sorted(self.inputs) if isinstance(self.inputs, dict) else None
            if names != sorted(preprocess.input_names):
                raise BundleError(f"validation slice inputs {names} are not the model's token inputs "
                                  f"{sorted(preprocess.input_names)}")
        elif isinstance(self.inputs, dict) or tuple(self.inputs.shape[1:]) != tuple(preprocess.input_shape):
            shape = "token arrays" if isinstance(self.inputs, dict) else self.inputs.shape[1:]
            raise BundleError(f"validation slice inputs have shape {shape}, the model takes {preprocess.input_shape}")

    def save(self, path: Path) -> None:
        if isinstance(self.inputs, dict):
            inputs = {f"inputs.{name}": np.asarray(a, dtype=np.int64) for name, a in self.inputs.items()}
        else:
            inputs = {"inputs": self.inputs.astype(np.float32)}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **inputs, labels=self.labels.astype(np.int64),
                         reference_logits=self.reference_logits.astype(np.float32))


def slice_inputs(npz: Any) -> np.ndarray | dict[str, np.ndarray]:
    """The model inputs of a loaded slice.npz (or a dict of its arrays): an image array or named token arrays."""
    files = list(npz.files if hasattr(npz, "files") else npz)
    if "inputs" in files:
        return npz["inputs"]
    return {key.removeprefix("inputs."): npz[key] for key in files if key.startswith("inputs.")}


@dataclass
class ShippedBundle:
    """Where ``ship`` put the bundle, and the manifest it wrote."""

    path: Path
    archive: Path
    manifest: dict[str, Any]

    @property
    def default_artifact(self) -> str:
        return self.manifest["default_artifact"]


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


# -- ship ------------------------------------------------------------------------------------


def ship(
    artifacts: list[Artifact],
    *,
    name: str,
    output_dir: Path,
    labels: list[str],
    preprocess: Preprocess,
    recipe_toml: str,
    recipe_hash: str,
    card: dict[str, Any],
    validation_slice: ValidationSlice | None = None,
    default: str | None = None,
    extra_files: dict[str, Path] | None = None,
) -> ShippedBundle:
    """Write ``output_dir/<name>/`` and ``output_dir/<name>.tar.gz`` from artifacts that passed validation.

    Raises BundleError, before writing anything, if any artifact failed validation (naming each with its
    reasons) or none was given. The bundle is built in a temporary folder and renamed into place only when
    complete, so a failure leaves an older bundle of the same name as it was. ``validation_slice`` is
    shipped as ``validation/slice.npz`` for checking the models on each target device. ``default`` names the
    artifact ``predict`` uses when none is asked for (otherwise the first ONNX one). ``extra_files`` ({name in the
    bundle: source file}) go to the bundle's root: a text model's tokenizer files (``preprocess`` a TextPreprocess).
    """
    _check_name(name, "bundle name")
    failed = [artifact for artifact in artifacts if not artifact.passed]
    if failed:
        named = "; ".join(f"{a.name}: {', '.join(a.validation.get('reasons') or ['no reason given'])}" for a in failed)
        raise BundleError(f"refusing to ship artifacts that failed validation ({named}); fix or leave them out")
    if not artifacts:
        raise BundleError("nothing to ship: no artifact passed validation; see the validation reports")
    _check_artifacts(artifacts)
    if not labels or not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels):
        raise BundleError("labels must be a non-empty list of distinct strings, one per model output")
    if validation_slice is not None:
        validation_slice.check(preprocess, len(labels))
    extra_files = {extra: Path(source) for extra, source in (extra_files or {}).items()}
    for extra, source in extra_files.items():
        if extra in _REQUIRED_FILES or extra in (MANIFEST, "model", "validation") or "/" in extra or extra.startswith("."):
            raise BundleError(f"extra file name {extra!r} is taken or not a plain file name")
        if not source.is_file():
            raise BundleError(f"extra file not found: {source}")
    if _is_text(preprocess) and preprocess.tokenizer_file not in extra_files:
        raise BundleError(f"a text bundle needs its tokenizer: pass extra_files={{'{preprocess.tokenizer_file}': path}}")

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Staging lives in output_dir so the final rename stays on one filesystem, hence atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=output_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; the shipped folder should read like any other
    try:
        entries = {artifact.name: _copy_artifact(artifact, staging) for artifact in artifacts}
        for extra, source in extra_files.items():
            shutil.copyfile(source, staging / extra)
        write_json(staging / "labels.json", list(labels))
        write_json(staging / "preprocess.json", preprocess.to_dict())
        write_text(staging / "recipe.toml", recipe_toml)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "edgetl_version": __version__,
            "runtime_versions": runtime_versions(),
            "recipe_hash": recipe_hash,
            "num_labels": len(labels),
            **_input_description(preprocess),
            "default_artifact": _default_artifact(artifacts, default),
            "artifacts": entries,
        }
        if validation_slice is not None:
            validation_slice.save(staging / SLICE_FILE)
            manifest["validation_slice"] = {"file": SLICE_FILE, "samples": len(validation_slice.labels),
                                            "reference": validation_slice.reference}
        write_text(staging / "README.md", render_card(manifest, labels, preprocess, card))
        manifest["files"] = _file_table(staging)
        write_json(staging / MANIFEST, manifest)

        final = output_dir / name
        archive = output_dir / f"{name}.tar.gz"
        # The archive replaces the old one only after the folder swap succeeded: the pair stays consistent.
        with atomic_path(archive) as tmp_archive:
            with tarfile.open(tmp_archive, "w:gz") as tar:
                tar.add(staging, arcname=name, filter=_anonymous)
            _swap_folder(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ShippedBundle(path=final, archive=archive, manifest=manifest)


def _is_text(preprocess: Any) -> bool:
    return getattr(preprocess, "kind", "image") == "text"


def _input_description(preprocess: Any) -> dict[str, Any]:
    """What the manifest says about the model's input: the image shape, or the text inputs and length limit."""
    if _is_text(preprocess):
        return {"kind": "text", "inputs": list(preprocess.input_names), "max_length": preprocess.max_length,
                "tokenizer": preprocess.tokenizer_file}
    return {"input_shape": list(preprocess.input_shape)}


def default_bench_length(manifest: dict[str, Any]) -> int:
    """A text bundle's benchmark sequence length: what the host measured its default artifact at (the test texts'
    median token count), else 32 tokens (at most the bundle's max_length)."""
    entry = manifest.get("artifacts", {}).get(manifest.get("default_artifact"), {})
    length = ((entry.get("benchmark") or {}).get("settings") or {}).get("sequence_length")
    return int(length) if length else min(32, int(manifest.get("max_length") or 32))


def load_bundle_preprocess(data: dict[str, Any], root: Path) -> Any:
    """A bundle's preprocess.json: the image Preprocess, or a TextPreprocess reading the tokenizer in ``root``."""
    from .text.preprocess import load_preprocess

    return load_preprocess(data, root=root)


def runtime_versions() -> dict[str, str]:
    """Python and the installed runtime/library versions, read from package metadata (nothing imported)."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def model_file(entry: dict[str, Any]) -> str:
    """The bundle-relative path of the file a runtime opens for a manifest artifact entry."""
    suffix = MODEL_SUFFIX.get(entry.get("format", ""), "")
    matches = [f for f in entry.get("files", []) if f.endswith(suffix)] if suffix else []
    if len(matches) != 1:
        raise BundleError(f"artifact entry lists {entry.get('files')}; expected exactly one {suffix or 'model'} file")
    return matches[0]


def _check_name(name: str, what: str) -> None:
    # Names become folder names inside the bundle and the archive: keep them plain.
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise BundleError(f"{what} {name!r} must be a plain folder name (no slashes, not starting with '.')")


def _check_artifacts(artifacts: list[Artifact]) -> None:
    names = [artifact.name for artifact in artifacts]
    if len(set(names)) != len(names):
        raise BundleError(f"artifact names must be unique, got {names}")
    for artifact in artifacts:
        _check_name(artifact.name, "artifact name")
        if artifact.format not in MODEL_SUFFIX:
            raise BundleError(f"artifact {artifact.name}: format {artifact.format!r} is not onnx or openvino")
        basenames = [Path(f).name for f in artifact.files]
        if len(set(basenames)) != len(basenames):
            raise BundleError(f"artifact {artifact.name}: two files share a name: {basenames}")
        if sum(b.endswith(MODEL_SUFFIX[artifact.format]) for b in basenames) != 1:
            raise BundleError(
                f"artifact {artifact.name}: needs exactly one {MODEL_SUFFIX[artifact.format]} file, got {basenames}"
            )


def _copy_artifact(artifact: Artifact, staging: Path) -> dict[str, Any]:
    folder = staging / "model" / artifact.name
    folder.mkdir(parents=True)
    files = []
    for source in map(Path, artifact.files):
        if not source.is_file():
            raise BundleError(f"artifact {artifact.name}: file not found: {source}; re-export it and ship again")
        # Basenames are kept: an .onnx file names its external .onnx.data file, and an .xml its .bin.
        shutil.copyfile(source, folder / source.name)
        files.append(f"model/{artifact.name}/{source.name}")
    entry = {
        "format": artifact.format,
        "runtime": artifact.runtime,
        "files": files,
        "validation": artifact.validation,
        "benchmark": artifact.benchmark,
    }
    entry["model_file"] = model_file(entry)
    return entry


def _default_artifact(artifacts: list[Artifact], chosen: str | None = None) -> str:
    if chosen is not None:
        if chosen not in {artifact.name for artifact in artifacts}:
            raise BundleError(f"default artifact {chosen!r} is not among the shipped {[a.name for a in artifacts]}")
        return chosen
    # ONNX first: onnxruntime is the runtime most devices can install.
    onnx = [artifact for artifact in artifacts if artifact.format == "onnx"]
    return (onnx or artifacts)[0].name


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST
    }


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Who built the bundle is not part of it.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _swap_folder(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an older ``final`` is moved aside first and removed only after."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- verify ----------------------------------------------------------------------------------


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
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"cannot read bundle archive {archive}: {exc}") from None
    root = destination / tops.pop()
    if not root.is_dir():
        raise BundleError(f"{archive}: the archive holds a file, not a bundle folder")
    return root


def read_manifest(root: Path) -> dict[str, Any]:
    """Load and shape-check ``root/manifest.json``; BundleError says what is wrong."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} is missing: is {root} an edgetl bundle?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is damaged, ship it again") from None
    tables = [manifest.get(key) if isinstance(manifest, dict) else None for key in ("files", "artifacts")]
    if not all(isinstance(t, dict) and t and all(isinstance(v, dict) for v in t.values()) for t in tables):
        raise BundleError(f"{path} lacks its 'files' or 'artifacts' table; the bundle is damaged, ship it again")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path} is bundle format {manifest['format_version']}; upgrade edgetl to read it")
    return manifest


def verify(bundle: Path, *, load: bool = True) -> VerifyReport:
    """Check a bundle folder or ``.tar.gz``: checksums, no unlisted files, labels, preprocessing, validation.

    With ``load`` (the default) each artifact is also opened with its runtime and run on one random batch
    (of 1, or the model's fixed batch size), whose output must have shape (batch, number of labels).

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
        elif path.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: unlisted file (not in the manifest)")
    for rel in _REQUIRED_FILES:
        if rel not in listed:
            problems.append(f"manifest does not list {rel}")

    labels = _load_json(root, "labels.json", listed, damaged, problems, _parse_labels)
    preprocess = _load_json(root, "preprocess.json", listed, damaged, problems,
                            lambda data: load_bundle_preprocess(data, root))
    if preprocess is not None and _is_text(preprocess) and preprocess.tokenizer_file not in listed:
        problems.append(f"manifest does not list the tokenizer {preprocess.tokenizer_file} a text bundle needs")
        preprocess = None
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
    slice_entry = manifest.get("validation_slice")
    if slice_entry and labels is not None and preprocess is not None:
        if slice_entry.get("file") != SLICE_FILE or SLICE_FILE not in listed:
            problems.append(f"manifest's validation_slice must be the listed file {SLICE_FILE}")
        elif SLICE_FILE not in damaged:
            try:
                with np.load(root / SLICE_FILE) as npz:
                    shipped = ValidationSlice(slice_inputs(npz), npz["labels"], npz["reference_logits"])
                shipped.check(preprocess, len(labels))
            except (BundleError, KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                problems.append(f"{SLICE_FILE} does not load: {exc}")
    if load and labels is not None and preprocess is not None:
        for name in loadable:
            _smoke_test(root, name, artifacts[name], preprocess, len(labels), report)


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
    if not isinstance(data, list) or not data or not all(isinstance(label, str) for label in data):
        raise ValueError("expected a non-empty list of strings")
    return data


def _smoke_test(
    root: Path, name: str, entry: dict, preprocess: Preprocess, num_labels: int, report: VerifyReport
) -> None:
    """Open one artifact and run one random batch through it; the output must be (batch, num_labels)."""
    from .runners import backend_for_file, open_runner  # light, but only needed with load=True

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
        if _is_text(preprocess):  # one sentence through the shipped tokenizer
            batch = preprocess.encode(["edgetl verify: is this bundle intact?"] * count)
        else:
            batch = np.random.default_rng(0).standard_normal((count, *preprocess.input_shape)).astype(np.float32)
        logits = runner.predict(batch)
    except Exception as exc:  # runtimes raise their own types on a bad model; report, don't crash verify
        report.problems.append(f"artifact {name}: inference on a random batch failed: {str(exc).splitlines()[0]}")
        return
    finally:
        runner.close()
    if logits.shape != (count, num_labels):
        report.problems.append(f"artifact {name}: outputs {logits.shape}, labels.json expects ({count}, {num_labels})")
    elif not np.isfinite(logits).all():
        report.problems.append(f"artifact {name}: non-finite outputs on a random batch")
    else:
        report.loaded_artifacts.append(name)


# -- model card (README.md) ----------------------------------------------------------------------

# Card keys with their own place in the README; other keys go under "Other results" or "Other details".
_CARD_PLACED = {"description", "backbone", "task", "dataset", "dataset_license", "weights_license", "intended_use",
                "limitations", "exporter"}
_ACCURACY_KEYS = ("accuracy", "macro_f1", "agreement", "accuracy_drop")
_LATENCY_KEYS = ("target", "device", "runtime", "threads", "batch_size", "median_ms", "mean_ms", "p90_ms", "p99_ms",
                 "throughput", "peak_rss_mb")
_DEFAULT_LIMITS = ("Accuracy was measured on held-out data from the training distribution only; expect less on "
                   "images unlike it. Every input is forced into one of the classes. Check on your own data first.")


def render_card(manifest: dict[str, Any], labels: list[str], preprocess: Any, card: dict[str, Any]) -> str:
    """The bundle's README.md: what the model is, how well and how fast each artifact runs, how to use it."""
    name, artifacts, default = manifest["name"], manifest["artifacts"], manifest["default_artifact"]
    classes = ", ".join(labels[:40]) + (f", … ({len(labels) - 40} more)" if len(labels) > 40 else "")
    text = _is_text(preprocess)
    if text:
        input_line = (f"int64 {', '.join(preprocess.input_names)}, each (N, L), L ≤ {preprocess.max_length} tokens "
                      "(dynamic batch and sequence axes)")
        steps = (f"{'lower-case, ' if preprocess.lowercase else ''}tokenize with {preprocess.tokenizer_file} "
                 f"(`tokenizers` package), truncate to {preprocess.max_length} tokens "
                 f"({'on' if preprocess.truncation else 'off'}), pad with {preprocess.pad_token} to "
                 f"{'the longest text of the batch' if preprocess.padding == 'longest' else 'max_length'}")
        sample, runtimes = '"where is my card?"', "numpy, the `tokenizers` package and onnxruntime or OpenVINO"
    else:
        size = preprocess.image_size
        input_line = f"{preprocess.dtype} {preprocess.layout} (N, {preprocess.channels}, {size}, {size})"
        steps = (f"{'RGB' if preprocess.channels == 3 else 'grayscale'}, resize to {size}×{size} "
                 f"({preprocess.resample}), x = (pixel / 255 − mean) / std, mean {list(preprocess.mean)}, "
                 f"std {list(preprocess.std)}")
        sample, runtimes = "photo.jpg", "numpy, Pillow and onnxruntime or OpenVINO"
    overview = [
        ["Backbone", card.get("backbone", "not recorded")],
        ["Task", card.get("task", "text classification" if text else "image classification")],
        ["Classes", f"{len(labels)}: {classes}"],
        ["Input", input_line],
        ["Preprocessing", f"{steps} (preprocess.json)"],
        ["Default artifact", f"{default} ({artifacts[default]['runtime']})"],
        ["Built", f"{manifest['created_utc']}, edgetl {manifest['edgetl_version']}, recipe {manifest['recipe_hash']}"],
    ]
    accuracy = [
        [n, e["format"], e["runtime"], *(e["validation"].get(k) for k in _ACCURACY_KEYS),
         "passed" if e["validation"].get("passed") else "failed"]
        for n, e in artifacts.items()
    ]
    results = {k: v for k, v in card.items() if k not in _CARD_PLACED and ("accuracy" in k or "f1" in k)}
    latency = [{"artifact": n, **row} for n, e in artifacts.items() for row in _bench_rows(e.get("benchmark"))]
    columns = [key for key in ("artifact", *_LATENCY_KEYS) if any(key in row for row in latency)]
    other = [[k, v] for k, v in card.items() if k not in _CARD_PLACED and k not in results]

    description = card.get("description") or f"{'Text' if text else 'Image'} classifier shipped by edgetl."
    lines = [f"# {name}", "", str(description), ""]
    lines += _table(["", ""], overview)
    lines += ["", "## Accuracy", "", "Held-out accuracy of each artifact, and its agreement with the reference.", ""]
    lines += _table(["Artifact", "Format", "Runtime", "Accuracy %", "Macro-F1 %", "Agreement", "Drop (points)",
                     "Gate"], accuracy)
    lines += ["", *(f"- {key}: {_fmt(value)}" for key, value in results.items())] if results else []
    lines += ["", "## Latency", ""]
    lines += _table(columns, [[row.get(c) for c in columns] for row in latency]) if latency else [
        "No benchmark recorded; `edgetl bench` measures these artifacts on your targets."]
    lines += [
        "", "## Data and licences", "",
        f"- Training data: {card.get('dataset', 'not recorded')}",
        f"- Data licence: {card.get('dataset_license', 'not recorded')}",
        f"- Weights licence: {card.get('weights_license', 'not recorded')}",
        *([f"- Exported with: {card['exporter']}"] if card.get("exporter") else []),
        "", "## How to run", "", f"Needs {runtimes}; no torch{', no transformers' if text else ''}.", "", "```bash",
        f"edgetl verify {name}.tar.gz     # checksums, labels, preprocessing, one test inference per artifact",
        f"edgetl predict {name}/ {sample}                          # top-3 labels, default artifact",
        f"edgetl predict {name}/ {sample} --runtime openvino:CPU",
        "```", "", "```python", "from edgetl.predict import load_bundle", "",
        f"print(load_bundle(\"{name}\").predict([{sample if text else repr(sample)}], top_k=3))", "```",
        "", "## Intended use and limitations", "",
        str(card.get("intended_use") or f"Sorting {'texts' if text else 'images'} into the {len(labels)} classes above."),
        "", str(card.get("limitations") or (_DEFAULT_LIMITS.replace("images unlike it", "texts unlike it (other "
                                            "domains, languages, lengths)") if text else _DEFAULT_LIMITS)),
    ]
    lines += ["", "## Other details", "", *_table(["", ""], other)] if other else []
    return "\n".join(lines) + "\n"


def _bench_rows(benchmark: Any) -> list[dict[str, Any]]:
    """Benchmark JSON as table rows: a BenchResult dict ("stats" per batch size), {target: result}, or flat."""
    if not isinstance(benchmark, dict) or not benchmark:
        return []
    for key in ("stats", "results"):
        if isinstance(benchmark.get(key), list):
            context = {k: benchmark[k] for k in ("target", "runtime", "threads") if k in benchmark}
            cpu = (benchmark.get("environment") or {}).get("cpu")
            context.update({"device": cpu} if cpu else {})
            return [{**context, **row} for row in benchmark[key] if isinstance(row, dict)]
    if all(isinstance(value, dict) for value in benchmark.values()):
        return [{"target": target, **row} for target, value in benchmark.items() for row in _bench_rows(value)]
    return [benchmark]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows),
    ]
