"""A Hugging Face model folder (or hub id) as a source model, by its head: a transformers text classifier
(``*ForSequenceClassification``: ``model.task = "text-classification"``), an image classifier
(``*ForImageClassification``: ``"image-classification"``, see ``hf_image``) or a sentence-transformers folder (an
encoder, its pooling and normalisation: ``"text-embedding"``). Labels come from config.json's id2label.

The folder is copied into the run as it is (weights, config, tokenizer or image processor settings); the reference
every variant is held to is the folder's own model run by torch, and the ONNX export is that same module traced by
torch.onnx with a dynamic batch axis (and a dynamic sequence axis for text).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .._io import atomic_path, replace_dir
from ..errors import ExportError, RecipeError
from ..registry import Registry
from .hub import FOLDER_SUFFIXES, hub_origin, locate_hub_id
from .model import SOURCE_FORMATS, ModelInput, ModelOutput, SourceFormat, SourceModel

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"model.source: cannot read {path} ({exc}); is the folder complete?") from None


@dataclass(frozen=True)
class Head:
    """One kind of model a Hugging Face folder holds: how it is read, run as the reference, and exported."""

    name: str
    task: str  # the edgetl task it runs as
    architectures: str  # a regex matched against config.json's architectures; "" for the fallback (an encoder)
    # (folder, its config.json) -> (inputs, output width, metadata): what ``SourceModel`` says beyond the format
    read: Callable[[Path, dict[str, Any]], tuple[list[ModelInput], int | None, dict[str, str]]]
    reference: Callable[[Path], Any]  # the folder's model as a torch module, called with the inputs in order
    # (folder, the export's metadata) -> example input tensors by name, in the module's argument order
    example: Callable[[Path, dict[str, str]], dict[str, Any]]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # per input
    output: str = "logits"
    what: str = "classifier"  # the export record's words for the module


HEADS: Registry[Head] = Registry("Hugging Face model head")


def head_of(folder: Path) -> Head:
    """The folder's head by its config's architectures; an encoder (sentence-transformers adds pooling) when none
    names a head edgetl knows."""
    architectures = _json(folder / "config.json").get("architectures") or []
    for candidate in HEADS.values():
        if candidate.architectures and any(re.search(candidate.architectures, a) for a in architectures):
            return candidate
    return HEADS.get("embedding")


def head(folder: Path) -> str:
    """"sequence-classification", "image-classification" or "embedding"."""
    return head_of(folder).name


def task_of(folder: Path) -> str:
    """The edgetl task for a Hugging Face folder."""
    return head_of(folder).task


def config_labels(config: dict[str, Any]) -> list[str] | None:
    """config.json's id2label, unless it is transformers' placeholder (LABEL_0, LABEL_1, ...)."""
    id2label = config.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(len(id2label))]
    if not labels or all(label == f"LABEL_{i}" for i, label in enumerate(labels)) or not all(labels):
        return None
    return labels


def classes_metadata(config: dict[str, Any]) -> tuple[int | None, dict[str, str]]:
    """A classifier's output width (num_labels) and its labels as SourceModel metadata (none when placeholders)."""
    width = config.get("num_labels") or len(config.get("id2label") or {}) or None
    labels = config_labels(config)
    return width, ({"labels": json.dumps(labels)} if labels else {})


def _read(path: Path, settings: Any = None) -> SourceModel:
    config = _json(path / "config.json")
    if not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise RecipeError(f"model.source {path} has no .safetensors weights; save them with "
                          "model.save_pretrained(folder, safe_serialization=True) (edgetl does not unpickle .bin)")
    kind = head_of(path)
    wanted = getattr(settings, "output", "") or ""
    if wanted and wanted != kind.output:
        raise RecipeError(f"model.output {wanted!r}: a Hugging Face {kind.name} folder has one output, "
                          f"{kind.output!r}; drop model.output (--output)")
    inputs, width, metadata = kind.read(path, config)
    metadata = {"hf_model_type": str(config.get("model_type", "")), "hf_head": kind.name, **metadata}
    metadata.update(hub_origin(path) or {})
    output = ModelOutput(kind.output, (None, width), "float32")
    return SourceModel(path=path, format="hf", inputs=inputs, output_shape=output.shape, metadata=metadata,
                       outputs=[output], output=output.name)


