"""Atomic writes: a file is written to a temporary name in the same folder, then renamed; a folder is built
beside its target and swapped in whole."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the complete folder ``staging`` at ``target`` (same filesystem), replacing what was there.

    The old folder is renamed aside first and removed only after the new one is in place, so a crash leaves
    either folder whole: never a half-deleted one. ``recover_dir(target)`` undoes a crash between the two renames.
    """
    staging, target = Path(staging), Path(target)
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        target.rename(aside)
    staging.rename(target)
    shutil.rmtree(aside, ignore_errors=True)
    return target


def recover_dir(target: str | os.PathLike) -> Path:
    """``target``, put back from its renamed-aside copy if a crash in ``replace_dir`` left it missing."""
    target = Path(target)
    aside = target.with_name(f".{target.name}.old")
    if not target.exists() and aside.is_dir():
        aside.rename(target)
    return target


def is_fresh(record: Path, key: dict[str, Any]) -> bool:
    """Whether the JSON ``record`` was written for exactly this ``key``."""
    try:
        return read_json(record).get("key") == key
    except (FileNotFoundError, json.JSONDecodeError):
        return False
