"""Forgetting check: perplexity on general text outside the training domain, before and after tuning.

The shipped set (data/general_text.jsonl) is 45 passages of prose, one per topic, from the Python
language reference that every CPython carries as `pydoc_data.topics` (Python Software Foundation
License, which allows redistribution): statements, data model, expressions; no code and no docstrings,
so it sits outside the pydocs training data while staying in English technical prose. A user with
another domain points `eval.general_text` at text that matters to them.
"""

import json
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.json_text import jsonl_lines, loads

SHIPPED = Path(__file__).parent / "data" / "general_text.jsonl"


def load_general_text(path: str | None) -> tuple[str, list[str]]:
    """(name of the set, its documents)."""
    file = Path(path) if path else SHIPPED
    if not file.is_file():
        raise UserError(f"eval.general_text: {file} does not exist. Give a .jsonl file with a \"text\" field "
                        "per line or a .txt / .md file, or leave it empty for the shipped set.")
    try:
        content = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{file}: not UTF-8 text (byte {e.start}). Save it as UTF-8.") from None
    if file.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(jsonl_lines(content), 1):
            if not line.strip():
                continue
            try:
                row = loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{file}:{number}: not valid JSON ({e.msg}). Each line must be an object "
                                "like {\"text\": \"...\"}.") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise UserError(f"{file}:{number}: expected an object with a non-empty string field \"text\".")
            texts.append(row["text"])
    elif file.suffix in (".txt", ".md"):
        texts = [p.strip() for p in content.split("\n\n") if p.strip()]
    else:
        raise UserError(f"eval.general_text: {file} has suffix {file.suffix!r}; expected .jsonl, .txt or .md.")
    if not texts:
        raise UserError(f"eval.general_text: {file} holds no text.")
    return ("shipped: Python language reference prose" if not path else str(file)), texts


def forgetting(base: dict, tuned: dict, threshold: float) -> dict:
    """Token perplexity on the general text before and after, its relative change, and whether it rose
    by more than `threshold`."""
    before, after = base["token_perplexity"], tuned["token_perplexity"]
    change = after / before - 1
    return {"base": round(before, 4), "tuned": round(after, 4), "change": round(change, 4),
            "word_perplexity": {"base": round(base["word_perplexity"], 4), "tuned": round(tuned["word_perplexity"], 4)},
            "threshold": threshold, "flagged": change > threshold}
