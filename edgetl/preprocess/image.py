"""Image preprocessing, defined once and saved with every bundle.

Only numpy and Pillow: the bundle's ``predict`` path uses this module without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError
from ..registry import Registry

_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values
# Files read as images (image-folder datasets); a text bundle refuses them as texts.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# What a preprocess.json without a "resize" key (bundles and checkpoints from before the policy was recorded) used.
LEGACY_RESIZE = "squash"
CROPPING = ("shorter-side+center-crop", "squash+center-crop")  # the policies crop_fraction applies to
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImagePreprocess:
    """How a raw image becomes a model input: resize, channels, scale, normalise, NCHW float32.

    ``mean`` and ``std`` are in [0, 1] pixel units: ``x = (pixel / 255 - mean) / std``.
    """

    image_size: int
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resample: str = "bilinear"
    layout: str = "NCHW"
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)
    # How an image of any shape becomes the square: a name in RESIZE_POLICIES. crop_fraction < 1 (only with a
    # policy that crops, CROPPING) scales the shorter side (or the squashed square) to round(image_size /
    # crop_fraction) before the center crop.
    resize: str = "shorter-side+center-crop"
    crop_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise DataError(f"image_size must be positive, got {self.image_size}")
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")
        if self.resample not in _RESAMPLE:
            raise DataError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if not isinstance(self.resize, str) or self.resize not in RESIZE_POLICIES:
            raise DataError(RESIZE_POLICIES.unknown(self.resize))
        fraction = self.crop_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise DataError(f"crop_fraction must be > 0 and <= 1, got {fraction!r}; 1.0 keeps the whole shorter side, "
                            "0.875 is torchvision's ImageNet evaluation crop (resize 256, crop 224)")
        if fraction != 1 and self.resize not in CROPPING:
            raise DataError(f"crop_fraction {fraction} only applies to resize {' or '.join(map(repr, CROPPING))}, "
                            f"not {self.resize!r}; set crop_fraction to 1.0 or resize to 'shorter-side+center-crop'")

    # -- stage 1: any image -> uint8 HWC at the model's size ---------------------------
    def resize_image(self, image: Any) -> np.ndarray:
        """PIL image, path, or uint8 array (HW or HWC) -> uint8 array (size, size, channels): turned upright by its
        EXIF orientation, 16-bit scaled to 8, converted to RGB or grayscale, then made square by ``resize``."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            array = image
            if array.dtype != np.uint8:
                raise DataError(f"image arrays must be uint8, got {array.dtype}")
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            image = Image.fromarray(array)
        elif isinstance(image, Image.Image):
            image = upright(image)
        else:
            image = _open_image(image)
        image = _to_8_bit(image).convert("RGB" if self.channels == 3 else "L")
        image = RESIZE_POLICIES.get(self.resize, error=DataError).fit(image, self)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    @property
    def scaled_size(self) -> int:
        """The shorter side before the center crop: round(image_size / crop_fraction) (256 for 224 at 0.875)."""
        return round(self.image_size / self.crop_fraction)

    @property
    def fill_pixel(self) -> tuple[int, ...]:
        """The letterbox padding, round(mean * 255) per channel: it normalises to (about) 0."""
        values = [min(255, max(0, round(float(m) * 255))) for m in self.mean]
        if self.channels == 1:
            return (round(sum(values) / len(values)),)
        return tuple(values) if len(values) == 3 else (values[0],) * 3

    # -- stage 2: uint8 NHWC batch -> normalised float32 NCHW --------------------------
    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 batch (N, H, W, C) -> float32 (N, C, H, W), scaled and normalised."""
        batch = np.asarray(batch)  # an edgetl.data.ImageFiles view decodes here
        if batch.ndim != 4:
            raise DataError(f"expected a batch of shape (N, H, W, C), got {batch.shape}")
        if batch.shape[-1] == 1 and self.channels == 3:
            batch = np.repeat(batch, 3, axis=-1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 1, 1, -1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 1, 1, -1)
        out = (batch.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """Images (paths, PIL images or uint8 arrays) -> model-ready float32 batch."""
        return self.normalize(np.stack([self.resize_image(image) for image in images]))

    # -- the preprocessing protocol (see edgetl.preprocess) -------------------------------------
    kind = "image"

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        return self(images)

    def inputs(self, data, rows: np.ndarray) -> np.ndarray:
        """The normalised batch for ``rows`` of a LabeledImages (already at the model's size)."""
        return self.normalize(data.images[rows])

    def batch_order(self, data) -> np.ndarray:
        return np.arange(len(data))

    def describe(self) -> str:
        return (f"EXIF orientation applied, {self.resize_words()}, {self.channels} channel(s), "
                f"(pixel/255 - mean {list(self.mean)}) / std {list(self.std)}, {self.layout} {self.dtype}")

    def resize_words(self, times: str = "x") -> str:
        """The resize policy in words, e.g. "resize the shorter side to 256 (bilinear), center-crop 224x224"."""
        return RESIZE_POLICIES.get(self.resize, error=DataError).words(self, times)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    # -- what a bundle needs from its preprocessing (see edgetl.bundle) --------------------------
    def required_files(self) -> list[str]:
        """Files the bundle must hold beside preprocess.json: none for images."""
        return []

    def example_inputs(self, count: int) -> np.ndarray:
        """``count`` rows of model input for a smoke test: seeded random normalised pixels."""
        return np.random.default_rng(0).standard_normal((count, *self.input_shape)).astype(np.float32)

    def input_problem(self, inputs: Any) -> str | None:
        """Why preprocessed ``inputs`` do not fit this model, or None when they do."""
        if isinstance(inputs, dict) or tuple(np.shape(inputs)[1:]) != self.input_shape:
            shape = f"named arrays {sorted(inputs)}" if isinstance(inputs, dict) else f"shape {np.shape(inputs)[1:]}"
            return f"inputs have {shape}, the model takes {self.input_shape}"
        return None

    def manifest_fields(self) -> dict[str, Any]:
        """What manifest.json says about the model input."""
        return {"input_shape": list(self.input_shape)}

    def card_fields(self) -> dict[str, str]:
        """The model card's input wording (keys listed in edgetl.bundle.card)."""
        size = self.image_size
        return {
            "task": "image classification",
            "description": "Image classifier shipped by edgetl.",
            "samples": "images",
            "input": f"{self.dtype} {self.layout} (N, {self.channels}, {size}, {size})",
            "steps": (f"{'RGB' if self.channels == 3 else 'grayscale'}, turned upright by its EXIF orientation, "
                      f"{self.resize_words('×')}, "
                      f"x = (pixel / 255 − mean) / std, mean {list(self.mean)}, std {list(self.std)}"),
            "example": "photo.jpg",
            "example_code": repr("photo.jpg"),
            "needs": "numpy, Pillow and onnxruntime or OpenVINO",
            "not_needed": "no torch",
            "unlike": "images unlike it",
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["kind"] = self.kind
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Any = None) -> "ImagePreprocess":
        """``root`` is unused: an image preprocess needs no files (it is there for the shared protocol). Without a
        "resize" key (saved before the policy was recorded) the images were squashed: ``LEGACY_RESIZE``."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("resize", LEGACY_RESIZE)
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


def _to_8_bit(image):
    """16-bit grayscale (PNG, TIFF: modes I;16*, or I holding values above 255) scaled to 8 bits; Pillow's own
    conversion clips instead, turning almost every 16-bit image white."""
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    array = np.asarray(image).astype(np.int64)
    if image.mode.startswith("I;16") or array.max(initial=0) > 255:
        array = array >> 8
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def upright(image):
    """``image`` turned by its EXIF orientation tag (PIL.ImageOps.exif_transpose), as a phone's photo viewer shows
    it; the image itself when it has no such tag (or unreadable EXIF data, which says nothing about orientation)."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):  # Pillow's ways of refusing a broken EXIF block
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def _open_image(path: Any):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return upright(image)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an image; pass the image files in it (e.g. {path}/*.jpg)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is too large to open safely ({exc}); this is Pillow's decompression-bomb "
                        "limit: downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; is it a valid PNG/JPEG file?") from None


# -- resize policies: an RGB or L image of any shape -> the model's square ----------------------


@dataclass(frozen=True)
class ResizePolicy:
    """One way to make an image square: ``fit(image, preprocess)`` and ``words(preprocess, times)`` for cards."""

    fit: Callable[[Any, ImagePreprocess], Any]
    words: Callable[[ImagePreprocess, str], str]


RESIZE_POLICIES: Registry[ResizePolicy] = Registry("resize policy", key="resize")


def shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side at ``shorter``; torchvision's Resize(int) rule: the longer side is
    int(shorter * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter * long / short)
    return (shorter, new_long) if width <= height else (new_long, shorter)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centered ``size`` square; torchvision's CenterCrop offsets,
    int(round((side - size) / 2.0)) (Python's round: 80.5 -> 80)."""
    left, top = round((width - size) / 2.0), round((height - size) / 2.0)
    return left, top, left + size, top + size


def _shorter_side_center_crop(image, pre: ImagePreprocess):
    size = (pre.image_size, pre.image_size)
    scaled = shorter_side_size(*image.size, pre.scaled_size)
    if image.size != scaled:
        image = image.resize(scaled, _RESAMPLE[pre.resample])
    return image if image.size == size else image.crop(center_crop_box(*image.size, pre.image_size))


def _squash(image, pre: ImagePreprocess):
    size = (pre.image_size, pre.image_size)
    return image if image.size == size else image.resize(size, _RESAMPLE[pre.resample])


def _squash_center_crop(image, pre: ImagePreprocess):
    """Squash to the ``scaled_size`` square, then cut the centre ``image_size`` square (DeiT's and BEiT's image
    processors: resize to 256x256, crop 224)."""
    scaled = (pre.scaled_size, pre.scaled_size)
    if image.size != scaled:
        image = image.resize(scaled, _RESAMPLE[pre.resample])
    return image if pre.scaled_size == pre.image_size else image.crop(center_crop_box(*scaled, pre.image_size))


def letterbox_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled to fit inside the ``size`` square, aspect ratio kept (the longer side becomes size)."""
    longer = max(width, height)
    return max(1, round(width * size / longer)), max(1, round(height * size / longer))


def _letterbox(image, pre: ImagePreprocess):
    from PIL import Image

    size = pre.image_size
    fitted = letterbox_size(*image.size, size)
    if image.size != fitted:
        image = image.resize(fitted, _RESAMPLE[pre.resample])
    if fitted == (size, size):
        return image
    fill = pre.fill_pixel
    canvas = Image.new(image.mode, (size, size), fill if image.mode == "RGB" else fill[0])
    canvas.paste(image, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return canvas


RESIZE_POLICIES.register("shorter-side+center-crop", ResizePolicy(
    _shorter_side_center_crop,
    lambda pre, x: (f"resize the shorter side to {pre.scaled_size} ({pre.resample}), "
                    f"center-crop {pre.image_size}{x}{pre.image_size}")))
RESIZE_POLICIES.register("squash", ResizePolicy(
    _squash,
    lambda pre, x: f"resize to {pre.image_size}{x}{pre.image_size} ({pre.resample}), squashed: aspect ratio not kept"))
RESIZE_POLICIES.register("squash+center-crop", ResizePolicy(
    _squash_center_crop,
    lambda pre, x: (f"resize to {pre.scaled_size}{x}{pre.scaled_size} ({pre.resample}), squashed: aspect ratio not "
                    f"kept, center-crop {pre.image_size}{x}{pre.image_size}")))
RESIZE_POLICIES.register("letterbox", ResizePolicy(
    _letterbox,
    lambda pre, x: (f"resize to fit inside {pre.image_size}{x}{pre.image_size} ({pre.resample}), aspect ratio kept, "
                    f"centered and padded with the mean pixel {list(pre.fill_pixel)}")))
