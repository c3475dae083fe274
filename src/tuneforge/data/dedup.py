"""Exact and near-duplicate detection, and the leakage check between splits.

Exact: a 64-bit hash of the example's normalised text (case-folded, whitespace collapsed).
Near: datasketch MinHash signatures of word n-grams (hashed with CRC32: deterministic, and 2x faster
than datasketch's default SHA-1 here); candidate pairs come from LSH bands with the
(bands, rows) that datasketch's MinHashLSH picks for the threshold, and each candidate pair is
confirmed by its estimated Jaccard similarity.

Why the banding is done here rather than with datasketch's MinHashLSH index: that index keeps a
Python set per bucket, ~400 bytes per row per band (~4 GB for a million rows with 9 bands). Here
the band keys are one uint64 matrix (72 MB for a million rows) grouped by sorting, and the
signatures wait in a file on disk until a candidate pair needs them.
"""

import hashlib
import re
import zlib
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def normalised_text(example: dict) -> str:
    if "text" in example:  # a label is not part of it: the same text with two labels is a duplicate
        parts = [example["text"], example.get("text_pair", "")]
    else:
        parts = [f"{m['role']}: {m['content']}" for m in example["messages"]]
    return _SPACE.sub(" ", "\n".join(parts).casefold()).strip()


def exact_key(normalised: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=8).digest(), "little")


class NearDuplicates:
    """Signatures for rows added in order (row i = i-th added); queries by row index."""

    def __init__(self, folder: Path, threshold: float, ngram: int, num_perm: int = 128, seed: int = 1):
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # only for its optimal (bands, rows)
        self.bands, self.rows = lsh.b, lsh.r
        self.threshold, self.ngram, self.num_perm, self.seed = threshold, ngram, num_perm, seed
        self.path = folder / "minhash.u32"
        self._file = self.path.open("wb")
        self._keys: list[np.ndarray] = []
        # Random odd multipliers: a band's key is a universal hash of its `rows` MinHash values.
        self._mix = np.random.default_rng(seed).integers(1, 2**63, size=self.rows, dtype=np.uint64) * 2 + 1
        self.keys = self.signatures = None

    def add(self, texts: list[str]) -> None:
        if not texts:
            return
        shingles = [self._shingles(t) for t in texts]
        minhashes = MinHash.bulk(shingles, num_perm=self.num_perm, seed=self.seed, hashfunc=zlib.crc32)
        hashes = np.stack([m.hashvalues for m in minhashes])
        hashes = hashes.astype(np.uint32)
        self._file.write(hashes.tobytes())
        bands = hashes[:, : self.bands * self.rows].reshape(len(texts), self.bands, self.rows).astype(np.uint64)
        self._keys.append((bands * self._mix).sum(axis=2, dtype=np.uint64))

    def _shingles(self, text: str) -> list[bytes]:
        words = _WORD.findall(text) or [text]
        n = min(self.ngram, len(words))
        return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]

    def finish(self) -> None:
        self._file.close()
        self.keys = np.concatenate(self._keys) if self._keys else np.zeros((0, self.bands), np.uint64)
        self._keys = []
        count = len(self.keys)
        self.signatures = (np.memmap(self.path, dtype=np.uint32, mode="r", shape=(count, self.num_perm))
                           if count else np.zeros((0, self.num_perm), np.uint32))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Estimated Jaccard similarity of rows a[k] and b[k], in chunks to bound memory."""
        out = np.empty(len(a), np.float32)
        for start in range(0, len(a), 65536):
            sa, sb = a[start:start + 65536], b[start:start + 65536]
            out[start:start + 65536] = (self.signatures[sa] == self.signatures[sb]).mean(axis=1)
        return out

    def duplicates(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Among `rows` (ascending indices), those that nearly duplicate an earlier one, and for each
        the earlier row it was matched to. The first row of each group of near duplicates is kept."""
        if not len(rows):  # every row was removed before (too short / long, exact duplicates)
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        firsts, others = [], []
        for band in range(self.bands):
            keys = self.keys[rows, band]
            order = np.argsort(keys, kind="stable")  # stable: within a bucket, ascending row index
            starts = np.r_[True, keys[order][1:] != keys[order][:-1]]
            first = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
            firsts.append(rows[first[~starts]])
            others.append(rows[order[~starts]])
        first, other = np.concatenate(firsts), np.concatenate(others)
        pairs = np.unique(np.stack([other, first], axis=1), axis=0) if len(first) else np.zeros((0, 2), np.int64)
        pairs = pairs[self.similarity(pairs[:, 0], pairs[:, 1]) >= self.threshold]
        # Union-find over the confirmed pairs; every member but the smallest index is a duplicate.
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while x != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        for a, b in pairs.tolist():
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        dupes = np.array(sorted(x for x in parent if find(x) != x), dtype=np.int64)
        return dupes, np.array([find(int(x)) for x in dupes], dtype=np.int64)

    def matches(self, queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `queries` that nearly duplicate some row of `pool`, and that pool row."""
        found_q, found_p = [], []
        for band in range(self.bands):
            pool_keys = self.keys[pool, band]
            order = np.argsort(pool_keys)
            sorted_keys = pool_keys[order]
            query_keys = self.keys[queries, band]
            pos = np.minimum(np.searchsorted(sorted_keys, query_keys), max(len(pool) - 1, 0))
            hit = (sorted_keys[pos] == query_keys) if len(pool) else np.zeros(len(queries), bool)
            found_q.append(queries[hit])
            found_p.append(pool[order[pos[hit]]])
        q, p = np.concatenate(found_q), np.concatenate(found_p)
        confirmed = self.similarity(q, p) >= self.threshold
        q, index = np.unique(q[confirmed], return_index=True)
        return q, p[confirmed][index]
