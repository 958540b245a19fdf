"""The Task protocol: everything that differs between modalities, behind one object the pipeline talks to.

A task owns loading the splits, the preprocessing object, building and training teacher and student (through
the one trainer and its ``TrainHooks``), loading checkpoints, export to each format, the calibration set and
quantization scheme, the benchmark inputs, the shape contract, the bundle's extra files and the model card's
task fields. Stages, validation, quantization, selection and bundling never ask which modality they run.

Register a task with ``TASKS.register(name, TaskClass())`` (``edgetl.tasks``); a recipe names it in
``model.task``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import DataError, RecipeError

TEACHER, STUDENT = "teacher", "student"
SPLIT_NAMES = ("train", "val", "test")


class RunContext(Protocol):
    """What a task reads from a run (``edgetl.pipeline.RunContext`` provides it; the task never imports the
    pipeline)."""

    recipe: Any
    progress: bool
    log: Callable[[str], None]
    splits: Any

    def model(self, model_key: str = TEACHER) -> tuple[Any, dict[str, Any]]: ...
    def model_dir(self, model_key: str) -> Path: ...
    def preprocess_of(self, model_key: str = TEACHER) -> Any: ...
    def model_metadata(self, model_key: str = TEACHER) -> dict[str, Any]: ...
    def artifact_dir(self, artifact: Any) -> Path: ...


class Task(ABC):
    """One modality (see the module docstring). Methods that need a run take its ``RunContext``."""

    name: str  # the registry name, e.g. "image-classification"
    kind: str  # the backbone and preprocessing kind: "image" or "text"
    sections: tuple[str, ...] = ("model", "data", "finetune", "run")  # recipe sections a trained model depends on
    samples: str = "samples"  # what one sample is called in messages ("images", "texts")
    labels_hint: str = "give the data labels"  # how this task's data gets labels, for the error without them
    output: str = "logits"  # what the model returns: class "logits", or an "embedding" (edgetl.validate)

    # -- recipe and data -----------------------------------------------------------------------
    def check_recipe(self, recipe) -> None:
        """Task-specific recipe checks at load time (which backbones fit); a RecipeError names the key."""

    @abstractmethod
    def load_splits(self, recipe, preprocess=None):
        """The recipe's data source as train/val/test splits (``edgetl.data.Splits``); ``preprocess``: the one a
        source model takes (default: the recipe's backbone's)."""

    def source_preprocess(self, recipe, model) -> Any:
        """The preprocessing of a source model (``edgetl.imported.SourceModel``): from its own metadata, else from
        the recipe's ``model`` settings; a RecipeError when neither says, or the model's input does not fit."""
        raise RecipeError(f"model.source: {self.name} models cannot come from a model file yet; fine-tune a backbone "
                          "(leave model.source empty)")

    def check_splits(self, splits) -> None:
        """Every split non-empty with the train split's classes; at least two classes, each present in train."""
        if not splits.train.labelled:
            raise DataError(f"the data has no labels; training needs them: {self.labels_hint}")
        for name in SPLIT_NAMES:
            split = getattr(splits, name)
            if len(split) == 0:
                raise DataError(f"the {name} split is empty; give the data source more {self.samples} "
                                f"or set data.{name}_per_class")
            if split.classes != splits.classes:
                raise DataError(f"the {name} split has classes {split.classes} but train has {splits.classes}; "
                                "load all splits from the same source")
        if len(splits.classes) < 2:
            raise DataError(f"training needs at least 2 classes, got {len(splits.classes)}; add classes")
        missing = [c for c, n in splits.train.class_counts().items() if n == 0]
        if missing:
            raise DataError(f"the train split has no {self.samples} of class {missing[0]!r}; add some or remove "
                            "the class")

    @abstractmethod
    def fingerprint(self, splits) -> str:
        """sha256 of the content of the data passed in: what decides whether training must rerun, and the
        bundle manifest's ``data_sha256``."""

    # -- training ------------------------------------------------------------------------------
    @abstractmethod
    def finetune(self, recipe, splits, out_dir: Path, *, progress: bool = True, log=print):
        """Fine-tune the recipe's backbone on ``splits`` into ``out_dir`` (the one trainer with this task's
        hooks); returns a FinetuneResult."""

    @abstractmethod
    def distill(self, recipe, splits, teacher, out_dir: Path, *, teacher_dir: Path | None = None,
                progress: bool = True, log=print):
        """Distil ``teacher`` (fine-tuned in ``teacher_dir``) into the recipe's student in ``out_dir``; returns a
        DistillResult."""

    @abstractmethod
    def checkpoint_files(self, folder: Path) -> list[Path]:
        """The files that make a trained model in ``folder`` (their hashes identify it)."""

    @abstractmethod
    def load_checkpoint(self, folder: Path) -> tuple[Any, dict[str, Any]]:
        """A trained torch model (eval mode) and its metadata from a fine-tune or distillation folder."""

    @abstractmethod
    def preprocess_of(self, meta: dict[str, Any], folder: Path):
        """The preprocessing a trained model was trained with (its checkpoint metadata and folder)."""

    # -- artifacts -----------------------------------------------------------------------------
    @abstractmethod
    def export(self, ctx: RunContext, model_key: str, fmt: str, folder: Path, source: Callable[[str], Path]
               ) -> dict[str, Any]:
        """Export a trained model to ``fmt`` ("onnx", "openvino") in ``folder``; the export record.
        ``source(fmt)`` is the model's FP32 export file in another format, made first if needed (an OpenVINO IR
        may be converted from the ONNX file)."""

    @abstractmethod
    def calibration(self, ctx: RunContext, preprocess) -> Any:
        """``quantize.calibration_size`` training samples as model inputs, for static quantization."""

    quantize_scheme: str = "default"  # "transformer": INT8 on MatMul/Gemm only, NNCF's transformer model type

    def contract(self, ctx: RunContext, artifact) -> dict[str, Any] | None:
        """The shape contract's verdict on one artifact (``passed``, ``reasons``, ...); None: this task has none."""
        return None

    @abstractmethod
    def bench_setup(self, ctx: RunContext, model_key: str, runner) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """(the runner to time, keyword arguments for ``edgetl.bench.benchmark``, settings to record)."""

    # -- bundle --------------------------------------------------------------------------------
    def bundle_files(self, ctx: RunContext, model_key: str) -> dict[str, Path]:
        """Extra files for the bundle's root ({name in bundle: source path}), e.g. a tokenizer."""
        return {}

    def bench_inputs(self, ctx: RunContext, model_key: str) -> tuple[Any, str] | None:
        """The model inputs a device is timed on (rows) and their description; None: random inputs of the
        model's input shape will do."""
        return None

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        """Task-specific fields of the run's ``summary.json``."""
        return {}

    @abstractmethod
    def card(self, ctx: RunContext, chosen: list) -> dict[str, Any]:
        """The model card's task-specific fields (dataset, licences, sizes, ...)."""


def check_optimized_only(recipe, noun: str, sources: str, methods: str) -> None:
    """The recipe checks of a task edgetl optimizes but does not train (embeddings, regression): it needs
    ``model.source`` (one of ``sources``), and the accuracy-aware search, which ranks class logits, is refused in
    favour of ``methods``."""
    if not recipe.model.source:
        raise RecipeError(f"model.task {recipe.model.task} needs model.source ({sources}); edgetl optimizes {noun} "
                          "models, it does not train them")
    for method in recipe.quantize.methods:
        if method.endswith("-acc"):
            raise RecipeError(f"quantize.methods: {method} searches by top-1 agreement of class logits; for "
                              f"{'an' if noun[0] in 'aeiou' else 'a'} {noun} model use {methods}")
