"""`tuneforge eval RUN`: the tuned and the base model (and any other runs) on the same test prompts, same
decoding, then the forgetting check, optionally lm-eval tasks and an LLM judge, then the report.

Writes eval/metrics.json (for every model: test perplexity and every text metric with its bootstrap 95%
interval, and perplexity on general text; tuned against each other model per example: wins / ties /
losses and a paired bootstrap p-value; forgetting; lm-eval results), eval/samples.jsonl (prompt,
reference, every model's answer and per-example scores) and eval/report.{md,html} with plots.
"""

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.prepare import read_split
from tuneforge.errors import UserError
from tuneforge.evaluate.forgetting import forgetting, load_general_text
from tuneforge.evaluate.metrics import (
    EXAMPLE_METRICS,
    METRICS,
    bleu,
    example_scores,
    paired_bootstrap,
    perplexity,
    perplexity_interval,
    summarize,
)
from tuneforge.evaluate.perplexity import continuation_perplexity, text_perplexity
from tuneforge.evaluate.table import format_comparison, format_scores
from tuneforge.inference.generate import generate_batch
from tuneforge.inference.run_models import RunModels
from tuneforge.methods import get_method
from tuneforge.models.chat_template import render_prompt
from tuneforge.recipe_file import load_recipe
from tuneforge.run_folder import open_run
from tuneforge.runtime.hardware import DTYPES
from tuneforge.tasks import get_task, seq2seq
from tuneforge.train.loss import example_losses

# Tokens per packed row when scoring perplexity: enough to keep the matmuls at full speed.
TOKENS_PER_BATCH = {"cpu": 2048, "cuda": 16384}


@dataclass
class Scored:
    """One model's raw results on the test set and the general text."""
    sums: list[float]        # summed answer-token loss per test example
    counts: list[int]        # answer tokens per test example
    answers: list[str]       # generated answer per sampled prompt
    per_example: dict        # metric -> per-example scores of the answers
    general: dict            # text_perplexity on the general text


