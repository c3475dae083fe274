"""The preparation pipeline: source rows -> valid, clean examples -> duplicates removed -> splits ->
leakage removed -> subset, oversampling, synthetic rows -> train/val/test.jsonl and a manifest.

It streams in three passes so a million rows fit in well under 2 GB:
1. read every source row by row; validate, clean, hash; in batches count tokens and compute MinHash
   signatures. Valid examples go to a spill file, per-row facts to compact arrays;
2. decide on the arrays alone: near duplicates, splits, leakage, subset, oversampling;
3. copy the spill file into the split files.
"""

import itertools
import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tuneforge.data.clean import Cleaner
from tuneforge.data.dedup import NearDuplicates, exact_key, normalised_text
from tuneforge.data.formats import RowReader, content_id
from tuneforge.data.image_dedup import ImageNearDuplicates
from tuneforge.data.images import StoredImage, image_bytes, store_image
from tuneforge.data.sources import read_source
from tuneforge.data.split import SPLITS, TRAIN, assign_splits, unit_hash
from tuneforge.data.validate import check_example
from tuneforge.errors import RowError, UserError
from tuneforge.json_text import MAX_NESTING, nested_deeper_than
from tuneforge.recipe import Recipe
from tuneforge.tasks import get_task

# Why a valid row did not reach the split files (KEPT: it did).
KEPT, TOO_SHORT, TOO_LONG, EXACT, NEAR, LEAK_EXACT, LEAK_NEAR, SUBSET = range(8)
REMOVED = {TOO_SHORT: "too_short", TOO_LONG: "too_long", EXACT: "exact_duplicates", NEAR: "near_duplicates",
           LEAK_EXACT: "leakage_exact", LEAK_NEAR: "leakage_near", SUBSET: "subset_removed"}
_BATCH = 2048


@dataclass
class Pending:
    example: dict
    source: int
    signature: object  # what near duplicates are found by: the normalised text, or the StoredImage
    key: int
    where: str


class Rows:
    """Pass 1's output: the spill file of valid examples and, per example, one entry in each array."""

    def __init__(self, work: Path, recipe: Recipe, tokenizer):
        c = recipe.data.clean
        self.work, self.recipe, self.tokenizer, self.clean = work, recipe, tokenizer, c
        self.given_split = [-1 if s.split is None else SPLITS.index(s.split) for s in recipe.data.sources]
        self._spill = (work / "rows.jsonl").open("wb")
        self.ids: list[str] = []
        self.offsets, self.exact, self.u = array("Q"), array("Q"), array("d")
        self.status, self.given, self.source, self.tokens = array("b"), array("b"), array("h"), array("i")
        self.strata: dict[str, int] = {}
        self.stratum = array("i")
        self.first_of_stratum: list[str] = []  # where each stratum's first row was read (file:line)
        self._seen: set[int] = set()
        self.images: list[tuple[int, int, str]] = []  # width, height, mode of each image row
        near = c.dedup_near or c.leakage_check
        if get_task(recipe.task).images:
            (work / "images").mkdir(exist_ok=True)
            self.near = ImageNearDuplicates(recipe.data.image.near_difference) if near else None
        else:
            self.near = NearDuplicates(work, c.near_threshold, c.near_ngram) if near else None

    def add(self, batch: list[Pending]) -> None:
        lengths = get_task(self.recipe.task).token_lengths([p.example for p in batch], self.tokenizer)
        for p, length in zip(batch, lengths):
            self.status.append(self._status(length, p.key))
            self.offsets.append(self._spill.tell())
            self._spill.write(json.dumps(p.example, ensure_ascii=False).encode() + b"\n")
            self.ids.append(p.example["id"])
            self.exact.append(p.key)
            self.u.append(unit_hash(p.example["id"], self.recipe.seed))
            self.given.append(self.given_split[p.source])
            self.source.append(p.source)
            self.tokens.append(length)
            code = self.strata.setdefault(p.example.get("stratum", ""), len(self.strata))
            if code == len(self.first_of_stratum):
                self.first_of_stratum.append(p.where)
            self.stratum.append(code)
            if isinstance(p.signature, StoredImage):
                self.images.append((p.signature.width, p.signature.height, p.signature.mode))
        if self.near:
            self.near.add([p.signature for p in batch])

    def _status(self, length: int, key: int) -> int:
        c = self.clean
        if c.min_tokens and length < c.min_tokens:
            return TOO_SHORT
        if c.max_tokens and length > c.max_tokens:
            return TOO_LONG
        if c.dedup_exact:
            if key in self._seen:
                return EXACT
            self._seen.add(key)
        return KEPT

    def finish(self) -> None:
        self._spill.close()
        self._seen = set()
        if self.near:
            self.near.finish()

    def read(self, indices) -> list[dict]:
        with (self.work / "rows.jsonl").open("rb") as f:
            out = []
            for i in indices:
                f.seek(self.offsets[i])
                out.append(json.loads(f.readline()))
            return out


