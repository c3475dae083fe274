"""The training loop, in plain sight: steps of micro-batches, clipping, the optimizer, validation,
early stopping with restore of the best weights, checkpoints. Bookkeeping lives in small helpers."""

import contextlib
import time
from dataclasses import dataclass

import psutil
import torch
from tqdm import tqdm

from tuneforge.data.batches import (
    collate,
    collate_packed,
    micro_batches,
    packed_micro_batches,
    to_device,
)
from tuneforge.data.tokenize import Encoded
from tuneforge.methods.gradual_unfreeze import Unfreezer
from tuneforge.recipe import Recipe
from tuneforge.runtime.distributed import (
    Dist,
    full_state,
    load_full_state,
    share_batches,
)
from tuneforge.runtime.hardware import DTYPES, autocast, matmul_shapes_cached
from tuneforge.train.checkpoint import LoopState, positions, save_checkpoint
from tuneforge.train.compile import AutoCompile
from tuneforge.train.loss import LossModel, evaluate_loss
from tuneforge.train.plan import TrainPlan
from tuneforge.train.tracking import Trackers


@dataclass
class Trainee:
    """What the loop works on: the model, the module whose forward gives the loss (DDP / FSDP wrapped
    when distributed), the parameters that learn, their optimizer and schedule, and how to run it."""

    model: torch.nn.Module
    loss_model: LossModel
    module: torch.nn.Module
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pad_id: int
    device: str
    precision: str
    dist: Dist
    unfreezer: Unfreezer | None = None
    compiler: AutoCompile | None = None

    def autocast(self):
        return autocast(self.device, self.precision)

    @property
    def bucket(self) -> bool:
        """Pad micro-batches to few lengths (data/batches.py, bucket_length)."""
        return matmul_shapes_cached(self.device, DTYPES[self.precision])


def fit(t: Trainee, train: list[Encoded], val: list[Encoded], recipe: Recipe, plan: TrainPlan,
        run_dir, state: LoopState, trackers: Trackers | None, best_weights: dict | None = None) -> LoopState:
    cfg = recipe.train
    t.module.train()
    bar = tqdm(total=plan.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=None if t.dist.main else True)
    if val and state.step == 0:  # the starting point: every later validation is compared to it
        best_weights = _validate(t, val, recipe, plan, state, trackers, bar, best_weights)
    window = _Window()
    done = state.step >= plan.total_steps or state.stopped_early  # a resume of a run killed while saving
    for indices in ([] if done else positions(state, len(train), cfg.global_batch_size, recipe.seed)):
        if t.unfreezer is not None and t.unfreezer.update(state.step):
            bar.write(f"step {state.step}: training the last {t.unfreezer.active} of {len(t.unfreezer.blocks)} blocks")
        started = time.perf_counter()
        loss, tokens, grad_norm = train_step(t, train, indices, plan, recipe)
        state.step += 1
        if t.compiler is not None:
            _auto_compile(t.compiler, state.step, time.perf_counter() - started, tokens,
                          plan.total_steps - state.step, trackers, bar)
        state.step_in_epoch += 1
        state.tokens_seen += tokens
        window.add(loss, tokens)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{window.tokens_per_s():.0f}", refresh=False)
        last = state.step >= plan.total_steps
        if trackers and (state.step % cfg.log_every == 0 or last):
            trackers.log(window.record(state, t.scheduler.get_last_lr()[0], grad_norm, t.device))
        if val and (state.step % cfg.eval_every == 0 or last):
            best_weights = _validate(t, val, recipe, plan, state, trackers, bar, best_weights)
            window.restart()  # throughput counts training time only
        if state.step % cfg.save_every == 0 or last or state.stopped_early:
            save_checkpoint(run_dir, t, state, best_weights, cfg.keep_checkpoints)
        if last or state.stopped_early:
            break
    bar.close()
    if best_weights is not None and state.best_step != state.step:
        load_full_state(t.model, best_weights)
        if t.dist.main:
            print(f"Restored the best weights (step {state.best_step}, {cfg.early_stopping_metric} {state.best_value:.4f}).")
    return state


