"""Numerical invariants of the training loss."""

import contextlib

import torch

from tuneforge.data.batches import collate
from tuneforge.data.tokenize import encode
from tuneforge.models.loader import load_model
from tuneforge.train.loss import loss_sum, mean_loss
from conftest import arithmetic_rows


def _batch(tokenizer, n=5):
    rows = [encode({"id": str(i), **r}, tokenizer, 64) for i, r in enumerate(arithmetic_rows(n))]
    return rows, collate(rows, tokenizer.pad_token_id)


def test_head_on_loss_tokens_only_equals_the_full_model_loss(tiny_model, tiny_tokenizer):
    model = load_model(tiny_model)
    rows, batch = _batch(tiny_tokenizer)
    total, count = loss_sum(model, batch)
    reference = model(**batch).loss  # transformers: mean over non-ignored shifted labels
    assert count == sum(r.loss_tokens for r in rows)
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-6)


def test_mean_loss_is_exact_under_padding(tiny_model, tiny_tokenizer):
    """Batched with padding == one example at a time, token-weighted."""
    model = load_model(tiny_model)
    rows, _ = _batch(tiny_tokenizer, 7)
    batched, n = mean_loss(model, rows, 4, tiny_tokenizer.pad_token_id, "cpu", contextlib.nullcontext)
    one_by_one, m = mean_loss(model, rows, 1, tiny_tokenizer.pad_token_id, "cpu", contextlib.nullcontext)
    assert n == m
    assert abs(batched - one_by_one) < 1e-5
