"""The CLI: every command documented, light imports, one-line errors with non-zero exits."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgetl.cli import app

COMMANDS = ["run", "finetune", "export", "validate", "bench", "ship", "verify", "predict", "backbones", "env"]


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
