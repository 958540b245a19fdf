"""Quantization-aware training: a short fine-tune with NNCF fake-quantizers, then INT8 OpenVINO IR.

For when post-training INT8 misses the gate: NNCF inserts the same quantizers PTQ would
(``nncf.quantize`` on the torch module, calibrated on training images), then a couple of epochs at a
small learning rate let the weights adapt to them, learning from the FP32 model's own soft outputs
(self-distillation, ``quantize.qat_alpha``) as well as the labels.

>>> info = qat_finetune(model, splits, preprocess, recipe.quantize, "artifacts/openvino-int8-qat")
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BackendUnavailable, QuantizationError
from ..settings import QuantizeConfig
from .core import QuantizeInfo, calibration_images, check_calibration

METHOD, RUNTIME = "openvino-int8-qat", "openvino:CPU"


def qat_finetune(
    model,
    splits,
    preprocess,
    config: QuantizeConfig,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    metadata: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> QuantizeInfo:
    """Quantize ``model`` (an FP32 torch module, left unchanged) with NNCF, fine-tune it for ``config.qat_epochs``
    epochs on ``splits.train`` at ``config.qat_lr``, keep the epoch with the best ``splits.val`` accuracy, and
    write it as INT8 OpenVINO IR (``out_dir/model.xml`` + ``.bin``). Returns the QuantizeInfo, with the per-epoch validation accuracies in ``settings``.
    """
    # NNCF compiles a C++ extension on first use (~60 s on an idle 2-core machine) and gives up after
    # 60 s by default; a loaded machine needs longer. Compiled once, it is cached in ~/.cache/nncf.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    try:
        import nncf
        import torch
    except ImportError as exc:
        raise BackendUnavailable(f"{exc.name} is not installed; QAT needs torch and nncf (`pip install nncf`)") from None
    if config.qat_epochs < 1:
        raise QuantizationError(f"quantize.qat_epochs must be at least 1, got {config.qat_epochs}")
    method = METHOD
    start = time.perf_counter()
    calibration = check_calibration(
        calibration_images(splits.train, preprocess, config.calibration_size),
        (None, *preprocess.input_shape), minimum=config.min_calibration_size, source="the model",
    )
    fp32 = copy.deepcopy(model).eval()
    dataset = nncf.Dataset([torch.from_numpy(calibration[i : i + 1]) for i in range(len(calibration))])
    try:
        qmodel = nncf.quantize(fp32, dataset, subset_size=len(calibration))
    except Exception as exc:
        raise QuantizationError(f"{method}: NNCF cannot quantize the torch model: {str(exc).splitlines()[0]}") from None

    from ..progress import substeps
    from ..train.loop import kd_loss

    # The FP32 model teaches its own quantized copy (self-distillation): the gate asks the INT8 model to
    # agree with the FP32 one, so matching its soft outputs is the objective that moves agreement.
    reference = model.eval()
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=config.qat_lr)
    rng = np.random.default_rng(0)
    val_reference = _predict(reference, splits.val, preprocess).argmax(1)
    history: list[dict[str, float]] = []

    def score() -> tuple[float, float]:
        """(val top-1 agreement with the FP32 model %, val accuracy %) of the fake-quantized model."""
        predicted = _predict(qmodel, splits.val, preprocess).argmax(1)
        agreement, accuracy = 100.0 * float((predicted == val_reference).mean()), 100.0 * float((predicted == splits.val.labels).mean())
        history.append({"agreement": round(agreement, 3), "accuracy": round(accuracy, 3)})
        return agreement, accuracy

    best = score()
    log(f"qat: after post-training quantization, val agreement {best[0]:.2f}%, accuracy {best[1]:.2f}%")
    best_state = copy.deepcopy(qmodel.state_dict())
    steps_per_epoch = len(range(0, len(splits.train), batch_size))
    # a bar under the quantize stage's on a terminal; a log has the epochs' own lines, so only the bar's last one
    with substeps(config.qat_epochs * steps_per_epoch, f"{method}: step", max_lines=1) as progress:
        for epoch in range(config.qat_epochs):
            qmodel.train()
            for module in qmodel.modules():  # keep BN statistics: a short fine-tune at batch 64 would only add noise
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
            order = rng.permutation(len(splits.train))
            for begin in range(0, len(order), batch_size):
                idx = np.sort(order[begin : begin + batch_size])
                inputs = torch.from_numpy(preprocess.normalize(splits.train.images[idx]))
                targets = torch.from_numpy(splits.train.labels[idx].astype(np.int64))
                with torch.no_grad():
                    soft = reference(inputs)
                optimizer.zero_grad()
                loss = kd_loss(qmodel(inputs), soft, targets, temperature=config.qat_temperature,
                               alpha=config.qat_alpha)
                loss.backward()
                optimizer.step()
                progress.advance(f"epoch {epoch + 1}/{config.qat_epochs} loss {loss.item():.4f}")
            current = score()
            log(f"qat: epoch {epoch + 1}/{config.qat_epochs}, val agreement {current[0]:.2f}%, "
                f"accuracy {current[1]:.2f}%")
            if current > best:  # agreement first, accuracy breaks ties
                best, best_state = current, copy.deepcopy(qmodel.state_dict())
    qmodel.load_state_dict(best_state)
    qmodel.eval()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(calibration[:1])
    files = _write(qmodel, example, out_dir, metadata or {}, method)
    return QuantizeInfo(
        method=method, format="openvino", files=files, source="torch (fine-tuned FP32)", runtime=RUNTIME,
        settings={"epochs": config.qat_epochs, "lr": config.qat_lr, "batch_size": batch_size,
                  "alpha": config.qat_alpha, "temperature": config.qat_temperature, "val_per_epoch": history,
                  "best_val_agreement": round(best[0], 3), "best_val_accuracy": round(best[1], 3)},
        calibration_images=len(calibration), seconds=round(time.perf_counter() - start, 1),
        metadata=dict(metadata or {}),
    )


def _predict(model, data, preprocess, batch_size: int = 128) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([
            model(torch.from_numpy(preprocess.normalize(data.images[begin : begin + batch_size]))).numpy()
            for begin in range(0, len(data), batch_size)])


def _write(qmodel, example, out_dir: Path, metadata: dict[str, str], method: str) -> list[str]:
    """Save the fake-quantized module as OpenVINO IR: OpenVINO turns NNCF's quantizers into INT8 layers.

    (ONNX is not offered: NNCF exports its quantizers as OpenVINO's custom FakeQuantize op, and turning them
    into standard Q/DQ pairs, ``nncf.strip(..., StripFormat.NATIVE)``, needs torchao, not in the pinned stack.)
    """
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory(prefix=f".{method}.", dir=out_dir) as tmp:
        work = Path(tmp)
        try:
            ov_model = ov.convert_model(qmodel, example_input=example)
        except Exception as exc:
            raise QuantizationError(f"{method}: OpenVINO cannot convert the QAT model: {str(exc).splitlines()[0]}") from None
        ov_model.reshape({0: [-1, *example.shape[1:]]})
        for key, value in {**metadata, "quantization": method}.items():
            ov_model.set_rt_info(value, ["model_info", key])
        ov.save_model(ov_model, str(work / "model.xml"), compress_to_fp16=False)
        for name in ("model.bin", "model.xml"):  # the weights before the file that names them
            (work / name).replace(out_dir / name)
    return ["model.xml", "model.bin"]
