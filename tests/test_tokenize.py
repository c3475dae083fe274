"""Which token ids carry loss: only the assistant's answers (and their end-of-turn token)."""

from tuneforge.models.chat_template import render_prompt
from tuneforge.tasks.chat import encode
from tuneforge.tasks.tokens import IGNORE


def _loss_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])


def test_loss_falls_only_on_the_answer(tiny_tokenizer):
    example = {"id": "a", "messages": [{"role": "user", "content": "What is 2 plus 2?"},
                                       {"role": "assistant", "content": "The answer is 4."}]}
    enc = encode(example, tiny_tokenizer, max_length=200)
    assert _loss_text(tiny_tokenizer, enc) == "The answer is 4.<|im_end|>\n"
    full = tiny_tokenizer.apply_chat_template(example["messages"], tokenize=False)
    assert tiny_tokenizer.decode(enc.input_ids) == full
    # every label is either ignored or the token itself (no shifted or foreign ids)
    assert all(label in (IGNORE, token) for token, label in zip(enc.input_ids, enc.labels))


def test_every_assistant_turn_of_a_conversation_carries_loss(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Sum?"}, {"role": "assistant", "content": "Four."}]
    enc = encode({"id": "b", "messages": messages}, tiny_tokenizer, max_length=200)
    assert _loss_text(tiny_tokenizer, enc) == "Hello.<|im_end|>\nFour.<|im_end|>\n"


def test_train_on_prompt_puts_loss_everywhere(tiny_tokenizer):
    example = {"id": "c", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    enc = encode(example, tiny_tokenizer, max_length=200, train_on_prompt=True)
    assert enc.labels == enc.input_ids


def test_text_rows_train_on_all_tokens_and_end_with_eos(tiny_tokenizer):
    enc = encode({"id": "d", "text": "Return the square root of x."}, tiny_tokenizer, max_length=200)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_truncation_is_flagged(tiny_tokenizer):
    enc = encode({"id": "e", "text": "number " * 100}, tiny_tokenizer, max_length=16)
    assert enc.truncated and len(enc.input_ids) == 16


def test_generation_prompt_is_the_conversation_before_the_answer(tiny_tokenizer):
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    prompt = render_prompt(tiny_tokenizer, messages)
    assert prompt.endswith("<|im_start|>assistant\n") and "A." not in prompt
