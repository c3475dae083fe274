"""`tuneforge train`: setup -> load -> fit -> save, and `--resume` of an interrupted run.

Everything that can fail because of the user's input (recipe, data, model reference, memory) is
checked before the run folder is created, so a bad input never leaves anything under runs/.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.data.prepare import PreparedData, copy_prepared, encode_splits, prepared_folder, read_split
from tuneforge.data.split import SPLITS
from tuneforge.data.tokenize import ensure_chat_template
from tuneforge.errors import UserError
from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
from tuneforge.recipe import Recipe, load_recipe
from tuneforge.runs.folder import create_run_dir, open_run, truncate_metrics, write_env
from tuneforge.train.checkpoint import LoopState, list_checkpoints, load_checkpoint
from tuneforge.train.hardware import DTYPES, choose_precision, detect_device
from tuneforge.train.loop import Trainee, fit, make_optimizer
from tuneforge.train.methods import apply_method, count_parameters
from tuneforge.train.plan import TrainPlan, format_plan, make_plan


@dataclass
class Setup:
    recipe: Recipe
    tokenizer: object
    prepared: Path
    data: PreparedData
    trainee: Trainee
    plan: TrainPlan


def train(recipe: Recipe, runs_dir: Path = Path("runs"), overwrite: bool = False) -> Path:
    """Fine-tune as the recipe says; returns the run folder."""
    setup = _setup(recipe)
    run_dir = create_run_dir(runs_dir, recipe.name, overwrite)
    print(f"Run folder: {run_dir}")
    (run_dir / "recipe.yaml").write_text(setup.recipe.to_yaml())
    write_env(run_dir, recipe.seed, setup.trainee.device, setup.trainee.precision)
    copy_prepared(setup.prepared, run_dir / "data")
    (run_dir / "data" / "encoding.json").write_text(json.dumps(setup.data.encoding, indent=1) + "\n")
    return _fit_and_save(setup, run_dir, LoopState(), None)


def resume(run_dir: Path) -> Path:
    """Continue a run from its newest checkpoint, with the data and recipe it recorded."""
    run_dir = open_run(run_dir)
    if (run_dir / "model").exists():
        raise UserError(f"{run_dir}: this run already finished (model/ exists); nothing to resume.")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise UserError(f"{run_dir}: no checkpoint to resume from. Start it again with tuneforge train.")
    recipe = load_recipe(run_dir / "recipe.yaml")
    setup = _setup(recipe, run_dir / "data")
    t = setup.trainee
    state, best = load_checkpoint(checkpoints[-1], t.model, t.optimizer, t.scheduler)
    truncate_metrics(run_dir, state.step)
    print(f"Resuming {run_dir} from {checkpoints[-1].name} (step {state.step} of {setup.plan.total_steps}).")
    return _fit_and_save(setup, run_dir, state, best)


def _setup(recipe: Recipe, prepared: Path | None = None) -> Setup:
    """Everything a run needs, checked; `prepared` is the data folder to use (a resumed run's own),
    otherwise the recipe's data is prepared (or found in the cache)."""
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = detect_device()
    precision = choose_precision(recipe.train.precision, device)
    model_dir = resolve_model(recipe.model.name)
    tokenizer = load_tokenizer(model_dir)
    ensure_chat_template(tokenizer)
    prepared = prepared or prepared_folder(recipe, tokenizer)
    data = encode_splits({name: read_split(prepared, name) for name in SPLITS}, recipe, tokenizer)
    n_train, cfg = len(data.encoded["train"]), recipe.train
    if n_train < cfg.global_batch_size:
        raise UserError(f"train.global_batch_size: {cfg.global_batch_size} is more than the {n_train} training "
                        f"examples; lower it to at most {n_train} or add data.")
    model = apply_method(load_model(model_dir, torch.float32, device), recipe)
    total, trainable = count_parameters(model)
    config = model.config
    plan = make_plan(global_batch=cfg.global_batch_size, micro_batch=cfg.micro_batch_size, n_train=n_train,
                     max_steps=cfg.max_steps, epochs=cfg.epochs, warmup_ratio=cfg.warmup_ratio,
                     longest_example=max(len(e.input_ids) for e in data.encoded["train"]),
                     total_params=total, trainable_params=trainable, layers=config.num_hidden_layers,
                     hidden=config.hidden_size, bytes_per_value=DTYPES[precision].itemsize, device=device)
    if plan.memory.total > plan.available:
        raise UserError(f"this run needs about {plan.memory.total / 2**30:.1f} GiB but {plan.available / 2**30:.1f} GiB "
                        f"is free:\n{format_plan(plan, total, trainable)}\nUse method: lora, a smaller model, "
                        "or a lower data.max_length.")
    # The resolved recipe records what the code derived, so a rerun needs no derivation.
    recipe.train.learning_rate = recipe.learning_rate()
    recipe.train.micro_batch_size = plan.micro_batch
    recipe.train.max_steps = plan.total_steps
    print(f"Recipe (resolved):\n{recipe.to_yaml()}")
    print(f"Plan ({recipe.method} on {model_dir.name}, {device}, {precision}):\n{format_plan(plan, total, trainable)}")
    optimizer, scheduler = make_optimizer(model, recipe, plan.warmup_steps, plan.total_steps)
    trainee = Trainee(model, optimizer, scheduler, tokenizer.pad_token_id, device, precision)
    return Setup(recipe, tokenizer, prepared, data, trainee, plan)


def _fit_and_save(setup: Setup, run_dir: Path, state: LoopState, best) -> Path:
    data = setup.data.encoded
    val = data["val"][: setup.recipe.train.eval_examples]
    fit(setup.trainee, data["train"], val, setup.recipe, setup.plan, run_dir, state, best)
    save_model(setup.trainee.model, setup.tokenizer, run_dir / "model")
    print(f"Saved {run_dir / 'model'}")
    return run_dir


def save_model(model, tokenizer, folder: Path) -> None:
    """PEFT adapter (lora) or full weights, with the tokenizer and chat template, written atomically."""
    tmp = folder.with_name(".tmp-model")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
