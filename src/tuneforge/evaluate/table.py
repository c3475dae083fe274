"""Plain-text tables for the terminal: base vs tuned metrics, and answers side by side."""

import textwrap


def format_comparison(metrics: dict) -> str:
    rows = [("perplexity (test)", "perplexity", "{:.2f}"), ("ROUGE-L", "rouge_l", "{:.1f}"),
            ("BLEU", "bleu", "{:.1f}")]
    lines = [f"{'metric':<18} {'base':>8} {'tuned':>8} {'change':>8}"]
    for label, key, fmt in rows:
        base, tuned = metrics["base"].get(key), metrics["tuned"].get(key)
        if base is None or tuned is None:
            continue
        lines.append(f"{label:<18} {fmt.format(base):>8} {fmt.format(tuned):>8} {tuned - base:>+8.2f}")
    lines.append(f"({metrics['test_examples']} test examples for perplexity, {metrics['generated']} generated answers)")
    return "\n".join(lines)


LABELS = {"perplexity": "perplexity", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "exact_match": "exact match",
           "token_f1": "token F1", "repetition": "repetition", "length": "length (words)", "bleu": "BLEU",
           "chrf": "chrF", "distinct_1": "distinct-1", "distinct_2": "distinct-2"}


def format_scores(metrics: dict) -> str:
    """Every text metric for base and tuned with its 95% interval; wins / ties / losses and the paired
    bootstrap p-value of tuned against base where the metric is scored per example."""
    base, tuned = metrics["base"].get("scores") or {}, metrics["tuned"].get("scores") or {}
    lines = [f"{'metric':<15} {'base [95% interval]':>23} {'tuned [95% interval]':>23} {'W/T/L':>9} {'p':>7}"]
    for name, label in LABELS.items():
        if name not in base or name not in tuned or name not in metrics.get("metrics", LABELS):
            continue
        paired = metrics.get("paired", {}).get(name)
        wtl = f"{paired['wins']}/{paired['ties']}/{paired['losses']}" if paired else ""
        p = f"{paired['p_value']:.3f}" if paired else ""
        lines.append(f"{label:<15} {interval(base[name]):>23} {interval(tuned[name]):>23} {wtl:>9} {p:>7}")
    forgot = metrics.get("forgetting")
    if forgot:
        lines.append(f"\nforgetting check: general-text perplexity {forgot['base']:.2f} -> {forgot['tuned']:.2f} "
                     f"({forgot['change']:+.1%}; " + ("FLAGGED, above" if forgot["flagged"] else "within")
                     + f" the {forgot['threshold']:.0%} threshold)")
    for name, compared in metrics.get("runs", {}).items():
        wins = ", ".join(f"{LABELS.get(m, m)} {p['wins']}/{p['ties']}/{p['losses']} (p={p['p_value']:.3f})"
                         for m, p in compared["paired"].items())
        lines.append(f"tuned vs {name} (W/T/L): {wins}")
    return "\n".join(lines)


def interval(score: dict) -> str:
    if score["low"] is None:
        return f"{score['value']:.1f}"
    return f"{score['value']:.1f} [{score['low']:.1f}, {score['high']:.1f}]"


def format_side_by_side(sample: dict, width: int = 100) -> str:
    column = (width - 3) // 2
    out = [f"Q: {sample['prompt']}", f"reference: {sample['reference']}"]
    left = textwrap.wrap(f"base (ROUGE-L {sample['rouge_l_base']:.0f}): {sample['base']}", column) or [""]
    right = textwrap.wrap(f"tuned (ROUGE-L {sample['rouge_l_tuned']:.0f}): {sample['tuned']}", column) or [""]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        out.append(f"{a:<{column}} | {b}")
    return "\n".join(out)
