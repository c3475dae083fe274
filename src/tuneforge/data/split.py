"""Deterministic train / val / test split by example id.

Each id is hashed with the seed into [0, 1): the split of an example never depends on the other
rows, so appending rows never moves an existing example to another split.
"""

import hashlib

SPLITS = ("train", "val", "test")


def split_of(example_id: str, seed: int, val_ratio: float, test_ratio: float) -> str:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_ratio:
        return "test"
    if u < test_ratio + val_ratio:
        return "val"
    return "train"


def split_examples(examples: list[dict], seed: int, val_ratio: float, test_ratio: float) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for example in examples:
        splits[split_of(example["id"], seed, val_ratio, test_ratio)].append(example)
    return splits
