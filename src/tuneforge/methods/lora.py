"""lora: low-rank adapters (PEFT) on the linear layers, the base frozen."""

import re

from tuneforge.errors import UserError
from tuneforge.methods.base import Method, register


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
        model = self.prepare_base(model)
        # A task's new head is saved and trained whole next to the adapters (PEFT's modules_to_save).
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="SEQ_CLS" if head else "CAUSAL_LM",
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
    for target in targets:
        if not any(name == target or name.endswith("." + target) or re.fullmatch(target, name) for name in linear):
            short = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise UserError(f"lora.target_modules: {target!r} matches no linear module of this model. "
                            f"Its linear modules are: {', '.join(short)} (or use all-linear).")
