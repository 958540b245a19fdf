"""One process at a time per run folder: an advisory lock on ``runs/<name>/.lock``.

The operating system drops the lock when its process ends, however it ends (SIGKILL included), so a killed run
never leaves a stale lock behind; what it left half-written (hidden work files) is swept when the lock is taken.
The file holds the holder's pid and command line, which a refused second process names. Where ``fcntl`` does not
exist (Windows) runs are not guarded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator

from .._io import recover_dir
from ..errors import EdgetlError

LOCK_FILE = ".lock"
_held: dict[Path, tuple[IO[str], int]] = {}  # run folder -> (open lock file, nesting depth): re-entrant per process


class RunLocked(EdgetlError):
    """Another process is working in the same run folder."""


def acquire(run_dir: Path) -> None:
    """Lock ``run_dir`` for this process (re-entrant), or raise RunLocked naming the process that holds it."""
    try:
        import fcntl
    except ImportError:
        return
    from ..train.launch import is_main_process

    if not is_main_process():  # another process of `accelerate launch` / `torchrun`: the main one holds the lock
        return
    key = Path(run_dir).resolve()
    if key in _held:
        handle, depth = _held[key]
        _held[key] = (handle, depth + 1)
        return
    key.mkdir(parents=True, exist_ok=True)
    handle = open(key / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "pid unknown"
        handle.close()
        raise RunLocked(f"{run_dir} is in use by another edgetl process ({holder}); wait for it to finish or stop "
                        "it, or give this run another run.name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}\n")
    handle.flush()
    _held[key] = (handle, 1)
    sweep(key)


def sweep(run_dir: Path) -> list[Path]:
    """Remove what killed processes left in the run folder: hidden work files and folders (temporary writes,
    staging folders, quantizer scratch). Only the lock holder writes here, so with the lock held, every one is
    stale. A folder renamed aside by ``replace_dir`` whose replacement never arrived is put back instead."""
    removed = []
    for folder, dirs, files in os.walk(run_dir):
        hidden = [name for name in (*dirs, *files) if name.startswith(".") and name != LOCK_FILE]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in hidden:
            path = Path(folder) / name
            if name.endswith(".old") and path.is_dir() and not (Path(folder) / name[1:-4]).exists():
                recover_dir(Path(folder) / name[1:-4])
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def release(run_dir: Path) -> None:
    key = Path(run_dir).resolve()
    if key not in _held:
        return
    handle, depth = _held.pop(key)
    if depth > 1:
        _held[key] = (handle, depth - 1)
        return
    handle.close()  # closing the file drops the lock; the file stays (removing it would race a waiting process)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)
