"""Fine-tuning methods: which parameters learn. `lora` wraps the model with PEFT adapters, `full`
trains every weight, `freeze` trains only the last N transformer blocks and the final norm."""

import torch

from tuneforge.errors import UserError
from tuneforge.recipe import Recipe


def apply_method(model, recipe: Recipe):
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(recipe.seed)  # adapter initialisation
        lora = recipe.lora
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, config)
    if recipe.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    blocks = transformer_blocks(model)
    n = recipe.freeze.trainable_blocks
    if n > len(blocks):
        raise UserError(f"freeze.trainable_blocks: {n} is more than the model's {len(blocks)} blocks; "
                        f"use 1..{len(blocks)} (or method: full).")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in blocks[-n:]:
        block.requires_grad_(True)
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    return model


def transformer_blocks(model) -> torch.nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"{type(model).__name__}: cannot find its transformer blocks (decoder.layers); "
                        "method: freeze supports decoder models such as Llama, Qwen, Mistral. Use lora or full.")
    return layers


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable), counting tied weights once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
