"""Numerical invariants of the training loss: head on answer tokens only, padding, packing."""

import contextlib

import pytest
import torch
from conftest import arithmetic_rows

from tuneforge.data.batches import bucket_length, collate, collate_packed, pack
from tuneforge.models.loader import load_model
from tuneforge.runtime.attention import NAME
from tuneforge.runtime.hardware import matmul_shapes_cached, shapes_cached_now
from tuneforge.tasks.chat import encode
from tuneforge.train.loss import LossModel, _head_is_plain, evaluate_loss, example_losses


def _rows(tokenizer, n=5):
    return [encode({"id": str(i), **r}, tokenizer, 64) for i, r in enumerate(arithmetic_rows(n))]


def test_head_on_loss_tokens_only_equals_the_full_model_loss(tiny_model, tiny_tokenizer):
    model = load_model(tiny_model)
    rows = _rows(tiny_tokenizer)
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    total, count, _ = LossModel(model)(batch)
    reference = model(**batch).loss  # transformers: mean over non-ignored shifted labels
    assert count == sum(r.loss_tokens for r in rows)
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["final_logit_softcapping", "logit_scale", "logits_scaling"])
def test_models_that_scale_their_logits_take_the_full_forward_with_the_same_loss(key, tiny_model, tiny_tokenizer):
    """A config that scales or caps logits after the head (Gemma's softcapping, Cohere's and Granite's
    scales; Llama itself ignores the key) sends the loss through the model's own forward: the same sum,
    count and accuracy as the chunked head on the answer positions, in training (with label smoothing)
    and in evaluation."""
    rows = _rows(tiny_tokenizer)
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    plain, scaled = load_model(tiny_model), load_model(tiny_model)
    setattr(scaled.config, key, 1.0)
    assert not _head_is_plain(scaled.config)
    for training in (True, False):
        a, b = LossModel(plain, label_smoothing=0.1), LossModel(scaled, label_smoothing=0.1)
        a.train(training), b.train(training)
        (loss_a, n_a, correct_a), (loss_b, n_b, correct_b) = a(batch), b(batch)
        assert n_a == n_b == sum(r.loss_tokens for r in rows) and correct_a == correct_b
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
        assert correct_a == 0 or not training  # accuracy is counted in evaluation only
    smoothed = LossModel(scaled, label_smoothing=0.1).train()(batch)[0]
    assert smoothed > LossModel(scaled).train()(batch)[0]  # smoothing reaches the full-forward path
    # targets set to the model's own first choice: every answer token counts as correct on both paths
    with torch.no_grad():
        guesses = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    answers = batch["labels"][:, 1:] != -100
    batch["labels"][:, 1:][answers] = guesses[:, :-1][answers]
    for model in (plain, scaled):
        assert LossModel(model).eval()(batch)[2] == int(answers.sum())


def test_mean_loss_is_exact_under_padding(tiny_model, tiny_tokenizer):
    """Batched with padding == one example at a time, token-weighted."""
    loss_model = LossModel(load_model(tiny_model))
    rows = _rows(tiny_tokenizer, 7)
    batched = evaluate_loss(loss_model, rows, 4, tiny_tokenizer.pad_token_id, "cpu", contextlib.nullcontext)
    one_by_one = evaluate_loss(loss_model, rows, 1, tiny_tokenizer.pad_token_id, "cpu", contextlib.nullcontext)
    assert batched.tokens == one_by_one.tokens
    assert abs(batched.loss - one_by_one.loss) < 1e-5
    assert batched.accuracy == one_by_one.accuracy


