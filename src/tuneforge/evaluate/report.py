"""eval/report.md and eval/report.html: everything a person needs to decide whether to ship a run.

Built only from files in the run folder (recipe.yaml, data/manifest.json, metrics.jsonl, eval/metrics.json,
eval/samples.jsonl, and eval/judge.json / eval/ratings.json when those exist), so `eval import-ratings` and
`eval judge` can rebuild it without loading a model. Plots are PNG files in eval/plots/; the HTML embeds
them, so it is one self-contained file that opens in any browser.
"""

import base64
import html
import json
from pathlib import Path

from tuneforge.evaluate import plots
from tuneforge.evaluate.table import LABELS, interval
from tuneforge.json_text import read_jsonl
from tuneforge.run_folder import read_metrics

SIDE_BY_SIDE = 3  # samples shown at each end: the largest gains and the largest losses


class _Doc:
    """The same content as Markdown and as HTML."""

    def __init__(self, title: str):
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def para(self, text: str, css: str = "") -> None:
        self.md += [text, ""]
        self.html.append(f"<p class='{css}'>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        self.md += [f"- {item}" for item in items] + [""]
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        self.md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        self.md += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: Path | None, alt: str) -> None:
        if path is None:
            return
        self.md += [f"![{alt}](plots/{path.name})", ""]
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f"<img class='plot' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>")

    def code(self, text: str) -> None:
        self.md += ["```", text.rstrip(), "```", ""]
        self.html.append(f"<pre>{html.escape(text)}</pre>")

    def answers(self, sample: dict, models: list[str]) -> None:
        self.md += [f"**Q:** {sample['prompt']}", "", f"*reference:* {sample['reference']}", ""]
        self.md += [f"*{m} (ROUGE-L {sample['scores'][m]['rougeL']:.0f}):* {sample[m]}" for m in models] + [""]
        cols = "".join(f"<td><b>{html.escape(m)}</b> (ROUGE-L {sample['scores'][m]['rougeL']:.0f})<br>"
                       f"{html.escape(sample[m])}</td>" for m in models)
        self.html.append(f"<div class='sample'><p><b>Q:</b> {html.escape(sample['prompt'])}</p>"
                         f"<p><i>reference:</i> {html.escape(sample['reference'])}</p>"
                         f"<table class='answers'><tr>{cols}</tr></table></div>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.plot{max-width:100%;display:block;margin:.5em 0 1.2em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}.flag{color:#b00;font-weight:bold}.ok{color:#070}
.sample{border-top:1px solid #ddd;padding-top:.5em}.answers td{width:50%}"""


def write_report(run_dir: Path) -> Path:
    """Write eval/report.md, eval/report.html and eval/plots/*.png; returns the HTML path."""
    out = run_dir / "eval"
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((out / "metrics.json").read_text())
    samples = read_jsonl(out / "samples.jsonl")
    recipe_text = (run_dir / "recipe.yaml").read_text()
    models = ["base", "tuned", *metrics.get("runs", {})]
    doc = _Doc(f"Evaluation report: {run_dir.name}")
    doc.para(f"{metrics['test_examples']} test examples for perplexity, {metrics['generated']} generated answers "
             f"(greedy, at most {metrics['decoding']['max_new_tokens']} new tokens), {metrics.get('precision', 'fp32')}, "
             f"{metrics['seconds']} s.")
    _verdict(doc, metrics)

    doc.heading("Training")
    doc.image(plots.loss_curves({run_dir.name: run_dir}, plot_dir / "loss.png"), "train and val loss")
    vals = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    if vals:
        doc.para(f"Best val loss {min(vals):.4f} (perplexity on val answers {2.718281828 ** min(vals):.2f}).")

    doc.heading("Metrics (95% bootstrap intervals)")
    shown = [m for m in metrics.get("metrics", LABELS) if m in metrics["tuned"]["scores"]]
    header = ["metric", *models, "tuned vs base W/T/L", "p"]
    rows = []
    for name in shown:
        paired = metrics.get("paired", {}).get(name)
        rows.append([LABELS.get(name, name), *(interval(metrics[m]["scores"][name]) for m in models),
                     f"{paired['wins']}/{paired['ties']}/{paired['losses']}" if paired else "",
                     f"{paired['p_value']:.3f}" if paired else ""])
    doc.table(header, rows)
    doc.para("W/T/L: test examples where tuned scores higher / the same / lower than base (perplexity: lower "
             "loss wins); p: two-sided paired bootstrap p-value of the mean difference.")
    plotted = [m for m in ("perplexity", "rougeL", "bleu", "chrf", "token_f1") if m in shown]
    if plotted:
        doc.image(plots.metric_intervals(metrics, models, plotted, LABELS, plot_dir / "metrics.png"),
                  "metrics with 95% intervals")
    for name, compared in metrics.get("runs", {}).items():
        items = [f"{LABELS.get(m, m)}: {p['wins']}/{p['ties']}/{p['losses']}, p={p['p_value']:.3f}"
                 for m, p in compared["paired"].items() if m in shown]
        doc.para(f"Tuned against {name} (W/T/L, p): " + "; ".join(items))
    if samples:
        deltas = [s["scores"]["tuned"]["rougeL"] - s["scores"]["base"]["rougeL"] for s in samples]
        doc.image(plots.example_deltas(deltas, "ROUGE-L", plot_dir / "deltas.png"), "per-example ROUGE-L change")

    _forgetting(doc, metrics)
    if samples:
        doc.heading(f"Side by side: the {SIDE_BY_SIDE} largest gains and losses (ROUGE-L, tuned minus base)")
        order = sorted(range(len(samples)), key=lambda i: samples[i]["scores"]["tuned"]["rougeL"]
                       - samples[i]["scores"]["base"]["rougeL"], reverse=True)
        picks = order[:SIDE_BY_SIDE] + [i for i in order[-SIDE_BY_SIDE:] if i not in order[:SIDE_BY_SIDE]]
        for i in picks:
            doc.answers(samples[i], models)
    _judge_and_ratings(doc, out)
    if metrics.get("lm_eval"):
        doc.heading("lm-evaluation-harness (tuned model, merged)")
        doc.table(["task", "metric", "value"], [[task, k, f"{v:.4f}" if isinstance(v, float) else v]
                                               for task, values in metrics["lm_eval"].items()
                                               for k, v in values.items() if k not in ("name", "sample_len")])
    _data(doc, run_dir)
    doc.heading("Recipe")
    doc.code(recipe_text)

    (out / "report.md").write_text("\n".join(doc.md), encoding="utf-8")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)} evaluation"
            f"</title><style>{STYLE}</style></head><body>{''.join(doc.html)}</body></html>\n")
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def _verdict(doc: _Doc, metrics: dict) -> None:
    base, tuned = metrics["base"], metrics["tuned"]
    items = [f"Test perplexity {base['perplexity']:.2f} -> {tuned['perplexity']:.2f}"
             + (f" (p={metrics['paired']['perplexity']['p_value']:.3f})" if "perplexity" in metrics.get("paired", {}) else "")]
    if tuned.get("rouge_l") is not None:
        p = metrics.get("paired", {}).get("rougeL")
        items.append(f"ROUGE-L {base['rouge_l']:.1f} -> {tuned['rouge_l']:.1f}" + (f" (p={p['p_value']:.3f})" if p else ""))
    forgot = metrics.get("forgetting")
    if forgot:
        items.append(f"General-text perplexity {forgot['base']:.2f} -> {forgot['tuned']:.2f} ({forgot['change']:+.1%}): "
                     + ("FORGETTING, above the " if forgot["flagged"] else "within the ") + f"{forgot['threshold']:.0%} threshold")
    doc.heading("Summary")
    doc.bullets(items)


