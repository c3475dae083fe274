"""One loader for every model reference: catalogue name, local folder or Hugging Face hub id."""

import json
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.models import efficientnet_lite  # noqa: F401  (registers it with transformers' auto classes)
from tuneforge.models.bundled import bundled_folder
from tuneforge.models.catalog import CATALOG
from tuneforge.models.chat_template import ensure_chat_template
from tuneforge.models.pooled_encoder import (
    POOLINGS,
    PooledEncoderConfig,
    PooledEncoderForSequenceClassification,
)
from tuneforge.tasks import TASKS

# Files needed to fine-tune and serve a causal LM; skips other frameworks' weights in hub repos.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_model(name: str) -> Path:
    """Turn a model reference into a local folder with config, weights and tokenizer."""
    entry = CATALOG.get(name)
    if entry and entry.bundled:
        return bundled_folder(entry)
    ref = entry.hub_id if entry else name
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise UserError(f"{local}: not a Hugging Face model folder (no config.json). Point model.name at a "
                            "folder written by save_pretrained, a catalogue name (tuneforge models) or a hub id.")
        return local
    return _download(ref)


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # hub errors come as many types (offline, 404, gated, DNS)
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"model {hub_id!r}: no local folder of that name and the Hugging Face hub could not "
                        f"provide it ({type(e).__name__}: {reason}). Download it where you have network and "
                        f"pass the folder: model.name: /path/to/folder") from None


def load_inputs(folder: Path, task):
    """What turns the task's rows into model inputs: the image processor for an image task, else the
    tokenizer (with a chat template when the task needs one)."""
    has_processor = (folder / "preprocessor_config.json").is_file()
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                              "tokenizer.model"))
    if task.images:
        if not has_processor:
            raise UserError(f"model.name: {folder} has no image processor (preprocessor_config.json), so it is not an "
                            f"image model; task {task.name} needs one (for instance efficientnet-lite0, or a ViT).")
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(folder)
    if has_processor and not has_tokenizer:
        raise UserError(f"model.name: {folder} is an image model (an image processor, no tokenizer); task {task.name} "
                        "reads text. For images use task: image_classification.")
    _check_architecture(folder, task)
    tokenizer = load_tokenizer(folder)
    if task.chat_template:
        ensure_chat_template(tokenizer)
    return tokenizer


def _check_architecture(folder: Path, task) -> None:
    """An encoder-decoder (T5, BART) answers only through task seq2seq, and seq2seq needs one (a run's
    adapter folder has no config of its own: its base was checked when it trained)."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        return
    encoder_decoder = bool(getattr(AutoConfig.from_pretrained(folder), "is_encoder_decoder", False))
    if encoder_decoder and not task.encoder_decoder:
        raise UserError(f"model.name: {folder} is an encoder-decoder (T5 / BART style); task {task.name} needs a "
                        "decoder-only or encoder model. For prompt -> answer rows on this model use task: seq2seq.")
    if task.encoder_decoder and not encoder_decoder:
        raise UserError(f"model.name: {folder} is not an encoder-decoder; task {task.name} needs one (T5, Flan-T5, "
                        "BART, mT5, Marian: for instance google/flan-t5-small). For a decoder-only model use task: chat.")


def patch_size(folder: Path) -> int | None:
    """A vision transformer's patch side (ViT, DeiT, BEiT: position embeddings for one input size); None
    for a convolutional model."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(folder), "patch_size", None)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: Path, dtype: torch.dtype = torch.float32, device: str = "cpu", attn_implementation: str | None = None,
               model_class: str = "AutoModelForCausalLM"):
    """A model that generates text, with the auto class its task names (a causal LM by default)."""
    import transformers

    auto = getattr(transformers, model_class)
    model = auto.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device)


# sentence-transformers' Pooling config keys -> head.pooling
_SENTENCE_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
                     "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}


def resolve_pooling(folder: Path, pooling: str) -> tuple[str, str]:
    """head.pooling with auto resolved for the model in `folder`: (pooling, why)."""
    if pooling != "auto":
        return pooling, "set in the recipe"
    modules = Path(folder) / "modules.json"
    if not modules.is_file():
        return "model", "the model's own classification head (its folder has no sentence-transformers pooling config)"
    entry = next((m for m in json.loads(modules.read_text()) if m.get("type", "").endswith(".Pooling")), None)
    config_path = Path(folder) / entry["path"] / "config.json" if entry else None
    if config_path is None or not config_path.is_file():
        return "model", "the model's own classification head (its modules.json names no Pooling config)"
    modes = [mode for key, mode in _SENTENCE_POOLING.items() if json.loads(config_path.read_text()).get(key)]
    if len(modes) != 1:
        return "model", (f"the model's own classification head ({config_path.relative_to(folder)} combines "
                         f"{' + '.join(modes) or 'no mode tuneforge pools by'})")
    return modes[0], f"{config_path.relative_to(folder)}: the model's sentence embeddings are the {modes[0]} of its tokens"


def pooled_head(recipe) -> bool:
    """Whether a resolved recipe's head is models/pooled_encoder.py's (its folder carries that code)."""
    return TASKS[recipe.task].head and recipe.head.pooling not in ("auto", "model")


def head_config(config, pooling: str):
    """A text head's config: the model's own (pooling model) or a PooledEncoderConfig around it."""
    if pooling == "model":
        return config
    if pooling not in POOLINGS:
        raise UserError(f"head.pooling: {pooling!r} is not one of model, {', '.join(POOLINGS)}.")
    dropout = getattr(config, "classifier_dropout", None)
    dropout = getattr(config, "hidden_dropout_prob", 0.0) if dropout is None else dropout
    return PooledEncoderConfig(backbone=config, pooling=pooling, classifier_dropout=dropout)


def load_with_head(folder: Path, config, model_class: str, **kwargs):
    """A pre-trained model under the task's new head (`config` says its classes): transformers' own head
    class, or the backbone under a pooled head (a PooledEncoderConfig)."""
    import transformers

    if isinstance(config, PooledEncoderConfig):
        return PooledEncoderForSequenceClassification.from_backbone(folder, config, **kwargs)
    # a checkpoint's own head (ImageNet's 1,000 classes) gives way to the task's new one
    return getattr(transformers, model_class).from_pretrained(folder, config=config, ignore_mismatched_sizes=True,
                                                              **kwargs)
