from collections import Counter

import numpy as np

from tuneforge.data.pydocs import build_pydocs
from tuneforge.data.split import SPLITS, TEST, TRAIN, VAL, assign_splits, unit_hash

IDS = [f"row-{i}" for i in range(2000)]


def split(ids, seed=0, val=0.1, test=0.2, strata=None):
    codes = assign_splits(np.array([unit_hash(i, seed) for i in ids]), val, test, strata)
    return {i: SPLITS[c] for i, c in zip(ids, codes)}


def test_split_is_deterministic_and_close_to_ratios():
    a, b = split(IDS), split(list(reversed(IDS)))
    assert a == b
    counts = Counter(a.values())
    assert 150 < counts["val"] < 250 and 330 < counts["test"] < 470


def test_appending_rows_moves_no_existing_example():
    before, after = split(IDS[:1000], seed=3), split(IDS, seed=3)
    assert all(after[i] == name for i, name in before.items())


def test_seed_changes_the_split():
    assert split(IDS, seed=0) != split(IDS, seed=1)


def test_stratified_split_gives_every_value_its_share():
    """Three values (with two, holding out from the other value's rows would give the same counts):
    each value's lowest hashes are its test rows, the next its val rows."""
    strata = np.array([0] * 1500 + [1] * 400 + [2] * 100)  # a rare class
    u = np.array([unit_hash(i, 0) for i in IDS])
    codes = assign_splits(u, 0.1, 0.2, strata)
    for value, n in ((0, 1500), (1, 400), (2, 100)):
        rows = np.flatnonzero(strata == value)
        ranked = rows[np.argsort(u[rows])]
        n_test, n_val = round(n * 0.2), round(n * 0.1)
        assert (codes[ranked[:n_test]] == TEST).all() and (codes[ranked[n_test:n_test + n_val]] == VAL).all()
        assert (codes[ranked[n_test + n_val:]] == TRAIN).all()


def test_pydocs_is_deterministic_and_real():
    first, second = build_pydocs(), build_pydocs()
    assert first == second
    assert len(first) > 1500
    ids = [e["id"] for e in first]
    assert len(ids) == len(set(ids))
    by_id = {e["id"]: e for e in first}
    dumps = by_id["pydocs:json.dumps"]["messages"]
    assert "json.dumps" in dumps[0]["content"] and dumps[1]["content"].startswith("Serialize")
    phrasings = Counter(e["messages"][0]["content"].split("`")[0] for e in first)
    assert len(phrasings) >= 6  # modules, classes, functions, methods, each asked more than one way
    answers = [e["messages"][1]["content"] for e in first]
    assert len(answers) == len(set(answers))  # aliases (os.path / posixpath) are deduplicated
