"""Defaults derived from the data, for the recipe keys a user left empty: how many passes over the
training split, how many tokens an example may have, how many tokens evaluation generates. Each
comes with the reason printed next to it, and the resolved recipe records the value, so a rerun
derives nothing."""

import math
from dataclasses import dataclass

import numpy as np

# OpenAI's fine-tuning API picks its epoch count the same way (its data-preparation cookbook): three
# passes, more for a small set so that training sees at least 100 examples, fewer for a large one so
# it sees at most 25,000.
TARGET_EPOCHS, MIN_EPOCHS, MAX_EPOCHS = 3, 1, 25
MIN_SEEN, MAX_SEEN = 100, 25_000
LENGTH_QUANTILE = 0.99  # the longest 1% of the training examples are cut (the data report counts them)
LENGTH_STEP = 64
LENGTH_CAP = 2048  # beyond this the activations dominate memory on most machines; raise it in the recipe
ANSWER_QUANTILE = 0.95
ANSWER_STEP, ANSWER_CAP = 16, 512
IMAGE_STEP, IMAGE_FLOOR = 32, 64  # a CNN's last feature map is 1/32 of the side: 2 x 2 at 64


@dataclass
class Derived:
    key: str
    value: int | float
    why: str

    def line(self) -> str:
        return f"  {self.key} = {self.value}: {self.why}"

    def record(self) -> dict:
        """As manifest.json and plan.json keep it: {key: {value, why}}."""
        return {self.key: {"value": self.value, "why": self.why}}


def epochs(n_train: int) -> Derived:
    if n_train * TARGET_EPOCHS < MIN_SEEN:
        value = min(MAX_EPOCHS, math.ceil(MIN_SEEN / n_train))
        why = f"{n_train:,} training examples; {value} passes so that training sees at least {MIN_SEEN}"
    elif n_train * TARGET_EPOCHS > MAX_SEEN:
        value = max(MIN_EPOCHS, MAX_SEEN // n_train)
        why = (f"{n_train:,} training examples; {value} pass{'es' if value > 1 else ''} so that training sees "
               f"at most {MAX_SEEN:,}")
    else:
        value = TARGET_EPOCHS
        why = (f"{n_train:,} training examples; {TARGET_EPOCHS} passes (more under "
               f"{math.ceil(MIN_SEEN / TARGET_EPOCHS)} examples, fewer over {MAX_SEEN // TARGET_EPOCHS:,})")
    return Derived("train.epochs", value, why)


def max_length(lengths, model_limit: int | None) -> Derived:
    """The training examples' tokens at their 99th percentile, rounded up to a multiple of 64, within
    the model's context and LENGTH_CAP."""
    x = np.asarray(lengths)
    quantile = int(np.quantile(x, LENGTH_QUANTILE, method="inverted_cdf"))
    cap = min(model_limit or LENGTH_CAP, LENGTH_CAP)
    value = max(16, min(cap, LENGTH_STEP * math.ceil(quantile / LENGTH_STEP)))
    cut = int((x > value).sum())
    why = (f"99% of the training examples have at most {quantile:,} tokens (longest {int(x.max()):,}); "
           f"{cut} of {len(x):,} are cut" + (f" (the cap is {cap:,})" if value == cap else ""))
    return Derived("data.max_length", value, why)


def max_new_tokens(answer_lengths) -> Derived:
    """The reference answers' tokens at their 95th percentile, rounded up to a multiple of 16, at most
    ANSWER_CAP: evaluation lets the model say about as much as the references do."""
    x = np.asarray(answer_lengths)
    quantile = int(np.quantile(x, ANSWER_QUANTILE, method="inverted_cdf"))
    value = max(ANSWER_STEP, min(ANSWER_CAP, ANSWER_STEP * math.ceil(quantile / ANSWER_STEP)))
    why = (f"95% of the {len(x):,} reference answers have at most {quantile:,} tokens (longest {int(x.max()):,})"
           + (f"; capped at {ANSWER_CAP}" if value == ANSWER_CAP else ""))
    return Derived("eval.max_new_tokens", value, why)


def model_limit(tokenizer) -> int | None:
    """The tokenizer's context length, when it states a real one (transformers uses 1e30 for none)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**7 else None


def image_size(train: dict, model_side: int, fixed: bool = False) -> Derived:
    """The model's own input size, or, for training images much smaller than it, twice their median
    shorter side rounded up to a multiple of 32 (at least IMAGE_FLOOR): upscaling 28-pixel images eight
    times to 224 costs 12 times the compute of 64 for no detail the images have
    (benchmarks/image_classification.py). A `fixed` model (a vision transformer, whose position
    embeddings are learnt for one size) keeps its own."""
    side = min(train["median_width"], train["median_height"])
    if fixed:
        return Derived("data.image.size", model_side, "a vision transformer's position embeddings are learnt for "
                       f"its own size, {model_side}")
    if 2 * side >= model_side:
        return Derived("data.image.size", model_side, f"the training images' median shorter side is {side} pixels; "
                       f"the model's own size is {model_side}")
    value = min(model_side, max(IMAGE_FLOOR, IMAGE_STEP * math.ceil(2 * side / IMAGE_STEP)))
    return Derived("data.image.size", value, f"the training images' median shorter side is {side} pixels, far below "
                   f"the model's {model_side}: twice that, rounded up to {IMAGE_STEP} (at least {IMAGE_FLOOR})")

