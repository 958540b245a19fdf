"""``RunContext``: what every stage shares — the recipe, its task, the run folder's layout — and the lazily
loaded splits, trained models and reference outputs, each keyed by the files it came from (a model retrained
on disk is reloaded by itself; nothing is reset by hand)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .._io import atomic_path, is_fresh, read_json, sha256_file, write_json
from ..errors import EdgetlError
from ..settings import Recipe
from ..tasks import TEACHER, Task, get_task
from .origin import origin_of
from .plan import TORCH_VARIANT, Planned, fp32_artifact, plan, prefix

if TYPE_CHECKING:
    from ..progress import Steps


@dataclass(frozen=True)
class RunContext:
    """The recipe, its task and its run folder (``runs/<name>/``), with cached data and models (frozen: the
    recipe and layout never change under a stage; the caches are keyed by the files they came from)."""

    recipe: Recipe
    progress: bool = True
    log: Callable[[str], None] = print
    _models: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False)
    _references: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @cached_property
    def task(self) -> Task:
        return get_task(self.recipe)

    @cached_property
    def origin(self):
        """Where the models come from: trained here, or the user's ``model.source`` (``edgetl.pipeline.origin``)."""
        return origin_of(self.recipe)

    @cached_property
    def splits(self):
        from ..data import describe_skipped

        splits = self.origin.splits(self)
        for line in describe_skipped(getattr(splits, "skipped", [])):
            self.log(line)
        return splits

    def steps(self, total: int, description: str) -> Steps:
        """Progress of one of the stage's jobs (``edgetl.progress.steps``): a bar on a terminal, a line per step in
        a log, nothing with ``--quiet``."""
        from ..progress import steps

        return steps(total, description, enabled=self.progress, log=self.log)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    def model_dir(self, model_key: str) -> Path:
        return self.run_dir / self.origin.folders[model_key]

    def artifact_dir(self, artifact: Planned | str) -> Path:
        return self.run_dir / "artifacts" / (artifact if isinstance(artifact, str) else artifact.name)

    def plan(self) -> list[Planned]:
        return plan(self.recipe)

    def reference_name(self, model_key: str = TEACHER) -> str:
        """What the model's variants are held to: ``torch-fp32`` (``student-torch-fp32``), or the source model."""
        return prefix(model_key) + TORCH_VARIANT if self.origin.has_torch else "source model"

    def fp32_artifact(self, model_key: str, fmt: str) -> Planned:
        return fp32_artifact(model_key, fmt)

    # -- trained models -------------------------------------------------------------------------
    def model_keys(self) -> list[str]:
        return self.origin.model_keys(self.recipe)

    def checkpoint_hash(self, model_key: str = TEACHER) -> str:
        """Identity of a trained model's files; a clear error when its stage has not run."""
        files = self.origin.checkpoint_files(self, self.model_dir(model_key))
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise EdgetlError(f"no {model_key} checkpoint in {self.model_dir(model_key)} ({missing[0].name} missing); "
                              f"run `edgetl {self.origin.commands[model_key]}` first")
        return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()[:16]

    def model(self, model_key: str = TEACHER):
        """A trained torch model (eval mode), or a source model's file, and its metadata; reloaded when its files
        changed."""
        digest = self.checkpoint_hash(model_key)
        cached = self._models.get(model_key)
        if cached is None or cached[0] != digest:
            self._models[model_key] = (digest, self.origin.load(self, self.model_dir(model_key)))
        return self._models[model_key][1]

    def preprocess_of(self, model_key: str = TEACHER):
        """The preprocessing one trained model was trained with (a student may differ from the teacher)."""
        _, meta = self.model(model_key)
        return self.origin.preprocess_of(self, meta, self.model_dir(model_key))

    def model_metadata(self, model_key: str = TEACHER) -> dict[str, Any]:
        """What every export of the model carries: labels, preprocessing, backbone."""
        _, meta = self.model(model_key)
        return {"labels": meta["classes"], "preprocess": self.preprocess_of(model_key).to_dict(),
                "backbone": meta.get("backbone", self.recipe.model.backbone), "producer": "edgetl"}

    # -- artifacts ------------------------------------------------------------------------------
    def open(self, artifact: Planned, threads: int):
        """(a Runner for the artifact, its model file or None for torch)."""
        from ..runners import open_runner

        if artifact.format == "torch":
            model, _ = self.model(artifact.model)
            return open_runner(model, "torch:cpu", threads=threads), None
        path = self.artifact_dir(artifact) / artifact.file
        return open_runner(path, artifact.runtime, threads=threads), path

    def made(self, artifact: Planned) -> bool:
        return artifact.format == "torch" or (self.artifact_dir(artifact) / "export.json").is_file()

    def skip_reason(self, artifact: Planned | str) -> str | None:
        record = self.artifact_dir(artifact) / "skipped.json"
        return read_json(record)["reason"] if record.is_file() else None

    def shipped_files(self, artifact: Planned) -> list[Path]:
        """The model files of an artifact that go into a bundle (its export record's files)."""
        folder = self.artifact_dir(artifact)
        return [folder / name for name in read_json(folder / "export.json")["files"]]

    # -- references -----------------------------------------------------------------------------
    def reference_logits(self, model_key: str = TEACHER) -> np.ndarray:
        """The reference's logits on the test split (the FP32 torch model, or the source model on its own
        runtime): what every variant of the model is held to."""
        from ..validate import predict_logits

        digest = self.checkpoint_hash(model_key)
        if model_key in self._references and self._references[model_key][0] == digest:
            return self._references[model_key][1]
        path = self.run_dir / "reference" / f"{model_key}_test_logits.npy"
        record = path.with_suffix(".json")
        key = {"checkpoint": digest, "data": self.recipe.section_hash("data", "model")}
        if is_fresh(record, key) and path.is_file():
            logits = np.load(path)
        else:
            runner = self.origin.reference_runner(self, model_key)
            try:
                logits = predict_logits(runner, self.splits.test, self.preprocess_of(model_key),
                                        self.recipe.validate.batch_size, output=self.task.output)
            finally:
                runner.close()
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, logits)
            write_json(record, {"key": key, "shape": list(logits.shape)})
        self._references[model_key] = (digest, logits)
        return logits
