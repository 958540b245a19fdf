"""The Runner interface and the shared validation check, parametrized over every backend."""

import numpy as np
import pytest

from conftest import pattern_images
from edgetl.errors import EdgetlError
from edgetl.recipe import GateConfig
from edgetl.runners import open_runner
from edgetl.validate import validate

RUNTIMES = ["torch:cpu", "onnxruntime:CPUExecutionProvider", "openvino:CPU"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("batch", [1, 5])
def test_every_backend_matches_torch(tiny_exports, runtime, batch):
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    reference = open_runner(tiny_exports["torch:cpu"], "torch:cpu").predict(x)
    runner = open_runner(tiny_exports[runtime], runtime, threads=1)
    out = runner.predict(x)
    runner.close()
    assert out.shape == (batch, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("runtime", RUNTIMES[1:])
def test_validation_passes_exports_against_torch_reference(tiny_exports, tiny_preprocess, runtime):
    data = pattern_images(10)
    torch_runner = open_runner(tiny_exports["torch:cpu"], "torch:cpu")
    report = validate(open_runner(tiny_exports[runtime], runtime), data, tiny_preprocess,
                      reference=torch_runner, gate=GateConfig(), artifact="tiny")
    assert report.passed, report.reasons
    assert report.agreement == 1.0 and report.max_abs_logit_diff < 1e-3 and report.samples == 30
    assert report.accuracy == report.reference_accuracy


class _Fixed:
    """A runner that answers fixed logits, batch by batch."""

    def __init__(self, logits):
        self.logits, self.offset, self.name = logits, 0, "fixed"

    def predict(self, batch):
        out = self.logits[self.offset : self.offset + len(batch)]
        self.offset += len(batch)
        return out


def test_metrics_and_gate_verdicts(tiny_preprocess):
    data = pattern_images(4)  # 12 samples, 3 classes
    perfect = np.eye(3, dtype=np.float32)[data.labels] * 5
    wrong = perfect.copy()
    wrong[:3] = np.roll(wrong[:3], 1, axis=1)  # 3 of 12 now wrong
    report = validate(_Fixed(wrong), data, tiny_preprocess, reference=perfect, gate=GateConfig(), batch_size=5)
    assert report.accuracy == 75.0 and report.reference_accuracy == 100.0 and report.agreement == 0.75
    assert report.max_abs_logit_diff == 5.0 and report.mean_kl > 0
    assert not report.passed and len(report.reasons) == 2  # accuracy drop and agreement both fail
    loose = GateConfig(max_accuracy_drop=30, min_agreement=0.7)
    assert validate(_Fixed(wrong), data, tiny_preprocess, reference=perfect, gate=loose).passed


def test_macro_f1_matches_hand_computation(tiny_preprocess):
    data = pattern_images(2)  # labels 0,0,1,1,2,2
    preds = np.array([0, 0, 1, 0, 2, 2])
    report = validate(_Fixed(np.eye(3, dtype=np.float32)[preds]), data, tiny_preprocess)
    # class 0: tp2 fp1 fn0 -> 0.8; class 1: tp1 fn1 -> 0.667; class 2: 1.0
    assert report.macro_f1 == pytest.approx((0.8 + 2 / 3 + 1.0) / 3 * 100, abs=1e-3)


def test_wrong_class_count_is_explained(tiny_preprocess):
    data = pattern_images(2)
    with pytest.raises(EdgetlError, match="trained on this dataset"):
        validate(_Fixed(np.zeros((6, 5), np.float32)), data, tiny_preprocess)


def test_missing_model_file_and_unknown_runtime(tmp_path):
    with pytest.raises(EdgetlError, match="edgetl export"):
        open_runner(tmp_path / "missing.onnx", "onnxruntime:CPUExecutionProvider")
    with pytest.raises(EdgetlError, match="unknown runtime"):
        open_runner(tmp_path, "tensorflow:CPU")


def test_unavailable_device_is_reported_not_faked(tiny_exports):
    with pytest.raises(EdgetlError, match="not available"):
        open_runner(tiny_exports["onnxruntime:CPUExecutionProvider"], "onnxruntime:CUDAExecutionProvider")


def test_export_embeds_metadata(tmp_path, tiny_model):
    import onnx

    from edgetl.export import export_onnx

    info = export_onnx(tiny_model, tmp_path / "m.onnx", input_shape=(3, 32, 32), opset=17, metadata={"labels": ["a"]})
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["labels"] == '["a"]' and info.opset == 17


def test_a_gpu_provider_that_falls_back_to_the_cpu_is_refused(tiny_exports, monkeypatch):
    """onnxruntime only warns when CUDA cannot start and runs on the CPU; a "CUDA" latency measured there would be
    a lie, so the runner (the host's and, shipped as backends.py, the device agent's) refuses it."""
    import onnxruntime

    from edgetl.errors import BackendUnavailable
    from edgetl.runners import backends

    real_session = onnxruntime.InferenceSession

    def falling_back(model, options, providers):  # what a CUDA session without working CUDA libraries does
        assert providers == ["CUDAExecutionProvider"]
        return real_session(model, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(backends, "cuda_device_present", lambda: True)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(onnxruntime, "InferenceSession", falling_back)
    refused = "not available: CUDAExecutionProvider requested but onnxruntime fell back to CPUExecutionProvider"
    with pytest.raises(BackendUnavailable, match=refused + ": install onnxruntime-gpu") as caught:
        open_runner(tiny_exports["onnxruntime:CPUExecutionProvider"], "onnxruntime:CUDAExecutionProvider")
    assert "\n" not in str(caught.value)


def test_runtimes_registry_names_the_backends():
    from edgetl.runners import RUNTIMES, OrtRunner

    assert RUNTIMES.names() == ["onnxruntime", "openvino", "torch"] and RUNTIMES.get("onnxruntime") is OrtRunner
    with pytest.raises(EdgetlError, match=r"targets.runtimes: unknown runtime 'tensorflow'.*onnxruntime, openvino"):
        RUNTIMES.get("tensorflow", key="targets.runtimes")


def test_embeddings_are_held_to_cosine_and_nearest_neighbour_agreement():
    from edgetl.data import LabeledTexts
    from edgetl.settings import GateConfig
    from edgetl.validate import validate

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 16)).astype(np.float32)
    data = LabeledTexts([f"t{i}" for i in range(40)], np.full(40, -1, dtype=np.int64), [])
    close = reference + 0.001 * rng.standard_normal(reference.shape).astype(np.float32)
    report = validate(None, data, None, logits=close, reference=reference, gate=GateConfig(), output="embedding")
    assert report.passed and report.accuracy is None and report.agreement == 1.0 and report.min_cosine > 0.99
    shuffled = reference[rng.permutation(40)]
    bad = validate(None, data, None, logits=shuffled, reference=reference, gate=GateConfig(), output="embedding")
    assert not bad.passed and bad.min_cosine < 0.5 and bad.agreement < 0.5
    assert any("cosine similarity" in r for r in bad.reasons) and any("nearest-neighbour" in r for r in bad.reasons)
