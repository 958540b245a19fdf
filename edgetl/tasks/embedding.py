"""``text-embedding``: a sentence-embedding model the user brings (``model.source``: a sentence-transformers folder
or an ONNX export of one). Its outputs are vectors, not class logits: every variant is held to the original by
cosine similarity and nearest-neighbour agreement on the user's texts (``validate(output="embedding")``). edgetl
does not train these; data needs no labels (``data.label_column = ""``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import check_optimized_only
from .text import TextClassification


class TextEmbedding(TextClassification):
    name, output = "text-embedding", "embedding"
    labels_hint = "an embedding model is not trained here; give it as model.source"

    def check_recipe(self, recipe) -> None:
        check_optimized_only(recipe, "embedding", "a sentence-transformers folder or an ONNX file",
                             "onnx-int8-dynamic, onnx-int8-static, openvino-int8 or fp16")

    def source_preprocess(self, recipe, model):
        """The folder's own tokenizer, truncating at ``text.max_length`` (0: the model's max_seq_length, else its
        position limit); a model file (ONNX, IR) with ``model.tokenizer``: see ``TextClassification``."""
        from ..imported.hf import pooling
        from ..preprocess import TextPreprocess

        if model.format != "hf":
            return super().source_preprocess(recipe, model)
        limit = recipe.text.max_length or pooling(model.path)["max_seq_length"] or None
        return TextPreprocess.from_model_dir(model.path, max_length=limit)

    def contract(self, ctx, artifact) -> dict[str, Any] | None:
        return None  # the shape contract compares class logits of a trained classifier

    def summary(self, ctx) -> dict[str, Any]:
        return {"max_length": ctx.preprocess_of().max_length}

    def card(self, ctx, chosen: list) -> dict[str, Any]:
        source = Path(ctx.recipe.model.source).name
        return {"description": f"Sentence-embedding model ({source}) optimized by edgetl: each variant is held to the "
                               "original's embeddings by cosine similarity and nearest-neighbour agreement.",
                "task": "text embedding", "dataset": ctx.recipe.data.path or ctx.recipe.data.source,
                "dataset_license": "the user's", "max_length": ctx.preprocess_of().max_length,
                "latency_inputs": f"test texts of {self.median_length(ctx, chosen[0].model)} tokens (the median)"}
