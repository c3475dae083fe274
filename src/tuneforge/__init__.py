"""tuneforge: fine-tune pre-trained generative models on your own data, end to end."""

import logging

__version__ = "0.1.0"


def _offline_kernel_notice(record: logging.LogRecord) -> bool:
    """peft imports bitsandbytes whenever it is installed, and on CPUs with AVX512-BF16 bitsandbytes logs
    "Failed to load CPU gemm_4bit_forward from kernels-community ..." at import: it tries to fetch an
    optional kernel from the Hugging Face hub through the `kernels` package. Its own kernels are used
    instead and qlora works, so every command opened with a failure that is not one; that line alone
    is dropped (other bitsandbytes warnings still show)."""
    return "gemm_4bit_forward from kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_offline_kernel_notice)
