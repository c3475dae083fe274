"""Rows of an encoder-decoder (a seq2seq run: T5, BART) decoding together.

The prompts are encoded once, right-padded (the encoder reads each from position 0, as in training;
BART's positions are absolute), then each step feeds every row's last token to the decoder over
transformers' EncoderDecoderCache (the decoder's own keys and values, and the cross-attention's over the
encoded prompt). Every row's answer starts at the decoder-start token and grows one token a step, so
rows share their decoder positions: a request that arrives while a batch decodes waits for it to drain
(`mergeable` is False) instead of joining, and finished rows leave as in the decoder-only batch.
"""

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from tuneforge.runtime.hardware import shapes_cached_now
from tuneforge.serve.batch import Batch
from tuneforge.serve.rows import Row, each_row
from tuneforge.tasks.tokens import bucket_length


class EncoderDecoderBatch(Batch):
    def __init__(self, rows: list[Row], cache, encoded, mask: torch.Tensor, eos_ids: set[int], max_context: int):
        self.rows, self.cache, self.encoded, self.mask = rows, cache, encoded, mask
        self.eos_ids, self.max_context = eos_ids, max_context
        self.mergeable = False

    @classmethod
    def _prefill(cls, model, tokenizer, rows: list[Row], eos_ids: set[int], max_context: int) -> "EncoderDecoderBatch":
        width = max(len(r.prompt) for r in rows)
        if shapes_cached_now(model, model.device.type):
            width = max(width, min(bucket_length(width), max_context))  # few encoder shapes (see Batch)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([r.prompt + [pad] * (width - len(r.prompt)) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r.prompt) + [0] * (width - len(r.prompt)) for r in rows], device=model.device)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        start = model.generation_config.decoder_start_token_id
        start = model.config.decoder_start_token_id if start is None else start
        batch = cls(rows, EncoderDecoderCache(DynamicCache(), DynamicCache()), encoded, mask, eos_ids, max_context)
        logits = batch._forward(model, torch.full((len(rows), 1), start, device=model.device))

        def first(i: int, row: Row) -> None:
            if row.job.sampling.max_tokens == 0:
                row.finished = "length"
            else:
                row.add(row.choose(logits[i]), eos_ids, max_context)

        each_row(rows, first)
        return batch

    def step(self, model) -> None:
        tokens = torch.tensor([[r.ids[-1]] for r in self.rows], device=model.device)
        logits = self._forward(model, tokens)
        each_row(self.rows, lambda i, row: row.add(row.choose(logits[i]), self.eos_ids, self.max_context))

    def _forward(self, model, tokens: torch.Tensor) -> torch.Tensor:
        out = model(encoder_outputs=self.encoded, attention_mask=self.mask, decoder_input_ids=tokens,
                    past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float().cpu()

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.encoded.last_hidden_state = self.encoded.last_hidden_state[index]
        self.mask = self.mask[index]
