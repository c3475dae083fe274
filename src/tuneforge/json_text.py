"""Reading JSON and JSONL text that may come from anywhere (a user's file, a request body, a generated
answer) without the reader itself failing on it.

- Lines: not str.splitlines(), which also breaks at U+0085, U+2028, U+2029 and \\x1c-\\x1e; JSON writes
  those unescaped inside strings (json.dumps(..., ensure_ascii=False) keeps them), so a row holding one
  would be cut in two.
- Nesting: Python's parser, pydantic, repr and json.dumps all recurse per level, so a value nested a few
  thousand levels deep raises RecursionError (or overflows the C stack) far from where it came in. Text
  is measured on its bytes before parsing; parsed values are measured without recursion.
"""

import json
import re
from pathlib import Path

import numpy as np

MAX_NESTING = 32  # levels of lists and objects a data row or a request may have (OpenAI's bodies need 5)

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STEP = np.zeros(256, np.int8)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


def jsonl_lines(text: str) -> list[str]:
    return text.split("\n")


def loads(line: str):
    """json.loads; a value nested too deep for the parser is the JSONDecodeError a malformed line gives."""
    try:
        return json.loads(line)
    except RecursionError:
        raise json.JSONDecodeError("arrays and objects nested too deeply", line, 0) from None


def read_jsonl(path: Path) -> list[dict]:
    return [loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]


def text_nesting(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, counted on its bytes (strings removed first)."""
    steps = _STEP[np.frombuffer(_STRING.sub(b"", raw), np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def nested_deeper_than(value, limit: int) -> bool:
    """Whether lists and dicts nest more than `limit` levels in a parsed value (iteratively, stopping early)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False
