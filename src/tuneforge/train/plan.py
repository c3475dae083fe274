"""The memory plan, made before any weight is loaded: parameters counted on a weightless (meta-device)
copy of the model with the method applied, memory split into weights, gradients, optimizer state,
the best-weights copy, activations and the runtime itself, and the largest micro-batch that fits.

The activation and runtime constants are measured, not derived: benchmarks/plan_accuracy.py trains the
bundled model with several methods and micro-batches and prints the estimate next to the measured peak
RSS (the test suite checks one case stays within 25%).
"""

from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from tuneforge.methods import get_method
from tuneforge.recipe import Recipe
from tuneforge.train.head_loss import chunk_tokens

# Bytes kept for backward per token, per transformer block, per unit of hidden size (fp32, SDPA): the
# inputs of the norms, projections and MLP (intermediate ~2.7x hidden), plus what the allocator holds
# between micro-batches. LoRA keeps more: each adapted layer's input in the adapter's dtype, and with
# lora.dropout a dropped-out copy and its mask too. Fitted on SmolLM2-135M, micro-batches of 4 and 16
# (benchmarks/plan_accuracy.py).
_ACTIVATION_BYTES_PER_TOKEN_BLOCK_HIDDEN = {"plain": 44, "lora": 64, "lora_dropout": 104}
# With gradient checkpointing only each block's input is kept, and one block's activations live at a time.
_CHECKPOINTED_BYTES_PER_TOKEN_BLOCK_HIDDEN = 8
# The LM head on a chunk of answer tokens at a time (train/head_loss.py): the chunk's logits, their
# softmax in place and its compute-dtype copy, plus the forward's reduction temporaries.
_HEAD_COPIES = 3
# Python, torch, transformers, the tokenizer and the encoded data, measured before the model loads.
_RUNTIME_BYTES = 700 * 2**20
# Use at most this share of the memory that is free when training starts.
_MEMORY_SHARE = 0.8
# Tokens per forward pass past which a larger micro-batch stops paying: no faster, only more activation
# memory. CPU, measured (bundled model, LoRA, bf16, 2 cores, 512-token rows): 490 tokens per micro-batch
# 318 tokens/s and 2.6 GiB peak, 980: 357 / 3.2 GiB, 1,960: 354 / 4.3 GiB, 3,920: 350 / 6.2 GiB.
# GPUs need far more tokens in flight to keep their cores busy.
_SATURATING_TOKENS = {"cpu": 1024, "cuda": 16384}
# A convolutional image model (no hidden_size) keeps about this much per input pixel for backward in fp32:
# EfficientNet-Lite0 in training, 32 images at 128 and 224 pixels, measured by resident memory after the
# forward (1,459 and 1,445 bytes); half under bf16 / fp16 autocast.
_CNN_BYTES_PER_PIXEL = 1500


@dataclass
class MemoryEstimate:
    runtime: int
    weights: int
    gradients: int
    optimizer: int
    best_copy: int
    activations: int

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.gradients + self.optimizer + self.best_copy + self.activations


@dataclass
class ModelShape:
    """What the plan needs to know about a model and method, from its config alone."""

    total_params: int
    trainable_params: int
    trainable_matrices: list[tuple[int, int]]  # shapes of trainable 2-D parameters (Adafactor factors them)
    four_bit_params: int  # qlora: weights stored in 4 bits
    linear_params: int  # weights of the blocks' linear layers (what LoRA adapts)
    layers: int
    hidden: int  # 0 for a convolutional image model: its activations are counted per pixel
    vocab: int


@dataclass
class TrainPlan:
    micro_batch: int
    accumulation: int
    total_steps: int
    warmup_steps: int
    memory: MemoryEstimate
    available: int
    world: int = 1


def model_shape(model_dir: Path, recipe: Recipe, classes=None) -> ModelShape:
    """Count parameters on the meta device: no memory, no weights read, the method really applied (and
    the task's head, for `classes`)."""
    import transformers

    from tuneforge.methods import apply_method
    from tuneforge.methods.model_parts import count_parameters
    from tuneforge.tasks import get_task
    from tuneforge.train.load import task_config

    task = get_task(recipe.task)
    config = task_config(model_dir, recipe, classes, pad_id=0)
    method = get_method(recipe.method)
    counting = recipe.model_copy(deep=True)
    counting.prompt_tuning.init_text = None  # a text init would read the tokenizer; the count is the same
    counting.method = method.counted_as().name  # qlora: lora's adapters, the base's linears counted as 4-bit
    with torch.device("meta"):
        model = getattr(transformers, task.model_class).from_config(config)
        model = apply_method(model, counting, head=task.head_modules(model))
    total, trainable = count_parameters(model)
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not head and "lora_" not in name)
    matrices = [tuple(p.shape) for p in model.parameters() if p.requires_grad and p.ndim == 2]
    # a task's head has a handful of outputs, not the vocabulary: no LM-head logits to plan for
    vocab = config.vocab_size if head is not None else 0
    return ModelShape(total, trainable, matrices, linear if method.four_bit_base else 0, linear,
                      getattr(config, "num_hidden_layers", 0), getattr(config, "hidden_size", 0), vocab)


