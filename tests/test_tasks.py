"""The task registry and the causal_lm task: raw text learnt whole, conversations refused with the
file and line, evaluation by perplexity alone; chat stays the default."""

import json
import subprocess
import sys
from typing import get_args

import pytest

from conftest import arithmetic_rows, write_jsonl
from tuneforge.errors import UserError
from tuneforge.evaluate.run import evaluate_run
from tuneforge.recipe import Recipe, Task
from tuneforge.recipe_file import validate_recipe
from tuneforge.tasks import TASKS, get_task
from tuneforge.train.run import train


def _documents(n: int) -> list[dict]:
    return [{"text": f"Document {i}: the value of item {i} is {i * 3 % 17}, and it is stored in bin {i % 5}."}
            for i in range(n)]


def test_the_recipe_accepts_exactly_the_registered_tasks_and_chat_is_the_default():
    assert get_args(Task) == tuple(TASKS) == ("chat", "causal_lm", "seq2seq", "classification",
                                              "regression", "image_classification")
    assert Recipe().task == "chat"
    with pytest.raises(UserError, match="task"):
        validate_recipe({"task": "chatt"})


def test_causal_lm_learns_every_token_of_the_text(tiny_tokenizer):
    row = {"id": "a", "text": "the value of item 3 is 9"}
    enc = get_task("causal_lm").encode(row, tiny_tokenizer, 64)
    ids = tiny_tokenizer(row["text"] + tiny_tokenizer.eos_token, add_special_tokens=True)["input_ids"]
    assert enc.input_ids == enc.labels == ids and enc.loss_tokens == len(ids) - 1
    assert get_task("chat").encode(row, tiny_tokenizer, 64) == enc  # text rows in chat are learnt the same way
    assert get_task("causal_lm").token_lengths([row], tiny_tokenizer) == [len(ids)]


def test_a_causal_lm_run_trains_on_text_and_is_evaluated_by_perplexity(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", _documents(120))
    recipe = validate_recipe({"name": "docs", "task": "causal_lm", "model": {"name": str(tiny_model)},
                              "data": {"sources": [str(data)], "val_ratio": 0.1, "test_ratio": 0.1},
                              "train": {"global_batch_size": 8, "max_steps": 12, "eval_every": 6,
                                        "learning_rate": 5e-3, "precision": "fp32", "compile": False},
                              "eval": {"max_samples": 4, "max_new_tokens": 8}})
    run = train(recipe, tmp_path / "runs")
    assert json.loads((run / "data" / "manifest.json").read_text())["settings"]["task"] == "causal_lm"
    encoding = json.loads((run / "data" / "encoding.json").read_text())
    documents = len((run / "data" / "train.jsonl").read_text().splitlines())
    assert encoding["loss_tokens"]["train"] == encoding["tokens"]["train"] - documents  # all but each first token
    metrics = evaluate_run(run)
    assert metrics["generated"] == 0 and (run / "eval" / "samples.jsonl").read_text() == ""
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert metrics["paired"]["perplexity"]["wins"] > metrics["paired"]["perplexity"]["losses"]


def test_causal_lm_refuses_conversations_with_file_and_line(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "mixed.jsonl", _documents(3) + arithmetic_rows(1) + _documents(3))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: causal_lm\nmodel: {{name: {tiny_model}}}\ndata: {{sources: [{data}]}}\n")
    out = subprocess.run([sys.executable, "-m", "tuneforge", "data", "prepare", str(recipe), "--out",
                          str(tmp_path / "prepared")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"{data}:4:" in out.stderr and "task causal_lm learns from raw text" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "prepared").exists()


def test_causal_lm_refuses_augmentation_which_makes_conversations(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: causal_lm\ndata:\n  sources: [docs.jsonl]\n  augment:\n    synthetic: 10\n")
    from tuneforge.recipe_file import load_recipe

    with pytest.raises(UserError, match=r"r.yaml:4: data.augment makes conversations, and task causal_lm"):
        load_recipe(recipe)
