"""`tuneforge data preview`: prepared examples as the model sees them, loss-carrying tokens marked (for
images: a PNG of each example as the model sees it, and as training augments it)."""

import sys
from itertools import groupby

from tuneforge.data.prepare import max_length, prepared_folder, read_split
from tuneforge.errors import UserError
from tuneforge.data.image_preview import image_preview
from tuneforge.recipe import Recipe
from tuneforge.tasks import get_task
from tuneforge.tasks.tokens import IGNORE


def preview(recipe: Recipe, n: int, split: str = "train", color: bool | None = None) -> str:
    from tuneforge.models.loader import load_inputs, resolve_model

    task = get_task(recipe.task)
    tokenizer = load_inputs(resolve_model(recipe.model.name), task)
    folder = prepared_folder(recipe, tokenizer)
    examples = read_split(folder, split)[:n]
    if not examples:
        raise UserError(f"the {split} split is empty; preview another (--split train) or change the split ratios.")
    if task.images:
        return image_preview(recipe, tokenizer, folder, examples)
    if task.head:
        return _labelled_preview(recipe, tokenizer, folder, examples)
    if task.encoder_decoder:
        return _pair_preview(recipe, tokenizer, folder, examples)
    color = sys.stdout.isatty() if color is None else color
    start, end = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    limit = max_length(recipe, folder)
    out = [f"Loss falls on the marked tokens ({start}like this{end}); data.max_length = {limit}.", ""]
    for example in examples:
        enc = get_task(recipe.task).encode(example, tokenizer, limit, recipe.data.train_on_prompt)
        note = ", truncated" if enc.truncated else ""
        out.append(f"--- {example['id']} ({len(enc.input_ids)} tokens, {enc.loss_tokens} with loss{note})")
        pieces = []
        for has_loss, group in groupby(zip(enc.input_ids, enc.labels), key=lambda t: t[1] != IGNORE):
            text = tokenizer.decode([token for token, _ in group])
            pieces.append(f"{start}{text}{end}" if has_loss else text)
        out += ["".join(pieces), ""]
    return "\n".join(out)


def _labelled_preview(recipe: Recipe, tokenizer, folder, examples: list[dict]) -> str:
    """Rows per label and split, then each example as the encoder reads it (special tokens and all)
    with its target."""
    import json

    from tuneforge.data.report import labels_table

    table = labels_table(json.loads((folder / "manifest.json").read_text()))
    out = [table + "\n"] if table else []
    limit = max_length(recipe, folder)
    classes = get_task(recipe.task).classes(read_split(folder, "train"))
    out.append(f"Examples as the model reads them (data.max_length = {limit}):\n")
    for example in examples:
        enc = get_task(recipe.task).encode(example, tokenizer, limit, classes=classes)
        note = ", truncated" if enc.truncated else ""
        out += [f"--- {example['id']} ({len(enc.input_ids)} tokens{note}) -> label {example['label']!r}",
                tokenizer.decode(enc.input_ids), ""]
    return "\n".join(out)


def _pair_preview(recipe: Recipe, tokenizer, folder, examples: list[dict]) -> str:
    """Each example as an encoder-decoder reads it: the encoder's tokens, and the decoder's labels (every
    one carries loss), special tokens shown."""
    limit = max_length(recipe, folder)
    out = [f"The encoder reads the prompt; loss falls on every decoder label (data.max_length = {limit} each).", ""]
    for example in examples:
        enc = get_task(recipe.task).encode(example, tokenizer, limit)
        note = ", truncated" if enc.truncated else ""
        out += [f"--- {example['id']} ({len(enc.input_ids)} encoder tokens, {len(enc.labels)} labels{note})",
                f"encoder: {tokenizer.decode(enc.input_ids)}", f"labels:  {tokenizer.decode(enc.labels)}", ""]
    return "\n".join(out)
