"""One typed TOML -> dataclass loader, for recipes and target profiles.

A dataclass's type hints say what each key takes: ``int``, ``float`` (an int is accepted; nan and inf are not),
``bool`` (only ``true``/``false``), ``str``, ``list[...]``, nested dataclasses, ``X | None`` (absent = the default),
and choices as ``Literal[...]`` or a ``StrEnum``. Ranges and other per-value checks ride on the field
(``ranged(0.1, gt=0, lt=1)``, ``checked("", plain_folder_name)``). Every error is one line that names the full
key, e.g. ``data.val_fraction must be > 0 and < 1, got 1.5``.

    @dataclass
    class DataConfig:
        val_fraction: float = ranged(0.1, gt=0, lt=1)

    load(DataConfig, {"val_fraction": 1.5})  # RecipeError: val_fraction must be > 0 and < 1, got 1.5
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import EdgetlError, RecipeError

CHECK = "check"  # field metadata: a callable(value) -> problem or None
INTERNAL = "internal"  # field metadata: set by code, never read from the file


@dataclass(frozen=True)
class Range:
    """A numeric range, checked on a value or on each item of a list; ``min_items`` bounds the list's length."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_items: int = 0
    note: str = ""  # appended to the message: what the value means, what is usual

    def __call__(self, value: Any) -> str | None:
        if isinstance(value, list):
            if len(value) < self.min_items:
                return self._say(f"must list at least {self.min_items} item{'s' * (self.min_items > 1)}, got {value}")
            return next((f"[{i}] {p}" for i, v in enumerate(value) if (p := self(v))), None)
        bad = ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
               or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))
        return self._say(f"must be {self.describe()}, got {value!r}") if bad else None

    def describe(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"within [{_num(self.ge)}, {_num(self.le)}]"
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        parts = [f"{op} {_num(bound)}" for op, bound in bounds if bound is not None]
        return " and ".join(parts)

    def _say(self, message: str) -> str:
        return f"{message}; {self.note}" if self.note else message


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, min_items: int = 0, note: str = "") -> Any:
    """A dataclass field whose value (or each list item) must lie in a range, e.g. ``ranged(0.7, ge=0, le=1)``."""
    return checked(default, Range(ge, gt, le, lt, min_items, note))


def checked(default: Any, check: Callable[[Any], str | None]) -> Any:
    """A dataclass field with a check: ``check(value)`` returns what is wrong ("must be ...") or None."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={CHECK: check})
    return dataclasses.field(default=default, metadata={CHECK: check})


def plain_folder_name(value: str) -> str | None:
    """A folder name that stays inside its parent: not empty; no /, \\ or : (drives); no leading dot (., ..)."""
    if not value:
        return "must not be empty"
    if any(c in value for c in "/\\:") or value.startswith(".") or value != value.strip():
        return f"must be a plain folder name (no / \\ or :, no leading dot or spaces), got {value!r}"
    return None


def plain_folder_name_or_empty(value: str) -> str | None:
    return plain_folder_name(value) if value else None


def not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def load(cls: type, data: Any, *, error: type[EdgetlError] = RecipeError, prefix: str = "", noun: str = "key",
         renamed: dict[str, str] | None = None) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking every key and value.

    ``error`` is raised with ``prefix`` (e.g. the file) before the message; ``noun`` names a key in the
    unknown-key message ("recipe key"); ``renamed`` maps an old full key to the message that replaces it.
    """
    return _Loader(error, prefix, noun, renamed or {}).table(cls, data, "")


def field_hint(cls: type, key: str) -> Any:
    """The type hint of the dotted ``key`` inside dataclass ``cls``, or None when there is no such field."""
    hint: Any = cls
    for part in key.split("."):
        hint = _strip_none(hint)
        if not dataclasses.is_dataclass(hint) or part not in {f.name for f in dataclasses.fields(hint)}:
            return None
        hint = typing.get_type_hints(hint)[part]
    return hint


def is_list(hint: Any) -> bool:
    return typing.get_origin(_strip_none(hint)) is list


@dataclass
class _Loader:
    error: type[EdgetlError]
    prefix: str
    noun: str
    renamed: dict[str, str]

    def fail(self, message: str) -> EdgetlError:
        return self.error(f"{self.prefix}{message}")

    def table(self, cls: type, data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            raise self.fail(f"{where or 'the file'} must be a table, got {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get(INTERNAL)}
        hints = typing.get_type_hints(cls)
        for name in data:
            key = _join(where, name)
            if key in self.renamed:
                raise self.fail(self.renamed[key])
            if name not in fields:
                raise self.fail(f"unknown {self.noun} {key}; known keys here: {', '.join(sorted(fields))}")
        values = {name: self.value(hints[name], value, _join(where, name)) for name, value in data.items()}
        for name, value in values.items():
            check = fields[name].metadata.get(CHECK)
            problem = check(value) if check else None
            if problem:
                sep = "" if problem.startswith("[") else " "
                raise self.fail(f"{_join(where, name)}{sep}{problem}")
        missing = [n for n, f in fields.items() if n not in values and _required(f)]
        if missing:
            raise self.fail(f"missing required {self.noun} {_join(where, missing[0])}")
        return cls(**values)

    def value(self, hint: Any, value: Any, key: str) -> Any:
        hint = _strip_none(hint)
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            return self.table(hint, value, key)
        if origin is list:
            if not isinstance(value, list):
                raise self.fail(f"{key} must be a list, got {value!r}")
            (item,) = typing.get_args(hint)
            return [self.value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is Literal:
            choices = typing.get_args(hint)
            if value not in choices or type(value) is not type(choices[0]):
                raise self.fail(f"{key} must be {_choices(choices)}, got {value!r}")
            return value
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            choices = [member.value for member in hint]
            if value not in choices or isinstance(value, bool):
                raise self.fail(f"{key} must be {_choices(choices)}, got {value!r}")
            return hint(value)
        if hint is float and type(value) is int:
            return float(value)
        if hint is float and type(value) is float and not math.isfinite(value):  # TOML has nan and inf
            raise self.fail(f"{key} must be a finite number, got {value!r}")
        if hint is Any:
            return value
        if type(value) is not hint:
            raise self.fail(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
        return value


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _strip_none(hint: Any) -> Any:
    """``X | None`` -> ``X`` (TOML has no null: an optional key is simply left out)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {hint}: only X | None")
        return args[0]
    return hint


def _choices(choices: typing.Sequence[Any]) -> str:
    shown = [repr(c) for c in choices]
    if len(shown) == 1:
        return shown[0]
    return f"{'one of ' if len(shown) > 2 else ''}{', '.join(shown[:-1])} or {shown[-1]}"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
