"""The recipe: one TOML file loaded into typed dataclasses and checked completely when it is loaded (every key,
type, range, choice and registry name), so a typo fails in the first second. Every field has a default, so an
empty recipe runs the built-in example (EfficientNet-Lite0 on a Fashion-MNIST subset). The sections and their fields
are in ``edgetl.settings``.

>>> recipe = load_recipe("banking77", ["finetune.lr=3e-4"])  # a built-in recipe, a .toml path, or None
>>> recipe.model.task, recipe.run_dir
('text-classification', PosixPath('runs/banking77-minilm'))
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .config import field_hint, is_list, load
from .errors import RecipeError
from .settings import (  # noqa: F401  (the recipe's sections, importable from here too)
    MODEL_KEYS, SEED_MAX, WEIGHT_SOURCES, BenchConfig, DataConfig, DistillConfig, ExportConfig, FinetuneConfig,
    GateConfig, ModelConfig, QuantizeConfig, Recipe, RunConfig, ShipConfig, TextConfig, ValidateConfig,
)


# Keys that were renamed: a recipe that still uses one gets this message instead of "unknown key".
RENAMED = {
    "model.kind": 'model.kind was renamed to model.task: write model.task = "text-classification" for text '
                  '(was kind = "text") or "image-classification" (was "image", the default)',
}


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a TOML recipe (None: the built-in example; a name: a built-in recipe such as "banking77"), apply
    ``section.key=value`` overrides, and check it completely (``check_recipe``, ``check_names``): every error is
    a one-line RecipeError naming the key, raised before any data is read."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            path = named_recipe(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8, "
                              "as TOML requires") from None
        except OSError as exc:
            raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}; check that it is a readable "
                              "file") from None
    for item in overrides or []:
        _apply_override(data, item)
    finetune = data.get("finetune") or {}
    if finetune.get("augment") is False:  # before [finetune.augment] was a table: off is off, as it was
        finetune["augment"] = {"enabled": False}
    if finetune.get("augment") is True:  # the old flip and shift are not the new section's defaults: say so
        raise RecipeError("finetune.augment is a table now: write [finetune.augment] enabled = true/false; the old "
                          "flip and shift is random_resized_crop = [1.0, 1.0], color_jitter = 0.0, shift = 0.125")
    recipe = load(Recipe, data, error=RecipeError, noun="recipe key", renamed=RENAMED)
    check_recipe(recipe)
    check_names(recipe)
    return recipe


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise RecipeError(f"override {item!r} must look like section.key=value, e.g. finetune.lr=0.001")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    if is_list(field_hint(Recipe, key)) and not isinstance(value, list):
        value = [value]  # --set quantize.methods=onnx-fp16
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: {part!r} is not a section")
    node[leaf] = value


def check_recipe(recipe: Recipe) -> None:
    """The checks that span several keys (single keys are checked by their fields); a RecipeError names them."""
    data, ft, q, layers = recipe.data, recipe.finetune, recipe.quantize, recipe.text.student_layers
    if not data.val_fraction + data.test_fraction < 1:
        raise RecipeError(f"data.val_fraction + data.test_fraction must be < 1 (something must be left to train on), "
                          f"got {data.val_fraction:g} + {data.test_fraction:g}")
    from .preprocess.image import CROPPING

    if recipe.model.crop_fraction != 1 and recipe.model.resize not in CROPPING:
        raise RecipeError(f"model.crop_fraction {recipe.model.crop_fraction:g} crops the centre after resizing; with "
                          f"model.resize = {recipe.model.resize!r} set it to 1 or use \"shorter-side+center-crop\" "
                          "(or \"squash+center-crop\")")
    if len(ft.unfreeze) != len(ft.stage_epochs):
        raise RecipeError(f"finetune.unfreeze has {len(ft.unfreeze)} stages but finetune.stage_epochs has "
                          f"{len(ft.stage_epochs)}; give one epoch count per stage")
    from .bench.paired import MIN_ROUNDS  # numpy: imported when a recipe is checked, not by `edgetl --help`

    if 0 < recipe.bench.race_rounds < MIN_ROUNDS:
        raise RecipeError(f"bench.race_rounds = {recipe.bench.race_rounds} gives no 95% interval of a latency ratio; "
                          f"use at least {MIN_ROUNDS}, or 0 to compare medians without a race")
    if q.calibration_size < q.min_calibration_size:
        raise RecipeError(f"quantize.calibration_size ({q.calibration_size}) must be >= quantize.min_calibration_size "
                          f"({q.min_calibration_size}); raise the first or lower the second")
    if layers != sorted(set(layers)):
        raise RecipeError(f"text.student_layers must be distinct, increasing layer indices, got {layers}")
    for key, names in (("quantize.methods", q.methods), ("quantize.models", q.models),
                       ("export.formats", recipe.export.formats), ("ship.formats", recipe.ship.formats)):
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise RecipeError(f"{key} lists {twice[0]!r} more than once; list each once")


def check_names(recipe: Recipe) -> None:
    """Every registry name in the recipe is registered (task, data source, quantize methods, export and ship
    formats), then the task's own checks (``Task.check_recipe``: e.g. which backbones and students fit it)."""
    from .data import SOURCES
    from .data.registry import SOURCE_KINDS
    from .export import FORMATS
    from .quantize import QUANTIZERS
    from .tasks import TASKS

    task = TASKS.get(recipe.model.task, key="model.task")
    SOURCES.get(recipe.data.source, key="data.source")
    held = SOURCE_KINDS.get(recipe.data.source)
    if held is not None and held != task.kind:
        data = f"{recipe.data.path or recipe.data.source!r} ({recipe.data.source}) holds {held}s"
        raise RecipeError(f"model.task {task.name} takes {task.samples}, but data {data}; give "
                          f"{'an image folder' if task.kind == 'image' else 'a .csv/.tsv/.jsonl text file'} as the "
                          f"data, or set model.task to match the model")
    if not recipe.model.source:  # a source's own format checks model.weights (a factory's state dict)
        check_weights(recipe.model.weights, hub_ids=task.kind == "text")
    for i, method in enumerate(recipe.quantize.methods):
        QUANTIZERS.get(method, key=f"quantize.methods[{i}]")
    for section in ("export", "ship"):
        for i, fmt in enumerate(getattr(recipe, section).formats):
            FORMATS.get(fmt, key=f"{section}.formats[{i}]")
    check_source(recipe)
    task.check_recipe(recipe)
    from .pipeline.transfer import check_scratch

    check_scratch(recipe)


