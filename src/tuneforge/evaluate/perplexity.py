"""Perplexity of plain text, defined as lm-evaluation-harness defines it for `wikitext`-style tasks.

Each document is tokenized without special tokens and scored whole: the first token is predicted from
a prefix token (the tokenizer's BOS, else its EOS), and a document longer than the context is cut into
lm-eval's rolling windows (each window predicts the next `max_length` tokens from as much preceding
text as fits). With LL the summed log-likelihood of every token of every document:

    token perplexity = exp(-LL / tokens)      word perplexity = exp(-LL / words)
    byte perplexity  = exp(-LL / UTF-8 bytes) bits per byte   = -LL / bytes / ln 2

where words are `len(re.split(r"\\s+", text))` (lm-eval's count_words). Windows are scored packed
(train/loss.example_losses), so no token is padding and every document attends to itself only. An
encoder-decoder is scored on each document's second half given its first (continuation_perplexity).
"""

import contextlib
import math
import re

from tuneforge.tasks import seq2seq
from tuneforge.tasks.tokens import IGNORE, Encoded
from tuneforge.train.loss import example_losses


def prefix_token(tokenizer) -> int:
    """The token a document's first token is predicted from (lm-eval's prefix_token_id)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def rolling_windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context, targets) pairs that predict every token once: lm-eval's get_rolling_token_windows with
    context_len=1 followed by make_disjoint_window."""
    windows = []
    first = min(max_length, len(tokens))
    windows.append(([prefix], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        inputs = tokens[max(end - max_length - 1, 0):end - 1]
        windows.append((inputs[:len(inputs) - (n - 1)], tokens[end - n:end]))
        done = end
    return windows


def text_windows(tokenizer, texts: list[str], max_length: int) -> tuple[list[Encoded], list[int]]:
    """Every document's windows as examples whose loss tokens are the window's targets, and for each
    window the index of its document."""
    prefix = prefix_token(tokenizer)
    examples, owners = [], []
    for d, text in enumerate(texts):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        for w, (context, targets) in enumerate(rolling_windows(tokens, prefix, max_length)):
            examples.append(Encoded(f"doc{d}-w{w}", context + targets, [IGNORE] * len(context) + targets, False))
            owners.append(d)
    return examples, owners


def window_length(model, limit: int = 2048) -> int:
    """Tokens a window predicts: `limit`, or one less than the model's context (a window's input holds
    one token more than it predicts)."""
    config = model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or limit + 1
    return min(limit, context - 1)


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def text_perplexity(model, tokenizer, texts: list[str], device: str, max_length: int | None = None,
                    tokens_per_batch: int = 2048, autocast=contextlib.nullcontext) -> dict:
    """Per document: log-likelihood, tokens, words, bytes; over all: the perplexities defined above.
    Windows predict `max_length` tokens (default: window_length(model))."""
    examples, owners = text_windows(tokenizer, texts, max_length or window_length(model))
    sums, counts = example_losses(model, examples, device, tokens_per_batch, autocast=autocast)
    loglik, tokens = [0.0] * len(texts), [0] * len(texts)
    for d, s, n in zip(owners, sums, counts):
        loglik[d] -= s
        tokens[d] += n
    return _perplexities(texts, loglik, tokens)


def continuation_perplexity(model, tokenizer, texts: list[str], device: str, max_length: int = 512,
                            tokens_per_batch: int = 2048, autocast=contextlib.nullcontext) -> dict:
    """The perplexities above for an encoder-decoder, which gives no probability to a text on its own:
    each document's first half (by words) is the encoder's prompt and its second half the answer
    scored, so the counts are the second halves'."""
    task, halves, pairs = seq2seq.Seq2Seq(), [], []
    for i, text in enumerate(texts):
        words = text.split()
        first, second = " ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:])
        halves.append(second)
        pairs.append(task.encode({"id": str(i), "messages": [{"role": "user", "content": first},
                                                             {"role": "assistant", "content": second}]},
                                 tokenizer, max_length))
    sums, counts = seq2seq.example_losses(model, pairs, device, tokenizer.pad_token_id, tokens_per_batch, autocast)
    return _perplexities(halves, [-s for s in sums], counts)


def _perplexities(texts: list[str], loglik: list[float], tokens: list[int]) -> dict:
    words = [count_words(t) for t in texts]
    nbytes = [len(t.encode("utf-8")) for t in texts]
    total = sum(loglik)
    return {"documents": {"loglikelihood": loglik, "tokens": tokens, "words": words, "bytes": nbytes},
            "token_perplexity": math.exp(-total / sum(tokens)),
            "word_perplexity": math.exp(-total / sum(words)),
            "byte_perplexity": math.exp(-total / sum(nbytes)),
            "bits_per_byte": -total / sum(nbytes) / math.log(2)}
