"""`tuneforge train`: setup -> plan -> load -> fit -> save, and `--resume` of an interrupted run.

Everything that can fail because of the user's input (recipe, data, model reference, memory) is
checked before the run folder is created, so a bad input never leaves anything under runs/. Under
torchrun / accelerate launch every process runs this; rank 0 alone writes the run folder.
"""

import contextlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from tuneforge.data import defaults
from tuneforge.data.defaults import Derived
from tuneforge.data.prepare import PreparedData, copy_prepared, encode_splits, prepared_folder, read_split
from tuneforge.data.split import SPLITS
from tuneforge.errors import UserError
from tuneforge.methods import get_method
from tuneforge.methods.model_parts import trainable_parameters, transformer_blocks
from tuneforge.models.loader import load_inputs, resolve_model, resolve_pooling
from tuneforge.recipe import Recipe
from tuneforge.recipe_file import load_recipe, validate_recipe
from tuneforge.run_folder import create_run_dir, open_run, truncate_metrics, write_env
from tuneforge.runtime.distributed import check_batch, device_for, full_state, init_distributed, shutdown, wrap
from tuneforge.runtime.hardware import choose_precision, image_fast_path
from tuneforge.tasks import get_task
from tuneforge.tasks.image_inputs import set_image_side
from tuneforge.train.checkpoint import LoopState, list_checkpoints, load_checkpoint
from tuneforge.train.compile import AutoCompile, compile_blocks
from tuneforge.train.head_init import init_head_from_probe
from tuneforge.train.load import load_for_method
from tuneforge.train.loop import Trainee, fit
from tuneforge.train.loss import LossModel
from tuneforge.train.optim import make_optimizer, make_schedule
from tuneforge.train.plan import ModelShape, TrainPlan, format_plan, image_tokens, make_plan, model_shape
from tuneforge.train.tracking import Trackers


@dataclass
class Setup:
    recipe: Recipe
    tokenizer: object
    prepared: Path
    data: PreparedData
    shape: ModelShape
    plan: TrainPlan
    derived: list[Derived]
    trainee: Trainee | None = None


def train(recipe: Recipe, runs_dir: Path = Path("runs"), overwrite: bool = False) -> Path:
    """Fine-tune as the recipe says; returns the run folder."""
    setup = plan_training(recipe)
    load_trainee(setup)
    d = setup.trainee.dist
    if d.main:
        print(f"Recipe (resolved):\n{setup.recipe.to_yaml()}")
    run_dir = None
    if d.main:
        run_dir = create_run_dir(runs_dir, recipe.name, overwrite)
        print(f"Run folder: {run_dir}")
        (run_dir / "recipe.yaml").write_text(setup.recipe.to_yaml())
        write_env(run_dir, recipe.seed, setup.trainee.device, setup.trainee.precision, d.world)
        _write_plan(run_dir, setup)
        copy_prepared(setup.prepared, run_dir / "data")
        (run_dir / "data" / "encoding.json").write_text(json.dumps(setup.data.encoding, indent=1) + "\n")
    run_dir = Path(d.broadcast_text(str(run_dir) if run_dir else None))
    return _fit_and_save(setup, run_dir, LoopState(), None, resumed=False)


def resume(run_dir: Path) -> Path:
    """Continue a run from its newest checkpoint, with the data and recipe it recorded."""
    run_dir = open_run(run_dir)
    if (run_dir / "model").exists():
        raise UserError(f"{run_dir}: this run already finished (model/ exists); nothing to resume.")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise UserError(f"{run_dir}: no checkpoint to resume from. Start it again with tuneforge train.")
    recipe = load_recipe(run_dir / "recipe.yaml")
    _check_unchanged(recipe, checkpoints[-1], run_dir)
    setup = plan_training(recipe, run_dir / "data")
    t = load_trainee(setup)
    state, best = load_checkpoint(checkpoints[-1], t)
    if t.dist.main:
        truncate_metrics(run_dir, state.step)
        print(f"Resuming {run_dir} from {checkpoints[-1].name} (step {state.step} of {setup.plan.total_steps}).")
    return _fit_and_save(setup, run_dir, state, best, resumed=True)


