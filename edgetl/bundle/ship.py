"""Assemble a bundle from validated artifacts: copy, describe, checksum, then swap it into place atomically."""

from __future__ import annotations

import datetime
import os
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_path, write_json, write_text
from ..errors import BundleError
from ..validate import OUTPUT_KINDS
from . import predict_script
from .card import render_card
from .manifest import (BENCH_FILE, FORMAT_VERSION, MANIFEST, MODEL_SUFFIX, OUTPUTS, PREDICT_SCRIPT, REQUIRED_FILES,
                       SLICE_FILE, BundleOutput, BundlePreprocess, file_table, model_file, runtime_versions)
from .predict_script import INPUTS as PREDICT_INPUTS
from .slice import ModelInputs, ValidationSlice, check_inputs, input_arrays, save_npz


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
class ShippedBundle:
    """Where ``ship`` put the bundle, and the manifest it wrote."""

    path: Path
    archive: Path
    manifest: dict[str, Any]

    @property
    def default_artifact(self) -> str:
        return self.manifest["default_artifact"]


def ship(
    artifacts: list[Artifact],
    *,
    name: str,
    output_dir: Path,
    labels: list[str],
    preprocess: BundlePreprocess,
    recipe_toml: str,
    recipe_hash: str,
    card: dict[str, Any],
    data_sha256: str | None = None,
    source_model: dict[str, str] | None = None,
    validation_slice: ValidationSlice | None = None,
    default: str | None = None,
    extra_files: dict[str, Path] | None = None,
    bench_inputs: ModelInputs | None = None,
    bench_description: str | None = None,
    output: str = "logits",
    output_dim: int | None = None,
    embedding_dim: int | None = None,
) -> ShippedBundle:
    """Write ``output_dir/<name>/`` and ``output_dir/<name>.tar.gz`` from artifacts that passed validation.

    Raises BundleError, before writing anything, if any artifact failed validation (naming each with its
    reasons) or none was given. The bundle is built in a temporary folder and renamed into place only when
    complete, so a failure leaves an older bundle of the same name as it was.

    ``data_sha256`` (the content hash of the data the models were trained and validated on) goes into the
    manifest beside ``recipe_hash``: together they say what the bundle was made from; ``source_model`` ({"file",
    "sha256"}) names the user's own model file a bundle was optimized from.
    ``validation_slice`` is shipped as ``validation/slice.npz`` for checking the models on each target device;
    ``bench_inputs`` (preprocessed model inputs, one array or {input name: array}) as ``validation/bench.npz``
    for timing them there, described in the manifest by ``bench_description`` (e.g. "test texts of 13 tokens
    (the median)"). ``default`` names the artifact ``predict`` uses when none is asked for (otherwise the first
    ONNX one). ``extra_files`` ({name in the bundle: source file}) go to the bundle's root and its manifest; every
    file the preprocessing needs (``preprocess.required_files()``, e.g. a tokenizer) must be among them, and the
    run's ``report.html`` (``REPORT_FILE``) may be: the card links it.

    Every bundle of a kind ``predict_script`` reads (images, texts) also gets ``predict.py``, that script: it runs
    the bundle with numpy, Pillow or tokenizers and onnxruntime or OpenVINO, without edgetl.

    ``output`` says what the models return per sample: "logits" (one column per label), "embedding" (a vector of
    ``output_dim`` columns) or "regression" (``output_dim`` real values); for the last two ``labels`` must be empty,
    and labels.json is ``[]``. The width is ``output_dim`` (for an embedding also accepted as ``embedding_dim``, its
    older name) when given, else the width of the validation slice's reference outputs (N, D); one of the two is
    needed, and when both are given they must agree. The manifest records ``"output"`` and the width under the
    kind's key: ``"embedding_dim"`` for an embedding (as bundles always had), ``"output_dim"`` for regression.

    >>> shipped = ship([onnx_fp32], name="fmnist", output_dir=Path("models"), labels=classes, preprocess=pre,
    ...                recipe_toml=text, recipe_hash=digest, card={"backbone": "mobilenet_v2"})
    """
    _check_name(name, "bundle name")
    _check_artifacts(artifacts)
    shape = _output_shape(output, labels, output_dim, embedding_dim, validation_slice)
    if validation_slice is not None:
        validation_slice.check(preprocess, shape)
    bench_rows = check_inputs(bench_inputs, preprocess, "benchmark inputs") if bench_inputs is not None else 0
    extra_files = _check_extra_files(extra_files or {}, preprocess)

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
            **({"data_sha256": data_sha256} if data_sha256 else {}),
            **({"source_model": source_model} if source_model else {}),
            "num_labels": len(labels),
            **shape.manifest_fields(),
            "kind": preprocess.kind,
            "preprocessing": preprocess.describe(),
            **preprocess.manifest_fields(),
            "default_artifact": _default_artifact(artifacts, default),
            "artifacts": entries,
        }
        if validation_slice is not None:
            validation_slice.save(staging / SLICE_FILE)
            manifest["validation_slice"] = {"file": SLICE_FILE, "samples": len(validation_slice.labels),
                                            "reference": validation_slice.reference}
        if bench_inputs is not None:
            save_npz(staging / BENCH_FILE, input_arrays(bench_inputs))
            manifest["bench_inputs"] = {"file": BENCH_FILE, "rows": bench_rows,
                                        "description": bench_description or f"{bench_rows} preprocessed inputs"}
        if preprocess.kind in PREDICT_INPUTS:
            write_text(staging / PREDICT_SCRIPT, Path(predict_script.__file__).read_text(encoding="utf-8"))
        files = [path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file()]
        write_text(staging / "README.md", render_card(manifest, labels, preprocess, card, files=files))
        manifest["files"] = file_table(staging)
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


