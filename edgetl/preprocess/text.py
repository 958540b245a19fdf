"""Text preprocessing, defined once and saved with every bundle as preprocess.json.

Tokenizes with the ``tokenizers`` package and a ``tokenizer.json`` alone: the bundle's predict path needs
neither transformers nor torch.

>>> pre = TextPreprocess.from_model_dir("runs/x/model", max_length=64)
>>> pre.encode(["card not working", "where is my refund?"])["input_ids"].shape
(2, 9)
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, DataError, RecipeError
from .image import IMAGE_SUFFIXES

TOKENIZER_FILE = "tokenizer.json"
# Files a Hugging Face tokenizer folder may hold; exports copy the ones present beside the model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PADDING = ("longest", "max_length")


@dataclass(frozen=True)
class TextPreprocess:
    """How raw text becomes model inputs: lower-case, tokenize, truncate to ``max_length``, pad, int64 arrays.

    ``padding``: "longest" pads each batch to its longest text (dynamic-shape models; fastest), "max_length"
    pads every batch to ``max_length`` (static-shape models). ``max_length`` counts the special tokens.
    ``root`` is the folder holding ``tokenizer_file``; it is not saved (a bundle's own folder is used).
    """

    max_length: int = 128
    lowercase: bool = True
    padding: str = "longest"
    truncation: bool = True
    tokenizer_file: str = TOKENIZER_FILE
    pad_token: str = "[PAD]"
    input_names: tuple[str, ...] = BERT_INPUTS
    kind: str = "text"  # tells a text preprocess.json from an image one
    root: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise RecipeError(f"text max_length must be at least 2 (room for [CLS] and [SEP]), got {self.max_length}")
        if self.padding not in PADDING:
            raise RecipeError(f"text padding must be one of {', '.join(PADDING)}, got {self.padding!r}")
        unknown = set(self.input_names) - set(BERT_INPUTS)
        if "input_ids" not in self.input_names or unknown:
            raise RecipeError(
                f"text input_names must include input_ids and be among {BERT_INPUTS}, got {self.input_names}"
            )

    # -- the tokenizer ----------------------------------------------------------------------
    @property
    def tokenizer_path(self) -> Path:
        if self.root is None:
            raise DataError("TextPreprocess has no tokenizer folder; use from_model_dir(...) or with_root(folder)")
        return Path(self.root) / self.tokenizer_file

    def with_root(self, root: str | os.PathLike) -> "TextPreprocess":
        """The same settings, reading the tokenizer from ``root`` (e.g. a bundle folder)."""
        return replace(self, root=Path(root))

    def tokenizer(self, truncate: bool = True):
        """The ``tokenizers.Tokenizer``, truncating at ``max_length`` (when ``truncate``) and never padding."""
        path = self.tokenizer_path
        if not path.is_file():
            raise DataError(
                f"tokenizer file not found: {path}; the model folder or bundle must hold {self.tokenizer_file}"
            )
        limit = self.max_length if truncate and self.truncation else 0
        return _load_tokenizer(str(path.resolve()), path.stat().st_mtime_ns, limit)

    # -- texts -> arrays --------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Texts -> {input name: int64 array (N, L)}; L is the longest text (<= max_length) or max_length."""
        texts = self._check(texts)
        tokenizer = self.tokenizer()
        encodings = tokenizer.encode_batch(texts)
        lengths = [len(encoding.ids) for encoding in encodings]
        if not self.truncation and lengths and max(lengths) > self.max_length:
            position = int(np.argmax(lengths))
            raise DataError(f"text #{position} has {lengths[position]} tokens > max_length {self.max_length}")
        width = self.max_length if self.padding == "max_length" else max(lengths, default=0)
        pad_id = tokenizer.token_to_id(self.pad_token)
        if pad_id is None:
            raise DataError(
                f"{self.tokenizer_path} has no pad token {self.pad_token!r}; set pad_token in preprocess.json"
            )
        ids = np.full((len(texts), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = lengths[row]
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self.input_names}

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return self.encode(texts)

    # -- the preprocessing protocol (see edgetl.preprocess) -------------------------------------
    def inputs(self, data, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Named token arrays for ``rows`` of a LabeledTexts, padded to the longest of them."""
        return self.encode([data.texts[i] for i in np.asarray(rows, dtype=np.int64)])

    def batch_order(self, data) -> np.ndarray:
        """Texts by token length (stable): batches of similar lengths pad little (3.4x faster validation)."""
        return np.argsort(self.token_lengths(data.texts), kind="stable")

    def describe(self) -> str:
        return (f"{'lower-case, ' if self.lowercase else ''}tokenize with {self.tokenizer_file}, at most "
                f"{self.max_length} tokens, pad to the {'longest text' if self.padding == 'longest' else 'maximum'}")

    # -- what a bundle needs from its preprocessing (see edgetl.bundle) --------------------------
    def required_files(self) -> list[str]:
        """Files the bundle must hold beside preprocess.json: the tokenizer."""
        return [self.tokenizer_file]

    def example_inputs(self, count: int) -> dict[str, np.ndarray]:
        """``count`` rows of model input for a smoke test: one sentence through the tokenizer."""
        return self.encode(["edgetl verify: is this bundle intact?"] * count)

    def input_problem(self, inputs: Any) -> str | None:
        """Why tokenized ``inputs`` do not fit this model, or None when they do."""
        names = sorted(inputs) if isinstance(inputs, dict) else None
        if names != sorted(self.input_names):
            return f"inputs {names} are not the model's token inputs {sorted(self.input_names)}"
        return None

    def manifest_fields(self) -> dict[str, Any]:
        """What manifest.json says about the model input."""
        return {"inputs": list(self.input_names), "max_length": self.max_length, "tokenizer": self.tokenizer_file}

    def card_fields(self) -> dict[str, str]:
        """The model card's input wording (keys listed in edgetl.bundle.card)."""
        return {
            "task": "text classification",
            "description": "Text classifier shipped by edgetl.",
            "samples": "texts",
            "input": (f"int64 {', '.join(self.input_names)}, each (N, L), L ≤ {self.max_length} tokens "
                      "(dynamic batch and sequence axes)"),
            "steps": (f"{'lower-case, ' if self.lowercase else ''}tokenize with {self.tokenizer_file} "
                      f"(`tokenizers` package), truncate to {self.max_length} tokens "
                      f"({'on' if self.truncation else 'off'}), pad with {self.pad_token} to "
                      f"{'the longest text of the batch' if self.padding == 'longest' else 'max_length'}"),
            "example": '"where is my card?"',
            "example_code": '"where is my card?"',
            "needs": "numpy, the `tokenizers` package and onnxruntime or OpenVINO",
            "not_needed": "no torch, no transformers",
            "unlike": "texts unlike it (other domains, languages, lengths)",
        }

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, special tokens included: the data for choosing ``max_length``."""
        return [len(encoding.ids) for encoding in self.tokenizer(truncate=False).encode_batch(self._check(texts))]

    def _check(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]  # a lone string is a Sequence of characters
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text #{position} is a {type(text).__name__}, not a string")
            if Path(text).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(text):  # a silent nonsense answer
                raise DataError(f"{text} is an image file, but this model classifies texts; pass the texts "
                                "themselves (or use an image bundle)")
        return [text.lower() for text in texts] if self.lowercase else texts

    # -- saving -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        data["input_names"] = list(self.input_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: str | os.PathLike | None = None) -> "TextPreprocess":
        if data.get("kind", "text") != "text":
            raise DataError(f"preprocess.json describes {data.get('kind')!r} inputs, not text")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "root"}
        if "input_names" in known:
            known["input_names"] = tuple(known["input_names"])
        return cls(**known, root=Path(root) if root is not None else None)

    @classmethod
    def from_model_dir(
        cls, model_dir: str | os.PathLike, *, max_length: int | None = None, **overrides: Any
    ) -> "TextPreprocess":
        """Settings from a Hugging Face folder: lower-casing and length limit from tokenizer_config.json/config.json."""
        root = Path(model_dir)
        if not (root / TOKENIZER_FILE).is_file():
            raise DataError(
                f"{root} has no {TOKENIZER_FILE}; save the fast tokenizer there (tokenizer.save_pretrained)"
            )
        config = _read_json(root / "tokenizer_config.json")
        model_config = _read_json(root / "config.json")
        limit = int(model_config.get("max_position_embeddings") or config.get("model_max_length") or 512)
        length = max_length or min(int(config.get("model_max_length") or limit), limit)
        if length > limit:
            raise RecipeError(f"max_length {length} exceeds the model's {limit} positions; choose at most {limit}")
        settings: dict[str, Any] = {
            "max_length": length,
            "lowercase": bool(config.get("do_lower_case", False)),
            "pad_token": str(config.get("pad_token") or "[PAD]"),
        }
        if model_config.get("type_vocab_size", 2) == 0 or model_config.get("model_type") in {"distilbert", "roberta"}:
            settings["input_names"] = ("input_ids", "attention_mask")
        settings.update(overrides)
        return cls(**settings, root=root)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); re-save the model folder") from None
    return data if isinstance(data, dict) else {}


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str, mtime_ns: int, truncate_at: int):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BackendUnavailable("text models need the tokenizers package; run `pip install tokenizers`") from None
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # the Rust side raises plain Exception for malformed files
        raise DataError(f"cannot read tokenizer {path}: {exc}; is it a Hugging Face fast tokenizer.json?") from None
    # A tokenizer.json may carry its own padding/truncation (all-MiniLM-L6-v2 pads everything to 128): ours rule.
    tokenizer.no_padding()
    if truncate_at:
        tokenizer.enable_truncation(truncate_at)
    else:
        tokenizer.no_truncation()
    return tokenizer
