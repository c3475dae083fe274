"""classification: a label (or, multi-label, a list of labels) for a text or a text pair, learnt by a
new head on a pre-trained encoder (BERT, RoBERTa, DeBERTa, ModernBERT, MiniLM, ...) or decoder
(`...ForSequenceClassification` over Llama, Qwen, SmolLM2). Labels are names: the classes are the
training split's labels, sorted (numerically when all are whole numbers), stored in the model's config
as id2label. Splits are stratified by label."""

import math

from tuneforge.errors import UserError
from tuneforge.tasks.base import register
from tuneforge.tasks.labelled import MULTI, SINGLE, Classes, HeadTask, head_loss_model


@register
class Classification(HeadTask):
    name = "classification"
    stratified = True

    def check_label(self, label) -> str | None:
        if isinstance(label, list) and not label:
            return "`label` is an empty list; a multi-label row names at least one label."
        return next(filter(None, map(_bad_label, label if isinstance(label, list) else [label])), None)

    def stratum(self, example: dict) -> str:
        """Single-label rows by their class; multi-label rows are not stratified (one stratum): most
        combinations of labels are too rare to split."""
        label = example["label"]
        return "" if isinstance(label, list) else label_name(label)

    def classes(self, train: list[dict]) -> Classes:
        multi = {isinstance(e["label"], list) for e in train}
        if len(multi) > 1:
            raise UserError("data: some rows have a list of labels (multi-label) and others a single label; "
                            "give every row a list (multi-label) or every row one label.")
        names = {label_name(v) for e in train for v in (e["label"] if isinstance(e["label"], list) else [e["label"]])}
        if len(names) < 2:
            raise UserError(f"data: the training split has only one label ({', '.join(names)}); classification "
                            "needs at least two classes. Add rows of other classes.")
        numeric = all(n.lstrip("-").isdigit() for n in names)
        return Classes(sorted(names, key=int) if numeric else sorted(names), MULTI if multi == {True} else SINGLE)

    def loss_model(self, model, recipe, train, inputs=None):
        import torch

        problem = model.config.problem_type
        weights = None
        if recipe.head.class_weights == "balanced" and problem == SINGLE:
            counts = torch.bincount(torch.tensor([e.target for e in train]), minlength=model.config.num_labels)
            weights = len(train) / (len(counts) * counts.clamp(min=1).double())
            weights = weights.float().to(next(model.parameters()).device)
        return head_loss_model(model, problem, recipe.train.label_smoothing, weights,
                               self.collator(inputs, problem, recipe))

    def target(self, example: dict, classes: Classes):
        labels = classes.names
        index = {name: i for i, name in enumerate(labels)}
        label = example["label"]
        names = [label_name(v) for v in (label if isinstance(label, list) else [label])]
        unknown = [n for n in names if n not in index]
        if unknown:
            raise UserError(f"example {example['id']}: label {unknown[0]!r} is not one of the training split's "
                            f"labels ({', '.join(labels)}); the model cannot learn a class it never sees in training.")
        if isinstance(label, list):
            target = [0.0] * len(labels)
            for n in names:
                target[index[n]] = 1.0
            return target
        return index[names[0]]


def label_name(value) -> str:
    """A label as its class name: strings as they are, whole numbers (1, 1.0, True) as digits."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return str(int(value))
    return str(value) if isinstance(value, int) else value.strip()


def _bad_label(value) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "`label` is empty; every row needs its class."
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return (f"`label` is {value!r}, a number with a fraction; classification needs class names or whole "
                "numbers. For numeric targets use task: regression.")
    if not isinstance(value, (str, int, float)):
        return (f"`label` must be a class name, a whole number or a list of them (multi-label), got "
                f"{type(value).__name__} {value!r:.60}.")
    return None
