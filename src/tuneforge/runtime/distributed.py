"""Several processes (torchrun / accelerate launch): DDP replicates the model, FSDP shards it.

Every process holds all the data and computes the same step plan; each takes every world-th
micro-batch of a step. The loss is normalised by the whole step's loss tokens, so the gradient equals
the single-process one whatever the number of processes (DDP averages, hence the world-size factor).
Rank 0 alone writes the run folder.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tuneforge.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's string on every rank (for instance the run folder it created)."""
        if self.world == 1:
            return text
        box = [text]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed() -> Dist:
    """Join the process group that torchrun / accelerate launch describe in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(torch.cuda.is_available()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return Dist(dist.get_rank(), world, local_rank)


def process_group_backend(cuda: bool) -> str:
    """NCCL for CUDA tensors, and gloo beside it for any collective on CPU tensors (NCCL refuses those)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def device_for(d: Dist) -> str:
    return f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"


def check_batch(global_batch: int, d: Dist) -> None:
    if global_batch % d.world:
        raise UserError(f"train.global_batch_size: {global_batch} does not split evenly over {d.world} processes; "
                        f"use a multiple of {d.world}.")


def share_batches(batches: list, d: Dist) -> list[tuple[object, float]]:
    """This process's micro-batches (every world-th) with weight 1. Every process must run the same
    number of forward/backward passes for DDP / FSDP; one short of that repeats a batch with weight 0."""
    mine = [(b, 1.0) for b in batches[d.rank::d.world]]
    rounds = -(-len(batches) // d.world)
    while len(mine) < rounds:
        mine.append((batches[d.rank % len(batches)], 0.0))
    return mine


def wrap(loss_model: torch.nn.Module, blocks, kind: str, d: Dist, device: str,
         find_unused: bool = False) -> torch.nn.Module:
    """DDP around model + loss, or FSDP2 sharding each transformer block and then the rest.
    `find_unused`: some trainable parameters get no gradient in a step (gradual unfreezing)."""
    if d.world == 1:
        return loss_model
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        return fully_shard(loss_model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.local_rank] if device.startswith("cuda") else None
    return DistributedDataParallel(loss_model, device_ids=ids, find_unused_parameters=find_unused)


def full_state(module: torch.nn.Module, names: list[str], d: Dist) -> dict[str, torch.Tensor]:
    """Full (unsharded) values of the named parameters on every rank; plain tensors without FSDP."""
    from torch.distributed.tensor import DTensor

    state = {}
    params = dict(module.named_parameters())
    for name in names:
        value = params[name].detach()
        state[name] = (value.full_tensor() if isinstance(value, DTensor) else value).cpu().clone().contiguous()
    return state


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full values into (possibly sharded) parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            p = params[name]
            if isinstance(p, DTensor):
                p.copy_(distribute_tensor(value.to(p.device_mesh.device_type), p.device_mesh, p.placements))
            else:
                p.copy_(value)


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