def _check_name(name: str, what: str) -> None:
    # Names become folder names inside the bundle and the archive: keep them plain.
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise BundleError(f"{what} {name!r} must be a plain folder name (no slashes, not starting with '.')")


def _output_shape(output: str, labels: list[str], output_dim: int | None, embedding_dim: int | None,
                  validation_slice: ValidationSlice | None) -> BundleOutput:
    """What the shipped models return per sample, from ``ship``'s arguments; BundleError when they disagree."""
    if output not in OUTPUT_KINDS:
        raise BundleError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    kind = OUTPUT_KINDS.get(output)
    if embedding_dim is not None and output != "embedding":
        raise BundleError("embedding_dim is for output='embedding' bundles; " + (
            "drop it, or ship with output='embedding'" if kind.labelled else f"pass output_dim for a {output} bundle"))
    if kind.labelled:
        if output_dim is not None:
            unlabelled = " or ".join(repr(k.name) for k in OUTPUT_KINDS.values() if not k.labelled)
            raise BundleError(f"output_dim is for bundles without labels (output={unlabelled}); a {output} bundle "
                              "has one column per label: drop it")
        if not labels or not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels):
            raise BundleError("labels must be a non-empty list of distinct strings, one per model output")
        return BundleOutput(output, len(labels))
    if labels:
        raise BundleError(f"{kind.article} {output} model has no labels, got {len(labels)}; pass labels=[]")
    given = {name: value for name, value in (("output_dim", output_dim), ("embedding_dim", embedding_dim))
             if value is not None}
    if len(given) == 2 and output_dim != embedding_dim:
        raise BundleError(f"output_dim {output_dim!r} and embedding_dim {embedding_dim!r} disagree; give one")
    name, width = next(iter(given.items()), (kind.width_key, None))
    if width is None and validation_slice is not None and np.ndim(validation_slice.reference_logits) == 2:
        width = int(np.shape(validation_slice.reference_logits)[1])  # checked against the slice after
    if width is None:
        raise BundleError(f"{kind.article} {output} bundle needs its dimension: pass {kind.width_key}=D, or a "
                          f"validation_slice whose reference outputs are the (N, D) {kind.rows}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise BundleError(f"{name} must be a positive integer, got {width!r}")
    return BundleOutput(output, int(width))


def _check_artifacts(artifacts: list[Artifact]) -> None:
    failed = [artifact for artifact in artifacts if not artifact.passed]
    if failed:
        named = "; ".join(f"{a.name}: {', '.join(a.validation.get('reasons') or ['no reason given'])}" for a in failed)
        raise BundleError(f"refusing to ship artifacts that failed validation ({named}); fix or leave them out")
    if not artifacts:
        raise BundleError("nothing to ship: no artifact passed validation; see the validation reports")
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


def _check_extra_files(extra_files: dict[str, Path], preprocess: BundlePreprocess) -> dict[str, Path]:
    """The extra files as paths, each a plain free name and an existing file, covering what preprocessing needs."""
    extra_files = {extra: Path(source) for extra, source in extra_files.items()}
    for extra, source in extra_files.items():
        taken = (*REQUIRED_FILES, MANIFEST, PREDICT_SCRIPT, "model", "validation")
        if extra in taken or "/" in extra or "\\" in extra or extra.startswith("."):
            raise BundleError(f"extra file name {extra!r} is taken or not a plain file name")
        if not source.is_file():
            raise BundleError(f"extra file not found: {source}")
    for needed in preprocess.required_files():
        if needed not in extra_files:
            raise BundleError(f"a {preprocess.kind} bundle needs {needed} for its preprocessing: "
                              f"pass extra_files={{'{needed}': path}}")
    return extra_files


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
