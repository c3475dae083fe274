"""A task says what is learnt from the rows: each task is one module that registers one `Task`, which
the stages ask for the rows it accepts, how a row becomes tokens, and what its evaluation does (see
methods/ for the other axis: which parameters learn)."""

from typing import ClassVar

from tuneforge.registry import Registry

TASKS = Registry()
register = TASKS.register
get_task = TASKS.__getitem__  # the recipe's `task` is validated against TASKS


class Task:
    name: ClassVar[str]
    row_kinds: ClassVar[tuple[str, ...]]
    """The normalised rows it learns from: "messages" (a conversation) and / or "text" (raw text)."""
    head: ClassVar[bool] = False
    """It learns a new head on the model (classes or a number) instead of tokens: evaluated against a
    linear probe (evaluate/heads.py), exported for transformers' text-classification pipeline."""
    generates: ClassVar[bool] = True
    """Its evaluation generates answers to the test prompts and scores them against the references."""
    default_model: ClassVar[str] = "smollm2-135m-instruct"
    """The bundled model a recipe without model.name trains (a catalogue name)."""
    default_method: ClassVar[str] = "lora"
    """The method a recipe without `method` trains with."""
    learning_rates: ClassVar[dict[str, float]] = {}
    """Its own default learning rate for a method, where the method's (sized for language models) is wrong."""
    model_class: ClassVar[str] = "AutoModelForCausalLM"
    """The transformers auto class its models load with."""
    chat_template: ClassVar[bool] = True
    """Its tokenizer needs a chat template (a model without one gets the fallback template)."""
    packing: ClassVar[bool] = True
    """Examples can be packed back to back into one row."""
    has_accuracy: ClassVar[bool] = True
    """Validation reports an accuracy next to the loss (next-token or label accuracy)."""
    stratified: ClassVar[bool] = False
    """Its splits are stratified by `stratum` when data.stratify_by is empty."""
    refused_methods: ClassVar[dict[str, str]] = {}
    """Methods it cannot be trained with, and why."""
    images: ClassVar[bool] = False
    """Its rows are images (data/images.py stores them), read by the model's image processor instead of
    a tokenizer."""
    encoder_decoder: ClassVar[bool] = False
    """Its model is an encoder-decoder (T5, BART): the prompt is encoded once and the answer decoded
    from it, instead of one token stream continued."""
    unit: ClassVar[str] = "tok"
    """What throughput counts: tokens, or images for an image task."""

    def check_row(self, example: dict) -> str | None:
        """Why this task cannot learn from a normalised row (None when it can)."""
        kind = row_kind(example)
        if kind in self.row_kinds:
            return None
        return self.refusal(kind)

    def refusal(self, kind: str) -> str:
        hint = {"labelled": " For text with a label use task: classification (or regression for numbers).",
                "image": " For images with a label use task: image_classification.",
                "messages": " For conversations use task: chat.",
                "text": " Rows need a `label` column (map yours with `columns: {label: YOUR_COLUMN}`)."}
        return (f"this row is a {kind} row, which task {self.name} does not learn from (it takes "
                f"{' or '.join(self.row_kinds)} rows).{hint[kind] if kind not in self.row_kinds else ''}")

    def stratum(self, example: dict) -> str:
        """The value splits are stratified by when the task is `stratified` and data.stratify_by is empty."""
        return ""

    def classes(self, train: list[dict]):
        """What its head predicts (tasks/labelled.py, Classes), from the training rows; None for the
        language-model tasks."""

    def head_modules(self, model) -> list[str]:
        """Names of the modules it puts on top of the pre-trained model: new weights, so every method
        trains them in full (LoRA keeps them as modules_to_save)."""
        return []

    def loss_model(self, model, recipe, train: list, inputs=None):
        """Its own loss module (forward(batch) -> loss sum, count, correct; collate(rows, pad_id, bucket)),
        or None for the next-token loss on the labels of each token (train/loss.py, LossModel).
        `train` is the encoded training split (for class weights), `inputs` the tokenizer or image processor."""

    def encode(self, example: dict, tokenizer, max_length: int, train_on_prompt: bool = False, classes=None):
        raise NotImplementedError

    def token_lengths(self, examples: list[dict], tokenizer) -> list[int]:
        """Tokens of each example as `encode` renders them, without its per-token work."""
        raise NotImplementedError

    def reference(self, example: dict) -> str:
        """The answer its evaluation compares a generated one with (for a task that `generates`)."""
        raise NotImplementedError


def row_kind(example: dict) -> str:
    """What a normalised row holds: a conversation, raw text, text with a label, or an image with one."""
    if "messages" in example:
        return "messages"
    if "image" in example:
        return "image"
    return "labelled" if "label" in example else "text"
