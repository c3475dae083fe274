"""`tuneforge eval RUN`: the tuned and the base model on the same test prompts, same decoding.

Writes eval/metrics.json (perplexity, and every text metric with its bootstrap 95% interval, for base
and tuned; tuned against base per example: wins / ties / losses and a paired bootstrap p-value) and
eval/samples.jsonl (prompt, reference, base answer, tuned answer, per-example ROUGE-L).
"""

import contextlib
import json
import random
import time
from pathlib import Path

from tuneforge.data.prepare import read_split
from tuneforge.data.tokenize import encode, render_prompt
from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import (EXAMPLE_METRICS, bleu, example_scores, paired_bootstrap, perplexity,
                                        perplexity_interval, summarize)
from tuneforge.evaluate.table import format_comparison, format_scores
from tuneforge.inference.generate import generate_batch
from tuneforge.inference.run_models import RunModels
from tuneforge.train.loss import example_losses


def evaluate_run(run_dir: Path, max_samples: int | None = None) -> dict:
    models = RunModels(run_dir)
    recipe, tokenizer = models.recipe, models.tokenizer
    test = read_split(models.run_dir / "data", "test")
    if not test:
        raise UserError(f"{models.run_dir}: the test split is empty. Train with data.test_ratio above 0 "
                        "(for instance --set data.test_ratio=0.05).")
    encoded = [encode(e, tokenizer, recipe.data.max_length, recipe.data.train_on_prompt) for e in test]
    encoded = [e for e in encoded if e.loss_tokens > 0]
    chats = [e for e in test if "messages" in e]
    n = min(max_samples or recipe.eval.max_samples, len(chats))
    samples = random.Random(recipe.seed).sample(chats, n) if n < len(chats) else chats
    prompts = [render_prompt(tokenizer, e["messages"]) for e in samples]
    references = [e["messages"][-1]["content"] for e in samples]

    started = time.perf_counter()
    metrics = {"test_examples": len(encoded), "generated": n,
               "decoding": {"greedy": True, "max_new_tokens": recipe.eval.max_new_tokens}}
    answers, per_example, per_example_loss = {}, {}, {}
    for which in ("base", "tuned"):
        context = models.base() if which == "base" else contextlib.nullcontext(models.tuned)
        with context as model:
            sums, counts = example_losses(model, encoded, recipe.eval.batch_size, tokenizer.pad_token_id,
                                          models.device)
            loss, tokens = sum(sums) / sum(counts), sum(counts)
            # per example, higher is better, so tuned "wins" an example where its loss is lower
            per_example_loss[which] = [-a / b for a, b in zip(sums, counts)]
            answers[which] = generate_batch(model, tokenizer, prompts, recipe.eval.max_new_tokens,
                                            recipe.eval.batch_size, desc=f"generate ({which})")
        per_example[which] = example_scores(answers[which], references)
        scores = per_example[which]["rougeL"]
        metrics[which] = {"perplexity": round(perplexity(loss), 4), "loss": round(loss, 5), "loss_tokens": tokens,
                          "rouge_l": round(sum(scores) / len(scores), 3) if scores else None,
                          "bleu": round(bleu(answers[which], references), 3) if scores else None,
                          "scores": {"perplexity": perplexity_interval(sums, counts, seed=recipe.seed),
                                     **summarize(answers[which], references, per_example[which], seed=recipe.seed)}}
        answers[f"rouge_l_{which}"] = scores
    # tuned against base on the same prompts, per example (repetition and length are not better or worse)
    metrics["paired"] = {name: paired_bootstrap(per_example["base"][name], per_example["tuned"][name], seed=recipe.seed)
                         for name in EXAMPLE_METRICS if name not in ("repetition", "length")}
    metrics["paired"]["perplexity"] = paired_bootstrap(per_example_loss["base"], per_example_loss["tuned"],
                                                       seed=recipe.seed)
    metrics["seconds"] = round(time.perf_counter() - started, 1)

    out = models.run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for i, example in enumerate(samples):
            f.write(json.dumps({
                "id": example["id"], "prompt": example["messages"][-2]["content"], "reference": references[i],
                "base": answers["base"][i], "tuned": answers["tuned"][i],
                "rouge_l_base": round(answers["rouge_l_base"][i], 3),
                "rouge_l_tuned": round(answers["rouge_l_tuned"][i], 3),
            }, ensure_ascii=False) + "\n")
    print(format_comparison(metrics))
    print(format_scores(metrics))
    print(f"Wrote {out / 'metrics.json'} and {out / 'samples.jsonl'}")
    return metrics
