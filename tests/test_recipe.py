"""The recipe: defaults, files and overrides, and the complete check at load time (every key, type, range,
choice and registry name), each error one line that names the key."""

import importlib.resources
import tomllib
from pathlib import Path

import pytest

from edgetl.errors import RecipeError
from edgetl.recipe import RECIPES_DIR, Recipe, load_recipe, named_recipe


def test_defaults_are_the_built_in_example():
    recipe = load_recipe()
    assert recipe.model.backbone == "efficientnet_lite0" and recipe.data.source == "fashion-mnist"
    assert recipe.model.task == "image-classification" and recipe == Recipe()


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[finetune]\nlr = 0.01\nunfreeze = [1]\nstage_epochs = [3]\n[validate.gate]\nmin_agreement = 0.5\n')
    recipe = load_recipe(path, ["finetune.lr=0.02", "run.name=x", "bench.batch_sizes=[1, 4]"])
    assert recipe.finetune.lr == 0.02 and recipe.finetune.unfreeze == [1] and recipe.finetune.stage_epochs == [3]
    assert recipe.validate.gate.min_agreement == 0.5 and recipe.run.name == "x" and recipe.bench.batch_sizes == [1, 4]


def test_an_override_of_a_list_key_takes_one_bare_value():
    recipe = load_recipe(None, ["quantize.methods=onnx-fp16", "bench.batch_sizes=4", "finetune.lr=1"])
    assert recipe.quantize.methods == ["onnx-fp16"] and recipe.bench.batch_sizes == [4]
    assert recipe.finetune.lr == 1.0 and isinstance(recipe.finetune.lr, float)  # an int where a float goes


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    recipe = load_recipe(None, ["finetune.lr=0.5"])
    path = tmp_path / "resolved.toml"
    path.write_text(recipe.to_toml())
    assert load_recipe(path) == recipe
    assert isinstance(tomllib.loads(recipe.to_toml()), dict)


def test_the_built_in_recipes_ship_inside_the_package():
    assert RECIPES_DIR == Path(importlib.resources.files("edgetl") / "recipes")
    assert named_recipe("banking77") == RECIPES_DIR / "banking77.toml"
    recipe = load_recipe("banking77")
    assert recipe.model.task == "text-classification" and recipe.data.source == "banking77"
    assert recipe.run_dir == Path("runs/banking77-minilm")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "none.toml")
    with pytest.raises(RecipeError, match="built-in recipe name.*banking77"):
        load_recipe("no-such-recipe")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_section_hash_tracks_only_named_sections():
    a, b = Recipe(), load_recipe(None, ["bench.threads=1"])
    assert a.section_hash("finetune") == b.section_hash("finetune")
    assert a.section_hash("bench") != b.section_hash("bench")