def plan_training(recipe: Recipe, prepared: Path | None = None) -> Setup:
    """Data and the memory plan, before any weight is loaded; `prepared` is the data folder to use
    (a resumed run's own), otherwise the recipe's data is prepared (or found in the cache). The Setup's
    recipe is a resolved copy (derived values filled in); the caller's recipe is left as it was."""
    recipe = recipe.model_copy(deep=True)
    _check_combination(recipe)
    task = get_task(recipe.task)
    if recipe.train.packing is None:
        recipe.train.packing = get_method(recipe.method).packing and task.packing
    d = init_distributed()
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = device_for(d)
    precision = choose_precision(recipe.train.precision, device.split(":")[0])
    model_dir = resolve_model(recipe.model.name)
    tokenizer = load_inputs(model_dir, task)  # or, for an image task, its image processor
    if prepared is None:
        if not d.main:
            d.barrier()  # rank 0 prepares (or finds) the data first; the others then find it in the cache
        prepared = prepared_folder(recipe, tokenizer)
        if d.main:
            d.barrier()
    splits = {name: read_split(prepared, name) for name in SPLITS}
    derived = derive_defaults(recipe, task, tokenizer, prepared, splits)
    if task.images:  # the image size is known now, and with it the fastest precision
        precision = image_fast_path(recipe.train.precision, device, recipe.data.image.size)[0]
    data = encode_splits(splits, recipe, tokenizer)
    n_train, cfg = len(data.encoded["train"]), recipe.train
    if n_train < cfg.global_batch_size:
        raise UserError(f"train.global_batch_size: {cfg.global_batch_size} is more than the {n_train} training "
                        f"examples; lower it to at most {n_train} or add data.")
    check_batch(cfg.global_batch_size, d)
    shape = model_shape(model_dir, recipe, data.classes)
    longest = max(e.length for e in data.encoded["train"])
    if task.images:
        longest = image_tokens(model_dir, recipe.data.image.size, shape)
    plan = make_plan(recipe, shape, n_train=n_train, longest_example=longest, device=device, precision=precision,
                     world=d.world, largest=task.images)
    if plan.memory.total > plan.available:
        raise UserError(f"this run needs about {plan.memory.total / 2**30:.1f} GiB but {plan.available / 2**30:.1f} GiB "
                        f"is free:\n{format_plan(plan, shape, cfg.packing)}\nTo fit: method: lora or qlora, "
                        "train.gradient_checkpointing: true, train.optimizer: adafactor, a lower data.max_length, "
                        "or a smaller model.")
    # The resolved recipe records what the code derived, so a rerun needs no derivation.
    recipe.train.learning_rate = recipe.learning_rate()
    recipe.train.micro_batch_size = plan.micro_batch
    recipe.train.max_steps = plan.total_steps
    if d.main and derived:
        print("Derived from the data (set a key in the recipe to choose it yourself):\n"
              + "\n".join(x.line() for x in derived))
    if d.main:
        print(f"Plan ({recipe.method} on {Path(recipe.model.name).name}, {device}, {precision}):\n"
              f"{format_plan(plan, shape, cfg.packing)}")
    setup = Setup(recipe, tokenizer, prepared, data, shape, plan, derived)
    setup.trainee = Trainee(None, None, None, {}, None, None, getattr(tokenizer, "pad_token_id", None), device,
                            precision, d, task)
    return setup


def derive_defaults(recipe: Recipe, task, tokenizer, prepared: Path, splits: dict[str, list[dict]]) -> list[Derived]:
    """Fill the recipe's empty data.max_length (derived when the data was prepared), a text head's
    head.pooling: auto (from the model folder), train.epochs and, for a task that generates,
    eval.max_new_tokens (data/defaults.py); returns what was derived, why."""
    derived = []
    if recipe.data.max_length is None and not task.images:
        manifest = json.loads((prepared / "manifest.json").read_text())
        recipe.data.max_length = manifest["tokens"]["max_length"]
        derived += [Derived(key, r["value"], r["why"]) for key, r in manifest.get("derived", {}).items()]
    if task.images:
        if recipe.data.image.size is None:
            record = json.loads((prepared / "manifest.json").read_text())["derived"]["data.image.size"]
            derived.append(Derived("data.image.size", record["value"], record["why"]))
            recipe.data.image.size = record["value"]
        set_image_side(tokenizer, recipe.data.image.size)  # saved with the model: every later stage sees it
    if task.head and not task.images and recipe.head.pooling == "auto":
        recipe.head.pooling, why = resolve_pooling(resolve_model(recipe.model.name), "auto")
        derived.append(Derived("head.pooling", recipe.head.pooling, why))
    if recipe.train.epochs is None and recipe.train.max_steps is None:
        derived.append(defaults.epochs(len(splits["train"])))
        recipe.train.epochs = float(derived[-1].value)
    if recipe.eval.max_new_tokens is None and task.generates:
        # the test split's answers (what evaluation asks for), or the others' when it has none
        answered = next((rows for rows in ([e for e in splits[name] if "messages" in e]
                                           for name in ("test", "val", "train")) if rows), [])
        if answered:
            answers = [task.reference(e) for e in answered]
            if task.encoder_decoder:  # the decoder's labels, with the tokenizer's own special tokens
                lengths = [len(x) for x in tokenizer(text_target=answers)["input_ids"]]
            else:  # + the end-of-turn token
                lengths = [len(x) + 1 for x in tokenizer(answers, add_special_tokens=False)["input_ids"]]
            derived.append(defaults.max_new_tokens(lengths))
            recipe.eval.max_new_tokens = derived[-1].value
    return derived


