"""regression: a number for a text or a text pair (a rating, a score, a price), learnt by a one-output
head on a pre-trained encoder or decoder with a squared-error loss (transformers' problem_type
"regression"). Targets are used as they are: the head starts near zero and its bias learns the mean."""

import math

from tuneforge.tasks.base import register
from tuneforge.tasks.labelled import REGRESSION, Classes, HeadTask, head_loss_model


@register
class Regression(HeadTask):
    name = "regression"
    has_accuracy = False

    def check_label(self, label) -> str | None:
        if target(label) is None:
            return (f"`label` is {label!r:.60}, not a number; regression learns numeric targets "
                    "(for class names use task: classification).")
        return None

    def classes(self, train: list[dict]) -> Classes:
        return Classes(["value"], REGRESSION)

    def loss_model(self, model, recipe, train, inputs=None):
        return head_loss_model(model, REGRESSION)

    def target(self, example: dict, classes: Classes) -> float:
        return target(example["label"])


def target(value) -> float | None:
    """A label as a finite number (a number, or text that is one: CSV cells are text), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
