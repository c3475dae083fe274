"""`tuneforge demo`: the shipped recipe end to end (bundled SmolLM2, pydocs, LoRA), then eval, then
a table of base vs tuned and two answers side by side. `tuneforge demo text-classification`: the
bundled MiniLM encoder learns which package a standard-library docstring is from, against the majority
class and a linear probe. `tuneforge demo image-classification`: the bundled EfficientNet-Lite0 learns
Fashion-MNIST's ten kinds of clothes, against the same baselines."""

import sys
import time
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.evaluate.heads import format_head_table
from tuneforge.evaluate.run import evaluate_run
from tuneforge.evaluate.table import format_comparison, format_side_by_side
from tuneforge.json_text import read_jsonl
from tuneforge.recipe_file import load_recipe
from tuneforge.train.run import train

DEMO_RECIPE = "pydocs-lora.yaml"
DEMOS = {"chat": DEMO_RECIPE, "text-classification": "pydocs-modules-classification.yaml",
         "image-classification": "fashion-mnist-classification.yaml"}


def shipped_recipe(name: str) -> Path:
    """A recipe from the source checkout's recipes/, or the copy a wheel installs under share/."""
    for folder in (Path(__file__).resolve().parents[3] / "recipes", Path(sys.prefix) / "share" / "tuneforge" / "recipes"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"the shipped recipe {name} is missing; reinstall tuneforge (make install).")


def run_demo(runs_dir: Path, overrides: list[str], which: str = "chat") -> None:
    started = time.perf_counter()
    recipe = load_recipe(shipped_recipe(DEMOS[which]), overrides)
    run_dir = train(recipe, runs_dir)
    trained = time.perf_counter()
    metrics = evaluate_run(run_dir)
    if which != "chat":
        print("\n" + "=" * 100)
        print(f"tuneforge demo {which}: {recipe.model.name}, {recipe.method}, {recipe.data.sources[0].path} -> "
              f"{run_dir} ({len(metrics['classes'])} classes, {metrics['train_examples']} training and "
              f"{metrics['test_examples']} test examples)\n")
        print(format_head_table(metrics))
        print(f"report: {run_dir / 'eval' / 'report.md'}")
        _print_time(started, trained)
        return
    samples = read_jsonl(run_dir / "eval" / "samples.jsonl")
    print("\n" + "=" * 100)
    print(f"tuneforge demo: {recipe.model.name}, {recipe.method}, pydocs -> {run_dir}\n")
    print(format_comparison(metrics))
    forgot = metrics["forgetting"]
    print(f"general text (forgetting check): perplexity {forgot['base']:.2f} -> {forgot['tuned']:.2f} "
          f"({forgot['change']:+.1%}, " + ("FLAGGED" if forgot["flagged"] else "not flagged") + ")")
    print(f"report: {run_dir / 'eval' / 'report.html'}")
    print("\nTwo test answers (the first two generated, not picked):\n")
    for sample in samples[:2]:
        print(format_side_by_side(sample) + "\n")
    _print_time(started, trained)


def _print_time(started: float, trained: float) -> None:
    finished = time.perf_counter()
    print(f"Time: {(finished - started) / 60:.1f} min (training {(trained - started) / 60:.1f} min, "
          f"evaluation {(finished - trained) / 60:.1f} min).")
