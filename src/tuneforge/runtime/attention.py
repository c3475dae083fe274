"""Attention for packed batches: each example attends causally to itself only, one SDPA call per example;
on CPUs, attention of every kind computed in fp32.

A packed micro-batch is one row of several examples (collate_packed) with `cu_seq_lens_q/k` marking where
each starts (the keywords of FlashAttention-2's varlen kernel, so the same batch also runs under
attn_implementation "flash_attention_2"). transformers' own SDPA path would need a row x row
block-diagonal mask and computes every masked-out score too; on this CPU (2 cores, SmolLM2-135M, eight
64-token examples in a 512-token row, forward + backward per layer) that took 17.0 ms against 3.8 ms for
one causal call per example (fp32; bf16 SDPA is slower here: 8.0 ms, so the scores are computed in fp32
on CPUs). Any batch without those keywords, or a model feature this path does not cover (sliding
windows, soft-capped scores), goes to transformers' own SDPA attention with its mask. Decoding with a
KV cache is such a batch: bf16 SDPA is 5x slower than fp32 there on this CPU (eight rows over a 400-token
cache, 1.65 ms against 0.3 ms a layer), so inference uses this attention as well.
"""

import contextlib

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "tuneforge_packed"


# Kept out of torch.compile (train.compile): the per-example split depends on the batch's values, so a
# traced copy would be specialised to each step's example lengths and recompiled step after step (the
# bundled model, pydocs, batch 16: compiled steps ran 45% slower than eager until Dynamo gave up).
@torch.compiler.disable
def packed_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [batch, heads, tokens, dim], key / value [batch, kv_heads, kv_tokens, dim] -> [batch, tokens,
    heads, dim]; a packed row (batch 1 with cu_seq_lens_q) one causal call per example, anything else
    through transformers' SDPA attention with its mask; on CPUs in fp32 either way (module docstring)."""
    starts = kwargs.get("cu_seq_lens_q")
    packed = (starts is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
              and not (getattr(module, "sliding_window", None) or kwargs.get("sliding_window") or kwargs.get("softcap")))
    dtype, on_cpu = query.dtype, query.device.type == "cpu"
    if on_cpu:
        query, key, value = query.float(), key.float(), value.float()
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
    # CPU autocast lists SDPA among its bf16 ops and would cast the fp32 inputs straight back.
    with torch.autocast("cpu", enabled=False) if on_cpu else contextlib.nullcontext():
        if not packed:
            out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                            scaling=scaling, **kwargs)
            return out.to(dtype), None
        gqa = query.shape[1] != key.shape[1]
        lengths = torch.diff(starts).tolist()
        out = torch.cat([
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
        ], dim=2)
    return out.to(dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
