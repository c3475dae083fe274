"""`tuneforge eval RUN` for a classification or regression run: the tuned model against the majority
baseline and a linear probe on the pre-trained encoder (evaluate/probe.py), on the same test split,
each metric with a bootstrap 95% interval; tuned against the probe per example (wins / ties / losses,
paired bootstrap p-value); and forgetting: how far the tuned encoder's sentence embeddings of general
text moved from the pre-trained one's (cosine).

Writes eval/metrics.json, eval/predictions.jsonl (every test row with each model's prediction),
eval/report.md and its plots (confusion matrix and reliability diagram, or predicted against true).
"""

import json
import time
from pathlib import Path

import numpy as np

from tuneforge.data.prepare import read_split
from tuneforge.errors import UserError
from tuneforge.evaluate import plots
from tuneforge.evaluate.forgetting import load_general_text
from tuneforge.evaluate.general_images import general_images
from tuneforge.evaluate.head_metrics import (
    classification_metrics,
    multi_label_metrics,
    per_example_scores,
    regression_metrics,
)
from tuneforge.evaluate.metrics import paired_bootstrap
from tuneforge.evaluate.probe import linear_probe, majority
from tuneforge.inference.heads import HeadModel, prediction
from tuneforge.tasks.labelled import MULTI, REGRESSION

HEADLINE = {"single_label_classification": ("accuracy", "macro_f1", "weighted_f1", "ece"),
            "multi_label_classification": ("exact_match", "micro_f1", "macro_f1"),
            "regression": ("rmse", "mae", "r2", "spearman")}
# the per-example score the paired comparison counts wins by (head_metrics.per_example_scores)
PAIRED_BY = {"single_label_classification": "right", "multi_label_classification": "labels right",
             "regression": "absolute error"}


def evaluate_head(run_dir: Path) -> dict:
    started = time.perf_counter()
    m = HeadModel(run_dir)  # fp32 whatever eval.precision says: a head run is cheap to score in full precision
    recipe, classes = m.recipe, m.classes
    run_dir = m.run_dir
    train, test = read_split(run_dir / "data", "train"), read_split(run_dir / "data", "test")
    if not test:
        raise UserError(f"{run_dir}: the test split is empty. Train with data.test_ratio above 0 "
                        "(for instance --set data.test_ratio=0.1).")
    problem, names, seed = classes.problem, classes.names, recipe.seed
    y_train, y_test = _targets(m, train), _targets(m, test)
    outputs = {"majority": majority(problem, y_train, len(test), len(names))}
    probe_train = m.embeddings(train, pre_trained=True)
    outputs["probe"] = linear_probe(problem, probe_train, y_train, m.embeddings(test, pre_trained=True),
                                    len(names), seed)
    outputs["tuned"] = m.outputs(test)

    metrics = {"task": recipe.task, "images": m.task.images, "problem": problem, "classes": names,
               "precision": m.precision,
               "test_examples": len(test),
               "train_examples": len(train), "baselines": {"majority": "the training split's class frequencies"
                                                            if problem != REGRESSION else "the training mean",
                                                            "probe": "a linear model on the pre-trained encoder's "
                                                                     + ("pooled features" if m.task.images else
                                                                        "mean-pooled embeddings") + " (frozen)"}}
    for name, out in outputs.items():
        metrics[name] = _metrics(problem, y_test, out, names, recipe.head.threshold, seed)
    scores = {name: per_example_scores(problem, y_test, out, recipe.head.threshold) for name, out in outputs.items()}
    metrics["paired"] = {f"tuned_vs_{other}": {"by": PAIRED_BY[problem],
                                               **paired_bootstrap(scores[other], scores["tuned"], seed=seed)}
                         for other in ("probe", "majority")}
    metrics["forgetting"] = _forgetting(m, recipe.eval.general_text, recipe.eval.forgetting_threshold)
    metrics["seconds"] = round(time.perf_counter() - started, 1)

    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    _write_predictions(out_dir / "predictions.jsonl", test, outputs, classes, recipe.head.threshold)
    figures = _plots(out_dir, metrics, y_test, outputs)
    (out_dir / "report.md").write_text(report(metrics, figures))
    print(format_head_table(metrics))
    print(f"Wrote {out_dir / 'metrics.json'}, {out_dir / 'predictions.jsonl'} and {out_dir / 'report.md'}")
    return metrics


