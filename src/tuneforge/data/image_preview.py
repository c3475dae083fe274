"""`tuneforge data preview` for image rows: the rows per label, each example's size and label, and a PNG
with a row per example: the stored image, what the model sees (resized and cropped by its image
processor to data.image.size, shown before normalisation), and three random training views."""

import json
from pathlib import Path

import numpy as np

from tuneforge.data.report import labels_table
from tuneforge.data.stats import pyplot
from tuneforge.recipe import Recipe
from tuneforge.tasks.image_inputs import augment, load_rgb, set_image_side

VIEWS = 3


def image_preview(recipe: Recipe, processor, folder: Path, examples: list[dict]) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())
    side = recipe.data.image.size or manifest["derived"]["data.image.size"]["value"]
    set_image_side(processor, side)
    image = recipe.data.image
    table = labels_table(manifest)
    out = [table + "\n"] if table else []
    out.append(f"Examples as the model sees them (data.image.size = {side}; training views: random crops of at "
               f"least {image.crop_scale:.0%} of the area{', flipped at random' if image.flip else ''}"
               f"{'' if image.augment else ' - off: data.image.augment is false'}):\n")
    rows = []
    for example in examples:
        picture = load_rgb(example["image"])
        out.append(f"--- {example['id']} ({picture.width} x {picture.height}) -> label {example['label']!r}")
        views = [augment(picture, image.crop_scale, image.flip) for _ in range(VIEWS)] if image.augment else []
        rows.append([picture, *(_as_seen(processor, p) for p in [picture, *views])])
    path = folder / "preview.png"
    _grid(rows, path)
    out += ["", f"Wrote {path}"]
    return "\n".join(out)


def _as_seen(processor, picture) -> np.ndarray:
    """The processor's pixels, normalisation undone, as an H x W x 3 array in [0, 1]."""
    pixels = processor([picture], return_tensors="np")["pixel_values"][0]
    mean = np.array(processor.image_mean)[:, None, None] if getattr(processor, "do_normalize", False) else 0.0
    std = np.array(processor.image_std)[:, None, None] if getattr(processor, "do_normalize", False) else 1.0
    return (pixels * std + mean).clip(0, 1).transpose(1, 2, 0)


def _grid(rows: list[list], path: Path) -> None:
    plt = pyplot()
    titles = ["stored", "model input", *(f"training view {i + 1}" for i in range(len(rows[0]) - 2))]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.6 * len(titles), 1.6 * len(rows) + 0.3), dpi=100,
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            axes[r][c].imshow(np.asarray(picture))
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
