"""Blind pairwise comparison: export answer pairs for people to rate, fold their ratings back in, and
count wins the same way for human raters and the LLM judge.

`tuneforge eval export-pairs RUN` writes eval/pairs.csv (or .jsonl): one row per test prompt with the
tuned and the base answer as "answer_a" / "answer_b" in a seeded random order, under an opaque pair id;
which model is which stays in eval/pairs-key.json. Raters fill the `rating` column with A, B or tie
(blank: not rated). `tuneforge eval import-ratings RUN FILE` checks every id against the key, maps the
letters back to models, writes eval/ratings.json and rebuilds the report.
"""

import csv
import hashlib
import json
import random
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.json_text import jsonl_lines, loads, read_jsonl
from tuneforge.run_folder import open_run

FIELDS = ["pair_id", "prompt", "reference", "answer_a", "answer_b", "rating", "comment"]
VERDICTS = {"a": "a", "b": "b", "tie": "tie", "=": "tie", "": None}


def read_samples(run_dir: Path) -> list[dict]:
    path = run_dir / "eval" / "samples.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no eval/samples.jsonl yet; run `tuneforge eval {run_dir}` first.")
    return read_jsonl(path)


def export_pairs(run_dir: Path, out: Path | None = None, models: tuple[str, str] = ("tuned", "base"),
                 seed: int = 0, overwrite: bool = False) -> Path:
    run_dir = open_run(run_dir)
    samples = read_samples(run_dir)
    missing = [m for m in models if m not in samples[0]]
    if missing:
        raise UserError(f"--models: {', '.join(missing)} not in {run_dir}/eval/samples.jsonl; "
                        f"answers there: {', '.join(k for k in samples[0] if k not in ('id', 'prompt', 'reference', 'scores') and not k.startswith('rouge_l_'))}.")
    out = out or run_dir / "eval" / "pairs.csv"
    if out.suffix not in (".csv", ".jsonl"):
        raise UserError(f"{out}: choose a .csv or .jsonl file name.")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists (it may hold ratings); pass --overwrite or another --out.")
    rng = random.Random(seed)
    rows, key = [], {}
    for sample in rng.sample(samples, len(samples)):  # shuffled: neighbouring rows say nothing
        swap = rng.random() < 0.5
        a, b = (models[1], models[0]) if swap else models
        pair_id = "p" + hashlib.sha256(f"{seed}:{sample['id']}".encode()).hexdigest()[:10]
        key[pair_id] = {"id": sample["id"], "a": a, "b": b}
        rows.append({"pair_id": pair_id, "prompt": sample["prompt"], "reference": sample["reference"],
                     "answer_a": sample[a], "answer_b": sample[b], "rating": "", "comment": ""})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (run_dir / "eval" / "pairs-key.json").write_text(json.dumps({"models": list(models), "pairs": key}, indent=1))
    return out


def import_ratings(run_dir: Path, file: Path) -> dict:
    run_dir = open_run(run_dir)
    key_path = run_dir / "eval" / "pairs-key.json"
    if not key_path.is_file():
        raise UserError(f"{run_dir}: no eval/pairs-key.json; export pairs first (tuneforge eval export-pairs {run_dir}).")
    key = json.loads(key_path.read_text())
    verdicts = []
    for where, row in _read_rows(file):
        pair_id = str(row.get("pair_id", "")).strip()
        if pair_id not in key["pairs"]:
            raise UserError(f"{where}: pair_id {pair_id!r} is not one of the pairs exported from {run_dir} "
                            "(were these pairs exported from another run, or re-exported since?).")
        rating = str(row.get("rating") or "").strip().lower()
        if rating not in VERDICTS:
            raise UserError(f"{where}: rating {row.get('rating')!r}; expected A, B or tie (or blank for not rated).")
        if VERDICTS[rating] is None:
            continue
        pair = key["pairs"][pair_id]
        winner = pair[VERDICTS[rating]] if VERDICTS[rating] != "tie" else "tie"
        verdicts.append({"pair_id": pair_id, "id": pair["id"], "winner": winner, "comment": row.get("comment") or ""})
    if not verdicts:
        raise UserError(f"{file}: no rated rows (fill the rating column with A, B or tie).")
    first, second = key["models"]
    result = {"pairs": [tally([v["winner"] for v in verdicts], first, second)],
              "note": f"{len(verdicts)} of {len(key['pairs'])} pairs rated by people, blind (models hidden, "
                      f"order randomised); from {file.name}.",
              "ratings": verdicts}
    return save_and_report(run_dir, "ratings.json", result)


def save_and_report(run_dir: Path, name: str, result: dict) -> dict:
    """Write eval/<name> and rebuild the report, which picks it up."""
    from tuneforge.evaluate.report import write_report

    (run_dir / "eval" / name).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    write_report(run_dir)
    return result


def tally(winners: list[str], a: str, b: str) -> dict:
    """Wins of a and b and ties; a's win rate counting a tie as half a win."""
    a_wins, b_wins = winners.count(a), winners.count(b)
    ties = len(winners) - a_wins - b_wins
    return {"a": a, "b": b, "a_wins": a_wins, "ties": ties, "b_wins": b_wins,
            "a_win_rate": (a_wins + ties / 2) / len(winners) if winners else 0.0}


def _read_rows(file: Path):
    if not file.is_file():
        raise UserError(f"{file}: no such ratings file.")
    try:
        if file.suffix == ".jsonl":
            for number, line in enumerate(jsonl_lines(file.read_text(encoding="utf-8")), 1):
                if line.strip():
                    try:
                        row = loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{file}:{number}: not valid JSON ({e.msg}).") from None
                    if not isinstance(row, dict):
                        raise UserError(f"{file}:{number}: expected an object with pair_id and rating.")
                    yield f"{file}:{number}", row
        elif file.suffix == ".csv":
            with file.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"pair_id", "rating"} <= set(reader.fieldnames):
                    raise UserError(f"{file}:1: the header needs columns pair_id and rating; found {reader.fieldnames}.")
                for number, row in enumerate(reader, 2):
                    yield f"{file}:{number}", row
        else:
            raise UserError(f"{file}: expected a .csv or .jsonl ratings file.")
    except UnicodeDecodeError as e:
        raise UserError(f"{file}: not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
