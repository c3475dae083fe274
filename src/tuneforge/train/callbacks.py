"""What training does around its steps, as callbacks the loop calls in order (train/loop.py, fit):
gradual unfreezing, auto-compile, progress and tracking, validation with early stopping and the restore
of the best weights, checkpoints. Each reads and may change the Fit it is given (a callback stops the
run by setting fit.state.stopped_early); a hyperparameter search adds its own (pruning)."""

import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from tuneforge.recipe import Recipe
from tuneforge.runtime.distributed import full_state, load_full_state
from tuneforge.train.checkpoint import LoopState, save_checkpoint
from tuneforge.train.loss import evaluate_loss
from tuneforge.train.plan import TrainPlan


class Window:
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


@dataclass
class Fit:
    """One call of fit: the trainee (train/loop.py, Trainee), the settings, the state that is
    checkpointed, and what the callbacks share (progress bar, throughput window, best weights)."""

    t: object
    recipe: Recipe
    plan: TrainPlan
    run_dir: Path
    state: LoopState
    trackers: object
    bar: object
    window: Window
    best_weights: dict | None = None


@dataclass
class Step:
    """What the step just taken did (fit.state.step already counts it)."""

    loss: float
    tokens: int
    grad_norm: float | None
    seconds: float
    last: bool  # the plan's final step


class Callback:
    def on_fit_start(self, fit: Fit) -> None:
        pass

    def on_step_start(self, fit: Fit) -> None:
        pass

    def on_step_end(self, fit: Fit, step: Step) -> None:
        pass

    def on_fit_end(self, fit: Fit) -> None:
        pass


class Unfreezing(Callback):
    """gradual_unfreeze: set which blocks learn before each step, and say when that changes."""

    def __init__(self, unfreezer):
        self.unfreezer = unfreezer

    def on_step_start(self, fit: Fit) -> None:
        u = self.unfreezer
        if u.update(fit.state.step):
            fit.bar.write(f"step {fit.state.step}: training the last {u.active} of {len(u.blocks)} blocks")


class AutoCompiling(Callback):
    """train.compile auto: time the eager steps, compile when the rest of the run pays for it (train/compile.py)."""

    def __init__(self, compiler):
        self.compiler = compiler

    def on_step_end(self, fit: Fit, step: Step) -> None:
        record = self.compiler.after_step(fit.state.step, step.seconds, step.tokens,
                                          fit.plan.total_steps - fit.state.step)
        if record is not None:
            fit.bar.write(f"step {fit.state.step}: train.compile auto: {record['reason']}")
            if fit.trackers:
                fit.trackers.log(record)


class Progress(Callback):
    """The progress bar's loss and throughput, and a metrics line every train.log_every steps."""

    def on_step_end(self, fit: Fit, step: Step) -> None:
        fit.window.add(step.loss, step.tokens)
        fit.bar.update(1)
        fit.bar.set_postfix({"loss": f"{step.loss:.3f}", f"{fit.t.task.unit}_s": f"{fit.window.tokens_per_s():.0f}"},
                            refresh=False)
        if fit.trackers and (fit.state.step % fit.recipe.train.log_every == 0 or step.last):
            fit.trackers.log(fit.window.record(fit.state, fit.t.scheduler.get_last_lr()[0], step.grad_norm,
                                               fit.t.device))


class Validation(Callback):
    """Validation at the start and every train.eval_every steps; early stopping on its metric keeps the
    best weights, restored at the end."""

    def __init__(self, val: list):
        self.val = val

    def on_fit_start(self, fit: Fit) -> None:
        if self.val and fit.state.step == 0:  # the starting point: every later validation is compared to it
            self._validate(fit)

    def on_step_end(self, fit: Fit, step: Step) -> None:
        if self.val and (fit.state.step % fit.recipe.train.eval_every == 0 or step.last):
            self._validate(fit)

    def on_fit_end(self, fit: Fit) -> None:
        state = fit.state
        if fit.best_weights is not None and state.best_step != state.step:
            load_full_state(fit.t.model, fit.best_weights)
            if fit.t.dist.main:
                print(f"Restored the best weights (step {state.best_step}, "
                      f"{fit.recipe.train.early_stopping_metric} {state.best_value:.4f}).")

    def _validate(self, fit: Fit) -> None:
        t, cfg, state = fit.t, fit.recipe.train, fit.state
        result = evaluate_loss(t.loss_model, self.val, fit.plan.micro_batch, t.pad_id, t.device, t.autocast, t.dist)
        value = result.loss if cfg.early_stopping_metric == "val_loss" else result.accuracy
        better = state.best_value is None or (value < state.best_value if cfg.early_stopping_metric == "val_loss"
                                              else value > state.best_value)
        if better:
            state.best_value, state.best_step, state.evals_without_improvement = value, state.step, 0
            if cfg.early_stopping_patience:
                fit.best_weights = full_state(t.model, list(t.params), t.dist)
        else:
            state.evals_without_improvement += 1
            state.stopped_early = bool(cfg.early_stopping_patience
                                       and state.evals_without_improvement >= cfg.early_stopping_patience)
        accuracy = t.task.has_accuracy  # regression has none
        if fit.trackers:
            fit.trackers.log({"step": state.step, "val_loss": round(result.loss, 5),
                              **({"val_accuracy": round(result.accuracy, 5)} if accuracy else {}),
                              f"best_{cfg.early_stopping_metric}": round(state.best_value, 5),
                              "best_step": state.best_step})
        if t.dist.main:
            fit.bar.write(f"step {state.step}: val loss {result.loss:.4f}"
                          + (f", accuracy {result.accuracy:.3f}" if accuracy else "")
                          + f" (best {cfg.early_stopping_metric} {state.best_value:.4f} at step {state.best_step})")
        fit.window.restart()  # throughput counts training time only


class Checkpointing(Callback):
    """A checkpoint every train.save_every steps, at the last step and when the run stops early."""

    def on_step_end(self, fit: Fit, step: Step) -> None:
        if fit.state.step % fit.recipe.train.save_every == 0 or step.last or fit.state.stopped_early:
            save_checkpoint(fit.run_dir, fit.t, fit.state, fit.best_weights, fit.recipe.train.keep_checkpoints)


def standard_callbacks(t, val: list) -> list[Callback]:
    """In the order they run: what learns is set before the step; after it the compile decision, the
    metrics line, validation (which may stop the run) and then the checkpoint that records all of it."""
    callbacks: list[Callback] = []
    if t.unfreezer is not None:
        callbacks.append(Unfreezing(t.unfreezer))
    if t.compiler is not None:
        callbacks.append(AutoCompiling(t.compiler))
    return callbacks + [Progress(), Validation(val), Checkpointing()]
