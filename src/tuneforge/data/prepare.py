"""A recipe's data section -> split, tokenised examples and a manifest saying what happened to them."""

import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.pydocs import build_pydocs
from tuneforge.data.rows import read_jsonl
from tuneforge.data.split import SPLITS, split_examples
from tuneforge.data.tokenize import Encoded, encode
from tuneforge.errors import UserError
from tuneforge.recipe import Recipe


@dataclass
class PreparedData:
    examples: dict[str, list[dict]]
    encoded: dict[str, list[Encoded]]
    manifest: dict


def load_examples(recipe: Recipe) -> tuple[list[dict], dict]:
    """All examples of the source, and a description of the source (kind, path, sha256)."""
    source = recipe.data.source
    if source == "pydocs":
        examples = build_pydocs()
        digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()
        return examples, {"kind": "pydocs", "python": sys.version.split()[0], "sha256": digest}
    path = Path(source).expanduser()
    examples = read_jsonl(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return examples, {"kind": "jsonl", "path": str(path.resolve()), "sha256": digest}


def prepare(recipe: Recipe, tokenizer) -> PreparedData:
    """Read, split, subset and tokenise; UserError if a split the run needs ends up empty."""
    examples, source = load_examples(recipe)
    d = recipe.data
    splits = split_examples(examples, recipe.seed, d.val_ratio, d.test_ratio)
    if d.max_train_examples and len(splits["train"]) > d.max_train_examples:
        splits["train"] = random.Random(recipe.seed).sample(splits["train"], d.max_train_examples)
    data = encode_splits(splits, recipe, tokenizer, source)
    if not data.encoded["train"]:
        raise UserError(f"{source.get('path', source['kind'])}: no training examples left "
                        f"({len(examples)} read, {data.manifest['dropped_no_answer_tokens']['train']} with no "
                        f"answer tokens within data.max_length={d.max_length}). Add data or raise data.max_length.")
    data.manifest["read"] = len(examples)
    return data


def encode_splits(splits: dict[str, list[dict]], recipe: Recipe, tokenizer, source: dict) -> PreparedData:
    """Tokenise each split; drop examples whose answer lies wholly beyond max_length."""
    d = recipe.data
    encoded, dropped, truncated = {}, {}, {}
    for name in SPLITS:
        rows = [encode(e, tokenizer, d.max_length, d.train_on_prompt) for e in splits[name]]
        encoded[name] = [r for r in rows if r.loss_tokens > 0]
        dropped[name] = len(rows) - len(encoded[name])
        truncated[name] = sum(r.truncated for r in rows)
        kept = {r.id for r in encoded[name]}
        splits[name] = [e for e in splits[name] if e["id"] in kept]
    manifest = {
        "source": source,
        "split": {"seed": recipe.seed, "val_ratio": d.val_ratio, "test_ratio": d.test_ratio},
        "counts": {name: len(splits[name]) for name in SPLITS},
        "truncated": truncated,
        "dropped_no_answer_tokens": dropped,
        "tokens": {name: sum(len(r.input_ids) for r in encoded[name]) for name in SPLITS},
        "loss_tokens": {name: sum(r.loss_tokens for r in encoded[name]) for name in SPLITS},
        "ids": {name: [e["id"] for e in splits[name]] for name in SPLITS},
    }
    return PreparedData(splits, encoded, manifest)


def write_data(data: PreparedData, folder: Path) -> None:
    """The run's data/ folder: manifest.json and the examples of each split (JSONL)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(data.manifest, indent=1) + "\n")
    for name in SPLITS:
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for example in data.examples[name]:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")


def read_split(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; {run_dir} is not a complete tuneforge run folder.")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
