"""causal_lm: continued pre-training on raw text (documents, manuals, code), every token a target; no
chat template. Its evaluation is perplexity on the test text (and the forgetting check): there are no
prompts to answer."""

from tuneforge.tasks.base import Task, register
from tuneforge.tasks.tokens import Encoded, encode_text, text_lengths


@register
class CausalLM(Task):
    name = "causal_lm"
    row_kinds = ("text",)
    generates = False

    def refusal(self, kind: str) -> str:
        if kind != "messages":
            return super().refusal(kind)
        return ("this row is a conversation (messages, prompt + completion, ...); task causal_lm learns from raw text "
                "only. Use task: chat for conversations, or give the source `format: text` with "
                "`columns: {text: YOUR_COLUMN}`.")

    def encode(self, example: dict, tokenizer, max_length: int, train_on_prompt: bool = False,
               classes=None) -> Encoded:
        return encode_text(example, tokenizer, max_length)

    def token_lengths(self, examples: list[dict], tokenizer) -> list[int]:
        return text_lengths([e["text"] for e in examples], tokenizer)
