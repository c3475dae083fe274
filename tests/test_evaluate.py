import json
import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import (METRICS, bleu, corpus_score, distinct, example_scores, paired_bootstrap,
                                        perplexity_interval, repetition, resampled_corpus_scores, summarize,
                                        token_f1)
from tuneforge.evaluate.run import evaluate_run
from tuneforge.train.run import train


PREDICTIONS = ["Return the square root of x.", "", "Return the the the the the value value value value.",
               "Open a file and return a stream.", "Sort the list in place."]
REFERENCES = ["Return the square root of x.", "Return the median of data.", "Return the absolute value.",
              "Open file and return a corresponding file object.", ""]
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # as ROUGE-L is reported


def test_text_metrics_equal_the_libraries_called_directly():
    """Our numbers are sacrebleu's and rouge-score's on the same strings; empty answers and references
    score 0 instead of failing."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scores = example_scores(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, (pred, ref) in enumerate(zip(PREDICTIONS, REFERENCES)):
        direct = scorer.score(ref, pred)
        for name in ("rouge1", "rouge2", "rougeL"):
            assert scores[name][i] == pytest.approx(100 * direct[name].fmeasure)
    assert scores["rougeL"][0] == 100.0 and scores["rougeL"][1] == 0.0 and scores["rougeL"][4] == 0.0
    assert corpus_score("bleu", PREDICTIONS, REFERENCES) == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert corpus_score("chrf", PREDICTIONS, REFERENCES) == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert bleu([""], ["Return the square root of x."]) == 0.0


def test_resampled_corpus_scores_equal_scoring_each_resample():
    """BLEU and chrF of a bootstrap resample, from the examples' summed statistics, equal sacrebleu's
    score of the resampled strings (repeated examples, empty answers and references included)."""
    picks = np.random.default_rng(0).integers(0, len(PREDICTIONS), size=(20, len(PREDICTIONS)))
    for name in ("bleu", "chrf"):
        fast = resampled_corpus_scores(name, PREDICTIONS, REFERENCES, picks)
        slow = [corpus_score(name, [PREDICTIONS[i] for i in row], [REFERENCES[i] for i in row]) for row in picks]
        assert fast.tolist() == pytest.approx(slow, abs=1e-9), name
        assert len(set(slow)) > 3, name  # the resamples differ, so the comparison means something


def test_exact_match_token_f1_repetition_distinct():
    scores = example_scores(PREDICTIONS, REFERENCES)
    assert scores["exact_match"] == [100.0, 0.0, 0.0, 0.0, 0.0]  # case, punctuation and articles ignored
    assert token_f1("The square root of x", "square root of x!") == 100.0
    assert token_f1("Open a file and return a stream.", "Open file and return a corresponding file object.") == \
        pytest.approx(100 * 2 * (4 / 5) * (4 / 7) / (4 / 5 + 4 / 7))  # normalised: 4 shared words, 5 and 7 in all
    assert scores["token_f1"][1] == 0.0 and scores["token_f1"][4] == 0.0
    assert repetition("a b c a b c a b c") == pytest.approx(100 * 4 / 7)  # 7 trigrams, 3 distinct
    assert repetition("one two") == 0.0 and repetition("") == 0.0
    assert distinct(["a b", "a b", "c d"], 1) == pytest.approx(100 * 4 / 6)
    assert scores["length"] == [6.0, 0.0, 10.0, 7.0, 5.0]


def test_bootstrap_intervals_contain_the_value_and_narrow_with_more_examples():
    predictions, references = PREDICTIONS * 2, REFERENCES * 2
    small = summarize(predictions, references, example_scores(predictions, references))
    large = summarize(predictions * 10, references * 10, example_scores(predictions * 10, references * 10))
    assert set(small) == set(METRICS)
    for name, s in small.items():
        if name.startswith("distinct"):  # a set ratio: no percentile interval
            assert s["low"] is None and s["high"] is None
            continue
        assert s["low"] <= s["value"] <= s["high"], name
    assert large["rougeL"]["high"] - large["rougeL"]["low"] < small["rougeL"]["high"] - small["rougeL"]["low"]
    assert summarize([], [], {}) == {}


def test_perplexity_interval_is_token_weighted():
    # two examples: 10 tokens at loss 1.0 each, 30 tokens at 2.0: exp((10 + 60) / 40)
    result = perplexity_interval([10.0, 60.0], [10, 30])
    assert result["value"] == pytest.approx(math.exp(70 / 40), abs=1e-3)
    assert math.exp(1.0) - 1e-3 <= result["low"] <= result["value"] <= result["high"] <= math.exp(2.0) + 1e-3
    assert perplexity_interval([], []) == {}


def test_paired_bootstrap_counts_wins_and_finds_a_real_difference():
    same = paired_bootstrap([10.0, 20.0, 30.0], [10.0, 20.0, 30.0])
    assert same == {"delta": 0.0, "p_value": 1.0, "wins": 0, "ties": 3, "losses": 0}
    better = paired_bootstrap([0.0] * 30, [50.0] * 25 + [0.0] * 5)
    assert better["wins"] == 25 and better["ties"] == 5 and better["p_value"] < 0.01
    noisy = paired_bootstrap([0.0, 100.0] * 10, [100.0, 0.0] * 10)
    assert noisy["delta"] == 0.0 and noisy["p_value"] == 1.0


def test_eval_writes_metrics_and_samples_for_base_and_tuned(tiny_recipe, tmp_path):
    # trained hard enough to answer in words (the untrained tiny model answers nothing: every score 0)
    run = train(tiny_recipe(train={"max_steps": 12, "learning_rate": 5e-2}), tmp_path / "runs")
    metrics = evaluate_run(run)
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert saved == metrics
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == saved["generated"] == 4
    assert all(s["tuned"].strip() for s in samples) and saved["tuned"]["rouge_l"] > 0
    for which in ("base", "tuned"):
        assert saved[which]["perplexity"] == pytest.approx(math.exp(saved[which]["loss"]), rel=1e-3)
        answers, references = [s[which] for s in samples], [s["reference"] for s in samples]
        direct_rouge = [100 * SCORER.score(r, a)["rougeL"].fmeasure for r, a in zip(references, answers)]
        assert saved[which]["rouge_l"] == pytest.approx(sum(direct_rouge) / len(direct_rouge), abs=1e-3)
        assert [s[f"rouge_l_{which}"] for s in samples] == pytest.approx(direct_rouge, abs=1e-3)
        assert saved[which]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(answers, [references]).score, abs=1e-3)
        assert set(saved[which]["scores"]) == {"perplexity", *METRICS}
        ppl = saved[which]["scores"]["perplexity"]
        assert ppl["value"] == pytest.approx(saved[which]["perplexity"], rel=1e-3) and ppl["low"] <= ppl["high"]
        assert saved[which]["scores"]["rougeL"]["value"] == pytest.approx(saved[which]["rouge_l"], abs=1e-3)
    for name, paired in saved["paired"].items():  # perplexity over every test example, the rest over answers
        n = saved["test_examples"] if name == "perplexity" else 4
        assert paired["wins"] + paired["ties"] + paired["losses"] == n, name
    # the paired test is the bootstrap over the per-example scores the samples hold, tuned against base
    assert saved["paired"]["rougeL"] == paired_bootstrap([s["rouge_l_base"] for s in samples],
                                                         [s["rouge_l_tuned"] for s in samples], seed=0)
    assert saved["base"]["loss"] != saved["tuned"]["loss"]
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


def test_bootstrap_resamples_every_example_and_p_values_are_two_sided():
    """Checked against probabilities worked out by hand, not against the implementation."""
    # two examples scoring 0 and 100: a resample of two picks means 0, 50 or 100 with chance 1/4, 1/2, 1/4,
    # so the 95% interval is [0, 100] around 50
    interval = summarize(["a", "b"], ["a", "c"], {"score": [0.0, 100.0]})["score"]
    assert interval == {"value": 50.0, "low": 0.0, "high": 100.0}
    # b beats a by 1 on three examples and loses by 1 on one: a resample of 4 has a mean <= 0 when it draws
    # the loss twice or more, P = 1 - (3/4)^4 - 4 (1/4) (3/4)^3 = 0.2617; two-sided p doubles it
    result = paired_bootstrap([0, 0, 0, 0], [1, 1, 1, -1], samples=20_000)
    assert result["p_value"] == pytest.approx(2 * (1 - 0.75 ** 4 - 4 * 0.25 * 0.75 ** 3), abs=0.02)
    assert paired_bootstrap([0, 0, 0, 0], [-1, -1, -1, 1], samples=20_000)["p_value"] == \
        pytest.approx(result["p_value"], abs=0.02)  # the same the other way round


def test_token_f1_compares_words_wherever_they_stand():
    # 3 of the prediction's words in the 4 of the reference (the article is dropped): P 1, R 3/4
    assert token_f1("root of x", "the square root of x") == pytest.approx(100 * 2 * 0.75 / 1.75)
