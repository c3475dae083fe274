"""Defaults derived from the data against the fixed ones, on a chat set the demo never used: what a
new user gets from a recipe that names only the data file.

    .venv/bin/python benchmarks/derived_defaults.py              # ~25 min on 2 cores
    .venv/bin/python benchmarks/derived_defaults.py --rows 300   # quicker

The set: "What does the X command do?" answered by the DESCRIPTION section of X's manual page, from the
man pages Debian installed on this machine (rendered by groff; real documentation nobody here wrote,
answers of 40 to 400 words). Two runs of SmolLM2-135M-Instruct with LoRA, each evaluated base vs tuned:
  derived  the recipe names only model, data and method: train.epochs, data.max_length and
           eval.max_new_tokens come from the data (data/defaults.py);
  fixed    the same with the values those keys had before they were derived: 1 epoch, max_length
           384, max_new_tokens 128.
Reported: steps, the derived values, test ROUGE-L and BLEU base -> tuned, perplexity, minutes. Writes
benchmarks/results/derived_defaults.{json,md}.
"""

import argparse
import gzip
import json
import random
import re
import subprocess
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"
MAN = Path("/usr/share/man/man1")
FIXED = {"train": {"epochs": 1.0}, "data": {"max_length": 384}, "eval": {"max_new_tokens": 128}}


def man_rows(n: int, seed: int = 0) -> list[dict]:
    """Question / answer rows from section-1 man pages with a NAME line and a DESCRIPTION of 40-400 words."""
    # one page per tool family: the Google Cloud SDK alone has thousands of near-identical pages
    pages = [p for p in sorted(MAN.glob("*.1.gz")) if not p.name.startswith(("gcloud", "bq_", "gsutil"))]
    random.Random(seed).shuffle(pages)
    rows, seen = [], set()
    for page in pages:
        if len(rows) == n:
            break
        text = _render(page)
        name, description = _section(text, "NAME"), _section(text, "DESCRIPTION")
        command = page.name.removesuffix(".1.gz")
        words = len(description.split())
        if not name or not 40 <= words <= 400 or description in seen:
            continue
        seen.add(description)
        rows.append({"messages": [{"role": "user", "content": f"What does the `{command}` command do?"},
                                  {"role": "assistant", "content": description}]})
    return rows


def _render(page: Path) -> str:
    source = gzip.decompress(page.read_bytes())
    done = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", "-rLL=200n", "-rHY=0"], input=source, capture_output=True,
                          check=False, timeout=30)
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else ""


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^{heading}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.S | re.M)
    if not match:
        return ""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", match.group(1)) if p.strip()]
    return "\n\n".join(paragraphs)


def run(name: str, data: Path, work: Path, extra: dict) -> dict:
    from tuneforge.evaluate.run import evaluate_run
    from tuneforge.recipe_file import validate_recipe
    from tuneforge.train.run import train

    raw = {"name": name, "method": "lora", "data": {"sources": [str(data)]}}
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    started = time.time()
    run_dir = train(validate_recipe(raw), work / "runs", overwrite=True)
    metrics = evaluate_run(run_dir)
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    return {"name": name, "steps": plan["total_steps"], "epochs": resolved["train"]["epochs"],
            "max_length": resolved["data"]["max_length"], "max_new_tokens": resolved["eval"]["max_new_tokens"],
            "derived": plan.get("derived", {}), "minutes": round((time.time() - started) / 60, 1),
            **{f"{which}_{m}": metrics[which][m] for which in ("base", "tuned") for m in ("rouge_l", "bleu", "perplexity")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=700, help="rows in the man-page set (default 700)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneforge-derived-defaults"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "man-pages.jsonl"
    rows = man_rows(args.rows)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows from {MAN} into {data}")
    results = [run("derived", data, args.work, {}), run("fixed", data, args.work, FIXED)]
    header = ["run", "steps", "epochs", "max_length", "max_new_tokens", "ROUGE-L base -> tuned", "BLEU base -> tuned",
              "perplexity base -> tuned", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append(f"| {r['name']} | {r['steps']} | {r['epochs']} | {r['max_length']} | {r['max_new_tokens']} | "
                     f"{r['base_rouge_l']:.1f} -> {r['tuned_rouge_l']:.1f} | {r['base_bleu']:.1f} -> {r['tuned_bleu']:.1f} | "
                     f"{r['base_perplexity']:.2f} -> {r['tuned_perplexity']:.2f} | {r['minutes']} |")
    table = "\n".join(lines)
    print(table)
    for key, d in results[0]["derived"].items():
        print(f"  {key} = {d['value']}: {d['why']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "derived_defaults.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "derived_defaults.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
