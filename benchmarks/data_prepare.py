"""Data preparation speed and memory: generate ~1,000,000 short chat rows (~200 MB of JSONL, with
planted exact and near duplicates and some PII), run `tuneforge data prepare` on them in a fresh
process with a fresh cache, and print rows/s and peak memory (RSS of that process).

    .venv/bin/python benchmarks/data_prepare.py            # 1,000,000 rows
    .venv/bin/python benchmarks/data_prepare.py --rows 100000
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["printer", "laptop", "VPN", "e-mail", "invoice", "password", "monitor", "backup", "Wi-Fi", "account",
          "phone", "license", "server", "database", "calendar", "badge", "keyboard", "meeting room", "drive", "app"]
PROBLEMS = ["does not start", "is very slow", "shows an error", "stopped syncing", "keeps disconnecting",
            "cannot be found", "was charged twice", "asks for a code", "is locked", "lost my settings"]
STEPS = ["restart it", "check the cable", "sign out and back in", "update the driver", "clear the cache",
         "reset the password in the portal", "open a ticket with IT", "reinstall the app", "wait ten minutes",
         "check the status page", "run the network test", "remove and add the device again"]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        previous = None
        for i in range(rows):
            r = rng.random()
            if previous and r < 0.03:  # exact duplicate of the previous row
                row = previous
            elif previous and r < 0.06:  # near duplicate: one word of the answer changed
                row = json.loads(previous)
                words = row["messages"][1]["content"].split()
                words[rng.randrange(len(words))] = rng.choice(["quickly", "then", "now", "again"])
                row["messages"][1]["content"] = " ".join(words)
                row = json.dumps(row)
            else:
                topic, problem = rng.choice(TOPICS), rng.choice(PROBLEMS)
                contact = f" Mail me: user{i}@example.com" if rng.random() < 0.05 else ""
                steps = ", then ".join(rng.sample(STEPS, 2))
                row = json.dumps({"messages": [
                    {"role": "user", "content": f"#{i}: my {topic} {problem}.{contact}"},
                    {"role": "assistant", "content": f"Please {steps}. Still broken? Reply to #{i}."}]})
            f.write(row + "\n")
            previous = row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "tickets.jsonl"
        started = time.time()
        generate(data, args.rows)
        print(f"generated {args.rows:,} rows, {data.stat().st_size / 1e6:.0f} MB in {time.time() - started:.0f} s")
        env = {**os.environ, "TUNEFORGE_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1"}
        size_mb = data.stat().st_size / 1e6
        # Warm the model cache first: the bundled model's one-time conversion is not data preparation.
        generate(tmp / "warm.jsonl", 10)
        subprocess.run([sys.executable, "-m", "tuneforge", "data", "prepare", "--data", str(tmp / "warm.jsonl"),
                        "--out", str(tmp / "warm")], env=env, check=True, capture_output=True)
        started = time.time()
        subprocess.run([sys.executable, "-m", "tuneforge", "data", "prepare", "--data", str(data),
                        "--set", "data.clean.pii=true", "--out", str(tmp / "out")], env=env, check=True)
        seconds = time.time() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        manifest = json.loads((tmp / "out" / "manifest.json").read_text())
    c = manifest["counts"]
    print("\n| rows | MB | seconds | rows/s | peak RSS GiB | exact dups | near dups | PII replaced | train/val/test |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {c['read']:,} | {size_mb:.0f} | {seconds:.0f} | {c['read'] / seconds:,.0f} | {peak:.2f} | "
          f"{c['exact_duplicates']:,} | {c['near_duplicates']:,} | {sum(manifest['pii_replaced'].values()):,} | "
          f"{'/'.join(str(v) for v in c['final'].values())} |")


if __name__ == "__main__":
    main()