def _forgetting(doc: _Doc, metrics: dict) -> None:
    forgot = metrics.get("forgetting")
    if not forgot:
        return
    doc.heading("Forgetting check")
    doc.table(["general text", "base", "tuned", "change"],
              [["token perplexity", f"{forgot['base']:.3f}", f"{forgot['tuned']:.3f}", f"{forgot['change']:+.2%}"],
               ["word perplexity", f"{forgot['word_perplexity']['base']:.3f}", f"{forgot['word_perplexity']['tuned']:.3f}",
                f"{forgot['word_perplexity']['tuned'] / forgot['word_perplexity']['base'] - 1:+.2%}"]])
    verdict = ("FLAGGED: perplexity on text outside the training domain rose by more than "
               f"{forgot['threshold']:.0%}; the model is losing general ability." if forgot["flagged"] else
               f"Not flagged: within the {forgot['threshold']:.0%} threshold.")
    doc.para(f"{forgot['documents']} documents ({forgot['set']}). {verdict}", "flag" if forgot["flagged"] else "ok")


def _judge_and_ratings(doc: _Doc, out: Path) -> None:
    for file, title in (("judge.json", "LLM judge"), ("ratings.json", "Human ratings (blind)")):
        if not (out / file).is_file():
            continue
        result = json.loads((out / file).read_text())
        doc.heading(title)
        doc.table(["pair", "A wins", "ties", "B wins", "A win rate (ties half)"],
                  [[f"{p['a']} vs {p['b']}", p["a_wins"], p["ties"], p["b_wins"], f"{p['a_win_rate']:.1%}"]
                   for p in result["pairs"]])
        doc.para(result["note"])


def _data(doc: _Doc, run_dir: Path) -> None:
    """Per split: examples, tokens and loss tokens as trained (data/encoding.json); what preparation
    removed; the sources with their hashes (data/manifest.json)."""
    path = run_dir / "data" / "manifest.json"
    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    encoding = json.loads((run_dir / "data" / "encoding.json").read_text())
    counts = manifest["counts"]
    doc.heading("Data")
    doc.table(["split", "examples", "tokens", "loss tokens", f"cut at {encoding['max_length']} tokens"],
              [[split, counts["final"][split], encoding["tokens"][split], encoding["loss_tokens"][split],
                encoding["truncated"][split]] for split in ("train", "val", "test")])
    leaked = sum(n for split in counts["leakage_removed"].values() for n in split.values())
    doc.para(f"{counts['read']} rows read, {counts['invalid']} invalid, {counts['exact_duplicates']} exact and "
             f"{counts['near_duplicates']} near duplicates removed, {leaked} val / test rows removed as leaked "
             f"from train, {counts['too_short'] + counts['too_long']} outside the length limits.")
    doc.table(["source", "content", "rows", "invalid", "formats"],
              [[*_source_identity(s), s["rows"], s["invalid"], ", ".join(f"{k} {v}" for k, v in s["formats"].items())]
               for s in manifest["sources"]])


def _source_identity(source: dict) -> tuple[str, str]:
    """(what the source is, what pins its content) from its fingerprint (data/sources.py)."""
    if source["kind"] == "pydocs":
        return "pydocs (the Python documentation)", f"Python {source['python']}"
    if source["kind"] == "hub":
        return f"hub {source['id']}", f"split {source['split']}" + (f", config {source['config']}" if source["config"] else "")
    return source["path"], f"sha256 {source['sha256'][:16]}"


