"""One registry helper for every name -> thing table in edgetl (backbones, tasks, data sources, export formats,
quantization methods, runtimes, preprocessing kinds).

A name registered twice is a programming error (``ValueError``) instead of a silent overwrite; an unknown name
is an ``EdgetlError`` (by default a ``RecipeError``) that lists the known names and says where to look.

>>> FORMATS = Registry("export format", key="export.formats")
>>> @FORMATS.register("onnx")
... def export_onnx(...): ...
>>> FORMATS.get("onnx")
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import EdgetlError, RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to items, refusing duplicates.

    ``what`` names an item in messages ("backbone"); ``key`` is the recipe key that takes these names
    ("model.backbone"); ``hint`` is appended to the unknown-name error ("see `edgetl backbones`").
    """

    def __init__(self, what: str, *, key: str = "", hint: str = "") -> None:
        self.what, self.key, self.hint = what, key, hint
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None) -> Callable[[T], T] | T:
        """``REG.register("name", item)``, or ``@REG.register("name")`` on a function or class."""
        if item is not None:
            return self._add(name, item)
        return lambda obj: self._add(name, obj)

    def _add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str, *, error: type[EdgetlError] = RecipeError, key: str | None = None) -> T:
        """The item called ``name``; an ``error`` naming the recipe ``key`` and the known names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise error(self.unknown(name, key=key)) from None

    def unknown(self, name: object, *, key: str | None = None) -> str:
        """The one-line message for an unknown name."""
        where = key if key is not None else self.key
        known = ", ".join(sorted(self._items)) or "none registered"
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where + ': ' if where else ''}unknown {self.what} {name!r}; choose one of: {known}{hint}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def values(self) -> list[T]:
        return [item for _, item in self.items()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.names())})"
