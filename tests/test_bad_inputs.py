"""The bad-input catalogue: every input a new user can get wrong, through the real ``edgetl`` command.

Each failing case runs the CLI in its own working folder and asserts: a non-zero exit, no traceback, ONE line on
stderr that names the problem (a case-specific substring: the key, the file) and what to do, not the catch-all
``error: unexpected`` (a crash that nobody meant), and every file that existed before is byte-identical after; new
files only where the case allows them (none for recipe errors: they fail in ``load_recipe``, before any data is
read). Usage errors (unknown option, missing argument) exit 2. ``edgetl verify`` and ``edgetl bench --target``
also print a report on stdout: there the case's substrings may be in the report or the one stderr line.

Most cases call ``edgetl.cli.main()`` in-process (fast); ``test_the_real_process_says_the_same`` reruns a few as a
subprocess. Odd but valid images (grayscale, RGBA, 16-bit, CMYK, palette, huge, mixed sizes) must load, with the
right shape and colours.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bundle import ship_words, text_files  # noqa: F401 - a fixture: a tiny bag-of-words text model
from test_ssh import _keygen, sshd  # noqa: F401 - a fixture (a throwaway OpenSSH server) and its key maker

from edgetl.preprocess import ImagePreprocess

# -- helpers ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(args: list[str], capsys) -> Result:
    """``edgetl ARGS`` in this process (cwd and environment as the caller set them), its exit code and output."""
    from edgetl.cli import main

    capsys.readouterr()
    saved = sys.argv
    sys.argv = ["edgetl", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_process(args: list[str], cwd: Path, env: dict[str, str]) -> Result:
    """``python -m edgetl ARGS`` as a real process."""
    done = subprocess.run([sys.executable, "-m", "edgetl", *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=120, env={**os.environ, "COLUMNS": "200", **env})
    return Result(done.returncode, done.stdout, done.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: the sha256 of each file, "dir" for folders, "link -> target" for links."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def free_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Env:
    """What a case's setup writes into: ``work`` (the command's cwd, snapshotted) and the shared bundle."""

    work: Path
    bundle: Path  # the module's bundle folder (read-only: copy it into work before changing it)
    archive: Path
    request: pytest.FixtureRequest

    def write(self, rel: str, content: str | bytes) -> Path:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def copy_bundle(self, rel: str = "colours") -> Path:
        return Path(shutil.copytree(self.bundle, self.work / rel))


Setup = Callable[[Env], None]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # "{bundle}" / "{archive}" stand for the module's bundle; other paths are relative
    expect: tuple[str, ...]  # substrings the error must contain: the problem's key or file, and the fix
    setup: Setup | None = None
    new: tuple[str, ...] = ()  # fnmatch patterns of paths the command may create (relative to the work folder)
    kind: str = "line"  # "line" | "usage": a usage error, exit 2 | "report": verify/bench, which also print a report
    code: int | None = None  # the exact exit code, where it is part of the contract
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def files(contents: dict[str, str | bytes]) -> Setup:
    return lambda env: [env.write(rel, data) for rel, data in contents.items()]


def setups(*steps: Setup) -> Setup:
    return lambda env: [step(env) for step in steps]


def check_failure(case: Case, result: Result) -> None:
    """The contract of every failing case (see the module docstring)."""
    text = result.out + result.err
    assert result.code != 0, text
    assert "Traceback" not in text, text
    assert "error: unexpected" not in result.err, result.err  # the lead's catch-all: a deliberate error is due
    lines = [line.strip() for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    assert lines[0].startswith("error: "), lines[0]
    shown = text if case.kind == "report" else lines[0]  # a report lists every problem on stdout
    if case.kind == "usage":
        assert result.code == 2, text
    if case.code is not None:
        assert result.code == case.code, text
    for expected in case.expect:
        assert expected in shown, f"{expected!r} not in {shown!r}"


def check_files(case: Case, before: dict[str, str], after: dict[str, str]) -> None:
    changed = sorted(rel for rel, digest in before.items() if after.get(rel) != digest)
    assert not changed, f"changed or removed: {changed}"
    created = sorted(rel for rel in after if rel not in before)
    unexpected = [rel for rel in created if not any(fnmatch.fnmatch(rel, pattern) for pattern in case.new)]
    assert not unexpected, f"created: {unexpected}"


# -- the module's bundle: a hand-written colour model, ONNX only ------------------------------------------------

LABELS = ["red", "green", "blue", "dark"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Mean colour -> linear layer -> 4 logits ("red", "green", "blue", "dark"): answers known in advance."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.bundle import Artifact, ValidationSlice, ship

    folder = tmp_path_factory.mktemp("bundle")
    weight = 3.0 * np.array([[1, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1]], dtype=np.float32)
    bias = np.array([0, 0, 0, -4.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"]),
         helper.make_node("MatMul", ["features", "weight"], ["scores"]),
         helper.make_node("Add", ["scores", "bias"], ["logits"])],
        "colours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    onnx_path = folder / "src" / "colours.onnx"
    onnx_path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), onnx_path)
    passing = {"passed": True, "reasons": [], "accuracy": 100.0, "agreement": 1.0}
    preprocess = ImagePreprocess(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    labels = np.arange(8) % 4  # a validation slice of solid colours, its reference logits computed with numpy
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]], np.uint8)[labels]
    inputs = preprocess.normalize(np.broadcast_to(colours[:, None, None, :], (8, 8, 8, 3)).copy())
    return ship([Artifact("onnx-fp32", "onnx", [onnx_path], "onnxruntime:CPUExecutionProvider", passing)],
                name="colours", output_dir=folder / "models", labels=LABELS, preprocess=preprocess,
                recipe_toml="", recipe_hash="test", card={},
                validation_slice=ValidationSlice(inputs, labels, inputs.mean(axis=(2, 3)) @ weight + bias))


@pytest.fixture
def env(tmp_path, shipped, monkeypatch, request) -> Env:
    """A fresh working folder as cwd, the lead's crash logs outside it, and guards that fail a case loudly if a
    bad input ever gets past its checks into the pipeline or training."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDGETL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("EDGETL_DEBUG", raising=False)
    monkeypatch.delenv("EDGETL_TARGETS", raising=False)

    def pipeline_guard(*args, **kwargs):
        raise AssertionError("the recipe got past load_recipe into the pipeline")

    def training_guard(self, recipe, splits, *args, **kwargs):
        self.check_splits(splits)
        raise AssertionError("the data got past its checks into training")

    import edgetl.pipeline
    from edgetl.tasks.image import ImageClassification
    from edgetl.tasks.text import TextClassification

    monkeypatch.setattr(edgetl.pipeline, "run", pipeline_guard)
    monkeypatch.setattr(ImageClassification, "finetune", training_guard)
    monkeypatch.setattr(TextClassification, "finetune", training_guard)
    return Env(work, shipped.path, shipped.archive, request)


