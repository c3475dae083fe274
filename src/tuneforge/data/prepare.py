"""A recipe's data section -> a prepared-data folder, and the tokenised examples training uses.

A prepared folder holds train/val/test.jsonl, manifest.json (source hashes, counts after each stage,
token statistics, split ids), rejects.jsonl (invalid rows and why, when data.skip_invalid skipped
some) and the report (report.md, report.html, plots). It is written to a temporary folder and renamed
into place, so an error never leaves a partial one. `tuneforge train` keeps prepared folders in a
cache keyed by the content hash of the sources, the data settings and the tokenizer.
"""

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.data import defaults
from tuneforge.data.clean import Cleaner
from tuneforge.data.dedup import exact_key, normalised_text
from tuneforge.data.image_stats import image_stats
from tuneforge.data.pipeline import KEPT, LEAK_EXACT, LEAK_NEAR, REMOVED, decide, read_all, write_splits
from tuneforge.data.report import write_report
from tuneforge.data.sources import fingerprint
from tuneforge.data.split import SPLITS, TEST, TRAIN, VAL
from tuneforge.data.stats import token_stats
from tuneforge.data.validate import check_example
from tuneforge.errors import RowError, UserError
from tuneforge.home import tuneforge_home
from tuneforge.recipe import Recipe
from tuneforge.tasks import get_task
from tuneforge.tasks.image_inputs import image_side
from tuneforge.tasks.tokens import Encoded

FORMAT_VERSION = 2  # bump when the same inputs would now prepare differently


@dataclass
class PreparedData:
    examples: dict[str, list[dict]]
    encoded: dict[str, list[Encoded]]
    encoding: dict
    classes: object = None  # tasks/labelled.py, Classes: what a task's head predicts


def prepare_data(recipe: Recipe, tokenizer, out: Path, fingerprints: list[dict] | None = None) -> dict:
    """Prepare the recipe's data into the new folder `out`; returns the manifest."""
    started = time.time()
    fingerprints = fingerprints or [fingerprint(s) for s in recipe.data.sources]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ".work").mkdir(parents=True)
    try:
        rows, read = read_all(recipe, tokenizer, fingerprints, tmp / ".work", tmp / "rejects.jsonl")
        decisions = decide(rows, recipe)
        _check_training_rows_left(decisions, recipe)
        _check_classes(rows, decisions, recipe)
        synthetic = _synthetic(rows, decisions, recipe)
        ids = write_splits(rows, decisions, synthetic, tmp)
        task = get_task(recipe.task)
        lengths = _split_lengths(rows, decisions, synthetic, tokenizer, task)
        manifest = _manifest(recipe, tokenizer, rows, read, decisions, synthetic, ids, tmp)
        if task.images:
            kept_split = np.where(decisions.repeats > 0, decisions.split, -1)
            manifest["images"] = image_stats(rows.images, kept_split)
            if recipe.data.image.size is None:
                from tuneforge.models.loader import patch_size, resolve_model  # loads torch: only for images

                fixed = patch_size(resolve_model(recipe.model.name)) is not None
                derived = defaults.image_size(manifest["images"]["train"], image_side(tokenizer), fixed)
                manifest["derived"] = derived.record()
        else:
            limit = recipe.data.max_length
            if limit is None:
                derived = defaults.max_length(lengths["train"], defaults.model_limit(tokenizer))
                manifest["derived"] = derived.record()
                limit = derived.value
            manifest["tokens"] = token_stats(lengths, limit, recipe.train.global_batch_size)
        manifest["seconds"] = round(time.time() - started, 1)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        write_report(manifest, lengths, tmp)
        shutil.rmtree(tmp / ".work")
        if not read.invalid:
            (tmp / "rejects.jsonl").unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def prepared_folder(recipe: Recipe, tokenizer) -> Path:
    """The cached prepared folder for this recipe's data, prepared now if it is not there yet."""
    fingerprints = [fingerprint(s) for s in recipe.data.sources]
    folder = tuneforge_home() / "prepared" / cache_key(recipe, tokenizer, fingerprints)
    if (folder / "manifest.json").is_file():
        print(f"Data: prepared before, reusing {folder}")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        prepare_data(recipe, tokenizer, folder, fingerprints)
    except OSError:  # another process prepared the same data at the same time
        if not (folder / "manifest.json").is_file():
            raise
    print(f"Data: prepared into {folder}")
    return folder


