"""Where a run's models come from: ``trained`` (fine-tune ``model.backbone``, distill a student) or ``imported``
(``model.source``: a model file the user already has). ``ORIGINS`` holds both; ``RunContext.origin`` picks one by
the recipe. Everything downstream (export of the other formats, quantize, validate, bench, select, ship) is the
same; an origin only says where a model's files live, how to load it, what its exports start from and what
every variant is held to (the torch model, or the user's original file on its own runtime).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from .._io import is_fresh, read_json, write_json
from ..errors import EdgetlError
from ..registry import Registry
from ..tasks import STUDENT, TEACHER

SOURCE_DIR, SOURCE_META = "source", "checkpoint.json"
HUB_KEYS = ("hub_id", "hub_commit")  # a Hugging Face hub source: the id and the snapshot's commit


class Trained:
    """Models edgetl trains: the teacher fine-tuned from ``model.backbone``, the student distilled from it."""

    name = "trained"
    folders = {TEACHER: "finetune", STUDENT: "distill"}
    commands = {TEACHER: "finetune", STUDENT: "distill"}
    has_torch = True

    def model_keys(self, recipe) -> list[str]:
        return [TEACHER, STUDENT] if recipe.distill.enabled else [TEACHER]

    def splits(self, ctx):
        return ctx.task.load_splits(ctx.recipe)

    def teacher(self, ctx):
        from .._io import write_text
        from ..train.launch import is_main_process
        from .transfer import without_scratch

        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        if is_main_process():  # launched on several processes: only the main one writes
            write_text(ctx.run_dir / "recipe.toml", ctx.recipe.to_toml())
        ctx.log(f"data: {ctx.recipe.data.source} {ctx.splits.sizes()}, {len(ctx.splits.classes)} classes "
                f"({ctx.task.name})")
        return ctx.task.finetune(without_scratch(ctx.recipe), ctx.splits, ctx.model_dir(TEACHER),
                                 progress=ctx.progress, log=ctx.log)

    def student(self, ctx):
        from .transfer import without_scratch

        if not ctx.recipe.distill.enabled:
            return None
        teacher, _ = ctx.model(TEACHER)
        return ctx.task.distill(without_scratch(ctx.recipe), ctx.splits, teacher, ctx.model_dir(STUDENT),
                                teacher_dir=ctx.model_dir(TEACHER), progress=ctx.progress, log=ctx.log)

    def checkpoint_files(self, ctx, folder: Path) -> list[Path]:
        return ctx.task.checkpoint_files(folder)

    def load(self, ctx, folder: Path):
        return ctx.task.load_checkpoint(folder)

    def preprocess_of(self, ctx, meta: dict[str, Any], folder: Path):
        return ctx.task.preprocess_of(meta, folder)

    def reference_runner(self, ctx, model_key: str):
        from ..runners import open_runner

        model, _ = ctx.model(model_key)
        return open_runner(model, "torch:cpu")

    def export(self, ctx, model_key: str, fmt: str, folder: Path, source: Callable[[str], Path]) -> dict[str, Any]:
        return ctx.task.export(ctx, model_key, fmt, folder, source)

    def summary(self, ctx, teacher_result) -> dict[str, Any]:
        """The fine-tune's accuracies, and ``transfer``: fine-tuning against the probe and the scratch baseline."""
        from .transfer import transfer_of

        return {"probe_test_accuracy": teacher_result.probe_test_accuracy,
                "test_accuracy": teacher_result.test_accuracy, "transfer": transfer_of(ctx)}

    def provenance(self, ctx) -> dict[str, str] | None:
        """What the bundle's manifest says the model came from beyond the recipe and data: nothing here."""
        return None

    def card(self, ctx) -> dict[str, Any]:
        from .transfer import transfer_of

        finetuned = read_json(ctx.model_dir(TEACHER) / "result.json")
        return {"test_accuracy": finetuned.get("test_accuracy"),
                "probe_test_accuracy": finetuned.get("probe_test_accuracy"), "transfer": transfer_of(ctx)}


