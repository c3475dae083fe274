"""Checkpoints: everything needed to continue a run exactly, written atomically.

checkpoints/step-N/ holds the trainable weights, optimizer, scheduler, RNG states and the loop state
(step, epoch, position in the epoch, best validation loss). A folder is written under a temporary
name and renamed, so a crash never leaves a half-written checkpoint behind.
"""

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.train.methods import trainable_parameters


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().contiguous() for name, p in trainable_parameters(model).items()}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = trainable_parameters(model)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: LoopState,
                    best_weights: dict[str, torch.Tensor] | None, keep: int) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    if best_weights is not None:
        save_file(best_weights, tmp / "best.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[LoopState, dict | None]:
    load_trainable_state(model, load_file(path / "trainable.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best = path / "best.safetensors"
    state = LoopState(**json.loads((path / "state.json").read_text()))
    return state, (load_file(best) if best.is_file() else None)
