"""edgetl: from a small labelled dataset and a target device to a validated, quantized, benchmarked bundle.

Importing edgetl is light: torch and the runtimes load only when a stage needs them.
"""

__version__ = "0.1.0"
