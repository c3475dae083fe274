"""How close is `tuneforge plan`'s memory estimate to the measured peak RSS?

Trains the bundled model on pydocs for a few steps per configuration, each in a fresh process, and
prints the estimate (runs/<name>/plan.json) next to the child's peak RSS (getrusage).

    .venv/bin/python benchmarks/plan_accuracy.py            # lora and full, micro-batch 4 and 16
    .venv/bin/python benchmarks/plan_accuracy.py --steps 2 --configs lora:4 full:16 dora:8

Also prints each configuration's training tokens/s (fp32, from metrics.jsonl) and trainable parameters.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "pydocs-lora.yaml"


def measure(method: str, micro: int, steps: int, runs: Path, extra: list[str]) -> dict:
    name = f"plan-{method}-{micro}"
    cmd = [sys.executable, "-m", "tuneforge", "train", str(RECIPE), "--runs-dir", str(runs), "--overwrite",
           "--set", f"name={name}", "--set", f"method={method}", "--set", f"train.max_steps={steps}",
           "--set", f"train.micro_batch_size={micro}", "--set", "train.learning_rate=", "--set", "train.eval_examples=16",
           "--set", "train.precision=fp32", *[a for item in extra for a in ("--set", item)]]
    # A fresh interpreter reports the peak RSS of its one child: the training run.
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.stderr.write(r.stderr[-3000:] if r.returncode else '')")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    code, peak_kib = out.stdout.split()
    if code != "0":
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    plan = json.loads((runs / name / "plan.json").read_text())
    speeds = [m["tokens_per_s"] for m in map(json.loads, (runs / name / "metrics.jsonl").read_text().splitlines())
              if "tokens_per_s" in m]
    estimate = plan["memory_bytes"]["total"]
    measured = int(peak_kib) * 1024
    return {"config": f"{method} mb{micro}", "estimate_gib": estimate / 2**30, "measured_gib": measured / 2**30,
            "error": estimate / measured - 1, "seconds": time.perf_counter() - started,
            "tokens_per_s": sum(speeds) / len(speeds), "trainable": plan["trainable_params"],
            "parts": {k: round(v / 2**30, 2) for k, v in plan["memory_bytes"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["lora:4", "lora:16", "full:4", "full:16"],
                        help="METHOD:MICRO_BATCH items")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra recipe override")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.configs:
            method, micro = item.split(":")
            rows.append(measure(method, int(micro), args.steps, Path(tmp), args.extra))
            r = rows[-1]
            print(f"{r['config']:<14} estimate {r['estimate_gib']:.2f} GiB  measured {r['measured_gib']:.2f} GiB  "
                  f"({100 * r['error']:+.0f}%)  {r['parts']}", flush=True)
    print("\n| config | trainable params | tokens/s | estimate GiB | measured peak RSS GiB | error |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['trainable'] / 1e6:.2f} M | {r['tokens_per_s']:.0f} | {r['estimate_gib']:.2f} | "
              f"{r['measured_gib']:.2f} | {100 * r['error']:+.0f}% |")


if __name__ == "__main__":
    main()
