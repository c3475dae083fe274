"""The floor under a training step: its matrix products and attention alone, timed at the benchmark's shapes.

    .venv/bin/python benchmarks/step_floor.py                          # short data, lora and full, ~4 min
    .venv/bin/python benchmarks/step_floor.py --data long --steps 2 --precision fp32

Takes train_speed.py's steps (same data, same order, same model) and times, one operation at a time, every
matrix product a step needs: the projections' forward and backward to their inputs (full fine-tuning: and to
their weights), the LoRA adapters' six small products a layer, the LM head on the answer tokens; and
attention as the trainer runs it (one flash call per example, forward + backward, fp32 on CPUs). Products
run in the precision tuneforge trains in (bf16 where the CPU supports it). Their sum is what a step would
take if everything else (norms, rotary embeddings, activations, casts, residual adds, the optimizer) were
free: no trainer using these kernels on this machine trains faster than the floor's tokens/s. In the
same process and on the same steps it times tuneforge's own train_step, so the table shows how much of a
real step is the floor and how much is the rest.

With benchmarks/results/train_speed.json from a train_speed.py run on the same --data, it also prints the
TRL configurations' tokens/s from that run, 5x and 3x of them (the issue's targets), and the floor's
tokens/s against them (different processes: this machine drifts 10-15% between runs).
Writes benchmarks/results/step_floor.md.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from train_speed import LONG_SHARE, RESULTS, benchmark_data, matmul_peak, step_flops

from tuneforge.runtime.hardware import DTYPES, choose_precision
from tuneforge.train.loop import train_step
from tuneforge.train.run import load_trainee, plan_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora,full", help="lora, full or both (default lora,full)")
    parser.add_argument("--data", choices=list(LONG_SHARE), default="short", help="as in train_speed.py (default short)")
    parser.add_argument("--steps", type=int, default=4, help="steps measured per method (default 4)")
    parser.add_argument("--precision", choices=["auto", "fp32"], default="auto",
                        help="tuneforge's train.precision: auto (bf16 where supported) or fp32 (default auto)")
    args = parser.parse_args()
    if torch.cuda.is_available():  # the trainer would run on the GPU while the products are timed here
        parser.error("the floor is timed on the CPU; on a GPU machine use train_speed.py's MFU column")
    precision = choose_precision(args.precision, "cpu")
    peak = matmul_peak(DTYPES[precision])
    print(f"matmul peak {precision}: {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    rows = [measure(method, args, precision, peak) for method in args.methods.split(",")]
    table = _table(rows, args, precision, peak)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_floor.md").write_text(table + "\n")


def measure(method: str, args, precision: str, peak: float) -> dict:
    """The real step and its floor, median over --steps steps after one warm-up step."""
    job = {"trainer": "tuneforge", "option": args.precision, "method": method, "steps": args.steps, "warmup": 1,
           "batch": 8, "max_length": 512, "data": args.data}
    recipe, _, _, encoded, _ = benchmark_data(job)
    setup = plan_training(recipe)
    trainee = load_trainee(setup)
    config = trainee.model.config
    lora_rank = recipe.lora.r if method != "full" else 0
    steps = [list(range(s * 8, (s + 1) * 8)) for s in range(1 + args.steps)]
    real, floors, tokens, flops = [], [], [], []
    for s, indices in enumerate(steps):
        started = time.perf_counter()
        train_step(trainee, encoded, indices, setup.plan, setup.recipe)
        if s == 0:
            continue
        real.append(time.perf_counter() - started)
        examples = [encoded[i] for i in indices]
        lengths = [len(e.input_ids) for e in examples]
        floors.append(step_floor(config, lengths, sum(e.loss_tokens for e in examples), method, lora_rank,
                                 DTYPES[precision]))
        tokens.append(sum(lengths))
        flops.append(step_flops(examples, method, config, setup.shape.trainable_params if method != "full" else 0))
        print(f"{method} step {s}/{args.steps}: real {real[-1]:.3f} s, floor {sum(floors[-1].values()):.3f} s", flush=True)
    parts = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    floor = statistics.median(sum(f.values()) for f in floors)
    step = statistics.median(real)
    mean_tokens, mean_flops = statistics.mean(tokens), statistics.mean(flops)
    return {"method": method, "tokens": mean_tokens, "real": step, "floor": floor, "parts": parts,
            "real_rate": mean_tokens / step, "floor_rate": mean_tokens / floor,
            "floor_mfu": mean_flops / floor / 1e9 / peak, "real_mfu": mean_flops / step / 1e9 / peak}


def step_floor(config, lengths: list[int], answer_tokens: int, method: str, rank: int, dtype) -> dict:
    """Seconds of one step's products and attention, each timed alone (see the module docstring)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    linears = [(hidden, q_out), (hidden, kv_out), (hidden, kv_out), (q_out, hidden),
               (hidden, config.intermediate_size), (hidden, config.intermediate_size), (config.intermediate_size, hidden)]
    tokens = sum(lengths)
    projections = adapters = 0.0
    for n_in, n_out in linears:
        projections += _product(tokens, n_in, n_out, dtype) + _product(tokens, n_out, n_in, dtype)  # forward, to input
        if method == "full":
            projections += _product(n_out, tokens, n_in, dtype)  # to the weight
        if rank:  # x A^T, h B^T; backward: to h, to B, to x, to A
            adapters += (_product(tokens, n_in, rank, dtype) + _product(tokens, rank, n_out, dtype)
                         + _product(tokens, n_out, rank, dtype) + _product(n_out, tokens, rank, dtype)
                         + _product(tokens, rank, n_in, dtype) + _product(rank, tokens, n_in, dtype))
    head = _product(answer_tokens, hidden, config.vocab_size, dtype) + _product(answer_tokens, config.vocab_size, hidden, dtype)
    if method == "full":
        head += _product(config.vocab_size, answer_tokens, hidden, dtype)
    attention = sum(_attention(n, config.num_attention_heads, config.num_key_value_heads, head_dim) for n in lengths)
    return {"projections": layers * projections, "adapters": layers * adapters, "head": head,
            "attention": layers * attention}


