"""`tuneforge data preview`: prepared examples as the model sees them, loss-carrying tokens marked."""

import sys
from itertools import groupby

from tuneforge.data.prepare import prepared_folder, read_split
from tuneforge.errors import UserError
from tuneforge.models.chat_template import ensure_chat_template
from tuneforge.recipe import Recipe
from tuneforge.tasks import get_task
from tuneforge.tasks.tokens import IGNORE


def preview(recipe: Recipe, n: int, split: str = "train", color: bool | None = None) -> str:
    from tuneforge.models.loader import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(recipe.model.name))
    ensure_chat_template(tokenizer)
    examples = read_split(prepared_folder(recipe, tokenizer), split)[:n]
    if not examples:
        raise UserError(f"the {split} split is empty; preview another (--split train) or change the split ratios.")
    color = sys.stdout.isatty() if color is None else color
    start, end = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    d = recipe.data
    out = [f"Loss falls on the marked tokens ({start}like this{end}); data.max_length = {d.max_length}.", ""]
    for example in examples:
        enc = get_task(recipe.task).encode(example, tokenizer, d.max_length, d.train_on_prompt)
        note = ", truncated" if enc.truncated else ""
        out.append(f"--- {example['id']} ({len(enc.input_ids)} tokens, {enc.loss_tokens} with loss{note})")
        pieces = []
        for has_loss, group in groupby(zip(enc.input_ids, enc.labels), key=lambda t: t[1] != IGNORE):
            text = tokenizer.decode([token for token, _ in group])
            pieces.append(f"{start}{text}{end}" if has_loss else text)
        out += ["".join(pieces), ""]
    return "\n".join(out)
