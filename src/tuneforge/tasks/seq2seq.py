"""seq2seq: an encoder-decoder (T5, Flan-T5, BART, mT5, Marian) learns to write the answer from the prompt.

The prompt goes to the encoder as the model's own tokenizer encodes it (with its end-of-sequence token;
no chat template), the answer becomes the decoder's labels through the tokenizer's target side
(`text_target`: Marian's target vocabulary, BART's <s> ... </s>), and the model shifts them right behind
its own decoder-start token (T5: the pad token, BART: </s>). Examples are read one per row: the
encoder's attention spans its row, so rows are never packed.
"""

from dataclasses import dataclass

from tuneforge.tasks.base import Task, register
from tuneforge.tasks.tokens import IGNORE, bucket_length


@dataclass
class Pair:
    """A prompt's encoder tokens and its answer's decoder labels."""

    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def length(self) -> int:
        """What a step processes: encoder and decoder tokens."""
        return len(self.input_ids) + len(self.labels)

    @property
    def loss_tokens(self) -> int:
        """Every answer token is a target (the decoder-start token in front of them is the model's)."""
        return len(self.labels)


@register
class Seq2Seq(Task):
    name = "seq2seq"
    row_kinds = ("messages",)
    default_model = "flan-t5-small"
    model_class = "AutoModelForSeq2SeqLM"
    chat_template = False
    packing = False
    encoder_decoder = True

    def check_row(self, example: dict) -> str | None:
        refused = super().check_row(example)
        if refused:
            return refused
        roles = [m["role"] for m in example["messages"]]
        if roles[-1] != "assistant" or "assistant" in roles[:-1]:
            answers = roles.count("assistant")
            return (f"task seq2seq maps one prompt to one answer, and this conversation has {answers} assistant "
                    f"turn{'s' if answers != 1 else ''}{'' if roles[-1] == 'assistant' else ' and does not end with one'}. "
                    "Give one row per answer (prompt + completion), or use task: chat for conversations.")
        return None

    def refusal(self, kind: str) -> str:
        if kind != "text":
            return super().refusal(kind)
        return ("this row is raw text; task seq2seq learns from prompt / completion pairs. Map your columns, for "
                "instance `columns: {prompt: YOUR_INPUT, completion: YOUR_OUTPUT}`, or use task: causal_lm for text.")

    def source(self, example: dict) -> str:
        return prompt_text(example["messages"])

    def reference(self, example: dict) -> str:
        return example["messages"][-1]["content"]

    def encode(self, example: dict, tokenizer, max_length: int, train_on_prompt: bool = False,
               classes=None) -> Pair:
        source = tokenizer(self.source(example))["input_ids"]
        target = tokenizer(text_target=self.reference(example))["input_ids"]
        truncated = len(source) > max_length or len(target) > max_length
        if truncated:  # cut as transformers does: the text shortened, the special tokens kept
            source = tokenizer(self.source(example), truncation=True, max_length=max_length)["input_ids"]
            target = tokenizer(text_target=self.reference(example), truncation=True, max_length=max_length)["input_ids"]
        return Pair(example["id"], source, target, truncated)

    def token_lengths(self, examples: list[dict], tokenizer) -> list[int]:
        """The longer side of each example (data.max_length bounds each side)."""
        sources = tokenizer([self.source(e) for e in examples])["input_ids"]
        targets = tokenizer(text_target=[self.reference(e) for e in examples])["input_ids"]
        return [max(len(s), len(t)) for s, t in zip(sources, targets)]

    def loss_model(self, model, recipe, train: list, inputs=None):
        return seq2seq_loss_model(model, recipe.train.label_smoothing)


def prompt_text(messages: list[dict]) -> str:
    """What the encoder reads for a conversation: the system text (if any) and the prompt, a blank line
    apart, any answer left out (training, generate and the server read prompts the same way)."""
    return "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")


def collate_pairs(rows: list[Pair], pad_id: int, bucket: bool = False) -> dict:
    """Right-padded prompts with their attention mask, and the answers as labels (IGNORE past each end)."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    answer = max(len(r.labels) for r in rows)
    if bucket:
        width, answer = bucket_length(width), bucket_length(answer)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), answer), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
        attention_mask[i, :len(r.input_ids)] = 1
        labels[i, :len(r.labels)] = torch.tensor(r.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def seq2seq_loss_model(model, label_smoothing: float = 0.0):
    """The model and its decoder's cross-entropy as one module (DDP / FSDP wrap the forward that backward
    follows): summed over answer tokens, their count, and (in eval mode) how many the model ranks first."""
    import torch

    class Seq2SeqLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch: dict) -> tuple:
            losses, mask, correct = token_losses(self.model, batch, label_smoothing if self.training else 0.0,
                                                 count_correct=not self.training)
            return losses.sum(), int(mask.sum()), correct

        @staticmethod
        def collate(rows: list[Pair], pad_id: int, bucket: bool = False) -> dict:
            return collate_pairs(rows, pad_id, bucket)

    return Seq2SeqLoss()


def token_losses(model, batch: dict, label_smoothing: float = 0.0, count_correct: bool = False):
    """Cross-entropy of each answer token ([tokens], row-major), the [rows, answer] mask of where they
    are, and how many the model ranks first (when count_correct, else 0).

    The decoder's inputs are the labels shifted right behind the decoder-start token, as the model's own
    forward would make them; the logits are then scored here rather than by the model's mean loss, so the
    sums, counts and smoothing match the other tasks'. (All answer logits are held at once: a seq2seq
    answer is short next to a chat row, and T5 scales its hidden states before a tied head, which the
    chunked head of train/head_loss.py would have to copy.)"""
    import torch.nn.functional as F

    labels = batch["labels"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids, use_cache=False).logits
    mask = labels != IGNORE
    chosen, targets = logits[mask].float(), labels[mask]
    losses = F.cross_entropy(chosen, targets, reduction="none", label_smoothing=label_smoothing)
    correct = int((chosen.argmax(-1) == targets).sum()) if count_correct else 0
    return losses, mask, correct


def example_losses(model, examples: list[Pair], device: str, pad_id: int, tokens_per_batch: int = 2048,
                   autocast=None) -> tuple[list[float], list[int]]:
    """Each example's summed answer-token loss and its answer tokens, in the order given (the seq2seq
    counterpart of train/loss.py's example_losses): rows of similar length padded together."""
    import contextlib

    import torch

    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    longest = max((e.length for e in examples), default=1)
    per_batch = max(1, tokens_per_batch // longest)
    with torch.no_grad():
        for start in range(0, len(order), per_batch):
            chosen = order[start:start + per_batch]
            batch = {k: v.to(device) for k, v in collate_pairs([examples[i] for i in chosen], pad_id).items()}
            with autocast():
                losses, mask, _ = token_losses(model, batch)
            owner = mask.nonzero()[:, 0]  # row-major, like the losses
            per_row = torch.zeros(len(chosen), dtype=torch.float64, device=losses.device).index_add_(
                0, owner, losses.double())
            for j, i in enumerate(chosen):
                sums[i], counts[i] = float(per_row[j]), len(examples[i].labels)
    model.train(was_training)
    return sums, counts
