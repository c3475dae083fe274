"""full: every weight learns."""

from tuneforge.methods.base import Method, register


@register
class Full(Method):
    name = "full"
    learning_rate = 3e-5  # updating every pre-trained weight takes a small step

    def apply(self, model, recipe, model_dir=None, head=()):
        model.requires_grad_(True)
        return model

    def head_gradient(self, vocab: int, hidden: int) -> int:
        return vocab * hidden * 4  # summed over the loss's chunks in fp32
