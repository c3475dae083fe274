"""Invariants of the training loop, through `train` (the loop, its steps and callbacks as a run uses
them): a micro-batch split of a packed step does not change it; early stopping on validation accuracy
keeps the most accurate weights; gradual unfreezing trains exactly the blocks it announces; every epoch
shows each example once, and a finished run resumes without another step."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.models.loader import load_model
from tuneforge.run_folder import read_metrics
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.run import train


@pytest.fixture
def fp32_full(tiny_recipe):
    """Full fine-tuning in fp32, every step checkpointed, one row per example when packed (max_length 40
    holds one 32-token example), no compile: steps that can be compared bit for bit."""
    def make(**train_keys):
        return tiny_recipe(method="full", data={"max_length": 40},
                           train={"compile": False, "learning_rate": 1e-2, "early_stopping_patience": None,
                                  "save_every": 1, "keep_checkpoints": 20, **train_keys})
    return make


def test_a_packed_step_is_the_same_in_one_micro_batch_or_four(fp32_full, tmp_path):
    """8 packed rows in 1 micro-batch x 1, in 2 x 4, and the same examples padded instead of packed:
    the same losses and the same weights after 3 optimizer steps."""
    runs = {}
    for name, keys in {"8x1": {"micro_batch_size": 8}, "2x4": {"micro_batch_size": 2},
                       "padded": {"micro_batch_size": 8, "packing": False}}.items():
        runs[name] = train(fp32_full(max_steps=3, eval_every=3, **keys).model_copy(update={"name": name}),
                           tmp_path / "runs")
    plans = {name: json.loads((run / "plan.json").read_text()) for name, run in runs.items()}
    assert (plans["8x1"]["micro_batch"], plans["8x1"]["accumulation"]) == (8, 1)
    assert (plans["2x4"]["micro_batch"], plans["2x4"]["accumulation"]) == (2, 4)
    losses = {name: [m["loss"] for m in read_metrics(run) if "loss" in m] for name, run in runs.items()}
    assert len(losses["8x1"]) == 3 and losses["8x1"][0] != losses["8x1"][-1]
    assert losses["2x4"] == pytest.approx(losses["8x1"], rel=1e-5)
    assert losses["padded"] == pytest.approx(losses["8x1"], rel=1e-5)
    weights = {name: load_file(run / "model" / "model.safetensors") for name, run in runs.items()}
    for name in ("2x4", "padded"):
        for key, value in weights["8x1"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=1e-4, atol=1e-6, msg=f"{name} {key}")


def test_early_stopping_on_val_accuracy_restores_the_most_accurate_weights(tiny_recipe, tmp_path):
    # A learning rate far too high: accuracy on the answers rises for a few steps, then collapses.
    run = train(tiny_recipe(method="full", train={
        "learning_rate": 0.1, "max_steps": 30, "eval_every": 1, "save_every": 1, "keep_checkpoints": 40,
        "early_stopping_patience": 3, "early_stopping_metric": "val_accuracy", "warmup_ratio": 0.0,
        "compile": False}), tmp_path / "runs")
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    validations = {m["step"]: m["val_accuracy"] for m in read_metrics(run) if "val_accuracy" in m}
    assert state["stopped_early"] and state["step"] < 30
    assert state["best_step"] > 0 and state["step"] == state["best_step"] + 3  # 3 worse validations after it
    assert validations[state["best_step"]] == max(validations.values()) > validations[0]
    # the first step to reach the best accuracy is the best (a tie later is not an improvement)
    assert state["best_step"] == min(s for s, a in validations.items() if a == max(validations.values()))
    best = load_file(run / "checkpoints" / f"step-{state['best_step']}" / "trainable.safetensors")
    last = load_file(list_checkpoints(run)[-1] / "trainable.safetensors")
    final = load_model(run / "model")
    assert any(not torch.equal(best[k], last[k]) for k in best)  # restoring changes something
    for name, value in best.items():
        torch.testing.assert_close(final.get_parameter(name), value, rtol=0, atol=0)


def test_gradual_unfreezing_trains_exactly_the_blocks_it_announces(tiny_recipe, tiny_model, tmp_path, capsys):
    """3 blocks, one more every 2 steps: steps 1-2 train block 2, steps 3-4 blocks 1-2, steps 5-6 all;
    the final norm and the head tied to the frozen embeddings: the top modules learn throughout."""
    run = train(tiny_recipe(method="gradual_unfreeze", freeze={"unfreeze_every": 2},
                            train={"max_steps": 6, "eval_every": 6, "save_every": 1, "keep_checkpoints": 10,
                                   "learning_rate": 1e-2, "early_stopping_patience": None, "compile": False}),
                tmp_path / "runs")
    announced = {int(step): int(n) for step, n in
                 re.findall(r"step (\d+): training the last (\d+) of 3 blocks", capsys.readouterr().out)}
    assert announced == {0: 1, 2: 2, 4: 3}
    base = load_model(tiny_model)
    before = {k: p.detach() for k, p in base.named_parameters()}
    for step in range(1, 7):
        after = load_file(run / "checkpoints" / f"step-{step}" / "trainable.safetensors")
        changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
        learning = max(n for s, n in announced.items() if s < step)
        blocks = {int(m.group(1)) for k in changed if (m := re.search(r"\.layers\.(\d+)\.", k))}
        assert blocks == set(range(3 - learning, 3)), (step, sorted(changed))
        assert {k for k in changed if ".layers." not in k} == {"model.norm.weight"}, step
        before = {**before, **after}


def test_each_epoch_shows_every_example_once_and_a_finished_run_resumes_without_a_step(
        tiny_recipe, tmp_path, monkeypatch):
    """The steps the loop takes (observed at train_step, which still runs) cover each training example
    exactly once per epoch; a run killed after its last checkpoint (before the model was written) takes
    no further step when resumed, and ends with the same weights."""
    from tuneforge.train import loop
    from tuneforge.train.run import resume

    taken = []

    def observed(t, examples, indices, plan, recipe):
        taken.append(list(indices))
        return real_step(t, examples, indices, plan, recipe)

    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", observed)
    run = train(tiny_recipe(train={"max_steps": 12, "global_batch_size": 32, "eval_every": 12, "save_every": 4,
                                   "early_stopping_patience": None}), tmp_path / "runs")
    n_train = len((run / "data" / "train.jsonl").read_text().splitlines())
    per_epoch = n_train // 32  # epoch_steps drops the last incomplete global batch
    assert len(taken) == 12 and per_epoch * 2 < 12  # the run crosses at least two epoch boundaries
    for epoch in range(12 // per_epoch):
        seen = [i for step in taken[epoch * per_epoch:(epoch + 1) * per_epoch] for i in step]
        assert len(set(seen)) == len(seen) == per_epoch * 32 and max(seen) < n_train
    assert taken[:per_epoch] != taken[per_epoch:2 * per_epoch]  # each epoch is shuffled anew
    finished = load_file(run / "model" / "adapter_model.safetensors")
    shutil.rmtree(run / "model")
    taken.clear()
    resume(run)
    assert taken == []
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    assert state["step"] == 12
    again = load_file(run / "model" / "adapter_model.safetensors")
    assert all(torch.equal(finished[k], again[k]) for k in finished)
