"""The pieces every training run shares, whatever the task: one epoch of steps (on the processes and device of an
``edgetl.train.parallel.Parallel``), the distillation loss, RNG state for resuming, weight hashes, the progress bar,
and the file names of a training folder."""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_path, write_json
from .parallel import ONE, Parallel

CHECKPOINT_FILE = "best.safetensors"
META_FILE = "checkpoint.json"
METRICS_FILE = "metrics.json"
STATE_FILE = "last.pt"
RESULT_FILE = "result.json"

# One optimisation step's loss and logits from a batch's inputs, labels and any extra tensors.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def train_epoch(step: StepFn, batches: Iterable[tuple[Any, ...]], optimizer: torch.optim.Optimizer,
                scheduler: Any, tick: Callable[[float, float], None], *, parallel: Parallel = ONE,
                models: Sequence[nn.Module] = ()) -> tuple[float, float]:  # fmt: skip
    """One pass over ``(inputs, labels, *extra)`` batches with a per-step scheduler.

    ``step(inputs, labels, *extra) -> (loss, logits)``; ``labels`` are int64 classes (N,), or soft targets
    (N, classes) for a batch that mixup or cutmix mixed (accuracy then counts each sample's largest share).
    On several processes the batches are this process's shares, ``models`` the prepared (DDP) models ``step`` runs.
    Returns mean loss and accuracy (percent) over every process's samples.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for batch in batches:
        batch = parallel.to_device(tuple(batch))
        labels = batch[1]
        optimizer.zero_grad(set_to_none=True)
        loss, logits = parallel.run_step(step, batch, models)
        optimizer.step()
        scheduler.step()
        loss_sum, count = loss_sum + loss.item() * len(labels), count + len(labels)
        correct += int((logits.detach().argmax(1) == (labels if labels.ndim == 1 else labels.argmax(1))).sum())
        tick(loss_sum / count, 100.0 * correct / count)
    loss_sum, correct, count = parallel.total(loss_sum, correct, count)
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


def cross_entropy_step(model: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float) -> StepFn:
    """The plain supervised step: cross-entropy with label smoothing (on class labels or soft targets alike)."""

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(inputs)
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing), logits

    return step


def accuracy(logits: torch.Tensor, labels: Any) -> float:
    """Top-1 accuracy in percent of a logits tensor against integer labels (a tensor or numpy array)."""
    labels = torch.as_tensor(np.asarray(labels))
    return 100.0 * float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, *,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's distillation loss: soft targets at ``temperature`` (scaled by T^2) weighted ``alpha``,
    cross-entropy on the labels weighted ``1 - alpha``. ``alpha = 0`` is plain cross-entropy. ``labels``: int64
    classes or (N, classes) soft targets (mixup, cutmix); label smoothing applies to either.

    The T^2 factor keeps the soft-target gradients the same size whatever the temperature.
    """
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    if teacher_logits is None:
        raise ValueError("kd_loss with alpha > 0 needs the teacher's logits")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * temperature**2
    return alpha * soft + (1 - alpha) * hard


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (its inputs must go there)."""
    return next(model.parameters(), torch.empty(0)).device


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
        tmp.write_bytes(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    write_json(out_dir / META_FILE, meta)


def load_weights_file(model: nn.Module, out_dir: Any) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out_dir / CHECKPOINT_FILE)))


def rng_state() -> dict[str, Any]:
    """Torch (and CUDA), Python and NumPy RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the current GPU's (only it trains here)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar (``edgetl.progress.bar``), one task per stage, with the running loss and accuracy; silent
    when disabled."""
    from ..progress import bar

    return bar("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%", enabled=enabled)


def ticker(bar: Any, name: str, steps: int, completed: int = 0) -> Callable[[float, float], None]:
    """A progress task on ``bar``; call the result once per step with the running loss and accuracy."""
    task = bar.add_task(name, total=steps, completed=completed, loss=0.0, acc=0.0)
    return lambda loss, acc: bar.update(task, advance=1, loss=loss, acc=acc)
