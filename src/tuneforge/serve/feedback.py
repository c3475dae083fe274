"""`tuneforge feedback export`: what users said about served answers, as new training data.

- sft.jsonl: each correction as the answer to its request (chat: {"messages": [..., assistant]};
  completions: {"prompt", "completion"}), for the next `tuneforge train`.
- preference.jsonl: {"prompt", "chosen", "rejected"} pairs: a correction over the answer it corrects,
  and an up-rated answer over a down-rated one to the same prompt.
Both are formats `tuneforge data prepare` / `tuneforge train` detect by their columns.
"""

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

from tuneforge.errors import UserError


def export_feedback(db: Path, out: Path, overwrite: bool = False) -> str:
    if not db.is_file():
        raise UserError(f"{db}: no such file. It is the --db of `tuneforge serve` (default: requests.sqlite next "
                        "to the first served run).")
    targets = [out / "sft.jsonl", out / "preference.jsonl"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)}: already exist(s); nothing was written. Pass --overwrite or another --out.")
    rows = _rated(db)
    sft, pairs = [], []
    by_prompt: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"up": [], "down": []})
    for row in rows:
        prompt = _prompt(row)
        answer = _answer(row)
        if row["correction"]:
            sft.append(_sft_row(row, prompt, row["correction"]))
            if answer is not None and answer.strip() != row["correction"].strip():
                pairs.append({"prompt": prompt, "chosen": row["correction"], "rejected": answer})
        if row["rating"] and answer is not None:
            by_prompt[json.dumps(prompt)][row["rating"]].append(answer)
    for key, rated in by_prompt.items():
        pairs += [{"prompt": json.loads(key), "chosen": up, "rejected": down}
                  for up in dict.fromkeys(rated["up"]) for down in dict.fromkeys(rated["down"]) if up != down]
    out.mkdir(parents=True, exist_ok=True)
    for target, items in zip(targets, (sft, pairs)):
        tmp = target.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
        tmp.replace(target)
    return (f"{len(rows)} feedback rows -> {len(sft)} SFT rows in {targets[0]}, {len(pairs)} preference pairs in "
            f"{targets[1]}. Train on them by adding the files to a recipe's data.sources.")


def _rated(db: Path) -> list[dict]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(
                "SELECT f.choice, f.rating, f.correction, r.endpoint, r.messages, r.prompt, r.choices "
                "FROM feedback f JOIN requests r ON r.id = f.request_id ORDER BY f.id")]
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db}: not a tuneforge request log ({e}).") from None


def _prompt(row: dict):
    """Chat: the request's messages (a list); completions: the prompt text."""
    return json.loads(row["messages"]) if row["endpoint"] == "chat.completions" else row["prompt"]


def _answer(row: dict) -> str | None:
    choices = json.loads(row["choices"] or "[]")
    return choices[row["choice"]]["text"] if row["choice"] < len(choices) else None


def _sft_row(row: dict, prompt, correction: str) -> dict:
    if isinstance(prompt, list):
        return {"messages": [*prompt, {"role": "assistant", "content": correction}]}
    return {"prompt": prompt, "completion": correction}
