"""The device agent over real SSH: a throwaway OpenSSH server on localhost, started by these tests.

sshd runs from a generated config on a free high port, with a fresh host key and a fresh user key; nothing
is mocked. ``scripts/get-sshd.sh`` provides sshd without root where the system has none (``make test`` runs it).
Run as root (containers, CI), sshd insists on its privilege-separation user and /run/sshd: it then starts
in a private mount namespace that adds both, leaving the machine's own files alone.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.bench.remote import bench_target, bench_targets, check_target
from edgetl.bench.targets import SHIPPED_DIR, Connection, Measure, TargetProfile
from edgetl.bundle import BENCH_FILE, ValidationSlice
from edgetl.cli import app
from edgetl.errors import RemoteError

from test_bundle import TEXT_CASES, TEXT_LABELS, ship_words, text_files, text_preprocess  # noqa: F401 - a fixture
from test_targets import make_bundle

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ssh


def find_sshd() -> str | None:
    for candidate in (os.environ.get("EDGETL_SSHD"), shutil.which("sshd"), "/usr/sbin/sshd",
                      str(ROOT / ".data" / "openssh" / "sshd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class SshServer:
    port: int
    user: str
    key: Path  # the authorised private key
    host_public_key: str
    folder: Path

    def known_hosts(self, *, with_host_key: bool = True) -> Path:
        path = self.folder / ("known_hosts" if with_host_key else "known_hosts.empty")
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_public_key}\n" if with_host_key else "")
        return path

    def profile(self, name: str = "localhost-ssh", **connection) -> TargetProfile:
        settings = dict(kind="ssh", host="127.0.0.1", user=self.user, port=self.port, key=str(self.key),
                        known_hosts=str(self.known_hosts()), python=sys.executable, connect_timeout_s=5)
        settings.update(connection)
        return TargetProfile(
            name=name, runtimes=["onnxruntime:CPUExecutionProvider", "openvino:CPU"], threads=1, batch_sizes=[1, 4],
            connection=Connection(**settings), measure=Measure(warmup=2, min_runs=10, max_seconds=0.2, timeout_s=120),
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgetl-test", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    binary = find_sshd()
    if binary is None:
        pytest.skip("no sshd: run scripts/get-sshd.sh (make test does) or install openssh-server")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh client: install openssh-client")
    folder = tmp_path_factory.mktemp("sshd")
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PidFile none",
        "PermitRootLogin prohibit-password", "LogLevel VERBOSE", "",
    ]))
    argv = [binary, "-D", "-e", "-f", str(config)]
    if os.geteuid() == 0:
        passwd = folder / "passwd"
        passwd.write_text(Path("/etc/passwd").read_text() + "sshd:x:65534:65534:privsep:/run/sshd:/usr/sbin/nologin\n")
        bind_passwd = "" if _has_user("sshd") else f"mount --bind {passwd} /etc/passwd && "
        script = f"{bind_passwd}mount -t tmpfs -o mode=755 edgetl-sshd /run && mkdir -m 755 /run/sshd && exec \"$@\""
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sshd", *argv]
    log = open(folder / "sshd.log", "w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"sshd did not start: {(folder / 'sshd.log').read_text()[-2000:]}")
    yield SshServer(port, pwd.getpwuid(os.getuid()).pw_name, folder / "user_key",
                    (folder / "host_key.pub").read_text().strip(), folder)
    process.terminate()
    process.wait(timeout=10)
    log.close()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


# -- success ---------------------------------------------------------------------------------------------


def test_bench_local_emulated_and_ssh_targets_into_one_table(sshd: SshServer, bundle: Path, tmp_path: Path,
                                                              monkeypatch):
    targets = tmp_path / "targets"
    targets.mkdir()
    fast = {"min_runs = 30": "min_runs = 10", "max_seconds = 5.0": "max_seconds = 0.2", "warmup = 10": "warmup = 2",
            "[1, 8]": "[1, 4]"}
    for name in ("local-cpu", "local-cpu-1core"):
        text = (SHIPPED_DIR / f"{name}.toml").read_text()
        for old, new in fast.items():
            text = text.replace(old, new)
        (targets / f"{name}.toml").write_text(text)
    (targets / "localhost-ssh.toml").write_text(
        'description = "this machine over SSH, standing in for a device"\n'
        'runtimes = ["onnxruntime:CPUExecutionProvider", "openvino:CPU"]\nthreads = 1\nbatch_sizes = [1, 4]\n'
        f'[connection]\nkind = "ssh"\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
        f'key = "{sshd.key}"\nknown_hosts = "{sshd.known_hosts()}"\npython = "{sys.executable}"\n'
        "[measure]\nwarmup = 2\nmin_runs = 10\nmax_seconds = 0.2\ntimeout_s = 120\n"
    )
    monkeypatch.setenv("EDGETL_TARGETS", str(targets))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(bundle), "-t", "local-cpu", "-t", "local-cpu-1core",
                                      "-t", "localhost-ssh", "--json", str(out)], env={"COLUMNS": "250"})
    print(result.output)  # the merged table, shown with pytest -s
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data["targets"]) == ["local-cpu", "local-cpu-1core", "localhost-ssh"]
    remote = data["targets"]["localhost-ssh"]
    assert remote["error"] is None and remote["address"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert remote["environment"]["python"] and remote["environment"]["versions"]["onnxruntime"]
    for runtime in remote["runtimes"]:
        assert runtime["status"] == "ok" and runtime["validation"]["passed"] is True
        assert runtime["validation"]["runtime"] == f"{runtime['runtime']} on localhost-ssh"
        assert [s["batch_size"] for s in runtime["stats"]] == [1, 4]
    ssh_rows = [row for row in data["rows"] if row["target"] == "localhost-ssh"]
    assert len(ssh_rows) == 4 and all(row["validation"] == "pass" for row in ssh_rows)
    assert "localhost-ssh" in result.output and "local-cpu-1core (emulated)" in result.output
    # Per target, the fastest runtime that passed the device-side check is picked, with its latency.
    for name, choice in data["choices"].items():
        runtimes = data["targets"][name]["runtimes"]
        fastest = min(runtimes, key=lambda rt: rt["stats"][0]["median_ms"])
        assert (choice["runtime"], choice["median_ms"]) == (fastest["runtime"], fastest["stats"][0]["median_ms"])
        assert f"{name}: use {choice['artifact']} on {choice['runtime']}" in result.output


def test_a_remote_device_with_different_answers_fails_validation(sshd: SshServer, tmp_path: Path):
    wrong = make_bundle(tmp_path, wrong_reference=True)
    result = bench_target(wrong, sshd.profile())
    assert all(rt.validation["passed"] is False for rt in result.runtimes)


def test_a_bundle_of_a_model_with_named_token_inputs_on_a_remote_device(sshd: SshServer, text_files, tmp_path: Path):
    """The archive carries the tokenized slice and bench rows: the device needs no tokenizer."""
    preprocess = text_preprocess(text_files)
    tokens = preprocess.encode(list(TEXT_CASES))
    labels = np.array([TEXT_LABELS.index(label) for label in TEXT_CASES.values()])
    slice_ = ValidationSlice(tokens, labels, np.eye(len(TEXT_LABELS), dtype=np.float32)[labels])
    shipped = ship_words(text_files, tmp_path, validation_slice=slice_, bench_inputs=tokens)
    result = bench_target(shipped.path, sshd.profile())
    assert result.error is None and result.inputs["source"] == BENCH_FILE and result.inputs["rows"] == 3
    for runtime in result.runtimes:
        assert runtime.ok and runtime.validation["passed"] and runtime.validation["samples"] == 3
        assert [s["batch_size"] for s in runtime.stats] == [1, 4]


# -- refusals and failures, each one clear line ---------------------------------------------------------------


def test_unknown_host_key_is_refused_unless_trusted(sshd: SshServer, bundle: Path):
    empty = sshd.known_hosts(with_host_key=False)
    profile = sshd.profile(known_hosts=str(empty))
    with pytest.raises(RemoteError, match="host key of 127.0.0.1:.* is not in .*--trust-new-host") as caught:
        check_target(profile)
    assert caught.value.kind == "host-key" and "\n" not in str(caught.value)
    assert empty.read_text() == ""  # nothing was recorded without the opt-in
    result = check_target(profile, trust_new_host=True)
    assert all(rt.ok for rt in result.runtimes)
    assert sshd.host_public_key.split()[1] in empty.read_text()  # now known


def test_a_changed_host_key_is_refused_even_with_trust(sshd: SshServer, tmp_path: Path):
    _keygen(tmp_path / "other")
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {(tmp_path / 'other.pub').read_text()}")
    with pytest.raises(RemoteError, match="CHANGED") as caught:
        check_target(sshd.profile(known_hosts=str(wrong)), trust_new_host=True)
    assert caught.value.kind == "host-key"


def test_authentication_failure(sshd: SshServer, tmp_path: Path):
    _keygen(tmp_path / "stranger")
    with pytest.raises(RemoteError, match="authentication failed") as caught:
        check_target(sshd.profile(key=str(tmp_path / "stranger")))
    assert caught.value.kind == "auth" and "\n" not in str(caught.value)


def test_unreachable_port_keeps_the_other_targets_results(sshd: SshServer, bundle: Path, tmp_path: Path):
    closed = sshd.profile(name="nowhere", port=_free_port())
    with pytest.raises(RemoteError, match="cannot reach 127.0.0.1") as caught:
        check_target(closed)
    assert caught.value.kind == "unreachable"
    local = TargetProfile(name="here", runtimes=["onnxruntime:CPUExecutionProvider"], threads=1, batch_sizes=[1],
                          measure=Measure(warmup=1, min_runs=8, max_seconds=0.1))
    out = tmp_path / "partial.json"
    report = bench_targets(bundle, [local, closed], json_path=out)
    assert report.results["nowhere"].error_kind == "unreachable" and not report.ok
    assert report.rows()[-1] == {"target": "nowhere", "status": "error"}
    assert any(note.startswith("nowhere: error: target nowhere") for note in report.notes())
    assert report.results["here"].runtimes[0].validation["passed"]
    saved = json.loads(out.read_text())
    assert saved["targets"]["here"]["runtimes"][0]["stats"] and saved["targets"]["nowhere"]["error"]


def test_timeout_keeps_what_was_gathered(sshd: SshServer, bundle: Path):
    profile = sshd.profile(name="slow")
    profile.measure = Measure(warmup=1, min_runs=10, max_seconds=600, target_rel_ci=0, timeout_s=8)
    with pytest.raises(RemoteError, match="ran past its 8 s limit") as caught:
        bench_target(bundle, profile)
    assert caught.value.kind == "timeout" and "\n" not in str(caught.value)
    partial = caught.value.partial
    assert partial.environment["cpu"]  # device facts arrived before the limit and were kept
    assert partial.error_kind == "timeout"


def test_missing_packages_and_runtimes_on_the_device(sshd: SshServer, bundle: Path, tmp_path: Path):
    bare = tmp_path / "bare-venv"  # a python with no numpy and no runtime
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(RemoteError, match="lacks numpy") as caught:
        bench_target(bundle, sshd.profile(python=str(bare / "bin" / "python")))
    assert caught.value.kind == "missing"
    with pytest.raises(RemoteError, match="no python at") as caught:
        bench_target(bundle, sshd.profile(python=str(tmp_path / "nowhere" / "python3")))
    assert caught.value.kind == "missing"
    profile = sshd.profile()
    profile.runtimes = ["onnxruntime:TensorrtExecutionProvider"]
    with pytest.raises(RemoteError, match="none of its runtimes loads there") as caught:
        bench_target(bundle, profile)
    assert caught.value.kind == "runtime"
    assert caught.value.partial.runtimes[0].status.startswith("not available:")


def test_remote_arguments_are_quoted(sshd: SshServer, tmp_path: Path):
    odd = tmp_path / "py dir; $(touch pwned)" / "it's"
    odd.mkdir(parents=True)
    wrapper = odd / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    result = check_target(sshd.profile(python=str(wrapper)))
    assert all(rt.ok for rt in result.runtimes)
    assert not list(Path("/").glob("pwned")) and not list(Path.home().glob("pwned"))