def check_source(recipe: Recipe) -> None:
    """A ``model.source`` is a model file edgetl reads, with what it needs; its settings are refused without one."""
    from .imported.model import locate_source, source_format
    from .tasks import TASKS

    model = recipe.model
    if not model.source:
        for key in ("labels", "mean", "std", "tokenizer", "output"):
            if getattr(model, key):
                raise RecipeError(f"model.{key} describes a model.source, and none is given; set model.source or "
                                  f"remove model.{key}")
        return
    fmt = source_format(locate_source(model.source, model))
    from .quantize import QUANTIZERS

    for key, names in (("export.formats", recipe.export.formats), ("quantize.methods", recipe.quantize.methods)):
        for i, name in enumerate(names):
            needs = name if key == "export.formats" else QUANTIZERS.get(name).source
            if needs not in fmt.formats:
                raise RecipeError(f"{key}[{i}]: {name} needs an {needs} model, and a {fmt.name} model.source cannot "
                                  f"be turned into one; keep to {' and '.join(fmt.formats)} here")
    if model.tokenizer and (TASKS.get(model.task).kind != "text" or fmt.name == "hf"):
        raise RecipeError(f"model.tokenizer is for a text model given as a model file; a {model.task} "
                          f"{fmt.name} source {'has its own' if fmt.name == 'hf' else 'takes none'}: remove it")
    if model.labels and not Path(model.labels).expanduser().is_file():
        raise RecipeError(f"model.labels {model.labels!r} is not a file; give a file with one class name per line")
    if recipe.quantize.qat:
        raise RecipeError("quantize.qat fine-tunes a model edgetl trained; a model.source has no training run, so set "
                          "quantize.qat = false")


def check_weights(weights: str, *, hub_ids: bool) -> None:
    """model.weights names a source, or a file or folder that exists now rather than after the data has loaded
    (``hub_ids``: an owner/name Hugging Face id is fine too, as text models take one)."""
    if weights in WEIGHT_SOURCES or Path(weights).expanduser().exists():
        return
    if hub_ids and weights.count("/") == 1 and not weights.startswith((".", "/", "~")):
        return
    raise RecipeError(f"model.weights {weights!r} is not a file or folder here; give an existing weights path or "
                      f"one of {', '.join(map(repr, WEIGHT_SOURCES))}")


# Recipes that can be named instead of given as a path (`edgetl run banking77`): shipped inside the package.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def named_recipe(name: str | Path) -> Path:
    """The built-in recipe called ``name`` (e.g. "banking77" -> edgetl/recipes/banking77.toml), or a RecipeError."""
    text = str(name)
    if "/" not in text and "\\" not in text:
        candidate = RECIPES_DIR / (text if text.endswith(".toml") else f"{text}.toml")
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
    raise RecipeError(f"recipe not found: {name}; pass an existing .toml file, a built-in recipe name "
                      f"({', '.join(known) or 'none installed'}) or none for the built-in example")
