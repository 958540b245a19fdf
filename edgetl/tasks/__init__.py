"""Tasks (modalities) registered by name; a recipe picks one with ``model.task``.

``image-classification`` (``image.py``) and ``text-classification`` (``text.py``) implement the ``Task``
protocol of ``base.py``; their trainer hooks live in ``image_train.py`` / ``text_train.py``. Importing this
package is light: torch, transformers and optimum load inside the tasks' methods.

>>> task = get_task(recipe)           # TASKS.get(recipe.model.task)
>>> splits = task.load_splits(recipe)
"""

from __future__ import annotations

from ..registry import Registry
from .base import STUDENT, TEACHER, Task
from .image import ImageClassification
from .text import TextClassification

TASKS: Registry[Task] = Registry("task", key="model.task")
TASKS.register(ImageClassification.name, ImageClassification())
TASKS.register(TextClassification.name, TextClassification())


def get_task(recipe) -> Task:
    """The task a recipe names (``model.task``)."""
    return TASKS.get(recipe.model.task)


__all__ = ["STUDENT", "TASKS", "TEACHER", "Task", "get_task"]
