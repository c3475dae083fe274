"""chat: learn the assistant's answers in conversations, rendered with the model's chat template
(and raw text rows, learnt whole, as continued pre-training beside them).

The conversation is rendered to text once, the character spans of assistant answers are found by
rendering each prefix, and the text is tokenised once with offsets: a token carries loss when it
starts inside an answer span. That keeps tokenisation identical to what the model sees at inference.
"""

from tuneforge.errors import UserError
from tuneforge.tasks.base import Task, register
from tuneforge.tasks.tokens import IGNORE, Encoded, encode_text, text_lengths


@register
class Chat(Task):
    name = "chat"
    row_kinds = ("messages", "text")

    def encode(self, example: dict, tokenizer, max_length: int, train_on_prompt: bool = False,
               classes=None) -> Encoded:
        return encode(example, tokenizer, max_length, train_on_prompt)

    def reference(self, example: dict) -> str:
        return example["messages"][-1]["content"]

    def token_lengths(self, examples: list[dict], tokenizer) -> list[int]:
        return token_lengths(examples, tokenizer)


def encode(example: dict, tokenizer, max_length: int, train_on_prompt: bool = False) -> Encoded:
    if "text" in example:
        return encode_text(example, tokenizer, max_length)
    if train_on_prompt:
        text = tokenizer.apply_chat_template(example["messages"], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = list(ids)
    else:
        text, spans = _render_with_spans(tokenizer, example["messages"], example["id"])
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [
            token if any(a <= start < b for a, b in spans) else IGNORE
            for token, (start, _end) in zip(ids, enc["offset_mapping"])
        ]
    truncated = len(ids) > max_length
    return Encoded(example["id"], ids[:max_length], labels[:max_length], truncated)


def _render_with_spans(tokenizer, messages: list[dict], example_id: str) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation as text, and the (start, end) characters of each assistant answer."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (after.startswith(before) and full.startswith(after)):
            raise UserError(f"example {example_id}: this model's chat template renders the conversation "
                            "differently from its prefixes, so answer tokens cannot be located. "
                            "Set data.train_on_prompt: true to train on every token.")
        spans.append((len(before), len(after)))
    return full, spans


def token_lengths(examples: list[dict], tokenizer) -> list[int]:
    """Tokens of each example as training renders it (chat template, or text + EOS), without the
    per-token work of `encode`: one batched render and one batched tokenisation."""
    chat = [i for i, e in enumerate(examples) if "messages" in e]
    text = [i for i, e in enumerate(examples) if "messages" not in e]
    lengths = [0] * len(examples)
    if chat:
        rendered = tokenizer.apply_chat_template([examples[i]["messages"] for i in chat], tokenize=False)
        for i, enc in zip(chat, tokenizer.backend_tokenizer.encode_batch_fast(rendered, add_special_tokens=False)):
            lengths[i] = len(enc.ids)
    for i, n in zip(text, text_lengths([examples[i]["text"] for i in text], tokenizer)):
        lengths[i] = n
    return lengths
