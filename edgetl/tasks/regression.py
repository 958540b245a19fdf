"""``image-regression``: an image model the user brings (``model.source``: ONNX, OpenVINO IR or a torch.export
program, as for image classifiers) whose outputs are real values (N, K), K >= 1: an age estimator, a quality score,
a few measurements. Every variant is held to the original's values by relative error on the user's images
(``validate(output="regression")``, gate ``validate.gate.max_relative_error``). edgetl does not train these, and the
images need no labels: class sub-folders, if any, are not read as classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import check_optimized_only
from .image import ImageClassification


class ImageRegression(ImageClassification):
    name, output = "image-regression", "regression"
    labels_hint = "a regression model is not trained here; give it as model.source"

    def check_recipe(self, recipe) -> None:
        check_optimized_only(recipe, "regression", "an .onnx, OpenVINO .xml or .pt2 file",
                             "onnx-int8-static, openvino-int8 or fp16")

    def card(self, ctx, chosen: list) -> dict[str, Any]:
        source = Path(ctx.recipe.model.source).name
        return {"description": f"Image regression model ({source}) optimized by edgetl: each variant is held to the "
                               "original's values by relative error on held-out images.",
                "task": "image regression", "dataset": ctx.recipe.data.path or ctx.recipe.data.source,
                "dataset_license": "the user's"}
