"""Fault tests: `edgetl run` killed in every stage and rerun, a full disk during a write, two runs on one folder.

One tiny Fashion-MNIST run is killed with SIGKILL during fine-tuning, distillation, export, quantization and
shipping (and once with SIGINT), each kill followed by a rerun of the same command, which is itself killed in the
next stage. Wherever a kill lands: no file under a final name is half-written (every JSON parses, every model
loads, every file a record names exists), a rerun does not redo what was finished (its log has no line for it and
the finished files are byte-identical), and the last rerun ships a bundle that `edgetl verify` accepts.

A full disk (a file-size limit) while rewriting the bundle or the recipe ends in one line and leaves every earlier
file byte-identical; a second run on the same run folder is refused, naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import tomllib
from conftest import needs_fashion_mnist

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

NAME = "faults"
# Smaller than test_e2e's SMALL: one full run takes about 25 s on 2 quiet cores. Distillation has 2 epochs so a kill
# can land between them; the gate passes everything so every run ships.
SETTINGS = {
    "run.name": NAME, "model.image_size": "32", "data.train_per_class": "20", "data.val_per_class": "5",
    "data.test_per_class": "10", "finetune.probe_epochs": "2", "finetune.unfreeze": "[1]",
    "finetune.stage_epochs": "[1]", "distill.epochs": "2", "distill.ablation": "false",
    "distill.min_relative_accuracy": "0.01", "quantize.methods": '["onnx-int8-static", "openvino-int8"]',
    "quantize.models": '["student"]', "quantize.calibration_size": "20", "validate.gate.min_agreement": "0",
    "validate.gate.max_accuracy_drop": "100", "bench.batch_sizes": "[1]", "bench.min_runs": "2",
    "bench.max_seconds": "0.1", "bench.warmup": "1", "ship.validation_slice": "16",
}
RUN_DIR = Path("runs") / NAME
BUNDLE, ARCHIVE = Path("models") / NAME, Path("models") / f"{NAME}.tar.gz"
PROCESS_TIMEOUT = 600  # seconds: far above a full run, so only a hang trips it


def _sets(changes: dict[str, str] | None = None) -> list[str]:
    """``--set`` arguments for SETTINGS with ``changes`` ({"section.key": value})."""
    settings = {**SETTINGS, **(changes or {})}
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def _env(root: Path) -> dict[str, str]:
    # Unbuffered so lines arrive as printed; wide so rich does not wrap them; logs stay in the test's folder.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250", "EDGETL_LOG_DIR": str(root / "logs")}


# Sets the file size limit, then becomes `python -m edgetl ARGS`. Python ignores SIGXFSZ, so a write past the
# limit fails with OSError EFBIG, as on a full disk.
LIMITED = ("import os, resource, sys\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))\n")
EXEC_EDGETL = "os.execv(sys.executable, [sys.executable, '-m', 'edgetl', *sys.argv[2:]])"


class Edgetl:
    """One ``python -m edgetl`` process in its own process group, its stdout and stderr read as they come;
    ``max_file_bytes``: no file it writes may grow past this (a full disk)."""

    def __init__(self, root: Path, args: list[str], max_file_bytes: int | None = None):
        self.root, self.args, self.started, self.born = root, args, time.monotonic(), time.time()
        command = [sys.executable, "-m", "edgetl", *args] if max_file_bytes is None else \
            [sys.executable, "-c", LIMITED + EXEC_EDGETL, str(max_file_bytes), *args]
        self.proc = subprocess.Popen(command, cwd=root, env=_env(root), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, condition: Callable[[], bool], timeout: float = PROCESS_TIMEOUT) -> bool:
        """Poll ``condition`` until it holds (True) or the process ends without it (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return condition()
            time.sleep(0.005)
        self.signal(signal.SIGKILL)
        raise AssertionError(f"edgetl {' '.join(self.args[:1])} still running after {timeout} s:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        """Signal the whole process group, as a terminal or a job manager does."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self, timeout: float = PROCESS_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            code = self.proc.wait()
        for reader in self._readers:
            reader.join(10)
        self.seconds = time.monotonic() - self.started
        return code

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.out[-lines:] + ["--- stderr ---"] + self.err[-lines:])


def _edgetl(root: Path, *args: str, max_file_bytes: int | None = None) -> Edgetl:
    run = Edgetl(root, list(args), max_file_bytes)
    run.finish()
    return run


def _verify(root: Path, bundle: Path) -> str | None:
    """None when ``edgetl verify`` accepts the bundle, else its output."""
    run = _edgetl(root, "verify", str(bundle))
    return None if run.proc.returncode == 0 else f"verify {bundle} exit {run.proc.returncode}:\n{run.tail()}"


# -- what a killed run may leave ------------------------------------------------------------------------------

def _is_temporary(rel: Path) -> bool:
    """Hidden names (``.model.onnx.x1y2.tmp``, ``.faults.x1y2.partial``) are work in progress: no reader looks
    at them as results."""
    return any(part.startswith(".") for part in rel.parts)


def _load_openvino(path: Path) -> None:
    import openvino as ov

    ov.Core().read_model(str(path))


def _load_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))


