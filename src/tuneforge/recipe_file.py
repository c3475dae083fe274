"""Reading a recipe: YAML with file:line errors for bad syntax, `key.sub=value` overrides, validation
against the typed schema (recipe.py) with each bad key named by file, line and what it accepts, and the
task / method combinations refused before anything runs."""

from pathlib import Path
from typing import get_args

import yaml
from pydantic import ValidationError

from tuneforge.errors import UserError
from tuneforge.methods import METHODS
from tuneforge.recipe import Recipe, Section
from tuneforge.tasks import TASKS


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe file, apply `key.sub=value` overrides, validate; UserError on any mistake."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found. Pass a YAML recipe, for instance recipes/pydocs-lora.yaml.")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}). Fix the syntax at that line.") from None
    except RecursionError:  # PyYAML composes nested lists and mappings recursively
        raise UserError(f"{path}: nests lists and mappings thousands of levels deep; a recipe is a few levels "
                        "of sections and keys. Start from one in recipes/.") from None
    if raw is None or raw == {}:
        raise UserError(f"{path}: the recipe is empty (no keys, only comments or blank lines). A recipe names at "
                        "least what to train on, for instance `name: my-run` and `data: {sources: [my-data.jsonl]}`; "
                        "start from one in recipes/ (recipes/own-data.yaml for your own data).")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of keys (name:, model:, data:, train:, ...), not a "
                        f"{type(raw).__name__}; start from one in recipes/, for instance recipes/own-data.yaml.")
    return validate_recipe(raw, source=str(path), lines=lines, overrides=overrides)


def validate_recipe(raw: dict, source: str = "recipe", lines: dict[tuple, int] | None = None,
                    overrides: list[str] = ()) -> Recipe:
    """A Recipe from a mapping, after `key.sub=value` overrides; UserError naming each bad key."""
    for item in overrides:
        _apply_override(raw, item)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(err, source, lines or {}) for err in _merge_unions(e.errors())]
        raise UserError("\n".join(problems)) from None
    _check_task_fits(recipe, source, lines or {})
    return recipe


def _check_task_fits(recipe: Recipe, source: str, lines: dict[tuple, int]) -> None:
    """Settings the task cannot work with are refused before anything runs, naming what fits."""
    task, augment = TASKS[recipe.task], recipe.data.augment

    def where(*key: str) -> str:
        line = lines.get(key) or lines.get(key[:1])
        return f"{source}:{line}" if line else source

    if recipe.method in task.refused_methods:
        allowed = ", ".join(m for m in METHODS if m not in task.refused_methods)
        raise UserError(f"{where('method')}: method {recipe.method} does not fit task {recipe.task}: "
                        f"{task.refused_methods[recipe.method]} Methods for {recipe.task}: {allowed}.")
    if recipe.train.packing and not task.packing:
        raise UserError(f"{where('train', 'packing')}: train.packing: task {recipe.task} reads each example on its "
                        "own (one label per row, or one prompt per row for an encoder), so rows cannot be packed; "
                        "set train.packing: false or leave it empty.")
    if task.encoder_decoder and recipe.data.train_on_prompt:
        raise UserError(f"{where('data', 'train_on_prompt')}: data.train_on_prompt: task {recipe.task} feeds the prompt "
                        "to the encoder, which has no targets; only the answer is learnt. Remove data.train_on_prompt.")
    if task.encoder_decoder and (augment.synthetic or augment.paraphrases) and not augment.model:
        raise UserError(f"{where('data', 'augment')}: data.augment writes new rows with a chat model, and this recipe's "
                        f"model is an encoder-decoder for task {recipe.task}; name the writer, for instance "
                        "data.augment.model: smollm2-135m-instruct.")
    if task.images and recipe.head.pooling != "auto":
        raise UserError(f"{where('head', 'pooling')}: head.pooling: an image model pools its own feature map; "
                        "head.pooling is for text heads. Remove it.")
    if recipe.train.early_stopping_metric == "val_accuracy" and not task.has_accuracy:
        raise UserError(f"{where('train', 'early_stopping_metric')}: train.early_stopping_metric: task "
                        f"{recipe.task} has no accuracy; use val_loss.")
    if (augment.synthetic or augment.paraphrases) and "messages" not in task.row_kinds:
        line = lines.get(("data", "augment"))
        raise UserError(f"{source}{f':{line}' if line else ''}: data.augment makes conversations, and task "
                        f"{recipe.task} learns from {' or '.join(task.row_kinds)} rows only. Set "
                        "data.augment.synthetic and data.augment.paraphrases to 0, or use task: chat.")


def _merge_unions(errors: list[dict]) -> list[dict]:
    """Pydantic reports a value that fits no member of a union (`list[str] | 'all-linear'`) once per
    member, with the member's type in the location; one error per key reads better: "A, or B"."""
    merged: dict[tuple, dict] = {}
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS)))
        if loc in merged:
            merged[loc]["msg"] += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            merged[loc] = {**err, "loc": loc}
    return list(merged.values())


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, for instance --set train.max_steps=100.")
    parts = key.strip().split(".")
    section = Recipe
    node = raw
    for i, part in enumerate(parts):
        fields = section.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the recipe"
            raise UserError(f"--set {key}: unknown key {part!r} in {where}; allowed: {', '.join(fields)}.")
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            node[part] = _override_value(value)
        else:
            if not (isinstance(annotation, type) and issubclass(annotation, Section)):
                raise UserError(f"--set {key}: {'.'.join(parts[:i + 1])} is a value, not a section.")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {'.'.join(parts[:i + 1])} in the recipe is not a mapping.")
            section = annotation


def _override_value(text: str):
    """A --set value read as YAML (numbers, lists, null), or as the plain string when it is not YAML
    (`--set name=[draft]` is a list, `--set name=[draft` the text): the key's type decides if it fits."""
    if not text.strip():
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _describe(err: dict, source: str, lines: dict[tuple, int]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f"{source}:{line}" if line else source
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_section_at(loc[:-1]).model_fields)
        return f"{where}: unknown key {key!r}. Allowed keys here: {allowed}. Check the spelling."
    got = err.get("input")
    return f"{where}: {key}: {err['msg'].removeprefix('Value error, ')} (got {got!r})."


def _section_at(loc: tuple) -> type[Section]:
    section: type[Section] = Recipe
    for part in loc:
        if part.isdigit():  # an item of a list of sections (data.sources.0)
            continue
        annotation = section.model_fields[part].annotation
        section = next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, Section)), annotation)
    return section


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a composed YAML document to its 1-based line."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    return lines
