"""Images as rows: read from a path, bytes, a `datasets` image cell or an array; decoded and checked with
Pillow (unreadable, truncated, too large, too small, a mode that has no RGB meaning); stored once by
content in the prepared folder (the user's own bytes when Pillow can write the format back, PNG for
decoded pixels); and what the duplicate checks need: a hash of the RGB pixels (exact duplicates, the
same picture in two formats included), a perceptual hash (imagehash's pHash: candidates for near
duplicates) and a 16 x 16 grayscale thumbnail (which confirms a candidate: pHash alone calls many merely
similar small images equal; measured on Fashion-MNIST, pairs with equal pHashes still differ by 16 grey
levels on average)."""

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.errors import RowError
from tuneforge.tasks.image_inputs import to_rgb

THUMBNAIL = 16
# Formats kept as the user's bytes; anything else Pillow reads (TIFF, ICO, PPM, ...) is stored as PNG.
KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
# Modes whose pixels convert to RGB without guessing (CMYK and palettes by Pillow's own tables; alpha is
# composited on white, as a viewer shows it). Anything else (a 32-bit float or 16-bit depth map) is refused.
CONVERTIBLE = {"RGB", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "1", "I;16", "I;16B", "I;16L", "I", "La", "RGBa"}
MAX_PIXELS = 100_000_000  # Pillow's own bomb limit is 89 M pixels with a warning; larger is an error here


@dataclass
class StoredImage:
    """One image as the prepared folder keeps it, and what the duplicate checks need."""

    name: str  # the file's name under images/: a content hash and the format's suffix
    width: int
    height: int
    mode: str
    pixels_key: int
    phash: int
    thumbnail: np.ndarray


def image_bytes(value, base: Path, field: str = "image") -> bytes:
    """The encoded image a row's cell holds: a path (relative to the source's folder), bytes, a
    `datasets` image cell ({"bytes", "path"}), a PIL image or an array of pixels."""
    if isinstance(value, str):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise RowError(f"`{field}` is {value!r}, and there is no such file (looked for {path}); paths are "
                           "relative to the data file's folder.", field)
        return path.read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets' Image(decode=False)
        if value.get("bytes"):
            return value["bytes"]
        return image_bytes(value.get("path") or "", base, field)
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image (datasets decodes Image columns)
        return _png(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (2, 3):
        from PIL import Image

        return _png(Image.fromarray(value))
    raise RowError(f"`{field}` must be an image path, bytes or a `datasets` image, got {type(value).__name__} "
                   f"{value!r:.60}.", field)


def store_image(data: bytes, folder: Path, min_side: int, convert_modes: bool, field: str = "image") -> StoredImage:
    """Decode and check the image, write it into `folder` (once per content), and measure it."""
    image, fmt = decode(data, min_side, convert_modes, field)
    suffix = KEPT_FORMATS.get(fmt)
    if suffix is None:
        data, suffix = _png(image), ".png"
    name = hashlib.sha256(data).hexdigest()[:24] + suffix
    path = folder / name
    if not path.exists():
        path.write_bytes(data)
    rgb = to_rgb(image)
    return StoredImage(name, image.width, image.height, image.mode,
                       int.from_bytes(hashlib.blake2b(rgb.tobytes() + bytes(str(rgb.size), "ascii"),
                                                      digest_size=8).digest(), "little"),
                       perceptual_hash(rgb), thumbnail(rgb))


def decode(data: bytes, min_side: int, convert_modes: bool, field: str = "image"):
    """(the decoded PIL image, its format); RowError saying what is wrong with it otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise RowError(f"`{field}` is {image.width} x {image.height} pixels, more than {MAX_PIXELS:,}; "
                           "resize it first.", field)
        image.load()  # Image.open reads the header only: a truncated file fails here
    except UnidentifiedImageError:
        raise RowError(f"`{field}` is not an image Pillow can read ({len(data):,} bytes starting "
                       f"{data[:8]!r}). Use PNG, JPEG, WebP, GIF, BMP or TIFF.", field) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RowError(f"`{field}` is a damaged or truncated image ({e}). Re-export the file.", field) from None
    if min(image.size) < min_side:
        raise RowError(f"`{field}` is {image.width} x {image.height} pixels, smaller than data.image.min_side "
                       f"({min_side}) on a side; such an image holds too little to learn from (lower the limit "
                       "if these sizes are real).", field)
    if image.mode != "RGB":
        if image.mode not in CONVERTIBLE:
            raise RowError(f"`{field}` has pixel mode {image.mode!r}, which has no RGB meaning; convert it to an "
                           "RGB or grayscale image.", field)
        if not convert_modes:
            raise RowError(f"`{field}` has pixel mode {image.mode!r}, not RGB, and data.image.convert_modes is "
                           "false. Convert the file, or set it to true.", field)
    return image, image.format


def perceptual_hash(rgb) -> int:
    import imagehash

    return int(str(imagehash.phash(rgb)), 16)


def thumbnail(rgb) -> np.ndarray:
    from PIL import Image

    return np.asarray(rgb.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), dtype=np.uint8)


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
