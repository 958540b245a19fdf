"""Target profiles: one TOML file per device, saying how to reach it and how to measure on it.

The shipped profiles live in the repository's ``targets/`` folder; a name can also be a path to any
``.toml`` file, and ``EDGETL_TARGETS`` adds folders (``:``-separated) searched before the shipped one.

>>> profile = load_target("raspberry-pi-4")
>>> profile.connection.host, profile.runtimes
('raspberrypi.local', ['onnxruntime:CPUExecutionProvider', 'openvino:CPU'])
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TargetError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "targets"
KNOWN_BACKENDS = ("onnxruntime", "openvino", "torch")


@dataclass
class Connection:
    """How to reach the device: ``local`` (this machine) or ``ssh``."""

    kind: str = "local"  # "local" | "ssh"
    host: str = ""
    user: str = ""
    port: int = 22
    key: str = ""  # private key file; empty: ssh's own default keys
    known_hosts: str = "~/.ssh/known_hosts"
    python: str = "python3"  # the interpreter on the device that has numpy and a runtime
    connect_timeout_s: int = 10


@dataclass
class Measure:
    """Warm-up and stopping rule, as on the host: timed runs until the median's 95% interval is
    within ``± target_rel_ci`` or ``max_seconds`` per batch size are spent; ``timeout_s`` bounds it all."""

    warmup: int = 10
    min_runs: int = 30
    max_seconds: float = 5.0
    target_rel_ci: float = 0.02
    timeout_s: int = 600


@dataclass
class Budgets:
    """Limits a result is judged against; 0 = not checked."""

    latency_ms: float = 0.0  # median at batch size 1
    model_mb: float = 0.0  # model file plus weights on disk
    memory_mb: float = 0.0  # peak resident memory of the agent process


@dataclass
class Emulation:
    """Stand in for a small device on this machine: pin to ``cores`` CPUs and cap the address space."""

    cores: int = 0  # 0 = no pinning
    memory_mb: int = 0  # 0 = no cap


@dataclass
class TargetProfile:
    name: str
    description: str = ""
    arch: str = "x86_64"
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime:CPUExecutionProvider"])
    threads: int = 0  # 0 = the runtime's default
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    connection: Connection = field(default_factory=Connection)
    measure: Measure = field(default_factory=Measure)
    budgets: Budgets = field(default_factory=Budgets)
    emulate: Emulation | None = None
    source: str = ""  # the file it was loaded from

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
    """Where target names are looked up: ``EDGETL_TARGETS`` folders, then the shipped ``targets/``."""
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
    profile = _from_table(TargetProfile, data, "", path)
    profile.source = str(path)
    _check_profile(profile, path)
    return profile


def _from_table(cls: type, table: Any, where: str, path: Path) -> Any:
    """Build dataclass ``cls`` from a TOML table, naming the file and key of any unknown key or wrong type."""
    if not isinstance(table, dict):
        raise TargetError(f"{path}: {where or 'the profile'} must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - {"source"}
    for key in table:
        if key not in fields:
            raise TargetError(f"{path}: unknown key {_dotted(where, key)}; known here: {', '.join(sorted(fields))}")
    values = {}
    for key, value in table.items():
        hint = hints[key]
        inner = [t for t in typing.get_args(hint) if dataclasses.is_dataclass(t)]  # "Emulation | None"
        sub = hint if dataclasses.is_dataclass(hint) else inner[0] if inner else None
        dotted = _dotted(where, key)
        values[key] = _from_table(sub, value, dotted, path) if sub else _typed(hint, value, dotted, path)
    try:
        return cls(**values)
    except TypeError as exc:  # a required key (name) is missing
        raise TargetError(f"{path}: {exc}") from None


def _typed(hint: Any, value: Any, key: str, path: Path) -> Any:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise TargetError(f"{path}: {key} must be a list, got {value!r}")
        return [_typed(item, v, f"{key}[{i}]", path) for i, v in enumerate(value)]
    if hint is float and type(value) is int:
        return float(value)
    if type(value) is not hint:
        raise TargetError(f"{path}: {key} must be {hint.__name__}, got {value!r}")
    return value


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_profile(profile: TargetProfile, path: Path) -> None:
    c = profile.connection
    if c.kind not in ("local", "ssh"):
        raise TargetError(f"{path}: connection.kind must be 'local' or 'ssh', got {c.kind!r}")
    if c.kind == "ssh" and not c.host:
        raise TargetError(f"{path}: an ssh target needs connection.host")
    if not 0 < c.port < 65536:
        raise TargetError(f"{path}: connection.port must be 1..65535, got {c.port}")
    if not profile.runtimes:
        raise TargetError(f"{path}: runtimes is empty; list at least one, e.g. 'onnxruntime:CPUExecutionProvider'")
    for runtime in profile.runtimes:
        if runtime.partition(":")[0] not in KNOWN_BACKENDS:
            raise TargetError(f"{path}: runtime {runtime!r} is not one of {', '.join(KNOWN_BACKENDS)} (backend:device)")
    if not profile.batch_sizes or any(b < 1 for b in profile.batch_sizes):
        raise TargetError(f"{path}: batch_sizes must be positive integers, got {profile.batch_sizes}")
    if profile.threads < 0:
        raise TargetError(f"{path}: threads must be >= 0 (0 = the runtime's default), got {profile.threads}")
    m = profile.measure
    if m.min_runs < 1 or m.warmup < 0 or m.max_seconds < 0 or m.target_rel_ci < 0 or m.timeout_s < 1:
        raise TargetError(f"{path}: measure needs warmup >= 0, min_runs >= 1, max_seconds >= 0, timeout_s >= 1")
    if profile.emulated and not profile.is_local:
        raise TargetError(f"{path}: [emulate] applies to local targets only")
