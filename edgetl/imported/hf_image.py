"""A Hugging Face image classifier folder (``*ForImageClassification``: ViT, DeiT, BEiT, ConvNeXt, ResNet, RegNet,
MobileNet, EfficientNet, ... whatever transformers' AutoModelForImageClassification loads) as a source model.

Its input is ``pixel_values`` (N, C, H, W); its preprocessing comes from the folder's ``preprocessor_config.json``:
transformers' own image processor class is loaded (so each class's defaults apply where the file omits a setting)
and its resize, crop, rescale and normalisation are mapped onto edgetl's ``ImagePreprocess``, which the SourceModel
carries as its ``preprocess`` metadata. A setting edgetl cannot reproduce exactly is a one-line error, not a guess.

>>> image_preprocess(Path("vit-base-patch16-224")).describe()
'EXIF orientation applied, resize to 224x224 (bilinear), squashed: ..., (pixel/255 - mean [0.5, 0.5, 0.5]) / ...'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import RecipeError
from ..registry import Registry
from .hf import HEADS, Head, _json, classes_metadata, load_pretrained
from .model import ModelInput

PIXELS = "pixel_values"
PROCESSOR_FILE = "preprocessor_config.json"
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL codes edgetl resizes with
_PIL_NAMES = {1: "lanczos", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Geometry:
    """How an image processor makes its square input: ImagePreprocess's image_size, resize and crop_fraction."""

    image_size: int
    resize: str
    crop_fraction: float = 1.0


def _fail(folder: Path, what: str, fix: str) -> RecipeError:
    return RecipeError(f"model.source {folder.name}: its {PROCESSOR_FILE} {what}, which edgetl's preprocessing "
                       f"cannot reproduce; {fix}")


_EDIT = "edit a copy of the folder's preprocessor_config.json"


def _square(size: dict[str, int], folder: Path, key: str) -> int:
    if size.get("height") != size.get("width"):
        raise _fail(folder, f"makes {size.get('height')}x{size.get('width')} ({key}) images", "edgetl feeds square "
                    f"images: export the model at a square size, or {_EDIT} to a square {key}")
    return int(size["height"])


