"""One loader for every model reference: catalogue name, local folder or Hugging Face hub id."""

from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.models.bundled import bundled_folder
from tuneforge.models import efficientnet_lite  # noqa: F401  (registers it with transformers' auto classes)
from tuneforge.models.catalog import CATALOG
from tuneforge.models.chat_template import ensure_chat_template

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
