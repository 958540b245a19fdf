"""Training-time augmentation of image batches, in torch alone, on the uint8 pixels before normalisation.

What the recipe's ``[finetune.augment]`` section turns on, in this order for every training batch (the order of
timm's and torchvision's training transforms):

1. a random resized crop (area fraction drawn from ``random_resized_crop``, aspect ratio 3/4..4/3, resized back
   bilinearly; torchvision's ``RandomResizedCrop`` draw) and a horizontal flip of half the images (``hflip``);
2. a random shift with the border reflected, up to ``shift`` of the side (0.125 was the former
   ``finetune.augment = true``);
3. colour jitter: brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]; skipped when a
   policy is chosen, as timm does (the policies change colour themselves);
4. a policy: TrivialAugment Wide (one op per image, uniformly chosen, at a uniformly drawn strength) or RandAugment
   (``randaugment_ops`` ops per image at ``randaugment_magnitude`` of 30), with torchvision's op set and strengths;
   translations are fractions of the side (TrivialAugment Wide's 32 px at 224), shears are about the centre and
   geometric ops fill with black (torchvision's default);
5. mixup or cutmix across the batch (each image with the one at the mirrored position; both set: one of the two per
   batch, at even odds, as timm's ``Mixup``), giving soft targets whose rows sum to 1.

Grayscale (one channel) and RGB images both work: saturation leaves grey pixels grey. The draws come from the
augmenter's own ``torch.Generator`` seeded from ``run.seed``, so a run repeats exactly, a resumed run continues
the same stream (the hooks save its state), and the batch order (the trainer's RNG) is the same with augmentation
on or off. Only the tasks' training batches call this: never evaluation, validation, test or the probe's cached
features.

>>> augmenter = Augmenter(recipe.finetune.augment, num_classes=10, seed=recipe.run.seed)
>>> images, targets = augmenter(images, labels)  # uint8 (N, H, W, C); int64 (N,) labels or soft (N, 10) targets
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import Registry
from ..settings import AugmentConfig

BINS = 31  # magnitude levels 0..30, as torchvision's RandAugment and TrivialAugmentWide
ASPECT_RATIO = (3 / 4, 4 / 3)  # random resized crop
CROP_ATTEMPTS = 10  # then the whole image, as torchvision
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision


# -- photometric ops: float (N, C, H, W) images holding 0..255, one factor or value per image --------------------


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1).to(torch.float32)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clipped: PIL's ImageEnhance (factor 1 keeps the image)."""
    weight = _per_image(factor)
    return (weight * images + (1 - weight) * other).clamp(0, 255)


