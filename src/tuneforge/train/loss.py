"""Token-level cross-entropy that runs the LM head only where loss falls.

The head of a small model is a large share of its compute (SmolLM2-135M: 576 x 49,152); running it on
the answer tokens only, instead of on every position, avoids the full batch x seq x vocab logits.
"""

import torch
import torch.nn.functional as F

from tuneforge.data.batches import collate
from tuneforge.data.tokenize import IGNORE


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over positions whose label is not IGNORE, and their count."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    targets = labels[mask]
    if _head_is_plain(base.config):
        hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    use_cache=False).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][mask])
    else:  # models that scale or cap logits after the head: let their forward do it
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits[:, :-1][mask]
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())


def _head_is_plain(config) -> bool:
    return not any(getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"))


@torch.no_grad()
def mean_loss(model, examples: list, micro_batch: int, pad_id: int, device: str, autocast) -> tuple[float, int]:
    """Token-weighted mean loss over examples (exact under padding), and the number of loss tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    for i in range(0, len(ordered), micro_batch):
        batch = {k: v.to(device) for k, v in collate(ordered[i:i + micro_batch], pad_id).items()}
        with autocast():
            s, n = loss_sum(model, batch)
        total += s.item()
        count += n
    model.train(was_training)
    return (total / count if count else float("nan")), count
