"""Run a program on a device over SSH with the system ``ssh`` binary, and read its output as it comes.

Host keys are checked against ``known_hosts`` (``StrictHostKeyChecking=yes``); accepting a host never
seen before is an explicit opt-in (``trust_new_host`` -> ``accept-new``), and a changed key is refused
either way. Authentication is by key only (``BatchMode``): nothing ever waits for a password.
Every value that reaches the remote shell is quoted with ``shlex.quote``.

>>> lines, rc, stderr = run_streaming(ssh_argv(connection, "uname -a"), timeout_s=30)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path
from typing import IO, Callable

from ..errors import RemoteError
from .targets import Connection


def remote_path(path: str) -> str:
    """``path`` quoted for a POSIX shell, keeping a leading ``~/`` meaning the remote home folder."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def ssh_argv(connection: Connection, remote_command: str, *, trust_new_host: bool = False) -> list[str]:
    """The ``ssh`` command line that runs ``remote_command`` (already quoted) on ``connection``'s host."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise RemoteError("no ssh client on this machine; install openssh-client", kind="missing")
    known_hosts = Path(connection.known_hosts).expanduser()
    argv = [
        ssh,
        "-p", str(connection.port),
        "-o", "BatchMode=yes",  # key authentication only: never prompt
        "-o", f"StrictHostKeyChecking={'accept-new' if trust_new_host else 'yes'}",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", f"ConnectTimeout={connection.connect_timeout_s}",
        "-o", "ServerAliveInterval=15",
        "-o", "LogLevel=ERROR",
    ]
    if connection.key:
        key = Path(connection.key).expanduser()
        if not key.is_file():  # ssh would only warn, then fail to authenticate (or hang on an unreachable host)
            raise RemoteError(f"ssh: connection.key {connection.key} does not exist ({key}); point connection.key "
                              "at a private key file, or leave it empty for ssh's default keys", kind="auth")
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    destination = f"{connection.user}@{connection.host}" if connection.user else connection.host
    # "--" ends ssh's options, so a host name starting with "-" cannot become one.
    return [*argv, "--", destination, remote_command]


_RUNNING: set[subprocess.Popen] = set()  # so an interrupted benchmark can stop its agents
_RUNNING_LOCK = threading.Lock()


def stop_all() -> None:
    """Kill every agent or ssh process ``run_streaming`` has running (each in its own process group)."""
    with _RUNNING_LOCK:
        for process in list(_RUNNING):
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass


def run_streaming(
    argv: list[str],
    *,
    timeout_s: float,
    stdin: IO[bytes] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> tuple[list[str], int | None, str]:
    """Run ``argv``, handing each stdout line to ``on_line`` as it arrives; kill it after ``timeout_s``.

    Returns (stdout lines, exit code or None when it was killed for time, stderr text)."""
    process = subprocess.Popen(
        argv, stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    with _RUNNING_LOCK:
        _RUNNING.add(process)
    lines: list[str] = []
    errors: list[str] = []

    def read_stdout() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(lines[-1])

    def read_stderr() -> None:
        errors.append(process.stderr.read())  # type: ignore[union-attr]

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout_s)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # its own session: ssh and anything it started, nothing else
        process.wait()
        code = None
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(process)
    for reader in readers:
        reader.join(timeout=5)
    return lines, code, "".join(errors)


def ssh_failure(stderr: str, connection: Connection) -> RemoteError | None:
    """The RemoteError an ssh exit status 255 stands for, read from ssh's own message; None if not ssh's."""
    text = stderr.strip()
    where = f"{connection.host}:{connection.port}"
    known_hosts = Path(connection.known_hosts).expanduser()
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return RemoteError(
            f"ssh: the host key of {where} has CHANGED since it was recorded in {known_hosts}; refusing to connect "
            f"(if the device was reinstalled, remove the old key: "
            f"ssh-keygen -R '[{connection.host}]:{connection.port}')",
            kind="host-key")
    if "Host key verification failed" in text or "No ED25519 host key is known" in text or "host key is known" in text:
        return RemoteError(
            f"ssh: the host key of {where} is not in {known_hosts}; check its fingerprint and add it "
            f"(ssh-keyscan -p {connection.port} {connection.host} >> {known_hosts}) or pass --trust-new-host",
            kind="host-key")
    if "Permission denied" in text or "Too many authentication failures" in text:
        key = connection.key or "ssh's default keys"
        return RemoteError(
            f"ssh: {connection.user or 'the user'}@{where} refused the key {key} (authentication failed); "
            "install its public key in the device's authorized_keys or set connection.key", kind="auth")
    unreachable = ("Connection refused", "Connection timed out", "No route to host", "Could not resolve hostname",
                   "Network is unreachable", "Name or service not known", "Connection closed by", "timed out")
    if any(marker in text for marker in unreachable):
        last = text.splitlines()[-1] if text else "no answer"
        return RemoteError(f"ssh: cannot reach {where} ({last}); is the device on and sshd listening there?",
                           kind="unreachable")
    return None
