"""The typed recipe: every key a run understands, its default, and what it means.

A recipe is YAML (read by recipe_file.py: unknown keys and bad values are errors that name the file,
line and key). The resolved recipe (every default filled in) is printed at start and saved as
runs/<name>/recipe.yaml.
"""

import codecs
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneforge.methods import METHODS
from tuneforge.tasks import TASKS

# What is learnt is a registered task (tasks/), which parameters learn a registered method (methods/).
Task = Literal[tuple(TASKS)]
Method = Literal[tuple(METHODS)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelSection(Section):
    name: str | None = None
    """A catalogue name (see `tuneforge models`), a local Hugging Face folder, or a hub id; empty means
    the task's default model (bundled: smollm2-135m-instruct for chat and causal_lm, all-minilm-l6-v2 for
    classification and regression, efficientnet-lite0 for image_classification; from the hub:
    flan-t5-small for seq2seq)."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Override the model's own dropout (attention, hidden, embedding); empty keeps its config's value."""


Role = Literal["system", "user", "assistant"]
Split = Literal["train", "val", "test"]
RowFormat = Literal["auto", "text", "prompt_completion", "alpaca", "messages", "sharegpt", "preference", "labelled", "image"]


class SourceSpec(Section):
    path: str
    """A file (.jsonl, .json, .csv, .tsv, .parquet, .txt/.md), a folder of text files, a folder written by
    `datasets`' save_to_disk, a Hugging Face hub data set id (owner/name, needs network), `pydocs` (the
    built-in chat set) or `pydocs-modules` (its docstrings labelled with their package: a classification set)."""
    format: RowFormat = "auto"
    """Row shape; `auto` detects it per row from the column names."""
    columns: dict[str, str] = {}
    """Your column for each field the format needs, for instance {prompt: question, completion: answer}."""
    roles: dict[str, Role] = {}
    """Extra role names and what they mean, for instance {agent: assistant, customer: user}."""
    weight: float = Field(1.0, gt=0.0)
    """Oversampling of this source's training rows: 2 repeats each row twice, 1.5 repeats half of them."""
    split: Split | None = None
    """Put every row of this source into this split instead of splitting by ratio."""
    encoding: str | None = None
    """Text encoding; empty means UTF-8, or what the file's byte-order mark says (UTF-16/32)."""
    text_unit: Literal["auto", "file", "line", "block"] = "auto"
    """For text files: one example per file, per line, or per blank-line-separated block; `auto` is
    `file` for a folder and `block` for a single file."""
    json_field: str | None = None
    """For a JSON object file: the key of the list of rows; empty means the first list found."""
    hf_split: str | None = None
    """For a saved `datasets` folder or a hub data set: which split to read (default `train`)."""
    hf_config: str | None = None
    """For a hub data set: the configuration name, if it has several."""
    max_rows: int | None = Field(None, ge=1)
    """Read only this source's first rows (a quick trial on a large set); data.max_train_examples takes
    a seeded sample of the training split instead."""

    @field_validator("path")
    @classmethod
    def _a_path(cls, value: str) -> str:
        if not value.strip() or "\0" in value:
            raise ValueError("a source needs a path: a file, a folder, a hub data set id or `pydocs`")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        try:
            if value is not None:
                codecs.lookup(value)
            return value
        except (LookupError, ValueError):
            raise ValueError(f"{value!r} is not a text encoding Python knows (for instance utf-8, latin-1, "
                             "cp1252, utf-16)") from None


class CleanSection(Section):
    unicode_nfc: bool = True
    """Normalise text to Unicode NFC (one code point sequence per visible character)."""
    whitespace: bool = True
    """Remove control and zero-width characters, unify line ends, strip trailing spaces and runs of
    blank lines (indentation inside lines is kept)."""
    strip_html: bool = False
    """Remove HTML tags (and script/style content) and decode entities."""
    pii: bool = False
    """Replace e-mail addresses, phone numbers, IP addresses and card numbers with [EMAIL], [PHONE],
    [IP_ADDRESS], [CARD_NUMBER]."""
    pii_patterns: dict[str, str] = {}
    """More PII patterns: placeholder name -> regular expression, for instance {EMPLOYEE_ID: 'EMP-\\d{6}'}."""
    min_tokens: int | None = Field(None, ge=1)
    """Drop examples shorter than this many tokens (rendered with the chat template)."""
    max_tokens: int | None = Field(None, ge=1)
    """Drop (rather than truncate) examples longer than this many tokens."""
    dedup_exact: bool = True
    """Drop rows whose normalised text (case-folded, whitespace collapsed) repeats an earlier row."""
    dedup_near: bool = True
    """Drop rows that nearly repeat an earlier row (MinHash LSH over word n-grams)."""
    near_threshold: float = Field(0.8, gt=0.0, lt=1.0)
    """Estimated Jaccard similarity of word n-grams above which two rows are near duplicates."""
    near_ngram: int = Field(3, ge=1)
    """Words per n-gram for near-duplicate detection."""
    leakage_check: bool = True
    """Remove val/test rows that exactly or nearly duplicate a training row."""


class AugmentSection(Section):
    synthetic: int = Field(0, ge=0)
    """New training examples to generate self-instruct style: the model writes a question like a few
    seed examples, then answers it. Synthetic rows never enter val or test."""
    paraphrases: int = Field(0, ge=0)
    """Training prompts to paraphrase with the model (each paraphrase keeps the original answer)."""
    model: str | None = None
    """Model that writes them; empty means the recipe's model."""
    seeds_per_prompt: int = Field(3, ge=1)
    """Seed examples shown to the model for each synthetic question."""
    temperature: float = Field(0.8, gt=0.0)
    """Sampling temperature for new questions and paraphrases."""
    max_new_tokens: int = Field(128, ge=8)
    """Most tokens per generated question or answer."""


class ImageSection(Section):
    """Image rows (task: image_classification): how they are checked, deduplicated and fed to the model."""

    min_side: int = Field(16, ge=1)
    """Images smaller than this on a side are invalid rows."""
    convert_modes: bool = True
    """Grayscale, palette, CMYK and transparent images become RGB (alpha on white); false makes them errors."""
    near_difference: float = Field(3.0, ge=0.0, le=255.0)
    """Two images whose perceptual hashes nearly agree count as near duplicates (and as leakage across
    splits) when their 16 x 16 grayscale thumbnails differ by at most this many grey levels on average."""
    size: int | None = Field(None, ge=16, le=4096)
    """Side of the square the model sees, in pixels. Empty means the model's own size, or less when the
    training images are much smaller (data/defaults.py, image_size)."""
    augment: bool = True
    """Random resized crops and horizontal flips of the training images (never of val / test)."""
    crop_scale: float = Field(0.5, gt=0.0, le=1.0)
    """Smallest share of an image's area a random crop keeps."""
    flip: bool = True
    """Flip training images left-right at random (turn off for text, digits, or anything with a handedness)."""


class DataSection(Section):
    sources: list[SourceSpec] = [SourceSpec(path="pydocs")]
    """Where rows come from: a list of paths, or of {path, format, columns, weight, split, ...}."""
    system_prompt: str | None = None
    """System message added to chat examples that have none."""
    skip_invalid: bool = False
    """Skip invalid rows (counted, and written with the reason to rejects.jsonl) instead of stopping."""
    max_row_chars: int = Field(100_000, ge=100)
    """Rows with more characters than this are invalid (a sign of a broken export)."""
    val_ratio: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of examples held out for validation loss and early stopping."""
    test_ratio: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of examples held out for `tuneforge eval`."""
    stratify_by: str | None = None
    """Column whose values each get the val/test ratios exactly (for instance a category or label)."""
    clean: CleanSection = CleanSection()
    augment: AugmentSection = AugmentSection()
    image: ImageSection = ImageSection()
    max_length: int | None = Field(None, ge=16)
    """Tokens per example in training; longer examples are cut (the report counts how many). Empty means
    the training examples' 99th percentile, rounded up to 64, within the model's context and 2048."""
    train_on_prompt: bool = False
    """Put loss on prompt / user tokens too, not only on the assistant's answer."""
    max_train_examples: int | None = Field(None, ge=1)
    """Use at most this many training examples (a fixed, seeded subset)."""

    @field_validator("sources", mode="before")
    @classmethod
    def _paths_as_sources(cls, value):
        """`sources: file.jsonl` and `sources: [a.csv, {path: b.jsonl, weight: 2}]` are shorthands."""
        value = [value] if isinstance(value, (str, dict)) else value
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value


class LoraSection(Section):
    """Used by the methods lora, rslora (rank-stabilised scale alpha / sqrt(r)), dora (weight-decomposed:
    a learned magnitude per output) and qlora (LoRA over a 4-bit NF4 base, needs bitsandbytes)."""

    r: int = Field(16, ge=1)
    """Rank of the low-rank update."""
    alpha: int = Field(32, ge=1)
    """Scale of the update (applied as alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input. Off by default: each adapted layer then draws its own mask over
    its input, which took 20% of a LoRA step on the bundled model (benchmarks/train_speed.py)."""
    target_modules: Annotated[list[str], Field(min_length=1)] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (for instance [q_proj, v_proj]), regular expressions over full module
    names, or `all-linear` (every linear layer except the output head)."""


class FreezeSection(Section):
    """Used by the methods freeze and gradual_unfreeze."""

    trainable_blocks: int = Field(2, ge=1)
    """freeze: train the last N transformer blocks and the final norm; everything else is frozen."""
    frozen_modules: list[str] = []
    """freeze: instead of counting blocks, freeze the parameters whose names match any of these regular
    expressions and train all others, for instance ['embed_tokens', 'layers\\.([0-9]|1[0-9])\\.']."""
    train_embeddings: bool = False
    """freeze / gradual_unfreeze: also train the token embeddings (and a head tied to them)."""
    unfreeze_every: int = Field(20, ge=1)
    """gradual_unfreeze: start with the last block and the final norm (and an untied head), and unfreeze
    one more block, from the top down, every N optimizer steps."""


class PromptTuningSection(Section):
    virtual_tokens: int = Field(20, ge=1)
    """Learned soft-prompt vectors put in front of every example."""
    init_text: str | None = "Answer the question about the Python standard library accurately."
    """Start the soft prompt from the embeddings of this text (better than random); empty = random."""


class TrainSection(Section):
    learning_rate: float | None = Field(None, gt=0.0)
    """Peak learning rate; empty means the method's default (full 3e-5, freeze 1e-4, lora 1e-3, ...)."""
    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    """adamw (fused kernel where available), sgd (with momentum) or adafactor (factored second moments:
    far less optimizer memory for full fine-tuning)."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """sgd: momentum."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning rate after the warm-up: cosine decay, linear decay (to min_lr_ratio) or constant."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Weight decay, applied to weight matrices only (not biases, norms or embeddings' norms)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of each target's probability spread over the vocabulary (training loss only)."""
    global_batch_size: int = Field(16, ge=1)
    """Examples per optimizer step; split into micro-batches x gradient accumulation."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Examples per forward pass; empty means derived from available memory."""
    max_steps: int | None = Field(None, ge=1, le=10**9)
    """Optimizer steps to run; empty means `epochs` passes over the training split."""
    epochs: float | None = Field(None, gt=0.0, le=10_000)
    """Passes over the training split when `max_steps` is empty; empty means chosen from the training
    split's size: 3, more for under 34 examples (training sees at least 100), fewer for over 8,333 (at
    most 25,000), as OpenAI's fine-tuning API chooses (data/defaults.py)."""
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of steps with a linear learning-rate warm-up; the schedule follows."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Cosine and linear decay end at this share of the peak learning rate."""
    packing: bool | None = None
    """Pack each step's examples into full rows (best-fit decreasing) with position ids restarting per
    example, so examples never attend to each other: no padding, the same gradient. Empty means on,
    except for prompt_tuning (its soft prompt goes in front of each example)."""
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the gradient norm to this value; empty disables clipping."""
    eval_every: int = Field(50, ge=1)
    """Compute validation loss every N optimizer steps (and at the end)."""
    eval_examples: int = Field(64, ge=1)
    """Validation examples used for each validation loss (a fixed subset)."""
    early_stopping_patience: int | None = Field(3, ge=1)
    """Stop after this many validations without improvement and restore the best weights;
    empty disables early stopping."""
    early_stopping_metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    """Validation metric that decides the best weights: loss (lower is better) or next-token accuracy
    on the answer tokens (higher is better)."""
    save_every: int = Field(100, ge=1)
    """Write a checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep (the best one is kept as well)."""
    log_every: int = Field(5, ge=1)
    """Write a metrics.jsonl line every N optimizer steps."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto` uses bf16 autocast on GPUs and CPUs with bf16 instructions, fp32 otherwise."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: much less memory, about a third more compute."""
    compile: Literal["auto"] | bool = "auto"
    """torch.compile each transformer block: about +8% tokens/s for LoRA, +3% for full fine-tuning on a
    CPU, for about a minute of compiling. `auto` compiles when the run is long enough to pay that back
    and keeps it only if the compiled steps are measured faster; true always, false never."""
    threads: int | None = Field(None, ge=1, le=4096)
    """CPU threads for torch; empty means the number of physical cores."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun / accelerate launch with several processes: replicate the model (ddp) or shard
    weights, gradients and optimizer state across processes (fsdp)."""
    report_to: list[Literal["tensorboard", "mlflow"]] = []
    """Also log metrics to TensorBoard (runs/<name>/tensorboard) and/or MLflow; metrics.jsonl is always written."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking store; empty means a SQLite database next to the run folders (runs/mlflow.db)."""


class HeadSection(Section):
    """Used by the tasks classification and regression (a new head on the pre-trained model)."""

    class_weights: Literal["none", "balanced"] = "none"
    """balanced: weigh each class's loss by examples / (classes x its examples), so rare classes count as
    much as common ones (for imbalanced labels)."""
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Multi-label: a class is predicted when its probability is above this."""
    init: Literal["random", "probe"] = "random"
    """How the new head starts: random (transformers' initialisation) or probe (a linear probe fitted on
    the pre-trained model's features of the training rows, then everything fine-tuned: LP-FT)."""
    pooling: Literal["auto", "model", "mean", "max", "cls", "last"] = "auto"
    """Text heads: what the head reads of the token states. model: the model's own classification head
    (BERT: the first token through its pooler; a decoder: the last token); mean / max: over the tokens;
    cls: the first token, last: the last one, without a pooler. auto: what the model folder's
    sentence-transformers pooling config (1_Pooling/config.json) says its embeddings use, else model.
    A pooled model saves its code with it (pipeline(..., trust_remote_code=True) loads it)."""


class EvalSection(Section):
    max_samples: int = Field(40, ge=1)
    """Test prompts to generate answers for (base and tuned); perplexity uses the whole test split."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Most tokens generated per answer (greedy decoding). Empty means the test answers' 95th percentile
    in tokens, rounded up to 16, at most 512."""
    batch_size: int = Field(8, ge=1)
    """Prompts generated together."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Precision of evaluation: auto is bf16 on GPUs and CPUs with bf16 instructions (1.6x faster here,
    perplexity within 0.1% of fp32), else fp32. Base and tuned always share it."""
    general_text: str | None = None
    """General text outside your domain for the forgetting check: a .jsonl file with a "text" field per
    line or a .txt / .md file (paragraphs separated by blank lines). Empty: prose from the Python
    language reference that ships with tuneforge."""
    forgetting_threshold: float = Field(0.10, gt=0.0)
    """Flag forgetting when perplexity on the general text rises by more than this share (0.10 = 10%)."""


class Recipe(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Run name: the folder under runs/ (a free name is chosen if it exists)."""
    seed: int = Field(0, ge=0, lt=2**63)
    """Seed for data order, subsets, adapter initialisation and dropout."""
    task: Task = "chat"
    """What is learnt: chat (assistant answers in conversations, through the chat template; text rows
    learnt whole), causal_lm (raw text only, every token: continued pre-training), classification
    (a label or labels per text, a new head), regression (a number per text, a new head),
    image_classification (a label or labels per image, a new head) or seq2seq (an encoder-decoder such
    as T5 or BART writes the answer to a prompt)."""
    method: Method | None = None
    """full (every weight), freeze (the last blocks), gradual_unfreeze (blocks unfrozen from the top
    during training), lora, rslora, dora, qlora (adapters) or prompt_tuning (a learned soft prompt).
    Empty means the task's default: lora, or full for image_classification (a 4.7 M-parameter model)."""
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    lora: LoraSection = LoraSection()
    freeze: FreezeSection = FreezeSection()
    prompt_tuning: PromptTuningSection = PromptTuningSection()
    head: HeadSection = HeadSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _task_default_model(self):
        if self.model.name is None:
            self.model.name = TASKS[self.task].default_model
        if self.method is None:
            self.method = TASKS[self.task].default_method
        return self

    def learning_rate(self) -> float:
        return (self.train.learning_rate or TASKS[self.task].learning_rates.get(self.method)
                or METHODS[self.method].learning_rate)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
