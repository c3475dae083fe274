"""A task says what is learnt from the rows: each task is one module that registers one `Task`, which
the stages ask for the rows it accepts, how a row becomes tokens, and what its evaluation does (see
methods/ for the other axis: which parameters learn)."""

from typing import ClassVar

from tuneforge.registry import Registry

TASKS = Registry()
register = TASKS.register
get_task = TASKS.__getitem__  # the recipe's `task` is validated against TASKS


class Task:
    name: ClassVar[str]
    row_kinds: ClassVar[tuple[str, ...]]
    """The normalised rows it learns from: "messages" (a conversation) and / or "text" (raw text)."""
    generates: ClassVar[bool] = True
    """Its evaluation generates answers to the test prompts and scores them against the references."""

    def check_row(self, example: dict) -> str | None:
        """Why this task cannot learn from a normalised row (None when it can)."""
        kind = "messages" if "messages" in example else "text"
        if kind in self.row_kinds:
            return None
        return self.refusal(kind)

    def refusal(self, kind: str) -> str:
        return (f"this row is a {kind} row, which task {self.name} does not learn from (it takes "
                f"{' or '.join(self.row_kinds)} rows).")

    def encode(self, example: dict, tokenizer, max_length: int, train_on_prompt: bool = False):
        raise NotImplementedError

    def token_lengths(self, examples: list[dict], tokenizer) -> list[int]:
        """Tokens of each example as `encode` renders them, without its per-token work."""
        raise NotImplementedError
