"""Which parameters learn: one module per method, each registering one Method (methods/base.py).
A new method is one new module here, imported below, plus its tests."""

# isort: off
# Registration order is the order the recipe lists the methods in.
from tuneforge.methods import full, freeze, gradual_unfreeze, lora, rslora, dora, qlora, prompt_tuning  # noqa: F401
# isort: on
from tuneforge.methods.base import METHODS, Method, get_method, register

__all__ = ["METHODS", "Method", "apply_method", "get_method", "register"]


def apply_method(model, recipe, model_dir=None, head: tuple[str, ...] = ()):
    """The recipe's method applied to a loaded (or meta-device) model, adapters initialised from the seed.
    `head` names the task's new modules (tasks/base.py, head_modules): they learn whatever the method."""
    import torch

    torch.manual_seed(recipe.seed)  # adapter and soft-prompt initialisation
    method = get_method(recipe.method)
    model = method.apply(model, recipe, model_dir, tuple(head))
    if not method.adapter:
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in head:
                module.requires_grad_(True)
    return model
