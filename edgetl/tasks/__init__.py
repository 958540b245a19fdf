"""Tasks (modalities) registered by name; a recipe picks one with ``model.task``.

``image-classification`` (``image.py``) and ``text-classification`` (``text.py``) implement the ``Task``
protocol of ``base.py``; their trainer hooks live in ``image_train.py`` / ``text_train.py``. Importing this
package is light: torch, transformers and optimum load inside the tasks' methods.

>>> task = get_task(recipe)           # TASKS.get(recipe.model.task)
>>> splits = task.load_splits(recipe)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..registry import Registry
from .base import STUDENT, TEACHER, Task
from .embedding import TextEmbedding
from .image import ImageClassification
from .regression import ImageRegression
from .text import TextClassification

TASKS: Registry[Task] = Registry("task", key="model.task")
TASKS.register(ImageClassification.name, ImageClassification())
TASKS.register(TextClassification.name, TextClassification())
TASKS.register(TextEmbedding.name, TextEmbedding())
TASKS.register(ImageRegression.name, ImageRegression())


def get_task(recipe) -> Task:
    """The task a recipe names (``model.task``)."""
    return TASKS.get(recipe.model.task)


def finetune(recipe, splits, out_dir: Path, *, progress: bool = True, log: Callable[[str], None] = print):
    """Fine-tune the recipe's backbone on ``splits`` into ``out_dir`` (its task's model and data handling, the one
    trainer); a FinetuneResult.

    >>> result = finetune(load_recipe("banking77"), splits, Path("runs/x/finetune"))
    """
    return get_task(recipe).finetune(recipe, splits, Path(out_dir), progress=progress, log=log)


def distill(recipe, splits, teacher, out_dir: Path, *, teacher_dir: Path | None = None, progress: bool = True,
            log: Callable[[str], None] = print):
    """Distil ``teacher`` (fine-tuned in ``teacher_dir``; text students need it for the tokenizer) into the recipe's
    student on ``splits``, in ``out_dir``; a DistillResult.

    >>> result = distill(recipe, splits, teacher, Path("runs/x/distill"), teacher_dir=Path("runs/x/finetune"))
    """
    return get_task(recipe).distill(recipe, splits, teacher, Path(out_dir), teacher_dir=teacher_dir,
                                    progress=progress, log=log)


__all__ = ["STUDENT", "TASKS", "TEACHER", "Task", "distill", "finetune", "get_task"]
