"""Defaults derived from the data (data/defaults.py): the rules, and a recipe that names only its data
getting them filled in, printed with why, recorded in the run; keys the recipe sets are left alone."""

import json

import numpy as np
import pytest

from conftest import write_jsonl
from tuneforge.data import defaults
from tuneforge.recipe_file import load_recipe, validate_recipe
from tuneforge.train.run import plan_training, train


@pytest.mark.parametrize("n, epochs", [(2, 25), (10, 10), (20, 5), (34, 3), (700, 3), (8_333, 3), (9_000, 2),
                                       (20_000, 1), (1_000_000, 1)])
def test_epochs_follow_the_examples_seen_rule(n, epochs):
    derived = defaults.epochs(n)
    assert derived.value == epochs and f"{n:,} training examples" in derived.why
    assert min(n * epochs, 25_000) >= min(100, n * 25) or epochs == 1


def test_max_length_is_the_99th_percentile_rounded_up_and_capped():
    lengths = np.array([100] * 990 + [5000] * 10)
    derived = defaults.max_length(lengths, model_limit=8192)
    assert derived.value == 128 and "10 of 1,000 are cut" in derived.why and "longest 5,000" in derived.why
    assert defaults.max_length(np.array([3000] * 100), model_limit=512).value == 512  # the model's context
    assert defaults.max_length(np.array([3000] * 100), model_limit=None).value == 2048
    assert defaults.max_length(np.array([5] * 10), model_limit=None).value == 64


def test_max_new_tokens_is_the_95th_percentile_of_the_answers():
    assert defaults.max_new_tokens(np.arange(1, 201)).value == 192  # p95 = 190, rounded up to 16
    assert defaults.max_new_tokens([3, 4]).value == 16
    capped = defaults.max_new_tokens([2000] * 10)
    assert capped.value == 512 and "capped" in capped.why


def long_answer_rows(n: int) -> list[dict]:
    """Questions with answers of growing length: the longest tenth far past 128 tokens."""
    return [{"messages": [{"role": "user", "content": f"Explain item {i}."},
                          {"role": "assistant", "content": " ".join(f"word{j}" for j in range(5 + 3 * i))}]}
            for i in range(n)]


def test_a_recipe_naming_only_its_data_gets_derived_defaults(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "long.jsonl", long_answer_rows(40))
    recipe = validate_recipe({"name": "derived", "model": {"name": str(tiny_model)}, "data": {"sources": [str(data)]},
                              "train": {"global_batch_size": 8, "precision": "fp32", "eval_every": 100}})
    setup = plan_training(recipe)
    out = capsys.readouterr().out
    resolved = setup.recipe
    assert recipe.train.epochs is None and recipe.data.max_length is None  # the caller's recipe as it was
    n_train = len(setup.data.encoded["train"])
    assert resolved.train.epochs == defaults.epochs(n_train).value > 1
    assert setup.plan.total_steps == round(n_train // 8 * resolved.train.epochs)
    lengths = [len(e.input_ids) for e in setup.data.encoded["train"]]
    assert resolved.data.max_length % 64 == 0 and resolved.data.max_length >= np.quantile(lengths, 0.99)
    assert resolved.eval.max_new_tokens > 128  # the longest answers run past the old fixed 128
    assert "Derived from the data" in out
    for key in ("train.epochs", "data.max_length", "eval.max_new_tokens"):
        assert f"  {key} = " in out, out

    run = train(recipe, tmp_path / "runs")
    saved = load_recipe(run / "recipe.yaml")
    assert (saved.train.epochs, saved.data.max_length, saved.eval.max_new_tokens) == (
        resolved.train.epochs, resolved.data.max_length, resolved.eval.max_new_tokens)
    derived = json.loads((run / "plan.json").read_text())["derived"]
    assert set(derived) == {"train.epochs", "data.max_length", "eval.max_new_tokens"}
    assert all(d["why"] for d in derived.values())
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["tokens"]["max_length"] == resolved.data.max_length


def test_keys_the_recipe_sets_are_not_derived(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "long.jsonl", long_answer_rows(40))
    recipe = validate_recipe({"model": {"name": str(tiny_model)}, "data": {"sources": [str(data)], "max_length": 96},
                              "train": {"epochs": 1, "global_batch_size": 8}, "eval": {"max_new_tokens": 20}})
    setup = plan_training(recipe)
    assert (setup.recipe.train.epochs, setup.recipe.data.max_length, setup.recipe.eval.max_new_tokens) == (1, 96, 20)
    assert setup.derived == [] and "Derived from the data" not in capsys.readouterr().out


def test_image_size_is_the_models_own_unless_the_images_are_much_smaller():
    from tuneforge.data.defaults import image_size

    def stats(side):
        return {"median_width": side, "median_height": side + 10}

    assert image_size(stats(28), 224).value == 64  # Fashion-MNIST: 2 x 28 = 56, rounded up to 32, at least 64
    assert image_size(stats(60), 224).value == 128
    assert image_size(stats(112), 224).value == 224  # twice the side reaches the model's: its own
    assert image_size(stats(500), 224).value == 224
    assert image_size(stats(10), 32).value == 32  # never above the model's size
    assert "28 pixels" in image_size(stats(28), 224).why
