"""Load on `tuneforge serve`: errors under a burst, and output tokens/s with concurrent clients against
the same requests one at a time.

Starts the real server (`tuneforge serve RUN` in a subprocess, loopback only), then
1. a burst of --burst chat requests sent at once: every one must succeed;
2. --requests chat requests (the run's test questions, greedy, up to --max-tokens tokens) sent one at a
   time by one client, then the same requests by --clients concurrent clients; prints the table and
   writes it as JSON and markdown under benchmarks/results/.

    .venv/bin/python benchmarks/serve_load.py runs/pydocs-lora
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI


def questions(run_dir: Path, count: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "data" / "test.jsonl").read_text().splitlines() if line.strip()]
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows if "messages" in r]
    return (prompts * (count // max(len(prompts), 1) + 1))[:count]


def start_server(run_dir: Path, port: int, db: Path, precision: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tuneforge", "serve", str(run_dir), "--port", str(port), "--db", str(db),
           "--precision", precision]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{proc.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not answer /health within 180 s")


def run_requests(client: OpenAI, model: str, prompts: list[list[dict]], clients: int, max_tokens: int) -> dict:
    def one(messages):
        started = time.perf_counter()
        try:
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
            return r.usage.completion_tokens, time.perf_counter() - started, None
        except Exception as e:  # counted and reported: the benchmark's point is that there are none
            return 0, time.perf_counter() - started, f"{type(e).__name__}: {e}"

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, prompts))
    seconds = time.perf_counter() - started
    tokens = sum(r[0] for r in results)
    latencies = sorted(r[1] for r in results)
    return {"clients": clients, "requests": len(prompts), "errors": sum(r[2] is not None for r in results),
            "first_error": next((r[2] for r in results if r[2]), None), "output_tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "p50_latency_s": round(latencies[len(latencies) // 2], 2), "p95_latency_s": round(latencies[int(len(latencies) * 0.95)], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=Path("runs/pydocs-lora"))
    parser.add_argument("--model", help="served model to call (default: the run's name)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--precision", default="auto", help="passed to tuneforge serve (auto, bf16, fp32)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not (args.run / "model").is_dir():
        sys.exit(f"{args.run}: not a trained run; `make demo` makes runs/pydocs-lora")
    model = args.model or args.run.name
    db = args.out / "serve_load.sqlite"
    args.out.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    server = start_server(args.run, args.port, db, args.precision)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused", max_retries=0, timeout=600)
        run_requests(client, model, questions(args.run, 2), 1, 8)  # warm-up
        burst = run_requests(client, model, questions(args.run, args.burst), args.burst, args.max_tokens)
        prompts = questions(args.run, args.requests)
        one = run_requests(client, model, prompts, 1, args.max_tokens)
        many = run_requests(client, model, prompts, args.clients, args.max_tokens)
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = [("burst (all at once)", burst), ("one at a time", one), (f"{args.clients} concurrent clients", many)]
    table = ["| load | clients | requests | errors | output tokens | seconds | tokens/s | vs one at a time | p50 s | p95 s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        table.append(f"| {name} | {r['clients']} | {r['requests']} | {r['errors']} | {r['output_tokens']} | {r['seconds']} "
                     f"| {r['tokens_per_s']} | {r['tokens_per_s'] / one['tokens_per_s']:.2f}x | {r['p50_latency_s']} "
                     f"| {r['p95_latency_s']} |")
    header = (f"tuneforge serve {args.run} (model {model}, precision {args.precision}), greedy, max_tokens {args.max_tokens}; "
              f"{os.cpu_count()} CPUs")
    print(header + "\n\n" + "\n".join(table))
    for name, r in rows:
        if r["first_error"]:
            print(f"{name}: first error: {r['first_error']}")
    (args.out / "serve_load.json").write_text(json.dumps({"setup": header, "results": dict(rows)}, indent=1))
    (args.out / "serve_load.md").write_text(header + "\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
