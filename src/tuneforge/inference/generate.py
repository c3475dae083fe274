"""Batched generation (greedy, or sampled at a temperature): left padding, KV cache, prompts of similar
length batched together. An encoder-decoder (T5, BART) reads each prompt as its tokenizer encodes it
(with its special tokens) and its output is the answer alone."""

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from tuneforge.inference.kv_cache import growing_cache


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                   desc: str = "generate", temperature: float = 0.0) -> list[str]:
    """Continuations of already-rendered prompts, in the order given; temperature 0 is greedy."""
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, **sampling)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    # a decoder continues its prompt, so prompts end together; an encoder reads its own from position 0
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    bar = tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False,
               disable=True if not prompts else None)  # no bar for nothing to generate
    for start in bar:
        chunk = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=encoder_decoder).to(device)
        if encoder_decoder:  # transformers' own encoder-decoder cache
            out = model.generate(**enc, generation_config=config)
        else:
            out = model.generate(**enc, generation_config=config, past_key_values=growing_cache(model))
            out = out[:, enc["input_ids"].shape[1]:]
        for i, row in zip(chunk, out):
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return outputs
