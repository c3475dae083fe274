"""Near-duplicate images, and the leakage check between splits for them: the same interface as
dedup.NearDuplicates (rows added in order, queries by row index), over perceptual hashes.

Candidates are pairs whose 64-bit pHashes differ in at most CANDIDATE_BITS bits, found without comparing
every pair: the hash is cut into CANDIDATE_BITS + 1 bands, and two hashes that close agree exactly on at
least one band (pigeonhole), so grouping the rows by each band's value finds them all. A candidate is a
near duplicate when the two images' 16 x 16 grayscale thumbnails differ by at most `max_difference`
grey levels on average (a re-encoded, resized or lightly edited copy); pHash alone would also pair
images that merely look alike.
"""

import numpy as np

from tuneforge.data.images import StoredImage

CANDIDATE_BITS = 4  # a JPEG re-encode or a resize by half moves pHash by 0-4 bits
_BANDS = [(start, stop) for start, stop in zip(range(0, 64, 13), list(range(13, 64, 13)) + [64])]


class ImageNearDuplicates:
    def __init__(self, max_difference: float):
        self.max_difference = max_difference
        self._hashes: list[int] = []
        self._thumbnails: list[np.ndarray] = []
        self.hashes = self.thumbnails = None

    def add(self, images: list[StoredImage]) -> None:
        self._hashes += [i.phash for i in images]
        self._thumbnails += [i.thumbnail for i in images]

    def finish(self) -> None:
        self.hashes = np.array(self._hashes, dtype=np.uint64)
        self.thumbnails = (np.stack(self._thumbnails).reshape(len(self._thumbnails), -1).astype(np.int16)
                           if self._thumbnails else np.zeros((0, 256), np.int16))
        self._hashes, self._thumbnails = [], []

    def _confirmed(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        close = np.bitwise_count(self.hashes[a] ^ self.hashes[b]) <= CANDIDATE_BITS
        out = np.zeros(len(a), bool)
        for start in range(0, len(a), 65536):
            sa, sb = a[start:start + 65536], b[start:start + 65536]
            out[start:start + 65536] = np.abs(self.thumbnails[sa] - self.thumbnails[sb]).mean(1) <= self.max_difference
        return close & out

    def _candidates(self, rows: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray:
        """Pairs (a, b) of rows sharing a band: a from `rows`, b from `pool` (or from `rows`, b < a)."""
        pairs = []
        for start, stop in _BANDS:
            shift, mask = np.uint64(start), np.uint64((1 << (stop - start)) - 1)
            row_keys = (self.hashes[rows] >> shift) & mask
            if pool is None:
                pairs.append(_same_key_pairs(rows, row_keys))
            else:
                pairs.append(_matching_pairs(rows, row_keys, pool, (self.hashes[pool] >> shift) & mask))
        pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        return np.unique(pairs, axis=0) if len(pairs) else pairs

    def duplicates(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Among `rows` (ascending), those that nearly duplicate an earlier one, and that earlier row;
        the first of each group is kept (a chain a ~ b ~ c keeps a only)."""
        pairs = self._candidates(rows)
        pairs = pairs[self._confirmed(pairs[:, 0], pairs[:, 1])] if len(pairs) else pairs
        first: dict[int, int] = {}
        for later, earlier in sorted(pairs.tolist()):
            first.setdefault(later, first.get(earlier, earlier))
        dupes = np.array(sorted(first), dtype=np.int64)
        return dupes, np.array([first[d] for d in dupes.tolist()], dtype=np.int64)

    def matches(self, queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `queries` that nearly duplicate some row of `pool`, and that pool row."""
        pairs = self._candidates(queries, pool)
        if not len(pairs):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pairs = pairs[self._confirmed(pairs[:, 0], pairs[:, 1])]
        q, index = np.unique(pairs[:, 0], return_index=True)
        return q, pairs[index, 1]


def _same_key_pairs(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Every (later, earlier) pair of rows with equal keys."""
    order = np.argsort(keys, kind="stable")
    rows, keys = rows[order], keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    out = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        group = rows[start:start + size]
        i, j = np.triu_indices(size, 1)
        out.append(np.stack([np.maximum(group[i], group[j]), np.minimum(group[i], group[j])], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def _matching_pairs(queries: np.ndarray, query_keys: np.ndarray, pool: np.ndarray, pool_keys: np.ndarray) -> np.ndarray:
    """Every (query, pool row) pair with equal keys."""
    order = np.argsort(pool_keys, kind="stable")
    sorted_keys, sorted_pool = pool_keys[order], pool[order]
    lo, hi = np.searchsorted(sorted_keys, query_keys, "left"), np.searchsorted(sorted_keys, query_keys, "right")
    counts = hi - lo
    q = np.repeat(queries, counts)
    p = sorted_pool[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])] if counts.sum() else np.zeros(0, np.int64)
    return np.stack([q, p.astype(np.int64)], axis=1)
