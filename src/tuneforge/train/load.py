"""The model to train: loaded in fp32 (or as its method says, 4-bit for qlora) with the recipe's dropout,
its method applied (methods/), and with bf16 / fp16 autocast the frozen linear weights of methods with
`half_base` stored in that dtype (runtime/precision.py)."""

from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.methods import apply_method, get_method
from tuneforge.recipe import Recipe
from tuneforge.runtime import attention as packed_attention
from tuneforge.runtime.hardware import DTYPES
from tuneforge.runtime.precision import half_frozen_linears


def load_for_method(model_dir: Path, recipe: Recipe, device: str, precision: str = "fp32"):
    from transformers import AutoConfig, AutoModelForCausalLM

    method = get_method(recipe.method)
    config = AutoConfig.from_pretrained(model_dir)
    if recipe.model.dropout is not None:
        _override_dropout(config, recipe.model.dropout)
    kwargs = {"config": config, "dtype": torch.float32, **method.load_options(device)}
    if recipe.train.packing:
        kwargs["attn_implementation"] = packed_attention.NAME
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    model = apply_method(model, recipe, model_dir)
    if precision != "fp32" and method.half_base:
        half_frozen_linears(model, DTYPES[precision])
    return model


def _override_dropout(config, value: float) -> None:
    keys = [k for k, v in config.to_dict().items()
            if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop")) and "classifier" not in k]
    if not keys:
        raise UserError(f"model.dropout: this model's config has no dropout setting to override "
                        f"({type(config).__name__}); leave model.dropout empty.")
    for key in keys:
        setattr(config, key, value)
