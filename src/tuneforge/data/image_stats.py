"""Image statistics of the prepared splits (sizes, pixel modes) and the contact sheet the report shows:
a grid of training images, a row per label, as the model will see them before augmentation."""

import json
from collections import Counter
from pathlib import Path

import numpy as np

from tuneforge.data.split import SPLITS
from tuneforge.data.stats import pyplot
from tuneforge.tasks.image_inputs import load_rgb

SHEET_COLUMNS = 8
SHEET_ROWS = 12


def image_stats(sizes: list[tuple[int, int, str]], kept_split: np.ndarray) -> dict:
    """Per split: images, median width and height, the smallest side, and the pixel modes found.
    `kept_split` gives each row's split code, or -1 for a row that was removed."""
    out = {}
    for code, name in enumerate(SPLITS):
        mine = [sizes[i] for i in np.flatnonzero(kept_split == code)]
        widths, heights = np.array([w for w, _, _ in mine]), np.array([h for _, h, _ in mine])
        out[name] = {"images": len(mine),
                     "median_width": int(np.median(widths)) if mine else 0,
                     "median_height": int(np.median(heights)) if mine else 0,
                     "min_side": int(min(widths.min(), heights.min())) if mine else 0,
                     "max_side": int(max(widths.max(), heights.max())) if mine else 0,
                     "modes": dict(Counter(m for _, _, m in mine).most_common())}
    return out


def contact_sheet(folder: Path, path: Path) -> bytes:
    """Up to SHEET_COLUMNS training images of each label (the first SHEET_ROWS labels); PNG bytes."""
    by_label: dict[str, list[str]] = {}
    with (folder / "train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            label = ", ".join(map(str, row["label"])) if isinstance(row["label"], list) else str(row["label"])
            images = by_label.setdefault(label, [])
            if len(images) < SHEET_COLUMNS:
                images.append(row["image"])
    labels = sorted(by_label)[:SHEET_ROWS]
    plt = pyplot()
    fig, axes = plt.subplots(len(labels), SHEET_COLUMNS, figsize=(SHEET_COLUMNS * 1.1, len(labels) * 1.15 + 0.3),
                             dpi=100, squeeze=False)
    for r, label in enumerate(labels):
        for c in range(SHEET_COLUMNS):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(by_label[label]):
                ax.imshow(np.asarray(load_rgb(folder / by_label[label][c])))
        axes[r][0].set_title(label[:40], fontsize=8, loc="left")
    fig.suptitle("training images per label", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.read_bytes()
