"""Source rows -> normalised examples.

Every example is `{"id", "messages": [{"role", "content"}, ...]}` (chat; prompt + completion rows
become a user and an assistant turn) or `{"id", "text"}` (continued pre-training). Ids are the
row's own `id` or a hash of its content, so identical rows share an id and land in the same split.
"""

import hashlib
import json
from pathlib import Path

from tuneforge.errors import UserError

ROLES = ("system", "user", "assistant")
_FORMATS = "`messages` (a list of {role, content}), `prompt` + `completion`, or `text`"


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found. Set data.source to `pydocs` or to a JSONL file.")
    examples = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise UserError(f"{where}: not UTF-8 text (byte {e.start}). Re-save the file as UTF-8.") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno}). "
                                "Each line must be one JSON object.") from None
            examples.append(normalise_row(row, where))
    if not examples:
        raise UserError(f"{path}: no examples (the file is empty). Add one JSON object per line with {_FORMATS}.")
    return examples


def normalise_row(row, where: str) -> dict:
    """One source row -> one example, or UserError naming the row and field."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with {_FORMATS}, got {type(row).__name__}.")
    if "messages" in row:
        example = {"messages": _messages(row["messages"], where)}
    elif "prompt" in row or "completion" in row:
        prompt, completion = (_text(row, key, where) for key in ("prompt", "completion"))
        example = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}
    elif "text" in row:
        example = {"text": _text(row, "text", where)}
    else:
        raise UserError(f"{where}: no usable field; found keys {sorted(row)}. Expected {_FORMATS}.")
    row_id = row.get("id")
    if row_id is None:
        row_id = hashlib.sha256(json.dumps(example, sort_keys=True).encode()).hexdigest()[:16]
    return {"id": str(row_id), **example}


def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field `{key}` must be a non-empty string, got {value!r:.60}.")
    return value


def _messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: field `messages` must be a non-empty list of {{role, content}} objects.")
    out = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            got = message.get("role") if isinstance(message, dict) else message
            raise UserError(f"{where}: {field}.role must be one of {', '.join(ROLES)}, got {got!r:.60}.")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"{where}: {field}.content must be a non-empty string, got {content!r:.60}.")
        if message["role"] == "system" and i != 0:
            raise UserError(f"{where}: {field} is a system message; only the first message may be one.")
        out.append({"role": message["role"], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise UserError(f"{where}: `messages` has no assistant turn, so there is nothing to learn. "
                        "Add {\"role\": \"assistant\", \"content\": ...}.")
    return out
