"""Images as the model sees them: decoded to RGB, augmented for training (a random resized crop and a
flip, as torchvision's RandomResizedCrop and RandomHorizontalFlip do; written here because no torchvision
build works with this torch), then resized and normalised by the model's own image processor, so
training, evaluation, prediction and the exported pipeline all prepare an image the same way."""

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ImageExample:
    id: str
    path: str
    target: int | float | list[float]
    truncated: bool = False
    loss_tokens: int = 1

    @property
    def length(self) -> int:
        """What a batch pads to: nothing, each image is resized to the model's size."""
        return 1


def to_rgb(image):
    """RGB pixels: transparency composited on white, 16-bit and integer grays scaled to 8 bits."""
    import numpy as np
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return Image.fromarray((array / top * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    if "A" in image.mode or "a" in image.mode or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def random_resized_crop(image, scale: float, ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """A crop of a random share of the area in [scale, 1] and a random aspect ratio (log-uniform), tried
    ten times before falling back to the whole image (torchvision's algorithm), from torch's generator."""
    import torch

    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale, 1.0))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,)))
            top = int(torch.randint(0, height - h + 1, (1,)))
            return image.crop((left, top, left + w, top + h))
    return image


def augment(image, scale: float, flip: bool):
    import torch
    from PIL import Image

    image = random_resized_crop(image, scale) if scale < 1.0 else image
    if flip and float(torch.rand(1)) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def pixel_values(processor, paths: list[str], augmentation: tuple[float, bool] | None = None):
    """The batch's pixel_values tensor; `augmentation` (crop scale, flip) for training rows."""
    images = [load_rgb(p) for p in paths]
    if augmentation:
        images = [augment(i, *augmentation) for i in images]
    return processor(images, return_tensors="pt")["pixel_values"]


def image_side(processor) -> int:
    """The square side the processor resizes (or crops) to."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or processor.size
    return int(size.get("height") or size.get("shortest_edge") or size.get("width"))


def set_image_side(processor, side: int) -> None:
    """Make the processor resize (and crop) to `side` x `side`, whichever way its config spells size."""
    size = processor.size  # a dict, or transformers' SizeDict
    if size.get("height") or size.get("width"):
        processor.size = {"height": side, "width": side}
    else:
        processor.size = {"shortest_edge": side}
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        processor.crop_size = {"height": side, "width": side}
