"""Inference in half precision: the output head stored in the compute dtype, and attention on CPUs in
fp32, give the logits autocast would, without its per-forward casts. The KV cache that appends in place
gives the tokens transformers' own cache does."""

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tuneforge.inference.kv_cache import GrowingLayer, growing_cache
from tuneforge.inference.run_models import _strides_that_fold, for_inference
from tuneforge.models.loader import load_model
from tuneforge.runtime import attention


def _load(folder):
    return load_model(folder, torch.float32, "cpu", attn_implementation=attention.NAME)


def test_half_inference_keeps_autocast_logits_and_the_fp32_embeddings(tiny_model):
    reference, model = _load(tiny_model), _load(tiny_model)
    for_inference(model, "bf16")
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight.dtype == torch.bfloat16 and embeddings.weight.dtype == torch.float32  # untied, not converted
    assert reference.get_output_embeddings().weight is reference.get_input_embeddings().weight
    ids = torch.randint(3, 300, (2, 11))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        # one prompt's last position, as generate's prefill asks (the slice the hook copies)
        last = model(input_ids=ids[:1], logits_to_keep=1).logits
        assert torch.allclose(last.float(), reference(input_ids=ids[:1]).logits[:, -1:].float(), atol=1e-2)


def test_the_head_input_gets_strides_that_fold_and_keeps_its_values():
    hidden = torch.randn(1, 40, 8)
    sliced = hidden[:, -1:]  # stride (320, 8, 1): torch's matmul would not fold it into one mm
    (copied,) = _strides_that_fold(None, (sliced,))
    assert copied.stride() == (8, 8, 1) and torch.equal(copied, sliced)
    assert _strides_that_fold(None, (hidden,)) is None  # plain strides: untouched, no copy


def test_attention_with_a_mask_runs_in_fp32_on_cpu(tiny_model):
    """A padded batch (or a decode step over a KV cache) under bf16 autocast: the scores are those of fp32
    SDPA on the same bf16 inputs, not of bf16 SDPA."""
    module = _load(tiny_model).model.layers[0].self_attn
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, heads, 6, 8).bfloat16() for heads in (4, 2, 2))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[1, :, :, :2] = False  # row 1 left-padded by two tokens
    mask[1, :, :2, :2] = True  # (its padding rows see themselves, as transformers' masks do)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.packed_attention(module, q, k, v, mask)
    expected, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.bfloat16())


def test_growing_cache_generates_what_transformers_cache_does(tiny_model):
    model = _load(tiny_model)
    for_inference(model, "fp32")
    ids = torch.randint(3, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 left-padded
    config = GenerationConfig(max_new_tokens=80, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                  past_key_values=DynamicCache(config=model.config))
        cache = growing_cache(model)
        got = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, past_key_values=cache)
    assert torch.equal(got, expected)
    assert all(type(layer) is GrowingLayer for layer in cache.layers)
    assert cache.get_seq_length() == 9 + 80 - 1  # the last token is returned, never fed back


def _reference_append(layer, reference, new):
    keys, _ = layer.update(new, -new)
    reference = torch.cat([reference, new], dim=2)
    assert torch.equal(keys, reference) and torch.equal(layer.values, -reference)
    return reference


def test_growing_layer_writes_in_place_and_takes_over_tensors_assigned_to_it():
    layer = GrowingLayer()
    reference = torch.randn(3, 2, 5, 4)
    layer.update(reference, -reference)
    buffer = layer.keys.data_ptr()
    for _ in range(60):  # within the room the first update left (5 + 64): no new buffer, no copy
        reference = _reference_append(layer, reference, torch.randn(3, 2, 1, 4))
        assert layer.keys.data_ptr() == buffer and layer.keys.shape[2] == reference.shape[2]
    for _ in range(20):  # past it: a larger buffer, the positions so far copied over once
        reference = _reference_append(layer, reference, torch.randn(3, 2, 1, 4))
    assert layer.keys.data_ptr() != buffer
    # what the serving engine does between steps: drop finished rows, trim common left padding, merge
    layer.batch_select_indices(torch.tensor([0, 2]))
    reference = reference[[0, 2]]
    reference = _reference_append(layer, reference, torch.randn(2, 2, 1, 4))
    layer.keys, layer.values = layer.keys[:, :, 7:], layer.values[:, :, 7:]
    reference = _reference_append(layer, reference[:, :, 7:], torch.randn(2, 2, 1, 4))
    layer.keys, layer.values = torch.cat([layer.keys, layer.keys]), torch.cat([layer.values, layer.values])
    _reference_append(layer, torch.cat([reference, reference]), torch.randn(4, 2, 3, 4))
