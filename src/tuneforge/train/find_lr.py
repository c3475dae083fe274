"""`tuneforge train RECIPE --find-lr`: the learning-rate range test (Smith, 2015).

Trains from the recipe's starting point while the learning rate grows exponentially from `low` to
`high`, records the smoothed loss at each step, stops once the loss diverges, and suggests a tenth of
the rate at the lowest smoothed loss. Writes lr_find.json and lr_find.png to a folder under runs/.
"""

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from tuneforge.recipe import Recipe
from tuneforge.run_folder import create_run_dir
from tuneforge.train.checkpoint import LoopState, positions
from tuneforge.train.loop import train_step
from tuneforge.train.run import load_trainee, plan_training

_SMOOTHING = 0.9  # exponential moving average of the loss, bias-corrected
_DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum


def find_lr(recipe: Recipe, runs_dir: Path, steps: int = 200, low: float = 1e-6, high: float = 1.0) -> Path:
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"max_steps": steps, "warmup_ratio": 0.0, "schedule": "constant"})})
    setup = plan_training(recipe)
    t = load_trainee(setup, lr=low)
    growth = (high / low) ** (1 / max(1, steps - 1))
    t.scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda step: growth ** step)
    train = setup.data.encoded["train"]
    records, average, best = [], 0.0, math.inf
    bar = tqdm(total=steps, desc="find-lr", unit="step", dynamic_ncols=True, disable=None)
    state = LoopState()
    for i, indices in zip(range(steps), positions(state, len(train), recipe.train.global_batch_size, recipe.seed)):
        lr = t.scheduler.get_last_lr()[0]
        if t.unfreezer is not None:
            t.unfreezer.update(i)
        loss, _, _ = train_step(t, train, indices, setup.plan, recipe)
        state.step_in_epoch += 1
        average = _SMOOTHING * average + (1 - _SMOOTHING) * loss
        smoothed = average / (1 - _SMOOTHING ** (i + 1))
        records.append({"step": i, "lr": lr, "loss": loss, "smoothed": smoothed})
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.1e}", loss=f"{smoothed:.3f}", refresh=False)
        best = min(best, smoothed)
        if not math.isfinite(loss) or smoothed > _DIVERGED * best:
            break
    bar.close()
    suggestion = suggest(records)
    out = create_run_dir(runs_dir, f"{recipe.name}-find-lr")
    (out / "lr_find.json").write_text(json.dumps({"suggested_lr": suggestion, "method": recipe.method,
                                                  "records": records}, indent=1) + "\n")
    _plot(records, suggestion, out / "lr_find.png")
    print(f"Suggested learning rate: {suggestion:.2e} (a tenth of the rate at the lowest smoothed loss)\n"
          f"Plot: {out / 'lr_find.png'}\nUse it: --set train.learning_rate={suggestion:.2e}")
    return out


def suggest(records: list[dict]) -> float:
    """A tenth of the learning rate at the lowest smoothed loss: the classic rule, and robust where
    per-batch losses are noisy (the steepest-slope rule then picks noise in the first steps)."""
    best = min(records, key=lambda r: r["smoothed"])
    return max(records[0]["lr"], best["lr"] / 10)


def _plot(records: list[dict], suggestion: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["lr"] for r in records], [r["loss"] for r in records], alpha=0.3, label="loss")
    ax.plot([r["lr"] for r in records], [r["smoothed"] for r in records], label="smoothed loss")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.set_xscale("log")
    low = min(r["loss"] for r in records)
    ax.set_ylim(low - 0.1 * abs(low), 1.3 * records[0]["smoothed"])  # the divergence would flatten the rest
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
