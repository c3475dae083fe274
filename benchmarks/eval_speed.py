"""Perplexity evaluation speed: tuneforge's text perplexity against lm-evaluation-harness's `hf` backend.

    .venv/bin/pip install -c constraints.txt -e '.[lm-eval]'          # lm-eval, once
    .venv/bin/python benchmarks/eval_speed.py                        # ~4 min on 2 cores
    .venv/bin/python benchmarks/eval_speed.py --docs 10 --repeats 1

Both score the same documents (the forgetting check's general text, 45 passages, ~10k tokens) with the
same bundled model, in one process, configurations alternating, each after one untimed warm-up pass:
  tuneforge        evaluate/perplexity.text_perplexity with the model held as `tuneforge eval` holds it, at
                   the precision `auto` picks here (bf16 linear weights under autocast on CPUs with bf16
                   instructions, else fp32): packed rows of ~2,048 tokens, one causal attention per
                   document, no padding;
  tuneforge fp32   the same in fp32;
  lm-eval hf       lm_eval.models.huggingface.HFLM(model).loglikelihood_rolling (the call a
                   `loglikelihood_rolling` task such as wikitext makes), its defaults: batch size 1, the
                   model's dtype (fp32);
  lm-eval hf bf16  the same with dtype bfloat16 (lm-eval's own way to run in bf16);
  lm-eval hf batch N  batch size --lm-eval-batch (padded windows).
Reported: predicted tokens/s, seconds, and word perplexity (to show both compute the same quantity), and
the speed ratio against `lm-eval hf`. Writes benchmarks/results/eval_speed.{json,md}.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=45, help="general-text passages to score (default all 45)")
    parser.add_argument("--max-length", type=int, default=2048, help="context of a rolling window (default 2048)")
    parser.add_argument("--lm-eval-batch", type=int, default=8, help="batch size of the batched lm-eval row")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations; medians reported")
    args = parser.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.evaluate.forgetting import load_general_text
    from tuneforge.evaluate.perplexity import count_words, text_perplexity
    from tuneforge.inference.run_models import for_inference
    from tuneforge.models.loader import resolve_model
    from tuneforge.runtime import attention
    from tuneforge.runtime.hardware import autocast, choose_precision

    folder = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = load_general_text(None)[1][:args.docs]
    words = sum(count_words(t) for t in texts)
    precision = choose_precision("auto", "cpu")
    ours = {p: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attention.NAME)
            for p in {precision, "fp32"}}
    for p, model in ours.items():  # as `tuneforge eval` holds its models (inference/run_models.py)
        for_inference(model, p)
    theirs = {"lm-eval hf": HFLM(pretrained=str(folder), device="cpu", max_length=args.max_length),
              "lm-eval hf bf16": HFLM(pretrained=str(folder), device="cpu", dtype="bfloat16", max_length=args.max_length),
              f"lm-eval hf batch {args.lm_eval_batch}": HFLM(pretrained=str(folder), device="cpu",
                                                              batch_size=args.lm_eval_batch, max_length=args.max_length)}
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]

    def run_ours(dtype: str):
        result = text_perplexity(ours[dtype], tokenizer, texts, "cpu", args.max_length,
                                 autocast=lambda: autocast("cpu", dtype))
        return sum(result["documents"]["loglikelihood"]), sum(result["documents"]["tokens"])

    def run_theirs(name: str):
        return sum(theirs[name].loglikelihood_rolling(requests, disable_tqdm=True)), None

    configs = {f"tuneforge ({precision})": lambda: run_ours(precision), "tuneforge fp32": lambda: run_ours("fp32"),
               **{name: (lambda name=name: run_theirs(name)) for name in theirs}}
    tokens = run_ours("fp32")[1]
    print(f"{len(texts)} documents, {tokens} tokens, {words} words; {torch.get_num_threads()} threads", flush=True)
    timings: dict[str, list[float]] = {name: [] for name in configs}
    loglik: dict[str, float] = {}
    for name, run in configs.items():  # warm-up: allocator, thread pool, first-call paths
        run()
    for _ in range(args.repeats):
        for name, run in configs.items():
            started = time.perf_counter()
            loglik[name], _ = run()
            timings[name].append(time.perf_counter() - started)
            print(f"  {name:<22} {timings[name][-1]:7.2f} s", flush=True)

    rows = []
    for name in configs:
        seconds = statistics.median(timings[name])
        rows.append({"name": name, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
                     "word_perplexity": round(float(torch.tensor(-loglik[name] / words).exp()), 4)})
    reference = next(r for r in rows if r["name"] == "lm-eval hf")
    for r in rows:
        r["vs_lm_eval"] = round(r["tokens_per_s"] / reference["tokens_per_s"], 2)
    table = "\n".join([
        f"SmolLM2-135M-Instruct, {len(texts)} general-text documents ({tokens} tokens), rolling windows of "
        f"{args.max_length}; {torch.get_num_threads()} threads; median of {args.repeats}\n",
        "| evaluator | tokens/s | vs lm-eval hf | seconds | word perplexity |", "|---|---|---|---|---|",
        *(f"| {r['name']} | {r['tokens_per_s']} | {r['vs_lm_eval']:.2f}x | {r['seconds']} | {r['word_perplexity']} |"
          for r in rows)])
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_speed.json").write_text(json.dumps({"args": vars(args), "tokens": tokens, "rows": rows}, indent=1))
    (RESULTS / "eval_speed.md").write_text(table + "\n")
    print(f"\nWrote {RESULTS / 'eval_speed.json'} and {RESULTS / 'eval_speed.md'}")


if __name__ == "__main__":
    main()