def load_trainee(setup: Setup, lr: float | None = None) -> Trainee:
    """Load the model for the method, then speed switches, the distributed wrapper and the optimizer."""
    recipe, t, cfg = setup.recipe, setup.trainee, setup.recipe.train
    method = get_method(recipe.method)
    if t.device == "cpu":
        torch.set_num_threads(cfg.threads or _cores_per_process())
    t.model = load_for_method(resolve_model(recipe.model.name), recipe, t.device, t.precision, setup.data.classes,
                              t.pad_id)
    base = t.model.get_base_model() if hasattr(t.model, "get_base_model") else t.model
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    blocks = transformer_blocks(t.model) if cfg.compile is True or cfg.distributed == "fsdp" else []
    if cfg.compile is True:
        compile_blocks(blocks)
    elif cfg.compile == "auto" and t.dist.world == 1 and method.static_graph:
        # One process only: the blocks of a DDP / FSDP model are wrapped before the first step; and
        # a method that changes which blocks learn (gradual_unfreeze) would recompile them.
        with contextlib.suppress(UserError):  # a model without decoder.layers stays eager
            t.compiler = AutoCompile(transformer_blocks(t.model))
    t.loss_model = (t.task.loss_model(t.model, recipe, setup.data.encoded["train"], setup.tokenizer)
                    or LossModel(t.model, cfg.label_smoothing))
    if t.task.head and recipe.head.init == "probe":
        fitted = init_head_from_probe(t.model, setup.data.encoded["train"], t.loss_model.collate, t.pad_id, t.device,
                                      t.autocast, recipe.seed)
        if t.dist.main:
            print(f"head.init probe: fitted on {fitted['rows']} training rows' features ({fitted['features']} each), "
                  f"training score {fitted['train_score']:.3f}")
    t.module = wrap(t.loss_model, blocks, cfg.distributed, t.dist, t.device,
                    find_unused=not method.static_graph)
    t.params = trainable_parameters(t.model)
    t.optimizer = make_optimizer(t.params, recipe, lr)
    t.scheduler = make_schedule(t.optimizer, recipe, setup.plan.warmup_steps, setup.plan.total_steps)
    t.unfreezer = method.unfreezer(t.model, recipe)
    return t


def _fit_and_save(setup: Setup, run_dir: Path, state: LoopState, best, resumed: bool) -> Path:
    t = setup.trainee
    data = setup.data.encoded
    val = data["val"][: setup.recipe.train.eval_examples]
    trackers = Trackers(run_dir, setup.recipe, resumed) if t.dist.main else None
    try:
        fit(t, data["train"], val, setup.recipe, setup.plan, run_dir, state, trackers, best)
    except BaseException:
        if trackers:
            trackers.close("KILLED")
        raise
    if trackers:
        trackers.close()
    weights = full_state(t.model, [n for n, _ in t.model.named_parameters()], t.dist) if t.dist.world > 1 else None
    if t.dist.main:
        save_model(t.model, setup.tokenizer, run_dir / "model", weights)
        print(f"Saved {run_dir / 'model'}")
    t.dist.barrier()
    shutdown(t.dist)
    return run_dir


def save_model(model, tokenizer, folder: Path, state_dict: dict | None = None) -> None:
    """PEFT adapter or full weights, with the tokenizer and chat template, written atomically.
    `state_dict` carries the gathered full weights when they were sharded over processes."""
    tmp = folder.with_name(".tmp-model")
    if state_dict is not None and hasattr(model, "get_base_model"):
        from peft import get_peft_model_state_dict

        model.save_pretrained(tmp, state_dict=get_peft_model_state_dict(model, state_dict=state_dict))
    else:
        model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)


def _check_combination(recipe: Recipe) -> None:
    if recipe.train.packing and not get_method(recipe.method).packing:
        raise UserError(f"train.packing: {recipe.method} puts its soft prompt in front of each row, so packed "
                        f"examples would share one prompt; set train.packing: false for {recipe.method}.")


def _check_unchanged(recipe: Recipe, checkpoint: Path, run_dir: Path) -> None:
    """A resume continues exactly the run that was started: refuse if its recipe was edited since."""
    import yaml

    saved = checkpoint / "recipe.yaml"
    if not saved.is_file():
        return
    # through the recipe model, so a key added since that checkpoint counts as its default
    before = validate_recipe(yaml.safe_load(saved.read_text()), str(saved)).model_dump(mode="json")
    now = recipe.model_dump(mode="json")
    changed = _differences(before, now)
    if changed:
        raise UserError(f"{run_dir / 'recipe.yaml'}: changed since {checkpoint.name} was written ({', '.join(changed)}); "
                        "a resume must continue the same run. Undo the edit, or start a new run with tuneforge train.")


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _write_plan(run_dir: Path, setup: Setup) -> None:
    p, s = setup.plan, setup.shape
    record = {"total_params": s.total_params, "trainable_params": s.trainable_params,
              "trainable_share": round(s.trainable_params / s.total_params, 6),
              "micro_batch": p.micro_batch, "accumulation": p.accumulation, "processes": p.world,
              "total_steps": p.total_steps, "warmup_steps": p.warmup_steps,
              "memory_bytes": asdict(p.memory) | {"total": p.memory.total}, "available_bytes": p.available,
              "derived": {k: v for x in setup.derived for k, v in x.record().items()}}
    (run_dir / "plan.json").write_text(json.dumps(record, indent=1) + "\n")


def _cores_per_process() -> int:
    import os

    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) // per_node)
