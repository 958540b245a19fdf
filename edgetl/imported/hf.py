"""A Hugging Face model folder as a source model: a transformers text classifier (``*ForSequenceClassification``,
labels from its id2label: ``model.task = "text-classification"``) or a sentence-transformers folder (an encoder, its
pooling and normalisation: ``model.task = "text-embedding"``).

The folder is copied into the run as it is (weights, config, tokenizer); the reference every variant is held to is
the folder's own model run by torch (transformers' ``AutoModel`` with the folder's pooling), and the ONNX export is
that same module traced by torch.onnx with dynamic batch and sequence axes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .._io import atomic_path, replace_dir
from ..errors import ExportError, RecipeError
from .model import SOURCE_FORMATS, ModelInput, SourceFormat, SourceModel

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_COPIED = {".json", ".safetensors", ".txt", ".model"}  # config, weights, tokenizer (vocab / sentencepiece)


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"model.source: cannot read {path} ({exc}); is the folder complete?") from None


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


def head(folder: Path) -> str:
    """"sequence-classification" for a transformers text classifier (its config's architectures say so), else
    "embedding" (an encoder: sentence-transformers adds pooling)."""
    architectures = _json(folder / "config.json").get("architectures") or []
    return "sequence-classification" if any(a.endswith("ForSequenceClassification") for a in architectures) \
        else "embedding"


def task_of(folder: Path) -> str:
    """The edgetl task for a Hugging Face folder."""
    return "text-classification" if head(folder) == "sequence-classification" else "text-embedding"


def _labels(config: dict[str, Any]) -> list[str] | None:
    """config.json's id2label, unless it is transformers' placeholder (LABEL_0, LABEL_1, ...)."""
    id2label = config.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(len(id2label))]
    if not labels or all(label == f"LABEL_{i}" for i, label in enumerate(labels)) or not all(labels):
        return None
    return labels


def _read(path: Path, config: Any = None) -> SourceModel:
    config = _json(path / "config.json")
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise RecipeError(f"model.source {path} has no tokenizer (tokenizer.json or vocab.txt); save the tokenizer "
                          "with the model (tokenizer.save_pretrained(folder))")
    weights = [p for p in path.iterdir() if p.suffix == ".safetensors"]
    if not weights:
        raise RecipeError(f"model.source {path} has no .safetensors weights; save them with "
                          "model.save_pretrained(folder, safe_serialization=True) (edgetl does not unpickle .bin)")
    inputs = [ModelInput(name, (None, None), "int64") for name in TOKEN_INPUTS]
    metadata = {"hf_model_type": str(config.get("model_type", "")), "hf_head": head(path)}
    if metadata["hf_head"] == "sequence-classification":
        width = config.get("num_labels") or len(config.get("id2label") or {}) or None
        if _labels(config):
            metadata["labels"] = json.dumps(_labels(config))
    else:
        width = config.get("hidden_size") or config.get("dim") or config.get("d_model")
        metadata["pooling"] = json.dumps(pooling(path))
    return SourceModel(path=path, format="hf", inputs=inputs, output_shape=(None, width), metadata=metadata)


def _copy(source: Path, destination: Path, metadata: dict[str, str]) -> None:
    """The folder's config, weights and tokenizer files (and its pooling settings), swapped in whole."""
    staging = destination.with_name(f".{destination.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and path.suffix in _COPIED and not any(p.startswith(".") for p in relative.parts) \
                and relative.parts[0] not in ("onnx", "openvino"):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / relative)
    replace_dir(staging, destination)


def reference_model(folder: Path):
    """What the folder's model computes, as a torch module: the classifier's logits, or the pooled embedding."""
    return classifier(folder) if head(folder) == "sequence-classification" else embedder(folder)


def _load(auto_class, folder: Path):
    """``auto_class.from_pretrained`` on the local folder's safetensors weights, or a one-line error."""
    try:
        return auto_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise RecipeError(f"transformers cannot load {folder}: {str(exc).splitlines()[0][:200]}") from None


def classifier(folder: Path):
    """A transformers sequence classifier, called with input_ids, attention_mask (and token_type_ids): logits."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = _load(AutoModelForSequenceClassification, folder)

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
    encoder = _load(AutoModel, folder)

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


def _to_onnx(source: Path, destination: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The embedder traced by torch.onnx (TorchScript exporter: seconds, one file), batch and sequence dynamic."""
    import warnings

    import onnx
    import torch

    model = reference_model(source)
    output = "logits" if head(source) == "sequence-classification" else "embeddings"
    example = {name: torch.ones(2, 8, dtype=torch.long) for name in TOKEN_INPUTS}
    example["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in TOKEN_INPUTS} | {output: {0: "batch"}}
    with atomic_path(destination) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example["input_ids"], example["attention_mask"], example["token_type_ids"]),
                                  str(tmp), input_names=list(TOKEN_INPUTS), output_names=[output],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
        except Exception as exc:
            raise ExportError(f"torch.onnx could not export {source.name}: {str(exc).splitlines()[0][:200]}") from None
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))
    what = "classifier" if output == "logits" else "encoder with its pooling"
    return {"format": "onnx", "files": [destination.name], "opset": 17,
            "exporter": f"torch.onnx (TorchScript) of {source.name}'s {what}", "metadata": metadata}


HF_FOLDER = SOURCE_FORMATS.register("hf", SourceFormat(
    "hf", (), _read, _copy, "model", "torch:cpu", ("onnx", "openvino"), reference=reference_model, to_onnx=_to_onnx,
    detect=is_hf_folder))
