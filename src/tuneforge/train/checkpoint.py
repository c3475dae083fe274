"""Checkpoints: everything needed to continue a run exactly, written atomically.

checkpoints/step-N/ holds the trainable weights, the best weights so far, optimizer, scheduler, RNG
states (one file per process) and the loop state (step, epoch, position in the epoch, best validation
value). A folder is written under a temporary name and renamed, so a crash never leaves a half-written
checkpoint behind; the newest K and the best one are kept.
"""

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.data.batches import epoch_steps
from tuneforge.errors import UserError
from tuneforge.runtime.distributed import full_state, load_full_state


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


def positions(state: LoopState, n_train: int, global_batch: int, seed: int):
    """Example indices of the remaining steps, from the state's epoch and position onwards, forever."""
    while True:
        steps = epoch_steps(n_train, global_batch, seed, state.epoch)
        while state.step_in_epoch < len(steps):
            yield steps[state.step_in_epoch]
        state.epoch += 1
        state.step_in_epoch = 0


def save_checkpoint(run_dir: Path, t, state: LoopState, best_weights: dict[str, torch.Tensor] | None,
                    keep: int) -> Path | None:
    """Every process takes part (gathering sharded weights); rank 0 writes the model state."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step-{state.step}", root / f".tmp-step-{state.step}"
    weights = full_state(t.model, list(t.params), t.dist)
    if t.dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(weights, tmp / "trainable.safetensors")
        if best_weights is not None:
            save_file(best_weights, tmp / "best.safetensors")
        if not _sharded(t):
            torch.save(t.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(t.scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1) + "\n")
        shutil.copy(run_dir / "recipe.yaml", tmp / "recipe.yaml")  # a resume checks the recipe is unchanged
    t.dist.barrier()
    torch.save(_rng_state(), tmp / f"rng-{t.dist.rank}.pt")
    if _sharded(t):  # FSDP: each process saves the optimizer state of its own shard
        torch.save(_local(t.optimizer.state_dict()), tmp / f"optimizer-{t.dist.rank}.pt")
    t.dist.barrier()
    if t.dist.main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            if old.name != f"step-{state.best_step}":
                shutil.rmtree(old)
    t.dist.barrier()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(path: Path, t) -> tuple[LoopState, dict | None]:
    load_full_state(t.model, load_file(path / "trainable.safetensors"))
    if _sharded(t):
        shard = path / f"optimizer-{t.dist.rank}.pt"
        if not shard.is_file():
            raise UserError(f"{path}: written by a different number of FSDP processes (no {shard.name}); "
                            "resume with the number of processes that started the run.")
        t.optimizer.load_state_dict(_sharded_like(torch.load(shard, weights_only=False), t.optimizer))
    else:
        t.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    t.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{t.dist.rank}.pt"
    rng = torch.load(rng_file if rng_file.is_file() else path / "rng-0.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best = path / "best.safetensors"
    state = LoopState(**json.loads((path / "state.json").read_text()))
    return state, (load_file(best) if best.is_file() else None)


def _local(tree):
    """Optimizer state with each sharded tensor replaced by this process's shard."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, dict):
        return {k: _local(v) for k, v in tree.items()}
    return tree.to_local() if isinstance(tree, DTensor) else tree


def _sharded_like(state: dict, optimizer) -> dict:
    """Saved shards back into DTensors laid out like the parameters they belong to."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in state["state"].items():
        p = params[index]
        if isinstance(p, DTensor):
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.shape == p.to_local().shape and value.ndim:
                    values[key] = DTensor.from_local(value, p.device_mesh, p.placements, shape=p.shape,
                                                     stride=p.stride())
    return state


def _sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in t.params.values())


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
