"""Encoded examples -> the optimizer steps of an epoch -> padded or packed micro-batches."""

import torch

from tuneforge.tasks.tokens import IGNORE, Encoded, bucket_length


def epoch_steps(n_examples: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each optimizer step in one epoch: a seeded shuffle cut into global batches.

    The last, incomplete batch is dropped so every step sees the same number of examples.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    return [order[i:i + global_batch] for i in range(0, n_examples - global_batch + 1, global_batch)]


def micro_batches(examples: list[Encoded], indices: list[int], micro_batch: int) -> list[list[Encoded]]:
    """Split one step's examples into micro-batches of similar length (less padding).

    Sorting within a step changes only how the step is cut, not which examples it holds; the loss is
    normalised over the whole step, so the gradient is the same as with any other cut.
    """
    chosen = sorted((examples[i] for i in indices), key=lambda e: e.length)
    return [chosen[i:i + micro_batch] for i in range(0, len(chosen), micro_batch)]


def pack(examples: list[Encoded], row_length: int) -> list[list[Encoded]]:
    """Best-fit decreasing: longest example first, each into the fullest row it still fits in."""
    rows: list[list[Encoded]] = []
    free: list[int] = []
    for e in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        n = len(e.input_ids)
        fits = [i for i, space in enumerate(free) if space >= n]
        if fits:
            best = min(fits, key=free.__getitem__)
            rows[best].append(e)
            free[best] -= n
        else:
            rows.append([e])
            free.append(row_length - n)
    return rows


def packed_micro_batches(examples: list[Encoded], indices: list[int], rows_per_batch: int,
                         row_length: int) -> list[list[list[Encoded]]]:
    """One step's examples packed into rows, the rows cut into micro-batches of similar fill."""
    rows = sorted(pack([examples[i] for i in indices], row_length), key=lambda r: sum(len(e.input_ids) for e in r))
    return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def collate_packed(rows: list[list[Encoded]], bucket: bool = False) -> dict:
    """A micro-batch of packed rows as one row of examples back to back, with no padding and no mask.

    position_ids restart at 0 for each example and `cu_seq_lens_q/k` give where each starts (the
    keywords of FlashAttention-2's varlen kernel; runtime/attention.py uses them to run one causal
    attention per example), so examples never see each other. The first label of each example is
    IGNORE: the position before it belongs to the previous example, which must not learn to predict it.
    With `bucket`, the row is padded to bucket_length: the padding joins the last example after all of
    its tokens, so causal attention hides it from every real token, and carries no loss.
    """
    examples = [e for row in rows for e in row]
    lengths = [len(e.input_ids) for e in examples]
    tail = bucket_length(sum(lengths)) - sum(lengths) if bucket else 0
    lengths[-1] += tail
    labels = [[IGNORE] + e.labels[1:] for e in examples] + [[IGNORE] * tail]
    starts = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"input_ids": torch.tensor([[t for e in examples for t in e.input_ids] + [0] * tail]),
            "labels": torch.tensor([[t for row in labels for t in row]]),
            "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
            "cu_seq_lens_q": starts, "cu_seq_lens_k": starts,
            "max_length_q": max(lengths), "max_length_k": max(lengths)}


def collate(batch: list[Encoded], pad_id: int, left_pad: bool = False,
            bucket: bool = False) -> dict[str, torch.Tensor]:
    """Padded rows with an attention mask; with `bucket`, as wide as bucket_length of the longest."""
    width = max(len(e.input_ids) for e in batch)
    width = bucket_length(width) if bucket else width
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        cols = slice(width - n, width) if left_pad else slice(0, n)
        input_ids[row, cols] = torch.tensor(e.input_ids)
        labels[row, cols] = torch.tensor(e.labels)
        attention_mask[row, cols] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
