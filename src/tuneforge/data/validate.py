"""Checks on a canonical example: what training needs from a row, said in terms of the row's fields."""

from tuneforge.errors import RowError


def check_example(example: dict, max_row_chars: int) -> None:
    """RowError naming the field if the example cannot be trained on."""
    if "text" in example:
        _check_text(example["text"], "text")
        size = len(example["text"])
        if "text_pair" in example:
            _check_text(example["text_pair"], "text_pair")
            size += len(example["text_pair"])
    else:
        messages = example["messages"]
        for i, message in enumerate(messages):
            _check_text(message["content"], f"messages[{i}].content")
        _check_order([m["role"] for m in messages])
        size = sum(len(m["content"]) for m in messages)
        if "rejected" in example:
            _check_text(example["rejected"], "rejected")
            size += len(example["rejected"])
    if size > max_row_chars:
        raise RowError(f"has {size:,} characters, more than data.max_row_chars ({max_row_chars:,}). "
                       "Raise the limit if such rows are real.")


def _check_text(value: str, field: str) -> None:
    if not value.strip():
        raise RowError(f"`{field}` is empty.", field)


def _check_order(roles: list[str]) -> None:
    """An optional system turn, then user and assistant alternating, starting with user and ending
    with the assistant (a trailing question has no answer to learn)."""
    start = 1 if roles[0] == "system" else 0
    for i, role in enumerate(roles[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            where = f"messages[{i}].role"
            if role == "system":
                raise RowError(f"`{where}` is a system turn; only the first turn may be one.", where)
            raise RowError(f"`{where}` is {role!r} but {expected!r} was expected: turns must alternate user, "
                           f"assistant after an optional system turn (roles here: {', '.join(roles)}).", where)
    if len(roles) == start:
        raise RowError("has only a system turn; add a user turn and the assistant's answer.", "messages")
    if roles[-1] != "assistant":
        raise RowError(f"ends with a user turn (`messages[{len(roles) - 1}]`) that no assistant turn answers, "
                       "so there is nothing to learn from it. Add the answer or drop the turn.",
                       f"messages[{len(roles) - 1}]")