def grey(images: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W), rounded to whole levels; a one-channel image is its own."""
    if images.shape[1] == 1:
        return images
    return (images * images.new_tensor(LUMA).reshape(1, 3, 1, 1)).sum(1, keepdim=True).round()


def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images), factor)


def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Towards (factor < 1) or away from the image's mean grey level."""
    return _blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Towards (factor < 1) or away from the image's own grey version (PIL's ImageEnhance.Color)."""
    return _blend(images, grey(images).expand_as(images), factor)


def sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Away from (factor > 1) or towards a 3x3-smoothed copy whose border keeps the original pixels (PIL's)."""
    channels = images.shape[1]
    if min(images.shape[-2:]) < 3:
        return images
    kernel = images.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels).round()
    return _blend(images, smooth, factor)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` (1..8) high bits of every value."""
    masks = (256 - 2 ** (8 - bits.round().long().clamp(1, 8))).to(torch.uint8).reshape(-1, 1, 1, 1)
    return (images.round().to(torch.uint8) & masks).to(images.dtype)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert every value at or above ``threshold``."""
    return torch.where(images >= _per_image(threshold), 255 - images, images)


def autocontrast(images: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """Stretch each channel of each image to the full 0..255 range (a flat channel stays as it is)."""
    low, high = images.amin(dim=(2, 3), keepdim=True), images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 255 / (high - low).clamp(min=1e-6))
    return ((images - torch.where(flat, torch.zeros_like(low), low)) * scale).clamp(0, 255)


def equalize(images: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """Histogram equalisation of each channel of each image, with PIL's (and torchvision's) lookup table."""
    n, c, h, w = images.shape
    values = images.round().long().clamp(0, 255).reshape(n * c, h * w)
    rows = torch.arange(n * c).unsqueeze(1)
    hist = torch.bincount((values + 256 * rows).reshape(-1), minlength=256 * n * c).reshape(n * c, 256)
    highest = 255 - (hist.flip(1) > 0).long().argmax(1)  # the highest level present
    step = (hist.sum(1) - hist.gather(1, highest[:, None]).squeeze(1)) // 255
    divisor = step.clamp(min=1)[:, None]
    lut = F.pad((hist.cumsum(1) + divisor // 2) // divisor, (1, 0))[:, :-1].clamp(0, 255)
    lut = torch.where(step[:, None] > 0, lut, torch.arange(256).expand(n * c, 256))  # one level only: unchanged
    return lut.gather(1, values).reshape(n, c, h, w).to(images.dtype)


# -- geometric ops --------------------------------------------------------------------------------------------


def affine(images: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor | None = None, *,
           mode: str = "nearest", outside: str = "zeros") -> torch.Tensor:
    """Resample every image: output pixel p (from the centre, in pixels) reads input pixel ``linear @ p + shift``
    (``linear`` (N, 2, 2), ``shift`` (N, 2) in pixels); outside the input reads black (``outside`` "zeros") or the
    nearest border pixel ("border")."""
    n, _, h, w = images.shape
    to_unit = images.new_tensor([2 / w, 2 / h])  # pixels from the centre -> affine_grid's [-1, 1] units
    theta = torch.zeros(n, 2, 3)
    theta[:, :, :2] = linear * to_unit[None, :, None] / to_unit[None, None, :]
    if shift is not None:
        theta[:, :, 2] = shift * to_unit
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=outside, align_corners=False)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    radians = degrees.to(torch.float32) * math.pi / 180
    cos, sin = torch.cos(radians), torch.sin(radians)
    return affine(images, torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1))


def _shear(images: torch.Tensor, amount: torch.Tensor, row: int) -> torch.Tensor:
    linear = torch.eye(2).repeat(len(images), 1, 1)
    linear[:, row, 1 - row] = amount.to(torch.float32)
    return affine(images, linear)


def _translate(images: torch.Tensor, fraction: torch.Tensor, axis: int) -> torch.Tensor:
    shift = torch.zeros(len(images), 2)
    shift[:, axis] = -fraction.to(torch.float32) * images.shape[3 - axis]  # axis 0: x (width), 1: y (height)
    return affine(images, torch.eye(2).repeat(len(images), 1, 1), shift)


# -- the policies' op set: torchvision's, with its strengths ---------------------------------------------------


def _linear(level: torch.Tensor, top: float) -> torch.Tensor:
    return level * top


@dataclass(frozen=True)
class Op:
    """One policy op: ``apply(images, values)``; a level in [0, 1] (bin / 30) becomes a value by ``scale(level,
    top)`` with ``top`` RandAugment's or TrivialAugment Wide's strength; a signed op's value gets a random sign."""

    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    randaugment: float = 0.0
    wide: float = 0.0
    signed: bool = False
    scale: Callable[[torch.Tensor, float], torch.Tensor] = _linear


OPS: Registry[Op] = Registry("augmentation op")
OPS.register("identity", Op(lambda images, _: images))
OPS.register("brightness", Op(lambda images, v: brightness(images, 1 + v), 0.9, 0.99, signed=True))
OPS.register("color", Op(lambda images, v: saturation(images, 1 + v), 0.9, 0.99, signed=True))
OPS.register("contrast", Op(lambda images, v: contrast(images, 1 + v), 0.9, 0.99, signed=True))
OPS.register("sharpness", Op(lambda images, v: sharpness(images, 1 + v), 0.9, 0.99, signed=True))
OPS.register("posterize", Op(posterize, 4, 6, scale=lambda level, top: 8 - (level * top).round()))  # bits 8..2
OPS.register("solarize", Op(solarize, 255, 255, scale=lambda level, top: top * (1 - level)))  # threshold 255..0
OPS.register("autocontrast", Op(autocontrast))
OPS.register("equalize", Op(equalize))
OPS.register("rotate", Op(rotate, 30, 135, signed=True))  # degrees
OPS.register("shear_x", Op(lambda images, v: _shear(images, v, 0), 0.3, 0.99, signed=True))
OPS.register("shear_y", Op(lambda images, v: _shear(images, v, 1), 0.3, 0.99, signed=True))
OPS.register("translate_x", Op(lambda images, v: _translate(images, v, 0), 150 / 331, 32 / 224, signed=True))
OPS.register("translate_y", Op(lambda images, v: _translate(images, v, 1), 150 / 331, 32 / 224, signed=True))


def apply_ops(images: torch.Tensor, ops: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor, *,
              wide: bool) -> torch.Tensor:
    """Image i gets op ``ops[i]`` (an index into ``OPS.values()``) at ``levels[i]`` in [0, 1], signed by
    ``signs[i]`` (+1 or -1) where the op is signed; the images of one op are transformed together."""
    out = images.clone()
    for index, op in enumerate(OPS.values()):
        chosen = (ops == index).nonzero().squeeze(1)
        if len(chosen):
            values = op.scale(levels[chosen], op.wide if wide else op.randaugment)
            values = values * signs[chosen] if op.signed else values
            out[chosen] = _pixels(op.apply(images[chosen], values))
    return out


def _signs(n: int, generator: torch.Generator) -> torch.Tensor:
    return 1.0 - 2.0 * torch.randint(2, (n,), generator=generator)


POLICIES: Registry[Callable[[torch.Tensor, AugmentConfig, torch.Generator], torch.Tensor]] = Registry(
    "augmentation policy", key="finetune.augment.policy")
POLICIES.register("none", lambda images, config, generator: images)


@POLICIES.register("trivialaugment")
def trivial_augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """TrivialAugment Wide (Müller & Hutter 2021): one op per image at a uniformly drawn strength."""
    n = len(images)
    ops = torch.randint(len(OPS), (n,), generator=generator)
    levels = torch.randint(BINS, (n,), generator=generator) / (BINS - 1)
    return apply_ops(images, ops, levels, _signs(n, generator), wide=True)


@POLICIES.register("randaugment")
def rand_augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): ``randaugment_ops`` uniformly chosen ops per image, each at
    ``randaugment_magnitude`` / 30 of its strength."""
    n = len(images)
    levels = torch.full((n,), config.randaugment_magnitude / (BINS - 1))
    for _ in range(config.randaugment_ops):
        ops = torch.randint(len(OPS), (n,), generator=generator)
        images = apply_ops(images, ops, levels, _signs(n, generator), wide=False)
    return images


# -- crop, flip, shift, jitter, mixing ------------------------------------------------------------------------


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator
               ) -> torch.Tensor:
    """(N, 4) integer boxes (left, top, width, height): torchvision's ``RandomResizedCrop.get_params`` per image."""
    area = height * width
    fractions = scale[0] + (scale[1] - scale[0]) * torch.rand(n, CROP_ATTEMPTS, generator=generator)
    low, high = math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1])
    ratios = torch.exp(low + (high - low) * torch.rand(n, CROP_ATTEMPTS, generator=generator))
    widths = torch.sqrt(area * fractions * ratios).round()
    heights = torch.sqrt(area * fractions / ratios).round()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits
    crop_w, crop_h = widths.gather(1, first).squeeze(1), heights.gather(1, first).squeeze(1)
    # None fits: the centred crop of the whole image, its aspect ratio clamped into ASPECT_RATIO
    ratio = min(max(width / height, ASPECT_RATIO[0]), ASPECT_RATIO[1])
    wide = width / height > ratio
    fallback_w, fallback_h = (round(height * ratio), height) if wide else (width, round(width / ratio))
    found = fits.any(1)
    crop_w = torch.where(found, crop_w, torch.tensor(float(fallback_w)))
    crop_h = torch.where(found, crop_h, torch.tensor(float(fallback_h)))
    draws = torch.rand(2, n, generator=generator)
    left = torch.where(found, (draws[0] * (width - crop_w + 1)).floor(), ((width - crop_w) // 2))
    top = torch.where(found, (draws[1] * (height - crop_h + 1)).floor(), ((height - crop_h) // 2))
    return torch.stack([left, top, crop_w, crop_h], 1)


def crop_and_flip(images: torch.Tensor, scale: tuple[float, float], hflip: bool, generator: torch.Generator
                  ) -> torch.Tensor:
    """Each image cropped to a random box (area fraction in ``scale``) and resized back bilinearly, then mirrored
    left-right with probability 1/2 (``hflip``); ``scale`` (1, 1): no crop, and no resampling."""
    n, _, height, width = images.shape
    flips = (torch.rand(n, generator=generator) < 0.5) if hflip else torch.zeros(n, dtype=torch.bool)
    if tuple(scale) == (1.0, 1.0):
        return torch.where(flips[:, None, None, None], images.flip(3), images)
    left, top, crop_w, crop_h = crop_boxes(n, height, width, scale, generator).unbind(1)
    sign = 1.0 - 2.0 * flips.float()
    linear = torch.zeros(n, 2, 2)
    linear[:, 0, 0], linear[:, 1, 1] = sign * crop_w / width, crop_h / height
    centre = torch.stack([left + crop_w / 2 - width / 2, top + crop_h / 2 - height / 2], 1)
    # bilinear taps half a pixel beyond a box at the image's edge read the edge, as torch's interpolate does
    return affine(images, linear, centre, mode="bilinear", outside="border")


def shift(images: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``fraction`` of its side in x and y, the border reflected (not black)."""
    n, _, height, width = images.shape
    pad = min(round(fraction * min(height, width)), min(height, width) - 1)
    if pad <= 0:
        return images
    padded = F.pad(images, (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))])


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, in that order, each by a factor in [1 - strength, 1 + strength]."""
    factors = 1 + strength * (2 * torch.rand(3, len(images), generator=generator) - 1)
    for op, factor in zip((brightness, contrast, saturation), factors):
        images = _pixels(op(images, factor))
    return images


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw, seeded from ``generator`` (torch's Beta takes no generator)."""
    return float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator))).beta(alpha, alpha))


def mix(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, mixup: float, cutmix: float,
        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (blend) or cutmix (paste a box) of each image with the one at the mirrored batch position, weight
    lambda ~ Beta(alpha, alpha) (cutmix: the box's exact area); soft targets lambda * own + (1 - lambda) * other."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(1, generator=generator) < 0.5))
    lam = _beta(cutmix if use_cutmix else mixup, generator)
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = (int(torch.randint(size, (1,), generator=generator)) for size in (height, width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:
        images = lam * images + (1 - lam) * partner
    onehot = F.one_hot(labels.long(), num_classes).to(torch.float32)
    return images, lam * onehot + (1 - lam) * onehot.flip(0)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """Whole levels in 0..255, as a uint8 pipeline keeps them between ops."""
    return images.round().clamp(0, 255)


def _stream_seed(seed: int) -> int:
    """The augmentation stream's seed: from ``run.seed``, but not the trainer's own stream."""
    return int.from_bytes(hashlib.sha256(f"edgetl.augment:{seed}".encode()).digest()[:8], "little") >> 1


class Augmenter:
    """``finetune.augment`` applied to uint8 training batches, reproducibly from ``seed`` (see the module doc)."""

    def __init__(self, config: AugmentConfig, *, num_classes: int, seed: int):
        self.config, self.num_classes, self.seed = config, num_classes, seed
        self.policy = POLICIES.get(config.policy)
        self.generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        """Back to the first draw (each distillation run starts from the same augmentations)."""
        self.generator.manual_seed(_stream_seed(self.seed))

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    @property
    def mixes(self) -> bool:
        return self.config.mixup > 0 or self.config.cutmix > 0

    def __call__(self, images: np.ndarray, labels: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """uint8 (N, H, W, C) images (C = 1 or 3) and their int64 labels -> augmented uint8 images of the same shape,
        and the labels, or float32 soft targets (N, num_classes) whose rows sum to 1 when mixup or cutmix mixed."""
        config, generator = self.config, self.generator
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
        batch = _pixels(crop_and_flip(batch, tuple(config.random_resized_crop), config.hflip, generator))
        if config.shift > 0:
            batch = shift(batch, config.shift, generator)
        if config.color_jitter > 0 and config.policy == "none":
            batch = color_jitter(batch, config.color_jitter, generator)
        batch = self.policy(batch, config, generator)
        targets = labels
        if self.mixes:
            batch, targets = mix(batch, labels, self.num_classes, mixup=config.mixup, cutmix=config.cutmix,
                                 generator=generator)
        return _pixels(batch).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy(), targets
