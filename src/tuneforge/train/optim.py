"""Optimizers (AdamW, SGD with momentum, Adafactor) and learning-rate schedules (warm-up, then cosine,
linear or constant), built over the parameters a method trains."""

import math

import torch

from tuneforge.recipe import Recipe


def make_optimizer(params: dict[str, torch.nn.Parameter], recipe: Recipe, lr: float | None = None):
    """Weight decay pulls weight matrices toward zero; biases, norm scales and soft prompts are left alone."""
    cfg = recipe.train
    decay = [p for name, p in params.items() if p.ndim >= 2 and "prompt_encoder" not in name]
    rest = [p for name, p in params.items() if not (p.ndim >= 2 and "prompt_encoder" not in name)]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": rest, "weight_decay": 0.0}) if g["params"]]
    lr = lr or recipe.learning_rate()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, foreach=True)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr, foreach=True)
    # The fused kernel updates every tensor in one pass (CPU and GPU); foreach where it is missing.
    fused = _fused_adamw_supported(groups)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None, foreach=None if fused else True)


def make_schedule(optimizer, recipe: Recipe, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0, then the recipe's shape down to min_lr_ratio of the peak (the cosine matches
    transformers' get_cosine_with_min_lr_schedule_with_warmup)."""
    cfg = recipe.train

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if cfg.schedule == "constant":
            return 1.0
        shape = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fused_adamw_supported(groups: list[dict]) -> bool:
    probe = torch.zeros(1, requires_grad=True, device=groups[0]["params"][0].device)
    try:
        torch.optim.AdamW([probe], fused=True)
        return all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for g in groups for p in g["params"])
    except (RuntimeError, ValueError):
        return False
