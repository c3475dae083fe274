"""The general photos an image run's forgetting check reads: the three photographs that the installed
packages carry (scikit-learn's load_sample_images: a Chinese temple and a flower; matplotlib's portrait
of Grace Hopper), each whole and cut into a 4 x 4 grid of crops, 51 views of everyday scenes far from a
fine-tuning domain. Written once as PNG files under $TUNEFORGE_HOME, which the image task reads like
any image row."""

from pathlib import Path

from tuneforge.home import tuneforge_home

GRID = 4


def general_images() -> tuple[str, list[dict]]:
    """(name of the set, rows with an `image` path)."""
    folder = tuneforge_home() / "general-images"
    if not (folder / "done").is_file():
        _write(folder)
    files = sorted(folder.glob("*.png"))
    return f"{len(files)} views of 3 sample photos (scikit-learn, matplotlib)", [{"image": str(f)} for f in files]


def _write(folder: Path) -> None:
    import matplotlib
    import sklearn.datasets
    from PIL import Image

    from tuneforge.tasks.image_inputs import load_rgb

    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    photos = [sklearn_images / "china.jpg", sklearn_images / "flower.jpg",
              Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        image: Image.Image = load_rgb(photo)
        image.save(folder / f"{photo.stem}.png")
        w, h = image.width // GRID, image.height // GRID
        for r in range(GRID):
            for c in range(GRID):
                image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)).save(folder / f"{photo.stem}-{r}{c}.png")
    (folder / "done").write_text("")