def _standard(processor: Any, folder: Path, shortest: Callable[[int], int] = lambda s: s) -> Geometry:
    """resize (to {"height", "width"}: squashed; to {"shortest_edge": s}: aspect kept), then an optional center
    crop: the ViT, DeiT, BEiT, BiT, CLIP, SigLIP, MobileNet and EfficientNet processors (LeViT: ``shortest``)."""
    size = dict(processor.size)
    crop = dict(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
    crop_side = _square(crop, folder, "crop_size") if crop is not None else None
    if "height" in size and "width" in size:
        side = _square(size, folder, "size")
        if crop_side is not None and crop_side != side:  # DeiT, BEiT: squash to 256, crop 224
            if crop_side > side:
                raise _fail(folder, f"crops {crop_side}x{crop_side} out of a {side}x{side} image (padding)",
                            f"{_EDIT} so that crop_size is at most size")
            return Geometry(crop_side, "squash+center-crop", crop_side / side)
        return Geometry(side, "squash")
    if set(size) == {"shortest_edge"}:
        scaled = shortest(int(size["shortest_edge"]))
        if crop_side is None:
            raise _fail(folder, f"resizes the shorter side to {scaled} and keeps the aspect ratio without a crop",
                        f"edgetl feeds one square size: {_EDIT} to center-crop (do_center_crop true, crop_size)")
        if crop_side > scaled:
            raise _fail(folder, f"crops {crop_side}x{crop_side} out of a {scaled} shorter side (padding)",
                        f"{_EDIT} so that crop_size is at most the shortest_edge")
        return Geometry(crop_side, "shorter-side+center-crop", crop_side / scaled)
    raise _fail(folder, f"resizes to {size}", f"{_EDIT} to a square {{\"height\", \"width\"}} or a shortest_edge")


def _convnext(processor: Any, folder: Path) -> Geometry:
    """ConvNeXt's (and ResNet's, RegNet's): below 384 the shorter side goes to int(size / crop_pct) and the center
    ``size`` square is cut; from 384 up the image is squashed to the square."""
    size = int(processor.size["shortest_edge"])
    if size >= 384:
        return Geometry(size, "squash")
    return Geometry(size, "shorter-side+center-crop", size / int(size / processor.crop_pct))


# transformers' slow image processor classes edgetl maps, by name (a subclass, e.g. ViTFeatureExtractor, answers to
# its base's name); each was checked against the class's own output (tests/test_hf_image.py)
GEOMETRIES: Registry[Callable[[Any, Path], Geometry]] = Registry(
    "image processor", key=f"{PROCESSOR_FILE} image_processor_type")
for _name in ("ViT", "DeiT", "Beit", "Bit", "CLIP", "Siglip", "MobileNetV1", "MobileNetV2", "EfficientNet"):
    GEOMETRIES.register(f"{_name}ImageProcessor", _standard)
GEOMETRIES.register("LevitImageProcessor", lambda p, f: _standard(p, f, shortest=lambda s: int(256 / 224 * s)))
GEOMETRIES.register("ConvNextImageProcessor", _convnext)


def load_processor(folder: Path):
    """transformers' (slow, numpy/PIL) image processor of ``folder``, its class defaults filled in."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(folder), use_fast=False, local_files_only=True)
    except Exception as exc:
        raise RecipeError(f"model.source {folder.name}: transformers cannot read its {PROCESSOR_FILE} "
                          f"({str(exc).splitlines()[0][:160]}); fix the file, or remove it and give --size, --mean "
                          "and --std") from None


def _channels(value: Any, channels: int, folder: Path, key: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * channels
    if len(values) != channels:
        raise RecipeError(f"model.source {folder.name}: {PROCESSOR_FILE} {key} has {len(values)} values for a "
                          f"{channels}-channel model; give one per channel")
    return values


def _normalization(processor: Any, channels: int, folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) in edgetl's units, x = (pixel / 255 - mean) / std, for the processor's rescale and normalise.

    The processor computes r = pixel * f - o (f: rescale_factor, o: EfficientNet's rescale_offset), then
    (r - m) / s when do_normalize, then / s again with EfficientNet's include_top. That is an affine map of
    pixel / 255, so any rescale factor maps exactly: mean = (o + m) / (255 f), std = s (s) / (255 f)."""
    factor = float(processor.rescale_factor) if processor.do_rescale else 1.0
    offset = 1.0 if processor.do_rescale and getattr(processor, "rescale_offset", False) else 0.0
    normalize = processor.do_normalize
    mean = _channels(processor.image_mean, channels, folder, "image_mean") if normalize else [0.0] * channels
    std = _channels(processor.image_std, channels, folder, "image_std") if normalize else [1.0] * channels
    if getattr(processor, "include_top", False):  # EfficientNet: divides by image_std a second time
        std = [s * t for s, t in zip(std, _channels(processor.image_std, channels, folder, "image_std"))]
    if factor <= 0 or min(std) <= 0:
        raise RecipeError(f"model.source {folder.name}: {PROCESSOR_FILE} has rescale_factor {factor} and image_std "
                          f"{std}; both must be positive")
    scale = 255.0 * factor
    return tuple((offset + m) / scale for m in mean), tuple(s / scale for s in std)


def image_preprocess(folder: Path):
    """The ``ImagePreprocess`` that reproduces ``folder``'s image processor (its ``preprocessor_config.json``,
    with its class's defaults): resize and crop, resampling filter, rescale and normalisation."""
    from ..preprocess import ImagePreprocess

    folder = Path(folder)
    processor = load_processor(folder)
    names = [cls.__name__ for cls in type(processor).__mro__]
    kind = next((name for name in names if name in GEOMETRIES), None)
    if kind is None:
        raise RecipeError(f"model.source {folder.name}: edgetl does not map the {names[0]} image processor yet "
                          f"(it maps {', '.join(GEOMETRIES.names())}); give --size, --mean, --std and --resize "
                          f"for it, with {PROCESSOR_FILE} moved out of the folder")
    if not processor.do_resize:
        raise _fail(folder, "does not resize (do_resize false)", f"edgetl feeds one square size: {_EDIT} to "
                    "resize (do_resize true)")
    geometry = GEOMETRIES.get(kind)(processor, folder)
    resample = int(getattr(processor, "resample", 2))
    if resample not in _RESAMPLE:
        raise _fail(folder, f"resizes with PIL filter {resample} ({_PIL_NAMES.get(resample, 'unknown')})",
                    f"edgetl resizes with nearest (0), bilinear (2) or bicubic (3): {_EDIT} to the nearest of those")
    channels = int(_json(folder / "config.json").get("num_channels") or 3)
    mean, std = _normalization(processor, channels, folder)
    return ImagePreprocess(image_size=geometry.image_size, channels=channels, mean=mean, std=std,
                           resample=_RESAMPLE[resample], resize=geometry.resize, crop_fraction=geometry.crop_fraction)


def _config_size(config: dict[str, Any]) -> int | None:
    """config.json's image_size (ViT and others record it), when square."""
    size = config.get("image_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else None


def _read(folder: Path, config: dict[str, Any]):
    """pixel_values at the processor's size (else config.json's image_size, else dynamic), num_labels outputs,
    id2label, and the preprocessing as metadata when the folder has a preprocessor_config.json."""
    channels = int(config.get("num_channels") or 3)
    width, metadata = classes_metadata(config)
    size = _config_size(config)
    if (folder / PROCESSOR_FILE).is_file():
        preprocess = image_preprocess(folder)
        size = preprocess.image_size
        metadata["preprocess"] = json.dumps(preprocess.to_dict())
    return [ModelInput(PIXELS, (None, channels, size, size), "float32")], width, metadata


def _example(folder: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """One batch of two images at the size the run feeds (its preprocess metadata), for the tracer."""
    import torch

    preprocess = json.loads(metadata.get("preprocess") or "{}")
    config = _json(folder / "config.json")
    size = preprocess.get("image_size") or _read(folder, config)[0][0].shape[2] or 224
    channels = preprocess.get("channels") or int(config.get("num_channels") or 3)
    return {PIXELS: torch.zeros(2, channels, size, size)}


def image_classifier(folder: Path):
    """A transformers image classifier, called with pixel_values (N, C, H, W): logits."""
    import torch
    from transformers import AutoModelForImageClassification

    model = load_pretrained(AutoModelForImageClassification, folder)

    class ImageClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return ImageClassifier().eval()


HEADS.register("image-classification", Head(
    "image-classification", "image-classification", r"ForImageClassification(WithTeacher)?$", _read,
    image_classifier, _example, {PIXELS: {0: "batch"}}, what="image classifier"))
