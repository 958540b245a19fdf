"""``optimize(model, data)``: a model the user already has -> export, quantize, validate (against the original, on
the user's data), bench, select, ship. The same run as ``edgetl run`` with ``model.source`` set; this builds that
recipe from a few arguments.

>>> summary = optimize("mobilenet_v2.onnx", "photos/", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import RecipeError

# The user's data is split three ways: calibration (the "train" split: only quantizers read it), the accuracy-aware
# search's validation set, and the held-out test set every variant is judged on (the largest share).
VAL_FRACTION, TEST_FRACTION = 0.2, 0.5
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")


def optimize_overrides(
    model: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    labels: str | Path | None = None,
    out: str | Path | None = None,
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str | None = None,
    crop_fraction: float | None = None,
    tokenizer: str | Path | None = None,
    output: str | None = None,
    weights: str | Path | None = None,
) -> list[str]:
    """The ``section.key=value`` recipe overrides that make ``edgetl run`` optimize ``model`` on ``data``.

    ``model``: a model file or Hugging Face folder, a hub id (``owner/name``) or ``package.module:factory`` with
    its safetensors ``weights``. ``task`` defaults by the model: a Hugging Face folder says (a classifier, or an
    encoder: text-embedding), a file is an image classifier. ``tokenizer``: a text model's, when the model is an
    ONNX file; ``output``: which of the model's outputs to use when it has several."""
    from ..imported.model import locate_source
    from ..settings import ModelConfig

    data = Path(data).expanduser()
    local = Path(model).expanduser()
    if local.exists():
        spec, located = str(local.resolve()), local
    else:  # a hub id or a factory: its format finds it (or says what is wrong in one line)
        spec = str(model)
        if weights and not size:
            raise RecipeError(f"{spec}: a model built by a factory has no input size of its own; give --size (the "
                              "side of the square images it takes, e.g. 224)")
        located = locate_source(spec, ModelConfig(source=spec, weights=str(weights or "package"),
                                                  image_size=size or ModelConfig.image_size))
    if not data.exists():
        raise RecipeError(f"data {str(data)!r} not found; give an image folder (one sub-folder per class) or a "
                          f"{'/'.join(TEXT_SUFFIXES)} file")
    out = Path(out) if out else Path("models") / _name(local.stem if local.exists() else _spec_stem(spec))
    if task is None:
        from ..imported.hf import is_hf_folder, task_of

        task = task_of(located) if is_hf_folder(located) else "image-classification"
    values: dict[str, Any] = {
        "run.name": out.name, "ship.name": out.name, "ship.output_dir": str(out.parent),
        "model.task": task, "model.source": spec,
        "data.source": "text-file" if data.suffix.lower() in TEXT_SUFFIXES else "folder",
        "data.path": str(data.resolve()), "data.val_fraction": VAL_FRACTION, "data.test_fraction": TEST_FRACTION,
        "distill.enabled": False, "quantize.qat": False, "quantize.models": ["teacher"],
    }
    if task == "image-classification":
        # No dynamic INT8 for a CNN: measured on MobileNetV2 (benchmarks/results/optimize.md) it ran 10-12x slower
        # than FP32 (ONNX Runtime's ConvInteger) at 59% agreement.
        values["quantize.methods"] = ["onnx-int8-static", "onnx-int8-static-acc", "openvino-int8"]
    if task == "text-classification":  # the built-in banking77 recipe's INT8 methods for BERT-family classifiers
        values["quantize.methods"] = ["onnx-int8-dynamic", "openvino-int8"]
    if task == "text-embedding":
        # Unlabelled texts; no accuracy-aware search (it ranks class logits). Nearest-neighbour agreement is a
        # stricter measure than top-1 agreement: measured on all-MiniLM-L6-v2 and 150 banking77 texts, NNCF INT8
        # kept every text's cosine >= 0.99 yet 96.7% of nearest neighbours; the gate holds it to 95% here.
        values.update({"data.label_column": "", "quantize.methods": ["onnx-int8-dynamic", "openvino-int8"],
                       "validate.gate.min_agreement": 0.95})
    if task == "image-regression":  # no accuracy-aware search: it ranks class logits
        values["quantize.methods"] = ["onnx-int8-static", "openvino-int8"]
    if located.suffix.lower() == ".xml":  # an OpenVINO IR becomes OpenVINO variants only
        values.update({"export.formats": ["openvino"], "ship.formats": ["openvino"],
                       "quantize.methods": ["openvino-int8", "openvino-fp16"]})
    if labels:
        values["model.labels"] = str(Path(labels).expanduser().resolve())
    if size:
        values["model.image_size"] = size
    if mean:
        values["model.mean"] = [float(v) for v in mean]
    if std:
        values["model.std"] = [float(v) for v in std]
    optional = {"model.resize": resize, "model.crop_fraction": crop_fraction, "model.output": output,
                "model.tokenizer": tokenizer and str(Path(tokenizer).expanduser().resolve()),
                "model.weights": weights and str(Path(weights).expanduser().resolve())}
    values.update({key: value for key, value in optional.items() if value is not None})
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def optimize(model: str | Path, data: str | Path, *, overrides: Sequence[str] = (), progress: bool = True,
             log: Callable[[str], None] = print, **options: Any) -> dict[str, Any]:
    """Run the pipeline on the user's ``model`` and ``data`` (``options``: see ``optimize_overrides``); the run
    summary, as ``edgetl run`` returns it."""
    from ..recipe import load_recipe
    from .run import run

    recipe = load_recipe(None, [*optimize_overrides(model, data, **options), *overrides])
    return run(recipe, progress=progress, log=log)


