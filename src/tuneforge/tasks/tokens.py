"""Rows as tokens for the language-model tasks: input ids and labels, -100 where no loss falls."""

from dataclasses import dataclass

IGNORE = -100


@dataclass
class Encoded:
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def length(self) -> int:
        """What a batch pads (or packs) it to: its tokens."""
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        """Tokens that are next-token targets (the first token never is: nothing precedes it)."""
        return sum(label != IGNORE for label in self.labels[1:])


def encode_text(example: dict, tokenizer, max_length: int) -> Encoded:
    """Raw text + EOS, every token a target."""
    ids = tokenizer(example["text"] + (tokenizer.eos_token or ""), add_special_tokens=True)["input_ids"]
    return Encoded(example["id"], ids[:max_length], list(ids)[:max_length], len(ids) > max_length)


def text_lengths(texts: list[str], tokenizer) -> list[int]:
    eos = tokenizer.eos_token or ""
    encoded = tokenizer.backend_tokenizer.encode_batch_fast([t + eos for t in texts], add_special_tokens=True)
    return [len(e.ids) for e in encoded]


# bucket_length's sizes per doubling: 32 pads under 1% of the tokens (16: about 2%, for 0.1 GiB less memory)
LENGTHS_PER_DOUBLING = 32


def bucket_length(n: int) -> int:
    """n rounded up to one of LENGTHS_PER_DOUBLING lengths per power of two: at most 1/32 more.

    For CPUs in bf16 (runtime/hardware.py, matmul_shapes_cached): oneDNN keeps a compiled kernel and its
    buffers for every matmul shape it meets, so micro-batches of ever-new token counts made resident
    memory grow all run long (docs/performance-training.md); a run's lengths now fall on few shapes.
    """
    step = max(1, (1 << (n.bit_length() - 1)) // LENGTHS_PER_DOUBLING)
    return -(-n // step) * step
