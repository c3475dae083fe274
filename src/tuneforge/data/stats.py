"""Token statistics of the prepared splits, and the plots the report shows."""

import io
from pathlib import Path

import numpy as np

from tuneforge.data.split import SPLITS


def token_stats(lengths: dict[str, np.ndarray], max_length: int, global_batch_size: int) -> dict:
    stats = {}
    for name in SPLITS:
        x = lengths[name]
        stats[name] = {"rows": len(x), "tokens": int(x.sum()),
                       "mean": round(float(x.mean()), 1) if len(x) else 0,
                       "median": int(np.median(x)) if len(x) else 0,
                       "p95": int(np.percentile(x, 95)) if len(x) else 0,
                       "max": int(x.max()) if len(x) else 0,
                       "truncated_at_max_length": int((x > max_length).sum())}
    stats["max_length"] = max_length
    stats["steps_per_epoch"] = len(lengths["train"]) // global_batch_size
    return stats


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lengths(lengths: dict[str, np.ndarray], max_length: int, path: Path) -> bytes:
    """Histogram of tokens per example for each split, with the max_length cut marked; PNG bytes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    top = max((int(x.max()) for x in lengths.values() if len(x)), default=1)
    bins = np.linspace(0, max(top, max_length) * 1.02, 50)
    for name, color in zip(SPLITS, ("#3b6ea8", "#e0a030", "#c04040")):
        if len(lengths[name]):
            ax.hist(lengths[name], bins=bins, alpha=0.6, label=f"{name} ({len(lengths[name]):,})", color=color,
                    density=True)
    ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example (chat template included)")
    ax.set_ylabel("share of examples")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Example lengths")
    return _save(fig, plt, path)


def plot_stages(stages: list[tuple[str, int]], path: Path) -> bytes:
    """Horizontal bars: rows left after each preparation stage; PNG bytes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(stages) + 1), dpi=100)
    names, values = [s for s, _ in stages][::-1], [v for _, v in stages][::-1]
    ax.barh(names, values, color="#3b6ea8")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    ax.set_title("Rows after each stage")
    ax.set_xlim(0, max(values + [1]) * 1.18)
    return _save(fig, plt, path)


def plot_labels(labels: dict[str, dict[str, int]], path: Path) -> bytes:
    """Grouped bars: rows of each label in each split; PNG bytes."""
    plt = pyplot()
    names = list(labels)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.6 * len(names)), 3.4), dpi=100)
    width = 0.8 / len(SPLITS)
    for i, split in enumerate(SPLITS):
        ax.bar(np.arange(len(names)) + (i - 1) * width, [labels[n][split] for n in names], width, label=split)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("rows")
    ax.set_title("Rows per label and split")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()
