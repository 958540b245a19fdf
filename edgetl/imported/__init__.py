"""Models the user brings (``model.source``, ``edgetl optimize MODEL``): read what a model file says about itself
(inputs, outputs, labels, preprocessing) and copy it into a run, so the pipeline's export -> quantize -> validate
-> bench -> ship runs on it as on a model edgetl trained.

``SOURCE_FORMATS`` maps a file to its reader by suffix (a Hugging Face folder by its config.json); each reader is
torch-free and imports its runtime lazily.
"""

from . import factory, hf, hf_image, program  # noqa: F401  (register the formats and the Hugging Face image head)
from .labels import match_labels, read_labels
from .model import SOURCE_FORMATS, SourceModel, read_source

__all__ = ["SOURCE_FORMATS", "SourceModel", "match_labels", "read_labels", "read_source"]
