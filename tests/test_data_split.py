from collections import Counter

from tuneforge.data.pydocs import build_pydocs
from tuneforge.data.split import split_examples

IDS = [{"id": f"row-{i}"} for i in range(2000)]


def test_split_is_deterministic_and_close_to_ratios():
    a = split_examples(IDS, seed=0, val_ratio=0.1, test_ratio=0.2)
    b = split_examples(list(reversed(IDS)), seed=0, val_ratio=0.1, test_ratio=0.2)
    assert {k: sorted(e["id"] for e in v) for k, v in a.items()} == {k: sorted(e["id"] for e in v) for k, v in b.items()}
    assert 150 < len(a["val"]) < 250 and 330 < len(a["test"]) < 470


def test_appending_rows_moves_no_existing_example():
    before = split_examples(IDS[:1000], seed=3, val_ratio=0.1, test_ratio=0.1)
    after = split_examples(IDS, seed=3, val_ratio=0.1, test_ratio=0.1)
    where_after = {e["id"]: name for name, rows in after.items() for e in rows}
    assert all(where_after[e["id"]] == name for name, rows in before.items() for e in rows)


def test_seed_changes_the_split():
    a = split_examples(IDS, seed=0, val_ratio=0.1, test_ratio=0.1)
    b = split_examples(IDS, seed=1, val_ratio=0.1, test_ratio=0.1)
    assert [e["id"] for e in a["test"]] != [e["id"] for e in b["test"]]


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