def evaluate_run(run_dir: Path, max_samples: int | None = None, compare: list[Path] = (),
                 metrics_filter: list[str] | None = None, lm_eval: list[str] | None = None,
                 lm_eval_include: Path | None = None, lm_eval_limit: int | None = None) -> dict:
    run_dir = open_run(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    if get_task(recipe.task).head:
        given = [flag for flag, value in (("--compare", compare), ("--metrics", metrics_filter), ("--lm-eval", lm_eval),
                                          ("--max-samples", max_samples)) if value]
        if given:
            raise UserError(f"{', '.join(given)}: for generated text; a {recipe.task} run is evaluated on its whole "
                            "test split against the majority class and a linear probe. Run tuneforge eval RUN alone.")
        from tuneforge.evaluate.heads import evaluate_head

        return evaluate_head(run_dir)
    test = read_split(run_dir / "data", "test")
    if not test:
        raise UserError(f"{run_dir}: the test split is empty. Train with data.test_ratio above 0 "
                        "(for instance --set data.test_ratio=0.05).")
    unknown = sorted(set(metrics_filter or ()) - set(METRICS) - {"perplexity"})
    if unknown:
        raise UserError(f"--metrics: unknown {', '.join(unknown)}; choose from perplexity, {', '.join(METRICS)}.")
    others = [open_run(path) for path in compare]
    task = get_task(recipe.task)
    if lm_eval and task.encoder_decoder:
        raise UserError(f"--lm-eval: scores causal language models; a {recipe.task} run's model is an encoder-decoder. "
                        "Its test set is evaluated without --lm-eval.")
    if lm_eval and not get_method(recipe.method).mergeable:
        raise UserError(f"--lm-eval runs on the merged model; a {recipe.method} run has no weights to merge.")
    general_name, general_texts = load_general_text(recipe.eval.general_text)

    models = RunModels(run_dir, recipe.eval.precision)
    chats = [e for e in test if "messages" in e] if task.generates else []  # no prompts to answer in raw text
    n = min(max_samples or recipe.eval.max_samples, len(chats))
    samples = random.Random(recipe.seed).sample(chats, n) if n < len(chats) else chats
    references = [task.reference(e) for e in samples]

    def score(model, tokenizer, device: str, autocast, which: str) -> Scored:
        encoded = [task.encode(e, tokenizer, recipe.data.max_length, recipe.data.train_on_prompt) for e in test]
        encoded = [e for e in encoded if e.loss_tokens > 0]
        tokens = TOKENS_PER_BATCH[device]
        with autocast:
            if task.encoder_decoder:
                sums, counts = seq2seq.example_losses(model, encoded, device, tokenizer.pad_token_id, tokens)
                prompts = [task.source(e) for e in samples]
                general = continuation_perplexity(model, tokenizer, general_texts, device, recipe.data.max_length,
                                                  tokens_per_batch=tokens)
            else:
                sums, counts = example_losses(model, encoded, device, tokens, tokenizer.pad_token_id)
                prompts = [render_prompt(tokenizer, e["messages"]) for e in samples]
                general = text_perplexity(model, tokenizer, general_texts, device, tokens_per_batch=tokens)
            answers = generate_batch(model, tokenizer, prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size,
                                     desc=f"generate ({which})")
        return Scored(sums, counts, answers, example_scores(answers, references), general)

    started = time.perf_counter()
    scored: dict[str, Scored] = {}
    with models.base() as model:
        scored["base"] = score(model, models.tokenizer, models.device, models.autocast(), "base")
    scored["tuned"] = score(models.tuned, models.tokenizer, models.device, models.autocast(), "tuned")
    for other in others:
        other_models = RunModels(other, recipe.eval.precision)
        scored[other.name] = score(other_models.tuned, other_models.tokenizer, other_models.device,
                                   other_models.autocast(), other.name)
        del other_models

    metrics = {"test_examples": len(scored["tuned"].counts), "generated": n, "precision": models.precision,
               "decoding": {"greedy": True, "max_new_tokens": recipe.eval.max_new_tokens},
               "metrics": metrics_filter or ["perplexity", *METRICS]}
    for which, result in scored.items():
        metrics[which] = _summary(result, references, recipe.seed)
    metrics["paired"] = _paired(scored["tuned"], scored["base"], recipe.seed)
    metrics["runs"] = {name: {"paired": _paired(scored["tuned"], scored[name], recipe.seed)} for name in scored
                       if name not in ("base", "tuned")}
    scored_as = " (each passage's second half from its first)" if task.encoder_decoder else ""
    metrics["forgetting"] = {"set": general_name + scored_as, "documents": len(general_texts),
                             **forgetting(scored["base"].general, scored["tuned"].general,
                                          recipe.eval.forgetting_threshold)}
    if lm_eval:
        from tuneforge.evaluate.harness import run_lm_eval

        merged = models.tuned.merge_and_unload() if get_method(recipe.method).adapter else models.tuned
        metrics["lm_eval"] = run_lm_eval(merged, models.tokenizer, lm_eval, lm_eval_include, limit=lm_eval_limit,
                                         device=models.device, autocast_dtype=None if models.precision == "fp32"
                                         else DTYPES[models.precision])
    metrics["seconds"] = round(time.perf_counter() - started, 1)

    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for i, example in enumerate(samples):
            f.write(json.dumps({
                "id": example["id"], "prompt": example["messages"][-2]["content"], "reference": references[i],
                **{which: result.answers[i] for which, result in scored.items()},
                "rouge_l_base": round(scored["base"].per_example["rougeL"][i], 3),
                "rouge_l_tuned": round(scored["tuned"].per_example["rougeL"][i], 3),
                "scores": {which: {m: round(v[i], 3) for m, v in result.per_example.items()}
                           for which, result in scored.items()},
            }, ensure_ascii=False) + "\n")
    from tuneforge.evaluate.report import write_report

    report = write_report(run_dir)
    print(format_comparison(metrics))
    print(format_scores(metrics))
    print(f"Wrote {out / 'metrics.json'}, {out / 'samples.jsonl'} and {report}")
    return metrics


def _summary(result: Scored, references: list[str], seed: int) -> dict:
    loss, tokens = sum(result.sums) / sum(result.counts), sum(result.counts)
    rouge_l = result.per_example["rougeL"]
    general = {k: round(v, 4) for k, v in result.general.items() if k != "documents"}
    return {"perplexity": round(perplexity(loss), 4), "loss": round(loss, 5), "loss_tokens": tokens,
            "rouge_l": round(sum(rouge_l) / len(rouge_l), 3) if rouge_l else None,
            "bleu": round(bleu(result.answers, references), 3) if rouge_l else None,
            "scores": {"perplexity": perplexity_interval(result.sums, result.counts, seed=seed),
                       **summarize(result.answers, references, result.per_example, seed=seed)},
            "general_text": general}


def _paired(a: Scored, b: Scored, seed: int) -> dict:
    """a against b per example (higher is better; repetition and length are neither)."""
    paired = {name: paired_bootstrap(b.per_example[name], a.per_example[name], seed=seed)
              for name in EXAMPLE_METRICS if name not in ("repetition", "length")}
    if len(a.sums) != len(b.sums):  # another tokenizer dropped other examples: nothing to pair
        return paired
    # per example, lower loss is better, so a "wins" an example where its mean loss is lower
    paired["perplexity"] = paired_bootstrap([-s / n for s, n in zip(b.sums, b.counts)],
                                            [-s / n for s, n in zip(a.sums, a.counts)], seed=seed)
    return paired
