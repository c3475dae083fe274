"""The training loop, in plain sight: steps of micro-batches, clipping, AdamW, validation, early
stopping with restore of the best weights, checkpoints. Bookkeeping lives in small helpers."""

import contextlib
import time
from dataclasses import dataclass

import psutil
import torch
from tqdm import tqdm

from tuneforge.data.batches import collate, epoch_steps, micro_batches
from tuneforge.data.tokenize import Encoded
from tuneforge.recipe import Recipe
from tuneforge.runs.folder import append_metrics
from tuneforge.train.checkpoint import LoopState, load_trainable_state, save_checkpoint, trainable_state
from tuneforge.train.hardware import DTYPES
from tuneforge.train.loss import loss_sum, mean_loss
from tuneforge.train.methods import trainable_parameters
from tuneforge.train.plan import TrainPlan


@dataclass
class Trainee:
    """What the loop works on: the model, its optimizer and schedule, and how to run it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pad_id: int
    device: str
    precision: str

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=DTYPES[self.precision])


def make_optimizer(model, recipe: Recipe, warmup_steps: int, total_steps: int):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    params = trainable_parameters(model).values()
    # Weight decay pulls weight matrices toward zero; biases and norm scales are left alone.
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=recipe.learning_rate())
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, warmup_steps, total_steps, min_lr_rate=recipe.train.min_lr_ratio)
    return optimizer, scheduler


def fit(t: Trainee, train: list[Encoded], val: list[Encoded], recipe: Recipe, plan: TrainPlan,
        run_dir, state: LoopState, best_weights: dict | None = None) -> LoopState:
    cfg = recipe.train
    t.model.train()
    bar = tqdm(total=plan.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    window = _Window()
    for indices in _positions(state, len(train), cfg.global_batch_size, recipe.seed):
        loss, tokens, grad_norm = train_step(t, train, indices, plan.micro_batch, cfg.max_grad_norm)
        state.step += 1
        state.step_in_epoch += 1
        state.tokens_seen += tokens
        window.add(loss, tokens)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{window.tokens_per_s():.0f}", refresh=False)
        last = state.step >= plan.total_steps
        if state.step % cfg.log_every == 0 or last:
            append_metrics(run_dir, window.record(state, t.scheduler.get_last_lr()[0], grad_norm))
        if val and (state.step % cfg.eval_every == 0 or last):
            best_weights, val_loss = _validate(t, val, recipe, plan, state, run_dir, best_weights)
            bar.write(f"step {state.step}: val loss {val_loss:.4f} "
                      f"(best {state.best_val_loss:.4f} at step {state.best_step})")
            window.restart()  # throughput counts training time only
        if state.step % cfg.save_every == 0 or last or state.stopped_early:
            save_checkpoint(run_dir, t.model, t.optimizer, t.scheduler, state, best_weights, cfg.keep_checkpoints)
        if last or state.stopped_early:
            break
    bar.close()
    if best_weights is not None and state.best_step != state.step:
        load_trainable_state(t.model, best_weights)
        print(f"Restored the best weights (step {state.best_step}, val loss {state.best_val_loss:.4f}).")
    return state


def train_step(t: Trainee, examples: list[Encoded], indices: list[int], micro_batch: int,
               max_grad_norm: float | None) -> tuple[float, int, float | None]:
    """One optimizer step over a global batch; the loss is normalised over all of its loss tokens,
    so any micro-batch x accumulation split gives the same gradient."""
    batches = micro_batches(examples, indices, micro_batch)
    n_loss = sum(e.loss_tokens for b in batches for e in b)
    total = 0.0
    for b in batches:
        batch = {k: v.to(t.device) for k, v in collate(b, t.pad_id).items()}
        with t.autocast():
            s, _ = loss_sum(t.model, batch)
        (s / n_loss).backward()
        total += s.item()
    grad_norm = None
    if max_grad_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(t.model).values(), max_grad_norm).item()
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return total / n_loss, sum(len(e.input_ids) for b in batches for e in b), grad_norm


def _positions(state: LoopState, n_train: int, global_batch: int, seed: int):
    """Index lists of the remaining steps, from the state's epoch and position onwards, forever."""
    while True:
        steps = epoch_steps(n_train, global_batch, seed, state.epoch)
        while state.step_in_epoch < len(steps):
            yield steps[state.step_in_epoch]
        state.epoch += 1
        state.step_in_epoch = 0


def _validate(t: Trainee, val, recipe: Recipe, plan: TrainPlan, state: LoopState, run_dir, best_weights):
    loss, _ = mean_loss(t.model, val, plan.micro_batch, t.pad_id, t.device, t.autocast)
    if state.best_val_loss is None or loss < state.best_val_loss:
        state.best_val_loss, state.best_step, state.evals_without_improvement = loss, state.step, 0
        if recipe.train.early_stopping_patience:
            best_weights = trainable_state(t.model)
    else:
        state.evals_without_improvement += 1
        patience = recipe.train.early_stopping_patience
        state.stopped_early = bool(patience and state.evals_without_improvement >= patience)
    append_metrics(run_dir, {"step": state.step, "val_loss": round(loss, 5),
                             "best_val_loss": round(state.best_val_loss, 5)})
    return best_weights, loss


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

    def record(self, state: LoopState, lr: float, grad_norm: float | None) -> dict:
        record = {"step": state.step, "epoch": state.epoch, "loss": round(sum(self.losses) / len(self.losses), 5),
                  "lr": lr, "grad_norm": None if grad_norm is None else round(grad_norm, 4),
                  "tokens": state.tokens_seen, "tokens_per_s": round(self.tokens_per_s(), 1),
                  "rss_mb": round(psutil.Process().memory_info().rss / 2**20)}
        self.__init__()
        return record