class Imported:
    """The user's own model file (``model.source``): copied into ``runs/<name>/source/`` with the labels and
    preprocessing it takes, never trained; its variants are held to the original file run on its own runtime."""

    name = "imported"
    folders = {TEACHER: SOURCE_DIR}
    commands = {TEACHER: "run"}
    has_torch = False  # the reference is the original file on its own runtime

    def model_keys(self, recipe) -> list[str]:
        return [TEACHER]

    # -- the import -------------------------------------------------------------------------------
    def teacher(self, ctx):
        """Copy the source model into the run (once per source file and ``model`` settings), with the labels and
        preprocessing it takes; returns the import record."""
        from ..imported import read_source
        from ..imported.model import source_format

        folder = ctx.model_dir(TEACHER)
        model = read_source(ctx.recipe.model.source, ctx.recipe.model)
        fmt = source_format(model.path)
        key = {"source": model.sha256(), "model": ctx.recipe.section_hash("model", "text")}  # text: max_length
        record = folder / SOURCE_META
        if is_fresh(record, key) and (folder / fmt.file).exists():
            return read_json(record)
        preprocess = ctx.task.source_preprocess(ctx.recipe, model)
        labels = self._labels(ctx, model)
        folder.mkdir(parents=True, exist_ok=True)
        fmt.bring_into(model, folder / fmt.file)
        meta = {"key": key, "source": str(model.path.resolve()), "source_sha256": key["source"], "format": fmt.name,
                "file": fmt.file, "runtime": fmt.runtime, "classes": labels, "num_classes": model.num_outputs,
                "preprocess": preprocess.to_dict(), "backbone": model.path.name, "opset": model.opset,
                "inputs": [dataclasses.asdict(i) for i in model.inputs], "output": model.output,
                **{k: v for k, v in model.metadata.items() if k in HUB_KEYS}}
        write_json(record, meta)
        named_by = (f"none (an {ctx.task.output} model)" if labels == [] else "from model.labels"
                    if ctx.recipe.model.labels else "from the model" if model.labels else "from the data")
        output = (f"output {model.output!r} {list(model.output_shape)} of {len(model.outputs)} "
                  f"({', '.join(o.name for o in model.outputs)}; the others cut)" if len(model.outputs) > 1
                  else f"{model.num_outputs} outputs")
        ctx.log(f"source: {model.path} ({fmt.name}, {len(model.inputs)} input(s) "
                f"{', '.join(str(list(i.shape)) for i in model.inputs)}, {output}, labels {named_by})")
        return meta

    def _labels(self, ctx, model) -> list[str] | None:
        """model.labels, else the model's own; None: the data's classes are the labels (checked in ``splits``).
        A model whose outputs are not class logits (an embedding, regression values) has none: ``[]``."""
        from ..imported import read_labels

        if ctx.task.output != "logits":
            return []
        labels = read_labels(ctx.recipe.model.labels) if ctx.recipe.model.labels else model.labels
        if labels is not None and model.num_outputs is not None and len(labels) != model.num_outputs:
            raise EdgetlError(f"{len(labels)} labels for a model with {model.num_outputs} outputs "
                              f"({ctx.recipe.model.labels or model.path.name}); give one label per output")
        return labels

    def splits(self, ctx):
        """The data with its labels renumbered to the model's outputs (class folders are matched to the model's
        labels by name); without labels anywhere, the data's classes must be as many as the outputs."""
        from ..imported import match_labels

        meta = self._meta(ctx)
        splits = ctx.task.load_splits(ctx.recipe, self.preprocess_of(ctx, meta, ctx.model_dir(TEACHER)))
        labels = meta["classes"]
        if ctx.task.output != "logits":  # vectors or values, not classes: labels in the data are not used
            return _each(splits, _unlabelled)
        if not splits.train.labelled:
            ctx.log(f"data: no labels: accuracy is not measured; every variant is held to its agreement with the "
                    f"source model on the {ctx.task.samples}")
            names = labels or [f"class_{i}" for i in range(meta["num_classes"] or 0)]
            if not names:
                raise EdgetlError("the model's output size is dynamic and neither it, model.labels nor the data "
                                  "names its classes; give model.labels (--labels)")
            return _each(splits, lambda split: dataclasses.replace(split, classes=names))
        if labels is None:
            if meta["num_classes"] is not None and len(splits.classes) != meta["num_classes"]:
                raise EdgetlError(f"the data has {len(splits.classes)} classes but the model has {meta['num_classes']} "
                                  "outputs and no labels; give model.labels (--labels) with the model's class names")
            ctx.log(f"labels: the model names none; taking output i as the data's i-th class in sorted order "
                    f"({', '.join(splits.classes[:5])}{', ...' if len(splits.classes) > 5 else ''}); give model.labels "
                    "(--labels) if the model orders them otherwise")
            return splits
        mapping = match_labels(splits.classes, labels)
        return _each(splits, lambda split: dataclasses.replace(split, labels=np_take(mapping, split.labels),
                                                               classes=labels))

    def _meta(self, ctx) -> dict[str, Any]:
        record = ctx.model_dir(TEACHER) / SOURCE_META
        if not record.is_file():
            return self.teacher(ctx)
        return read_json(record)

    # -- what the pipeline asks of an origin ----------------------------------------------------------
    def student(self, ctx):
        return None

    def checkpoint_files(self, ctx, folder: Path) -> list[Path]:
        meta = Path(folder) / SOURCE_META
        file = Path(folder) / (read_json(meta)["file"] if meta.is_file() else "model.onnx")
        if file.is_dir():  # a Hugging Face folder: its config and weights
            return [*sorted(p for p in file.iterdir() if p.suffix in (".json", ".safetensors")), meta]
        return [file, *([file.with_suffix(".bin")] if file.suffix == ".xml" else []), meta]

    def load(self, ctx, folder: Path):
        """(the model file, its metadata, with the data's classes as labels when the model has none)."""
        meta = read_json(Path(folder) / SOURCE_META)
        if meta["classes"] is None:
            meta = {**meta, "classes": ctx.splits.classes}
        return Path(folder) / meta["file"], meta

    def preprocess_of(self, ctx, meta: dict[str, Any], folder: Path):
        from ..preprocess import load_preprocess

        model = Path(folder) / meta["file"]
        return load_preprocess(meta["preprocess"], model if model.is_dir() else folder)  # a folder holds a tokenizer

    def reference_runner(self, ctx, model_key: str):
        from ..runners import open_runner

        from ..imported.model import source_format

        path, meta = ctx.model(model_key)
        source = source_format(path)
        return open_runner(source.reference(path) if source.reference else path, meta["runtime"])

    def export(self, ctx, model_key: str, fmt: str, folder: Path, source: Callable[[str], Path]) -> dict[str, Any]:
        """The source's own format: the original graph, with labels and preprocessing added to its metadata; onnx
        from a torch.export program: torch.onnx's exporter; openvino from ONNX: OpenVINO's converter."""
        from ..export import export_openvino
        from ..imported.model import source_format

        path, meta = ctx.model(model_key)
        metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in ctx.model_metadata(model_key).items()}
        if fmt == meta["format"]:  # the original graph, with labels and preprocessing added to its metadata
            source = source_format(path)
            source.copy(path, folder / source.file, metadata)
            files = [source.file] + (["model.bin"] if fmt == "openvino" else [])
            return {"format": fmt, "files": files, "opset": meta.get("opset"),
                    "exporter": f"the source model as is ({Path(meta['source']).name})", "metadata": metadata}
        if fmt == "onnx" and source_format(path).to_onnx:
            return source_format(path).to_onnx(path, folder / "model.onnx", metadata)
        if fmt == "openvino":
            return export_openvino(source("onnx"), folder / "model.xml",
                                   compress_to_fp16=ctx.recipe.export.compress_to_fp16, metadata=metadata).to_dict()
        raise EdgetlError(f"export.formats: cannot make {fmt} from a {meta['format']} source model; "
                          "remove it from export.formats")

    def summary(self, ctx, teacher_result) -> dict[str, Any]:
        """The source, and its accuracy on the test split (None: the data has no labels)."""
        accuracy = None
        if ctx.splits.test.labelled:
            reference = ctx.reference_logits(TEACHER)
            accuracy = round(float((reference.argmax(1) == ctx.splits.test.labels).mean() * 100), 4)
        return {"source": teacher_result["source"], "source_sha256": teacher_result["source_sha256"],
                "test_accuracy": accuracy}

    def provenance(self, ctx) -> dict[str, str] | None:
        meta = self._meta(ctx)
        return {"file": Path(meta["source"]).name, "sha256": meta["source_sha256"], "format": meta["format"],
                **{k: meta[k] for k in HUB_KEYS if k in meta}}

    def card(self, ctx) -> dict[str, Any]:
        meta = self._meta(ctx)
        name = f"{meta['hub_id']}@{meta['hub_commit'][:12]}" if "hub_id" in meta else Path(meta["source"]).name
        return {"source_model": f"{name} (sha256 {meta['source_sha256'][:16]})",
                "weights_license": "the source model's own (edgetl did not train it)",
                "test_accuracy": self.summary(ctx, meta)["test_accuracy"]}


def _each(splits, change):
    """``splits`` with ``change`` applied to each of train, val and test (what else they carry kept)."""
    return dataclasses.replace(splits, train=change(splits.train), val=change(splits.val), test=change(splits.test))


def _unlabelled(split):
    import numpy as np

    from ..data.dataset import UNLABELLED

    return dataclasses.replace(split, labels=np.full(len(split.labels), UNLABELLED, dtype=np.int64), classes=[])


def np_take(mapping: list[int], labels):
    import numpy as np

    return np.asarray(mapping, dtype=np.int64)[labels]


ORIGINS: Registry[Any] = Registry("model origin")
ORIGINS.register("trained", Trained())
ORIGINS.register("imported", Imported())


def origin_of(recipe):
    return ORIGINS.get("imported" if recipe.model.source else "trained")
