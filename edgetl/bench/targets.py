"""Target profiles: one TOML file per device, saying how to reach it and how to measure on it.

The shipped profiles live in the package's ``edgetl/targets/`` folder; a name can also be a path to any
``.toml`` file, and ``EDGETL_TARGETS`` adds folders (``:``-separated) searched before the shipped one. A profile
is checked completely when it is loaded (``edgetl.config``): keys, types, ranges, and each runtime's backend
against ``edgetl.runners.RUNTIMES``.

>>> profile = load_target("raspberry-pi-4")
>>> profile.connection.host, profile.runtimes
('raspberrypi.local', ['onnxruntime:CPUExecutionProvider', 'openvino:CPU'])
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import INTERNAL, load, ranged
from ..errors import TargetError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "targets"


@dataclass
class Connection:
    """How to reach the device: ``local`` (this machine) or ``ssh``."""

    kind: Literal["local", "ssh"] = "local"
    host: str = ""
    user: str = ""
    port: int = ranged(22, ge=1, le=65535)
    key: str = ""  # private key file; empty: ssh's own default keys
    known_hosts: str = "~/.ssh/known_hosts"
    python: str = "python3"  # the interpreter on the device that has numpy and a runtime
    connect_timeout_s: int = ranged(10, ge=1)


@dataclass
class Measure:
    """Warm-up and stopping rule, as on the host: timed runs until the median's 95% interval is
    within ``± target_rel_ci`` or ``max_seconds`` per batch size are spent; ``timeout_s`` bounds it all."""

    warmup: int = ranged(10, ge=0)
    min_runs: int = ranged(30, ge=1)
    max_seconds: float = ranged(5.0, ge=0)
    target_rel_ci: float = ranged(0.02, ge=0)
    timeout_s: int = ranged(600, ge=1)
    # The target's pick: the runtimes that ran are timed back to back in this many rounds at the smallest batch size
    # and compared by the 95% interval of their latency ratio (edgetl.bench.paired); 0 = by their medians
    race_rounds: int = ranged(20, ge=0, note="0 = no race; else at least 6")
    race_calls: int = ranged(5, ge=1)
    race_margin: float = ranged(0.05, ge=0, lt=1)  # faster only when the interval is this far from 1, else tied


@dataclass
class Budgets:
    """Limits a result is judged against; 0 = not checked."""

    latency_ms: float = ranged(0.0, ge=0)  # median at batch size 1
    model_mb: float = ranged(0.0, ge=0)  # model file plus weights on disk
    memory_mb: float = ranged(0.0, ge=0)  # peak resident memory of the agent process


@dataclass
class Emulation:
    """Stand in for a small device on this machine: pin to ``cores`` CPUs and cap the address space."""

    cores: int = ranged(0, ge=0)  # 0 = no pinning
    memory_mb: int = ranged(0, ge=0)  # 0 = no cap


@dataclass
class TargetProfile:
    name: str
    description: str = ""
    arch: str = "x86_64"
    # backend:device, the backend registered in edgetl.runners.RUNTIMES
    runtimes: list[str] = ranged(["onnxruntime:CPUExecutionProvider"], min_items=1,
                                 note="e.g. 'onnxruntime:CPUExecutionProvider'")
    threads: int = ranged(0, ge=0, note="0 = the runtime's default")
    batch_sizes: list[int] = ranged([1, 8], ge=1, min_items=1)
    connection: Connection = field(default_factory=Connection)
    measure: Measure = field(default_factory=Measure)
    budgets: Budgets = field(default_factory=Budgets)
    emulate: Emulation | None = None
    source: str = field(default="", metadata={INTERNAL: True})  # the file it was loaded from

    @property
    def is_local(self) -> bool:
        return self.connection.kind == "local"

    @property
    def emulated(self) -> bool:
        return self.emulate is not None and bool(self.emulate.cores or self.emulate.memory_mb)

    @property
    def address(self) -> str:
        c = self.connection
        return "this machine" if self.is_local else f"{c.user + '@' if c.user else ''}{c.host}:{c.port}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def target_dirs() -> list[Path]:
    """Where target names are looked up: ``EDGETL_TARGETS`` folders, then the shipped ``edgetl/targets/``."""
    extra = [Path(p).expanduser() for p in os.environ.get("EDGETL_TARGETS", "").split(os.pathsep) if p]
    return [*extra, SHIPPED_DIR]


def list_targets() -> list[TargetProfile]:
    """Every profile found in ``target_dirs()``; a name in an earlier folder hides the same name later."""
    found: dict[str, TargetProfile] = {}
    for folder in target_dirs():
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            found.setdefault(path.stem, load_target(path))
    return sorted(found.values(), key=lambda p: p.name)


def load_target(name_or_path: str | os.PathLike) -> TargetProfile:
    """A profile by name (``local-cpu``) or by path to a ``.toml`` file; TargetError names a bad key."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith(".toml") or os.sep in text):
        path = next((d / f"{text}.toml" for d in target_dirs() if (d / f"{text}.toml").is_file()), path)
    if not path.is_file():
        known = ", ".join(sorted({p.stem for d in target_dirs() if d.is_dir() for p in d.glob("*.toml")}))
        raise TargetError(f"unknown target {text!r}; known targets: {known or 'none'} (or give a path to a .toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    profile = load(TargetProfile, data, error=TargetError, prefix=f"{path}: ")
    profile.source = str(path)
    check_profile(profile, path)
    return profile


def check_profile(profile: TargetProfile, path: str | os.PathLike = "") -> None:
    """The checks that span several keys, and each runtime's backend; a TargetError names the file and key."""
    from ..runners import RUNTIMES

    prefix = f"{path}: " if str(path) else ""
    if profile.connection.kind == "ssh" and not profile.connection.host:
        raise TargetError(f"{prefix}an ssh target needs connection.host")
    if profile.emulated and not profile.is_local:
        raise TargetError(f"{prefix}[emulate] applies to local targets only (connection.kind = 'local')")
    for i, runtime in enumerate(profile.runtimes):
        backend = runtime.partition(":")[0]
        if backend not in RUNTIMES:
            raise TargetError(f"{prefix}runtimes[{i}]: runtime {runtime!r} (backend:device): "
                              f"{RUNTIMES.unknown(backend, key='')}")
