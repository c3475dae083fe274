"""The models a server holds: each run's tuned model, with runs that share a base model served as
adapters over one copy of it (and that base model served under its own name); classification and
regression runs each behind their own batching worker (serve/heads.py); seq2seq runs' encoder-decoders
beside the decoder-only models, decoded by the same engine (serve/encoder_decoder_batch.py)."""

from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.inference.run_models import for_inference
from tuneforge.methods import get_method
from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
from tuneforge.recipe_file import load_recipe
from tuneforge.run_folder import open_run
from tuneforge.runtime import attention
from tuneforge.runtime.hardware import autocast, choose_precision, detect_device
from tuneforge.serve.heads import HeadServer
from tuneforge.tasks import get_task


@dataclass
class Served:
    name: str
    run_dir: Path | None  # None for a base model
    base: str  # the recipe's model.name
    method: str
    created: int


class ModelPool:
    def __init__(self, run_dirs: list[Path], precision: str = "auto"):
        if not run_dirs:
            raise UserError("serve needs at least one run folder, for instance: tuneforge serve runs/pydocs-lora")
        self.device = detect_device()
        self.precision = choose_precision(precision, self.device)
        self.served: dict[str, Served] = {}
        self._models: dict[str, torch.nn.Module] = {}  # served name -> the module that runs it
        self._adapter: dict[str, str | None] = {}  # served name -> adapter to switch on (None: adapters off)
        self.tokenizers: dict[str, object] = {}
        self.eos_ids: dict[str, set[int]] = {}
        self.heads: dict[str, HeadServer] = {}  # classification / regression runs, by name
        self.encoder_decoder: set[str] = set()  # served names of seq2seq models (serve/encoder_decoder_batch.py)
        runs = [open_run(p) for p in run_dirs]
        names = [p.name for p in runs]
        if len(set(names)) < len(names):
            raise UserError(f"two runs have the same folder name ({', '.join(names)}); the API names models by it. "
                            "Rename one folder.")
        for run_dir in runs:
            if not (run_dir / "model").is_dir():
                raise UserError(f"{run_dir}: has no model/ (training did not finish); nothing to serve. "
                                f"Continue it with: tuneforge train --resume {run_dir}")
        recipes = {p: load_recipe(p / "recipe.yaml") for p in runs}
        for run_dir, recipe in recipes.items():
            if not get_method(recipe.method).servable:
                raise UserError(f"{run_dir}: prompt-tuning runs are not served yet (their soft prompt does not "
                                f"combine with a shared KV cache); try it with: tuneforge chat {run_dir}")
        for run_dir, recipe in recipes.items():
            if get_task(recipe.task).head:
                self.heads[run_dir.name] = HeadServer(run_dir, self.precision)
        generative = {p: r for p, r in recipes.items() if p.name not in self.heads}
        for base in sorted({r.model.name for r in generative.values()}):
            group = [p for p in generative if generative[p].model.name == base]
            self._load_group(base, group, generative, get_task(generative[group[0]].task))
        self.max_context = min((getattr(m.config, "max_position_embeddings", 1 << 30) for m in self._models.values()),
                               default=1 << 30)

    def _load_group(self, base: str, runs: list[Path], recipes: dict, task) -> None:
        """The runs over one base model (so of one task: a base model fits chat or seq2seq, not both)."""
        def load(folder: Path):
            if task.encoder_decoder:  # padded prompts, the model's own attention
                return load_model(folder, torch.float32, self.device, model_class=task.model_class)
            return load_model(folder, torch.float32, self.device, attn_implementation=attention.NAME)

        adapters = [p for p in runs if get_method(recipes[p].method).adapter]
        for run_dir in runs:
            if run_dir not in adapters:
                self._add(run_dir.name, run_dir, base, recipes[run_dir].method, load(run_dir / "model"), None,
                          run_dir / "model", task)
        if not adapters:
            return
        from peft import PeftModel

        shared = load(resolve_model(base))
        model = PeftModel.from_pretrained(shared, adapters[0] / "model", adapter_name=adapters[0].name)
        for run_dir in adapters[1:]:
            model.load_adapter(run_dir / "model", adapter_name=run_dir.name)
        for run_dir in adapters:
            self._add(run_dir.name, run_dir, base, recipes[run_dir].method, model, run_dir.name, run_dir / "model", task)
        label = Path(base).name if Path(base).is_absolute() else base  # a local folder is named by its name
        if label not in self.served:
            self._add(label, None, base, "base", model, None, resolve_model(base), task)

    def _add(self, name: str, run_dir: Path | None, base: str, method: str, model, adapter: str | None,
             tokenizer_dir: Path, task) -> None:
        if not any(m is model for m in self._models.values()):
            for_inference(model, self.precision)
        tokenizer = load_tokenizer(tokenizer_dir)
        eos = model.generation_config.eos_token_id
        self.tokenizers[name] = tokenizer
        self.eos_ids[name] = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        created = int((run_dir / "model").stat().st_mtime) if run_dir else 0
        self.served[name] = Served(name, run_dir, base, method, created)
        self._models[name], self._adapter[name] = model, adapter
        if task.encoder_decoder:
            self.encoder_decoder.add(name)

    def activate(self, name: str):
        """The module to call for `name`, with that run's adapter switched on (or all adapters off)."""
        from peft import PeftModel

        model = self._models[name]
        if isinstance(model, PeftModel):
            adapter = self._adapter[name]
            if adapter is None:
                model.base_model.disable_adapter_layers()
            else:
                model.base_model.enable_adapter_layers()
                model.set_adapter(adapter)
        return model

    def autocast(self):
        return autocast(self.device, self.precision)
