import numpy as np
import pytest
import torch

from edgetl.backbones import (
    BackboneSpec, _same_pad, create_model, get_spec, list_backbones, load_weights, register_backbone,
)
from edgetl.errors import RecipeError, WeightsError


@pytest.fixture(scope="module")
def lite0_imagenet():
    return create_model("efficientnet_lite0", num_classes=1000).eval()


@pytest.mark.parametrize(("photo", "imagenet_class"), [("chelsea", 285), ("coffee", 967)])
def test_lite0_package_weights_are_genuine_imagenet(lite0_imagenet, photo, imagenet_class):
    from skimage import data

    preprocess = get_spec("efficientnet_lite0").preprocess()
    batch = torch.from_numpy(preprocess([getattr(data, photo)()]))
    with torch.no_grad():
        probs = lite0_imagenet(batch).softmax(-1)[0]
    assert int(probs.argmax()) == imagenet_class  # 285 "Egyptian cat", 967 "espresso"
    assert float(probs[imagenet_class]) > 0.5


def test_lite0_has_the_published_size(lite0_imagenet):
    assert sum(p.numel() for p in lite0_imagenet.parameters()) == 4_652_008
    assert sum(v.numel() for v in lite0_imagenet.state_dict().values()) == 4_694_073


def test_new_head_for_other_class_counts_keeps_backbone_weights(lite0_imagenet):
    model = create_model("efficientnet_lite0", num_classes=10, image_size=64)
    assert model._fc.out_features == 10
    assert torch.equal(model._conv_stem.weight, lite0_imagenet._conv_stem.weight)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_local_safetensors_file_gives_same_model(tmp_path, lite0_imagenet):
    from safetensors.torch import save_file

    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0_imagenet.state_dict().items()}, str(path))
    model = create_model("efficientnet_lite0", num_classes=1000, weights=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), lite0_imagenet(x))


def test_mismatched_weights_name_the_keys(tmp_path, lite0_imagenet):
    state = dict(lite0_imagenet.state_dict())
    del state["_blocks.3._bn1.weight"]
    state["_conv_head.weight"] = torch.zeros(7, 320, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"_blocks\.3\._bn1\.weight.*_conv_head\.weight \(7, 320, 1, 1\)"):
        create_model("efficientnet_lite0", num_classes=10, weights=path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_model("efficientnet_lite0", num_classes=10, weights=tmp_path / "nope.pth")


def test_unreachable_hub_says_use_package(monkeypatch):
    spec = get_spec("efficientnet_lite0")
    offline = BackboneSpec(**{**spec.__dict__, "hub_url": "http://127.0.0.1:9/lite0.pth"})
    with pytest.raises(WeightsError, match="offline"):
        load_weights(offline, "hub")


def test_registry_refuses_duplicates_and_unknown_names():
    assert {"efficientnet_lite0", "tiny_convnet"} <= {s.name for s in list_backbones()}
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneSpec("tiny_convnet", 32, (0.5,), (0.5,)))(lambda **kw: None)
    with pytest.raises(RecipeError, match="efficientnet_lite0"):
        get_spec("resnet9000")


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "out"),
    [(224, 3, 2, (0, 1, 0, 1), 112), (112, 5, 2, (1, 2, 1, 2), 56), (7, 3, 2, (1, 1, 1, 1), 4), (14, 5, 1, (2, 2, 2, 2), 14)],
)
def test_tensorflow_same_padding(size, kernel, stride, pad, out):
    assert _same_pad(size, kernel, stride) == (pad, out)


def test_unfreeze_groups_cover_every_parameter_once():
    model = create_model("efficientnet_lite0", num_classes=10, image_size=64, weights=None)
    grouped = [p for group in model.unfreeze_groups() for m in group for p in m.parameters()]
    head = list(model.head().parameters())
    assert len({id(p) for p in grouped + head}) == len(list(model.parameters())) == len(grouped) + len(head)
    assert all(group for group in model.unfreeze_groups())


def test_slim_student_takes_the_package_weights_of_the_blocks_it_keeps(lite0_imagenet):
    slim = create_model("efficientnet_lite0_slim", num_classes=1000).eval()
    assert len(slim._blocks) == 7 and slim.block_sources == [0, 1, 3, 5, 8, 11, 15]
    for index, source in enumerate(slim.block_sources):
        kept, original = slim._blocks[index], lite0_imagenet._blocks[source]
        assert torch.equal(kept._depthwise_conv.weight, original._depthwise_conv.weight)
        assert torch.equal(kept._bn2.running_var, original._bn2.running_var)
    assert torch.equal(slim._conv_head.weight, lite0_imagenet._conv_head.weight)
    assert torch.equal(slim._fc.weight, lite0_imagenet._fc.weight)
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(p.numel() for p in lite0_imagenet.parameters())


def test_slim_student_round_trips_its_own_state_dict_and_exports_to_onnx(tmp_path):
    import onnxruntime as ort
    from safetensors.torch import save_file

    from edgetl.export import export_onnx

    torch.manual_seed(0)
    slim = create_model("efficientnet_lite0_slim", num_classes=10, image_size=64).eval()
    path = tmp_path / "slim.safetensors"
    save_file({k: v.contiguous() for k, v in slim.state_dict().items()}, str(path))
    again = create_model("efficientnet_lite0_slim", num_classes=10, image_size=64, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = slim(x)
        assert torch.equal(again.forward_features(x), slim.forward_features(x))  # a 10-class head is never loaded
    export_onnx(slim, tmp_path / "slim.onnx", input_shape=(3, 64, 64))
    session = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
