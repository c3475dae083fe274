"""Decode speed with transformers' DynamicCache against tuneforge's in-place KV cache (inference/kv_cache.py).

    .venv/bin/python benchmarks/decode_cache.py                          # ~4 min on 2 cores
    .venv/bin/python benchmarks/decode_cache.py --contexts 400,2000 --precision fp32

The bundled model prefills --rows random prompts of each context length, then decodes --steps greedy
tokens, once with each cache, the two taking turns for --rounds rounds in one process (this machine's
speed drifts between processes). Reported: median milliseconds a decode step, the ratio, and whether both
produced the same tokens. Writes benchmarks/results/decode_cache.md.
"""

import argparse
import statistics
import time

import torch
from train_speed import MODEL, RESULTS
from transformers import DynamicCache

from tuneforge.inference.kv_cache import growing_cache
from tuneforge.inference.run_models import for_inference
from tuneforge.models.loader import load_model, resolve_model
from tuneforge.runtime import attention
from tuneforge.runtime.hardware import autocast, choose_precision, detect_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="100,400,1000,2000", help="prompt lengths in tokens (default 100,400,1000,2000)")
    parser.add_argument("--rows", type=int, default=8, help="prompts decoded together (default 8)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per round (default 32)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per cache and context (default 4)")
    parser.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default auto)")
    args = parser.parse_args()
    device = detect_device()
    precision = choose_precision(args.precision, device)
    model = load_model(resolve_model(MODEL), torch.float32, device, attn_implementation=attention.NAME)
    for_inference(model, precision)
    caches = {"transformers DynamicCache": lambda: DynamicCache(config=model.config),
              "tuneforge in place": lambda: growing_cache(model)}
    lines = [f"{MODEL}, {precision}, {args.rows} rows, {args.steps} decode steps x {args.rounds} rounds per cache\n",
             "| context | DynamicCache ms/step | in place ms/step | speed-up | same tokens |", "|---|---|---|---|---|"]
    for context in (int(c) for c in args.contexts.split(",")):
        torch.manual_seed(0)
        prompts = torch.randint(100, model.config.vocab_size - 100, (args.rows, context), device=device)
        times = {name: [] for name in caches}
        tokens = {}
        for _ in range(args.rounds):
            for name, make in caches.items():
                with torch.no_grad(), autocast(device, precision):
                    step_times, tokens[name] = _decode(model, prompts, make(), args.steps)
                times[name] += step_times
        before, after = (statistics.median(t) * 1e3 for t in times.values())
        same = all(torch.equal(t, next(iter(tokens.values()))) for t in tokens.values())
        lines.append(f"| {context} | {before:.1f} | {after:.1f} | {before / after:.2f}x | {'yes' if same else 'no'} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode_cache.md").write_text(table + "\n")


def _decode(model, prompts: torch.Tensor, cache, steps: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of each decode step after the prefill, and the greedy tokens."""
    rows, context = prompts.shape
    mask = torch.ones_like(prompts)
    positions = torch.arange(context, device=prompts.device).expand(rows, context)
    out = model(input_ids=prompts, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    chosen, times = [out.logits[:, -1].argmax(-1, keepdim=True)], []
    position = positions[:, -1:]
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        started = time.perf_counter()
        out = model(input_ids=chosen[-1], attention_mask=mask, position_ids=position, past_key_values=out.past_key_values,
                    use_cache=True)
        if prompts.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        chosen.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return times, torch.cat(chosen, dim=1)


if __name__ == "__main__":
    main()
