"""Image sources: a folder with one subfolder per class (torchvision's ImageFolder convention), and
MNIST-style idx files (a folder holding `*-images-idx3-ubyte[.gz]` with their `*-labels-idx1-ubyte[.gz]`),
among them the built-in `fashion-mnist` (Debian's dataset-fashion-mnist package, 70,000 28 x 28
photos of clothes in ten classes). Rows are `{"image", "label"}`, like a CSV / JSONL with an image column."""

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tuneforge.errors import RowError, UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def builtin_folder(name: str) -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        raise UserError(f"{name}: the data set is not installed ({FASHION_MNIST} is missing). Install it with "
                        "`apt-get install dataset-fashion-mnist` (Debian / Ubuntu), or point data.sources at "
                        "your own images.")
    return FASHION_MNIST


def is_image_folder(path: Path, text_suffixes: dict) -> bool:
    """More image files than text files in it (a text folder may hold a figure or two)."""
    suffixes = [p.suffix.lower() for p in path.rglob("*") if p.is_file()]
    images = sum(s in IMAGE_SUFFIXES for s in suffixes)
    return images > sum(text_suffixes.get(s) == "text" for s in suffixes)


def is_idx_folder(path: Path) -> bool:
    return any(path.glob("*-images-idx3-ubyte*"))


def image_folder(path: Path, hidden) -> Iterator[tuple[str, dict | RowError]]:
    """Each image of each class subfolder, the subfolder's name its label; a file that is not an image,
    or an image outside any class subfolder, is a row error (never silently left out)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not hidden(p, path))
    for file in files:
        where = str(file)
        relative = file.relative_to(path)
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            yield where, RowError(f"is not an image file ({file.suffix or 'no suffix'}); an image folder holds "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))} files in one subfolder per class. Move it "
                                  "out of the folder.", "image")
        elif len(relative.parts) < 2:
            yield where, RowError("is not inside a class subfolder; put each image in a subfolder named after "
                                  f"its class ({path}/CLASS/{file.name}).", "label")
        else:
            yield where, {"image": str(file), "label": relative.parts[0]}


def idx_folder(path: Path, class_names: list[str] | None = None) -> Iterator[tuple[str, dict | RowError]]:
    """Every image of every `*-images-idx3-ubyte` file with its label from the matching labels file."""
    for images_file in sorted(path.glob("*-images-idx3-ubyte*")):
        labels_file = images_file.with_name(images_file.name.replace("-images-idx3-", "-labels-idx1-"))
        if not labels_file.is_file():
            raise UserError(f"{images_file}: no labels file beside it (expected {labels_file.name}).")
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{images_file}: holds {images.shape} images for {labels.shape} labels; expected N x H x W "
                            f"images and N labels.")
        for number, (pixels, label) in enumerate(zip(images, labels.tolist()), start=1):
            name = class_names[label] if class_names and 0 <= label < len(class_names) else label
            yield f"{images_file}:image {number}", {"image": np.ascontiguousarray(pixels, dtype=np.uint8),
                                                    "label": name}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format: zero, zero, type, dimensions; big-endian sizes; the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot be read ({e}).") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise UserError(f"{path}: not an idx file (it should start with two zero bytes and a type code).")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = 4 + 4 * dims + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f"{path}: {len(data):,} bytes, but its header describes {expected:,} (a truncated file?).")
    return np.frombuffer(data, dtype, offset=4 + 4 * dims).reshape(shape)
