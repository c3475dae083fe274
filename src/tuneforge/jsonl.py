"""Reading JSONL text. Not with str.splitlines(): it also breaks lines at U+0085, U+2028, U+2029 and
\\x1c-\\x1e, which JSON writes unescaped inside strings (json.dumps(..., ensure_ascii=False) keeps them),
so a generated answer or a user's row holding one would be cut in two and fail to parse."""

import json
from pathlib import Path


def jsonl_lines(text: str) -> list[str]:
    return text.split("\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]
