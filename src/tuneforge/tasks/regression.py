"""regression: a number for a text or a text pair (a rating, a score, a price), learnt by a one-output
head on a pre-trained encoder or decoder with a squared-error loss (transformers' problem_type
"regression"). Targets are used as they are: the head starts near zero and its bias learns the mean."""

import math

from tuneforge.tasks.base import Task, register
from tuneforge.tasks.classification import NO_PROMPT
from tuneforge.tasks.labelled import REGRESSION, Classes, encode_labelled, head_loss_model, head_modules, labelled_lengths


@register
class Regression(Task):
    name = "regression"
    row_kinds = ("labelled",)
    head = True
    generates = False
    default_model = "all-minilm-l6-v2"
    model_class = "AutoModelForSequenceClassification"
    chat_template = False
    packing = False
    has_accuracy = False
    refused_methods = {"prompt_tuning": NO_PROMPT}

    def check_row(self, example: dict) -> str | None:
        refusal = super().check_row(example)
        if refusal:
            return refusal
        if target(example["label"]) is None:
            return (f"`label` is {example['label']!r:.60}, not a number; regression learns numeric targets "
                    "(for class names use task: classification).")
        return None

    def classes(self, train: list[dict]) -> Classes:
        return Classes(["value"], REGRESSION)

    def head_modules(self, model) -> list[str]:
        return head_modules(model)

    def loss_model(self, model, recipe, train):
        return head_loss_model(model, REGRESSION)

    def encode(self, example, tokenizer, max_length, train_on_prompt=False, classes=None):
        return encode_labelled(example, tokenizer, max_length, target(example["label"]))

    def token_lengths(self, examples, tokenizer):
        return labelled_lengths(examples, tokenizer)


def target(value) -> float | None:
    """A label as a finite number (a number, or text that is one: CSV cells are text), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