def _targets(m: HeadModel, rows: list[dict]) -> np.ndarray:
    return np.array([m.task.target(r, m.classes) for r in rows])


def _metrics(problem: str, y: np.ndarray, out: np.ndarray, names: list[str], threshold: float, seed: int) -> dict:
    if problem == REGRESSION:
        return regression_metrics(y, out, seed)
    if problem == MULTI:
        return multi_label_metrics(y, out, names, threshold, seed)
    return classification_metrics(y, out, names, seed)


def _forgetting(m: HeadModel, general_text: str | None, threshold: float) -> dict:
    """Cosine between the pre-trained and the tuned encoder's embedding of each general-text document
    (or, for an image run, of each general photo)."""
    if m.task.images:
        name, rows = general_images()
    else:
        name, texts = load_general_text(general_text)
        rows = [{"text": t} for t in texts]
    before, after = m.embeddings(rows, pre_trained=True), m.embeddings(rows)
    cosine = (before * after).sum(1) / (np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1))
    mean = float(cosine.mean())
    return {"set": name, "documents": len(rows), "mean_cosine": round(mean, 4), "min_cosine": round(float(cosine.min()), 4),
            "threshold": threshold, "flagged": mean < 1 - threshold}


def _write_predictions(path: Path, test: list[dict], outputs: dict, classes, threshold: float) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, row in enumerate(test):
            record = {"id": row["id"], **{k: row[k] for k in ("text", "text_pair", "image") if k in row},
                      "label": row["label"]}
            for name, out in outputs.items():
                record[name] = prediction(out[i], classes, threshold)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _plots(out_dir: Path, metrics: dict, y: np.ndarray, outputs: dict) -> list[tuple[str, str]]:
    problem = metrics["problem"]
    if problem == REGRESSION:
        plots.predicted_vs_true(y.tolist(), {k: v.tolist() for k, v in outputs.items() if k != "majority"},
                                out_dir / "predicted_vs_true.png")
        return [("Predicted against true (test split)", "predicted_vs_true.png")]
    if problem == MULTI:
        return []
    plots.confusion_matrix(metrics["tuned"]["confusion"], metrics["classes"], out_dir / "confusion.png")
    plots.reliability({k: metrics[k]["calibration"] for k in ("probe", "tuned")}, out_dir / "reliability.png")
    return [("Confusion matrix of the tuned model (test split)", "confusion.png"),
            ("Reliability: accuracy against confidence", "reliability.png")]


def format_head_table(metrics: dict) -> str:
    names = HEADLINE[metrics["problem"]]
    if metrics.get("images") and "top3_accuracy" in metrics["tuned"]["scores"]:
        names = (*names, "top3_accuracy")
    rows = [("model", *names)]
    for model in ("majority", "probe", "tuned"):
        s = metrics[model]["scores"]
        rows.append((model, *(f"{s[n]['value']:.3f} [{s[n]['low']:.3f}, {s[n]['high']:.3f}]" for n in names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for other in ("probe", "majority"):
        p = metrics["paired"][f"tuned_vs_{other}"]
        lines.append(f"tuned vs {other} per example ({p['by']}): {p['wins']} better, {p['ties']} same, "
                     f"{p['losses']} worse, p = {p['p_value']:.4f}")
    f = metrics["forgetting"]
    what = "features of " if metrics.get("images") else "sentence embeddings of "
    lines.append(f"forgetting: {what}{f['set'] if metrics.get('images') else str(f['documents']) + ' general-text documents'}"
                 f", cosine to the pre-trained model's: mean {f['mean_cosine']:.3f}, lowest {f['min_cosine']:.3f}"
                 + (" (FLAGGED: moved more than the threshold)" if f["flagged"] else ""))
    return "\n".join(lines)


def report(metrics: dict, figures: list[tuple[str, str]]) -> str:
    out = [f"# Evaluation: {metrics['task']} ({metrics['test_examples']} test examples)", "",
           "Intervals are bootstrap 95% over test examples. Baselines: majority = "
           f"{metrics['baselines']['majority']}; probe = {metrics['baselines']['probe']}.", "",
           "```", format_head_table(metrics), "```", ""]
    per_class = metrics["tuned"].get("per_class")
    if per_class:
        out += ["## Per class (tuned)", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        out += [f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
                for name, c in per_class.items()]
        out.append("")
    for title, file in figures:
        out += [f"## {title}", "", f"![{title}]({file})", ""]
    return "\n".join(out)
