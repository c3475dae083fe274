"""Image classification: tuneforge against the plain PyTorch loop a user would write with transformers,
and tuneforge at several image sizes, on the image demo's data (Fashion-MNIST, EfficientNet-Lite0).

    .venv/bin/python benchmarks/image_classification.py                       # ~12 min on 2 cores
    .venv/bin/python benchmarks/image_classification.py --rows 3000 --sizes 64,128

Every configuration trains the bundled EfficientNet-Lite0 with a new 10-class head in full, on the same
prepared rows (the first --rows photos; 80 / 5 / 15 split, stratified), batch 32, AdamW at 1e-3 with
cosine decay, the same number of steps (3 epochs), in a fresh process each:
  tuneforge @ S   `tuneforge train` with data.image.size S (S = 64 is what it derives for 28-pixel
                  photos), then `tuneforge eval`: its defaults (augmentation, precision and layout
                  chosen for the CPU, the largest micro-batch);
  plain @ 64      a loop over the same training rows in the same order: the model's image processor,
                  no augmentation, fp32, AutoModelForImageClassification's own loss (what the
                  transformers image-classification guide does, without Trainer).
Reported: images/s over training (tuneforge: the median of its logged windows; plain: steps x batch
over the loop's time), test accuracy (the same 15% test split) with a bootstrap 95% interval. Writes benchmarks/results/image_classification.{json,md}.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TUNEFORGE = [sys.executable, "-m", "tuneforge"]


def recipe(rows: int) -> dict:
    return {"name": "bench", "task": "image_classification", "method": "full", "model": {"name": "efficientnet-lite0"},
            "data": {"sources": [{"path": "fashion-mnist", "max_rows": rows}], "val_ratio": 0.05, "test_ratio": 0.15},
            "train": {"global_batch_size": 32, "learning_rate": 1e-3, "epochs": 3, "eval_every": 10_000,
                      "early_stopping_patience": None, "save_every": 100_000, "warmup_ratio": 0.05}}


def run_tuneforge(work: Path, rows: int, size: int) -> dict:
    import yaml

    path = work / f"tuneforge-{size}.yaml"
    path.write_text(yaml.safe_dump({**recipe(rows), "name": f"tuneforge-{size}"}))
    started = time.perf_counter()
    subprocess.run([*TUNEFORGE, "train", str(path), "--runs-dir", str(work / "runs"), "--set",
                    f"data.image.size={size}"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    run = work / "runs" / f"tuneforge-{size}"
    subprocess.run([*TUNEFORGE, "eval", str(run)], check=True, capture_output=True)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "tokens_per_s" in r]
    return {"config": f"tuneforge @ {size}", "images_per_s": round(float(np.median([r["tokens_per_s"] for r in steps])), 1),
            "train_s": round(seconds, 1), "accuracy": metrics["tuned"]["scores"]["accuracy"],
            "probe_accuracy": metrics["probe"]["scores"]["accuracy"], "run": str(run)}


def run_plain(data: Path, steps: int, seed: int = 0) -> dict:
    """The loop, over the tuneforge run's own prepared rows (its data/ folder) in a seeded order."""
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        get_cosine_schedule_with_warmup,
    )

    from tuneforge.data.prepare import read_split
    from tuneforge.evaluate.head_metrics import classification_metrics
    from tuneforge.models.loader import resolve_model
    from tuneforge.tasks.image_inputs import load_rgb, set_image_side

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    train, test = read_split(data, "train"), read_split(data, "test")
    names = sorted({str(r["label"]) for r in train})
    index = {n: i for i, n in enumerate(names)}
    folder = resolve_model("efficientnet-lite0")
    processor = AutoImageProcessor.from_pretrained(folder)
    set_image_side(processor, 64)
    model = AutoModelForImageClassification.from_pretrained(folder, num_labels=len(names), ignore_mismatched_sizes=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = get_cosine_schedule_with_warmup(optimizer, round(0.05 * steps), steps)
    order = torch.randperm(len(train)).tolist()

    def batch(rows):
        pixels = processor([load_rgb(r["image"]) for r in rows], return_tensors="pt")["pixel_values"]
        return pixels, torch.tensor([index[str(r["label"])] for r in rows])

    model.train()
    started = time.perf_counter()
    for step in range(steps):
        at = step * 32 % (len(order) - 31)
        pixels, labels = batch([train[i] for i in order[at:at + 32]])
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - started
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(test), 64):
            pixels, _ = batch(test[i:i + 64])
            probs.append(model(pixel_values=pixels).logits.softmax(-1))
    y = np.array([index[str(r["label"])] for r in test])
    scores = classification_metrics(y, torch.cat(probs).numpy(), names, seed)["scores"]
    return {"config": "plain @ 64", "images_per_s": round(steps * 32 / seconds, 1), "train_s": round(seconds, 1),
            "accuracy": scores["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="photos read (default 3000)")
    parser.add_argument("--sizes", default="64,96,128", help="image sizes for tuneforge (default 64,96,128)")
    parser.add_argument("--plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        job = json.loads(args.plain)
        print(json.dumps(run_plain(Path(job["data"]), job["steps"])))
        return
    work = Path(tempfile.mkdtemp(prefix="image-bench-"))
    results = []
    for size in map(int, args.sizes.split(",")):
        results.append(run_tuneforge(work, args.rows, size))
        print(results[-1], flush=True)
    first = Path(results[0]["run"])
    steps = json.loads((first / "plan.json").read_text())["total_steps"]
    out = subprocess.run([sys.executable, __file__, "--plain", json.dumps({"data": str(first / "data"), "steps": steps})],
                         check=True, capture_output=True, text=True)
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(results[-1], flush=True)
    table = [f"EfficientNet-Lite0, full fine-tuning, Fashion-MNIST (first {args.rows} photos), batch 32, {steps} steps", "",
             "| config | images/s in training | test accuracy [95% CI] |", "|---|---|---|"]
    for r in results:
        a = r["accuracy"]
        table.append(f"| {r['config']} | {r['images_per_s']} | {a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}] |")
    probe = results[0]["probe_accuracy"]
    table += ["", (f"Linear probe on the pre-trained features (64 pixels): {probe['value']:.3f} "
                   f"[{probe['low']:.3f}, {probe['high']:.3f}]")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image_classification.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "image_classification.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