def prepare_command(recipe: Recipe, out: Path, overwrite: bool) -> dict:
    """`tuneforge data prepare`: the prepared folder (from the cache when the same data was prepared
    before) at `out`, replacing an older prepared folder only when asked; prints the summary."""
    from tuneforge.data.report import summary
    from tuneforge.models.loader import load_inputs, resolve_model

    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists. Pass --overwrite to replace it, or choose another --out.")
    if out.exists() and not (out / "manifest.json").is_file():
        raise UserError(f"{out}: exists and is not a prepared-data folder (no manifest.json); refusing to replace it.")
    inputs = load_inputs(resolve_model(recipe.model.name), get_task(recipe.task))
    folder = prepared_folder(recipe, inputs)
    new, old = out.with_name(f".{out.name}.new"), out.with_name(f".{out.name}.old")
    for stale in (new, old):
        shutil.rmtree(stale, ignore_errors=True)
    copy_prepared(folder, new)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    manifest = json.loads((out / "manifest.json").read_text())
    print(summary(manifest))
    print(f"\nWrote {out}/: train.jsonl val.jsonl test.jsonl manifest.json report.md report.html"
          + (" rejects.jsonl" if (out / "rejects.jsonl").exists() else "") + (" images/" if (out / "images").is_dir() else ""))
    return manifest


def cache_key(recipe: Recipe, tokenizer, fingerprints: list[dict]) -> str:
    what = {"version": FORMAT_VERSION, "task": recipe.task, "data": recipe.data.model_dump(mode="json"),
            "seed": recipe.seed,
            "global_batch_size": recipe.train.global_batch_size, "sources": fingerprints,
            "augment_model": recipe.data.augment.model or recipe.model.name, "tokenizer": _tokenizer_id(tokenizer)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def _tokenizer_id(tokenizer) -> dict:
    """What the prepared data depends on of the tokenizer; an image processor reads nothing in preparation
    (the images are stored as they are), so its kind is enough."""
    if not hasattr(tokenizer, "backend_tokenizer") and not hasattr(tokenizer, "chat_template"):
        return {"image_processor": type(tokenizer).__name__.removesuffix("Pil").removesuffix("Fast")}
    template = tokenizer.chat_template or ""
    return {"name": tokenizer.name_or_path, "vocab": len(tokenizer),
            "chat_template": hashlib.sha256(str(template).encode()).hexdigest()[:16]}


def copy_prepared(folder: Path, target: Path) -> None:
    """Put a prepared folder's files into `target` (a run's data/): split files hard-linked where the
    file system allows (they can be large), the rest copied."""
    target.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_dir():  # images/
            copy_prepared(path, target / path.name)
            continue
        if path.suffix in (".jsonl", ".png", ".jpg", ".webp", ".gif", ".bmp"):
            try:
                os.link(path, target / path.name)
                continue
            except OSError:
                pass
        shutil.copy2(path, target / path.name)


def _check_training_rows_left(decisions, recipe: Recipe) -> None:
    """Cleaning, deduplication and the splits may leave the training split empty: say what removed the rows."""
    if ((decisions.status == KEPT) & (decisions.split == TRAIN)).any():
        return
    removed = {name: int((decisions.status == code).sum()) for code, name in REMOVED.items()}
    why = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in removed.items() if n) or "none removed"
    c, d = recipe.data.clean, recipe.data
    raise UserError(f"no training examples left from {len(decisions.status)} valid rows ({why}; "
                    f"data.val_ratio {d.val_ratio}, data.test_ratio {d.test_ratio}). Relax what removed them "
                    f"(data.clean.min_tokens: {c.min_tokens}, data.clean.max_tokens: {c.max_tokens}, "
                    f"data.clean.near_threshold: {c.near_threshold}) or add data.")


