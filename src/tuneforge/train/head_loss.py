"""The LM head and cross-entropy together, a chunk of tokens at a time, with the gradient computed on the way.

Plain autograd keeps the [tokens, vocab] logits alive until backward, several times over (the head's
output, its fp32 copy, log-softmax, and the gradient of each). Measured peak for 2,048 loss tokens in
bf16 autocast: +1.2 GB with SmolLM2's 49,152-token vocabulary, +3.7 GB with Qwen2.5's 151,936; this way
+0.23 and +0.30 GB (docs/performance-training.md). Here the loss is a sum over tokens, so each chunk's
gradient (softmax minus the smoothed one-hot target) is final as soon as its logits exist: forward
computes it, multiplies it into the gradients for the hidden states and the head's weights, and frees
the chunk. Only those gradients are kept for backward, which scales them by the incoming gradient. The
products are the ones autograd would do (logits in the compute dtype, softmax in fp32), so results equal
the unchunked loss to rounding. The same technique as Liger-Kernel's fused linear cross-entropy, written
here in PyTorch because Liger's is Triton (GPU only). Training steps are as fast as with the full logits
(docs/performance-training.md: in-process A/B, LoRA and full fine-tuning).
"""

import torch

from tuneforge.runtime.hardware import matmul_shapes_cached

CHUNK_BYTES = 32 * 2**20  # fp32 logits per chunk; >= 64 tokens a chunk keeps the head's matmul efficient
ROWS_MULTIPLE = 16  # where matmul shapes are cached: up to 15 rows of zeros, ~0.4% of a short LoRA step


def head_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                       label_smoothing: float = 0.0, count_correct: bool = False) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy of head(hidden) against targets ([tokens, features], [tokens]), and how many
    targets the head ranks first when count_correct (else 0). Differentiable in hidden and the head's
    weight / bias, without ever holding all logits."""
    weight, bias = head.weight, head.bias
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    chunk = chunk_tokens(weight.shape[0])
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    wants = [torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias)]
    loss = _HeadCrossEntropy.apply(hidden, weight, bias, targets, label_smoothing, dtype, chunk,
                                   correct if count_correct else None, wants)
    return loss, int(correct)


def chunk_tokens(vocab: int) -> int:
    return max(64, CHUNK_BYTES // (4 * vocab))


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, smoothing: float, dtype, chunk: int, correct, wants):
        # wants: which of hidden, weight, bias need a gradient (forward itself runs without grad mode)
        rows_multiple = ROWS_MULTIPLE if matmul_shapes_cached(hidden.device.type, dtype) else 1
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            d_hidden = torch.empty_like(hidden) if wants[0] else None
            d_weight = d_bias = None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                t = targets[start:start + chunk]
                n = len(t)
                # the last chunk padded with zero rows to a multiple of ROWS_MULTIPLE (few matmul shapes)
                h = torch.nn.functional.pad(hidden[start:start + n].to(dtype), (0, 0, 0, -n % rows_multiple))
                padded = torch.nn.functional.linear(h, w, b).float()
                logits = padded[:n]
                if correct is not None:
                    correct += (logits.argmax(-1) == t).sum()
                lse = logits.logsumexp(-1)
                nll = lse - logits.gather(1, t[:, None]).squeeze(1)
                if smoothing:
                    nll = (1 - smoothing) * nll + smoothing * (lse - logits.mean(-1))
                total += nll.sum()
                if not any(wants):
                    continue
                logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                logits[torch.arange(n, device=t.device), t] -= 1 - smoothing
                if smoothing:
                    logits -= smoothing / logits.shape[1]
                padded[n:] = 0  # the padding rows carry no gradient
                g = padded.to(dtype)
                if d_hidden is not None:
                    d_hidden[start:start + n] = (g @ w)[:n]
                if wants[1]:  # the first chunk's product becomes the buffer: no zero-filled 4 x vocab x width bytes
                    d_weight = _accumulate(d_weight, g.t() @ h)
                if wants[2]:
                    d_bias = _accumulate(d_bias, g.sum(0))
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        # Each saved gradient times the incoming one, in its tensor's dtype (None where none was wanted);
        # in place, as nothing else holds them (so the graph can be back-propagated once, as training does).
        grads = [None if d is None else d.mul_(grad).to(dtype) for d, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return *grads, None, None, None, None, None, None


def _accumulate(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    """Sum of chunk gradients in fp32."""
    return part.float() if total is None else total.add_(part)
