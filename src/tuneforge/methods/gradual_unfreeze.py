"""gradual_unfreeze: the last block learns first, one more block every K steps (freeze.unfreeze_every)."""

from tuneforge.methods.base import Method, register
from tuneforge.methods.model_parts import train_last_blocks, transformer_blocks


@register
class GradualUnfreeze(Method):
    name = "gradual_unfreeze"
    learning_rate = 1e-4
    static_graph = False  # which blocks learn changes: compiled blocks would recompile, DDP finds unused ones

    def apply(self, model, recipe, model_dir=None, head=()):
        """Every block it will ever train is marked; Unfreezer narrows that per step."""
        return train_last_blocks(model, len(transformer_blocks(model)), recipe.freeze.train_embeddings)

    def unfreezer(self, model, recipe):
        return Unfreezer(model, recipe.freeze.unfreeze_every)


class Unfreezer:
    """At step s, the last 1 + s // every blocks learn (the top modules always do). Derived from the
    step alone, so a resumed run is at the same stage as the run it continues."""

    def __init__(self, model, every: int):
        self.blocks, self.every, self.active = transformer_blocks(model), every, -1

    def update(self, step: int) -> bool:
        """Set requires_grad for this step; True when the number of learning blocks changed."""
        n = min(len(self.blocks), 1 + step // self.every)
        if n == self.active:
            return False
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= len(self.blocks) - n)
        self.active = n
        return True