BAD = [
    # keys and types
    ("finetune.lrr=1", r"unknown recipe key finetune\.lrr; known keys here: .*\blr\b"),
    ("nosection.x=1", "unknown recipe key nosection"),
    ("lr", "section.key=value"),
    ("finetune.lr='fast'", "finetune.lr must be float, got 'fast'"),
    ("finetune.augment.enabled=1", "finetune.augment.enabled must be bool, got 1"),
    ("finetune.augment=true", r"finetune.augment is a table now: write \[finetune.augment\] enabled = true/false"),
    ("finetune.batch_size=true", "finetune.batch_size must be int, got True"),
    ("finetune.batch_size=8.0", "finetune.batch_size must be int, got 8.0"),
    ("finetune.unfreeze=[1, 'x']", r"finetune\.unfreeze\[1\] must be int, got 'x'"),
    ("validate.gate=3", "validate.gate must be a table, got 3"),
    ("model.kind='text'", 'model.kind was renamed to model.task: write model.task = "text-classification"'),
    # ranges
    ("finetune.probe_epochs=0", "finetune.probe_epochs must be >= 1, got 0"),
    ("finetune.stage_epochs=[2, 0]", r"finetune\.stage_epochs\[1\] must be >= 1, got 0"),
    ("finetune.unfreeze=[0, 9]", r"finetune\.unfreeze\[0\] must be >= 1, got 0"),
    ("finetune.stage_epochs=[2]",
     "finetune.unfreeze has 2 stages but finetune.stage_epochs has 1; give one epoch count per stage"),
    ("finetune.batch_size=1", "finetune.batch_size must be >= 2, got 1"),
    ("finetune.lr=0", "finetune.lr must be > 0, got 0.0"),
    ("finetune.probe_lr=-1", "finetune.probe_lr must be > 0"),
    ("finetune.label_smoothing=1", "finetune.label_smoothing must be >= 0 and < 1"),
    ("finetune.patience=-1", "finetune.patience must be >= 0, got -1; 0 = no early stop"),
    ("finetune.threads=-2", "finetune.threads must be >= 0"),
    ("distill.epochs=0", "distill.epochs must be >= 1, got 0"),
    ("distill.batch_size=1", "distill.batch_size must be >= 2"),
    ("distill.lr=0", "distill.lr must be > 0"),
    ("distill.patience=-1", "distill.patience must be >= 0"),
    ("distill.temperature=0", "distill.temperature must be > 0, got 0.0; 2 to 8 is usual"),
    ("distill.alpha=1.5", r"distill\.alpha must be within \[0, 1\], got 1.5"),
    ("distill.alpha=-0.1", r"distill\.alpha must be within \[0, 1\]"),
    ("distill.hint_weight=-1", "distill.hint_weight must be >= 0, got -1.0; 0 turns the hint loss off"),
    ("distill.min_relative_accuracy=0", "distill.min_relative_accuracy must be > 0 and <= 1, got 0.0"),
    ("distill.min_relative_accuracy=1.1", "distill.min_relative_accuracy must be > 0 and <= 1"),
    ("data.val_fraction=1.5", "data.val_fraction must be > 0 and < 1, got 1.5"),
    ("data.val_fraction=0", "data.val_fraction must be > 0 and < 1, got 0.0"),
    ("data.test_fraction=1", "data.test_fraction must be > 0 and < 1, got 1.0"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], r"data\.val_fraction \+ data\.test_fraction must be < 1"),
    ("data.train_per_class=-1", "data.train_per_class must be >= 0"),
    ("data.seed=-1", "data.seed must be within"),
    ("run.seed=-1", r"run\.seed must be within \[0, 4294967295\], got -1"),
    ("run.seed=4294967296", "run.seed must be within"),
    ("model.image_size=8", "model.image_size must be >= 16, got 8"),
    ("validate.gate.min_agreement=1.2", r"validate\.gate\.min_agreement must be within \[0, 1\], got 1.2"),
    ("validate.gate.max_accuracy_drop=-1", "validate.gate.max_accuracy_drop must be >= 0"),
    ("validate.gate.min_accuracy=101", r"validate\.gate\.min_accuracy must be within \[0, 100\]"),
    ("validate.gate.max_abs_logit_diff=-0.5", "validate.gate.max_abs_logit_diff must be >= 0"),
    ("validate.batch_size=0", "validate.batch_size must be >= 1"),
    ("quantize.min_agreement=-0.1", r"quantize\.min_agreement must be within \[0, 1\]"),
    ("quantize.max_accuracy_drop=-1", "quantize.max_accuracy_drop must be >= 0"),
    ("quantize.calibration_size=8",
     r"quantize\.calibration_size \(8\) must be >= quantize\.min_calibration_size \(16\)"),
    ("quantize.min_calibration_size=0", "quantize.min_calibration_size must be >= 1"),
    ("quantize.qat_epochs=0", "quantize.qat_epochs must be >= 1"),
    ("quantize.qat_alpha=2", r"quantize\.qat_alpha must be within \[0, 1\]"),
    ("bench.threads=0", "bench.threads must be >= 1, got 0"),
    ("bench.batch_sizes=[1, 0]", r"bench\.batch_sizes\[1\] must be >= 1, got 0"),
    ("bench.batch_sizes=[]", "bench.batch_sizes must list at least 1 item, got"),
    ("bench.min_runs=0", "bench.min_runs must be >= 1"),
    ("bench.max_seconds=0", "bench.max_seconds must be > 0"),
    ("export.opset=5", "export.opset must be >= 7"),
    ("ship.validation_slice=-1", "ship.validation_slice must be >= 0"),
    ("text.max_length=-1", "text.max_length must be >= 0"),
    ("text.length_percentile=0", r"text\.length_percentile must be > 0 and <= 100"),
    ("text.eval_batch_size=0", "text.eval_batch_size must be >= 1"),
    ("text.student_layers=[3, 1]", r"text\.student_layers must be distinct, increasing layer indices, got \[3, 1\]"),
    ("text.student_layers=[0, 0]", "text.student_layers must be distinct"),
    ("text.student_layers=[-1, 2]", r"text\.student_layers\[0\] must be >= 0"),
    ("data.text_column=''", "data.text_column must not be empty"),
    # choices
    ("quantize.calibration_method='kl'",
     "quantize.calibration_method must be one of 'minmax', 'entropy' or 'percentile', got 'kl'"),
    ("quantize.onnx_format='qop'", "quantize.onnx_format must be 'qdq' or 'qoperator', got 'qop'"),
    ("quantize.onnx_types='s8u8'", "quantize.onnx_types must be one of 'u8s8', 'u8u8' or 's8s8', got 's8u8'"),
    ("quantize.openvino_preset='fast'", "quantize.openvino_preset must be 'performance' or 'mixed', got 'fast'"),
    ("quantize.models=['teacher', 'pupil']", r"quantize\.models\[1\] must be 'teacher' or 'student', got 'pupil'"),
    ("quantize.models=['student', 'student']", "quantize.models lists 'student' more than once"),
    # folder names
    ("run.name='../../escaped'", r"run\.name must be a plain folder name .*got '\.\./\.\./escaped'"),
    ("run.name='a/b'", "run.name must be a plain folder name"),
    ("run.name='a\\b'", "run.name must be a plain folder name"),
    ("run.name='.hidden'", "run.name must be a plain folder name"),
    ("run.name='..'", "run.name must be a plain folder name"),
    ("run.name=''", "run.name must not be empty"),
    ("ship.name='../x'", "ship.name must be a plain folder name"),
    ("ship.name='/abs'", "ship.name must be a plain folder name"),
    # registry names
    ("model.task='image'", r"model\.task: unknown .*'image'.*image-classification"),
    ("data.source='imagenet'", r"data\.source: unknown .*'imagenet'.*fashion-mnist"),
    ("quantize.methods=['onnx-int8-dynamic', 'onnx-int9']", r"quantize\.methods\[1\]: unknown .*'onnx-int9'"),
    ("quantize.methods=['onnx-fp16', 'onnx-fp16']", "quantize.methods lists 'onnx-fp16' more than once"),
    ("export.formats=['onnx', 'tflite']", r"export\.formats\[1\]: unknown .*'tflite'.*openvino"),
    ("ship.formats=['coreml']", r"ship\.formats\[0\]: unknown .*'coreml'"),
    ("model.backbone='resnet9000'", r"model\.backbone.*'resnet9000'.*efficientnet_lite0"),
    ("distill.student='resnet9000'", r"distill\.student.*'resnet9000'.*efficientnet_lite0_slim"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[str(o) for o, _ in BAD])
