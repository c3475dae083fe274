"""Device and precision from the hardware: fp32 on CPUs without bf16 instructions (bf16 is 2-3x
slower there), bf16 on GPUs and CPUs that have it."""

import contextlib
from pathlib import Path

import torch

from tuneforge.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def detect_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(setting: str, device: str) -> str:
    if setting == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if setting == "fp16" and device != "cuda":
        raise UserError("train.precision: fp16 needs a GPU; on this CPU use fp32 (or auto).")
    return setting


# A convolutional image model's training step (EfficientNet-Lite0, batch 32, median ms on this 2-core CPU):
#   side  64: fp32 399, bf16 373, fp32 channels-last 219, bf16 channels-last 371
#   side 128: fp32 1341, bf16 705, fp32 channels-last 777, bf16 channels-last 864
#   side 224: bf16 2556, fp32 channels-last 2951
SMALL_IMAGE_SIDE = 128


def image_fast_path(setting: str, device: str, side: int) -> tuple[str, bool]:
    """(precision, channels-last weights) for an image model at `side` pixels: on a CPU, small images
    train fastest in fp32 with channels-last weights, large ones in bf16 as they are; a GPU takes its
    usual precision, channels-last (cuDNN's fast layout for convolutions)."""
    if device.split(":")[0] != "cpu":
        return choose_precision(setting, device.split(":")[0]), True
    if setting == "auto" and side <= SMALL_IMAGE_SIDE:
        return "fp32", True
    precision = choose_precision(setting, "cpu")
    return precision, precision == "fp32"


def autocast(device: str, precision: str):
    """The autocast context of a precision on a device ("cuda:1" counts as cuda); none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=DTYPES[precision])


def matmul_shapes_cached(device: str, dtype: torch.dtype) -> bool:
    """Whether every new matmul shape costs memory that stays: on CPUs, bf16 and fp16 matmuls run in
    oneDNN, which keeps a compiled kernel and its buffers per shape (fp32 goes to MKL, GPUs to cuBLAS).
    Measured here: LoRA bf16, a new micro-batch length every step, resident memory 1.8 -> 2.8 GiB over
    80 steps; the same batch every step, flat at 1.45 GiB. Where true, batches are padded to few shapes."""
    return device.split(":")[0] == "cpu" and dtype != torch.float32


def shapes_cached_now(model: torch.nn.Module, device: str) -> bool:
    """matmul_shapes_cached for the dtype the model's matmuls run in here and now (autocast's when it is
    on, else the weights'): whether its inputs should be padded to few shapes (data/batches.py)."""
    kind = device.split(":")[0]
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else next(model.parameters()).dtype
    return matmul_shapes_cached(kind, dtype)
