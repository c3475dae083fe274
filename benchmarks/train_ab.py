"""In-process A/B of training speed: variants of one recipe in one process, alternating step by step.

    .venv/bin/python benchmarks/train_ab.py --set train.compile=true               # ~5 min on 2 cores
    .venv/bin/python benchmarks/train_ab.py --method full --set train.precision=fp32 --steps 12

This machine's speed drifts by 10-15% between processes, so two runs of train_speed.py cannot see a
5% lever. Here every configuration trains the same steps of train_speed.py's data (--data, --method as
there) in one process, the models taking turns step by step, so drift hits them alike. The baseline is
train_speed.py's tuneforge recipe; each --set adds a variant (recipe keys as for `tuneforge train --set`,
several separated by ';'). Every configuration is loaded --copies times (independent models, same seed):
the spread between copies of one configuration is the noise floor the differences are read against.
Reported: median seconds a step over the steps after --warmup, tokens/s, ratio to the baseline, last loss.
"""

import argparse
import statistics
import sys
import time

from train_speed import LONG_SHARE, RESULTS, benchmark_data

from tuneforge.errors import UserError
from tuneforge.recipe_file import validate_recipe
from tuneforge.train.loop import train_step
from tuneforge.train.run import load_trainee, plan_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], dest="variants", metavar="KEY=VALUE[;KEY=VALUE]",
                        help="a variant: recipe overrides, e.g. train.compile=true; repeatable")
    parser.add_argument("--method", default="lora", help="lora or full (default lora)")
    parser.add_argument("--data", choices=list(LONG_SHARE), default="short",
                        help="as in train_speed.py (default short)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; compile needs 2)")
    parser.add_argument("--copies", type=int, default=2, help="models per configuration (default 2)")
    args = parser.parse_args()
    if not args.variants:
        parser.error("give at least one --set variant to compare with the baseline")
    job = {"trainer": "tuneforge", "option": "auto", "method": args.method, "steps": args.steps,
           "warmup": args.warmup, "batch": 8, "max_length": 512, "data": args.data}
    base, _, _, encoded, _ = benchmark_data(job)
    try:
        recipes = {"baseline": base} | {v: validate_recipe(base.model_dump(mode="json"), overrides=v.split(";"))
                                        for v in args.variants}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    models = []
    for name, recipe in recipes.items():
        for copy in range(args.copies):
            setup = plan_training(recipe)  # one Setup per model: load_trainee fills and returns setup.trainee
            models.append({"name": name, "copy": copy + 1, "setup": setup, "trainee": load_trainee(setup),
                           "times": []})
    steps = [list(range(s * 8, (s + 1) * 8)) for s in range(args.warmup + args.steps)]
    for s, indices in enumerate(steps):
        for m in models:
            started = time.perf_counter()
            m["loss"], _, _ = train_step(m["trainee"], encoded, indices, m["setup"].plan, m["setup"].recipe)
            m["last"] = time.perf_counter() - started
            if s >= args.warmup:
                m["times"].append(m["last"])
        print(f"step {s + 1}/{len(steps)}{' (warm-up)' if s < args.warmup else ''}: "
              + ", ".join(f"{m['name']}#{m['copy']} {m['last']:.2f} s" for m in models), flush=True)
    tokens = statistics.mean(sum(len(encoded[i].input_ids) for i in ix) for ix in steps[args.warmup:])
    table = _table(models, tokens, args)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_ab.md").write_text(table + "\n")


def _table(models: list[dict], tokens: float, args) -> str:
    baseline = statistics.mean(statistics.median(m["times"]) for m in models if m["name"] == "baseline")
    lines = [f"{args.method}, {args.data} data, {args.steps} timed steps of ~{tokens:.0f} tokens after {args.warmup}, "
             f"models alternating step by step\n",
             "| configuration | model | s/step (median) | tokens/s | vs baseline | loss at the last step |",
             "|---|---|---|---|---|---|"]
    for m in models:
        t = statistics.median(m["times"])
        lines.append(f"| {m['name']} | {m['copy']} | {t:.3f} | {tokens / t:.1f} | {baseline / t:.3f}x | "
                     f"{m['loss']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