def _check_classes(rows, decisions, recipe: Recipe) -> None:
    """Each class of a classification task needs a row in every split in use, and one in training at least."""
    d = recipe.data
    if not get_task(recipe.task).stratified or d.stratify_by:
        return
    splits = ["train"] + ["val"] * (d.val_ratio > 0) + ["test"] * (d.test_ratio > 0)
    kept, strata = decisions.status == KEPT, np.frombuffer(rows.stratum, dtype=np.int32)
    for code, name in enumerate(rows.strata):
        mine = kept & (strata == code)
        n, where = int(mine.sum()), rows.first_of_stratum[code]
        if name == "" or n == 0:  # multi-label rows (not stratified), or every row a duplicate
            continue
        if n < len(splits):
            raise UserError(f"{where}: label {name!r} has {n} row{'s' * (n != 1)} after cleaning, fewer than the "
                            f"{len(splits)} splits ({', '.join(splits)}) each class needs one in. Add rows of {name!r}, "
                            "remove its rows, or set data.val_ratio / data.test_ratio to 0.")
        if not (mine & (decisions.split == TRAIN)).any():
            held = sorted({SPLITS[c] for c in decisions.split[mine]})
            raise UserError(f"{where}: label {name!r} appears only in the {' and '.join(held)} split "
                            f"(its source has split: {held[0]}); the model cannot learn a class it never sees in "
                            f"training. Add training rows of {name!r}, or remove its rows.")


def _synthetic(rows, decisions, recipe: Recipe) -> list[dict]:
    a = recipe.data.augment
    if not (a.synthetic or a.paraphrases):
        return []
    from tuneforge.data.augment import (
        synthesize,  # loads torch and a model: only when asked for
    )

    train = np.flatnonzero((decisions.status == KEPT) & (decisions.split == TRAIN))
    pool = np.random.default_rng(recipe.seed).permutation(train)[:200]
    seeds = [e for e in rows.read(sorted(pool.tolist())) if "messages" in e]
    if not seeds:
        raise UserError("data.augment needs chat examples (prompt/answer rows) in the training split to start from.")
    seen = set(np.frombuffer(rows.exact, dtype=np.uint64).tolist())
    cleaner, out = Cleaner(recipe.data.clean), []
    for example in synthesize(seeds, a, a.model or recipe.model.name, recipe.seed):
        cleaner.example(example)
        try:
            check_example(example, recipe.data.max_row_chars)
        except RowError:
            continue
        key = exact_key(normalised_text(example))
        if key not in seen:
            seen.add(key)
            out.append(example)
    return out


def _split_lengths(rows, decisions, synthetic: list[dict], tokenizer, task) -> dict[str, np.ndarray]:
    tokens = np.frombuffer(rows.tokens, dtype=np.int32)
    lengths = {name: np.repeat(tokens, np.where(decisions.split == code, decisions.repeats, 0))
               for code, name in enumerate(SPLITS)}
    if synthetic:
        lengths["train"] = np.concatenate([lengths["train"], task.token_lengths(synthetic, tokenizer)])
    return lengths