@dataclass
class ReadReport:
    sources: list[dict] = field(default_factory=list)
    read: int = 0
    invalid: int = 0
    cleaned: int = 0
    reasons: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)


def read_all(recipe: Recipe, tokenizer, fingerprints: list[dict], work: Path,
             rejects_path: Path) -> tuple[Rows, ReadReport]:
    """Pass 1: every row of every source read, validated, cleaned, measured and hashed."""
    d = recipe.data
    rows, cleaner, report = Rows(work, recipe, tokenizer), Cleaner(d.clean), ReadReport()
    task = get_task(recipe.task)
    user_ids: dict[str, int] = {}
    with rejects_path.open("w", encoding="utf-8") as rejects:
        for index, spec in enumerate(d.sources):
            info = dict(fingerprints[index])
            reader = RowReader(spec, d.system_prompt, d.stratify_by)
            formats: Counter = Counter()
            batch: list[Pending] = []
            read = invalid = 0
            total = info.pop("rows_estimate", None)
            total = min(total, spec.max_rows) if total and spec.max_rows else total or spec.max_rows
            bar = tqdm(itertools.islice(read_source(spec, d.max_row_chars), spec.max_rows),
                       desc=f"read {Path(spec.path).name}", unit=" rows", total=total, mininterval=1.0, smoothing=0.1,
                       disable=None)
            for where, row in bar:
                read += 1
                try:
                    pending, fmt, changed = _validated(row, where, reader, cleaner, recipe, user_ids, index, task,
                                                       work / "images")
                except RowError as e:
                    if not d.skip_invalid:
                        raise UserError(f"{where}: {e} Fix the row, or set data.skip_invalid: true to skip "
                                        "invalid rows (they are counted and written to rejects.jsonl).") from None
                    invalid += 1
                    report.reasons[_reason(e)] += 1
                    rejects.write(json.dumps({"where": where, "field": e.field, "reason": str(e),
                                              "row": _excerpt(row)}, ensure_ascii=False) + "\n")
                    continue
                formats[fmt] += 1
                report.cleaned += changed
                batch.append(pending)
                if len(batch) == _BATCH:
                    rows.add(batch)
                    batch = []
            if batch:
                rows.add(batch)
            bar.close()
            if read == 0:
                raise UserError(f"{spec.path}: no rows (the file or folder is empty). Add data, or remove it from "
                                "data.sources.")
            report.read += read
            report.invalid += invalid
            report.sources.append({**info, "weight": spec.weight, "split": spec.split, "rows": read,
                                   "invalid": invalid, "formats": dict(formats)})
    rows.finish()
    report.pii = cleaner.pii_counts
    if not rows.ids:
        raise UserError(f"no valid rows in {', '.join(s.path for s in d.sources)} ({report.read} read, "
                        f"{report.invalid} invalid; the reasons are in rejects.jsonl). Add data in a supported format.")
    return rows, report


def _validated(row, where: str, reader: RowReader, cleaner: Cleaner, recipe: Recipe, user_ids: dict, source: int,
               task, images: Path):
    if isinstance(row, RowError):
        raise row
    if nested_deeper_than(row, MAX_NESTING):  # before anything recurses into it
        raise RowError(f"nests lists and objects more than {MAX_NESTING} levels deep; no row format does.")
    fmt, example = reader.example(row)
    refusal = task.check_row(example)
    if refusal:
        raise RowError(refusal, "task")
    if task.stratified and "stratum" not in example:  # data.stratify_by, when set, decides instead
        example["stratum"] = task.stratum(example)
    if task.images:  # the image is checked and stored; its pixels are its content
        i = recipe.data.image
        stored = store_image(image_bytes(example["image"], reader.base), images, i.min_side, i.convert_modes)
        example["image"] = f"images/{stored.name}"
        signature, key, changed = stored, stored.pixels_key, False
    else:
        changed = cleaner.example(example)
        check_example(example, recipe.data.max_row_chars)
        signature = normalised_text(example)
        key = exact_key(signature)
    if example["id"] is None:
        example["id"] = content_id(example)
    elif user_ids.setdefault(example["id"], key) != key:
        raise RowError(f"id {example['id']!r} is already used by an earlier row with other content; ids must be "
                       "unique (or leave `id` out to use a hash of the content).", "id")
    return Pending(example, source, signature, key, where), fmt, changed


