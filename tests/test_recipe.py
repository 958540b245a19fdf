import tomllib

import pytest

from edgetl.errors import RecipeError
from edgetl.recipe import Recipe, load_recipe


def test_defaults_are_the_built_in_example():
    recipe = load_recipe()
    assert recipe.model.backbone == "efficientnet_lite0" and recipe.data.source == "fashion-mnist"


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[finetune]\nlr = 0.01\nunfreeze = [1]\n[validate.gate]\nmin_agreement = 0.5\n')
    recipe = load_recipe(path, ["finetune.lr=0.02", "run.name=x", "bench.batch_sizes=[1, 4]"])
    assert recipe.finetune.lr == 0.02 and recipe.finetune.unfreeze == [1]
    assert recipe.validate.gate.min_agreement == 0.5 and recipe.run.name == "x" and recipe.bench.batch_sizes == [1, 4]


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    recipe = load_recipe(None, ["finetune.lr=0.5"])
    path = tmp_path / "resolved.toml"
    path.write_text(recipe.to_toml())
    assert load_recipe(path) == recipe
    assert isinstance(tomllib.loads(recipe.to_toml()), dict)


@pytest.mark.parametrize(
    ("override", "message"),
    [("finetune.lrr=1", "finetune.lrr"), ("finetune.lr='fast'", "finetune.lr must be float"),
     ("nosection.x=1", "unknown recipe key nosection"), ("lr", "section.key=value")],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_section_hash_tracks_only_named_sections():
    a, b = Recipe(), load_recipe(None, ["bench.threads=1"])
    assert a.section_hash("finetune") == b.section_hash("finetune")
    assert a.section_hash("bench") != b.section_hash("bench")
