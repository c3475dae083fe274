import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from tuneforge.cli.catalog_table import memory_gib
from tuneforge.errors import UserError
from tuneforge.models.catalog import CATALOG, DEFAULT_MODEL
from tuneforge.models.loader import load_model, load_tokenizer, resolve_model


def test_local_folder_goes_through_the_same_loader(tiny_model, tmp_path):
    """A local folder resolves to itself; the loader gives exactly its saved weights and its tokenizer,
    and a tokenizer without a pad token gets the end-of-sequence token as pad."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    folder = resolve_model(str(tiny_model))
    assert folder == tiny_model
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    saved = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert saved.keys() <= state.keys() and all(torch.equal(state[k], v) for k, v in saved.items())
    text = "What is the sum of two numbers?"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == Tokenizer.from_file(
        str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    no_pad = tmp_path / "no-pad"
    shutil.copytree(folder, no_pad)
    config = json.loads((no_pad / "tokenizer_config.json").read_text())
    (no_pad / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "pad_token"}))
    assert AutoTokenizer.from_pretrained(no_pad).pad_token is None
    assert load_tokenizer(no_pad).pad_token == tokenizer.eos_token == "<|im_end|>"


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))


def test_unreachable_hub_id_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        resolve_model("no-such-org/no-such-model")
    assert "\n" not in str(e.value) and "pass the folder: model.name: /path/to/folder" in str(e.value)


def test_catalogue_memory_grows_with_size_and_method():
    entries = sorted(CATALOG.values(), key=lambda e: e.params)
    decoders = [e for e in entries if e.kind == "decoder"]
    entries = [e for e in entries if e.kind != "image"]  # no memory estimate for images yet
    assert decoders[0].name == DEFAULT_MODEL and CATALOG[DEFAULT_MODEL].bundled
    for entry in entries:
        # LoRA saves gradients and optimizer state (4 x 3 bytes a weight) but keeps more activations
        # (benchmarks/plan_accuracy.py): it needs less memory once weights dominate, from ~300M up.
        if entry.params > 300e6:
            assert memory_gib(entry, "lora") < memory_gib(entry, "full"), entry.name
    for kind in ("decoder", "encoder", "seq2seq"):  # within a kind (their shapes differ), bigger needs more
        full = [memory_gib(e, "full") for e in entries if e.kind == kind]
        assert full == sorted(full), kind
