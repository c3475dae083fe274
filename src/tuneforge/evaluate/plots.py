"""PNG plots of a run for the eval report and `runs compare` (matplotlib, no display needed)."""

from pathlib import Path

from tuneforge.run_folder import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(runs: dict[str, Path], path: Path) -> Path | None:
    """Train loss (lines) and val loss (dots) against step, one colour per run; None if nothing was logged."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    drawn = False
    for i, (name, run_dir) in enumerate(runs.items()):
        records = read_metrics(run_dir)
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        colour = f"C{i}"
        if train:
            ax.plot(*zip(*train), color=colour, alpha=0.8, label=f"{name} train")
        if val:
            ax.plot(*zip(*val), "o--", color=colour, label=f"{name} val")
        drawn = drawn or bool(train or val)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    return _save(plt, fig, path, ax)


def metric_intervals(metrics: dict, models: list[str], names: list[str], labels: dict[str, str], path: Path) -> Path:
    """One panel per metric: each model's value with its 95% interval as an error bar."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(2.1 * len(names) + 0.6, 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, model in enumerate(models):
            score = metrics[model]["scores"][name]
            low = score["low"] if score["low"] is not None else score["value"]
            high = score["high"] if score["high"] is not None else score["value"]
            ax.bar(i, score["value"], color=f"C{i}", alpha=0.75)
            ax.errorbar(i, score["value"], yerr=[[score["value"] - low], [high - score["value"]]], color="black",
                        capsize=4)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(labels.get(name, name), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def example_deltas(deltas: list[float], metric: str, path: Path) -> Path:
    """Histogram of tuned minus base per example."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(deltas, bins=min(30, max(5, len(deltas) // 2)), color="C2", alpha=0.8)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel(f"{metric}: tuned minus base, per test example")
    ax.set_ylabel("examples")
    return _save(plt, fig, path)


def confusion_matrix(confusion: list[list[int]], names: list[str], path: Path) -> Path:
    """Counts of true class (rows) against predicted class (columns), the diagonal being right."""
    plt = _pyplot()
    size = min(12, 2.5 + 0.45 * len(names))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 20:
        top = max(max(row) for row in confusion) or 1
        for i, row in enumerate(confusion):
            for j, n in enumerate(row):
                ax.text(j, i, n, ha="center", va="center", fontsize=7, color="white" if n > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(plt, fig, path)


def reliability(curves: dict[str, list[dict]], path: Path) -> Path:
    """Accuracy against confidence per bin, one line per model; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for i, (name, points) in enumerate(curves.items()):
        ax.plot([p["confidence"] for p in points], [p["accuracy"] for p in points], "o-", color=f"C{i}", label=name)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return _save(plt, fig, path, ax)


def predicted_vs_true(true: list[float], predicted: dict[str, list[float]], path: Path) -> Path:
    """Regression: each model's prediction against the target per test example."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    low, high = min(true), max(true)
    ax.plot([low, high], [low, high], color="grey", linestyle=":")
    for i, (name, values) in enumerate(predicted.items()):
        ax.scatter(true, values, s=10, alpha=0.6, color=f"C{i}", label=name)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    return _save(plt, fig, path, ax)


def _save(plt, fig, path: Path, legend_ax=None) -> Path:
    """Write the figure (with a grid and legend on `legend_ax`) as a PNG and close it."""
    if legend_ax is not None:
        legend_ax.grid(alpha=0.3)
        legend_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
