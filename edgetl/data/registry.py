"""The data-source registry: ``data.source`` names -> ``splits(data_config, preprocess) -> Splits``.

Sources register with ``@source("name", kind)``; ``edgetl.data`` imports every source module once, so the
registry is complete when anything asks it. ``SOURCE_KINDS`` says what each holds ("image" or "text"), so a recipe
that feeds texts to an image model (or the reverse) fails at load time, before anything runs.
"""

from collections.abc import Callable

from ..registry import Registry

SOURCES = Registry("data source", key="data.source")
SOURCE_KINDS: dict[str, str] = {}


def source(name: str, kind: str) -> Callable:
    """Register a data source holding ``kind`` samples ("image" or "text")."""

    def register(splits: Callable) -> Callable:
        SOURCE_KINDS[name] = kind
        return SOURCES.register(name)(splits)

    return register
