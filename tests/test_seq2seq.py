"""Task seq2seq on tiny random T5 and BART models built in-process: how a prompt / answer row becomes
encoder tokens and decoder labels, the loss against the model's own, the refusals, training with each
method family, the base-vs-tuned evaluation, generation, and the hf / adapter exports loaded by
transformers and PEFT."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import arithmetic_rows, read_jsonl, write_jsonl
from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.recipe_file import validate_recipe
from tuneforge.tasks import get_task


def pair_rows(n: int) -> list[dict]:
    return [{"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"]}
            for r in arithmetic_rows(n)]


def seq2seq_recipe(model: Path, data: Path, name: str, method: str = "full", **train) -> dict:
    return {"name": name, "task": "seq2seq", "method": method, "model": {"name": str(model)},
            "data": {"sources": [str(data)], "val_ratio": 0.1, "test_ratio": 0.1},
            "train": {"global_batch_size": 8, "max_steps": 60, "eval_every": 30, "learning_rate": 3e-3,
                      "precision": "fp32", **train},
            "eval": {"max_samples": 8, "batch_size": 4}}


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def example(prompt: str, answer: str, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"id": "x", "messages": messages}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_t5, tiny_bart):
    """A full BART run (60 steps: it learns the answers' wording) and a LoRA T5 run, trained once."""
    from tuneforge.train.run import train

    root = tmp_path_factory.mktemp("seq2seq")
    data = write_jsonl(root / "pairs.jsonl", pair_rows(150))
    return {"bart": train(validate_recipe(seq2seq_recipe(tiny_bart, data, "bart")), root / "runs"),
            "t5": train(validate_recipe(seq2seq_recipe(tiny_t5, data, "t5", method="lora", max_steps=20,
                                                       learning_rate=1e-2)), root / "runs")}


@pytest.mark.parametrize("which", ["t5", "bart"])
def test_the_prompt_is_the_encoders_and_the_answer_the_decoders_labels(which, tiny_t5, tiny_bart):
    from tuneforge.models.loader import load_inputs

    task = get_task("seq2seq")
    tokenizer = load_inputs({"t5": tiny_t5, "bart": tiny_bart}[which], task)
    pair = task.encode(example("What is 3 plus 4?", "The answer is 7.", system="Return the number."), tokenizer, 64)
    # the system text, a blank line, the prompt (T5's tokenizer reads line breaks as spaces)
    assert " ".join(tokenizer.decode(pair.input_ids, skip_special_tokens=True).split()) == \
        "Return the number. What is 3 plus 4?"
    assert pair.input_ids[-1] == pair.labels[-1] == tokenizer.eos_token_id  # each side ends as the tokenizer ends it
    assert pair.labels == tokenizer(text_target="The answer is 7.")["input_ids"]
    if which == "bart":
        assert pair.labels[0] == tokenizer.bos_token_id  # BART's target side: <s> ... </s>
    assert pair.loss_tokens == len(pair.labels) and pair.length == len(pair.input_ids) + len(pair.labels)
    cut = task.encode(example("What is 3 plus 4? " * 10, "The answer is 7. " * 10), tokenizer, 12)
    assert cut.truncated and len(cut.input_ids) == len(cut.labels) == 12
    assert cut.input_ids[-1] == cut.labels[-1] == tokenizer.eos_token_id  # truncation keeps the special tokens
    plain = task.encode(example("What is 3 plus 4?", "The answer is 7."), tokenizer, 64)
    assert task.token_lengths([example("What is 3 plus 4?", "The answer is 7.")], tokenizer) == [
        max(len(plain.input_ids), len(plain.labels))]


@pytest.mark.parametrize("which", ["t5", "bart"])
def test_the_loss_is_the_models_own_cross_entropy_summed(which, tiny_t5, tiny_bart):
    from transformers import AutoModelForSeq2SeqLM

    from tuneforge.models.loader import load_inputs
    from tuneforge.tasks.seq2seq import collate_pairs, example_losses, seq2seq_loss_model

    folder = {"t5": tiny_t5, "bart": tiny_bart}[which]
    task = get_task("seq2seq")
    tokenizer = load_inputs(folder, task)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    pairs = [task.encode({"id": str(i), **r}, tokenizer, 64) for i, r in enumerate(
        [example(f"What is {i} plus 2?", f"The answer is {i + 2}, " * (1 + i % 3)) for i in range(5)])]
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        total, count, correct = seq2seq_loss_model(model).eval()(batch)
        own = model(**batch).loss  # transformers' mean over the labels, its own decoder inputs
    assert count == sum(p.loss_tokens for p in pairs) and 0 <= correct <= count
    assert float(total) / count == pytest.approx(float(own), rel=1e-5)
    sums, counts = example_losses(model, pairs, "cpu", tokenizer.pad_token_id, tokens_per_batch=40)
    assert counts == [p.loss_tokens for p in pairs] and sum(sums) == pytest.approx(float(total), rel=1e-5)
    alone = [float(seq2seq_loss_model(model).eval()(collate_pairs([p], tokenizer.pad_token_id))[0]) for p in pairs]
    assert sums == pytest.approx(alone, rel=1e-4)  # padding next to longer rows changes nothing


@pytest.mark.parametrize("change, message", [
    ({"train": {"packing": True}}, r"train\.packing: task seq2seq reads each example on its own"),
    ({"data": {"train_on_prompt": True}}, r"data\.train_on_prompt: task seq2seq feeds the prompt to the encoder"),
    ({"data": {"augment": {"synthetic": 4}}}, r"data\.augment\.model: smollm2-135m-instruct"),
])
def test_settings_that_do_not_fit_seq2seq_are_refused_before_loading(change, message):
    with pytest.raises(UserError, match=message):
        validate_recipe({"task": "seq2seq", **change})
    assert validate_recipe({"task": "seq2seq"}).model.name == "flan-t5-small"


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}],
     r"pairs\.jsonl:151: task seq2seq maps one prompt to one answer, and this conversation has 2 assistant turns"),
    ([{"text": "raw text"}], r"pairs\.jsonl:151: this row is raw text; task seq2seq learns from prompt / completion"),
])
def test_rows_seq2seq_cannot_learn_are_refused_with_file_and_line(tmp_path, tiny_t5, rows, message, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(150) + rows)
    recipe = write_recipe(tmp_path, seq2seq_recipe(tiny_t5, data, "bad"))
    assert main(["train", str(recipe), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_a_model_that_does_not_fit_the_task_is_refused_before_it_loads(tmp_path, tiny_t5, tiny_model, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(40))
    decoder = write_recipe(tmp_path, seq2seq_recipe(tiny_model, data, "decoder"))
    assert main(["train", str(decoder), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "is not an encoder-decoder; task seq2seq needs one" in capsys.readouterr().err
    chat = seq2seq_recipe(tiny_t5, data, "chat")
    chat["task"], chat["method"] = "chat", "lora"
    assert main(["train", str(write_recipe(tmp_path, chat)), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "is an encoder-decoder (T5 / BART style); task chat needs" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_training_learns_and_the_evaluation_compares_base_and_tuned(trained, capsys):
    from tuneforge.evaluate.run import evaluate_run

    metrics = evaluate_run(trained["bart"])
    val = [json.loads(line) for line in (trained["bart"] / "metrics.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in val if "val_loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"] / 10
    assert metrics["tuned"]["rouge_l"] > metrics["base"]["rouge_l"] + 30
    assert metrics["paired"]["rougeL"]["wins"] > metrics["paired"]["rougeL"]["losses"]
    assert "second half from its first" in metrics["forgetting"]["set"]
    assert metrics["forgetting"]["base"] > 0 and metrics["forgetting"]["tuned"] > 0
    samples = read_jsonl(trained["bart"] / "eval" / "samples.jsonl")
    assert len(samples) == 8 and all(s["prompt"].startswith("What is") for s in samples)
    assert sum(s["tuned"].startswith("The answer is") for s in samples) >= 6
    assert (trained["bart"] / "eval" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "ROUGE-L" in out and "forgetting check" in out


def test_batched_generation_gives_each_prompt_its_own_answer(trained):
    """Prompts of different lengths batched together (padded on the right for the encoder, BART's
    positions are absolute) answer as each does alone."""
    from tuneforge.inference.generate import generate_batch
    from tuneforge.inference.run_models import RunModels

    models = RunModels(trained["bart"])
    prompts = ["What is 1 plus 1?", "What is 123 plus 4? What is 5 plus 6?", "What is 77 plus 0?"]
    together = generate_batch(models.tuned, models.tokenizer, prompts, 12, batch_size=3)
    alone = [generate_batch(models.tuned, models.tokenizer, [p], 12, batch_size=1)[0] for p in prompts]
    assert together == alone and all(together)


def test_generate_and_the_hf_export_give_the_same_answer(trained, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    prompt = "What is 41 plus 6?"
    for which in ("bart", "t5"):
        assert main(["generate", str(trained[which]), "--prompt", prompt, "--max-new-tokens", "12"]) == 0
        generated = capsys.readouterr().out.strip().splitlines()[-1]
        out = tmp_path / f"{which}-hf"
        assert main(["export", str(trained[which]), "--format", "hf", "--out", str(out)]) == 0
        tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForSeq2SeqLM.from_pretrained(out)
        inputs = tokenizer([prompt], return_tensors="pt")
        answer = tokenizer.decode(model.generate(**inputs, max_new_tokens=12, do_sample=False)[0],
                                  skip_special_tokens=True).strip()
        assert answer == generated
        assert "AutoModelForSeq2SeqLM" in (out / "README.md").read_text()


def test_the_server_answers_as_generate_does_batched_streamed_and_refuses_what_does_not_fit(trained, tmp_path):
    """A full BART run and a LoRA T5 run (with its base under its own name) behind one OpenAI-compatible
    server: greedy answers equal `tuneforge generate`'s, alone or batched, whole or streamed."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import BadRequestError, OpenAI

    from tuneforge.inference.run_models import RunModels
    from tuneforge.inference.session import ChatSession
    from tuneforge.serve.app import Limits
    from tuneforge.serve.server import Background, build

    app, engine, _ = build([trained["bart"], trained["t5"]], tmp_path / "requests.sqlite", precision="fp32",
                           limits=Limits(max_tokens=32))
    prompts = ["What is 41 plus 6?", "What is 7 plus 0?", "What is 123 plus 4? Say it.", "What is 9 plus 9?"]
    with Background(app) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        names = {m.id for m in client.models.list().data}
        assert {"bart", "t5", Path(RunModels(trained["t5"]).recipe.model.name).name} <= names

        def ask(model: str, prompt: str, **kw) -> str:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                               temperature=0, max_tokens=12, **kw)
            return r.choices[0].message.content

        for name in ("bart", "t5"):
            session = ChatSession(RunModels(trained[name]))
            expected = [session.reply([{"role": "user", "content": p}], max_new_tokens=12) for p in prompts]
            assert [ask(name, p) for p in prompts] == expected
            with ThreadPoolExecutor(len(prompts)) as pool:
                assert list(pool.map(lambda p: ask(name, p), prompts)) == expected
            text = client.completions.create(model=name, prompt=prompts[0], max_tokens=12, temperature=0).choices[0].text
            assert text.strip() == expected[0]
        first = ask("bart", prompts[0])
        stream = client.chat.completions.create(model="bart", messages=[{"role": "user", "content": prompts[2]}],
                                                temperature=0, max_tokens=12, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ask("bart", prompts[2])
        sampled = client.chat.completions.create(model="bart", messages=[{"role": "user", "content": prompts[1]}],
                                                 n=3, seed=5, temperature=1.0, max_tokens=8)
        assert len(sampled.choices) == 3
        scored = client.chat.completions.create(model="t5", messages=[{"role": "user", "content": prompts[0]}],
                                                temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
        tokens = scored.choices[0].logprobs.content
        assert tokens and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)
        with pytest.raises(BadRequestError, match="answers one prompt"):
            client.chat.completions.create(model="bart", max_tokens=4, messages=[
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
        with pytest.raises(BadRequestError, match="echo: `bart` is an encoder-decoder"):
            client.completions.create(model="bart", prompt="What is 1 plus 1?", max_tokens=2, echo=True)
        assert ask("bart", prompts[0]) == first  # the server is still up
    engine.stop()


def test_the_adapter_export_loads_in_peft_and_gguf_onnx_are_refused(trained, tmp_path, capsys):
    from peft import AutoPeftModelForSeq2SeqLM

    out = tmp_path / "adapter"
    assert main(["export", str(trained["t5"]), "--format", "adapter", "--out", str(out)]) == 0
    model = AutoPeftModelForSeq2SeqLM.from_pretrained(out)
    assert type(model.get_base_model()).__name__ == "T5ForConditionalGeneration"
    capsys.readouterr()
    for fmt in ("gguf", "onnx"):
        assert main(["export", str(trained["t5"]), "--format", fmt, "--out", str(tmp_path / fmt)]) == 2
        assert "a lora seq2seq run exports with --format hf, adapter." in capsys.readouterr().err
        assert not (tmp_path / fmt).exists()


@pytest.mark.parametrize("method", ["freeze", "prompt_tuning", "dora"])
def test_every_method_family_trains_a_t5(tmp_path, tiny_t5, method):
    from tuneforge.train.run import train

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(60))
    recipe = seq2seq_recipe(tiny_t5, data, method, method=method, max_steps=4, eval_every=4, learning_rate=1e-2)
    recipe["freeze"] = {"trainable_blocks": 1}
    run = train(validate_recipe(recipe), tmp_path / "runs")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 4]
    if method == "freeze":  # the decoder's last block and its final norm learn (the head is tied); the encoder not
        from tuneforge.train.load import load_for_method

        model = load_for_method(tiny_t5, validate_recipe(recipe), "cpu")
        learning = {name.split(".")[0] + "." + name.split(".")[2] if name.startswith(("encoder.block", "decoder.block"))
                    else name.rsplit(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad}
        assert learning == {"decoder.1", "decoder.final_layer_norm"}


def test_preview_and_models_show_seq2seq(tmp_path, tiny_bart, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(40))
    recipe = write_recipe(tmp_path, seq2seq_recipe(tiny_bart, data, "preview"))
    assert main(["data", "preview", str(recipe), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"encoder: <s>What is \d+ plus \d+\?</s>\nlabels:  <s>The answer is \d+\.</s>", out)
    assert main(["models"]) == 0
    assert re.search(r"flan-t5-small\s+77M\s+t5\s+seq2seq\s+hub google/flan-t5-small", capsys.readouterr().out)