def _spec_stem(spec: str) -> str:
    """The name part of a hub id (``owner/name@revision``) or a factory (``package.module:factory``)."""
    if ":" in spec:
        return spec.rsplit(":", 1)[1]
    return spec.split("@")[0].rstrip("/").rsplit("/", 1)[-1]


def _name(stem: str) -> str:
    """A plain run/bundle name from a file name: letters, digits, '.', '-', '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-") or "model"
    return name


MODEL_FILE_RUNTIMES = {".onnx": "onnxruntime:CPUExecutionProvider", ".xml": "openvino:CPU"}


def validate_file(model_file: str | Path, reference: str | Path, data: str | Path, *, overrides: Sequence[str] = (),
                  log: Callable[[str], None] = print, **options: Any) -> dict[str, Any]:
    """The shared validation check on a model made elsewhere (say, quantized by another tool): ``model_file`` (.onnx
    on onnxruntime, .xml on OpenVINO) against the original ``reference`` file, on the test split of ``data``, held
    to ``validate.gate``. The report, as every artifact's validation record holds it.

    The reference is imported as ``optimize`` imports it (``runs/<reference stem>/source/``), so its outputs are
    computed once and the split is the same one ``optimize`` judges its own variants on."""
    from ..recipe import load_recipe
    from ..runners import open_runner
    from ..validate import validate
    from .context import RunContext
    from .lock import run_lock

    path = Path(model_file).expanduser()
    runtime = MODEL_FILE_RUNTIMES.get(path.suffix.lower())
    if runtime is None:
        raise RecipeError(f"{path.name}: validate takes a {' or '.join(MODEL_FILE_RUNTIMES)} model file")
    if not path.is_file():
        raise RecipeError(f"model file {str(path)!r} not found; give the path of the model to check")
    recipe = load_recipe(None, [*optimize_overrides(reference, data, **options), *overrides])
    with run_lock(recipe.run_dir):
        ctx = RunContext(recipe, progress=False, log=log)
        ctx.origin.teacher(ctx)
        runner = open_runner(path, runtime, threads=recipe.bench.threads)
        try:
            report = validate(runner, ctx.splits.test, ctx.preprocess_of(), reference=ctx.reference_logits(),
                              gate=recipe.validate.gate, batch_size=recipe.validate.batch_size, artifact=path.name,
                              output=ctx.task.output)
        finally:
            runner.close()
    return {**report.to_dict(), "reference": str(Path(reference)), "data": str(Path(data))}
