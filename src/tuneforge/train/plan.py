"""Turn the user's intent (global batch, epochs) into mechanics (micro-batch, accumulation, steps),
using a memory estimate made before the training loop allocates anything."""

from dataclasses import dataclass

import psutil
import torch

# Bytes kept for backward per token, per layer, per unit of hidden size (fp32, SDPA attention): the
# inputs of the norms, q/k/v/o projections and the MLP (whose intermediate is ~2.7x hidden).
_ACTIVATION_VALUES_PER_TOKEN_LAYER_HIDDEN = 18
# Use at most this share of the memory that is free when training starts.
_MEMORY_SHARE = 0.6


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass
class TrainPlan:
    micro_batch: int
    accumulation: int
    total_steps: int
    warmup_steps: int
    memory: MemoryEstimate
    available: int


def estimate_memory(total_params: int, trainable_params: int, layers: int, hidden: int,
                    tokens_per_micro_batch: int, bytes_per_value: int = 4) -> MemoryEstimate:
    return MemoryEstimate(
        weights=total_params * bytes_per_value,
        gradients=trainable_params * 4,
        optimizer=trainable_params * 8,  # AdamW: two fp32 moments
        activations=tokens_per_micro_batch * layers * hidden * _ACTIVATION_VALUES_PER_TOKEN_LAYER_HIDDEN * bytes_per_value,
    )


def available_memory(device: str) -> int:
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return free
    return psutil.virtual_memory().available


def make_plan(*, global_batch: int, micro_batch: int | None, n_train: int, max_steps: int | None,
              epochs: float, warmup_ratio: float, longest_example: int, total_params: int,
              trainable_params: int, layers: int, hidden: int, bytes_per_value: int, device: str) -> TrainPlan:
    available = available_memory(device)

    def estimate(mb: int) -> MemoryEstimate:
        return estimate_memory(total_params, trainable_params, layers, hidden, mb * longest_example, bytes_per_value)

    if micro_batch is None:
        # The largest divisor of the global batch whose estimate fits; 1 if none does.
        fitting = [d for d in range(1, global_batch + 1)
                   if global_batch % d == 0 and estimate(d).total <= available * _MEMORY_SHARE]
        micro_batch = max(fitting, default=1)
    micro_batch = min(micro_batch, global_batch)
    accumulation = -(-global_batch // micro_batch)
    steps_per_epoch = max(1, n_train // global_batch)
    total = max_steps or max(1, round(steps_per_epoch * epochs))
    return TrainPlan(micro_batch, accumulation, total, round(total * warmup_ratio), estimate(micro_batch), available)


def format_plan(plan: TrainPlan, total_params: int, trainable_params: int) -> str:
    gib = 1024**3
    m = plan.memory
    rows = [
        ("parameters", f"{total_params / 1e6:,.1f} M total, {trainable_params / 1e6:,.2f} M trainable "
                       f"({100 * trainable_params / total_params:.2f}%)"),
        ("memory estimate", f"{m.total / gib:.2f} GiB = weights {m.weights / gib:.2f} + gradients "
                            f"{m.gradients / gib:.2f} + optimizer {m.optimizer / gib:.2f} + activations "
                            f"{m.activations / gib:.2f}  (available {plan.available / gib:.1f} GiB)"),
        ("batch", f"micro-batch {plan.micro_batch} x accumulation {plan.accumulation}"),
        ("steps", f"{plan.total_steps} optimizer steps, {plan.warmup_steps} warm-up"),
    ]
    return "\n".join(f"  {k:<16} {v}" for k, v in rows)
