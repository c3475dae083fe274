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


def autocast(device: str, precision: str):
    """The autocast context of a precision on a device ("cuda:1" counts as cuda); none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=DTYPES[precision])
