"""The parts of a model that methods choose from: its transformer blocks and its parameters."""

from tuneforge.errors import UserError


def transformer_blocks(model):
    """The model's stack of transformer blocks: a decoder's layers (Llama, Qwen, ...; an encoder-decoder's
    decoder: BART's layers, T5's block), or the one list of as many blocks as the config has layers (an
    encoder's encoder.layer: BERT, RoBERTa, MiniLM, ...)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", getattr(decoder, "block", None))
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    n = getattr(base.config, "num_hidden_layers", None)
    stacks = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if len(stacks) != 1:
        raise UserError(f"{type(base).__name__}: cannot find its transformer blocks (decoder.layers, or one list "
                        "of num_hidden_layers blocks); freeze and gradual_unfreeze support models such as Llama, "
                        "Qwen, Mistral, BERT. Use lora or full.")
    return stacks[0]


def trainable_parameters(model) -> dict:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable), counting tied weights once and 4-bit weights by their element count."""
    import torch

    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # bitsandbytes packs two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def top_modules(model, with_embeddings: bool) -> list:
    """Final norm, an untied output head, and the embeddings when asked for (a tied head comes with them)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    modules = [getattr(decoder, "norm", getattr(decoder, "final_layer_norm", None))]  # T5: final_layer_norm
    try:
        embeddings = model.get_input_embeddings()
    except NotImplementedError:  # an image model has no token embeddings
        embeddings = None
    head = model.get_output_embeddings()
    if head is not None and (embeddings is None or head.weight is not embeddings.weight):
        modules.append(head)
    if with_embeddings and embeddings is not None:
        modules.append(embeddings)
    return [m for m in modules if m is not None]


def train_last_blocks(model, n: int, with_embeddings: bool):
    """Freeze everything, then let the last n blocks and the top modules learn."""
    blocks = transformer_blocks(model)
    if n > len(blocks):
        raise UserError(f"freeze.trainable_blocks: {n} is more than the model's {len(blocks)} blocks; "
                        f"use 1..{len(blocks)} (or method: full).")
    model.requires_grad_(False)
    for block in blocks[len(blocks) - n:]:
        block.requires_grad_(True)
    for module in top_modules(model, with_embeddings):
        module.requires_grad_(True)
    return model


def final_linear(model):
    """A task head's last linear layer (classifier, score, classifier.out_proj; under PEFT the trained copy):
    its input is the features the head reads."""
    import torch

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and any(part in ("classifier", "score") for part in name.split(".")) and "original_module" not in name]
    if not found:
        raise UserError(f"{type(model).__name__} has no classifier / score layer.")
    return found[-1][1]

