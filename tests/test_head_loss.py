"""The chunked LM head + cross-entropy of the training loss (train/head_loss.py) gives what cross-entropy
over the full logits gives: the loss, the correct count and every gradient."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import arithmetic_rows

from tuneforge.data.batches import collate
from tuneforge.tasks.chat import encode
from tuneforge.train import head_loss
from tuneforge.train.head_loss import head_cross_entropy
from tuneforge.train.loss import LossModel


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_head_loss_equals_full_logits(smoothing, precision, monkeypatch):
    """Several chunks (200 tokens, 64 a chunk; in bf16 on the CPU the last 8 are padded to 16 rows); loss,
    correct count and the gradients of the hidden states, the head weight and its bias equal
    cross_entropy over the full logits."""
    monkeypatch.setattr(head_loss, "CHUNK_BYTES", 1)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 400)
    hidden = torch.randn(200, 32, requires_grad=True)
    targets = torch.randint(0, 400, (200,))
    autocast = _bf16 if precision == "bf16" else contextlib.nullcontext
    with autocast():
        logits = head(hidden)
    reference = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=smoothing)
    expected = torch.autograd.grad(reference * 0.5, (hidden, head.weight, head.bias))
    with autocast():
        loss, correct = head_cross_entropy(hidden, head, targets, smoothing, count_correct=True)
    got = torch.autograd.grad(loss * 0.5, (hidden, head.weight, head.bias))
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(loss, reference, **tolerance)
    assert correct == int((logits.argmax(-1) == targets).sum())
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, **tolerance)


def test_loss_model_gradients_equal_the_plain_model(tiny_model, tiny_tokenizer, monkeypatch):
    """Full fine-tuning trains the tied embedding / head: every gradient through the chunked head equals
    the one through transformers' own logits."""
    from tuneforge.models.loader import load_model

    monkeypatch.setattr(head_loss, "CHUNK_BYTES", 1)
    rows = [encode({"id": str(i), **r}, tiny_tokenizer, 64) for i, r in enumerate(arithmetic_rows(6))]
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    grads = []
    for chunked in (True, False):
        model = load_model(tiny_model)
        if chunked:
            loss, n, _ = LossModel(model)(batch)
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