def train_step(t: Trainee, examples: list[Encoded], indices: list[int], plan: TrainPlan,
               recipe: Recipe) -> tuple[float, int, float | None]:
    """One optimizer step over a global batch; the loss is normalised over all of its loss tokens,
    so any micro-batch x accumulation x process split (and packing) gives the same gradient."""
    batches = step_batches(examples, indices, plan.micro_batch, recipe, t.pad_id, t.bucket)
    mine = share_batches(batches, t.dist)
    n_loss = sum(examples[i].loss_tokens for i in indices)
    total = torch.zeros(1, dtype=torch.float64, device=t.device)  # on the device: no sync per micro-batch
    for j, (batch, weight) in enumerate(mine):
        batch = to_device(batch, t.device)
        with _gradient_sync(t.module, j == len(mine) - 1), t.autocast():
            s, _, _ = t.module(batch)
        # DDP / FSDP average gradients over processes; the world factor turns that into the step's sum.
        (s * (weight * t.dist.world / n_loss)).backward()
        total += s.detach().double() * weight
    grad_norm = None
    if recipe.train.max_grad_norm:
        grads = [p for p in t.params.values() if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, recipe.train.max_grad_norm))
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.dist.all_reduce(total)
    return float(total) / n_loss, sum(len(examples[i].input_ids) for i in indices), grad_norm


def step_batches(examples: list[Encoded], indices: list[int], micro_batch: int, recipe: Recipe,
                 pad_id: int, bucket: bool = False) -> list[dict[str, torch.Tensor]]:
    """The step's micro-batches as tensors: padded, or packed (rows of data.max_length tokens, each
    micro-batch's rows back to back in one row); with `bucket`, padded to few lengths."""
    if recipe.train.packing:
        return [collate_packed(rows, bucket)
                for rows in packed_micro_batches(examples, indices, micro_batch, recipe.data.max_length)]
    return [collate(b, pad_id, bucket=bucket) for b in micro_batches(examples, indices, micro_batch)]


def _gradient_sync(module, sync: bool):
    """Reduce gradients over processes on the last micro-batch of a step only."""
    if hasattr(module, "no_sync") and not sync:  # DDP
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def _auto_compile(compiler: AutoCompile, step: int, seconds: float, tokens: int, remaining: int, trackers,
                  bar) -> None:
    record = compiler.after_step(step, seconds, tokens, remaining)
    if record is not None:
        bar.write(f"step {step}: train.compile auto: {record['reason']}")
        if trackers:
            trackers.log(record)


def _validate(t: Trainee, val, recipe: Recipe, plan: TrainPlan, state: LoopState, trackers, bar, best_weights):
    cfg = recipe.train
    result = evaluate_loss(t.loss_model, val, plan.micro_batch, t.pad_id, t.device, t.autocast, t.dist)
    value = result.loss if cfg.early_stopping_metric == "val_loss" else result.accuracy
    better = state.best_value is None or (value < state.best_value if cfg.early_stopping_metric == "val_loss"
                                          else value > state.best_value)
    if better:
        state.best_value, state.best_step, state.evals_without_improvement = value, state.step, 0
        if cfg.early_stopping_patience:
            best_weights = full_state(t.model, list(t.params), t.dist)
    else:
        state.evals_without_improvement += 1
        state.stopped_early = bool(cfg.early_stopping_patience
                                   and state.evals_without_improvement >= cfg.early_stopping_patience)
    if trackers:
        trackers.log({"step": state.step, "val_loss": round(result.loss, 5), "val_accuracy": round(result.accuracy, 5),
                      f"best_{cfg.early_stopping_metric}": round(state.best_value, 5), "best_step": state.best_step})
    if t.dist.main:
        bar.write(f"step {state.step}: val loss {result.loss:.4f}, accuracy {result.accuracy:.3f} "
                  f"(best {cfg.early_stopping_metric} {state.best_value:.4f} at step {state.best_step})")
    return best_weights


class _Window:
    """Running loss and throughput between two metrics lines."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.losses, self.tokens = [], 0

    def restart(self) -> None:
        self.start = self.last = time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens
        self.last = time.perf_counter()

    def tokens_per_s(self) -> float:
        return self.tokens / max(self.last - self.start, 1e-9)

    def record(self, state: LoopState, lr: float, grad_norm: float | None, device: str) -> dict:
        record = {"step": state.step, "epoch": state.epoch, "loss": round(sum(self.losses) / len(self.losses), 5),
                  "lr": lr, "grad_norm": None if grad_norm is None else round(grad_norm, 4),
                  "tokens": state.tokens_seen, "tokens_per_s": round(self.tokens_per_s(), 1),
                  "rss_mb": round(psutil.Process().memory_info().rss / 2**20)}
        if device.startswith("cuda"):
            record["gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        self.__init__()
        return record
