"""The engine around the loop, with real processes: exact resume after SIGKILL, 2-process gloo DDP and
FSDP against 1 process, TensorBoard and MLflow tracking, the learning-rate finder, `tuneforge plan`."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.errors import UserError
from tuneforge.run_folder import read_metrics
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.run import resume, train


def _recipe_file(tmp_path, recipe, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(recipe.to_yaml())
    return path


def _tuneforge(*args, cwd, launcher=()):
    return subprocess.run([*launcher, *(() if launcher else (sys.executable,)), "-m", "tuneforge", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_sigkill_at_a_random_moment_then_resume_gives_bitwise_identical_weights(tiny_recipe, tmp_path):
    recipe = tiny_recipe(train={"max_steps": 150, "save_every": 7, "eval_every": 25, "keep_checkpoints": 2,
                                "early_stopping_patience": None}, lora={"dropout": 0.1})
    path = _recipe_file(tmp_path, recipe)
    straight = _tuneforge("train", str(path), "--runs-dir", "a", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0.0, 1.0)
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(path), "--runs-dir", "b"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "b" / "tiny" / "checkpoints"
    while not list_checkpoints(tmp_path / "b" / "tiny") and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "tiny" / "model").exists(), f"finished before the kill (seed {seed}); rerun"
    killed_at = [p.name for p in checkpoints.iterdir()]
    resumed = _tuneforge("train", "--resume", "b/tiny", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    a = load_file(tmp_path / "a" / "tiny" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "tiny" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"killed {delay:.2f}s after the first checkpoint ({killed_at}, seed {seed}): {differing[:3]}"
    metrics = read_metrics(tmp_path / "b" / "tiny")
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 151))  # every step logged once
    assert [m["step"] for m in metrics if "val_loss" in m] == list(range(0, 151, 25))  # every validation once


def test_resume_refuses_an_edited_recipe_and_a_folder_that_is_not_a_run(tiny_recipe, tmp_path):
    run = train(tiny_recipe(train={"max_steps": 4, "save_every": 2}), tmp_path / "runs")
    import shutil

    shutil.rmtree(run / "model")
    text = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(text.replace("learning_rate: 0.001", "learning_rate: 0.002"))
    with pytest.raises(UserError, match=r"changed since step-4 was written \(train.learning_rate: 0.001 -> 0.002\)"):
        resume(run)
    with pytest.raises(UserError, match="not a tuneforge run folder"):
        resume(tmp_path)


def _losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(kind, tiny_recipe, tmp_path):
    method = "lora" if kind == "ddp" else "full"
    recipe = tiny_recipe(method=method, lora={"dropout": 0.0},
                         train={"max_steps": 10, "eval_every": 5, "save_every": 5, "micro_batch_size": 2,
                                "distributed": kind, "early_stopping_patience": None})
    path = _recipe_file(tmp_path, recipe)
    one = _tuneforge("train", str(path), "--runs-dir", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(29500 + random.randrange(1000)))
    two = _tuneforge("train", str(path), "--runs-dir", "two", cwd=tmp_path, launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    env = json.loads((tmp_path / "two" / "tiny" / "env.json").read_text())
    assert env["hardware"]["processes"] == 2
    a, b = _losses(tmp_path / "one" / "tiny"), _losses(tmp_path / "two" / "tiny")
    assert len(a) == len(b) == 10
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    val_a = [m["val_loss"] for m in read_metrics(tmp_path / "one" / "tiny") if "val_loss" in m]
    val_b = [m["val_loss"] for m in read_metrics(tmp_path / "two" / "tiny") if "val_loss" in m]
    assert max(abs(x - y) for x, y in zip(val_a, val_b)) < 1e-4
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    wa, wb = (load_file(tmp_path / d / "tiny" / "model" / weights) for d in ("one", "two"))
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_a_gpu_process_group_has_gloo_beside_nccl_for_cpu_collectives():
    """NCCL refuses CPU tensors (the loss totals once were CPU float64): with CUDA the group is mixed."""
    from tuneforge.runtime.distributed import process_group_backend

    assert process_group_backend(cuda=True) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(cuda=False) == "gloo"


def test_tensorboard_and_mlflow_get_the_metrics(tiny_recipe, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_recipe(train={"report_to": ["tensorboard", "mlflow"]}), tmp_path / "runs")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val_loss")] == [0, 3, 6]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuneforge")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "tiny" and found.info.status == "FINISHED"
    assert found.data.params["train.learning_rate"] == "0.001"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]


def test_find_lr_plots_and_suggests(tiny_recipe, tmp_path):
    path = _recipe_file(tmp_path, tiny_recipe(method="full"))
    out = _tuneforge("train", str(path), "--find-lr", "--find-lr-steps", "40", "--runs-dir", "runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "runs" / "tiny-find-lr"
    result = json.loads((folder / "lr_find.json").read_text())
    assert (folder / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    lrs = [r["lr"] for r in result["records"]]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6)
    assert lrs[0] < result["suggested_lr"] < lrs[-1]
    assert f"--set train.learning_rate={result['suggested_lr']:.2e}" in out.stdout


def test_plan_prints_the_memory_table_before_loading(tiny_recipe, tmp_path):
    path = _recipe_file(tmp_path, tiny_recipe(method="full", train={"micro_batch_size": None}))
    out = _tuneforge("plan", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for row in ("parameters", "peak memory", "runtime", "weights", "gradients", "optimizer", "activations",
                "micro-batch 8 packed rows x accumulation up to 1"):
        assert row in out.stdout
    assert not (tmp_path / "runs").exists()


def test_a_run_that_cannot_fit_is_refused_with_the_plan(tmp_path):
    """The bundled model's config (no weights are read) with a micro-batch of 1024 x 256 tokens."""
    out = _tuneforge("plan", "recipes/pydocs-full.yaml", "--set", "train.global_batch_size=1024",
                     "--set", "train.micro_batch_size=1024", cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 2
    assert "error: this run needs about" in out.stderr and "activations" in out.stderr
    assert "train.gradient_checkpointing: true" in out.stderr