_timed: dict[tuple, float] = {}


def _product(m: int, k: int, n: int, dtype) -> float:
    """Median seconds of an [m, k] x [k, n] product (the second operand transposed in memory, as a weight is)."""
    key = ("mm", m, k, n, dtype)
    if key not in _timed:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype).t()
        _timed[key] = _median_seconds(lambda: torch.mm(a, b))
    return _timed[key]


def _attention(length: int, heads: int, kv_heads: int, head_dim: int) -> float:
    """Median seconds of one example's causal flash attention, forward + backward, fp32 (runtime/attention.py)."""
    key = ("attention", length, heads, kv_heads, head_dim)
    if key not in _timed:
        q = torch.randn(1, heads, length, head_dim, requires_grad=True)
        k, v = (torch.randn(1, kv_heads, length, head_dim, requires_grad=True) for _ in range(2))
        grad = torch.randn(1, heads, length, head_dim)

        def run():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads).backward(grad)

        _timed[key] = _median_seconds(run)
    return _timed[key]


def _median_seconds(fn, rounds: int = 5, min_seconds: float = 0.005) -> float:
    """Per-call seconds: median over rounds of a loop long enough to time (small products take microseconds)."""
    fn()
    started = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(time.perf_counter() - started, 1e-6)))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times)


def _table(rows: list[dict], args, precision: str, peak: float) -> str:
    lines = [(f"SmolLM2-135M-Instruct, {args.data} data, {args.steps} steps of 8 examples, tuneforge {precision}; "
              f"{torch.get_num_threads()} threads, matmul peak {peak:.0f} GFLOP/s\n"),
             ("| method | tokens a step | real s/step | floor s/step | projections | adapters | LM head | attention "
              "| floor share | real tokens/s | floor tokens/s | real MFU | floor MFU |"), "|" + "---|" * 13]
    for r in rows:
        p = r["parts"]
        lines.append(f"| {r['method']} | {r['tokens']:.0f} | {r['real']:.3f} | {r['floor']:.3f} | {p['projections']:.3f} "
                     f"| {p['adapters']:.3f} | {p['head']:.3f} | {p['attention']:.3f} | {r['floor'] / r['real']:.0%} "
                     f"| {r['real_rate']:.1f} | {r['floor_rate']:.1f} | {r['real_mfu']:.0%} | {r['floor_mfu']:.0%} |")
    return "\n".join(lines + _targets(rows, args))


def _targets(rows: list[dict], args) -> list[str]:
    """The issue's targets from the last train_speed.py run on the same data, against the floor."""
    path = RESULTS / "train_speed.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if saved["args"]["data"] != args.data:
        return []
    lines = ["", f"Targets from {path.name} ({args.data} data; another process, so within this machine's drift):\n",
             "| method | baseline | its tokens/s | target | needs tokens/s | floor tokens/s | floor / needed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for base in saved["medians"]:
            if base["method"] != r["method"] or not base["name"].startswith("trl"):
                continue
            factor = 3 if "packing" in base["name"] else 5
            needed = factor * base["tokens_per_s"]
            lines.append(f"| {r['method']} | {base['name']} | {base['tokens_per_s']} | {factor}x | {needed:.0f} "
                         f"| {r['floor_rate']:.0f} | {r['floor_rate'] / needed:.2f} |")
    return lines


if __name__ == "__main__":
    main()