def _reason(error: RowError) -> str:
    """The kind of problem, for counting: the message up to the row's own values."""
    return str(error).split(" (")[0].split(", got")[0][:100]


def _excerpt(row) -> str:
    if isinstance(row, dict) and not nested_deeper_than(row, MAX_NESTING):
        return json.dumps(row, ensure_ascii=False, default=str)[:1000]
    return ""


@dataclass
class Decisions:
    """Pass 2's result: status and split of every row, repeats of training rows, what was found."""
    status: np.ndarray
    split: np.ndarray
    repeats: np.ndarray
    near_pairs: list[tuple[int, int]]


def decide(rows: Rows, recipe: Recipe) -> Decisions:
    d, c = recipe.data, recipe.data.clean
    status = np.frombuffer(rows.status, dtype=np.int8).copy()
    near_pairs: list[tuple[int, int]] = []
    if c.dedup_near:
        dupes, matched = rows.near.duplicates(np.flatnonzero(status == KEPT))
        status[dupes] = NEAR
        near_pairs = list(zip(matched[:5].tolist(), dupes[:5].tolist()))
    given = np.frombuffer(rows.given, dtype=np.int8)
    by_task = get_task(recipe.task).stratified and not d.stratify_by
    strata = np.frombuffer(rows.stratum, dtype=np.int32) if d.stratify_by or by_task else None
    # a task's classes each get a row in every held-out split (tasks/classification.py checks they can)
    split = assign_splits(np.frombuffer(rows.u), d.val_ratio, d.test_ratio, strata, at_least_one=by_task)
    split[given >= 0] = given[given >= 0]
    if c.leakage_check:
        _remove_leaks(rows, status, split)
    train = np.flatnonzero((status == KEPT) & (split == TRAIN))
    if d.max_train_examples and len(train) > d.max_train_examples:
        rng = np.random.default_rng(recipe.seed)
        status[rng.choice(train, len(train) - d.max_train_examples, replace=False)] = SUBSET
    weights = np.array([s.weight for s in d.sources])[np.frombuffer(rows.source, dtype=np.int16)]
    extra = np.random.default_rng(recipe.seed + 1).random(len(weights)) < weights - np.floor(weights)
    repeats = np.where((status == KEPT) & (split == TRAIN), np.floor(weights).astype(np.int64) + extra, 0)
    repeats[(status == KEPT) & (split != TRAIN)] = 1
    return Decisions(status, split, repeats, near_pairs)


def _remove_leaks(rows: Rows, status: np.ndarray, split: np.ndarray) -> None:
    """Val/test rows that exactly or nearly repeat a training row leave val/test."""
    train = np.flatnonzero((status == KEPT) & (split == TRAIN))
    held = np.flatnonzero((status == KEPT) & (split != TRAIN))
    exact = np.frombuffer(rows.exact, dtype=np.uint64)
    leaked = held[np.isin(exact[held], exact[train])]
    status[leaked] = LEAK_EXACT
    held = held[status[held] == KEPT]
    if len(held) and len(train):
        near, _ = rows.near.matches(held, train)
        status[near] = LEAK_NEAR


def write_splits(rows: Rows, decisions: Decisions, synthetic: list[dict], folder: Path) -> dict[str, list[str]]:
    """Pass 3: the split files, in source order (synthetic rows last in train). Returns the ids."""
    ids: dict[str, list[str]] = {name: [] for name in SPLITS}
    files = {name: (folder / f"{name}.jsonl").open("wb") for name in SPLITS}
    repeats = decisions.repeats
    images = rows.work / "images"
    if images.is_dir():
        (folder / "images").mkdir()
    with (rows.work / "rows.jsonl").open("rb") as spill:
        for index, line in enumerate(tqdm(spill, total=len(rows.ids), desc="write splits", unit=" rows", disable=None,
                                          mininterval=1.0)):
            if repeats[index]:
                if images.is_dir():  # the kept rows' images move in; the others' are deleted with the work folder
                    name = json.loads(line)["image"]
                    if (rows.work / name).exists():
                        (rows.work / name).rename(folder / name)
                name = SPLITS[decisions.split[index]]
                for _ in range(repeats[index]):
                    files[name].write(line)
                    ids[name].append(rows.ids[index])
    for example in synthetic:
        files["train"].write(json.dumps(example, ensure_ascii=False).encode() + b"\n")
        ids["train"].append(example["id"])
    for f in files.values():
        f.close()
    return ids
