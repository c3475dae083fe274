"""Deterministic train / val / test split by example id.

Each id is hashed with the seed into [0, 1): the split of an example never depends on the other
rows, so appending rows never moves an existing example to another split. With `stratify_by`, the
rows of each value are ranked by that hash instead and the first test_ratio / val_ratio of them
held out, so every value gets its share exactly (rounded); appending rows then moves at most the
few rows at the boundaries.
"""

import hashlib

import numpy as np

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


def unit_hash(example_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(u: np.ndarray, val_ratio: float, test_ratio: float, strata: np.ndarray | None = None,
                  at_least_one: bool = False) -> np.ndarray:
    """Split codes (TRAIN, VAL, TEST) for rows with unit hashes `u` (and optional stratum codes). With
    `at_least_one`, each stratum puts at least one row in each held-out split whose ratio is above 0
    (classes of a classification task: a class missing from the test split is never measured)."""
    codes = np.full(len(u), TRAIN, dtype=np.int8)
    if strata is None:
        codes[u < test_ratio + val_ratio] = VAL
        codes[u < test_ratio] = TEST
        return codes
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        ranked = rows[np.argsort(u[rows], kind="stable")]
        n_test, n_val = round(len(rows) * test_ratio), round(len(rows) * val_ratio)
        if at_least_one:
            n_test, n_val = max(n_test, test_ratio > 0), max(n_val, val_ratio > 0)
        codes[ranked[:n_test]] = TEST
        codes[ranked[n_test:n_test + n_val]] = VAL
    return codes
