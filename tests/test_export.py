"""`tuneforge export`: a merged folder plain transformers loads and that answers as `tuneforge generate`
does, a PEFT adapter PEFT loads, a GGUF file whose metadata the gguf package reads back, model cards,
and exports that never overwrite."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import arithmetic_rows, tiny_run_recipe, write_jsonl
from tuneforge.cli.main import main
from tuneforge.deploy.export import export_run
from tuneforge.deploy.gguf import read_metadata
from tuneforge.errors import UserError
from tuneforge.inference.run_models import RunModels
from tuneforge.inference.session import ChatSession
from tuneforge.recipe_file import validate_recipe
from tuneforge.train.run import train

QUESTIONS = ["What is the sum of two numbers?", "Return the square root of x.", "What is 3 + 4?"]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = write_jsonl(tmp / "chat.jsonl", arithmetic_rows(80))
    raw = tiny_run_recipe(tiny_model, data, "lora")
    return {"lora": train(validate_recipe(raw), tmp / "runs"),
            "full": train(validate_recipe(raw | {"name": "full", "method": "full",
                                                 "train": raw["train"] | {"learning_rate": 0.01}}), tmp / "runs"),
            "prompt": train(validate_recipe(raw | {"name": "prompt", "method": "prompt_tuning"}), tmp / "runs")}


def greedy(model, tokenizer, question: str, tokens: int = 12) -> str:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", ["lora", "full"])
def test_hf_export_loads_in_plain_transformers_and_answers_as_generate(runs, name, tmp_path):
    out = export_run(runs[name], "hf", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out)  # no peft, no tuneforge
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in key for key in model.state_dict())
    session = ChatSession(RunModels(runs[name]))
    for question in QUESTIONS:
        assert greedy(model, tokenizer, question) == session.reply([{"role": "user", "content": question}], 12)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "## Recipe" in card and f"name: {name}" in card
    assert "## Data" in card and "- train: 68 examples" in card and "Best validation loss" in card


def test_adapter_export_loads_with_peft(runs, tiny_model, tmp_path):
    from peft import AutoPeftModelForCausalLM

    out = export_run(runs["lora"], "adapter", tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    session = ChatSession(RunModels(runs["lora"]))
    assert greedy(model, AutoTokenizer.from_pretrained(out), QUESTIONS[0]) == \
        session.reply([{"role": "user", "content": QUESTIONS[0]}], 12)
    assert "library_name: peft" in (out / "README.md").read_text()


def test_export_errors_and_nothing_is_overwritten(runs, tmp_path, capsys):
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["export", str(runs["lora"]), "--format", "hf", "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and (existing / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary folder left behind
    with pytest.raises(UserError, match="has no adapter"):
        export_run(runs["full"], "adapter", tmp_path / "a")
    with pytest.raises(UserError, match="--format adapter"):
        export_run(runs["prompt"], "hf", tmp_path / "b")
    with pytest.raises(UserError, match="not a tuneforge run"):
        export_run(tmp_path, "hf", tmp_path / "c")
    assert main(["export", str(runs["lora"]), "--format", "hf", "--out", str(existing), "--overwrite"]) == 0
    assert not (existing / "keep.txt").exists() and (existing / "config.json").is_file()


@pytest.mark.e2e
def test_gguf_export_of_the_bundled_model_reads_back(tmp_path):
    """A 2-step LoRA run of the bundled model through llama.cpp's converter (fetched from PyPI once)."""
    recipe = validate_recipe({"name": "tiny-gguf", "data": {"sources": ["pydocs"], "max_length": 128,
                                                            "max_train_examples": 32},
                              "train": {"max_steps": 2, "eval_every": 2, "global_batch_size": 4, "eval_examples": 4}})
    run = train(recipe, tmp_path / "runs")
    out = export_run(run, "gguf", tmp_path / "gguf", quant="q8_0")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["Modelfile", "README.md", "tiny-gguf-q8_0.gguf"]
    meta = read_metadata(out / "tiny-gguf-q8_0.gguf")
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 7  # MOSTLY_Q8_0
    assert meta["llama.block_count"] == 30 and meta["llama.embedding_length"] == 576
    assert "<|im_start|>" in meta["tokenizer.chat_template"] and meta["tokenizer.ggml.model"] == "gpt2"
    assert (out / "Modelfile").read_text() == "FROM ./tiny-gguf-q8_0.gguf\n"
    assert "llama-cli -m" in (out / "README.md").read_text()
