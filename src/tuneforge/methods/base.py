"""A fine-tuning method says which parameters learn. Each method is one module with one registered
`Method`; the other stages ask it (is it an adapter, can it be merged, packed, served, compiled, what
does it add to the memory plan) instead of comparing method names.

Method modules import torch and PEFT inside their functions: the recipe reads the registry (names and
default learning rates) without loading them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tuneforge.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from tuneforge.recipe import Recipe

METHODS = Registry()
register = METHODS.register
get_method = METHODS.__getitem__  # the recipe's `method` is validated against METHODS


class Method:
    name: ClassVar[str]
    learning_rate: ClassVar[float]
    """The default peak learning rate, for short fine-tunes of small instruct models."""
    adapter: ClassVar[bool] = False
    """Trains a PEFT adapter over a frozen base: saved, exported and served as an adapter."""
    mergeable: ClassVar[bool] = True
    """What it learns folds into the model's own weights (hf / gguf export, lm-eval on the merged model)."""
    half_base: ClassVar[bool] = False
    """Its frozen base may be stored in the autocast dtype (runtime.precision.half_frozen_linears)."""
    packing: ClassVar[bool] = True
    """Trains on packed rows (several examples back to back in one row)."""
    servable: ClassVar[bool] = True
    """The server can batch its requests over a shared KV cache."""
    static_graph: ClassVar[bool] = True
    """What learns stays the same every step (auto-compile applies; DDP needs no unused-parameter search)."""
    four_bit_base: ClassVar[bool] = False
    """The base's linear weights are stored in 4 bits."""

    def apply(self, model, recipe: Recipe, model_dir: Path | None = None, head: tuple[str, ...] = ()):
        """Mark what learns (requires_grad) or wrap the model with an adapter; returns the model to train.
        `head` names the task's new modules (a classifier), which learn in full whatever the method."""
        raise NotImplementedError

    def load_options(self, device: str) -> dict:
        """Keyword arguments for from_pretrained beyond the config and dtype (placed on `device` by them
        when they say device_map)."""
        return {}

    def counted_as(self) -> Method:
        """The method whose meta-device copy has this one's parameter count (qlora counts as lora)."""
        return self

    def unfreezer(self, model, recipe: Recipe):
        """A per-step changer of what learns (gradual unfreezing), or None."""
        return None

    # The memory plan (train/plan.py): what this method adds to a step's activations.
    def activation_kind(self, recipe: Recipe) -> str:
        """Bytes kept for backward per token (plan._ACTIVATION_BYTES_PER_TOKEN_BLOCK_HIDDEN's key)."""
        return "plain"

    def learning_blocks(self, recipe: Recipe, layers: int) -> int:
        """Blocks that need a backward pass (those below the lowest trainable block keep nothing)."""
        return layers

    def full_size_temporaries(self, linear_params: int) -> int:
        """Bytes of full-size fp32 copies of the linear weights a step makes (DoRA's norm, QLoRA's dequantising)."""
        return 0

    def head_gradient(self, vocab: int, hidden: int) -> int:
        """Bytes of the output head's weight gradient, when the head learns."""
        return 0


def peft_task_type(model, head: tuple[str, ...] = ()) -> str | None:
    """PEFT's wrapper for this model: sequence classification under a task's new head, seq-to-seq for an
    encoder-decoder, causal LM otherwise; none for an image model (PEFT's wrappers pass input_ids)."""
    if getattr(model, "main_input_name", "") == "pixel_values":
        return None
    if head:
        return "SEQ_CLS"
    return "SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM"
