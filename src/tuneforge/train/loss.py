"""Token-level cross-entropy that runs the LM head only where loss falls.

The head of a small model is a large share of its compute (SmolLM2-135M: 576 x 49,152); running it on
the answer tokens only, instead of on every position, avoids the full batch x seq x vocab logits, and
running it a chunk at a time (train/head_loss.py) avoids holding even the answer tokens' logits.
A batch is padded (input_ids, labels, attention_mask) or packed (input_ids, labels, position_ids that
restart per example and no attention mask, so transformers builds a block-diagonal causal mask).
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.data.batches import collate, collate_packed, pack, to_device
from tuneforge.runtime.hardware import shapes_cached_now
from tuneforge.tasks.tokens import IGNORE
from tuneforge.train.head_loss import head_cross_entropy


class LossModel(torch.nn.Module):
    """model + loss as one module, so DDP / FSDP wrappers see the forward pass that backward follows."""

    def __init__(self, model, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    @staticmethod
    def collate(rows: list, pad_id: int, bucket: bool = False) -> dict[str, torch.Tensor]:
        """A padded micro-batch of these rows (a task's own loss model brings its own)."""
        return collate(rows, pad_id, bucket=bucket)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """Sum of next-token cross-entropy over positions whose label is not IGNORE, their count,
        and (in eval mode) how many of them the model ranks first."""
        smoothing = self.label_smoothing if self.training else 0.0
        hidden, targets = answer_hidden(self.model, batch)
        # Accuracy is for validation; in training the argmax over the vocabulary would cost ~1% of a step.
        if hidden is not None:
            head = _base(self.model).get_output_embeddings()
            loss, correct = head_cross_entropy(hidden, head, targets, smoothing, count_correct=not self.training)
            return loss, int(targets.numel()), correct
        logits, targets = answer_logits(self.model, batch)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=smoothing)
        correct = 0 if self.training else int((logits.argmax(-1) == targets).sum())
        return loss, int(targets.numel()), correct


def answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions whose next token carries loss, and those next tokens."""
    hidden, targets = answer_hidden(model, batch)
    if hidden is not None:
        return _base(model).get_output_embeddings()(hidden), targets
    # models that scale or cap logits after the head: let their forward do it
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    logits = logits[:, logits.shape[1] - batch["input_ids"].shape[1]:][:, :-1]
    return logits[batch["labels"][:, 1:] != IGNORE], targets


def answer_hidden(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The decoder's last hidden states at the positions whose next token carries loss (None for a model
    whose logits are more than its head applied to them), and those next tokens."""
    base = _base(model)
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    if not _head_is_plain(base.config):
        return None, labels[mask]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    prompt = _soft_prompt(model, batch["input_ids"].shape[0])
    decoder = base.get_decoder()
    if prompt is not None:  # prompt tuning: the learned vectors go in front of the embedded tokens
        inputs = _with_prompt(decoder, inputs, prompt)
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    hidden = hidden[:, hidden.shape[1] - batch["input_ids"].shape[1]:]
    return hidden[:, :-1][mask], labels[mask]


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _soft_prompt(model, batch_size: int) -> torch.Tensor | None:
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return None
    return model.get_prompt(batch_size=batch_size)


def _with_prompt(decoder, inputs: dict, prompt: torch.Tensor) -> dict:
    embeds = decoder.get_input_embeddings()(inputs.pop("input_ids"))
    inputs["inputs_embeds"] = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
    mask = inputs.get("attention_mask")
    if mask is not None:
        inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], prompt.shape[1]), mask], dim=1)
    return inputs


def _head_is_plain(config) -> bool:
    return not any(getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"))


@dataclass
class ValResult:
    loss: float
    accuracy: float
    tokens: int


@torch.no_grad()
def evaluate_loss(loss_model: LossModel, examples: list, micro_batch: int, pad_id: int, device: str,
                  autocast, d=None) -> ValResult:
    """Token-weighted mean loss and next-token accuracy over examples (exact under padding). With
    several processes (`d`), each runs its share of the micro-batches and the totals are summed."""
    from tuneforge.runtime.distributed import Dist, share_batches

    d = d or Dist()
    was_training = loss_model.training
    loss_model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # on the device, where the collective runs
    ordered = sorted(examples, key=lambda e: e.length)
    batches = [ordered[i:i + micro_batch] for i in range(0, len(ordered), micro_batch)]
    with autocast():
        bucket = shapes_cached_now(loss_model, device)
    for rows, weight in share_batches(batches, d):
        batch = to_device(loss_model.collate(rows, pad_id, bucket=bucket), device)
        with autocast():
            s, n, correct = loss_model(batch)
        totals[0] += weight * s.detach().double()
        totals[1:] += torch.tensor([weight * n, weight * correct], dtype=torch.float64, device=device)
    d.all_reduce(totals)
    loss_model.train(was_training)
    loss, n, correct = totals.tolist()
    return ValResult(loss / n if n else float("nan"), correct / n if n else float("nan"), int(n))


@torch.no_grad()
def example_losses(model, examples: list, device: str, tokens_per_batch: int = 2048, pad_id: int = 0,
                   autocast=contextlib.nullcontext) -> tuple[list[float], list[int]]:
    """Each example's summed next-token loss over its loss tokens and how many there are, in the order
    given (for intervals and paired tests over examples; their totals give evaluate_loss's mean).

    Examples are packed into rows of about `tokens_per_batch` tokens (no padding; each attends to itself
    only, see runtime/attention.py), except for prompt tuning, whose soft prompt goes in front of a whole
    row: there they are padded, as many per batch as fit the same number of tokens.
    """
    was_training = model.training
    model.eval()
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    positions: dict[int, list[int]] = {}  # the same example object may be given twice
    for i, e in enumerate(examples):
        positions.setdefault(id(e), []).append(i)
    packed = _soft_prompt(model, 1) is None
    longest = max((len(e.input_ids) for e in examples), default=0)
    if packed:
        batches = pack(examples, max(tokens_per_batch, longest))
    else:
        ordered = sorted(examples, key=lambda e: len(e.input_ids))
        per_batch = max(1, tokens_per_batch // max(longest, 1))
        batches = [ordered[i:i + per_batch] for i in range(0, len(ordered), per_batch)]
    with autocast():
        bucket = shapes_cached_now(model, device)
    for chosen in batches:
        batch = to_device(collate_packed([chosen], bucket) if packed else collate(chosen, pad_id, bucket=bucket),
                          device)
        with autocast():
            logits, targets = answer_logits(model, batch)
        losses = F.cross_entropy(logits.float(), targets, reduction="none").double()
        where = (batch["labels"][:, 1:] != IGNORE).nonzero()  # row-major, like answer_logits' mask
        if packed:  # the example each target belongs to, from where each example starts in the row
            owner = torch.searchsorted(batch["cu_seq_lens_q"][1:].to(where.device, torch.long), where[:, 1] + 1, right=True)
        else:
            owner = where[:, 0]
        per_example = torch.zeros(len(chosen), dtype=torch.float64, device=losses.device).index_add_(0, owner, losses)
        tokens = torch.bincount(owner, minlength=len(chosen))
        for j, e in enumerate(chosen):
            for i in positions[id(e)]:
                sums[i], counts[i] = float(per_example[j]), int(tokens[j])
    model.train(was_training)
    return sums, counts
