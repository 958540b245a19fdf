"""Running the device agent for one target: in a subprocess on this machine (pinned and memory-capped for an
emulated small device), or over one SSH session that carries the agent, its request and the bundle files it
needs in one archive. Either way the agent runs from a fresh folder holding exactly the files a device gets.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from .._io import write_json
from ..errors import RemoteError
from .ssh import remote_path, run_streaming, ssh_argv, ssh_failure
from .targets import TargetProfile

_HERE = Path(__file__).resolve().parent
# What a device needs (stdlib + numpy + a runtime), by the name the agent imports it under: the agent, the host's
# own runners, and the timing rule, statistics and machine facts the host uses.
AGENT_FILES: dict[str, Path] = {
    "agent.py": _HERE / "agent.py",
    "backends.py": _HERE.parent / "runners" / "backends.py",
    "loop.py": _HERE / "loop.py",
    "stats.py": _HERE / "stats.py",
    "paired.py": _HERE / "paired.py",
    "environment.py": _HERE / "environment.py",
}


def _emulation(profile: TargetProfile) -> dict[str, Any]:
    if not profile.emulated:
        return {}
    usable = sorted(os.sched_getaffinity(0))
    return {"pin_cpus": usable[: profile.emulate.cores] if profile.emulate.cores else None,
            "memory_mb": profile.emulate.memory_mb}


def agent_command(profile: TargetProfile, request: dict[str, Any], bundle_root: Path, *, probe: bool,
                  trust_new_host: bool, workdir: Path) -> tuple[list[str], Path | None]:
    """The command that runs the agent for ``profile``, and the archive to feed its stdin (SSH only).

    ``request`` names bundle files relative to the bundle folder (its ``sha256`` lists every one the agent reads);
    here ``bundle`` is set to where the agent finds them."""
    flags = ["--probe"] if probe else []
    if profile.is_local:
        agent = workdir / "agent"
        agent.mkdir()
        for name, source in AGENT_FILES.items():
            shutil.copyfile(source, agent / name)
        write_json(workdir / "request.json", {**request, **_emulation(profile), "bundle": str(bundle_root)})
        return [sys.executable, str(agent / "agent.py"), *flags, str(workdir / "request.json")], None
    # SSH: one archive with the agent, the request and the bundle files it needs, unpacked into a fresh
    # folder on the device that is removed when the agent ends, whatever the outcome.
    write_json(workdir / "request.json", {**request, "bundle": "bundle"})
    archive = workdir / "payload.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, source in AGENT_FILES.items():
            tar.add(source, arcname=f"agent/{name}")
        tar.add(workdir / "request.json", arcname="request.json")
        for rel in sorted(request.get("sha256", {})):
            tar.add(bundle_root / rel, arcname=f"bundle/{rel}")
    script = (
        'set -e; work=$(mktemp -d "${TMPDIR:-/tmp}/edgetl-agent.XXXXXX"); trap \'rm -rf "$work"\' EXIT; '
        'tar -xzf - -C "$work"; cd "$work"; '
        f"{remote_path(profile.connection.python)} agent/agent.py {' '.join(flags)} request.json"
    )
    return ssh_argv(profile.connection, f"sh -c {shlex.quote(script)}", trust_new_host=trust_new_host), archive


def run_agent(profile: TargetProfile, request: dict[str, Any], bundle_root: Path, *, probe: bool,
              trust_new_host: bool) -> tuple[list[dict[str, Any]], RemoteError | None]:
    """Run the agent for ``profile``; returns the events it sent and the error that ended it, if any."""
    events: list[dict[str, Any]] = []

    def on_line(line: str) -> None:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the agent sends only JSON lines; anything else came from the remote shell

    # Past the agent's own limit the host gives ssh time to connect and copy, then stops it.
    deadline = request["timeout_s"] + profile.connection.connect_timeout_s + 60
    with tempfile.TemporaryDirectory(prefix="edgetl-target-") as tmp:
        try:
            argv, archive = agent_command(profile, request, bundle_root, probe=probe, trust_new_host=trust_new_host,
                                          workdir=Path(tmp))
        except RemoteError as exc:  # no ssh client, a missing key file: this target fails, the others go on
            return events, RemoteError(f"target {profile.name} ({profile.address}): {exc}", kind=exc.kind)
        with open(archive, "rb") if archive else open(os.devnull, "rb") as stdin:
            _, code, stderr = run_streaming(argv, timeout_s=deadline, stdin=stdin, on_line=on_line)
    return events, _failure(profile, events, code, stderr)


def _failure(profile: TargetProfile, events: list[dict[str, Any]], code: int | None, stderr: str) -> RemoteError | None:
    """The error that ended the agent, from its own last words, ssh's exit status and message, or the shell's."""
    where = f"target {profile.name} ({profile.address})"
    errors = [e for e in events if e.get("event") == "error"]
    if code is None:
        return RemoteError(f"{where}: timed out after {profile.measure.timeout_s} s (measure.timeout_s); "
                           "results gathered so far are kept", kind="timeout")
    if errors:
        kind = {"timeout": "timeout", "missing": "missing"}.get(errors[-1].get("kind"), "agent")
        hint = {"timeout": "; raise measure.timeout_s or lower measure.max_seconds (results so far are kept)",
                "missing": f"; install it for {profile.connection.python} or point connection.python at one with it"}
        return RemoteError(f"{where}: {errors[-1].get('message')}{hint.get(kind, '')}", kind=kind)
    if code == 0 and any(e.get("event") == "done" for e in events):
        return None
    if code == 255 and not profile.is_local:
        found = ssh_failure(stderr, profile.connection)
        if found is not None:
            return RemoteError(f"{where}: {found}", kind=found.kind)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
    if code == 127:
        return RemoteError(f"{where}: no python at {profile.connection.python} on the device ({last}); "
                           "set connection.python to an interpreter with numpy and a runtime", kind="missing")
    return RemoteError(f"{where}: the agent failed ({last})", kind="agent")
