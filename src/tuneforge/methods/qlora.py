"""qlora: LoRA over a 4-bit (NF4, bitsandbytes) base."""

from tuneforge.errors import UserError
from tuneforge.methods.base import METHODS, register
from tuneforge.methods.lora import Lora


@register
class Qlora(Lora):
    name = "qlora"
    half_base = False  # the base is 4-bit already
    four_bit_base = True

    def load_options(self, device: str) -> dict:
        return {"quantization_config": _four_bit_config(), "device_map": device}

    def prepare_base(self, model):
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and lets gradients flow to the adapters; checkpointing is ours to decide.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for module in model.modules():
            # bitsandbytes re-lays 4-bit weights in place for CPU inference on the first no-grad forward
            # (our validation); training shares those weights, so keep the one layout backward understands.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return model

    def counted_as(self):
        return METHODS["lora"]  # the same adapters; the plan counts the base's linear weights as 4-bit

    def full_size_temporaries(self, linear_params: int) -> int:
        return linear_params * 4  # W dequantised for each product


def _four_bit_config():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method: qlora needs the bitsandbytes package (pip install bitsandbytes); "
                        "or use method: lora.") from None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)
