"""A finished classification / regression run's model: its outputs for rows (class probabilities or
numbers), and the embeddings of its encoder and of the pre-trained one (what a linear probe and the
forgetting check read): for text the mean of the last hidden states over the tokens, for images the
features the classifier reads (pooled)."""

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from tuneforge.methods import get_method
from tuneforge.methods.model_parts import final_linear
from tuneforge.models.loader import head_config, load_inputs, load_with_head, resolve_model, resolve_pooling
from tuneforge.recipe_file import load_recipe
from tuneforge.run_folder import finished_model, open_run
from tuneforge.runtime.hardware import autocast, choose_precision, detect_device
from tuneforge.tasks import get_task
from tuneforge.tasks.labelled import MULTI, REGRESSION, Classes, collate_labelled

ROWS_PER_BATCH = 32


class HeadModel:
    def __init__(self, run_dir: Path, precision: str = "fp32"):
        import transformers

        self.run_dir = open_run(run_dir)
        model_dir = finished_model(self.run_dir)
        self.recipe = load_recipe(self.run_dir / "recipe.yaml")
        self.task = get_task(self.recipe.task)
        encoding = json.loads((self.run_dir / "data" / "encoding.json").read_text())
        self.classes = Classes(**encoding["classes"])
        self.device = detect_device()
        self.precision = choose_precision(precision, self.device)
        self.tokenizer = load_inputs(model_dir, self.task)  # an image processor for an image task
        self.base_dir = resolve_model(self.recipe.model.name)
        auto = getattr(transformers, self.task.model_class)
        if get_method(self.recipe.method).adapter:
            from peft import PeftModel

            config = transformers.AutoConfig.from_pretrained(self.base_dir)
            if not self.task.images:
                config = head_config(config, resolve_pooling(self.base_dir, self.recipe.head.pooling)[0])
            self.classes.configure(config, getattr(self.tokenizer, "pad_token_id", None))
            base = load_with_head(self.base_dir, config, self.task.model_class, dtype=torch.float32)
            self.model = PeftModel.from_pretrained(base, model_dir)
        else:
            self.model = auto.from_pretrained(model_dir, dtype=torch.float32)
        self.model.to(self.device).eval().requires_grad_(False)

    def autocast(self):
        return autocast(self.device, self.precision)

    @torch.no_grad()
    def outputs(self, rows: list[dict]) -> np.ndarray:
        """Per row: class probabilities (softmax; sigmoid per class for multi-label) or the number."""
        encoded = [self.task.encode(_unlabelled(r, self.classes), self.tokenizer, self.recipe.data.max_length,
                                    classes=self.classes) for r in rows]
        logits = []
        for i in range(0, len(encoded), ROWS_PER_BATCH):
            batch = self._collate(encoded[i:i + ROWS_PER_BATCH])
            batch.pop("labels")
            with self.autocast():
                logits.append(self.model(**_to(batch, self.device)).logits.float().cpu())
        out = torch.cat(logits) if logits else torch.zeros(0, len(self.classes.names))
        if self.classes.problem == REGRESSION:
            return out.squeeze(-1).numpy()
        return (out.sigmoid() if self.classes.problem == MULTI else out.softmax(-1)).numpy()

    def _collate(self, encoded: list) -> dict:
        collate = self.task.collator(self.tokenizer, self.classes.problem)
        if collate is not None:
            return collate(encoded)
        return collate_labelled(encoded, self.tokenizer.pad_token_id, self.classes.problem)

    @torch.no_grad()
    def embeddings(self, rows: list[dict], pre_trained: bool = False) -> np.ndarray:
        """Mean-pooled last hidden states of the tuned model's encoder (or, `pre_trained`, the base's) for
        rows with a `text` (and optional `text_pair`); for image rows the features its classifier reads."""
        if self.task.images:
            return self._image_features(rows, self.pre_trained_classifier if pre_trained else self.model)
        encoder = self.pre_trained_encoder if pre_trained else _encoder(self.model)
        out = []
        for i in range(0, len(rows), ROWS_PER_BATCH):
            chunk = rows[i:i + ROWS_PER_BATCH]
            pairs = [r["text_pair"] for r in chunk] if all("text_pair" in r for r in chunk) else None
            enc = self.tokenizer([r["text"] for r in chunk], pairs, truncation=True,
                                 max_length=self.recipe.data.max_length, padding=True,
                                 return_tensors="pt").to(self.device)
            with self.autocast():
                hidden = encoder(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0))

    def _image_features(self, rows: list[dict], model) -> np.ndarray:
        encoded = [self.task.encode(_unlabelled(r, self.classes), self.tokenizer, None, classes=self.classes)
                   for r in rows]
        features = []
        hook = final_linear(model).register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].float().cpu()))
        try:
            for i in range(0, len(encoded), ROWS_PER_BATCH):
                batch = self._collate(encoded[i:i + ROWS_PER_BATCH])
                with self.autocast():
                    model(pixel_values=batch["pixel_values"].to(self.device))
        finally:
            hook.remove()
        return torch.cat(features).numpy() if features else np.zeros((0, 0))

    @cached_property
    def pre_trained_classifier(self):
        """The image model before fine-tuning, with its own head (whose input is what a probe reads)."""
        import transformers

        auto = getattr(transformers, self.task.model_class)
        return auto.from_pretrained(self.base_dir, dtype=torch.float32).to(self.device).eval()

    @cached_property
    def pre_trained_encoder(self):
        """The model before fine-tuning, without a head (loaded on first use)."""
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.base_dir, dtype=torch.float32).to(self.device).eval()


def prediction(output, classes, threshold: float = 0.5) -> dict:
    """One row's output as a record: the label (or labels, or value) and the score of each class."""
    if classes.problem == REGRESSION:
        return {"value": round(float(output), 5)}
    scores = {name: round(float(p), 5) for name, p in zip(classes.names, output)}
    if classes.problem == MULTI:
        return {"labels": [n for n, p in zip(classes.names, output) if p > threshold], "scores": scores}
    return {"label": classes.names[int(np.argmax(output))], "score": round(float(np.max(output)), 5), "scores": scores}


def _encoder(model):
    """The transformer under a head (bert, roberta, model, ...), through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def _unlabelled(row: dict, classes: Classes) -> dict:
    """A row to predict for: its label, when it has one, is not read (a placeholder target is encoded)."""
    placeholder = [classes.names[0]] if classes.problem == MULTI else (0.0 if classes.problem == REGRESSION
                                                                       else classes.names[0])
    return {"id": "", **row, "label": placeholder}


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
