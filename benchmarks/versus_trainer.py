"""What classification_speed.py and seq2seq_speed.py share: tuneforge's steps against transformers'
Trainer, each configuration in a fresh process, timed the same way and scored on the same validation
rows with the same function."""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {"tuneforge": ("tuneforge", "auto"), "tuneforge fp32": ("tuneforge", "fp32"),
           "trainer": ("trainer", True), "trainer fp32": ("trainer", False)}


def arguments(doc: str, steps: int, length_help: str) -> argparse.ArgumentParser:
    """The options both benchmarks take (each adds its own)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"a subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=steps, help=f"timed optimizer steps (default {steps})")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first and not timed (default 3)")
    parser.add_argument("--batch", type=int, default=16, help="examples per optimizer step (default 16)")
    parser.add_argument("--max-length", type=int, default=128, help=f"{length_help} (default 128)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the configurations; medians reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def work(job_text: str, ours, theirs) -> None:
    """A worker process: run one configuration, print its result as JSON."""
    job = json.loads(job_text)
    print(json.dumps(ours(job) if job["trainer"] == "tuneforge" else theirs(job)))


def spawn(script: str, job: dict) -> dict:
    """Run `script --worker JOB` in a fresh process; its last stdout line is the result as JSON."""
    out = subprocess.run([sys.executable, script, "--worker", json.dumps(job)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{job['name']} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_indices(job: dict, n_train: int) -> list[list[int]]:
    """The training rows of each step: a seeded shuffle, the same for both trainers (the split files are
    in source order, grouped by label or module, which in order would make every batch one class)."""
    import random

    needed = (job["warmup"] + job["steps"]) * job["batch"]
    order = [i for _ in range(-(-needed // n_train)) for i in random.Random(0).sample(range(n_train), n_train)]
    return [order[s * job["batch"]:(s + 1) * job["batch"]] for s in range(job["warmup"] + job["steps"])]


def run_ours(job: dict, setup) -> dict:
    """`tuneforge train`'s steps (load_trainee, train_step) over step_indices, timed."""
    from tuneforge.train.loop import train_step
    from tuneforge.train.run import load_trainee

    t = load_trainee(setup)
    encoded, times = setup.data.encoded["train"], []
    for indices in step_indices(job, len(encoded)):
        train_step(t, encoded, indices, setup.plan, setup.recipe)
        times.append(time.perf_counter())
    return finish(job, t.model, t.pad_id, times, setup, t.precision)


def clock(times: list[float]):
    """A Trainer callback that notes when each step ends."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    return Clock()


def finish(job: dict, model, pad_id: int, times: list[float], setup, precision: str) -> dict:
    """examples/s over the timed steps, the process's peak RSS, and the trained model's loss on 128
    validation rows (the task's own loss, the same for both trainers)."""
    from tuneforge.runtime.hardware import autocast
    from tuneforge.train.loss import evaluate_loss

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # training's peak, before validation
    seconds = times[-1] - times[job["warmup"] - 1]
    loss_model = setup.trainee.task.loss_model(model, setup.recipe, setup.data.encoded["train"])
    val = setup.data.encoded["val"][:128]
    loss = evaluate_loss(loss_model, val, 16, pad_id, "cpu", lambda: autocast("cpu", precision)).loss
    return {"name": job["name"], "precision": precision, "examples_per_s": round(job["steps"] * job["batch"] / seconds, 1),
            "s_per_step": round(seconds / job["steps"], 3), "peak_rss_gib": round(rss, 2), "val_loss": round(loss, 4)}


def medians(runs: list[dict]) -> list[dict]:
    keys = ["examples_per_s", "s_per_step", "peak_rss_gib", "val_loss"]
    rows = []
    for name in dict.fromkeys(r["name"] for r in runs):
        same = [r for r in runs if r["name"] == name]
        rows.append({**same[0], **{k: round(statistics.median(r[k] for r in same), 4) for k in keys},
                     "repeats": len(same)})
    return rows


def table(rows: list[dict], title: str, anchor: str) -> str:
    """A markdown table, each tuneforge row's speed as a ratio to the `anchor` row of its precision."""
    base = {r["precision"]: r for r in rows if r["name"].startswith("trainer")}
    lines = [title, "",
             f"| trainer | precision | examples/s | vs {anchor} (same precision) | s/step | peak RSS GiB | val loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        other = base.get(r["precision"])
        ratio = f"{r['examples_per_s'] / other['examples_per_s']:.2f}x" if other and other is not r else "1.00x"
        lines.append(f"| {r['name']} | {r['precision']} | {r['examples_per_s']} | {ratio} | {r['s_per_step']} | "
                     f"{r['peak_rss_gib']} | {r['val_loss']} |")
    return "\n".join(lines)


def main_loop(script: str, args, job_keys: dict) -> list[dict]:
    """Every configuration once per round, each in a fresh process; returns the runs."""
    runs = []
    for round_ in range(args.repeats):
        for name in args.configs.split(","):
            trainer, option = CONFIGS[name]
            job = {"name": name, "trainer": trainer, "option": option, "steps": args.steps, "warmup": args.warmup,
                   "batch": args.batch, "max_length": args.max_length, **job_keys}
            result = spawn(script, job)
            runs.append(result)
            print(f"[round {round_ + 1}] {name}: {result['examples_per_s']} examples/s, peak RSS "
                  f"{result['peak_rss_gib']} GiB, val loss {result['val_loss']}", flush=True)
    return runs


def write_results(results, stem: str, args, runs: list[dict], text: str) -> None:
    print("\n" + text)
    results.mkdir(exist_ok=True)
    rows = medians(runs)
    (results / f"{stem}.json").write_text(json.dumps({"args": vars(args), "runs": runs, "medians": rows}, indent=1) + "\n")
    (results / f"{stem}.md").write_text(text + "\n")
    print(f"\nWrote {results / (stem + '.json')} and {results / (stem + '.md')}")