def _copy(source: Path, destination: Path, metadata: dict[str, str]) -> None:
    """The folder's config, weights, tokenizer and image processor files (and its pooling settings), swapped in
    whole (a hub snapshot's symlinks copied as the files they point to)."""
    staging = destination.with_name(f".{destination.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and path.suffix in FOLDER_SUFFIXES and not any(p.startswith(".") for p in relative.parts) \
                and relative.parts[0] not in ("onnx", "openvino"):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / relative)
    replace_dir(staging, destination)


def reference_model(folder: Path):
    """What the folder's model computes, as a torch module: a classifier's logits, or the pooled embedding."""
    return head_of(folder).reference(folder)


def load_pretrained(auto_class, folder: Path):
    """``auto_class.from_pretrained`` on the local folder's safetensors weights, or a one-line error."""
    try:
        return auto_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise RecipeError(f"transformers cannot load {folder}: {str(exc).splitlines()[0][:200]}") from None


def _to_onnx(source: Path, destination: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The folder's module traced by torch.onnx (TorchScript exporter: seconds, one file), the batch axis dynamic
    (and the head's other dynamic axes: a text model's sequence)."""
    import warnings

    import onnx
    import torch

    kind = head_of(source)
    model = kind.reference(source)
    example = kind.example(source, metadata)
    axes = {name: kind.dynamic_axes.get(name, {0: "batch"}) for name in example} | {kind.output: {0: "batch"}}
    with atomic_path(destination) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, tuple(example.values()), str(tmp), input_names=list(example),
                                  output_names=[kind.output], dynamic_axes=axes, opset_version=17, dynamo=False)
        except Exception as exc:
            raise ExportError(f"torch.onnx could not export {source.name}: {str(exc).splitlines()[0][:200]}") from None
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))
    return {"format": "onnx", "files": [destination.name], "opset": 17,
            "exporter": f"torch.onnx (TorchScript) of {source.name}'s {kind.what}", "metadata": metadata}


# -- text heads --------------------------------------------------------------------------------------


def pooling(folder: Path) -> dict[str, Any]:
    """The sentence-transformers pipeline of ``folder``: pooling mode and whether embeddings are normalised
    (defaults: mean pooling, no normalisation, as sentence-transformers builds a bare transformer folder)."""
    modules = _json(folder / "modules.json") if (folder / "modules.json").is_file() else []
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    config = _json(folder / kinds["Pooling"] / "config.json") if "Pooling" in kinds and \
        (folder / kinds["Pooling"] / "config.json").is_file() else {}
    mode = "cls" if config.get("pooling_mode_cls_token") else "max" if config.get("pooling_mode_max_tokens") else "mean"
    limit = _json(folder / "sentence_bert_config.json").get("max_seq_length") if \
        (folder / "sentence_bert_config.json").is_file() else None
    return {"mode": mode, "normalize": "Normalize" in kinds, "max_seq_length": limit}


def _token_inputs(path: Path) -> list[ModelInput]:
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise RecipeError(f"model.source {path} has no tokenizer (tokenizer.json or vocab.txt); save the tokenizer "
                          "with the model (tokenizer.save_pretrained(folder))")
    return [ModelInput(name, (None, None), "int64") for name in TOKEN_INPUTS]


def _read_text_classifier(path: Path, config: dict[str, Any]):
    return (_token_inputs(path), *classes_metadata(config))


def _read_encoder(path: Path, config: dict[str, Any]):
    width = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    return _token_inputs(path), width, {"pooling": json.dumps(pooling(path))}


def _token_example(folder: Path, metadata: dict[str, str]) -> dict[str, Any]:
    import torch

    return {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long),
            "token_type_ids": torch.zeros(2, 8, dtype=torch.long)}


def classifier(folder: Path):
    """A transformers sequence classifier, called with input_ids, attention_mask (and token_type_ids): logits."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = load_pretrained(AutoModelForSequenceClassification, folder)

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return Classifier().eval()


def embedder(folder: Path):
    """The folder's sentence embedder as a torch module: encoder, pooling over real tokens, optional L2 norm;
    called with input_ids, attention_mask (and token_type_ids), it returns (N, hidden) float embeddings."""
    import torch
    from transformers import AutoModel

    settings = pooling(folder)
    encoder = load_pretrained(AutoModel, folder)

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder.eval()

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            if settings["mode"] == "cls":
                pooled = tokens[:, 0]
            elif settings["mode"] == "max":
                pooled = tokens.masked_fill(mask == 0, -1e9).max(1).values
            else:
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1) if settings["normalize"] else pooled

    return Embedder().eval()


_TOKEN_AXES = {name: {0: "batch", 1: "sequence"} for name in TOKEN_INPUTS}
HEADS.register("sequence-classification", Head(
    "sequence-classification", "text-classification", r"ForSequenceClassification$", _read_text_classifier,
    classifier, _token_example, _TOKEN_AXES))
HEADS.register("embedding", Head(
    "embedding", "text-embedding", "", _read_encoder, embedder, _token_example, _TOKEN_AXES, output="embeddings",
    what="encoder with its pooling"))


HF_FOLDER = SOURCE_FORMATS.register("hf", SourceFormat(
    "hf", (), _read, _copy, "model", "torch:cpu", ("onnx", "openvino"), reference=reference_model, to_onnx=_to_onnx,
    detect=is_hf_folder, locate=locate_hub_id))