def image_tokens(model_dir: Path, side: int, shape: ModelShape) -> int:
    """What one image counts as in the plan: a vision transformer's patches (and its class token), or a
    convolutional model's pixels."""
    from tuneforge.models.loader import patch_size

    return side * side if not shape.hidden else (side // (patch_size(model_dir) or 16)) ** 2 + 1


def estimate_memory(shape: ModelShape, recipe: Recipe, tokens_per_micro_batch: int, precision: str,
                    world: int = 1) -> MemoryEstimate:
    cfg, method = recipe.train, get_method(recipe.method)
    full_precision = shape.total_params - shape.four_bit_params
    # Methods with half_base keep their frozen linear weights in the autocast dtype (runtime/precision.py).
    half = shape.linear_params if precision != "fp32" and method.half_base else 0
    weights = (full_precision - half) * 4 + half * 2 + shape.four_bit_params // 2
    if precision != "fp32":  # autocast keeps a half-precision copy of the fp32 weights it casts
        weights += (full_precision - half) * 2
    if cfg.optimizer == "adamw":
        optimizer = shape.trainable_params * 8  # two fp32 moments
    elif cfg.optimizer == "sgd":
        optimizer = shape.trainable_params * 4  # momentum
    else:  # adafactor: a row and a column statistic per matrix, a full one per vector
        in_matrices = sum(r * c for r, c in shape.trainable_matrices)
        optimizer = 4 * (sum(r + c for r, c in shape.trainable_matrices) + shape.trainable_params - in_matrices)
    kept = _ACTIVATION_BYTES_PER_TOKEN_BLOCK_HIDDEN[method.activation_kind(recipe)]
    per_unit = _CHECKPOINTED_BYTES_PER_TOKEN_BLOCK_HIDDEN if cfg.gradient_checkpointing else kept
    if precision != "fp32":
        per_unit //= 2
    # Blocks below the lowest trainable one need no backward (freeze), so keep nothing.
    blocks = tokens_per_micro_batch * method.learning_blocks(recipe, shape.layers) * shape.hidden * per_unit
    if not shape.hidden:  # a convolutional image model, whose "tokens" are pixels
        blocks = tokens_per_micro_batch * _CNN_BYTES_PER_PIXEL // (2 if precision != "fp32" else 1)
    if cfg.gradient_checkpointing:
        blocks += tokens_per_micro_batch * shape.hidden * kept
    head = min(tokens_per_micro_batch, chunk_tokens(shape.vocab)) * shape.vocab * 4 * _HEAD_COPIES if shape.vocab else 0
    head += method.head_gradient(shape.vocab, shape.hidden)
    blocks += method.full_size_temporaries(shape.linear_params)
    sharded = world if cfg.distributed == "fsdp" else 1
    # Early stopping keeps a copy of the best trainable weights (gathered in full on every process).
    best_copy = shape.trainable_params * 4 if cfg.early_stopping_patience else 0
    return MemoryEstimate(runtime=_RUNTIME_BYTES, weights=weights // sharded,
                          gradients=shape.trainable_params * 4 // sharded, optimizer=optimizer // sharded,
                          best_copy=best_copy, activations=blocks + head)


def available_memory(device: str) -> int:
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info()
        return free
    return psutil.virtual_memory().available


def make_plan(recipe: Recipe, shape: ModelShape, *, n_train: int, longest_example: int, device: str,
              precision: str, world: int = 1, largest: bool = False) -> TrainPlan:
    """Micro-batch, accumulation and steps. The micro-batch is the smallest divisor of the per-process
    batch that reaches the device's saturating tokens per forward pass, or else (and with `largest`:
    BatchNorm's statistics are a micro-batch's) the largest that fits. `longest_example` is in tokens,
    or in pixels for a convolutional image model."""
    cfg = recipe.train
    available = available_memory(device)
    row = recipe.data.max_length if cfg.packing else longest_example
    per_process = max(1, cfg.global_batch_size // world)

    def estimate(mb: int) -> MemoryEstimate:
        return estimate_memory(shape, recipe, mb * row, precision, world)

    micro_batch = cfg.micro_batch_size
    if micro_batch is None:
        fitting = [d for d in range(1, per_process + 1)
                   if per_process % d == 0 and estimate(d).total <= available * _MEMORY_SHARE]
        enough = [d for d in fitting if d * row >= _SATURATING_TOKENS.get(device.split(":")[0], 1024)]
        micro_batch = min(enough) if enough and not largest else max(fitting, default=1)
    micro_batch = min(micro_batch, per_process)
    accumulation = -(-per_process // micro_batch)
    steps_per_epoch = max(1, n_train // cfg.global_batch_size)
    total = cfg.max_steps or max(1, round(steps_per_epoch * cfg.epochs))
    return TrainPlan(micro_batch, accumulation, total, round(total * cfg.warmup_ratio), estimate(micro_batch),
                     available, world)


def format_plan(plan: TrainPlan, shape: ModelShape, packing: bool = False) -> str:
    gib = 1024**3
    m = plan.memory
    unit = "packed rows" if packing else "examples"
    rows = [
        ("parameters", f"{shape.total_params / 1e6:,.1f} M total, {shape.trainable_params / 1e6:,.2f} M trainable "
                       f"({100 * shape.trainable_params / shape.total_params:.2f}%)"),
        ("peak memory", f"{m.total / gib:.2f} GiB estimated, {plan.available / gib:.1f} GiB available"),
        ("  runtime", f"{m.runtime / gib:.2f} GiB"),
        ("  weights", f"{m.weights / gib:.2f} GiB"),
        ("  gradients", f"{m.gradients / gib:.2f} GiB"),
        ("  optimizer", f"{m.optimizer / gib:.2f} GiB"),
        ("  best weights", f"{m.best_copy / gib:.2f} GiB (kept for early stopping)"),
        ("  activations", f"{m.activations / gib:.2f} GiB"),
        ("batch", f"micro-batch {plan.micro_batch} {unit} x accumulation {'up to ' if packing else ''}"
                  f"{plan.accumulation}"
                  + (f" x {plan.world} processes" if plan.world > 1 else "")),
        ("steps", f"{plan.total_steps} optimizer steps, {plan.warmup_steps} warm-up"),
    ]
    return "\n".join(f"  {k:<16} {v}" for k, v in rows)
