"""dora: weight-decomposed LoRA, a learnt magnitude per output next to the low-rank direction."""

from tuneforge.methods.base import register
from tuneforge.methods.lora import Lora


@register
class Dora(Lora):
    name = "dora"
    weight_decomposed = True
    half_base = False  # the magnitude is taken of the fp32 W + BA

    def full_size_temporaries(self, linear_params: int) -> int:
        return linear_params * 4  # W + BA recomposed to take its norm