# -- recipes: every section; all fail in load_recipe, nothing created -------------------------------------------


def recipe(text: str | bytes) -> Setup:
    return files({"recipe.toml": text})


def run_set(*overrides: str, command: str = "run") -> tuple[str, ...]:
    return (command, *[arg for item in overrides for arg in ("--set", item)])


RECIPES = [
    pytest.param(Case(("run", "recipe.toml"), ("finetune.learning_rate", "known keys here", "lr"),
                      recipe("[finetune]\nlearning_rate = 0.1\n"), code=2), id="recipe-unknown-key"),
    pytest.param(Case(("run", "recipe.toml"), ("unknown recipe key training", "finetune"),
                      recipe("[training]\nlr = 0.1\n")), id="recipe-unknown-section"),
    pytest.param(Case(("run", "recipe.toml"), ("run must be a table",), recipe('run = "mine"\n')),
                 id="recipe-section-not-a-table"),
    pytest.param(Case(run_set('finetune.batch_size="big"'), ("finetune.batch_size must be int", "'big'")),
                 id="recipe-wrong-type-int"),
    pytest.param(Case(("run", "recipe.toml"), ("distill.enabled must be bool", "'yes'"),
                      recipe('[distill]\nenabled = "yes"\n')), id="recipe-wrong-type-bool"),
    pytest.param(Case(("run", "recipe.toml"), ("bench.batch_sizes must be a list", "8"),
                      recipe("[bench]\nbatch_sizes = 8\n")), id="recipe-wrong-type-list"),
    pytest.param(Case(run_set("data.val_fraction=1.5"), ("data.val_fraction must be > 0 and < 1", "1.5"), code=2),
                 id="recipe-val-fraction-over-1"),
    pytest.param(Case(run_set("data.test_fraction=1"), ("data.test_fraction must be > 0 and < 1",)),
                 id="recipe-test-fraction-1"),
    pytest.param(Case(run_set("data.val_fraction=0.6", "data.test_fraction=0.5"),
                      ("data.val_fraction + data.test_fraction must be < 1", "left to train on")),
                 id="recipe-fractions-sum-over-1"),
    pytest.param(Case(run_set("validate.gate.min_agreement=7.0"), ("validate.gate.min_agreement must be within [0, 1]",
                                                                     "7.0")), id="recipe-gate-min-agreement-7"),
    pytest.param(Case(run_set("validate.gate.min_accuracy=150"),
                      ("validate.gate.min_accuracy must be within [0, 100]",)),
                 id="recipe-gate-min-accuracy-150"),
    pytest.param(Case(run_set("validate.gate.max_accuracy_drop=-1"), ("validate.gate.max_accuracy_drop must be >= 0",)),
                 id="recipe-gate-negative-drop"),
    pytest.param(Case(run_set("model.image_size=0"), ("model.image_size must be >= 16", "got 0")),
                 id="recipe-image-size-0"),
    pytest.param(Case(run_set("finetune.lr=nan"), ("finetune.lr must be a finite number", "nan")),
                 id="recipe-lr-nan"),
    pytest.param(Case(run_set("distill.temperature=inf"), ("distill.temperature must be a finite number", "inf")),
                 id="recipe-temperature-inf"),
    pytest.param(Case(run_set("run.name=../../escaped"), ("run.name must be a plain folder name", "'../../escaped'")),
                 id="recipe-run-name-escapes"),
    pytest.param(Case(run_set("run.name=/tmp/elsewhere"), ("run.name must be a plain folder name",)),
                 id="recipe-run-name-absolute"),
    pytest.param(Case(("run", "recipe.toml"), ("ship.name must be a plain folder name", "'../../escaped'"),
                      recipe('[ship]\nname = "../../escaped"\n')), id="recipe-ship-name-escapes"),
    pytest.param(Case(run_set("run.seed=-1"), ("run.seed must be within [0, 4294967295]",)), id="recipe-seed-negative"),
    pytest.param(Case(("run", "recipe.toml"), ("recipe.toml is not valid TOML", "line 2"),
                      recipe("[run]\nname = fashion\n")), id="recipe-toml-syntax"),
    pytest.param(Case(("run", "recipe.toml"), ("recipe.toml is not UTF-8 text", "save it as UTF-8"),
                      recipe(b'[run]\nname = "caf\xe9"\n')), id="recipe-not-utf8"),
    pytest.param(Case(("run", "no-such.toml"), ("recipe not found: no-such.toml", "banking77")),
                 id="recipe-missing-file"),
    pytest.param(Case(run_set("quantize.methods=onnx-int4"),
                      ("quantize.methods[0]", "'onnx-int4'", "onnx-int8-static")),
                 id="recipe-unknown-quantize-method"),
    pytest.param(Case(run_set("quantize.calibration_method=kl"), ("quantize.calibration_method must be one of",
                                                                   "'entropy'")), id="recipe-quantize-choice"),
    pytest.param(Case(("run", "recipe.toml"), ("model.kind was renamed to model.task", "text-classification"),
                      recipe('[model]\nkind = "text"\n')), id="recipe-renamed-model-kind"),
    pytest.param(Case(run_set("model.task=audio-classification"), ("'audio-classification'", "image-classification")),
                 id="recipe-unknown-task"),
    pytest.param(Case(run_set("model.backbone=resnet9000"), ("resnet9000", "efficientnet_lite0")),
                 id="recipe-unknown-backbone"),
    pytest.param(Case(run_set("model.weights=missing-weights.pt"),
                      ("model.weights 'missing-weights.pt' is not a file", "'package'")), id="recipe-weights-missing"),
    pytest.param(Case(run_set("data.source=imagenet"), ("data.source", "'imagenet'", "folder")),
                 id="recipe-unknown-data-source"),
    pytest.param(Case(run_set("finetune.unfreeze=[1, 2, 3]"),
                      ("finetune.unfreeze has 3 stages", "one epoch count per stage")), id="recipe-unfreeze-stages"),
    pytest.param(Case(run_set("bench.batch_sizes=[]"), ("bench.batch_sizes must list at least 1 item",)),
                 id="recipe-bench-no-batch-sizes"),
    pytest.param(Case(run_set("text.student_layers=[3, 1]"), ("text.student_layers must be distinct, increasing",)),
                 id="recipe-text-student-layers"),
    # the stage commands check the whole recipe first too
    pytest.param(Case(run_set("export.formats=tflite", command="export"), ("export.formats[0]", "'tflite'", "onnx")),
                 id="recipe-export-unknown-format"),
    pytest.param(Case(run_set("distill.alpha=1.5", command="distill"), ("distill.alpha must be within [0, 1]",)),
                 id="recipe-distill-alpha"),
    pytest.param(Case(run_set("quantize.min_agreement=2", command="quantize"),
                      ("quantize.min_agreement must be within [0, 1]",)), id="recipe-quantize-min-agreement"),
    pytest.param(Case(run_set("validate.batch_size=0", command="validate"), ("validate.batch_size must be >= 1",)),
                 id="recipe-validate-batch-size"),
    pytest.param(Case(run_set("bench.threads=0", command="bench"), ("bench.threads must be >= 1",)),
                 id="recipe-bench-threads"),
    pytest.param(Case(run_set("ship.name=.hidden", "ship.validation_slice=-1", command="ship"),
                      ("ship.name must be a plain folder name", "'.hidden'")), id="recipe-ship-hidden-name"),
]