@pytest.mark.parametrize("attention", ["sdpa", NAME])
def test_packed_batch_loss_equals_the_examples_one_by_one(tiny_model, tiny_tokenizer, attention):
    """Packing puts several examples in a row with position ids restarting per example and no
    attention mask: no example may see another, so the loss equals running each alone, with
    transformers' SDPA (block-diagonal mask from the position ids) and with one call per example."""
    model = load_model(tiny_model).eval()
    model.set_attn_implementation(attention)
    loss_model = LossModel(model)
    rows = _rows(tiny_tokenizer, 9)
    packed_rows = pack(rows, 64)
    assert len(packed_rows) < len(rows) and any(len(r) > 1 for r in packed_rows)
    assert all(sum(len(e.input_ids) for e in r) <= 64 for r in packed_rows)
    with torch.no_grad():
        s, n, _ = loss_model(collate_packed(packed_rows))
        alone = [loss_model(collate([r], tiny_tokenizer.pad_token_id)) for r in rows]
    assert n == sum(a[1] for a in alone)
    torch.testing.assert_close(s / n, sum(a[0] for a in alone) / n, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", NAME])
def test_packed_gradient_equals_the_padded_gradient(tiny_model, tiny_tokenizer, attention):
    rows = _rows(tiny_tokenizer, 6)
    n = sum(r.loss_tokens for r in rows)
    grads = []
    for batch in (collate(rows, tiny_tokenizer.pad_token_id), collate_packed(pack(rows, 64))):
        model = load_model(tiny_model)
        model.set_attn_implementation(attention)
        s, _, _ = LossModel(model)(batch)
        (s / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bucket_lengths_are_few_and_waste_little():
    """CPUs in bf16 cache a matmul kernel per shape: lengths are rounded up to 32 sizes per doubling."""
    lengths = [bucket_length(n) for n in range(1, 4097)]
    assert all(n <= b <= n + n / 32 for n, b in enumerate(lengths, 1))
    assert lengths[:32] == list(range(1, 33)) and bucket_length(500) == 504 and bucket_length(1000) == 1008
    assert len({b for b in lengths if 1024 <= b < 2048}) == 32
    assert matmul_shapes_cached("cpu", torch.bfloat16) and not matmul_shapes_cached("cpu", torch.float32)
    assert not matmul_shapes_cached("cuda:0", torch.bfloat16)
    layer = torch.nn.Linear(4, 4)  # fp32 weights: padded only under bf16 autocast, or stored in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert shapes_cached_now(layer, "cpu")
    assert not shapes_cached_now(layer, "cpu") and shapes_cached_now(layer.to(torch.bfloat16), "cpu")


@pytest.mark.parametrize("attention", ["sdpa", NAME])
def test_bucketed_batches_give_the_same_loss_and_gradients(tiny_model, tiny_tokenizer, attention):
    """The padding that rounds a batch up to its bucket carries no loss and is seen by no real token:
    packed (joined to the last example, after its tokens) and padded (masked) alike."""
    long = {"id": "long", "messages": [{"role": "user", "content": "What is 1 plus 2? " * 4},
                                       {"role": "assistant", "content": "3"}]}
    rows = _rows(tiny_tokenizer, 6) + [encode(long, tiny_tokenizer, 128)]  # 65 tokens: rounded up to 66
    for plain, bucketed in [(collate_packed([rows]), collate_packed([rows], bucket=True)),
                            (collate(rows, tiny_tokenizer.pad_token_id),
                             collate(rows, tiny_tokenizer.pad_token_id, bucket=True))]:
        width = plain["input_ids"].shape[1]
        assert bucketed["input_ids"].shape[1] == bucket_length(width) > width
        results = []
        for batch in (plain, bucketed):
            model = load_model(tiny_model)
            model.set_attn_implementation(attention)
            s, n, _ = LossModel(model)(batch)
            s.backward()
            results.append((s, n, torch.cat([p.grad.flatten() for p in model.parameters()])))
        (s0, n0, g0), (s1, n1, g1) = results
        assert n0 == n1 == sum(r.loss_tokens for r in rows)
        torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)


def test_best_fit_decreasing_fills_rows():
    from tuneforge.tasks.tokens import Encoded

    examples = [Encoded(str(i), [1] * n, [1] * n, False) for i, n in enumerate([60, 50, 40, 30, 20, 10, 5, 5])]
    rows = pack(examples, 64)
    # 60 | 50+10 | 40+20 | 30+5+5: each example goes to the row with the least room that still fits it
    assert sorted(sum(len(e.input_ids) for e in r) for r in rows) == [40, 60, 60, 60]
    assert sum(len(r) for r in rows) == 8


def test_per_example_losses_add_up_to_the_batched_mean(tiny_model, tiny_tokenizer):
    """Eval intervals resample examples: each example's loss sum and answer-token count, in the
    order given, must total exactly what evaluate_loss reports, whatever the batching."""
    loss_model = LossModel(load_model(tiny_model))
    rows = _rows(tiny_tokenizer, 7)
    sums, counts = example_losses(loss_model.model, rows, "cpu", tokens_per_batch=40)  # packed, several rows
    one_row = example_losses(loss_model.model, rows, "cpu", tokens_per_batch=10_000)
    assert sums == pytest.approx(one_row[0], rel=1e-5) and counts == one_row[1]
    assert counts == [r.loss_tokens for r in rows]
    whole = evaluate_loss(loss_model, rows, 4, tiny_tokenizer.pad_token_id, "cpu", contextlib.nullcontext)
    assert sum(sums) / sum(counts) == pytest.approx(whole.loss, rel=1e-6)
    alone = [loss_model(collate([r], tiny_tokenizer.pad_token_id))[0].item() for r in rows]
    assert sums == pytest.approx(alone, rel=1e-5)
