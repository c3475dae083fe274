"""Source row (any known shape) -> canonical example.

Canonical examples are `{"id", "messages": [{"role", "content"}, ...]}` for chat (prompt/completion,
Alpaca, OpenAI messages, ShareGPT conversations and preference pairs all become this; a preference
pair also keeps `"rejected"`), `{"id", "text"}` for continued pre-training, or `{"id", "text",
"label"}` (and an optional `"text_pair"`) for classification and regression, `{"id", "image", "label"}` for
image classification (the image stored by data/images.py); the task checks the label. The format is detected
per row from its columns, or fixed by the source's `format`; `columns` renames the user's columns.
Rows without an `id` get theirs from their cleaned content (content_id), so identical rows share one.
"""

import hashlib
import json
from pathlib import Path

from tuneforge.errors import RowError
from tuneforge.json_text import MAX_NESTING, loads, nested_deeper_than
from tuneforge.recipe import SourceSpec

# Format -> the fields it needs, in detection order (the first whose fields a row has wins).
REQUIRED = {
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "image": ("image", "label"),
    "labelled": ("text", "label"),
    "text": ("text",),
}
# Common alternative column names, tried when the source maps none of its own.
ALIASES = {"prompt": ("prompt", "question", "query"), "completion": ("completion", "response", "answer"),
           "image": ("image", "file_name", "image_path", "img")}  # file_name: Hugging Face's imagefolder metadata
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
_ROLES = ("system", "user", "assistant")


