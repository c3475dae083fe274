"""Text perplexity is lm-evaluation-harness's wikitext-style perplexity, computed packed.

The definition (evaluate/perplexity.py): every document tokenized without special tokens, its first token
predicted from the prefix token (BOS, else EOS), documents longer than the context cut into lm-eval's
rolling windows; LL = the summed log-likelihood of all tokens of all documents; word perplexity =
exp(-LL / words) with words = len(re.split(r"\\s+", text)), byte perplexity = exp(-LL / UTF-8 bytes),
bits per byte = -LL / bytes / ln 2, token perplexity = exp(-LL / tokens).
"""

import math
import re

import pytest

from tuneforge.errors import UserError
from tuneforge.evaluate.forgetting import forgetting, load_general_text
from tuneforge.evaluate.harness import run_lm_eval, text_task
from tuneforge.evaluate.perplexity import rolling_windows, text_perplexity
from tuneforge.models.loader import load_model
from tuneforge.runtime import attention

TEXTS = ["What is the sum of two numbers? The answer is a number.",
         "Return the square root of x.  Return the number of items in a container. " * 6,  # longer than a window
         "You are a helpful assistant."]


def test_rolling_windows_predict_every_token_once_with_lm_eval_contexts():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 137))
    for max_length in (1, 5, 8, 36, 37, 50):
        ours = rolling_windows(tokens, 7, max_length)
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 7, max_length, 1)]
        assert ours == theirs
        assert [t for _, targets in ours for t in targets] == tokens


@pytest.mark.parametrize("implementation", ["sdpa", attention.NAME])
def test_text_perplexity_equals_lm_eval_on_a_local_task(tiny_model, tiny_tokenizer, tmp_path, implementation):
    """lm-eval's hf backend through its Python API on a local loglikelihood_rolling task (offline): its word
    and byte perplexity and bits per byte equal ours to 1e-3 relative, rolling windows included."""
    model = load_model(tiny_model, attn_implementation=implementation).eval()
    ours = text_perplexity(model, tiny_tokenizer, TEXTS, "cpu", max_length=32, tokens_per_batch=64)
    assert sum(ours["documents"]["tokens"]) == sum(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"])
                                                   for t in TEXTS)
    theirs = run_lm_eval(model, tiny_tokenizer, ["tiny_text"], text_task(tmp_path / "tasks", "tiny_text", TEXTS),
                         max_length=32)["tiny_text"]
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-3), key
    words = sum(len(re.split(r"\s+", t)) for t in TEXTS)  # lm-eval's count: a trailing space adds a word
    assert ours["token_perplexity"] == pytest.approx(
        math.exp(math.log(ours["word_perplexity"]) * words / sum(ours["documents"]["tokens"])), rel=1e-9)


def test_lm_eval_refuses_unknown_tasks(tiny_model, tiny_tokenizer, tmp_path):
    model = load_model(tiny_model).eval()
    with pytest.raises(UserError, match="unknown task"):
        run_lm_eval(model, tiny_tokenizer, ["no_such_task_anywhere"], text_task(tmp_path, "t", TEXTS))
    with pytest.raises(UserError, match="not a folder"):
        run_lm_eval(model, tiny_tokenizer, ["t"], tmp_path / "missing")


def test_general_text_sets_and_the_forgetting_flag(tmp_path):
    name, texts = load_general_text(None)
    assert len(texts) == 45 and "language reference" in name and all(len(t.split()) > 50 for t in texts)
    own = tmp_path / "general.txt"
    own.write_text("First paragraph here.\n\nSecond paragraph.\n")
    assert load_general_text(str(own))[1] == ["First paragraph here.", "Second paragraph."]
    bad = tmp_path / "general.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=r"general.jsonl:2: expected an object with a non-empty string field"):
        load_general_text(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_general_text(str(tmp_path / "missing.jsonl"))
    before = {"token_perplexity": 10.0, "word_perplexity": 30.0}
    assert not forgetting(before, {"token_perplexity": 10.9, "word_perplexity": 33.0}, 0.10)["flagged"]
    flagged = forgetting(before, {"token_perplexity": 11.5, "word_perplexity": 35.0}, 0.10)
    assert flagged["flagged"] and flagged["change"] == pytest.approx(0.15)
