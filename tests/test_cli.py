"""The CLI: every command documented, light imports, one-line errors with non-zero exits."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgetl.cli import app

COMMANDS = ["run", "finetune", "export", "validate", "bench", "ship", "verify", "predict", "report", "backbones",
            "env"]


def _edgetl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert (app.registered_commands and [c for c in app.registered_commands if c.callback.__name__ == command][0]
            .callback.__doc__)


def test_help_does_not_import_torch():
    code = "import sys; sys.argv=['edgetl','--help']\nfrom edgetl.cli import app\ntry: app()\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_unknown_recipe_key_is_one_line_exit_2(tmp_path):
    result = _edgetl("run", "--set", "finetune.lrr=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown recipe key finetune.lrr" in result.stderr and "Traceback" not in result.stderr


def test_missing_recipe_file(tmp_path):
    result = _edgetl("finetune", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode != 0 and "recipe not found" in result.stderr


def test_export_before_finetune_says_what_to_run(tmp_path):
    result = _edgetl("export", "--set", f"run.output_dir='{tmp_path}'", cwd=tmp_path)
    assert result.returncode != 0 and "edgetl finetune" in result.stderr


def test_predict_on_missing_bundle(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    result = _edgetl("predict", str(tmp_path / "no-bundle"), str(image), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and result.stderr.strip()


def test_backbones_lists_the_registry():
    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0 and "efficientnet_lite0" in result.output.replace("…", "")


def _main(monkeypatch, capsys, *argv):
    """Run the console script in-process: (exit code, stderr)."""
    from edgetl.cli import main

    monkeypatch.setattr(sys, "argv", ["edgetl", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def _broken_backbones(exc):
    def list_backbones():
        raise exc
    return list_backbones


def test_unexpected_error_is_one_line_and_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGETL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("EDGETL_DEBUG", raising=False)
    monkeypatch.setattr("edgetl.backbones.list_backbones", _broken_backbones(ValueError("bad [thing]\nsecond line")))
    code, stderr = _main(monkeypatch, capsys, "backbones")
    logs = list((tmp_path / "logs").glob("crash-*.log"))
    assert code == 1 and len(logs) == 1 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "unexpected ValueError: bad [thing] second line" in stderr and str(logs[0]) in stderr.replace("\n", "")
    text = logs[0].read_text()
    assert "Traceback" in text and "list_backbones" in text and "command: edgetl backbones" in text


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr("edgetl.backbones.list_backbones", _broken_backbones(ValueError("boom")))
    monkeypatch.setattr(sys, "argv", ["edgetl", "--debug", "backbones"])
    from edgetl.cli import main

    with pytest.raises(ValueError, match="boom"):
        main()
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EFBIG"])
def test_full_disk_says_to_free_space(tmp_path, monkeypatch, capsys, errno_name):
    import errno
    import os

    monkeypatch.setenv("EDGETL_LOG_DIR", str(tmp_path / "logs"))
    code_ = getattr(errno, errno_name)
    monkeypatch.setattr("edgetl.backbones.list_backbones",
                        _broken_backbones(OSError(code_, os.strerror(code_), "runs/x/summary.json")))
    code, stderr = _main(monkeypatch, capsys, "backbones")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "disk full writing runs/x/summary.json" in stderr and "free some space" in stderr


def test_error_messages_keep_square_brackets(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, stderr = _main(monkeypatch, capsys, "run", "--set", "quantize.methods=['onnx-int9']")
    assert code == 2 and "quantize.methods[0]" in stderr and "onnx-int9" in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_finetune_refuses_a_users_own_model_in_one_line(tmp_path, tiny_exports):
    model = tiny_exports["onnxruntime:CPUExecutionProvider"]
    result = _edgetl("finetune", "--set", f"model.source='{model}'", cwd=tmp_path)
    assert result.returncode == 1 and "nothing to fine-tune" in result.stderr and "edgetl run" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs" / "fashion-mnist-lite0" / "finetune").exists()
