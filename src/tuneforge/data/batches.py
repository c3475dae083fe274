"""Encoded examples -> the optimizer steps of an epoch -> padded micro-batches."""

import torch

from tuneforge.data.tokenize import IGNORE, Encoded


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
    chosen = sorted((examples[i] for i in indices), key=lambda e: len(e.input_ids))
    return [chosen[i:i + micro_batch] for i in range(0, len(chosen), micro_batch)]


def collate(batch: list[Encoded], pad_id: int, left_pad: bool = False) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
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
