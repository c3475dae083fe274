"""Fine-tuning methods: which parameters learn, and how the model is loaded for them.

full trains every weight; freeze trains the last N blocks (or everything but name patterns);
gradual_unfreeze starts with the last block and unfreezes one more every K steps; lora, rslora, dora
and qlora wrap the model with PEFT LoRA adapters (qlora over a 4-bit base); prompt_tuning learns a
soft prompt in front of every example.
"""

import re
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.recipe import HALF_BASE_METHODS, LORA_METHODS, Recipe
from tuneforge.train import attention as packed_attention
from tuneforge.train.hardware import DTYPES


def load_for_method(model_dir: Path, recipe: Recipe, device: str, precision: str = "fp32"):
    """The model loaded in fp32 (or 4-bit for qlora) with the recipe's dropout, method applied; with
    bf16 / fp16 autocast, the frozen linear weights of lora, rslora and prompt_tuning are stored in that
    dtype (see half_frozen_linears)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if recipe.model.dropout is not None:
        _override_dropout(config, recipe.model.dropout)
    kwargs = {"config": config, "dtype": torch.float32}
    if recipe.train.packing:
        kwargs["attn_implementation"] = packed_attention.NAME
    if recipe.method == "qlora":
        kwargs |= {"quantization_config": _four_bit_config(), "device_map": device}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if recipe.method != "qlora":
        model = model.to(device)
    model = apply_method(model, recipe, model_dir)
    if precision != "fp32" and recipe.method in HALF_BASE_METHODS:
        half_frozen_linears(model, DTYPES[precision])
    return model


def half_frozen_linears(model, dtype: torch.dtype) -> None:
    """Store frozen linear weights in the autocast dtype. Autocast would cast them on every forward
    anyway, so the results are identical, but the casts go (bundled model, LoRA, bf16: 14% of a step
    in the profile) and those weights take half the memory. A frozen output head gets a weight of its own
    in that dtype where it is tied to the input embeddings (the loss casts it to that dtype anyway: the
    bundled model's 49,152 x 576 took 21 ms of a 1.3 s LoRA step). Embeddings and norms stay fp32, so
    the residual stream keeps fp32 precision. Those are then copied out of the checkpoint's memory map,
    which would otherwise stay resident in full for them (bundled model: 415 MB of fp32 file pages next
    to the 212 MB of bf16 weights)."""
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head and not module.weight.requires_grad:
            module.to(dtype)
    if isinstance(head, torch.nn.Linear) and not head.weight.requires_grad and head.weight.dtype != dtype:
        # new Parameters: converting the tied one in place would turn the embeddings to `dtype` too
        head.weight = torch.nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
        if head.bias is not None:
            head.bias = torch.nn.Parameter(head.bias.detach().to(dtype), requires_grad=False)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype != dtype:
                tensor.data = tensor.data.clone()


def apply_method(model, recipe: Recipe, model_dir: Path | None = None):
    """Mark what learns (requires_grad) or wrap the model with an adapter; returns the model to train.
    gradual_unfreeze marks every block it will ever train; Unfreezer narrows that per step."""
    torch.manual_seed(recipe.seed)  # adapter and soft-prompt initialisation
    if recipe.method in LORA_METHODS:
        return _lora(model, recipe)
    if recipe.method == "prompt_tuning":
        return _prompt_tuning(model, recipe, model_dir)
    if recipe.method == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if recipe.method == "freeze" and recipe.freeze.frozen_modules:
        return _freeze_by_pattern(model, recipe.freeze.frozen_modules)
    blocks = transformer_blocks(model)
    n = len(blocks) if recipe.method == "gradual_unfreeze" else recipe.freeze.trainable_blocks
    if n > len(blocks):
        raise UserError(f"freeze.trainable_blocks: {n} is more than the model's {len(blocks)} blocks; "
                        f"use 1..{len(blocks)} (or method: full).")
    for block in blocks[len(blocks) - n:]:
        block.requires_grad_(True)
    for module in _top_modules(model, recipe.freeze.train_embeddings):
        module.requires_grad_(True)
    return model


class Unfreezer:
    """gradual_unfreeze: at step s, the last 1 + s // every blocks learn (the top modules always do).
    Derived from the step alone, so a resumed run is at the same stage as the run it continues."""

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


def transformer_blocks(model) -> torch.nn.ModuleList:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"{type(base).__name__}: cannot find its transformer blocks (decoder.layers); "
                        "freeze and gradual_unfreeze support decoder models such as Llama, Qwen, Mistral. "
                        "Use lora or full.")
    return layers


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable), counting tied weights once and 4-bit weights by their element count."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # bitsandbytes packs two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def _lora(model, recipe: Recipe):
    from peft import LoraConfig, get_peft_model

    lora = recipe.lora
    if lora.target_modules != "all-linear":
        _check_targets(model, lora.target_modules)
    if recipe.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and lets gradients flow to the adapters; checkpointing is ours to decide.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for module in model.modules():
            # bitsandbytes re-lays 4-bit weights in place for CPU inference on the first no-grad forward
            # (our validation); training shares those weights, so keep the one layout backward understands.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM",
                        use_rslora=recipe.method == "rslora", use_dora=recipe.method == "dora")
    return get_peft_model(model, config)


def _prompt_tuning(model, recipe: Recipe, model_dir: Path | None):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    pt = recipe.prompt_tuning
    by_text = bool(pt.init_text) and model_dir is not None
    config = PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=pt.virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if by_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=pt.init_text if by_text else None,
        tokenizer_name_or_path=str(model_dir) if by_text else None)
    return get_peft_model(model, config)


def _check_targets(model, targets: list[str]) -> None:
    """PEFT silently adapts nothing for a misspelt name in a list; say which name matched nothing."""
    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in targets:
        if not any(name == target or name.endswith("." + target) or re.fullmatch(target, name) for name in linear):
            short = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise UserError(f"lora.target_modules: {target!r} matches no linear module of this model. "
                            f"Its linear modules are: {', '.join(short)} (or use all-linear).")


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


def _top_modules(model, with_embeddings: bool) -> list[torch.nn.Module]:
    """Final norm, an untied output head, and the embeddings when asked for (a tied head comes with them)."""
    modules = [getattr(model.get_decoder(), "norm", None)]
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is not embeddings.weight:
        modules.append(head)
    if with_embeddings:
        modules.append(embeddings)
    return [m for m in modules if m is not None]


def _override_dropout(config, value: float) -> None:
    keys = [k for k, v in config.to_dict().items()
            if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop")) and "classifier" not in k]
    if not keys:
        raise UserError(f"model.dropout: this model's config has no dropout setting to override "
                        f"({type(config).__name__}); leave model.dropout empty.")
    for key in keys:
        setattr(config, key, value)


def _four_bit_config():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method: qlora needs the bitsandbytes package (pip install bitsandbytes); "
                        "or use method: lora.") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)
