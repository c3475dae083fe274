"""rslora: LoRA scaled by alpha / sqrt(r) instead of alpha / r (rank-stabilised)."""

from tuneforge.methods.base import register
from tuneforge.methods.lora import Lora


@register
class RsLora(Lora):
    name = "rslora"
    learning_rate = 3e-4  # the update is 4x larger at r=16 than LoRA's, so a smaller step
    rank_stabilised = True
