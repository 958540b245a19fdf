"""Quantizers: every registered method makes a loadable artifact that agrees with FP32; bad input fails clearly."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.data.dataset import Splits
from edgetl.preprocess import ImagePreprocess
from edgetl.errors import CalibrationError, QuantizationError, QuantizationSkipped
from edgetl.quantize import QUANTIZERS, ValidationSet, calibration_images, quantize_file
from edgetl.recipe import QuantizeConfig
from edgetl.runners import open_runner

from conftest import pattern_images

PREPROCESS = ImagePreprocess(image_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CONFIG = QuantizeConfig(calibration_size=48, min_calibration_size=8, validation_size=60)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CNN trained for a few seconds on the band patterns (a random-weight model answers one class
    whatever the input, which would make any quantizer look perfect), exported to ONNX and IR."""
    import torch

    from edgetl.backbones import create_model
    from edgetl.export import export_onnx, export_openvino

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only contend
    torch.manual_seed(0)
    train, test = pattern_images(40, seed=1), pattern_images(20, seed=2)
    model = create_model("tiny_convnet", num_classes=3, image_size=32, weights=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    inputs, labels = torch.from_numpy(PREPROCESS.normalize(train.images)), torch.from_numpy(train.labels)
    model.train()
    for _ in range(25):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    model.eval()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("fp32")
    meta = {"labels": train.classes, "producer": "edgetl-test"}
    export_onnx(model, folder / "model.onnx", input_shape=(3, 32, 32), metadata=meta)
    export_openvino(folder / "model.onnx", folder / "ov" / "model.xml", metadata=meta)
    with torch.no_grad():
        reference = model(torch.from_numpy(PREPROCESS.normalize(test.images))).numpy()
    assert (reference.argmax(1) == test.labels).mean() > 0.9, "the fixture model did not learn the patterns"
    return {"model": model, "train": train, "test": test, "reference": reference,
            "onnx": folder / "model.onnx", "openvino": folder / "ov" / "model.xml"}


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_quantizer_makes_a_runnable_artifact_that_agrees(method, trained, tmp_path):
    quantizer = QUANTIZERS.get(method)
    calibration = calibration_images(trained["train"], PREPROCESS, CONFIG.calibration_size)
    info = quantize_file(trained[quantizer.source], method, tmp_path, calibration=calibration,
                         validation=ValidationSet(trained["test"], PREPROCESS), config=CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(info.files), "stray or missing files"
    assert info.format == quantizer.format and info.method == method
    assert info.metadata.get("producer") == "edgetl-test", "labels/preprocessing metadata not carried over"
    runner = open_runner(tmp_path / quantizer.file, quantizer.runtime, threads=1)
    logits = runner.predict(PREPROCESS.normalize(trained["test"].images))
    assert logits.shape == trained["reference"].shape and logits.dtype == np.float32
    agreement = (logits.argmax(1) == trained["reference"].argmax(1)).mean()
    assert agreement >= 0.95, f"{method}: top-1 agreement with FP32 only {agreement:.2%}"
    if "int8" in method:  # really quantized: weights stored in 8 bits
        assert _int8_weights(tmp_path / quantizer.file), f"{method}: no INT8 weights in the artifact"
    if method == "openvino-int8-acc":  # held to the gate's own measure: agreement with the FP32 model
        assert info.settings["metric"] == "agreement with FP32"
        assert info.settings["max_drop"] == pytest.approx(1 - CONFIG.min_agreement)
    if method == "onnx-int8-static-acc":
        assert info.settings["agreement"] >= CONFIG.min_agreement and info.settings["validation_samples"] == 60


def test_accuracy_aware_static_int8_keeps_the_costly_layers_in_fp32(trained, tmp_path):
    """Calibrated on inputs 20x too dim, every activation range is too narrow and all-INT8 clips: the search must
    put layers back in FP32 until the validation samples agree with FP32 as the config asks, and say which."""
    calibration = calibration_images(trained["train"], PREPROCESS, CONFIG.calibration_size) * 0.05
    config = QuantizeConfig(**{**CONFIG.__dict__, "min_agreement": 1.0, "max_accuracy_drop": 0.0})
    validation = ValidationSet(trained["test"], PREPROCESS)
    info = quantize_file(trained["onnx"], "onnx-int8-static-acc", tmp_path, calibration=calibration,
                         validation=validation, config=config)
    settings = info.settings
    assert settings["all_int8_agreement"] < 1.0, "the dim calibration should have broken all-INT8"
    assert settings["fp32_layers"] and settings["agreement"] == 1.0 and settings["accuracy_drop"] <= 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], "search files left behind"
    worth = settings["latency_vs_fp32_batch1"]  # is INT8 worth it here: paired rounds against the FP32 source
    assert worth["rounds"] == 20 and 0 < worth["low"] <= worth["ratio"] <= worth["high"]
    assert any("the FP32 model's latency" in note for note in info.notes)
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    kept = {n.name for n in graph.node}
    assert set(settings["fp32_layers"]) <= kept, "the reverted layers should still be there, unquantized"
    logits = open_runner(tmp_path / "model.onnx", "onnxruntime:CPUExecutionProvider").predict(
        PREPROCESS.normalize(trained["test"].images))
    assert (logits.argmax(1) == trained["reference"].argmax(1)).all()
    assert _int8_weights(tmp_path / "model.onnx"), "nothing left in INT8: the search should revert the fewest layers"


def test_relative_paths_work_from_any_directory(trained, tmp_path, monkeypatch):
    """The pipeline passes paths relative to the working directory (runs/...); quantizers run elsewhere."""
    import shutil

    shutil.copy(trained["onnx"], tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    info = quantize_file("model.onnx", "onnx-int8-dynamic", "out", config=CONFIG)
    assert (tmp_path / "out" / info.files[0]).is_file()


def _int8_weights(path) -> bool:
    if path.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(path)).graph
        return any(init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for init in graph.initializer)
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return any(op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i8", "u8")
               for op in model.get_ops())


def test_static_int8_options_all_produce_models(trained, tmp_path):
    """QOperator, U8U8, per-tensor, entropy calibration, no pre-processing: each a valid, agreeing model."""
    calibration = calibration_images(trained["train"], PREPROCESS, 45)  # 45: no batch of 8 divides it
    for i, overrides in enumerate([dict(onnx_format="qoperator", onnx_types="u8u8", per_channel=False),
                                   dict(calibration_method="entropy", onnx_preprocess=False),
                                   dict(calibration_method="percentile", onnx_types="s8s8")]):
        config = QuantizeConfig(**{**CONFIG.__dict__, **overrides})
        info = quantize_file(trained["onnx"], "onnx-int8-static", tmp_path / str(i), calibration=calibration,
                             config=config)
        assert info.settings["format"] == config.onnx_format and info.settings["types"] == config.onnx_types
        logits = open_runner(tmp_path / str(i) / "model.onnx", "onnxruntime:CPUExecutionProvider").predict(
            PREPROCESS.normalize(trained["test"].images))
        assert (logits.argmax(1) == trained["reference"].argmax(1)).mean() >= 0.95, overrides


# -- bad input -----------------------------------------------------------------------------------


def test_empty_calibration_set_is_a_clear_error(trained, tmp_path):
    with pytest.raises(CalibrationError, match="calibration set is empty"):
        quantize_file(trained["onnx"], "onnx-int8-static", tmp_path, calibration=np.zeros((0, 3, 32, 32), np.float32),
                      config=CONFIG)
    with pytest.raises(CalibrationError, match="calibration set is empty"):
        quantize_file(trained["openvino"], "openvino-int8", tmp_path, calibration=None, config=CONFIG)


def test_too_small_calibration_set_names_the_minimum(trained, tmp_path):
    calibration = calibration_images(trained["train"], PREPROCESS, 3)
    with pytest.raises(CalibrationError, match=r"has 3 image\(s\), fewer than the 8 required"):
        quantize_file(trained["onnx"], "onnx-int8-static", tmp_path, calibration=calibration, config=CONFIG)


def test_wrong_shape_calibration_set_names_both_shapes(trained, tmp_path):
    wrong = ImagePreprocess(image_size=28, channels=3).normalize(np.zeros((10, 28, 28, 3), np.uint8))
    with pytest.raises(CalibrationError, match=r"shape \(10, 3, 28, 28\) but model.xml expects \(N, 3, 32, 32\)"):
        quantize_file(trained["openvino"], "openvino-int8", tmp_path, calibration=wrong, config=CONFIG)
    with pytest.raises(CalibrationError, match="uint8"):
        quantize_file(trained["onnx"], "onnx-int8-static", tmp_path, calibration=trained["train"].images,
                      config=CONFIG)


@pytest.mark.parametrize("method, source", [("onnx-int8-dynamic", "model.onnx"), ("openvino-fp16", "model.xml")])
def test_a_source_without_metadata_gets_a_note_not_silence(method, source, trained, tmp_path):
    from edgetl.export import export_onnx, export_openvino

    export_onnx(trained["model"], tmp_path / "model.onnx", input_shape=(3, 32, 32))
    export_openvino(tmp_path / "model.onnx", tmp_path / "model.xml")
    info = quantize_file(tmp_path / source, method, tmp_path / "out", config=CONFIG)
    assert info.metadata == {} and any("has no" in note and "metadata" in note for note in info.notes), info.notes


def test_failed_pre_processing_falls_back_to_the_raw_graph_and_says_so(trained, tmp_path, monkeypatch):
    import dataclasses

    import onnxruntime.quantization as ortq

    def broken(*args, **kwargs):
        raise RuntimeError("symbolic shape inference failed")

    monkeypatch.setattr(ortq, "quant_pre_process", broken)
    info = quantize_file(trained["onnx"], "onnx-int8-dynamic", tmp_path,
                         config=dataclasses.replace(CONFIG, onnx_preprocess=True))
    assert info.settings["preprocessed"] is False
    assert any("quant_pre_process failed (symbolic shape inference failed; without symbolic shapes: symbolic shape "
               "inference failed)" in note for note in info.notes), info.notes


def test_pre_processing_retries_without_symbolic_shapes(trained, tmp_path, monkeypatch):
    import dataclasses

    import onnxruntime.quantization as ortq

    real = ortq.quant_pre_process

    def symbolic_fails(source, target, skip_symbolic_shape=False, **kwargs):
        if not skip_symbolic_shape:
            raise RuntimeError("Incomplete symbolic shape inference")
        return real(source, target, skip_symbolic_shape=True, **kwargs)

    monkeypatch.setattr(ortq, "quant_pre_process", symbolic_fails)
    info = quantize_file(trained["onnx"], "onnx-int8-dynamic", tmp_path,
                         config=dataclasses.replace(CONFIG, onnx_preprocess=True))
    assert info.settings["preprocessed"] is True
    assert any("symbolic shape inference failed (Incomplete symbolic shape inference)" in n for n in info.notes)


def test_failure_keeps_what_was_already_written(trained, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"earlier result")
    with pytest.raises(CalibrationError):
        quantize_file(trained["onnx"], "onnx-int8-static", tmp_path, calibration=None, config=CONFIG)
    assert (tmp_path / "model.onnx").read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "temporary files left behind"


def test_unsupported_operator_is_named_and_skipped(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FancyActivation", ["input"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3, 32, 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    calibration = np.zeros((16, 3, 32, 32), np.float32)
    for method in ("onnx-int8-static", "onnx-int8-dynamic", "openvino-int8"):
        with pytest.raises(QuantizationSkipped, match="FancyActivation") as caught:
            quantize_file(tmp_path / "custom.onnx", method, tmp_path / method, calibration=calibration, config=CONFIG)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("exc, skipped", [
    (NotImplementedError("no INT8 kernel"), True),
    (RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for ConvInteger"), True),
    (ValueError("operator Erf is not supported in this mode"), True),
    (RuntimeError("node FancyActivation has no quantization rule"), True),  # names one of the graph's operators
    (RuntimeError("worker process died unexpectedly"), False),
    (ValueError("shape mismatch in calibration histogram"), False),
])
def test_only_deterministic_inabilities_become_skipped(exc, skipped):
    from edgetl.quantize.core import failure_from

    failure = failure_from(exc, "onnx-int8-static", {"Conv", "FancyActivation"}, "onnxruntime")
    assert isinstance(failure, QuantizationSkipped) is skipped and "\n" not in str(failure)
    if not skipped:
        assert isinstance(failure, QuantizationError) and "rerunning retries it" in str(failure)


@pytest.mark.parametrize("exc", [MemoryError(), OSError(28, "No space left on device")])
def test_memory_and_disk_errors_pass_through(exc):
    from edgetl.quantize.core import failure_from

    assert failure_from(exc, "openvino-int8", set(), "NNCF") is exc


def test_transient_backend_failure_is_an_error_not_a_skip(trained, tmp_path, monkeypatch):
    import onnxruntime.quantization as ortq

    def killed(*args, **kwargs):
        raise RuntimeError("calibration worker was killed")

    monkeypatch.setattr(ortq, "quantize_static", killed)
    (tmp_path / "model.onnx").write_bytes(b"earlier result")
    calibration = calibration_images(trained["train"], PREPROCESS, 16)
    with pytest.raises(QuantizationError, match="calibration worker was killed.*rerunning retries it") as caught:
        quantize_file(trained["onnx"], "onnx-int8-static", tmp_path, calibration=calibration, config=CONFIG)
    assert not isinstance(caught.value, QuantizationSkipped)
    assert (tmp_path / "model.onnx").read_bytes() == b"earlier result"


def test_unknown_method_and_wrong_source_format(trained, tmp_path):
    with pytest.raises(QuantizationError, match="unknown quantization method 'int4'"):
        quantize_file(trained["onnx"], "int4", tmp_path)
    with pytest.raises(QuantizationError, match="quantizes an ONNX file"):
        quantize_file(trained["openvino"], "onnx-int8-dynamic", tmp_path, config=CONFIG)


def test_accuracy_aware_needs_validation_images(trained, tmp_path):
    calibration = calibration_images(trained["train"], PREPROCESS, 16)
    with pytest.raises(QuantizationError, match="needs labelled validation images"):
        quantize_file(trained["openvino"], "openvino-int8-acc", tmp_path, calibration=calibration, config=CONFIG)


def test_every_quantizer_declares_what_it_needs():
    for name, quantizer in QUANTIZERS.items():
        assert quantizer.name == name
        assert quantizer.source in ("onnx", "openvino") and quantizer.format in ("onnx", "openvino")
        # activations quantized from ranges seen in calibration; dynamic and weights-only methods need none
        assert quantizer.needs_calibration == ("int8" in name and "dynamic" not in name and "weights" not in name)
    assert set(QUANTIZERS) >= set(QuantizeConfig().methods)


@pytest.mark.slow  # NNCF compiles a C++ extension on its first torch use (minutes on a loaded 2-core machine)
def test_qat_finetune_writes_an_int8_ir_that_agrees(trained, tmp_path):
    from edgetl.quantize import qat_finetune

    splits = Splits(trained["train"], trained["test"], trained["test"])
    config = QuantizeConfig(calibration_size=32, min_calibration_size=8, qat_epochs=1)
    info = qat_finetune(trained["model"], splits, PREPROCESS, config, tmp_path, metadata={"producer": "edgetl-test"},
                        log=lambda _: None)
    assert info.method == "openvino-int8-qat" and sorted(info.files) == ["model.bin", "model.xml"]
    assert len(info.settings["val_per_epoch"]) == 2  # after PTQ, after the epoch
    logits = open_runner(tmp_path / "model.xml", "openvino:CPU").predict(PREPROCESS.normalize(trained["test"].images))
    assert (logits.argmax(1) == trained["reference"].argmax(1)).mean() >= 0.95
    assert _int8_weights(tmp_path / "model.xml")


def test_calibration_images_fill_the_requested_size_when_classes_are_uneven():
    data = pattern_images(10, classes=3)
    uneven = data.subset(np.concatenate([np.arange(0, 10), np.arange(10, 12), np.arange(20, 21)]))  # 10 / 2 / 1
    images = calibration_images(uneven, PREPROCESS, 9)
    assert images.shape == (9, 3, 32, 32) and images.dtype == np.float32
    assert calibration_images(uneven, PREPROCESS, 100).shape[0] == len(uneven)


@pytest.mark.parametrize("flags, overrides, expected", [
    (["avx2"], {}, True),  # x86 without VNNI: u8s8 kernels saturate int16 pair sums
    (["avx2", "avx512f", "avx512_vnni"], {}, False),
    (["avx2"], {"reduce_range": True}, False),  # 7-bit weights cannot saturate
    (["avx2"], {"onnx_types": "u8u8"}, False),
])
def test_static_int8_says_when_this_cpu_may_saturate(monkeypatch, flags, overrides, expected):
    import importlib
    import platform

    from edgetl.quantize import _ort

    environment = importlib.import_module("edgetl.bench.environment")  # edgetl.bench.environment is also a function
    monkeypatch.setattr(environment, "cpu_flags", lambda: flags)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    notes = _ort._saturation_notes(QuantizeConfig(**overrides))
    assert bool(notes) == expected and all("VNNI" in note for note in notes)
