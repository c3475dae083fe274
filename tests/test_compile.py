"""train.compile: auto decides from measured step times, and a real run records what it decided."""

import json

from tuneforge.methods.model_parts import transformer_blocks
from tuneforge.models.loader import load_model
from tuneforge.train import compile as auto
from tuneforge.train.compile import PROBE_STEPS, AutoCompile
from tuneforge.train.run import train


def _probe(compiler: AutoCompile, rate: float, seconds: float, remaining: int, first_step: int = 1,
           first_seconds: float | None = None):
    """Feed PROBE_STEPS + 1 steps at `rate` tokens/s, the first (untimed) one taking `first_seconds`;
    the last record returned."""
    record = None
    for i in range(PROBE_STEPS + 1):
        took = first_seconds if i == 0 and first_seconds else seconds
        record = compiler.after_step(first_step + i, took, round(rate * seconds), remaining - i)
    return record


def _compiled(blocks) -> bool:
    return all(block._compiled_call_impl is not None for block in blocks)


def test_a_short_run_stays_eager(tiny_model):
    blocks = transformer_blocks(load_model(tiny_model))
    compiler = AutoCompile(blocks)
    record = _probe(compiler, rate=400, seconds=1.0, remaining=200)  # 200 s left: 5% is 10 s < a compile
    assert record["compile"] == "off" and "would not pay back" in record["reason"]
    assert record["step"] == PROBE_STEPS + 1 and record["eager_tokens_per_s"] == 400
    assert not any(block._compiled_call_impl is not None for block in blocks)
    assert compiler.after_step(9, 1.0, 400, 100) is None  # decided once and for all


def test_a_long_run_compiles_and_keeps_it_when_faster(tiny_model):
    blocks = transformer_blocks(load_model(tiny_model))
    compiler = AutoCompile(blocks)
    record = _probe(compiler, rate=400, seconds=1.0, remaining=5000)
    assert record["compile"] == "trying" and _compiled(blocks)
    record = _probe(compiler, rate=440, seconds=0.9, remaining=4990, first_step=5, first_seconds=20.9)
    assert record["compile"] == "on" and record["compiled_tokens_per_s"] == 440 and "+10%" in record["reason"]
    # 19.9 s of compiling over the eager 1.0 s step; a step of 400 tokens now takes 1.0 * 400 / 440 s
    assert record["compile_seconds"] == 19.9 and "paid back after 219 more steps" in record["reason"]
    assert _compiled(blocks)


def test_compiled_steps_that_are_not_faster_go_back_to_eager(tiny_model):
    blocks = transformer_blocks(load_model(tiny_model))
    compiler = AutoCompile(blocks)
    _probe(compiler, rate=400, seconds=1.0, remaining=5000)
    record = _probe(compiler, rate=380, seconds=1.0, remaining=4990, first_step=5)
    assert record["compile"] == "off" and record["reason"].startswith("back to eager") and "-5%" in record["reason"]
    assert not any(block._compiled_call_impl is not None for block in blocks)


def _compile_records(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "compile" in r]


def test_auto_is_the_default_and_a_short_run_records_staying_eager(tiny_recipe, tmp_path):
    run = train(tiny_recipe(method="full"), tmp_path / "runs")
    [record] = _compile_records(run)
    assert record["compile"] == "off" and record["step"] == PROBE_STEPS + 1


def test_auto_compiles_a_real_run_when_the_compile_is_cheap(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "COMPILE_SECONDS", 0.0)  # any saving pays back: the compiled probe decides
    run = train(tiny_recipe(method="lora", train={"max_steps": 12, "eval_every": 12, "save_every": 12}),
                tmp_path / "runs")
    first, second = _compile_records(run)
    assert first["compile"] == "trying" and first["step"] == PROBE_STEPS + 1
    assert second["compile"] in ("on", "off") and second["step"] == 2 * (PROBE_STEPS + 1)
    assert second["compiled_tokens_per_s"] > 0
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert (run / "model" / "adapter_model.safetensors").is_file()
