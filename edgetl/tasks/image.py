"""``image-classification``: a CNN backbone from the registry fine-tuned on labelled images at
``model.image_size``, distilled into ``distill.student``, exported with torch.onnx (ONNX) and OpenVINO's converter
(IR, from the ONNX file), calibrated on normalised training images, benchmarked on random inputs of the model's
shape."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import read_json
from ..errors import DataError, RecipeError, WeightsError
from .base import RunContext, Task

CHECKPOINT_FILE = "best.safetensors"
DATASET_LICENSES = {"fashion-mnist": "MIT (Fashion-MNIST, Zalando Research)"}


class ImageClassification(Task):
    name, kind, samples = "image-classification", "image", "images"
    labels_hint = "put the images in one sub-folder per class"

    def check_recipe(self, recipe) -> None:
        from ..backbones import get_spec

        get_spec(recipe.model.backbone, kind="image")
        if recipe.distill.enabled:
            get_spec(recipe.distill.student, kind="image", key="distill.student")

    def teacher_preprocess(self, recipe):
        return recipe_preprocess(recipe, recipe.model.backbone)

    def load_splits(self, recipe, preprocess=None):
        from ..data import load_splits

        return load_splits(recipe.data, preprocess or self.teacher_preprocess(recipe))

    def source_preprocess(self, recipe, model):
        """The source's own edgetl metadata, else NCHW at its input size (``model.image_size`` when dynamic) with
        ``model.mean`` / ``model.std``."""
        from ..preprocess import ImagePreprocess, load_preprocess

        if model.preprocess is not None:
            return load_preprocess(model.preprocess)
        if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
            shapes = ", ".join(f"{i.name} {list(i.shape)}" for i in model.inputs)
            raise RecipeError(f"model.source {model.path.name} takes {shapes}; an image classifier takes one "
                              "(N, C, H, W) image batch")
        _, channels, height, width = model.inputs[0].shape
        if channels not in (1, 3):
            raise RecipeError(f"model.source {model.path.name} takes {list(model.inputs[0].shape)}: channels-last "
                              "(NHWC) or other layouts are not supported yet; export it with NCHW input")
        if height != width:
            raise RecipeError(f"model.source {model.path.name} takes {height}x{width} images; edgetl feeds square "
                              "images (export it with a square or dynamic input size)")
        mean, std = recipe.model.mean, recipe.model.std
        if not mean or not std:
            raise RecipeError(f"model.source {model.path.name} does not say how its inputs are normalised; give "
                              "model.mean and model.std (--mean/--std), e.g. ImageNet's 0.485,0.456,0.406 and "
                              "0.229,0.224,0.225")
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise RecipeError(f"model.mean and model.std need {channels} value(s) each (std > 0), got {mean} and {std}")
        return ImagePreprocess(image_size=height or recipe.model.image_size, channels=channels, mean=tuple(mean),
                               std=tuple(std), resize=recipe.model.resize, crop_fraction=recipe.model.crop_fraction)

    def check_splits(self, splits, image_size: int | None = None) -> None:
        super().check_splits(splits)
        for name in ("train", "val", "test"):
            shape = getattr(splits, name).images.shape[1:3]
            if image_size is not None and shape != (image_size, image_size):
                raise DataError(f"{name} images are {shape} but model.image_size is {image_size}; load the splits "
                                "with the task's own preprocessing (edgetl.tasks.get_task(recipe).load_splits)")

    def fingerprint(self, splits) -> str:
        """sha256 of the data actually passed in: classes, and every split's images and labels (a photo edited in
        place changes it). Images in memory are hashed as pixels (about 1 s per GB); image files (``ImageFiles``)
        as their bytes and the preprocessing that makes their pixels, so nothing is decoded."""
        from ..data import ImageFiles

        digest = hashlib.sha256(repr(splits.classes).encode())
        for split in (splits.train, splits.val, splits.test):
            digest.update(repr(split.images.shape).encode())
            if isinstance(split.images, ImageFiles):
                split.images.update_digest(digest)
            else:
                digest.update(np.ascontiguousarray(split.images).data)
            digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).data)
        return digest.hexdigest()

    # -- training ------------------------------------------------------------------------------
    def finetune(self, recipe, splits, out_dir: Path, *, progress: bool = True, log=print):
        from ..train.finetune import run_finetune
        from .image_train import ImageTrainHooks

        self.check_splits(splits, recipe.model.image_size)
        key = {"recipe": recipe.section_hash(*self.sections), "data": self.fingerprint(splits)}
        hooks = ImageTrainHooks(recipe, splits, recipe.model.backbone, self.teacher_preprocess(recipe),
                                eval_batch_size=2 * recipe.finetune.batch_size)
        return run_finetune(recipe, hooks, out_dir, key, progress=progress, checkpoint=str(out_dir / CHECKPOINT_FILE))

    def distill(self, recipe, splits, teacher, out_dir: Path, *, teacher_dir: Path | None = None,
                progress: bool = True, log=print):
        from ..train.distill import run_distill
        from ..train.loop import model_hash
        from .image_train import ImageDistillHooks

        self.check_splits(splits, recipe.model.image_size)
        sections = ("distill", *self.sections)
        key = {"recipe": recipe.section_hash(*sections), "data": self.fingerprint(splits), "teacher": model_hash(teacher)}
        hooks = ImageDistillHooks(recipe, splits, self.teacher_preprocess(recipe),
                                  recipe_preprocess(recipe, recipe.distill.student))
        return run_distill(recipe, hooks, teacher, out_dir, key, sections=sections, progress=progress,
                           checkpoint=str(out_dir / CHECKPOINT_FILE))

    def checkpoint_files(self, folder: Path) -> list[Path]:
        return [Path(folder) / CHECKPOINT_FILE]

    def load_checkpoint(self, folder: Path):
        return load_checkpoint(folder)

    def preprocess_of(self, meta: dict[str, Any], folder: Path):
        """The backbone's normalisation at the checkpoint's size, with the resize policy the checkpoint recorded
        (``LEGACY_RESIZE``, squash, for checkpoints from before it was recorded)."""
        from ..backbones import get_spec
        from ..preprocess.image import LEGACY_RESIZE

        saved = meta.get("preprocess") or {}
        return dataclasses.replace(get_spec(meta["backbone"], kind="image").preprocess(meta["image_size"]),
                                   resize=saved.get("resize", LEGACY_RESIZE),
                                   crop_fraction=saved.get("crop_fraction", 1.0))

    # -- artifacts -----------------------------------------------------------------------------
    def export(self, ctx: RunContext, model_key: str, fmt: str, folder: Path, source: Callable[[str], Path]
               ) -> dict[str, Any]:
        from ..export import export_onnx, export_openvino

        config, metadata = ctx.recipe.export, ctx.model_metadata(model_key)
        if fmt == "onnx":
            model, _ = ctx.model(model_key)
            info = export_onnx(model, folder / "model.onnx", input_shape=ctx.preprocess_of(model_key).input_shape,
                               opset=config.opset, dynamo=config.dynamo, metadata=metadata)
        else:  # openvino: converted from the ONNX export
            info = export_openvino(source("onnx"), folder / "model.xml",
                                   compress_to_fp16=config.compress_to_fp16, metadata=metadata)
        return info.to_dict()

    def calibration(self, ctx: RunContext, preprocess):
        """``quantize.calibration_size`` training images, normalized."""
        from ..quantize import calibration_images

        return calibration_images(ctx.splits.train, preprocess, ctx.recipe.quantize.calibration_size,
                                  seed=ctx.recipe.run.seed)

    def bench_setup(self, ctx: RunContext, model_key: str, runner):
        return runner, {"input_shape": ctx.preprocess_of(model_key).input_shape}, {}

    def card(self, ctx: RunContext, chosen: list) -> dict[str, Any]:
        from ..backbones import get_spec

        source = ctx.recipe.data.source
        return {"weights_license": get_spec(ctx.recipe.model.backbone).license,
                "dataset": source if source != "folder" else ctx.recipe.data.path,
                "dataset_license": DATASET_LICENSES.get(source, "")}


def recipe_preprocess(recipe, backbone: str):
    """``backbone``'s normalisation at ``model.image_size``, resized by the recipe's ``model.resize`` policy and
    ``model.crop_fraction`` (the teacher's and the distillation student's preprocessing)."""
    from ..backbones import get_spec

    return dataclasses.replace(get_spec(backbone, kind="image").preprocess(recipe.model.image_size),
                               resize=recipe.model.resize, crop_fraction=recipe.model.crop_fraction)


def load_checkpoint(path: str | Path):
    """The best trained image model (eval mode) and its metadata, from a fine-tune/distill folder or its .safetensors."""
    from safetensors.torch import load_file

    from ..backbones import create_model

    path = Path(path)
    weights = path if path.suffix == ".safetensors" else path / CHECKPOINT_FILE
    meta_file = weights.with_name("checkpoint.json")
    if not weights.is_file() or not meta_file.is_file():
        raise WeightsError(f"no fine-tuned checkpoint in {weights.parent}; run `edgetl finetune` first")
    meta = read_json(meta_file)
    model = create_model(meta["backbone"], num_classes=meta["num_classes"], image_size=meta["image_size"], weights=None)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as exc:
        raise WeightsError(f"{weights} does not fit {meta['backbone']}: {exc}; rerun `edgetl finetune`") from None
    return model.eval(), meta
