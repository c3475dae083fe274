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
