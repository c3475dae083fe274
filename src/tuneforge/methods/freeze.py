"""freeze: the last N transformer blocks learn (with the final norm and an untied head), or everything
but the parameters that name patterns match."""

import re

from tuneforge.errors import UserError
from tuneforge.methods.base import Method, register
from tuneforge.methods.model_parts import train_last_blocks


@register
class Freeze(Method):
    name = "freeze"
    learning_rate = 1e-4

    def apply(self, model, recipe, model_dir=None, head=()):
        if recipe.freeze.frozen_modules:
            return _freeze_by_pattern(model, recipe.freeze.frozen_modules)
        return train_last_blocks(model, recipe.freeze.trainable_blocks, recipe.freeze.train_embeddings)

    def learning_blocks(self, recipe, layers: int) -> int:
        return layers if recipe.freeze.frozen_modules else min(layers, recipe.freeze.trainable_blocks)


def _freeze_by_pattern(model, patterns: list[str]):
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise UserError(f"freeze.frozen_modules: {pattern!r} is not a valid regular expression ({e}).") from None
        if not any(regex.search(name) for name in names):
            raise UserError(f"freeze.frozen_modules: {pattern!r} matches no parameter. Parameter names look like "
                            f"{names[0]}, {names[len(names) // 2]}.")
    for name, p in model.named_parameters():
        p.requires_grad_(not any(re.search(pattern, name) for pattern in patterns))
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("freeze.frozen_modules: these patterns freeze every parameter; leave some to train.")
    return model
