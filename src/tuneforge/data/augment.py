"""Opt-in synthetic training data written by a model.

Self-instruct: the model sees a few seed questions from the training split, writes a new one, then
answers it with the seed conversations as examples. Paraphrases: the model rewrites a training
question and the original answer is kept. Synthetic rows carry `"synthetic": "self-instruct"` or
`"paraphrase"`, go to the training split only, and are listed in the manifest.
"""

import random

import torch

from tuneforge.data.formats import content_id
from tuneforge.inference.generate import generate_batch
from tuneforge.models.chat_template import ensure_chat_template, render_prompt
from tuneforge.recipe import AugmentSection

_NEW_QUESTION = ("Here are some example requests:\n{examples}\n\nWrite one new request of the same kind about a "
                 "different detail. Reply with the request only.")
_PARAPHRASE = "Rewrite this request in other words, keeping its meaning. Reply with the rewritten request only.\n\n{q}"


def synthesize(seeds: list[dict], config: AugmentSection, model_name: str, seed: int) -> list[dict]:
    """New examples from `seeds` (chat examples of the training split); empty or unchanged outputs
    are dropped."""
    from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
    from tuneforge.runtime.hardware import detect_device

    seeds = [s for s in seeds if _question(s) is not None]
    if not seeds:
        return []
    model_dir = resolve_model(model_name)
    tokenizer = load_tokenizer(model_dir)
    ensure_chat_template(tokenizer)
    model = load_model(model_dir, torch.float32, detect_device()).eval()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    out = _self_instruct(model, tokenizer, seeds, config, rng) if config.synthetic else []
    if config.paraphrases:
        out += _paraphrases(model, tokenizer, seeds, config, rng)
    return out


def _question(example: dict) -> str | None:
    users = [m for m in example["messages"] if m["role"] == "user"]
    return users[0]["content"] if len(users) == 1 else None


def _self_instruct(model, tokenizer, seeds: list[dict], config: AugmentSection, rng: random.Random) -> list[dict]:
    shots = [rng.sample(seeds, min(config.seeds_per_prompt, len(seeds))) for _ in range(config.synthetic)]
    asks = [render_prompt(tokenizer, [{"role": "user", "content": _NEW_QUESTION.format(
        examples="\n".join(f"{i + 1}. {_question(s)}" for i, s in enumerate(group)))}]) for group in shots]
    questions = generate_batch(model, tokenizer, asks, config.max_new_tokens, 8, "synthetic questions",
                               config.temperature)
    keep = [(q, group) for q, group in zip(questions, shots) if _usable(q, group)]
    answer_prompts = [render_prompt(tokenizer, [m for s in group for m in s["messages"] if m["role"] != "system"]
                                    + [{"role": "user", "content": q}]) for q, group in keep]
    answers = generate_batch(model, tokenizer, answer_prompts, config.max_new_tokens, 8, "synthetic answers")
    return [_example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], "self-instruct")
            for (q, _), a in zip(keep, answers) if a.strip()]


def _paraphrases(model, tokenizer, seeds: list[dict], config: AugmentSection, rng: random.Random) -> list[dict]:
    picks = rng.sample(seeds, min(config.paraphrases, len(seeds)))
    asks = [render_prompt(tokenizer, [{"role": "user", "content": _PARAPHRASE.format(q=_question(s))}]) for s in picks]
    rewritten = generate_batch(model, tokenizer, asks, config.max_new_tokens, 8, "paraphrases", config.temperature)
    out = []
    for new, original in zip(rewritten, picks):
        if _usable(new, [original]):
            messages = [{**m, "content": new} if m["role"] == "user" else dict(m) for m in original["messages"]]
            out.append(_example(messages, "paraphrase"))
    return out


def _usable(question: str, seeds: list[dict]) -> bool:
    """At least three words, and not a copy of a seed question."""
    return len(question.split()) >= 3 and all(question.strip() != _question(s).strip() for s in seeds)


def _example(messages: list[dict], kind: str) -> dict:
    example = {"messages": messages}
    return {"id": f"synthetic:{content_id(example)}", **example, "synthetic": kind}