def _load_safetensors(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            handle.get_tensor(key)


def _load_torch(path: Path) -> None:
    import torch

    torch.load(path, map_location="cpu", weights_only=True)


def _load_npy(path: Path) -> None:
    import numpy as np

    np.load(path)


def _load_npz(path: Path) -> None:
    import numpy as np

    with np.load(path) as arrays:
        for key in arrays.files:
            arrays[key]


def _load_archive(path: Path) -> None:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                tar.extractfile(member).read()  # reads to the end: a truncated gzip stream raises here


LOADERS: dict[str, Callable[[Path], None]] = {
    ".json": lambda path: json.loads(path.read_text()),
    ".toml": lambda path: tomllib.loads(path.read_text()),
    ".onnx": _load_onnx, ".xml": _load_openvino, ".safetensors": _load_safetensors, ".pt": _load_torch,
    ".npy": _load_npy, ".npz": _load_npz, ".tar.gz": _load_archive,
}


def _final_files(root: Path) -> list[Path]:
    """Every file under a final (not hidden) name in runs/ and models/, relative to ``root``."""
    found = []
    for top in ("runs", "models"):
        if (root / top).is_dir():
            found += [p.relative_to(root) for p in (root / top).rglob("*") if p.is_file()]
    return sorted(rel for rel in found if not _is_temporary(rel))


_LOADED: set[tuple] = set()  # (path, inode, mtime, size) of files already loaded whole: every write makes a new one


def incomplete_files(root: Path) -> list[str]:
    """Every file under a final name that does not load completely, and every file a record names that is
    missing: what a reader would take as complete but is not."""
    problems = []
    for rel in _final_files(root):
        if ".tmp" in rel.name:
            problems.append(f"{rel}: a temporary file under a name a reader takes as final")
            continue
        path = root / rel
        stat = path.stat()
        identity = (path, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if rel.suffix == ".xml":  # an IR is its .xml and .bin together
            weights = path.with_suffix(".bin").stat() if path.with_suffix(".bin").is_file() else None
            identity += (weights.st_ino, weights.st_mtime_ns, weights.st_size) if weights else ()
        if identity in _LOADED:
            continue
        loader = next((load for suffix, load in LOADERS.items() if rel.name.endswith(suffix)), None)
        try:
            if loader is not None:
                loader(path)
            elif rel.suffix == ".bin" and not path.with_suffix(".xml").is_file():
                problems.append(f"{rel}: weights without their .xml")
                continue
            _LOADED.add(identity)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{rel}: does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    return problems + _dangling_records(root)


def _read(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None  # a broken JSON is reported by incomplete_files


def _dangling_records(root: Path) -> list[str]:
    run_dir, problems = root / RUN_DIR, []
    for stage in ("finetune", "distill"):
        result = _read(run_dir / stage / "result.json")
        if result and not (root / result["checkpoint"]).is_file():
            problems.append(f"{stage}/result.json names {result['checkpoint']}, which is missing")
    for record in sorted(run_dir.glob("artifacts/*/export.json")):
        missing = [name for name in (_read(record) or {}).get("files", []) if not (record.parent / name).is_file()]
        if missing:
            problems.append(f"{record.relative_to(root)} names missing files {missing}")
    for record in sorted(run_dir.glob("reference/*.json")):
        logits = record.with_suffix(".npy")
        if (_read(record) or {}).get("shape") and not logits.is_file():
            problems.append(f"{record.relative_to(root)} has no {logits.name}")
    summary = _read(run_dir / "summary.json") or {}
    problems += [f"summary.json names a missing {key} {summary[key]}" for key in ("bundle", "archive")
                 if key in summary and not (root / summary[key]).exists()]
    manifest = _read(root / BUNDLE / "manifest.json")
    if manifest:
        problems += [f"{BUNDLE}/manifest.json lists a missing {rel}" for rel in manifest.get("files", {})
                     if not (root / BUNDLE / rel).is_file()]
    return problems


# -- what a rerun must not redo ---------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_work(root: Path) -> dict[str, str]:
    """sha256 of every finished record and the model files it stands for: a rerun must leave these untouched."""
    run_dir, files = root / RUN_DIR, []
    for stage in ("finetune", "distill"):
        if (run_dir / stage / "result.json").is_file():
            files += [run_dir / stage / name for name in ("result.json", "best.safetensors", "checkpoint.json")]
    for record in run_dir.glob("artifacts/*/export.json"):
        files += [record] + [record.parent / name for name in (_read(record) or {}).get("files", [])]
    files += list(run_dir.glob("artifacts/*/validation.json")) + list(run_dir.glob("artifacts/*/benchmark.json"))
    return {str(path.relative_to(root)): _sha(path) for path in files if path.is_file()}


def _saved_epoch(state_file: Path) -> int | None:
    """The last completed epoch in a distillation ``last.pt``, None without one."""
    import torch

    if not state_file.is_file():
        return None
    return int(torch.load(state_file, map_location="cpu", weights_only=True)["epoch"])


@dataclass
class Expectations:
    """What a rerun of a killed run must (not) print, read from the run folder before the rerun."""

    files: dict[str, str]
    forbidden: list[str] = field(default_factory=list)  # whole lines that would mean finished work was redone
    forbidden_prefixes: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)  # substrings that must appear (a resume line)

    @classmethod
    def read(cls, root: Path) -> Expectations:
        run_dir = root / RUN_DIR
        expect = cls(files=finished_work(root))
        if (run_dir / "finetune/result.json").is_file():
            expect.forbidden_prefixes += ["probe", "stage0 epoch", "best: "]
        elif (run_dir / "finetune/last.pt").is_file():
            expect.forbidden_prefixes.append("probe: features")  # the probe is done: its features are not recomputed
            expect.required.append("resuming after")
        if (run_dir / "distill/result.json").is_file():
            expect.forbidden_prefixes += ["student epoch", "student: best", "teacher "]
        else:
            done = _saved_epoch(run_dir / "distill/last.pt") or 0
            expect.forbidden_prefixes += [f"student epoch {epoch}:" for epoch in range(1, done + 1)]
        for folder in sorted(run_dir.glob("artifacts/*")):
            name = folder.name
            if (folder / "export.json").is_file():
                expect.forbidden += [f"export: {name}", f"quantize: {name}"]
            if (folder / "validation.json").is_file():
                expect.forbidden_prefixes += [f"validate: {name} ", f"validate: {name}\t"]
            if (folder / "benchmark.json").is_file():
                expect.forbidden.append(f"bench: {name}")
        return expect

    def problems(self, root: Path, run: Edgetl) -> list[str]:
        lines = [line.strip() for line in run.out]
        found = [f"redone: {line!r}" for line in lines
                 if line in self.forbidden or line.startswith(tuple(self.forbidden_prefixes))]
        found += [f"no line with {text!r}" for text in self.required if not any(text in line for line in lines)]
        for rel, digest in self.files.items():
            if not (root / rel).is_file():
                found.append(f"{rel}: finished before the kill, gone after the rerun")
            elif _sha(root / rel) != digest:
                found.append(f"{rel}: finished before the kill, rewritten by the rerun")
        return found


# -- kill points --------------------------------------------------------------------------------------------------

def file_appears(rel: str) -> Callable[[Path, Edgetl], bool]:
    return lambda root, run: (root / RUN_DIR / rel).is_file()


def line_printed(prefix: str) -> Callable[[Path, Edgetl], bool]:
    return lambda root, run: any(line.startswith(prefix) for line in run.out)


def bundle_staged(root: Path, run: Edgetl) -> bool:
    """This run's ship staging folder (``models/.faults.*.partial``) exists: the bundle is being written.
    (One left by an earlier killed run is older than the run.)"""
    try:
        return any(p.name.startswith(f".{NAME}.") and p.name.endswith(".partial") and p.stat().st_mtime >= run.born
                   for p in (root / "models").iterdir())
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Attempt:
    """One ``edgetl run`` of the sequence: killed with ``sig`` ``delay`` seconds after ``kill_when`` holds, or run
    to the end (``kill_when`` None); ``changes`` are its setting changes."""

    stage: str
    kill_when: Callable[[Path, Edgetl], bool] | None
    delay: float = 0.0  # lands the kill inside the work that follows the kill point
    unfinished: str = ""  # a record (under the run folder) the stage writes last: absent after the kill
    sig: int = signal.SIGKILL
    changes: tuple[tuple[str, str], ...] = ()


SLICE_12 = (("ship.validation_slice", "12"),)  # a changed bundle: the re-ship replaces a good one
SEQUENCE = [
    # the probe is saved, unfreezing runs
    Attempt("fine-tune", file_appears("finetune/last.pt"), 0.05, "finetune/result.json"),
    # epoch 1 is saved, epoch 2 runs
    Attempt("distillation", file_appears("distill/last.pt"), 0.05, "distill/result.json"),
    # the ONNX export is done, OpenVINO's runs
    Attempt("export", line_printed("export: openvino-fp32"), 0.05, "artifacts/openvino-fp32/export.json"),
    # ORT INT8 is done, NNCF runs
    Attempt("quantization", line_printed("quantize: student-openvino-int8"), 0.3,
            "artifacts/student-openvino-int8/export.json"),
    Attempt("benchmark (SIGINT)", line_printed("bench: "), 0.2, "summary.json", signal.SIGINT),
    Attempt("shipping", bundle_staged, 0.0, "summary.json"),
    Attempt("rerun to the end", None),
    Attempt("re-shipping over a good bundle", bundle_staged, changes=SLICE_12),
    Attempt("rerun to the end with the new setting", None, changes=SLICE_12),
]


@dataclass
class Outcome:
    attempt: Attempt
    triggered: bool  # the kill point was reached while the run was alive
    landed: bool  # the attempt's ``unfinished`` record was not written: the kill came inside the stage
    code: int
    seconds: float
    output: str  # all of stdout
    stderr: str
    incomplete: list[str]  # files under final names that do not load, records naming missing files
    bundle_problems: list[str]  # a bundle folder or archive that is there and fails `edgetl verify`
    redone: list[str] = field(default_factory=list)  # finished work that the next run (the rerun) redid


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def kill_sequence(workdir) -> tuple[list[Outcome], float]:
    """Every attempt of SEQUENCE in turn, each the rerun of the one before; (outcomes, wall seconds)."""
    root, outcomes, start = workdir, [], time.monotonic()
    expect = Expectations.read(root)
    for attempt in SEQUENCE:
        run = Edgetl(root, ["run", *_sets(dict(attempt.changes))])
        triggered = attempt.kill_when is not None and run.wait_for(partial(attempt.kill_when, root, run))
        if triggered:
            time.sleep(attempt.delay)
            run.signal(attempt.sig)
        code = run.finish()
        if outcomes:
            outcomes[-1].redone = expect.problems(root, run)
        bundle_problems = []
        if (root / BUNDLE).exists() or (root / ARCHIVE).exists():  # whatever is there must be whole, old or new
            bundle_problems = [p for p in (_verify(root, BUNDLE), _verify(root, ARCHIVE)) if p]
        landed = not attempt.unfinished or not (root / RUN_DIR / attempt.unfinished).exists()
        outcomes.append(Outcome(attempt, triggered, landed, code, round(run.seconds, 1), "\n".join(run.out),
                                "\n".join(run.err), incomplete_files(root), bundle_problems))
        expect = Expectations.read(root)
    return outcomes, time.monotonic() - start


@pytest.mark.parametrize("index", range(len(SEQUENCE)), ids=[attempt.stage for attempt in SEQUENCE])
def test_killed_run_leaves_no_half_written_file_and_its_rerun_resumes(kill_sequence, index):
    outcomes, _ = kill_sequence
    done = outcomes[index]
    if done.attempt.kill_when is None:
        assert done.code == 0, done.output[-4000:] + done.stderr[-4000:]
    elif done.attempt.sig == signal.SIGKILL:
        assert done.triggered and done.code == -signal.SIGKILL, \
            f"ended (exit {done.code}) before the {done.attempt.stage} kill point:\n{done.output[-4000:]}"
    else:  # Ctrl-C: the CLI's own message, no traceback
        assert done.triggered and done.code == 130, done.output[-4000:] + done.stderr[-4000:]
        assert "Traceback" not in done.stderr, done.stderr
        assert "rerun" in done.stderr, f"Ctrl-C ended the run (exit 130) without a word on stderr: {done.stderr!r}"
    assert done.landed, f"the kill came after {done.attempt.stage} had finished: lower its delay"
    assert not done.incomplete, f"after {done.attempt.stage}: " + "; ".join(done.incomplete)
    assert not done.bundle_problems, "\n".join(done.bundle_problems)
    assert not done.redone, f"the rerun after {done.attempt.stage}: " + "; ".join(done.redone)


def test_the_sequence_trains_once_and_ships_the_last_recipe(kill_sequence, workdir):
    outcomes, seconds = kill_sequence
    print(f"kill sequence: {seconds:.0f} s (" + ", ".join(f"{o.attempt.stage} {o.seconds} s" for o in outcomes) + ")")
    leftovers = [str(p.relative_to(workdir)) for top in ("runs", "models") for p in (workdir / top).rglob(".*")]
    print(f"temporary files and folders left by the kills: {leftovers}")
    assert outcomes[-1].code == 0, outcomes[-1].output[-4000:] + outcomes[-1].stderr[-4000:]
    assert sum(o.output.count("probe: features") for o in outcomes) == 1  # the probe's features: computed once
    manifest = json.loads((workdir / BUNDLE / "manifest.json").read_text())
    assert manifest["validation_slice"]["samples"] == 12  # the bundle of the last recipe, not an older one
    archived = json.loads(_archive_member(workdir / ARCHIVE, f"{NAME}/manifest.json"))
    assert archived["recipe_hash"] == manifest["recipe_hash"]  # folder and archive: the same bundle


def _archive_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read()


# -- a full disk ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(workdir, kill_sequence) -> Path:
    """A finished run folder (the kill sequence's, or a fresh one if that did not finish)."""
    outcomes, _ = kill_sequence
    if outcomes[-1].code != 0:
        run = _edgetl(workdir, "run", *_sets())
        assert run.proc.returncode == 0, run.tail()
    return workdir


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under runs/ and models/, hidden ones included, but the run lock (every process
    writes its pid there)."""
    return {str(p.relative_to(root)): _sha(p) for top in ("runs", "models") for p in (root / top).rglob("*")
            if p.is_file() and p.name != ".lock"}


@dataclass(frozen=True)
class DiskFull:
    args: list[str]  # a command that rewrites files of the finished run
    limit: int  # bytes: the file size limit it runs under


def _disk_full_cases(root: Path) -> dict[str, DiskFull]:
    bundle_files = [p for p in (root / BUNDLE).rglob("*") if p.is_file()]
    largest, archive = max(p.stat().st_size for p in bundle_files), (root / ARCHIVE).stat().st_size
    assert archive > largest + 100_000, "the archive case needs an archive larger than any file in it"
    recipe = (root / RUN_DIR / "recipe.toml").stat().st_size  # the lock line (the command) is shorter
    # Where each fails, as `edgetl --debug` shows: shutil.copyfile of the first model into the staging folder;
    # gzip's last write of the archive; the atomic write of recipe.toml.
    return {
        # the first model file copied into the bundle's staging folder does not fit
        "bundle copy": DiskFull(["ship", *_sets({"ship.validation_slice": "20"})], 1_000_000),
        # every bundle file fits, the .tar.gz does not: the folder is complete, the archive write fails
        "archive": DiskFull(["ship", *_sets({"ship.validation_slice": "24"})], (largest + archive) // 2),
        # the run's first write after its lock, the resolved recipe (as long as the one there), does not fit
        "recipe": DiskFull(["run", *_sets({"ship.validation_slice": "28"})], recipe - 1),
    }


@pytest.mark.parametrize("case", ["bundle copy", "archive", "recipe"])
def test_full_disk_leaves_every_earlier_file_intact(finished, case):
    root = finished
    disk_full = _disk_full_cases(root)[case]
    before = _snapshot(root)
    run = _edgetl(root, *disk_full.args, max_file_bytes=disk_full.limit)
    after = _snapshot(root)
    stderr = "\n".join(run.err).strip()
    print(f"{case}: exit {run.proc.returncode}: {stderr}")
    assert run.proc.returncode > 0, run.tail()  # an error exit, not a signal
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert "disk full" in stderr and "free" in stderr, stderr  # what ran out, and what to do
    changed = sorted(rel for rel, digest in before.items() if after.get(rel) != digest)
    assert not changed, f"changed or removed by the failed write: {changed}"
    new = sorted(set(after) - set(before))
    assert not new, f"left behind by the failed write: {new}"
    assert not incomplete_files(root)


def test_rerun_after_a_full_disk_succeeds(finished):
    root = finished
    run = _edgetl(root, *_disk_full_cases(root)["recipe"].args)
    assert run.proc.returncode == 0, run.tail()
    assert _verify(root, BUNDLE) is None and _verify(root, ARCHIVE) is None
    assert json.loads((root / BUNDLE / "manifest.json").read_text())["validation_slice"]["samples"] == 28


def test_file_size_limit_makes_a_write_fail_with_efbig(tmp_path):
    """The premise of the full-disk cases: past the limit a write raises EFBIG (the process is not killed)."""
    script = LIMITED + "with open('big', 'wb') as f: f.write(b'x' * 100_000)"
    result = subprocess.run([sys.executable, "-c", script, "1024"], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1 and f"[Errno {errno.EFBIG}]" in result.stderr, result.stderr
    assert (tmp_path / "big").stat().st_size == 1024


# -- two runs on one folder -----------------------------------------------------------------------------------

def test_second_run_on_the_same_folder_is_refused_while_the_first_runs(finished):
    root = finished
    args = ["run", *_sets({"bench.min_runs": "3"})]  # the benchmark records are redone: the first run has work left
    first = Edgetl(root, args)
    try:
        assert first.wait_for(lambda: any(line.startswith("bench: ") for line in first.out)), first.tail()
        os.kill(first.proc.pid, signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        second = Edgetl(root, args)
        code = second.finish(120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first.proc.pid, signal.SIGCONT)
    stderr = "\n".join(second.err).strip()
    assert first.finish() == 0, first.tail()
    assert code > 0, f"a second run on the same folder was not refused:\n{second.tail()}"
    assert second.seconds < 30, f"refused only after {second.seconds:.0f} s"
    assert str(first.proc.pid) in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert not incomplete_files(root)
    assert _verify(root, BUNDLE) is None
