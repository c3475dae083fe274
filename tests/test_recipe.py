from pathlib import Path

import pytest

from tuneforge.errors import UserError
from tuneforge.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.learning_rate() > 0


def test_recipes_folder_is_not_empty():
    assert RECIPES


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_line_key_and_allowed_keys(tmp_path):
    path = _write(tmp_path, "name: x\ntrain:\n  max_steps: 3\n  lerning_rate: 0.1\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    message = str(e.value)
    assert f"{path}:4" in message
    assert "train.lerning_rate" in message
    assert "learning_rate" in message.split("Allowed keys here:")[1]


def test_bad_value_lists_allowed_values(tmp_path):
    with pytest.raises(UserError) as e:
        load_recipe(_write(tmp_path, "method: qlora-typo\n"))
    assert ":1:" in str(e.value) and "'full', 'freeze', 'gradual_unfreeze', 'lora', 'rslora', 'dora', 'qlora' or 'prompt_tuning'" in str(e.value)


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(UserError) as e:
        load_recipe(_write(tmp_path, "train:\n  max_steps: many\n"))
    assert ":2: train.max_steps" in str(e.value) and "'many'" in str(e.value)


def test_yaml_syntax_error_gives_line(tmp_path):
    with pytest.raises(UserError) as e:
        load_recipe(_write(tmp_path, "name: x\ntrain: [1,\n  2\nseed: : 3\n"))
    assert "not valid YAML" in str(e.value) and str(tmp_path) in str(e.value)


def test_missing_file():
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe("no/such/recipe.yaml")


def test_overrides_are_typed_and_checked(tmp_path):
    path = _write(tmp_path, "name: x\n")
    recipe = load_recipe(path, ["train.max_steps=7", "lora.target_modules=[q_proj, v_proj]", "method=full"])
    assert recipe.train.max_steps == 7 and recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.method == "full"
    with pytest.raises(UserError, match="unknown key 'stepz' in train; allowed: .*max_steps"):
        load_recipe(path, ["train.stepz=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe(path, ["train.max_steps"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = Recipe(name="a", method="freeze")
    recipe.train.learning_rate = recipe.learning_rate()
    again = load_recipe(_write(tmp_path, recipe.to_yaml()))
    assert again == recipe and again.train.learning_rate == 1e-4


def test_method_default_learning_rates():
    assert Recipe(method="lora").learning_rate() > Recipe(method="freeze").learning_rate() > Recipe(method="full").learning_rate()