def _manifest(recipe: Recipe, tokenizer, rows, read, decisions, synthetic, ids, folder: Path) -> dict:
    status, split = decisions.status, decisions.split
    kept = status == KEPT
    removed = {name: int((status == code).sum()) for code, name in REMOVED.items()}
    counts = {
        "read": read.read, "invalid": read.invalid, "valid": len(rows.ids), "cleaned": read.cleaned,
        **{k: removed[k] for k in ("too_short", "too_long", "exact_duplicates", "near_duplicates")},
        "leakage_removed": {name: {"exact": int(((status == LEAK_EXACT) & (split == code)).sum()),
                                   "near": int(((status == LEAK_NEAR) & (split == code)).sum())}
                            for code, name in ((VAL, "val"), (TEST, "test"))},
        "subset_removed": removed["subset_removed"],
        "split": {name: int((kept & (split == code)).sum()) for code, name in enumerate(SPLITS)},
        "oversampled_added": int(decisions.repeats[kept & (split == TRAIN)].sum() - (kept & (split == TRAIN)).sum()),
        "synthetic_added": len(synthetic),
        "final": {name: len(ids[name]) for name in SPLITS},
    }
    return {
        "format_version": FORMAT_VERSION,
        "sources": read.sources,
        "tokenizer": _tokenizer_id(tokenizer),
        "settings": {"seed": recipe.seed, "task": recipe.task, **recipe.data.model_dump(mode="json")},
        "counts": counts,
        "invalid_reasons": dict(read.reasons.most_common(20)),
        "pii_replaced": dict(sorted(read.pii.items())),
        "near_duplicate_examples": [{"kept": rows.ids[a], "removed": rows.ids[b]} for a, b in decisions.near_pairs],
        "synthetic_ids": [e["id"] for e in synthetic],
        "files": {f"{name}.jsonl": _sha256(folder / f"{name}.jsonl") for name in SPLITS},
        **({"labels": labels} if (labels := _label_counts(rows, decisions, recipe)) else {}),
        "ids": ids,
    }


def _label_counts(rows, decisions, recipe: Recipe) -> dict[str, dict[str, int]] | None:
    """Rows of each class in each split, for a task whose splits are stratified by class."""
    if not get_task(recipe.task).stratified or recipe.data.stratify_by or set(rows.strata) == {""}:
        return None
    kept, strata = decisions.status == KEPT, np.frombuffer(rows.stratum, dtype=np.int32)
    return {name: {split: int((kept & (strata == code) & (decisions.split == c)).sum()) for c, split in enumerate(SPLITS)}
            for name, code in sorted(rows.strata.items()) if name}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def max_length(recipe: Recipe, folder: Path) -> int | None:
    """data.max_length: the recipe's, or the one derived from the prepared data's token lengths (None
    for image rows, which have no tokens)."""
    if recipe.data.max_length is not None:
        return recipe.data.max_length
    return json.loads((folder / "manifest.json").read_text()).get("tokens", {}).get("max_length")


def read_split(folder: Path, name: str) -> list[dict]:
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; {folder} is not a complete prepared-data folder.")
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:  # an image row names its file relative to the folder
        if "image" in row:
            row["image"] = str(folder / row["image"])
    return rows


def encode_splits(examples: dict[str, list[dict]], recipe: Recipe, tokenizer) -> PreparedData:
    """Tokenise each split; drop examples whose answer lies wholly beyond max_length (counted). A task
    with a head gets its classes from the training split first."""
    d, task = recipe.data, get_task(recipe.task)
    classes = task.classes(examples["train"])
    encoded, dropped, truncated = {}, {}, {}
    for name in SPLITS:
        rows = [task.encode(e, tokenizer, d.max_length, d.train_on_prompt, classes) for e in examples[name]]
        encoded[name] = [r for r in rows if r.loss_tokens > 0]
        dropped[name] = len(rows) - len(encoded[name])
        truncated[name] = sum(r.truncated for r in rows)
        kept = {r.id for r in encoded[name]}
        examples[name] = [e for e in examples[name] if e["id"] in kept]
    if not encoded["train"]:
        raise UserError(f"no training examples left: {dropped['train']} have no answer tokens within "
                        f"data.max_length={d.max_length}. Add data or raise data.max_length.")
    encoding = {"max_length": d.max_length, "truncated": truncated, "dropped_no_answer_tokens": dropped,
                "tokens": {name: sum(r.length for r in encoded[name]) for name in SPLITS},
                "loss_tokens": {name: sum(r.loss_tokens for r in encoded[name]) for name in SPLITS}}
    if classes is not None:
        encoding["classes"] = {"names": classes.names, "problem": classes.problem}
    return PreparedData(examples, encoded, encoding, classes)
