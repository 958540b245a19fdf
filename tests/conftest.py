"""Shared fixtures: tiny models and data, and skips that say why."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.data.dataset import LabeledImages
from edgetl.preprocess import ImagePreprocess


def fashion_mnist_available() -> bool:
    from edgetl.data.sources import find_fashion_mnist
    from edgetl.errors import DataError

    try:
        find_fashion_mnist()
        return True
    except DataError:
        return False


needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Fashion-MNIST IDX files not installed (scripts/get-fashion-mnist.sh)"
)


def pattern_images(n_per_class: int = 20, size: int = 32, classes: int = 3, seed: int = 0) -> LabeledImages:
    """A learnable synthetic set: class k is a bright horizontal band at height k, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for cls in range(classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            band = slice(cls * size // classes, (cls + 1) * size // classes)
            img[band, :, :] = rng.integers(180, 255, dtype=np.uint8)
            images.append(img)
            labels.append(cls)
    return LabeledImages(np.stack(images), np.asarray(labels, dtype=np.int64), [f"class{c}" for c in range(classes)])


@pytest.fixture
def tiny_preprocess() -> ImagePreprocess:
    return ImagePreprocess(image_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def tiny_model():
    import torch

    from edgetl.backbones import create_model

    torch.manual_seed(0)
    return create_model("tiny_convnet", num_classes=3, image_size=32, weights=None).eval()


@pytest.fixture
def tiny_exports(tmp_path, tiny_model):
    """The tiny model exported to ONNX and OpenVINO IR: {runtime: model path}."""
    from edgetl.export import export_onnx, export_openvino

    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model, onnx_path, input_shape=(3, 32, 32))
    xml_path = tmp_path / "ov" / "tiny.xml"
    export_openvino(onnx_path, xml_path)
    return {"onnxruntime:CPUExecutionProvider": onnx_path, "openvino:CPU": xml_path, "torch:cpu": tiny_model}


def fit_briefly(model, preprocess: ImagePreprocess, train: LabeledImages, steps: int = 25):
    """``model`` trained full-batch on ``train`` for ``steps`` Adam steps (lr 2e-2): enough for the pattern
    images' classes; the tests seed torch first."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    inputs, labels = torch.from_numpy(preprocess.normalize(train.images)), torch.from_numpy(train.labels)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model
