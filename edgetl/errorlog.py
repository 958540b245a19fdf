"""What the CLI does with an exception edgetl did not raise on purpose: keep the traceback in a log file and
tell the user, in one line, what happened and where to look.

The log folder is ``$EDGETL_LOG_DIR``, else ``$XDG_CACHE_HOME/edgetl/logs`` (``~/.cache/edgetl/logs``).
"""

from __future__ import annotations

import datetime
import errno
import os
import platform
import sys
import traceback
from pathlib import Path

# errno values that mean the disk (or the process's file-size limit) is full: the fix is the user's, not a bug
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def log_dir() -> Path:
    if os.environ.get("EDGETL_LOG_DIR"):
        return Path(os.environ["EDGETL_LOG_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "edgetl" / "logs"


def write_log(exc: BaseException) -> Path | None:
    """The traceback of ``exc`` with the command line and versions, in a new log file; None if it cannot be written."""
    from . import __version__

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    header = (f"edgetl {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
              f"command: {' '.join(sys.argv)}\ncwd: {os.getcwd()}\n\n")
    body = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{stamp}-{os.getpid()}.log"
        path.write_text(header + body)
        return path
    except OSError:
        return None


def one_line(exc: BaseException, log: Path | None) -> str:
    """The message for an exception that is not an EdgetlError: a full disk says so, anything else names its
    type and points at the log."""
    text = " ".join(str(exc).split()) or "(no message)"
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        target = exc.filename2 or exc.filename  # a failed copy names its source first, the file written second
        where = f" writing {target}" if target else ""
        return (f"disk full{where} ({os.strerror(exc.errno)}); free some space (or raise the file-size limit) and "
                "rerun the same command: completed stages and earlier files are kept")
    if isinstance(exc, MemoryError):
        return ("out of memory; lower the batch sizes (finetune.batch_size, bench.batch_sizes) or close other jobs, "
                "then rerun the same command: completed stages are kept")
    where = f"; the traceback is in {log}" if log else ""
    return (f"unexpected {type(exc).__name__}: {text[:300]}{where}; rerun with --debug to see it here, and please "
            "report it with that file")
