"""Load a finished run's tuned model, and its base model on the same prompts for comparison."""

import contextlib
from pathlib import Path

import torch

from tuneforge.methods import get_method
from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
from tuneforge.recipe import Recipe
from tuneforge.recipe_file import load_recipe
from tuneforge.run_folder import finished_model, open_run
from tuneforge.runtime import attention
from tuneforge.runtime.hardware import DTYPES, autocast, choose_precision, detect_device
from tuneforge.runtime.precision import half_frozen_linears
from tuneforge.tasks import get_task


class RunModels:
    """The tuned model of a run; `base()` gives the model before fine-tuning.

    For LoRA runs the base is the same weights with the adapter switched off (no second copy). Models
    run inference only: no weight requires a gradient, attention takes packed rows (runtime/attention.py),
    and with a bf16 / fp16 `precision` the linear weights are stored in that dtype, so every forward
    must run under `self.autocast()`.
    """

    def __init__(self, run_dir: Path, precision: str = "fp32"):
        self.run_dir = open_run(run_dir)
        model_dir = finished_model(self.run_dir)
        self.recipe: Recipe = load_recipe(self.run_dir / "recipe.yaml")
        self.device = detect_device()
        self.precision = choose_precision(precision, self.device)
        self.tokenizer = load_tokenizer(model_dir)
        self._base_dir = resolve_model(self.recipe.model.name)
        self.adapter = get_method(self.recipe.method).adapter
        if self.adapter:
            from peft import PeftModel

            self.tuned = PeftModel.from_pretrained(self._load(self._base_dir), model_dir)
        else:
            self.tuned = self._load(model_dir)
        for_inference(self.tuned, self.precision)

    def autocast(self):
        return autocast(self.device, self.precision)

    def _load(self, folder: Path):
        task = get_task(self.recipe.task)
        if task.encoder_decoder:  # its encoder's rows are padded, never packed: the model's own attention
            return load_model(folder, torch.float32, self.device, model_class=task.model_class)
        return load_model(folder, torch.float32, self.device, attn_implementation=attention.NAME)

    @contextlib.contextmanager
    def base(self):
        if self.adapter:
            with self.tuned.disable_adapter():
                yield self.tuned
        else:
            base = self._load(self._base_dir)
            for_inference(base, self.precision)
            yield base
            del base


def for_inference(model, precision: str) -> None:
    """Eval mode, no gradients, and with bf16 / fp16 the linear weights stored in that dtype (run every
    forward under autocast): inference then reads half the weight bytes and never casts them. That
    includes the output head, untied from the fp32 embeddings (half_frozen_linears): autocast would
    cast the whole vocabulary x hidden matrix on every forward, 20 ms of a 95 ms bf16 decode step of the
    bundled model on this CPU."""
    model.eval().requires_grad_(False)
    if precision != "fp32":
        half_frozen_linears(model, DTYPES[precision])
        head = model.get_output_embeddings()
        if isinstance(head, torch.nn.Linear):
            head.register_forward_pre_hook(_strides_that_fold)


def _strides_that_fold(head, args):
    """The head's input copied to plain strides where torch's matmul would not fold it into one 2-D
    product: it folds [batch, seq, hidden] only when each leading stride is the next one times its size,
    and the last position sliced out of one prompt ([1, 1, hidden] with stride seq x hidden, every
    `generate` prefill) fails that check, so it goes to bmm over the expanded weight, which in bf16
    copies the whole head first: 54 ms against 3 ms for the bundled model on this CPU."""
    x = args[0]
    if all(x.stride(i) == x.stride(i + 1) * x.shape[i + 1] for i in range(x.dim() - 2)):
        return None
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])
