"""Image preprocessing, defined once and saved with every bundle.

Only numpy and Pillow: the bundle's ``predict`` path uses this module without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import DataError

_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values
# Files read as images (image-folder datasets); a text bundle refuses them as texts.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


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

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise DataError(f"image_size must be positive, got {self.image_size}")
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")
        if self.resample not in _RESAMPLE:
            raise DataError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    # -- stage 1: any image -> uint8 HWC at the model's size ---------------------------
    def resize(self, image: Any) -> np.ndarray:
        """PIL image, path, or uint8 array (HW or HWC) -> uint8 array (size, size, channels)."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            array = image
            if array.dtype != np.uint8:
                raise DataError(f"image arrays must be uint8, got {array.dtype}")
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            image = Image.fromarray(array)
        elif not isinstance(image, Image.Image):
            image = _open_image(image)
        image = _to_8_bit(image).convert("RGB" if self.channels == 3 else "L")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), _RESAMPLE[self.resample])
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    # -- stage 2: uint8 NHWC batch -> normalised float32 NCHW --------------------------
    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 batch (N, H, W, C) -> float32 (N, C, H, W), scaled and normalised."""
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
        return self.normalize(np.stack([self.resize(image) for image in images]))

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
        return (f"{self.resample} resize to {self.image_size}x{self.image_size}, {self.channels} channel(s), "
                f"(pixel/255 - mean {list(self.mean)}) / std {list(self.std)}, {self.layout} {self.dtype}")

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
            "steps": (f"{'RGB' if self.channels == 3 else 'grayscale'}, resize to {size}×{size} ({self.resample}), "
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
        """``root`` is unused: an image preprocess needs no files (it is there for the shared protocol)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
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


def _open_image(path: Any):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise DataError(f"image not found: {path}; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an image; pass the image files in it (e.g. {path}/*.jpg)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is too large to open safely ({exc}); this is Pillow's decompression-bomb "
                        "limit: downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; is it a valid PNG/JPEG file?") from None
