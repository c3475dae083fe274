"""The training loop, in plain sight: steps of micro-batches, clipping, the optimizer. What happens
around the steps (validation, early stopping, checkpoints, tracking, unfreezing, auto-compile) is the
callbacks' (train/callbacks.py), called in order."""

import contextlib
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from tuneforge.data.batches import collate, collate_packed, micro_batches, packed_micro_batches, to_device
from tuneforge.methods.gradual_unfreeze import Unfreezer
from tuneforge.recipe import Recipe
from tuneforge.runtime.distributed import Dist, share_batches
from tuneforge.runtime.hardware import DTYPES, autocast, matmul_shapes_cached
from tuneforge.tasks import Task
from tuneforge.tasks.tokens import Encoded
from tuneforge.train.callbacks import Callback, Fit, Step, Window, standard_callbacks
from tuneforge.train.checkpoint import LoopState, positions
from tuneforge.train.compile import AutoCompile
from tuneforge.train.loss import LossModel
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
    task: Task
    unfreezer: Unfreezer | None = None
    compiler: AutoCompile | None = None

    def autocast(self):
        return autocast(self.device, self.precision)

    @property
    def bucket(self) -> bool:
        """Pad micro-batches to few lengths (tasks/tokens.py, bucket_length)."""
        return matmul_shapes_cached(self.device, DTYPES[self.precision])


def fit(t: Trainee, train: list[Encoded], val: list[Encoded], recipe: Recipe, plan: TrainPlan,
        run_dir, state: LoopState, trackers: Trackers | None, best_weights: dict | None = None,
        callbacks: list[Callback] | None = None) -> LoopState:
    """Steps until the plan's last (or until a callback stops the run), calling the callbacks
    (train/callbacks.py; by default standard_callbacks) around each step."""
    cfg = recipe.train
    callbacks = standard_callbacks(t, val) if callbacks is None else callbacks
    t.module.train()
    bar = tqdm(total=plan.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=None if t.dist.main else True)
    run = Fit(t, recipe, plan, run_dir, state, trackers, bar, Window(), best_weights)
    for c in callbacks:
        c.on_fit_start(run)
    done = state.step >= plan.total_steps or state.stopped_early  # a resume of a run killed while saving
    for indices in ([] if done else positions(state, len(train), cfg.global_batch_size, recipe.seed)):
        for c in callbacks:
            c.on_step_start(run)
        started = time.perf_counter()
        loss, tokens, grad_norm = train_step(t, train, indices, plan, recipe)
        seconds = time.perf_counter() - started
        state.step += 1
        state.step_in_epoch += 1
        state.tokens_seen += tokens
        step = Step(loss, tokens, grad_norm, seconds, last=state.step >= plan.total_steps)
        for c in callbacks:
            c.on_step_end(run, step)
        if step.last or state.stopped_early:
            break
    bar.close()
    for c in callbacks:
        c.on_fit_end(run)
    return state


def train_step(t: Trainee, examples: list[Encoded], indices: list[int], plan: TrainPlan,
               recipe: Recipe) -> tuple[float, int, float | None]:
    """One optimizer step over a global batch; the loss is normalised over all of its loss tokens,
    so any micro-batch x accumulation x process split (and packing) gives the same gradient."""
    batches = step_batches(examples, indices, plan.micro_batch, recipe, t.pad_id, t.bucket, t.loss_model.collate)
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
    return float(total) / n_loss, sum(examples[i].length for i in indices), grad_norm


def step_batches(examples: list[Encoded], indices: list[int], micro_batch: int, recipe: Recipe,
                 pad_id: int, bucket: bool = False, collate=collate) -> list[dict[str, torch.Tensor]]:
    """The step's micro-batches as tensors: padded (by the loss model's `collate`: a task with a head
    has its own), or packed (rows of data.max_length tokens, each micro-batch's rows back to back in
    one row); with `bucket`, padded to few lengths."""
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
