"""One process per run folder: a second one is refused with the holder's pid; a killed holder leaves no lock."""

import signal
import subprocess
import sys

import pytest

from edgetl.pipeline.lock import LOCK_FILE, RunLocked, acquire, release, run_lock

HOLD = "import sys, time\nfrom edgetl.pipeline.lock import acquire\nacquire(sys.argv[1])\nprint('held', flush=True)\n" \
       "time.sleep(60)\n"


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path/run."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_second_process_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(RunLocked, match=rf"in use by another edgetl process \(pid {holder.pid}: .*\); wait for it"):
        acquire(tmp_path / "run")


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text().startswith("pid ")


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path / "run"), run_lock(tmp_path / "run"):
        pass
    acquire(tmp_path / "run")  # released fully: taking it again works
    release(tmp_path / "run")
    process = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", "pass"), str(tmp_path / "run")],
                             capture_output=True, text=True)
    assert process.returncode == 0, process.stderr  # another process may take it now


def test_taking_the_lock_sweeps_what_killed_processes_left(tmp_path):
    run = tmp_path / "run"
    (run / "artifacts" / "onnx-int8-static" / ".onnx-int8-static.abc").mkdir(parents=True)  # quantizer scratch
    (run / "artifacts" / "onnx-int8-static" / ".export.json.x1.tmp").write_text("{half")
    (run / "artifacts" / "onnx-int8-static" / "export.json").write_text("{}")
    (run / "finetune" / ".model.old").mkdir(parents=True)  # a swap killed between its two renames
    (run / "finetune" / ".model.old" / "config.json").write_text("{}")
    (run / "distill" / ".model.old").mkdir(parents=True)  # ... and one whose new folder did arrive
    (run / "distill" / "model").mkdir()
    with run_lock(run):
        hidden = sorted(str(p.relative_to(run)) for p in run.rglob(".*"))
    assert hidden == [LOCK_FILE]
    assert (run / "finetune" / "model" / "config.json").is_file()  # put back, not deleted
    assert (run / "artifacts" / "onnx-int8-static" / "export.json").is_file()