def test_a_bad_recipe_fails_at_load_time_in_one_line_naming_the_key(overrides, message, monkeypatch, tmp_path):
    # Data a stage would read does not exist: an error here proves the check ran before any data was read.
    monkeypatch.setenv("EDGETL_FASHION_MNIST", str(tmp_path / "no-data"))
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe(None, [overrides] if isinstance(overrides, str) else overrides)
    assert "\n" not in str(caught.value)


def test_an_old_recipe_file_with_model_kind_says_what_it_became(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text('[model]\nkind = "text"\nbackbone = "all-minilm-l6-v2"\n')
    with pytest.raises(RecipeError, match=r"model\.kind was renamed to model\.task.*text-classification") as caught:
        load_recipe(old)
    assert "\n" not in str(caught.value)


def test_a_list_key_in_a_file_must_be_a_list(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[quantize]\nmethods = "onnx-fp16"\n')
    with pytest.raises(RecipeError, match="quantize.methods must be a list, got 'onnx-fp16'"):
        load_recipe(path)


def test_plain_run_names_stay_inside_the_output_folder():
    for name in ("try2", "banking77-minilm", "a.b_c"):
        recipe = load_recipe(None, [f"run.name='{name}'", "run.output_dir='runs'"])
        assert recipe.run_dir.resolve().parent == Path("runs").resolve()
