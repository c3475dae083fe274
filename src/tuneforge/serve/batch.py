"""Rows of a decoder-only model decoding together over one KV cache (the engine's continuous batching):
prefill, one token per row per step, rows leaving as they finish and joining between tokens."""

import torch

from tuneforge.inference.kv_cache import GrowingLayer, growing_cache
from tuneforge.runtime.hardware import shapes_cached_now
from tuneforge.serve.jobs import Job
from tuneforge.serve.rows import Row, each_row
from tuneforge.tasks.tokens import bucket_length


class Batch:
    """Rows decoding together: left-padded attention mask, per-row positions, one KV cache."""

    def __init__(self, rows: list[Row], cache, mask: torch.Tensor, positions: torch.Tensor, eos_ids: set[int],
                 max_context: int):
        self.rows, self.cache, self.mask, self.positions = rows, cache, mask, positions
        self.eos_ids, self.max_context = eos_ids, max_context
        # Rows can join a running batch only where every cache layer keeps every position
        # (a sliding-window layer drops old ones, so left-padding it would shift them).
        self.mergeable = all(type(layer) is GrowingLayer for layer in cache.layers)

    @classmethod
    def prefill(cls, model, tokenizer, jobs: list[Job], eos_ids: set[int], max_context: int) -> "Batch | None":
        """The jobs' prompts in one forward pass and each row's first token. A job that fails on its own
        (setting up its rows, sampling) gets its error and the others go on; if the forward pass fails,
        every job of this prefill gets the error and the running batch goes on. None if no row is left."""
        rows = []
        for job in jobs:
            try:
                rows += [Row(job, i, prompt, tokenizer) for i, prompt in enumerate(job.prompts)]
            except Exception as e:  # noqa: BLE001 - the client is answered with it
                job.fail(e)
        try:
            return cls._prefill(model, tokenizer, rows, eos_ids, max_context) if rows else None
        except Exception as e:  # noqa: BLE001
            for job in jobs:
                job.fail(e)
            return None

    @classmethod
    def _prefill(cls, model, tokenizer, rows: list[Row], eos_ids: set[int], max_context: int) -> "Batch":
        width = max(len(r.prompt) for r in rows)
        if shapes_cached_now(model, model.device.type):
            # few prefill shapes, or a server's memory grows with every new prompt length (bucket_length)
            width = max(width, min(bucket_length(width), max_context))
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        echo = any(r.job.sampling.echo for r in rows)
        cache = growing_cache(model)
        out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                    position_ids=positions.to(model.device), past_key_values=cache, use_cache=True,
                    logits_to_keep=0 if echo else 1)
        logits = out.logits.float().cpu()
        batch = cls(rows, out.past_key_values, mask, positions[:, -1] + 1, eos_ids, max_context)

        def first(i: int, row: Row) -> None:
            if row.job.sampling.echo:
                _prompt_logprobs(row, logits[i, width - len(row.prompt):])
            if row.job.sampling.max_tokens == 0:
                row.finished = "length"
            else:
                row.add(row.choose(logits[i, -1]), eos_ids, max_context)

        each_row(rows, first)
        return batch

    def step(self, model) -> None:
        tokens = torch.tensor([[r.ids[-1]] for r in self.rows])
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], dim=1)
        out = model(input_ids=tokens.to(model.device), attention_mask=self.mask.to(model.device),
                    position_ids=self.positions[:, None].to(model.device), past_key_values=self.cache,
                    use_cache=True)
        self.positions = self.positions + 1
        logits = out.logits[:, -1].float().cpu()
        each_row(self.rows, lambda i, row: row.add(row.choose(logits[i]), self.eos_ids, self.max_context))

    def emit_and_drop(self) -> None:
        """Send each row's new text; finished rows report and leave the batch (and the cache), and so do
        the rows of a job that was cancelled or failed."""

        def emit(_: int, row: Row) -> None:
            new = row.delta()
            if new:
                row.job.send(("delta", row.index, new))
            if row.finished:
                row.job.send(("done", row.index, row.result()))

        each_row(self.rows, emit)
        keep = [i for i, row in enumerate(self.rows) if not (row.finished or row.job.cancelled)]
        if len(keep) < len(self.rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep)
        self.cache.batch_select_indices(index.to(self.cache.layers[0].keys.device))
        self.mask, self.positions = self.mask[index], self.positions[index]
        unused = int((self.mask.sum(0) == 0).cumprod(0).sum())  # columns every remaining row pads
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def merge(self, other: "Batch") -> "Batch":
        """Append `other`'s rows: the shorter side's KV cache and mask are left-padded with zeros."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows
        return self


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros in front along the sequence axis (axis 2 of a [batch, heads, seq, dim] cache, 1 of a mask)."""
    axis = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _prompt_logprobs(row: Row, logits: torch.Tensor) -> None:
    """Each prompt token's logprob given the tokens before it (the first has none), as OpenAI's legacy
    completions return with echo."""
    logp = torch.log_softmax(logits, dim=-1)
    k = row.job.sampling.logprobs or 0
    row.prompt_logprobs = [None] + [float(logp[i - 1, t]) for i, t in enumerate(row.prompt) if i > 0]
    row.prompt_top = [None] + [row._top(logp[i - 1], k) for i in range(1, len(row.prompt))]
