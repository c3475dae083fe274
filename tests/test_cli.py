"""The command line as a user meets it: a real subprocess, exit codes, messages, nothing half-written."""

import os
import subprocess
import sys

import pytest

from conftest import arithmetic_rows, write_jsonl
from tuneforge.cli.main import EXAMPLES
from tuneforge.inference.session import ChatSession

COMMANDS = list(EXAMPLES)  # every command and subcommand has an example


def tuneforge(*args, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, tmp_path):
    out = tuneforge(*command.split(), "--help", cwd=tmp_path)
    assert out.returncode == 0 and "example:" in out.stdout and f"tuneforge {command}" in out.stdout


def test_models_lists_the_catalogue(tmp_path):
    out = tuneforge("models", cwd=tmp_path)
    assert out.returncode == 0
    assert out.stderr == ""
    assert "smollm2-135m-instruct *" in out.stdout and "Apache-2.0" in out.stdout and "LoRA GiB" in out.stdout


def test_version_and_runs_ls_before_the_first_run(tmp_path):
    from importlib.metadata import version

    out = tuneforge("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"tuneforge {version('tuneforge')}"
    out = tuneforge("runs", "ls", cwd=tmp_path)  # no runs/ folder yet
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.splitlines()[0].split()[:3] == ["name", "model", "method"] and "no runs in runs yet" in out.stdout
    out = tuneforge("runs", "ls", "--runs-dir", "typo", cwd=tmp_path)  # a folder named but missing
    assert out.returncode == 2 and "typo: no such folder" in out.stderr


def _recipe(tmp_path, tiny_model, data, extra=""):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: cli\nmodel:\n  name: {tiny_model}\ndata:\n  sources: [{data}]\n"
                    f"train:\n  global_batch_size: 4\n  max_steps: 2\n{extra}")
    return path


BAD_INPUTS = {
    "missing recipe": (lambda tmp, model: ["train", "nope.yaml"], "nope.yaml: recipe file not found"),
    "unknown key": (lambda tmp, model: ["train", str(_recipe(tmp, model, tmp / "d.jsonl", "  warmup: 3\n"))],
                    "recipe.yaml:9: unknown key 'train.warmup'"),
    "wrong type": (lambda tmp, model: ["train", str(_recipe(tmp, model, tmp / "d.jsonl")), "--set",
                                       "train.max_steps=lots"], "train.max_steps: Input should be a valid integer"),
    "missing data": (lambda tmp, model: ["train", str(_recipe(tmp, model, tmp / "absent.jsonl"))],
                     "absent.jsonl: no such file or folder"),
    "malformed line": (lambda tmp, model: ["train", str(_recipe(tmp, model, write_jsonl(
        tmp / "bad.jsonl", arithmetic_rows(3) + ['{"messages": oops}'])))], "bad.jsonl:4: not valid JSON"),
    "no usable field": (lambda tmp, model: ["train", str(_recipe(tmp, model, write_jsonl(
        tmp / "odd.jsonl", [{"question": "q"}])))], "odd.jsonl:1: no known format; found columns ['question']"),
    "empty data": (lambda tmp, model: ["train", str(_recipe(tmp, model, write_jsonl(tmp / "e.jsonl", [])))],
                   "e.jsonl: no rows"),
    "unreachable hub id": (lambda tmp, model: ["train", str(_recipe(tmp, "no-such-org/no-such-model",
                                                                    tmp / "d.jsonl"))],
                           "model 'no-such-org/no-such-model': no local folder of that name"),
    "eval of a non-run": (lambda tmp, model: ["eval", str(tmp)], "not a tuneforge run folder"),
    "empty recipe": (lambda tmp, model: ["train", str(_text(tmp / "empty.yaml", ""))],
                     "empty.yaml: the recipe is empty (no keys, only comments or blank lines)"),
    "comment-only recipe": (lambda tmp, model: ["train", str(_text(tmp / "notes.yaml", "# name: x\n\n# data:\n"))],
                            "notes.yaml: the recipe is empty"),
    "recipe that is a list": (lambda tmp, model: ["train", str(_text(tmp / "list.yaml", "- name: x\n"))],
                              "list.yaml: a recipe is a YAML mapping of keys (name:, model:, data:, train:, ...), "
                              "not a list; start from one in recipes/"),
}


def _text(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_clear_message(case, tmp_path, tiny_model):
    write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(20))
    make_args, expected = BAD_INPUTS[case]
    out = tuneforge(*make_args(tmp_path, tiny_model), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and expected in out.stderr, out.stderr
    assert out.stderr.startswith("error: ")
    assert not (tmp_path / "runs").exists()


def test_train_generate_and_resume_hint(tmp_path, tiny_model):
    write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(40))
    # a learning rate high enough for 2 steps to teach the answers' first words (the untrained tiny
    # model ends its answer at once, and an empty answer would match anything)
    out = tuneforge("train", str(_recipe(tmp_path, tiny_model, tmp_path / "d.jsonl", "  learning_rate: 0.05\n")),
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # peft imports bitsandbytes, which on this CPU logged a failure to fetch an optional kernel
    assert "Failed to load" not in out.stderr and "kernels-community" not in out.stderr
    assert (tmp_path / "runs" / "cli" / "model" / "adapter_model.safetensors").is_file()
    out = tuneforge("generate", "runs/cli", "--prompt", "What is 2 plus 2?", "--max-new-tokens", "5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = ChatSession.from_run(tmp_path / "runs" / "cli").reply([{"role": "user", "content": "What is 2 plus 2?"}], 5)
    assert expected.strip() and out.stdout == expected + "\n"  # what the library answers, and only that
    base = tuneforge("generate", "runs/cli", "--prompt", "What is 2 plus 2?", "--max-new-tokens", "5", "--base",
                     cwd=tmp_path)
    assert base.stdout == ChatSession.from_run(tmp_path / "runs" / "cli", base=True).reply(
        [{"role": "user", "content": "What is 2 plus 2?"}], 5) + "\n"
    out = tuneforge("train", "--resume", "runs/cli", cwd=tmp_path)
    assert out.returncode == 2 and "already finished" in out.stderr


def test_chat_reads_turns_until_quit(tmp_path, tiny_model):
    write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(40))
    assert tuneforge("train", str(_recipe(tmp_path, tiny_model, tmp_path / "d.jsonl")), cwd=tmp_path).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "tuneforge", "chat", "runs/cli", "--max-new-tokens", "4"],
                         cwd=tmp_path, input="What is 1 plus 1?\n/reset\nAnd 2 plus 2?\n/quit\n",
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("model> ") == 2 and "(new conversation)" in out.stdout
