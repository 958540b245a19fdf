"""The ``edgetl`` command: parse arguments, call the Python API, print. No logic lives here.

Heavy modules (torch, runtimes) are imported inside the commands, so ``edgetl --help`` and ``edgetl predict`` stay
light. ``app`` registers the commands of ``pipeline_commands`` (run, optimize, the stages), ``device_commands``
(bench, targets) and ``bundle_commands`` (verify, predict, backbones, env); ``console`` holds what they share.
"""

from .app import app, main

__all__ = ["app", "main"]
