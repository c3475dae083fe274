"""A conversation with a run's model: `tuneforge generate` (one reply) and `tuneforge chat`."""

import contextlib
from pathlib import Path

import torch
from transformers import GenerationConfig, TextStreamer

from tuneforge.inference.kv_cache import growing_cache
from tuneforge.inference.run_models import RunModels
from tuneforge.models.chat_template import render_prompt
from tuneforge.tasks import get_task
from tuneforge.tasks.seq2seq import prompt_text


class ChatSession:
    def __init__(self, models: RunModels, base: bool = False):
        self.models, self.use_base = models, base
        self.tokenizer = models.tokenizer
        self.one_turn = get_task(models.recipe.task).encoder_decoder
        """An encoder-decoder answers each prompt on its own, as it learnt to: no conversation history."""

    @classmethod
    def from_run(cls, run_dir: Path, base: bool = False) -> "ChatSession":
        return cls(RunModels(run_dir), base)

    @torch.no_grad()
    def reply(self, messages: list[dict], max_new_tokens: int, stream: bool = False) -> str:
        if self.one_turn:  # the prompt as training's encoder read it: system text, then the prompt
            prompt = prompt_text(messages)
        else:
            prompt = render_prompt(self.tokenizer, messages)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        with self.models.base() if self.use_base else contextlib.nullcontext(self.models.tuned) as model:
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=self.one_turn).to(model.device)
            if self.one_turn:  # the output is the answer alone, from transformers' encoder-decoder cache
                out = model.generate(**enc, generation_config=config, streamer=streamer)[0]
            else:
                out = model.generate(**enc, generation_config=config, streamer=streamer,
                                     past_key_values=growing_cache(model))[0, enc["input_ids"].shape[1]:]
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()