# -- data: image folders, IDX files, text files (through `edgetl finetune`, which loads the data first) -------

DATA_RUN = ("runs", "runs/*")  # the run folder and its recipe.toml are written before the data is read
IMAGES = ("--set", "data.source=folder", "--set", "model.backbone=tiny_convnet", "--set", "distill.enabled=false")


def images_at(path: str) -> tuple[str, ...]:
    return ("finetune", *IMAGES, "--set", f"data.path={path}")


def png(colour=(200, 30, 30), size=(12, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(colour=(200, 30, 30), size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


SAMPLE = files({"red.png": png()})  # a valid image to predict on


def image_classes(root: str, classes=("cat", "dog"), per_class: int = 4) -> Setup:
    return files({f"{root}/{name}/{i}.png": png((40 * i, 20, 20)) for name in classes for i in range(per_class)})


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def idx_set(**replace: bytes) -> Setup:
    """A tiny valid Fashion-MNIST folder (10 classes; 2 training and 1 test image each), some files replaced."""
    rng = np.random.default_rng(0)
    contents = {
        "train-images-idx3-ubyte": idx(rng.integers(0, 255, (20, 28, 28))),
        "train-labels-idx1-ubyte": idx(np.arange(20) % 10),
        "t10k-images-idx3-ubyte": idx(rng.integers(0, 255, (10, 28, 28))),
        "t10k-labels-idx1-ubyte": idx(np.arange(10)),
    }
    contents.update({name.replace("_", "-"): data for name, data in replace.items()})
    return files({f"idx/{name}": data for name, data in contents.items()})


IDX = ("finetune", "--set", "data.path=idx", "--set", "model.backbone=tiny_convnet", "--set", "distill.enabled=false")
GOOD_TRAIN_IMAGES = idx(np.zeros((20, 28, 28)))
TRUNCATED_GZ = gzip.compress(idx(np.zeros((10, 28, 28))))[:-8]  # without its CRC and size trailer


def texts_at(path: str) -> tuple[str, ...]:
    return ("finetune", "banking77", "--set", "data.source=text-file", "--set", f"data.path={path}")


def csv_rows(n_per_class: int = 6, classes=("card", "refund")) -> str:
    return "text,label\n" + "".join(f"message {i} about {c},{c}\n" for c in classes for i in range(n_per_class))


DATA = [
    pytest.param(Case(images_at("nowhere"), ("image folder not found: nowhere", "one sub-folder per class"),
                      new=DATA_RUN), id="data-folder-missing"),
    pytest.param(Case(images_at("red.png"), ("image folder red.png is a file", "one sub-folder per class"),
                      SAMPLE, new=DATA_RUN), id="data-folder-is-a-file"),
    pytest.param(Case(images_at("imgs"), ("imgs has 0 class sub-folder", "one sub-folder per class"),
                      lambda env: (env.work / "imgs").mkdir(), new=DATA_RUN), id="data-folder-empty"),
    pytest.param(Case(images_at("imgs"), ("imgs has 1 class sub-folder", "at least 2"),
                      image_classes("imgs", classes=("cat",)), new=DATA_RUN), id="data-folder-one-class"),
    pytest.param(Case(images_at("imgs"), ("class folder imgs/dog has no images", ".png"),
                      setups(image_classes("imgs", classes=("cat",)), files({"imgs/dog/notes.txt": "no pictures"})),
                      new=DATA_RUN), id="data-folder-class-without-images"),
    pytest.param(Case((*images_at("imgs"), "--set", "data.on_bad_file=error"),
                      ("cannot read image imgs/dog/bad.jpg", "valid PNG/JPEG"),
                      setups(image_classes("imgs"), files({"imgs/dog/bad.jpg": b"\xff\xd8\xff\xe0 not a jpeg"})),
                      new=DATA_RUN), id="data-folder-corrupt-jpg"),
    pytest.param(Case((*images_at("imgs"), "--set", "data.on_bad_file=error"),
                      ("cannot read image imgs/cat/cut.jpg", "Truncated", "valid PNG/JPEG"),
                      setups(image_classes("imgs"), files({"imgs/cat/cut.jpg": jpeg(size=(64, 64))[:300]})),
                      new=DATA_RUN), id="data-folder-truncated-jpg"),
    pytest.param(Case(images_at("imgs"), ("imgs/test has classes ['cat', 'fox']", "same class sub-folders"),
                      setups(image_classes("imgs/train"), image_classes("imgs/test", classes=("cat", "fox"))),
                      new=DATA_RUN), id="data-folder-test-classes-differ"),
    pytest.param(Case(IDX, ("train-images-idx3-ubyte holds", "truncated", "reinstall"),
                      idx_set(train_images_idx3_ubyte=GOOD_TRAIN_IMAGES[:-100]), new=DATA_RUN),
                 id="data-idx-truncated"),
    pytest.param(Case(IDX, ("train-labels-idx1-ubyte is not an unsigned-byte IDX file", "reinstall"),
                      idx_set(train_labels_idx1_ubyte=b"PK\x03\x04" + bytes(40)), new=DATA_RUN),
                 id="data-idx-bad-magic"),
    pytest.param(Case(IDX, ("20 train images but 19 labels", "reinstall"),
                      idx_set(train_labels_idx1_ubyte=idx(np.arange(19) % 10)), new=DATA_RUN),
                 id="data-idx-label-count"),
    pytest.param(Case(IDX, ("train-images-idx3-ubyte holds a 1-d array", "28x28 images")  ,
                      idx_set(train_images_idx3_ubyte=idx(np.arange(20) % 10)), new=DATA_RUN), id="data-idx-swapped"),
    pytest.param(Case(IDX, ("cannot read IDX file", "truncated", "reinstall"),
                      setups(idx_set(), files({"idx/t10k-images-idx3-ubyte.gz": TRUNCATED_GZ})),
                      new=DATA_RUN), id="data-idx-truncated-gz"),
    pytest.param(Case(IDX, ("lacks t10k-labels IDX file", "reinstall"),
                      setups(idx_set(), lambda env: (env.work / "idx/t10k-labels-idx1-ubyte").unlink()),
                      new=DATA_RUN), id="data-idx-missing-file"),
    pytest.param(Case(texts_at("texts.csv"), ("no label column 'label'", "set data.label_column"),
                      files({"texts.csv": "text,intent\nhello,greet\n"}), new=DATA_RUN), id="data-csv-no-label-column"),
    pytest.param(Case(texts_at("texts.csv"), ("texts.csv: the file is empty", "header line"),
                      files({"texts.csv": ""}), new=DATA_RUN), id="data-csv-empty"),
    pytest.param(Case(texts_at("texts.csv"), ("found 1 class(es)", "at least 2"),
                      files({"texts.csv": csv_rows(classes=("card",))}), new=DATA_RUN), id="data-csv-one-class"),
    pytest.param(Case(texts_at("texts.tsv"), ("texts.tsv, line 3: 3 fields where the header has 2", "quote fields"),
                      files({"texts.tsv": "text\tlabel\nfine\tcard\nbad\trow\textra\n"}), new=DATA_RUN),
                 id="data-tsv-extra-field"),
    pytest.param(Case(texts_at("texts.jsonl"), ("texts.jsonl, line 2: not valid JSON", "one object per line"),
                      files({"texts.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": \n'}), new=DATA_RUN),
                 id="data-jsonl-broken-line"),
    pytest.param(Case(texts_at("texts.jsonl"), ("line 1: label 'label' must be a string or an integer",),
                      files({"texts.jsonl": '{"text": "a", "label": null}\n'}), new=DATA_RUN),
                 id="data-jsonl-null-label"),
    pytest.param(Case(texts_at("texts.csv"), ("texts.csv: not UTF-8 text", "save it as UTF-8"),
                      files({"texts.csv": b"text,label\ncaf\xe9,x\n"}), new=DATA_RUN), id="data-csv-not-utf8"),
    pytest.param(Case(texts_at("texts.txt"), ("cannot tell the format", ".csv, .tsv or .jsonl"),
                      files({"texts.txt": "hello\n"}), new=DATA_RUN), id="data-text-unknown-suffix"),
    pytest.param(Case(texts_at("folder"), ("label 'refund' does not occur in the training data",),
                      files({"folder/train.csv": csv_rows(classes=("card", "lost")), "folder/test.csv": csv_rows(2)}),
                      new=DATA_RUN), id="data-text-test-label-unseen"),
]


# -- bundles (`edgetl predict` and `edgetl verify`) -----------------------------------------------------------


def tamper(rel: str) -> Setup:
    def change(env: Env) -> None:
        path = env.copy_bundle() / rel
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return change


def bundle_with(rel: str, content: str | None) -> Setup:
    """A copy of the bundle with ``rel`` replaced (None: removed)."""
    def change(env: Env) -> None:
        path = env.copy_bundle() / rel
        path.unlink() if content is None else path.write_text(content)
    return change


def archive(*members: tuple[str, bytes | str, str], name: str = "bad.tar.gz") -> Setup:
    """A .tar.gz with (name, data or link target, "file" | "symlink") members."""
    def write(env: Env) -> None:
        with tarfile.open(env.work / name, "w:gz") as tar:
            for member, data, kind in members:
                info = tarfile.TarInfo(member)
                if kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return write


def edit_manifest(**changes) -> Setup:
    """A copy of the bundle whose manifest.json has top-level keys changed (the manifest has no checksum)."""
    def change(env: Env) -> None:
        path = env.copy_bundle() / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return change


def truncated_archive(env: Env) -> None:
    env.write("cut.tar.gz", env.archive.read_bytes()[: env.archive.stat().st_size // 2])


ESCAPE = f"edgetl-escape-{os.getpid()}.txt"
PREDICT = ("predict",)
BUNDLES = [
    pytest.param(Case(("predict", "no-bundle", "red.png"), ("bundle not found: no-bundle", "edgetl ship"), SAMPLE),
                 id="bundle-missing-path"),
    pytest.param(Case(("verify", "no-bundle"), ("no-bundle not found", "edgetl ship"), kind="report"),
                 id="bundle-missing-path-verify"),
    pytest.param(Case(("predict", "colours", "red.png"), ("model/onnx-fp32/colours.onnx", "edgetl verify"),
                      setups(tamper("model/onnx-fp32/colours.onnx"), SAMPLE)), id="bundle-tampered"),
    pytest.param(Case(("verify", "colours"), ("colours.onnx: sha256 does not match", "edgetl ship"),
                      tamper("model/onnx-fp32/colours.onnx"), kind="report"), id="bundle-tampered-verify"),
    pytest.param(Case(("predict", "colours", "red.png"), ("manifest.json is missing", "edgetl ship"),
                      setups(bundle_with("manifest.json", None), SAMPLE)), id="bundle-no-manifest"),
    pytest.param(Case(("verify", "colours"), ("manifest.json is missing", "edgetl ship"),
                      bundle_with("manifest.json", None), kind="report"), id="bundle-no-manifest-verify"),
    pytest.param(Case(("predict", "colours", "red.png"), ("manifest.json is not valid JSON", "ship it again"),
                      setups(bundle_with("manifest.json", '{"files": {'), SAMPLE)), id="bundle-manifest-broken-json"),
    pytest.param(Case(("predict", "colours", "red.png"), ("lacks its 'files' or 'artifacts' table", "ship it again"),
                      setups(bundle_with("manifest.json", "[]"), SAMPLE)), id="bundle-manifest-not-a-table"),
    pytest.param(Case(("predict", "bad.tar.gz", "red.png"), ("unsafe path in archive", f"../{ESCAPE}", "refusing"),
                      setups(archive(("colours/labels.json", b"[]", "file"), (f"../{ESCAPE}", b"x", "file")), SAMPLE)),
                 id="bundle-archive-dotdot"),
    pytest.param(Case(("verify", "bad.tar.gz"), ("unsafe path in archive", f"../{ESCAPE}"),
                      archive((f"colours/../../{ESCAPE}", b"x", "file")), kind="report"),
                 id="bundle-archive-dotdot-verify"),
    pytest.param(Case(("predict", "bad.tar.gz", "red.png"), ("'colours/passwd' is a link or device", "refusing"),
                      setups(archive(("colours/passwd", "/etc/passwd", "symlink")), SAMPLE)),
                 id="bundle-archive-symlink-out"),
    pytest.param(Case(("predict", "cut.tar.gz", "red.png"), ("cannot read bundle archive cut.tar.gz", "edgetl ship"),
                      setups(truncated_archive, SAMPLE)), id="bundle-archive-truncated"),
    pytest.param(Case(("verify", "cut.tar.gz"), ("cannot read bundle archive cut.tar.gz",), truncated_archive,
                      kind="report"), id="bundle-archive-truncated-verify"),
    pytest.param(Case(("predict", "model.onnx", "red.png"), ("cannot read bundle archive model.onnx", "edgetl ship"),
                      files({"model.onnx": b"\x08\x07 an onnx file, not a bundle", "red.png": png()})),
                 id="bundle-not-an-archive"),
    pytest.param(Case(("predict", "two.tar.gz", "red.png"), ("expected one top-level bundle folder",),
                      setups(archive(("a/x", b"1", "file"), ("b/y", b"2", "file"), name="two.tar.gz"), SAMPLE)),
                 id="bundle-archive-two-folders"),
    pytest.param(Case(("predict", "colours", "red.png"), ("default_artifact 'gone' is not among", "--runtime"),
                      setups(edit_manifest(default_artifact="gone"), SAMPLE)), id="bundle-manifest-bad-default"),
    pytest.param(Case(("bench", "colours", "--quiet", "--target", "local-cpu"),
                      ("validation/slice.npz is missing or does not match the manifest", "edgetl verify"),
                      tamper("validation/slice.npz")), id="bundle-damaged-slice-bench"),
    pytest.param(Case(("predict", "{bundle}", "red.png", "--runtime", "torch:cpu"),
                      ("no artifact in this bundle runs on torch:cpu", "onnx-fp32"), SAMPLE),
                 id="bundle-no-such-runtime"),
]


# -- targets (`edgetl bench BUNDLE --target ...`, `edgetl targets check`) -------------------------------------

PROFILE = 'runtimes = ["onnxruntime:CPUExecutionProvider"]\nbatch_sizes = [1]\n'


def ssh_profile(**connection) -> Setup:
    def write(env: Env) -> None:
        settings = {"kind": "ssh", "host": "127.0.0.1", "port": free_port(), "connect_timeout_s": 2,
                    "known_hosts": "known_hosts", **connection}
        body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
        env.write("known_hosts", "")
        env.write("device.toml", f"{PROFILE}[connection]\n{body}")
    return write


def sshd_profile(known_hosts: str) -> Setup:
    """A profile for the tests' own sshd (test_ssh.py), with a known_hosts file of the given kind."""
    def write(env: Env) -> None:
        server = env.request.getfixturevalue("sshd")  # skips, saying why, where there is no sshd
        if known_hosts == "changed":
            _keygen(env.work / "other")
            entry = f"[127.0.0.1]:{server.port} {(env.work / 'other.pub').read_text()}"
        else:
            entry = ""
        ssh_profile(port=server.port, user=server.user, key=str(server.key), python=sys.executable)(env)
        env.write("known_hosts", entry)
    return write


BENCH = ("bench", "{bundle}", "--quiet", "--target")

TARGETS = [
    pytest.param(Case((*BENCH, "no-such-device"), ("unknown target 'no-such-device'", "local-cpu", ".toml"), code=2),
                 id="target-unknown-name"),
    pytest.param(Case((*BENCH, "device.toml"), ("device.toml is not valid TOML",),
                      files({"device.toml": "runtimes = [\n"})), id="target-toml-syntax"),
    pytest.param(Case((*BENCH, "device.toml"), ("device.toml: unknown key cores", "known keys here"),
                      files({"device.toml": PROFILE + "cores = 4\n"})), id="target-unknown-key"),
    pytest.param(Case((*BENCH, "device.toml"), ("device.toml: threads must be int", "'two'"),
                      files({"device.toml": PROFILE + 'threads = "two"\n'})), id="target-wrong-type"),
    pytest.param(Case((*BENCH, "device.toml"), ("an ssh target needs connection.host",),
                      files({"device.toml": PROFILE + '[connection]\nkind = "ssh"\n'})), id="target-ssh-without-host"),
    pytest.param(Case((*BENCH, "device.toml"), ("runtimes[0]", "'tflite:cpu'", "onnxruntime"),
                      files({"device.toml": 'runtimes = ["tflite:cpu"]\n'})), id="target-unknown-runtime"),
    pytest.param(Case(("targets", "check", "device.toml"), ("cannot reach 127.0.0.1", "sshd listening"),
                      ssh_profile()), id="target-unreachable"),
    pytest.param(Case((*BENCH, "device.toml"), ("cannot reach 127.0.0.1", "sshd listening"), ssh_profile(),
                      kind="report"), id="target-unreachable-bench"),
    pytest.param(Case(("targets", "check", "device.toml"), ("connection.key", "missing_key", "does not exist"),
                      ssh_profile(key="missing_key")), id="target-key-file-missing"),
    pytest.param(Case((*BENCH, "device.toml"), ("missing_key", "does not exist"), ssh_profile(key="missing_key"),
                      kind="report"), id="target-key-file-missing-bench"),
    pytest.param(Case(("targets", "check", "device.toml", "--trust-new-host"), ("host key of 127.0.0.1", "CHANGED",
                                                                               "ssh-keygen -R"),
                      sshd_profile("changed"), new=("other", "other.pub")),
                 id="target-wrong-host-key", marks=pytest.mark.ssh),
    pytest.param(Case(("targets", "check", "device.toml"), ("is not in known_hosts", "--trust-new-host"),
                      sshd_profile("empty")), id="target-unknown-host-key", marks=pytest.mark.ssh),
    pytest.param(Case(("targets", "show", "nowhere"), ("unknown target 'nowhere'",), code=2), id="target-show-unknown"),
]


# -- predict inputs -----------------------------------------------------------------------------------------


def limit_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's bomb check: errors above twice this


PREDICTS = [
    pytest.param(Case(("predict", "{bundle}", "missing.png"), ("image not found: missing.png", "check the path")),
                 id="predict-missing-image"),
    pytest.param(Case(("predict", "{bundle}", "notes.txt"), ("cannot read image notes.txt", "valid PNG/JPEG"),
                      files({"notes.txt": "a shopping list\n"})), id="predict-text-file-as-image"),
    pytest.param(Case(("predict", "{bundle}", "red.png", "broken.png"), ("broken.png", "valid PNG/JPEG"),
                      files({"red.png": png(), "broken.png": png()[:40]})), id="predict-corrupt-image"),
    pytest.param(Case(("predict", "{bundle}", "photos"), ("photos is a folder", "photos/*.jpg"),
                      lambda env: (env.work / "photos").mkdir()), id="predict-folder"),
    pytest.param(Case(("predict", "{bundle}", "empty.png"), ("cannot read image empty.png", "valid PNG/JPEG"),
                      files({"empty.png": b""})), id="predict-empty-file"),
    pytest.param(Case(("predict", "{bundle}", "a photo of a red car"), ("image not found: a photo of a red car",)),
                 id="predict-wrong-modality-text"),
    pytest.param(Case(("predict", "{words}", "my card was stolen", "photo.jpg"),
                      ("photo.jpg is an image file, but this model classifies texts", "pass the texts"),
                      files({"photo.jpg": jpeg()})), id="predict-wrong-modality-image"),
    pytest.param(Case(("predict", "{bundle}", "huge.png"), ("huge.png", "decompression-bomb limit",
                                                            "MAX_IMAGE_PIXELS"),
                      files({"huge.png": png(size=(60, 60))}), patch=limit_pixels), id="predict-over-pixel-limit"),
]


# -- CLI arguments --------------------------------------------------------------------------------------------

CLI = [
    pytest.param(Case(("run", "--bogus"), ("--bogus",), kind="usage"), id="cli-unknown-option"),
    pytest.param(Case(("frobnicate",), ("frobnicate",), kind="usage"), id="cli-unknown-command"),
    pytest.param(Case(("predict",), ("Missing argument", "bundle"), kind="usage"), id="cli-missing-argument"),
    pytest.param(Case(("predict", "{bundle}", "red.png", "--top-k", "many"), ("--top-k", "valid integer"), SAMPLE,
                      kind="usage"), id="cli-option-not-a-number"),
    pytest.param(Case(("run", "--set", "finetune.lr"), ("override 'finetune.lr' must look like section.key=value",)),
                 id="cli-set-without-equals"),
    pytest.param(Case(("run", "--set", "=3"), ("override '=3' must look like section.key=value",)),
                 id="cli-set-empty-key"),
    pytest.param(Case(("run", "--set", "training.lr=0.1"), ("unknown recipe key training", "known keys here")),
                 id="cli-set-unknown-section"),
    pytest.param(Case(("bench", "recipe.toml", "--target", "local-cpu"),
                      ("cannot read bundle archive recipe.toml", "edgetl ship"), recipe("[run]\n")),
                 id="cli-bench-target-not-a-bundle"),
    pytest.param(Case(("bench", "--target", "local-cpu"), ("--target needs a bundle",)),
                 id="cli-bench-target-no-bundle"),
    pytest.param(Case(("bench", "{bundle}", "-t", "local-cpu", "--json", "results"), ("--json results is a folder",
                                                                                     "results/bench.json"),
                      lambda env: (env.work / "results").mkdir()), id="cli-bench-json-is-a-folder"),
    pytest.param(Case(("bench", "{bundle}", "-t", "local-cpu", "-t", "local-cpu"),
                      ("target names must be unique", "pass each target once")), id="cli-bench-target-twice"),
    pytest.param(Case(("predict", "{bundle}", "red.png", "--top-k", "0"), ("top_k must be at least 1",), SAMPLE),
                 id="cli-top-k-0"),
]

CATALOGUE = RECIPES + DATA + BUNDLES + TARGETS + PREDICTS + CLI


@pytest.fixture(scope="module")
def words(text_files, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture
    """A text bundle (test_bundle's bag-of-words model and tokenizer)."""
    return ship_words(text_files, tmp_path_factory.mktemp("words")).path


def fill(args: tuple[str, ...], env: Env) -> list[str]:
    texts = env.request.getfixturevalue("words") if any("{words}" in arg for arg in args) else None
    return [arg.format(bundle=env.bundle, archive=env.archive, words=texts) for arg in args]


@pytest.mark.parametrize("case", CATALOGUE)
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, env: Env, capsys, monkeypatch):
    if case.setup is not None:
        case.setup(env)
    if case.patch is not None:
        case.patch(monkeypatch)
    before = snapshot(env.work)
    result = run_cli(fill(case.args, env), capsys)
    check_failure(case, result)
    check_files(case, before, snapshot(env.work))
    assert not (Path(tempfile.gettempdir()) / ESCAPE).exists()


SUBPROCESS = ["recipe-val-fraction-over-1", "cli-unknown-option", "predict-corrupt-image", "bundle-tampered",
              "target-unknown-name"]


@pytest.mark.parametrize("case", [p for p in CATALOGUE if p.id in SUBPROCESS])
def test_the_real_process_says_the_same(case: Case, env: Env):
    if case.setup is not None:
        case.setup(env)
    before = snapshot(env.work)
    result = run_process(fill(case.args, env), env.work, {"EDGETL_LOG_DIR": str(env.work.parent / "logs")})
    check_failure(case, result)
    check_files(case, before, snapshot(env.work))


def test_the_catalogue_covers_every_category():
    counts = {prefix: sum(p.id.startswith(prefix) for p in CATALOGUE)
              for prefix in ("recipe-", "data-", "bundle-", "target-", "predict-", "cli-")}
    assert counts["recipe-"] >= 12 and counts["data-"] >= 10 and counts["bundle-"] >= 7
    assert counts["target-"] >= 6 and counts["predict-"] >= 4 and counts["cli-"] >= 4
    assert len({p.id for p in CATALOGUE}) == len(CATALOGUE) >= 45


# -- odd but valid images: they must load, at the right shape and colour --------------------------------------


def png16(rgb: tuple[int, int, int], size=(20, 16)) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), every pixel ``rgb`` (0..65535)."""
    width, height = size
    row = b"\x00" + struct.pack(">HHH", *rgb) * width
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def palette_image() -> Image.Image:
    image = Image.new("P", (30, 20))
    image.putpalette([0, 0, 250] * 256)
    return image


# (file name, its bytes, the RGB every pixel must come out as, within a JPEG's tolerance)
ODD_IMAGES = {
    "grayscale": ("g.png", lambda: save(Image.new("L", (40, 30), 90), "PNG"), (90, 90, 90)),
    "grayscale-alpha": ("la.png", lambda: save(Image.new("LA", (40, 30), (90, 255)), "PNG"), (90, 90, 90)),
    "rgba": ("a.png", lambda: save(Image.new("RGBA", (33, 17), (10, 220, 30, 128)), "PNG"), (10, 220, 30)),
    "gray-16-bit": ("g16.png", lambda: save(Image.fromarray(np.full((24, 24), 0x8000, np.uint16)), "PNG"),
                    (128, 128, 128)),
    "rgb-16-bit": ("rgb16.png", lambda: png16((0xFFFF, 0x1000, 0x8080)), (255, 16, 128)),
    "cmyk-jpeg": ("c.jpg", lambda: save(Image.new("RGB", (48, 40), (200, 30, 30)).convert("CMYK"), "JPEG",
                                        quality=95), (200, 30, 30)),
    "palette": ("p.png", lambda: save(palette_image(), "PNG"), (0, 0, 250)),
    "palette-transparent": ("pt.png", lambda: save(palette_image(), "PNG", transparency=0), (0, 0, 250)),
    "one-bit": ("bw.png", lambda: save(Image.new("1", (30, 30), 1), "PNG"), (255, 255, 255)),
    "uppercase-suffix": ("UPPER.JPG", lambda: jpeg((30, 30, 200), (64, 48)), (30, 30, 200)),
    "huge": ("huge.png", lambda: save(Image.new("RGB", (6000, 4000), (20, 200, 40)), "PNG"), (20, 200, 40)),
}


@pytest.mark.parametrize("kind", sorted(ODD_IMAGES))
def test_odd_but_valid_images_load_with_the_right_shape_and_colour(kind, tmp_path):
    name, make, rgb = ODD_IMAGES[kind]
    path = tmp_path / name
    path.write_bytes(make())
    for channels in (3, 1):
        array = ImagePreprocess(image_size=24, channels=channels).resize_image(path)
        assert array.shape == (24, 24, channels) and array.dtype == np.uint8
        want = rgb if channels == 3 else [round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])]
        np.testing.assert_allclose(array.reshape(-1, channels).mean(axis=0), want, atol=6, err_msg=kind)


def test_an_image_folder_of_mixed_sizes_and_modes_loads(tmp_path):
    from edgetl.data import load_splits
    from edgetl.settings import DataConfig

    kinds = sorted(kind for kind in ODD_IMAGES if kind != "huge")
    for i, kind in enumerate(kinds):
        name, make, _ = ODD_IMAGES[kind]
        path = tmp_path / "imgs" / ("warm" if i % 2 else "cool") / f"{kind}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
    config = DataConfig(source="folder", path=str(tmp_path / "imgs"), val_fraction=0.2, test_fraction=0.2)
    splits = load_splits(config, ImagePreprocess(image_size=24))
    assert splits.classes == ["cool", "warm"]
    assert sum(splits.sizes().values()) == len(kinds)
    for part in (splits.train, splits.val, splits.test):
        assert part.images.shape[1:] == (24, 24, 3) and part.images.dtype == np.uint8 and len(part) >= 2


def test_predict_reads_odd_images_through_the_cli(env: Env, capsys):
    """The colour model's known answers on odd files: CMYK red, RGBA green, palette blue, dark 16-bit gray."""
    env.write("red.jpg", save(Image.new("RGB", (40, 30), (230, 10, 10)).convert("CMYK"), "JPEG", quality=95))
    env.write("green.png", save(Image.new("RGBA", (33, 17), (10, 230, 10, 60)), "PNG"))
    env.write("blue.png", save(palette_image(), "PNG"))
    env.write("dark.png", save(Image.fromarray(np.full((24, 24), 0x0800, np.uint16)), "PNG"))  # 2048/65535: dark
    result = run_cli(["predict", str(env.bundle), "red.jpg", "green.png", "blue.png", "dark.png", "-k", "1"], capsys)
    assert result.code == 0, result.err
    answers = [line.split()[1] for line in result.out.splitlines() if line.strip()]
    assert answers == ["red", "green", "blue", "dark"], result.out


def test_a_manifest_without_artifact_runtimes_still_predicts(env: Env, capsys):
    """Hand-edited or older manifests may lack an artifact's runtime: verify accepts them, so predict runs them on
    their format's CPU default rather than crashing on the missing key."""
    manifest = env.copy_bundle() / "manifest.json"
    data = json.loads(manifest.read_text())
    for entry in data["artifacts"].values():
        del entry["runtime"]
    manifest.write_text(json.dumps(data))
    env.write("red.png", png((230, 10, 10)))
    result = run_cli(["predict", "colours", "red.png"], capsys)
    assert result.code == 0, result.err
    assert result.out.split()[1] == "red", result.out
