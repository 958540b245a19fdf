"""One process at a time per run folder: an advisory lock on ``runs/<name>/.lock``.

The operating system drops the lock when its process ends, however it ends (SIGKILL included), so a killed run
never leaves a stale lock behind. The file holds the holder's pid and command line, which a refused second
process names. Where ``fcntl`` does not exist (Windows) runs are not guarded.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Iterator

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
