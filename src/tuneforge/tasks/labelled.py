"""Text (or a text pair) with a target, for the tasks that put a head on a pre-trained model
(tasks/classification.py, tasks/regression.py): the row as the model's own tokenizer encodes it
(special tokens, segment ids; no chat template), the batch, and the head's loss.

Each example has one target, so each counts as one "loss token": the loop normalises a step's loss over
its examples the way it normalises a language model's over its answer tokens (train/loop.py).
"""

from dataclasses import dataclass

from tuneforge.tasks.base import Task
from tuneforge.tasks.tokens import bucket_length

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


@dataclass
class Classes:
    """What a head predicts: its output names (the class names; one name for regression) and the
    problem type, as transformers' config spells it."""

    names: list[str]
    problem: str

    def configure(self, config, pad_id: int | None) -> None:
        config.num_labels = len(self.names)
        config.id2label = dict(enumerate(self.names))
        config.label2id = {name: i for i, name in enumerate(self.names)}
        config.problem_type = self.problem
        if getattr(config, "pad_token_id", None) is None:  # decoders find each row's last token by it
            config.pad_token_id = pad_id


@dataclass
class Labelled:
    id: str
    input_ids: list[int]
    token_type_ids: list[int] | None
    target: int | float | list[float]  # class index, number, or one 0/1 per class (multi-label)
    truncated: bool
    loss_tokens: int = 1

    @property
    def length(self) -> int:
        return len(self.input_ids)


NO_PROMPT = ("a soft prompt conditions generation; a head reads the encoder's output. Use lora, full or "
             "freeze.")


class HeadTask(Task):
    """What the tasks with a head share: labelled rows, an encoder (or decoder) with a sequence
    classification head, no chat template, no packing, the head learning in full."""

    row_kinds = ("labelled",)
    head = True
    generates = False
    default_model = "all-minilm-l6-v2"
    model_class = "AutoModelForSequenceClassification"
    chat_template = False
    packing = False
    refused_methods = {"prompt_tuning": NO_PROMPT}

    def check_row(self, example: dict) -> str | None:
        return super().check_row(example) or self.check_label(example["label"])

    def check_label(self, label) -> str | None:
        """Why this label cannot be learnt (None when it can)."""
        raise NotImplementedError

    def encode(self, example: dict, tokenizer, max_length: int, train_on_prompt: bool = False, classes=None):
        return encode_labelled(example, tokenizer, max_length, self.target(example, classes))

    def target(self, example: dict, classes: Classes):
        """The row's target as the head learns it: a class index, 0 / 1 per class, or the number."""
        raise NotImplementedError

    def head_modules(self, model) -> list[str]:
        return head_modules(model)

    def collator(self, inputs, problem: str, recipe=None):
        """For rows that are not token ids: a function (rows, training) -> batch with `labels` (training
        batches augmented as `recipe` says); None for text, which collate_labelled pads."""
        return None

    def token_lengths(self, examples: list[dict], tokenizer) -> list[int]:
        return labelled_lengths(examples, tokenizer)


def encode_labelled(example: dict, tokenizer, max_length: int, target) -> Labelled:
    pair = example.get("text_pair")
    enc = tokenizer(example["text"], pair)
    truncated = len(enc["input_ids"]) > max_length
    if truncated:  # the pair's longer side is cut first (transformers' longest_first)
        enc = tokenizer(example["text"], pair, truncation=True, max_length=max_length)
    return Labelled(example["id"], enc["input_ids"], enc.get("token_type_ids"), target, truncated)


def labelled_lengths(examples: list[dict], tokenizer) -> list[int]:
    """Tokens of each example with the model's special tokens, in one batched tokenisation."""
    inputs = [(e["text"], e["text_pair"]) if e.get("text_pair") else e["text"] for e in examples]
    return [len(enc.ids) for enc in tokenizer.backend_tokenizer.encode_batch_fast(inputs, add_special_tokens=True)]


def head_loss_model(model, problem: str, label_smoothing: float = 0.0, class_weights=None, collator=None):
    """The model and its head's loss as one module (DDP / FSDP wrap the forward that backward follows).
    `collator(rows, training)` makes its batches when the rows are not token ids (images)."""
    import torch
    import torch.nn.functional as F

    class HeadLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("class_weights", class_weights, persistent=False)

        def forward(self, batch: dict) -> tuple:
            """Summed loss over the batch's examples, their count, and (in eval mode) how many the
            model gets right (the top class; for multi-label every class on the right side of 0.5)."""
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits, y = self.model(**inputs).logits.float(), batch["labels"]
            if problem == REGRESSION:
                return ((logits.squeeze(-1) - y) ** 2).sum(), len(y), 0
            if problem == MULTI:
                loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1).sum()
                right = ((logits > 0) == (y > 0.5)).all(-1)
            else:
                loss = F.cross_entropy(logits, y, weight=self.class_weights, reduction="sum",
                                       label_smoothing=label_smoothing if self.training else 0.0)
                right = logits.argmax(-1) == y
            return loss, len(y), 0 if self.training else int(right.sum())

        def train(self, mode: bool = True):
            """A frozen BatchNorm layer (freeze, LoRA) keeps its pre-trained statistics: in training mode it
            would still overwrite its running mean and variance with the new data's."""
            super().train(mode)
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters()):
                    m.eval()
            return self

        def collate(self, rows: list[Labelled], pad_id: int, bucket: bool = False) -> dict:
            if collator is not None:
                return collator(rows, self.training)
            return collate_labelled(rows, pad_id, problem, bucket)

    return HeadLoss()


def collate_labelled(rows: list[Labelled], pad_id: int, problem: str, bucket: bool = False) -> dict:
    """Right-padded rows with their attention mask (and segment ids), the targets as `labels`."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    width = bucket_length(width) if bucket else width
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
        attention_mask[i, :len(r.input_ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if rows[0].token_type_ids is not None:
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            token_type_ids[i, :len(r.token_type_ids)] = torch.tensor(r.token_type_ids)
        batch["token_type_ids"] = token_type_ids
    dtype = torch.long if problem == SINGLE else torch.float32
    batch["labels"] = torch.tensor([r.target for r in rows], dtype=dtype)
    return batch


def head_modules(model) -> list[str]:
    """The names (as PEFT's modules_to_save takes them) of the model's new head: a classifier / score
    layer, and an encoder's pooler, which the pre-trained checkpoint may lack or never trained for this."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_children()}
    base = getattr(model, model.base_model_prefix, None)
    if base is not None and hasattr(base, "pooler") and base.pooler is not None:
        names.add("pooler")
    return sorted(names & {"classifier", "score", "pooler"})
