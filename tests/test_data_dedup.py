"""Near-duplicate detection finds planted near duplicates and leaves distinct rows alone."""

import random

import numpy as np

from tuneforge.data.dedup import NearDuplicates, exact_key, normalised_text

WORDS = ("printer laptop network invoice password monitor backup account license server database calendar "
         "restart check cable update driver clear cache reset portal ticket install wait status test remove "
         "device again quickly before after morning evening office remote user admin error slow sync lost").split()


def distinct_texts(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(100)) for _ in range(n)]


def shingles(text: str) -> set:
    words = text.split()
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def near_copy(text: str, rng: random.Random) -> str:
    """One or two words changed or dropped: what a re-sent or lightly edited row looks like
    (word 3-gram Jaccard similarity about 0.88-0.94, above the 0.8 threshold)."""
    words = text.split()
    for _ in range(rng.choice((1, 2))):
        if rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        else:
            del words[rng.randrange(len(words))]
    return " ".join(words)


def test_planted_near_duplicates_are_found_and_distinct_rows_kept(tmp_path):
    rng = random.Random(0)
    originals = distinct_texts(2000, rng)
    copies = [near_copy(t, rng) for t in originals[:500]]
    similarity = [len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b)) for a, b in zip(originals, copies)]
    assert min(similarity) > 0.85
    index = NearDuplicates(tmp_path, threshold=0.8, ngram=3)
    for start in range(0, 2500, 700):
        index.add((originals + copies)[start:start + 700])
    index.finish()
    dupes, matched = index.duplicates(np.arange(2500))
    found = set(dupes.tolist())
    recall = len(found & set(range(2000, 2500))) / 500
    false_positive_rate = len(found & set(range(2000))) / 2000
    assert recall >= 0.95, recall
    assert false_positive_rate < 0.01, false_positive_rate
    # Each copy is matched to its own original.
    pairs = dict(zip(dupes.tolist(), matched.tolist()))
    assert sum(pairs.get(2000 + i) == i for i in range(500)) >= 0.95 * 500


def test_matches_finds_held_out_rows_that_repeat_training_rows(tmp_path):
    rng = random.Random(1)
    train = distinct_texts(300, rng)
    held = [near_copy(train[i], rng) for i in range(20)] + distinct_texts(80, rng)
    index = NearDuplicates(tmp_path, threshold=0.8, ngram=3)
    index.add(train + held)
    index.finish()
    leaked, source = index.matches(np.arange(300, 400), np.arange(300))
    assert len(set(leaked.tolist()) & set(range(300, 320))) >= 19
    assert not set(leaked.tolist()) & set(range(320, 400))
    assert all(source[k] == leaked[k] - 300 for k in range(len(leaked)))


def test_exact_key_ignores_case_and_spacing():
    a = {"messages": [{"role": "user", "content": "Reset  my Password"}, {"role": "assistant", "content": "Done."}]}
    b = {"messages": [{"role": "user", "content": "reset my password"}, {"role": "assistant", "content": "done.\n"}]}
    c = {"messages": [{"role": "user", "content": "reset my password"}, {"role": "assistant", "content": "No."}]}
    assert exact_key(normalised_text(a)) == exact_key(normalised_text(b)) != exact_key(normalised_text(c))
