"""lora: low-rank adapters (PEFT) on the linear layers (or on named convolutions of an image model), the
base frozen."""

import re

from tuneforge.errors import UserError
from tuneforge.methods.base import Method, peft_task_type, register


@register
class Lora(Method):
    name = "lora"
    learning_rate = 1e-3  # adapters tolerate (and need) a much larger step than full fine-tuning
    adapter = True
    half_base = True  # only the adapter is saved, so the frozen base may be stored in the autocast dtype
    rank_stabilised = False
    weight_decomposed = False

    def apply(self, model, recipe, model_dir=None, head=()):
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        if lora.target_modules != "all-linear":
            _check_targets(model, lora.target_modules)
        else:
            _check_some_linear(model, head)
        model = self.prepare_base(model)
        # A task's new head is saved and trained whole next to the adapters (PEFT's modules_to_save).
        # PEFT's sequence-classification wrapper passes input_ids: an image model takes the plain one.
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type=peft_task_type(model, head),
                            modules_to_save=list(head) or None,
                            use_rslora=self.rank_stabilised, use_dora=self.weight_decomposed)
        return get_peft_model(model, config)

    def prepare_base(self, model):
        return model

    def activation_kind(self, recipe) -> str:
        return "lora_dropout" if recipe.lora.dropout else "lora"


def _check_targets(model, targets: list[str]) -> None:
    """PEFT silently adapts nothing for a misspelt name in a list; say which name matched nothing."""
    import torch

    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    convolutions = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for target in targets:
        if not any(name == target or name.endswith("." + target) or re.fullmatch(target, name)
                   for name in linear + convolutions):
            short = sorted({name.rsplit(".", 1)[-1] for name in linear})
            convs = sorted({".".join(name.split(".")[-2:]) for name in convolutions})
            raise UserError(f"lora.target_modules: {target!r} matches no linear module of this model. Its linear "
                            f"modules are: {', '.join(short) or 'none'}"
                            + (f"; its convolutions: {', '.join(convs[:12])}" if convs else "") + " (or use all-linear).")


def _check_some_linear(model, head) -> None:
    """all-linear on a convolutional model finds only its head, which learns whole anyway."""
    import torch

    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and not any(name == h or name.startswith(h + ".") for h in head)]
    if not linear:
        from collections import Counter

        # the name shared by most pointwise (1 x 1) convolutions: the blocks' projections, say
        pointwise = Counter(".".join(name.split(".")[-2:]) for name, m in model.named_modules()
                            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)
        example = pointwise.most_common(1)[0][0] if pointwise else "NAME"
        raise UserError(f"lora.target_modules: all-linear, but {type(model).__name__} has no linear layer outside "
                        f"its new head (a convolutional model). Name convolutions to adapt, for instance "
                        f"lora.target_modules: [{example}], or use method: full or freeze.")
