"""The data-source registry: ``data.source`` names -> ``splits(data_config, preprocess) -> Splits``.

Sources register with ``@SOURCES.register("name")``; ``edgetl.data`` imports every source module once, so the
registry is complete when anything asks it.
"""

from ..registry import Registry

SOURCES = Registry("data source", key="data.source")