class RowReader:
    """Turns the rows of one source into canonical examples (RowError for rows that do not fit)."""

    def __init__(self, spec: SourceSpec, system_prompt: str | None, stratify_by: str | None):
        self.spec, self.system_prompt, self.stratify_by = spec, system_prompt, stratify_by
        path = Path(spec.path).expanduser()
        self.base = path if path.is_dir() else path.parent  # what image paths in rows are relative to
        self.roles = {**{r: r for r in _ROLES}, **spec.roles}
        self.sharegpt_roles = {**SHAREGPT_ROLES, **spec.roles}

    def example(self, row: dict) -> tuple[str, dict]:
        """(format, canonical example); the id is None when the row has none."""
        fmt = self.spec.format if self.spec.format != "auto" else self.detect(row)
        example = getattr(self, f"_{fmt}")(row)
        if "messages" in example and self.system_prompt and example["messages"][0]["role"] != "system":
            example["messages"].insert(0, {"role": "system", "content": self.system_prompt})
        row_id = row.get(self.spec.columns.get("id", "id"))
        out = {"id": None if row_id is None or row_id == "" else str(row_id), **example}
        if self.stratify_by:
            if self.stratify_by not in row:
                raise RowError(f"has no `{self.stratify_by}` column, which data.stratify_by needs in every row.",
                               self.stratify_by)
            out["stratum"] = str(row[self.stratify_by])
        return fmt, out

    def detect(self, row: dict) -> str:
        for fmt, fields in REQUIRED.items():
            if all(self.column(row, f) is not None for f in fields):
                return fmt
        raise RowError(f"no known format; found columns {sorted(row)}. {suggest_mapping(row)}")

    def column(self, row: dict, field: str) -> str | None:
        """The row's column for a canonical field: the mapped one, the field itself, or an alias."""
        if field in self.spec.columns:
            return self.spec.columns[field] if self.spec.columns[field] in row else None
        return next((name for name in ALIASES.get(field, (field,)) if name in row), None)

    def _get(self, row: dict, field: str, optional: bool = False):
        column = self.column(row, field)
        if column is None:
            if optional:
                return None
            raise RowError(f"has no `{self.spec.columns.get(field, field)}` column; found {sorted(row)}.", field)
        return row[column]

    def _text_field(self, row: dict, field: str, optional: bool = False) -> str | None:
        value = self._get(row, field, optional)
        if value is None and optional:
            return None
        column = self.column(row, field)
        if not isinstance(value, str):
            raise RowError(f"`{column}` must be a string, got {type(value).__name__} {value!r:.60}.", column)
        if not value.strip() and not optional:
            raise RowError(f"`{column}` is empty.", column)
        return value

    def _text(self, row: dict) -> dict:
        return {"text": self._text_field(row, "text")}

    def _labelled(self, row: dict) -> dict:
        example = {"text": self._text_field(row, "text"), "label": self._get(row, "label")}
        pair = self._text_field(row, "text_pair", optional=True)
        if pair is not None:
            example["text_pair"] = pair
        return example

    def _image(self, row: dict) -> dict:
        """The image cell as it is (a path, bytes, a `datasets` image); data/images.py reads and checks it."""
        return {"image": self._get(row, "image"), "label": self._get(row, "label")}

    def _with_system(self, row: dict, messages: list[dict]) -> list[dict]:
        system = self._text_field(row, "system", optional=True)
        return ([{"role": "system", "content": system}] if system else []) + messages

    def _prompt_completion(self, row: dict) -> dict:
        prompt, completion = self._text_field(row, "prompt"), self._text_field(row, "completion")
        return {"messages": self._with_system(row, [{"role": "user", "content": prompt},
                                                    {"role": "assistant", "content": completion}])}

    def _alpaca(self, row: dict) -> dict:
        instruction, output = self._text_field(row, "instruction"), self._text_field(row, "output")
        extra = self._text_field(row, "input", optional=True)
        prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return {"messages": self._with_system(row, [{"role": "user", "content": prompt},
                                                    {"role": "assistant", "content": output}])}

    def _messages(self, row: dict) -> dict:
        return {"messages": self._turns(self._get(row, "messages"), "messages", "role", "content", self.roles)}

    def _sharegpt(self, row: dict) -> dict:
        return {"messages": self._turns(self._get(row, "conversations"), "conversations", "from", "value",
                                        self.sharegpt_roles)}

    def _preference(self, row: dict) -> dict:
        chosen, rejected = self._get(row, "chosen"), self._get(row, "rejected")
        prompt = self._get(row, "prompt", optional=True)
        if prompt is None:  # conversational pairs with the prompt inside each side (TRL's implicit prompt)
            chosen = self._turns(chosen, "chosen", "role", "content", self.roles)
            rejected = self._turns(rejected, "rejected", "role", "content", self.roles)
            return {"messages": chosen, "rejected": rejected[-1]["content"]}
        if isinstance(prompt, str):
            messages = self._with_system(row, [{"role": "user", "content": prompt}])
        else:
            messages = self._turns(prompt, "prompt", "role", "content", self.roles)
        return {"messages": messages + [{"role": "assistant", "content": _answer(chosen, "chosen")}],
                "rejected": _answer(rejected, "rejected")}

    def _turns(self, value, field: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[dict]:
        if isinstance(value, str) and value.lstrip().startswith("["):  # a JSON list stored in a CSV/Parquet cell
            try:
                value = loads(value)
            except json.JSONDecodeError as e:
                raise RowError(f"`{field}` is a string that is not valid JSON ({e.msg}).", field) from None
            if nested_deeper_than(value, MAX_NESTING):
                raise RowError(f"`{field}` nests lists and objects more than {MAX_NESTING} levels deep.", field)
        if not isinstance(value, list) or not value:
            raise RowError(f"`{field}` must be a non-empty list of {{{role_key}, {content_key}}} objects, "
                           f"got {type(value).__name__}.", field)
        turns = []
        for i, turn in enumerate(value):
            where = f"{field}[{i}]"
            if not isinstance(turn, dict):
                raise RowError(f"`{where}` must be an object with `{role_key}` and `{content_key}`, "
                               f"got {type(turn).__name__}.", where)
            name = turn.get(role_key)
            if not isinstance(name, str) or name not in roles:
                known = ", ".join(sorted(roles))
                raise RowError(f"`{where}.{role_key}` is {name!r}, not a known role ({known}). "
                               f"Map it on the source, for instance roles: {{{name}: assistant}}.", f"{where}.{role_key}")
            turns.append({"role": roles[name], "content": _content(turn.get(content_key), f"{where}.{content_key}")})
        return turns


def content_id(example: dict) -> str:
    content = {k: v for k, v in example.items() if k in ("messages", "text", "rejected", "text_pair", "label", "image")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _content(value, field: str) -> str:
    """Message content: a string, or OpenAI-style parts [{type: text, text}] joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        value = "".join(str(p.get("text", "")) for p in value)
    if not isinstance(value, str):
        raise RowError(f"`{field}` must be a string, got {type(value).__name__} {value!r:.60}.", field)
    return value


def _answer(value, field: str) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # [{role: assistant, content}]
        return _content(value[-1].get("content"), f"{field}[-1].content")
    return _content(value, field)


def suggest_mapping(row: dict) -> str:
    """A `columns:` mapping that would work, guessed from which columns hold text."""
    texts = [k for k, v in row.items() if isinstance(v, str) and k != "id"]
    if len(texts) >= 2:
        return (f"Map your columns on the source, for instance `columns: {{prompt: {texts[0]}, completion: "
                f"{texts[1]}}}` (or format: text with `columns: {{text: {texts[0]}}}`).")
    if texts:
        return f"Map your column on the source, for instance `format: text` with `columns: {{text: {texts[0]}}}`."
    return ("Known formats: text; prompt + completion; instruction + input + output; messages; conversations "
            "(ShareGPT); prompt + chosen + rejected.")
