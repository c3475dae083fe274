"""The method registry: every method the recipe accepts is one registered module, and what each one
declares (adapter, mergeable, static graph, its parameter count) is what it does to a real model."""

from typing import get_args

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tuneforge.methods import METHODS, apply_method, get_method
from tuneforge.methods.model_parts import count_parameters
from tuneforge.models.loader import load_model
from tuneforge.recipe import Method, Recipe
from tuneforge.recipe_file import validate_recipe


def test_the_recipe_accepts_exactly_the_registered_methods_in_order():
    assert get_args(Method) == tuple(METHODS) == ("full", "freeze", "gradual_unfreeze", "lora", "rslora", "dora",
                                                  "qlora", "prompt_tuning")
    for name, method in METHODS.items():
        assert method.name == name and method.learning_rate > 0
        assert Recipe(method=name).learning_rate() == method.learning_rate
    with pytest.raises(Exception, match="lora"):
        validate_recipe({"method": "loraa"})


@pytest.mark.parametrize("name", list(METHODS))
def test_a_method_does_what_it_declares(name, tiny_model):
    method = get_method(name)
    recipe = Recipe(method=name, lora={"dropout": 0.0}, prompt_tuning={"init_text": None})
    model = load_model(tiny_model)
    x = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        before = model(x).logits
    tuned = apply_method(model, recipe)
    total, trainable = count_parameters(tuned)
    assert 0 < trainable <= total
    assert hasattr(tuned, "peft_config") == method.adapter  # an adapter method wraps the model with PEFT
    if method.adapter and method.mergeable:
        with torch.no_grad():  # a fresh LoRA adapter changes nothing (B = 0), and merges into plain weights
            adapted = tuned(x).logits
            merged = tuned.merge_and_unload()
            torch.testing.assert_close(adapted, before, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(merged(x).logits, before, rtol=1e-4, atol=1e-5)
        assert not hasattr(merged, "peft_config")
    unfreezer = method.unfreezer(tuned, recipe)
    assert (unfreezer is None) == method.static_graph
    # the plan counts the method on a weightless copy of the model: the same numbers as the real one
    counted = get_method(method.counted_as().name)
    with torch.device("meta"):
        meta = apply_method(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model)),
                            recipe.model_copy(update={"method": counted.name}))
    assert count_parameters(meta)[1] == trainable
