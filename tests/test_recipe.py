import itertools
import re
from pathlib import Path

import pytest
from transformers import AutoConfig, PreTrainedModel

from tuneforge.data import pipeline
from tuneforge.data.prepare import prepare_data
from tuneforge.errors import UserError
from tuneforge.models import loader
from tuneforge.models.catalog import CATALOG
from tuneforge.recipe import Recipe
from tuneforge.recipe_file import load_recipe
from tuneforge.tasks import TASKS

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _expected_trainable(recipe: Recipe, config, classes: int = 0) -> tuple[int, int]:
    """(trainable, total) parameters of a Llama-style model (or, for a head task, a BERT encoder with
    `classes` outputs; EfficientNet-Lite0 with a new head) under the recipe's method, from its config alone:
    what the plan, which counts them on a meta-device copy with the method applied, must find."""
    if config.model_type == "efficientnet_lite":
        assert recipe.method == "full", "extend for this recipe"
        imagenet_head = config.head_channels * 1000 + 1000
        total = CATALOG["efficientnet-lite0"].params - imagenet_head + config.head_channels * classes + classes
        return total, total
    h, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    if config.model_type == "bert":
        assert recipe.method == "full", "extend for this recipe"
        embeddings = (vocab + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
        block = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h  # attention, FFN, 2 norms
        total = embeddings + layers * block + (h * h + h) + (h * classes + classes)  # pooler, classifier
        return total, total
    kv = config.num_key_value_heads * getattr(config, "head_dim", h // config.num_attention_heads)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    block = sum(i * o for i, o in linears) + 2 * h  # and its two norms
    total = layers * block + h + vocab * h * (1 if config.tie_word_embeddings else 2)
    if recipe.method == "full":
        return total, total
    if recipe.method == "freeze":
        return recipe.freeze.trainable_blocks * block + h, total
    assert recipe.method == "lora" and recipe.lora.target_modules == "all-linear", "extend for this recipe"
    adapters = layers * sum(recipe.lora.r * (i + o) for i, o in linears)
    return adapters, total + adapters


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_plans_end_to_end_without_loading_weights(path, tmp_path, monkeypatch):
    """Validated, its data prepared (the first 300 rows of each source), planned on a meta-device
    model: the plan's parameters, batch split, steps and learning rate are the recipe's."""
    from tuneforge.train.run import plan_training

    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository
    recipe = load_recipe(path)
    asked = recipe.model_copy(deep=True)
    model_dir = loader.resolve_model(recipe.model.name)
    tokenizer = loader.load_inputs(model_dir, TASKS[recipe.task])
    read = pipeline.read_source
    monkeypatch.setattr(pipeline, "read_source", lambda spec, chars: itertools.islice(read(spec, chars), 300))
    manifest = prepare_data(recipe, tokenizer, tmp_path / "data")

    def no_weights(*args, **kwargs):
        raise AssertionError("planning loaded weights")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_weights))
    before = recipe.model_dump()
    setup = plan_training(recipe, tmp_path / "data")
    plan, shape = setup.plan, setup.shape
    assert recipe.model_dump() == before  # the caller's recipe is not changed: the resolved one is a copy
    assert (setup.recipe.train.max_steps, setup.recipe.train.micro_batch_size) == (plan.total_steps, plan.micro_batch)
    assert setup.recipe.train.learning_rate == recipe.learning_rate() and setup.recipe.train.packing is not None
    classes = len(setup.data.classes.names) if setup.data.classes else 0
    assert (shape.trainable_params, shape.total_params) == _expected_trainable(asked, AutoConfig.from_pretrained(model_dir),
                                                                               classes)
    assert plan.micro_batch * plan.accumulation == asked.train.global_batch_size
    n_train = manifest["counts"]["final"]["train"]
    epochs = asked.train.epochs or setup.recipe.train.epochs  # the recipe's, or the one derived from the data
    steps = asked.train.max_steps or round(max(1, n_train // asked.train.global_batch_size) * epochs)
    assert plan.total_steps == steps and plan.warmup_steps == round(steps * asked.train.warmup_ratio)
    assert 0 < plan.memory.total <= plan.available
    resolved = setup.recipe.train
    assert resolved.learning_rate == asked.learning_rate() and resolved.max_steps == steps
    assert resolved.micro_batch_size == plan.micro_batch


def test_the_training_guide_lists_the_shipped_recipes():
    line = next(line for line in (ROOT / "docs" / "training.md").read_text().splitlines()
                if line.startswith("Shipped recipes:"))
    assert sorted(re.findall(r"([\w-]+\.yaml)", line)) == sorted(p.name for p in RECIPES) != []


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
