"""Load a finished run's tuned model, and its base model on the same prompts for comparison."""

import contextlib
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
from tuneforge.recipe import ADAPTER_METHODS, Recipe, load_recipe
from tuneforge.runs.folder import open_run
from tuneforge.train.hardware import detect_device


class RunModels:
    """The tuned model of a run; `base()` gives the model before fine-tuning.

    For LoRA runs the base is the same weights with the adapter switched off (no second copy).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = open_run(run_dir)
        model_dir = self.run_dir / "model"
        if not model_dir.is_dir():
            raise UserError(f"{self.run_dir}: has no model/ yet (training did not finish). "
                            f"Continue it with: tuneforge train --resume {self.run_dir}")
        self.recipe: Recipe = load_recipe(self.run_dir / "recipe.yaml")
        self.device = detect_device()
        self.tokenizer = load_tokenizer(model_dir)
        self._base_dir = resolve_model(self.recipe.model.name)
        if self.recipe.method in ADAPTER_METHODS:
            from peft import PeftModel

            self.tuned = PeftModel.from_pretrained(load_model(self._base_dir, torch.float32, self.device), model_dir)
        else:
            self.tuned = load_model(model_dir, torch.float32, self.device)
        self.tuned.eval()

    @contextlib.contextmanager
    def base(self):
        if self.recipe.method in ADAPTER_METHODS:
            with self.tuned.disable_adapter():
                yield self.tuned
        else:
            base = load_model(self._base_dir, torch.float32, self.device).eval()
            yield base
            del base
