"""One choice being generated: its tokens, its own sampler (temperature, top_p, seed, penalties, logit
bias), stop strings, logprobs and what has been streamed so far."""

import random
from typing import Callable

import torch

from tuneforge.serve.jobs import Finished, Job

# Temperatures below this decode greedily: float32 logits divided by less overflow (a temperature of
# 5e-324 is 0 in float32, and softmax of x / 0 is NaN), and the distribution is one token already.
GREEDY_BELOW = 1e-5


class Row:
    """One choice being generated: its tokens, what has been sent, its own sampler."""

    def __init__(self, job: Job, index: int, prompt: list[int], tokenizer):
        self.job, self.index, self.prompt, self.tokenizer = job, index, prompt, tokenizer
        s = job.sampling
        seed = s.seed + index if s.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.ids: list[int] = []
        self._text: str | None = ""  # decoded self.ids; None after a new token
        self.sent = ""
        self.finished: str | None = None
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.prompt_logprobs: list[float | None] = []
        self.prompt_top: list[dict[str, float] | None] = []

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from the model's logits for this row. Logprobs report the model's own
        distribution, before logit_bias, penalties, temperature and top_p (as vLLM's do by default)."""
        s = self.job.sampling
        scores = self.adjusted(logits)
        if s.temperature < GREEDY_BELOW:
            token = int(scores.argmax())
        else:
            probs = torch.softmax(scores / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < s.top_p
                keep[0] = True  # the most likely, even when top_p is below float32's smallest number
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if s.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
            self.token_logprobs.append(float(logp[token]))
            self.top_logprobs.append(self._top(logp, s.logprobs))
        return token

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """logit_bias added, then OpenAI's frequency and presence penalties over this row's tokens so far."""
        s = self.job.sampling
        if s.logit_bias:
            ids = torch.tensor(list(s.logit_bias))
            logits = logits.index_add(0, ids, torch.tensor(list(s.logit_bias.values()), dtype=logits.dtype))
        if (s.frequency_penalty or s.presence_penalty) and self.ids:
            counts = torch.bincount(torch.tensor(self.ids), minlength=logits.shape[-1]).to(logits.dtype)
            logits = logits - counts * s.frequency_penalty - (counts > 0).to(logits.dtype) * s.presence_penalty
        return logits

    def _top(self, logp: torch.Tensor, k: int) -> dict[str, float]:
        if k <= 0:
            return {}
        values, ids = logp.topk(k)
        return {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids)}

    def add(self, token: int, eos_ids: set[int], max_context: int) -> None:
        s = self.job.sampling
        if token in eos_ids:
            self.finished = "stop"
            return
        self.ids.append(token)
        self._text = None
        if len(self.ids) >= s.max_tokens or len(self.prompt) + len(self.ids) >= max_context:
            self.finished = "length"
        if s.stop:
            text = self.text()
            cut = min((text.find(stop) for stop in s.stop if stop in text), default=-1)
            if cut >= 0:
                self.finished = "stop"

    def text(self) -> str:
        """The generated text, decoded once per token (stop checks and streaming both read it)."""
        if self._text is None:
            self._text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._text

    def visible(self) -> str:
        """What can be sent so far: up to a stop string; while running, minus a trailing partial UTF-8
        character and minus an ending that could still become a stop string."""
        text = self.text()
        cuts = [text.find(stop) for stop in self.job.sampling.stop if stop in text]
        if cuts:
            return text[:min(cuts)]
        if self.finished:
            return text
        text = text.rstrip("\ufffd")
        hold = max((n for stop in self.job.sampling.stop for n in range(1, min(len(stop), len(text) + 1))
                    if text.endswith(stop[:n])), default=0)
        return text[:len(text) - hold]

    def delta(self) -> str:
        visible = self.visible()
        new = visible[len(self.sent):] if visible.startswith(self.sent) else ""
        self.sent = self.sent + new
        return new

    def result(self) -> Finished:
        logprobs = None
        if self.job.sampling.logprobs is not None:
            tokens = [self.tokenizer.decode([t]) for t in self.ids]
            logprobs = {"tokens": tokens, "token_logprobs": self.token_logprobs[:len(tokens)],
                        "top_logprobs": self.top_logprobs[:len(tokens)]}
            if self.job.sampling.echo:
                prompt_tokens = [self.tokenizer.decode([t]) for t in self.prompt]
                logprobs = {"tokens": prompt_tokens + logprobs["tokens"],
                            "token_logprobs": self.prompt_logprobs + logprobs["token_logprobs"],
                            "top_logprobs": self.prompt_top + logprobs["top_logprobs"]}
            offsets, at = [], 0
            for token in logprobs["tokens"]:
                offsets.append(at)
                at += len(token)
            logprobs["text_offset"] = offsets
        return Finished(self.sent, self.finished or "length", len(self.ids), logprobs)


def each_row(rows: list[Row], action: Callable[[int, Row], None]) -> None:
    """action(i, row) for each row whose job is still on; a row that raises fails its job alone."""
    for i, row in enumerate(rows):
        if not row.job.cancelled:
            try:
                action(i, row)
            except Exception as e:  # noqa: BLE001 - the client is answered with it
                row.job.fail(e)
