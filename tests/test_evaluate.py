import json
import math

import pytest

from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import bleu, rouge_l
from tuneforge.evaluate.run import evaluate_run
from tuneforge.train.run import train


def test_text_metrics_bounds():
    assert rouge_l(["Return the square root of x."], ["Return the square root of x."]) == [100.0]
    assert rouge_l([""], ["Return the square root."]) == [0.0]
    assert rouge_l(["anything"], [""]) == [0.0]
    assert bleu(["Return the square root of x ."], ["Return the square root of x ."]) == pytest.approx(100.0)
    assert bleu([""], ["Return the square root of x."]) == 0.0


def test_eval_writes_metrics_and_samples_for_base_and_tuned(tiny_recipe, tmp_path):
    run = train(tiny_recipe(train={"max_steps": 4}), tmp_path / "runs")
    metrics = evaluate_run(run)
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert saved == metrics
    for which in ("base", "tuned"):
        assert saved[which]["perplexity"] == pytest.approx(math.exp(saved[which]["loss"]), rel=1e-3)
        assert 0 <= saved[which]["rouge_l"] <= 100 and saved[which]["bleu"] >= 0
    assert saved["base"]["loss"] != saved["tuned"]["loss"]
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == saved["generated"] == 4
    test_ids = set(json.loads((run / "data" / "manifest.json").read_text())["ids"]["test"])
    for sample in samples:
        assert {"id", "prompt", "reference", "base", "tuned", "rouge_l_base", "rouge_l_tuned"} <= sample.keys()
        assert sample["id"] in test_ids


def test_eval_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a tuneforge run folder"):
        evaluate_run(tmp_path)


def test_eval_needs_a_test_split(tiny_recipe, tmp_path):
    run = train(tiny_recipe(data={"test_ratio": 0.0}, train={"max_steps": 1}), tmp_path / "runs")
    with pytest.raises(UserError, match="test split is empty"):
        evaluate_run(run)
