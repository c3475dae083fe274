"""Training on a tiny random Llama: the run folder contract, what each method trains, invariants,
early stopping and exact resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.data.batches import collate, micro_batches
from tuneforge.errors import UserError
from tuneforge.models.loader import load_model
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.loss import LossModel
from tuneforge.train.run import resume, train


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_lora_run_folder_contract(tiny_recipe, tmp_path):
    run = train(tiny_recipe(), tmp_path / "runs")
    assert run == tmp_path / "runs" / "tiny"
    assert _files(run) == [
        *(f"checkpoints/step-{n}/{f}" for n in (3, 6) for f in (
            "best.safetensors", "optimizer.pt", "recipe.yaml", "rng-0.pt", "scheduler.pt", "state.json",
            "trainable.safetensors")),
        "data/encoding.json", "data/manifest.json", "data/report.html", "data/report.md", "data/stages.png",
        "data/test.jsonl", "data/token_lengths.png", "data/train.jsonl", "data/val.jsonl", "env.json", "metrics.jsonl",
        "model/README.md", "model/adapter_config.json", "model/adapter_model.safetensors", "model/chat_template.jinja",
        "model/tokenizer.json", "model/tokenizer_config.json", "plan.json", "recipe.yaml",
    ]
    recipe = (run / "recipe.yaml").read_text()
    assert "micro_batch_size: 8" in recipe and "learning_rate: 0.001" in recipe  # derived values recorded
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in metrics if "val_loss" in m] == [0, 3, 6]  # 0: before training
    assert all(m["tokens_per_s"] > 0 for m in metrics if "loss" in m)
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert sum(manifest["counts"]["final"].values()) == manifest["counts"]["read"] == 120
    assert len(manifest["ids"]["test"]) == manifest["counts"]["final"]["test"] > 0
    encoding = json.loads((run / "data" / "encoding.json").read_text())
    assert encoding["max_length"] == 64 and encoding["loss_tokens"]["train"] > 0
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["versions"]["torch"].startswith("2.13")


def test_lora_trains_the_adapter_only(tiny_recipe, tiny_model, tmp_path):
    from peft import PeftModel

    run = train(tiny_recipe(), tmp_path / "runs")
    base = load_model(tiny_model)
    tuned = PeftModel.from_pretrained(load_model(tiny_model), run / "model")
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    merged = tuned.merge_and_unload()
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, merged.get_parameter(n))]
    assert changed and all("proj" in n for n in changed)  # only adapted linear layers moved


@pytest.mark.parametrize("method, expect_changed", [
    ("full", lambda n: True),
    ("freeze", lambda n: n.startswith("model.layers.2.") or n == "model.norm.weight"),
])
def test_full_and_freeze_change_exactly_their_parameters(tiny_recipe, tiny_model, tmp_path, method, expect_changed):
    run = train(tiny_recipe(method=method, freeze={"trainable_blocks": 1}), tmp_path / "runs")
    base, tuned = load_model(tiny_model), load_model(run / "model")
    for name, p in base.named_parameters():
        assert torch.equal(p, tuned.get_parameter(name)) != expect_changed(name), name


def test_loss_goes_down(tiny_recipe, tmp_path):
    run = train(tiny_recipe(method="full", train={"max_steps": 30, "learning_rate": 3e-3, "eval_every": 30,
                                                  "save_every": 30}), tmp_path / "runs")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_micro_batch_split_gives_the_same_gradient(tiny_model, tiny_tokenizer):
    """Loss normalised over the whole step: 1 x 8 == 4 x 2 == 8 x 1."""
    from conftest import arithmetic_rows

    from tuneforge.tasks.chat import encode

    rows = [encode({"id": str(i), **r}, tiny_tokenizer, 64) for i, r in enumerate(arithmetic_rows(8))]
    n_loss = sum(r.loss_tokens for r in rows)
    grads = []
    for micro in (8, 2, 1):
        model = load_model(tiny_model)
        for batch in micro_batches(rows, list(range(8)), micro):
            s, _, _ = LossModel(model)(collate(batch, tiny_tokenizer.pad_token_id))
            (s / n_loss).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-6)


def test_early_stopping_restores_the_best_weights(tiny_recipe, tmp_path):
    # A learning rate far too high makes validation loss rise after the first steps.
    run = train(tiny_recipe(method="full", train={"learning_rate": 0.5, "max_steps": 20, "eval_every": 1,
                                                  "save_every": 1, "keep_checkpoints": 20,
                                                  "early_stopping_patience": 2, "warmup_ratio": 0.0,
                                                  "max_grad_norm": None}), tmp_path / "runs")
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    assert state["stopped_early"] and state["step"] < 20
    best = load_file(run / "checkpoints" / f"step-{state['best_step']}" / "trainable.safetensors")
    final = load_model(run / "model")
    for name, value in best.items():
        torch.testing.assert_close(final.get_parameter(name), value, rtol=0, atol=0)


def test_resume_reaches_the_same_weights(tiny_recipe, tmp_path):
    recipe = dict(train={"max_steps": 6, "save_every": 2, "keep_checkpoints": 5, "eval_every": 2},
                  lora={"dropout": 0.1})
    straight = train(tiny_recipe(**recipe), tmp_path / "a")
    interrupted = train(tiny_recipe(**recipe), tmp_path / "b")
    # Cut run b back to its state after step 2, as if it had been killed during step 3.
    shutil.rmtree(interrupted / "model")
    for checkpoint in list_checkpoints(interrupted)[1:]:
        shutil.rmtree(checkpoint)
    resume(interrupted)
    a = load_file(straight / "model" / "adapter_model.safetensors")
    b = load_file(interrupted / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]  # no step logged twice or lost
    assert [m["step"] for m in metrics if "val_loss" in m] == [0, 2, 4, 6]  # nor a validation


def test_existing_run_is_never_overwritten(tiny_recipe, tmp_path):
    first = train(tiny_recipe(train={"max_steps": 2}), tmp_path / "runs")
    before = (first / "model" / "adapter_model.safetensors").read_bytes()
    second = train(tiny_recipe(train={"max_steps": 2}, seed=1), tmp_path / "runs")
    assert second.name == "tiny-2"
    assert (first / "model" / "adapter_model.safetensors").read_bytes() == before


def test_global_batch_larger_than_data_writes_nothing(tiny_recipe, tmp_path):
    with pytest.raises(UserError, match="global_batch_size: 500 is more than the"):
        train(tiny_recipe(train={"global_batch_size": 500}), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
