"""LLM-as-judge: a judge model compares the tuned and the base answer to each test prompt against a rubric.

Every pair is judged twice, once with the tuned answer as "A" and once as "B"; a model wins the pair only
when both orders pick it, anything else is a tie, so a judge that always prefers one position (small
models often do) produces ties, not a fake winner. The judge is a loadable model (catalogue name, local
folder or hub id: the letter whose first token it ranks highest after the prompt) or an OpenAI-compatible
endpoint (http://host/v1: a chat completion at temperature 0, its first word read). Writes
eval/judge.json and rebuilds the report.
"""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.evaluate.pairs import read_samples, save_and_report, tally
from tuneforge.run_folder import open_run

RUBRIC = ("You are a strict grader. Decide which answer answers the question better: correct, complete, "
          "consistent with the reference answer, and concise. Ignore which answer comes first.")
OPTIONS = ("A", "B", "tie")


def judge_prompt(rubric: str, sample: dict, first: str, second: str) -> list[dict]:
    return [{"role": "system", "content": rubric},
            {"role": "user", "content": f"Question: {sample['prompt']}\n\nReference answer: {sample['reference']}\n\n"
                                        f"Answer A: {first}\n\nAnswer B: {second}\n\n"
                                        "Which answer is better? Reply with one word: A, B or tie."}]


def judge_run(run_dir: Path, judge: str, rubric_file: Path | None = None, judge_model: str | None = None,
              models: tuple[str, str] = ("tuned", "base")) -> dict:
    run_dir = open_run(run_dir)
    samples = read_samples(run_dir)
    if rubric_file is not None and not rubric_file.is_file():
        raise UserError(f"--rubric: {rubric_file} does not exist.")
    rubric = rubric_file.read_text(encoding="utf-8").strip() if rubric_file else RUBRIC
    ask = _endpoint(judge, judge_model) if judge.startswith(("http://", "https://")) else _local(judge)
    a, b = models
    conversations = [judge_prompt(rubric, s, s[a], s[b]) for s in samples] + \
                    [judge_prompt(rubric, s, s[b], s[a]) for s in samples]
    verdicts = ask(conversations)
    n = len(samples)
    winners, records = [], []
    for i, sample in enumerate(samples):
        first = {"A": a, "B": b}.get(verdicts[i], "tie")        # a shown as A
        second = {"A": b, "B": a}.get(verdicts[n + i], "tie")   # a shown as B
        winner = first if first == second else "tie"
        winners.append(winner)
        records.append({"id": sample["id"], "a_first": verdicts[i], "b_first": verdicts[n + i], "winner": winner})
    position_a = sum(v == "A" for v in verdicts) / len(verdicts)
    result = {"judge": judge_model or judge, "rubric": rubric, "pairs": [tally(winners, a, b)],
              "position_a_share": round(position_a, 3),
              "note": f"{n} pairs judged by {judge_model or judge} in both orders (a model wins only when both orders "
                      f"pick it); the judge picked position A in {position_a:.0%} of its {len(verdicts)} verdicts.",
              "verdicts": records}
    return save_and_report(run_dir, "judge.json", result)


def _local(name: str):
    """The judge on the GPU when there is one (in its half precision), else on the CPU in fp32."""
    from tuneforge.inference.run_models import for_inference
    from tuneforge.models.chat_template import render_prompt
    from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
    from tuneforge.runtime.hardware import autocast, choose_precision, detect_device

    folder = resolve_model(name)
    device = detect_device()
    precision = choose_precision("auto", device) if device == "cuda" else "fp32"
    tokenizer, model = load_tokenizer(folder), load_model(folder, device=device)
    for_inference(model, precision)
    option_ids = [tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in OPTIONS]

    @torch.no_grad()
    def ask(conversations: list[list[dict]]) -> list[str]:
        tokenizer.padding_side = "left"
        verdicts = []
        for start in range(0, len(conversations), 8):
            prompts = [render_prompt(tokenizer, c) for c in conversations[start:start + 8]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with autocast(device, precision):
                logits = model(**enc).logits[:, -1, option_ids]
            verdicts += [OPTIONS[i] for i in logits.argmax(-1).tolist()]
        return verdicts

    return ask


def _endpoint(url: str, model: str | None):
    key = os.environ.get("TUNEFORGE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def ask(conversations: list[list[dict]]) -> list[str]:
        verdicts = []
        for messages in conversations:
            body = json.dumps({"model": model or "default", "messages": messages, "temperature": 0,
                               "max_tokens": 4}).encode()
            request = urllib.request.Request(url.rstrip("/") + "/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    text = json.loads(response.read())["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                raise UserError(f"--judge {url}: the endpoint answered {e.code}: {e.read()[:300]!r}") from None
            except (urllib.error.URLError, OSError) as e:
                raise UserError(f"--judge {url}: cannot reach the endpoint ({e}). Is the server running?") from None
            except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                raise UserError(f"--judge {url}: the reply is not an OpenAI chat completion.") from None
            word = (text.strip().split() or [""])[0].strip(".:,!\"'").lower()
            verdicts.append({"a": "A", "b": "B"}.get(word, "tie"))
        return verdicts

    return ask
