"""Training throughput of tuneforge's loop on the bundled model: tokens/s per method and precision.

    .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--methods lora,full] [--precisions fp32,bf16]

Runs real optimizer steps (global batch 16 pydocs examples, the demo's shape) after one warm-up
step, alternating configurations, and prints a markdown table. Writes benchmarks/results/train_throughput.json.
"""

import argparse
import contextlib
import json
import time
from pathlib import Path

import psutil
import torch

from tuneforge.data.prepare import encode_splits, prepared_folder, read_split
from tuneforge.data.split import SPLITS
from tuneforge.data.tokenize import ensure_chat_template
from tuneforge.models.loader import load_model, load_tokenizer, resolve_model
from tuneforge.recipe import validate_recipe
from tuneforge.train.hardware import DTYPES
from tuneforge.train.loop import Trainee, make_optimizer, train_step
from tuneforge.train.methods import apply_method


def measure(method: str, precision: str, steps: int, data, tokenizer, folder) -> dict:
    recipe = validate_recipe({"method": method, "train": {"global_batch_size": 16, "max_steps": steps + 1}})
    model = apply_method(load_model(folder), recipe)
    optimizer, scheduler = make_optimizer(model, recipe, warmup_steps=0, total_steps=steps + 1)
    trainee = Trainee(model, optimizer, scheduler, tokenizer.pad_token_id, "cpu", precision)
    batches = [list(range(i * 16, (i + 1) * 16)) for i in range(steps + 1)]
    train_step(trainee, data, batches[0], 16, 1.0)  # warm-up
    tokens, started = 0, time.perf_counter()
    for indices in batches[1:]:
        _, n, _ = train_step(trainee, data, indices, 16, 1.0)
        tokens += n
    seconds = time.perf_counter() - started
    return {"method": method, "precision": precision, "steps": steps, "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "s_per_step": round(seconds / steps, 2),
            "rss_gib": round(psutil.Process().memory_info().rss / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(folder)
    ensure_chat_template(tokenizer)
    recipe = validate_recipe({"data": {"max_length": 256}})
    folder_data = prepared_folder(recipe, tokenizer)
    data = encode_splits({name: read_split(folder_data, name) for name in SPLITS}, recipe, tokenizer).encoded["train"]
    results = []
    for method in args.methods.split(","):
        for precision in args.precisions.split(","):
            assert precision in DTYPES
            results.append(measure(method, precision, args.steps, data, tokenizer, folder))
            print(results[-1], flush=True)
    print(f"\nSmolLM2-135M, global batch 16 pydocs examples (~{results[0]['tokens'] // args.steps} tokens/step), "
          f"{torch.get_num_threads()} threads\n")
    print("| method | precision | tokens/s | s/step | RSS GiB |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['precision']} | {r['tokens_per_s']} | {r['s_per_step']} | {r['rss_gib']} |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
