"""Training pieces that fine-tuning and distillation share: batches, one epoch, evaluation,
checkpoints in the one format ``edgetl.finetune.load_checkpoint`` reads, RNG state, progress bar."""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_path, write_json
from .data.dataset import LabeledImages, Splits
from .data.preprocess import Preprocess
from .errors import DataError

CHECKPOINT_FILE = "best.safetensors"
META_FILE = "checkpoint.json"
METRICS_FILE = "metrics.json"
STATE_FILE = "last.pt"
RESULT_FILE = "result.json"

# One optimisation step's loss and logits from a batch's inputs, labels and any extra tensors.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def batches(images: LabeledImages, preprocess: Preprocess, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised NCHW (channels-last in memory) batches and their labels, in order."""
    for start in range(0, len(images), size):
        batch = torch.from_numpy(preprocess.normalize(images.images[start : start + size]))
        yield batch.contiguous(memory_format=torch.channels_last), torch.from_numpy(images.labels[start : start + size])


def train_epoch(step: StepFn, batches: Iterable[tuple[torch.Tensor, ...]], optimizer: torch.optim.Optimizer,
                scheduler: Any, tick: Callable[[float, float], None]) -> tuple[float, float]:
    """One pass over ``(inputs, labels, *extra)`` batches with a per-step scheduler.

    ``step(inputs, labels, *extra) -> (loss, logits)``. Returns mean loss and accuracy (percent).
    """
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, labels, *extra in batches:
        loss, logits = step(inputs, labels, *extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum, count = loss_sum + loss.item() * len(labels), count + len(labels)
        correct += int((logits.detach().argmax(1) == labels).sum())
        tick(loss_sum / count, 100.0 * correct / count)
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


def cross_entropy_step(model: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float) -> StepFn:
    """The plain supervised step: cross-entropy with label smoothing."""

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(inputs)
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing), logits

    return step


def evaluate(model: nn.Module, images: LabeledImages, preprocess: Preprocess, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model`` on ``images``, in percent; the model's train/eval modes are restored."""
    if len(images) == 0:
        raise DataError("cannot evaluate on an empty split; give the data source more images")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for batch, labels in batches(images, preprocess, batch_size):
                correct += int((model(batch).argmax(1) == labels).sum())
    finally:
        for module, training in modes.items():
            module.train(training)
    return 100.0 * correct / len(images)


def augment(batch: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``max_shift`` pixels, per image."""
    n, _, height, width = batch.shape
    flip = torch.rand(n) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    if max_shift <= 0:
        return batch
    # Reflect, not zero: a zero in normalised units is mid-grey, not the image's own border.
    padded = F.pad(batch, (max_shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n)).tolist()
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def check_splits(splits: Splits, image_size: int) -> None:
    """Every split non-empty, same classes, at ``image_size``; every class present in train."""
    for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if len(split) == 0:
            raise DataError(f"the {name} split is empty; give the data source more images or set data.{name}_per_class")
        if split.classes != splits.classes:
            raise DataError(f"the {name} split has classes {split.classes} but train has {splits.classes}; "
                            "load all splits from the same source")
        if split.images.shape[1:3] != (image_size, image_size):
            raise DataError(f"{name} images are {split.images.shape[1:3]} but model.image_size is {image_size}; "
                            "load the splits with get_spec(backbone).preprocess(model.image_size)")
    if len(splits.classes) < 2:
        raise DataError(f"training needs at least 2 classes, got {len(splits.classes)}; add class folders")
    missing = [c for c, n in splits.train.class_counts().items() if n == 0]
    if missing:
        raise DataError(f"the train split has no images of class {missing[0]!r}; add some or remove the class")


def fingerprint(splits: Splits) -> str:
    """Cheap identity of the data actually passed in: classes, shapes and labels of every split."""
    digest = hashlib.sha256(repr(splits.classes).encode())
    for split in (splits.train, splits.val, splits.test):
        digest.update(repr(split.images.shape).encode())
        digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """Identity of a model's weights (names, shapes and values of its state_dict)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(out_dir: Any, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``best.safetensors`` and ``checkpoint.json`` (backbone, num_classes, image_size, classes, ...)."""
    from safetensors.torch import save

    with atomic_path(out_dir / CHECKPOINT_FILE) as tmp:
        tmp.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    write_json(out_dir / META_FILE, meta)


def load_weights_file(model: nn.Module, out_dir: Any) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out_dir / CHECKPOINT_FILE)))


def rng_state() -> dict[str, Any]:
    """Torch, Python and NumPy RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:])}


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar, one task per stage, with the running loss and accuracy; silent when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%"), disable=not enabled)


def ticker(bar: Any, name: str, steps: int, completed: int = 0) -> Callable[[float, float], None]:
    """A progress task on ``bar``; call the result once per step with the running loss and accuracy."""
    task = bar.add_task(name, total=steps, completed=completed, loss=0.0, acc=0.0)
    return lambda loss, acc: bar.update(task, advance=1, loss=loss, acc=acc)
