"""The model to train: loaded with its task's auto class (a new head configured for the task's classes)
in fp32 (or as its method says, 4-bit for qlora) with the recipe's dropout, its method applied
(methods/; the task's new head learns in full), and with bf16 / fp16 autocast the frozen linear weights
of methods with `half_base` stored in that dtype (runtime/precision.py)."""

from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.methods import apply_method, get_method
from tuneforge.models.loader import head_config, load_with_head, resolve_pooling
from tuneforge.recipe import Recipe
from tuneforge.runtime import attention as packed_attention
from tuneforge.runtime.hardware import DTYPES, image_fast_path
from tuneforge.runtime.precision import half_frozen_linears
from tuneforge.tasks import get_task


def load_for_method(model_dir: Path, recipe: Recipe, device: str, precision: str = "fp32", classes=None,
                    pad_id: int | None = None):
    """`classes` (tasks/labelled.py, Classes) sets up a task's new head; `pad_id` is the tokenizer's."""
    import transformers

    method, task = get_method(recipe.method), get_task(recipe.task)
    config = task_config(model_dir, recipe, classes, pad_id)
    kwargs = {"dtype": torch.float32, **method.load_options(device)}
    if recipe.train.packing:
        kwargs["attn_implementation"] = packed_attention.NAME
    if task.head:
        model = load_with_head(model_dir, config, task.model_class, **kwargs)
    else:
        model = getattr(transformers, task.model_class).from_pretrained(model_dir, config=config, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    if task.images and image_fast_path(recipe.train.precision, device, recipe.data.image.size)[1]:
        model = model.to(memory_format=torch.channels_last)
    model = apply_method(model, recipe, model_dir, task.head_modules(model))
    if precision != "fp32" and method.half_base:
        half_frozen_linears(model, DTYPES[precision])
    return model


def task_config(model_dir: Path, recipe: Recipe, classes=None, pad_id: int | None = None):
    """The model's config with the recipe's dropout and the task's head (its classes, its pooling) set."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if recipe.model.dropout is not None:
        _override_dropout(config, recipe.model.dropout)
    task = get_task(recipe.task)
    if task.head and not task.images:
        config = head_config(config, resolve_pooling(model_dir, recipe.head.pooling)[0])
    if classes is not None:
        classes.configure(config, pad_id)
    return config


def _override_dropout(config, value: float) -> None:
    keys = [k for k, v in config.to_dict().items()
            if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop")) and "classifier" not in k]
    if not keys:
        raise UserError(f"model.dropout: this model's config has no dropout setting to override "
                        f"({type(config).__name__}); leave model.dropout empty.")
    for key in keys:
        setattr(config, key, value)
