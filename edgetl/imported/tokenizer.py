"""A text model given as a file (ONNX, OpenVINO IR) and its tokenizer (``model.tokenizer``): the folder a Hugging
Face tokenizer was saved to (``tokenizer.json``, or a BERT ``vocab.txt``), or one such file.

The run keeps a copy beside the model (``runs/<name>/source/tokenizer.json``, with the folder's
``tokenizer_config.json`` and the like): preprocessing reads it there and bundles ship it. A lone ``vocab.txt``
becomes a ``tokenizer.json`` (a BERT WordPiece tokenizer, lower-casing unless tokenizer_config.json says not, as
transformers' BertTokenizer does).

>>> preprocess = token_preprocess(read_source("model.onnx", ModelConfig(tokenizer="all-MiniLM-L6-v2/")), None)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..errors import BackendUnavailable, RecipeError

# A tokenizer_config.json's model_max_length above this is transformers' "no limit" placeholder (1e30), not a limit
SANE_LENGTH = 8192
DEFAULT_LENGTH = 512  # BERT's position limit: what a tokenizer that states none is truncated at


def tokenizer_files(spec: Path) -> dict[str, Path]:
    """{name in the run: path} of the tokenizer ``spec`` names: a folder's tokenizer files, or the one file."""
    from ..preprocess.text import TOKENIZER_FILES

    if spec.is_dir():
        files = {name: spec / name for name in TOKENIZER_FILES if (spec / name).is_file()}
    elif spec.is_file() and spec.suffix.lower() in (".json", ".txt"):
        files = {"tokenizer.json" if spec.suffix.lower() == ".json" else "vocab.txt": spec}
    else:
        files = {}
    if "tokenizer.json" not in files and "vocab.txt" not in files:
        raise RecipeError(f"model.tokenizer {str(spec)!r} is not a tokenizer; give the folder a Hugging Face tokenizer "
                          "was saved to (tokenizer.save_pretrained: tokenizer.json or vocab.txt), or one such file")
    return files


def _json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"model.tokenizer: cannot read {path} ({exc}); re-save the tokenizer") from None
    return data if isinstance(data, dict) else {}


def load_tokenizer(files: dict[str, Path]):
    """The ``tokenizers.Tokenizer`` of ``files``: tokenizer.json as saved, or a BERT WordPiece tokenizer built on
    vocab.txt with tokenizer_config.json's settings (transformers' BertTokenizer defaults where it has none)."""
    try:
        from tokenizers import BertWordPieceTokenizer, Tokenizer
        from tokenizers.models import WordPiece
    except ImportError:
        raise BackendUnavailable("text models need the tokenizers package; run `pip install tokenizers`") from None
    path = files.get("tokenizer.json", files.get("vocab.txt"))
    try:
        if "tokenizer.json" in files:
            return Tokenizer.from_file(str(path))
        config = _json(files.get("tokenizer_config.json"))
        return BertWordPieceTokenizer(WordPiece.read_file(str(path)), lowercase=bool(config.get("do_lower_case", True)),
                                      strip_accents=config.get("strip_accents"),
                                      handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)))._tokenizer
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception for a malformed file
        raise RecipeError(f"model.tokenizer: cannot read {path} ({str(exc).splitlines()[0][:120]}); is it a "
                          "Hugging Face tokenizer.json or a WordPiece vocab.txt?") from None


def _pad_token(config: dict[str, Any], tokenizer) -> str:
    """tokenizer_config.json's pad token, else the one tokenizer.json pads with, else [PAD] or <pad> if known."""
    token = config.get("pad_token")
    token = token.get("content") if isinstance(token, dict) else token
    if not token and tokenizer.padding:
        token = tokenizer.padding.get("pad_token")
    for name in [token] if token else ["[PAD]", "<pad>"]:
        if tokenizer.token_to_id(name) is not None:
            return name
    raise RecipeError(f"model.tokenizer has no pad token ({token or '[PAD] or <pad>'} is not in its vocabulary); "
                      "give a tokenizer folder whose tokenizer_config.json names its pad_token")


def default_length(model: Any, config: dict[str, Any]) -> int:
    """The max_length a text model file (``model``: an ``edgetl.imported.SourceModel``, not imported here: the
    model module imports this one) is run at when text.max_length is 0: the model's own edgetl
    preprocessing, the tokenizer folder's sentence-transformers max_seq_length, its tokenizer_config.json
    model_max_length (when it is a real limit), else 512."""
    own = (model.preprocess or {}).get("max_length") if (model.preprocess or {}).get("kind") == "text" else None
    folder = model.tokenizer if model.tokenizer is not None and model.tokenizer.is_dir() else None
    sentence = _json(folder / "sentence_bert_config.json").get("max_seq_length") if folder else None
    stated = config.get("model_max_length")
    for value in (own, sentence, stated):
        if isinstance(value, (int, float)) and 2 <= value <= SANE_LENGTH:
            return int(value)
    return DEFAULT_LENGTH


def token_preprocess(model: Any, max_length: int | None):
    """The TextPreprocess of a text model file: ``model.tokenizer``'s settings, only the token inputs the model
    has, at ``max_length`` (None: ``default_length``). One-line errors for a model without token inputs or
    without a tokenizer."""
    from ..preprocess.text import BERT_INPUTS, TextPreprocess

    names = [i.name for i in model.inputs]
    if "input_ids" not in names or any(i.name not in BERT_INPUTS or not i.dtype.startswith("int")
                                       for i in model.inputs):
        found = ", ".join(f"{i.name} ({i.dtype})" for i in model.inputs)
        raise RecipeError(f"model.source {model.path.name} takes {found}, not token ids; a text model takes "
                          f"input_ids and optionally attention_mask, token_type_ids (int64); is model.task right?")
    if model.tokenizer is None:
        raise RecipeError(f"model.source {model.path.name} is a text model without its tokenizer; give "
                          "model.tokenizer (--tokenizer DIR): the folder its tokenizer was saved to "
                          "(tokenizer.json or vocab.txt)")
    files = tokenizer_files(model.tokenizer)
    config = _json(files.get("tokenizer_config.json"))
    tokenizer = load_tokenizer(files)
    # tokenizer.json lower-cases in its own normalizer; a converted vocab.txt's is built lower-casing by default
    lowercase = bool(config.get("do_lower_case", "tokenizer.json" not in files))
    return TextPreprocess(max_length=max_length or default_length(model, config), lowercase=lowercase,
                          pad_token=_pad_token(config, tokenizer),
                          input_names=tuple(name for name in BERT_INPUTS if name in names))


def bring_tokenizer(spec: Path, folder: Path) -> None:
    """The tokenizer files into ``folder`` (beside the model), a tokenizer.json made from a lone vocab.txt; files
    of an earlier tokenizer there are removed."""
    from ..preprocess.text import TOKENIZER_FILES

    files = tokenizer_files(spec)
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(path, tmp)
    if "tokenizer.json" not in files:
        with atomic_path(folder / "tokenizer.json") as tmp:
            load_tokenizer(files).save(str(tmp))
    for name in TOKENIZER_FILES:
        if name not in files and name != "tokenizer.json":
            (folder / name).unlink(missing_ok=True)
