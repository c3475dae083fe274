"""head.pooling: a text head that reads the mean (max, first, last) of the token states instead of the
model's own head, as models/pooled_encoder.py builds it: the pooling itself, auto resolved from a
sentence-transformers folder, training full and LoRA, and the saved folder loaded elsewhere by
transformers' pipeline (trust_remote_code) and exported to ONNX."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import labelled_rows, write_jsonl
from test_classification import head_recipe, write_recipe

from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.models.loader import resolve_pooling
from tuneforge.models.pooled_encoder import pool
from tuneforge.recipe_file import validate_recipe


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_reads_only_each_rows_real_tokens_whichever_side_pads(side):
    torch.manual_seed(0)
    rows = [torch.randn(5, 3), torch.randn(2, 3)]
    hidden = torch.full((2, 5, 3), 99.0)
    mask = torch.zeros(2, 5, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(5 - len(r), 5)
        hidden[i, span], mask[i, span] = r, 1
    expected = {"mean": [r.mean(0) for r in rows], "max": [r.max(0).values for r in rows],
                "cls": [r[0] for r in rows], "last": [r[-1] for r in rows]}
    for how, want in expected.items():
        assert torch.allclose(pool(hidden, mask, how), torch.stack(want)), how


def _sentence_folder(tmp_path: Path, **modes) -> Path:
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": False, **modes}))
    return folder


def test_auto_pooling_follows_the_sentence_transformers_config(tmp_path, tiny_encoder):
    assert resolve_pooling(_sentence_folder(tmp_path, pooling_mode_mean_tokens=True), "auto")[0] == "mean"
    shutil.rmtree(tmp_path / "st")
    assert resolve_pooling(_sentence_folder(tmp_path, pooling_mode_cls_token=True), "auto")[0] == "cls"
    shutil.rmtree(tmp_path / "st")
    both = resolve_pooling(_sentence_folder(tmp_path, pooling_mode_cls_token=True, pooling_mode_max_tokens=True), "auto")
    assert both[0] == "model" and "max + cls" in both[1]
    assert resolve_pooling(tiny_encoder, "auto")[0] == "model"  # a plain BERT folder: its own head
    assert resolve_pooling(tiny_encoder, "max") == ("max", "set in the recipe")


def test_the_bundled_encoder_pools_by_the_mean_its_embeddings_use():
    from tuneforge.models.loader import resolve_model

    pooling, why = resolve_pooling(resolve_model("all-minilm-l6-v2"), "auto")
    assert pooling == "mean" and "1_Pooling/config.json" in why


@pytest.fixture(scope="module")
def pooled_runs(tmp_path_factory, tiny_encoder):
    """A sentence-transformers copy of the tiny BERT (mean pooling), trained full (auto) and with LoRA."""
    from tuneforge.train.run import train

    root = tmp_path_factory.mktemp("pooled")
    encoder = shutil.copytree(tiny_encoder, root / "encoder")
    st = _sentence_folder(root, pooling_mode_mean_tokens=True)
    for item in st.iterdir():
        shutil.move(str(item), encoder / item.name)
    data = write_jsonl(root / "moods.jsonl", labelled_rows(150))
    return {"full": train(validate_recipe(head_recipe(encoder, data, "pooled-full")), root / "runs"),
            "lora": train(validate_recipe({**head_recipe(encoder, data, "pooled-lora", method="lora",
                                                         learning_rate=5e-3), "head": {"pooling": "max"}}),
                          root / "runs")}


def test_a_pooled_head_learns_and_its_run_records_the_pooling(pooled_runs):
    import yaml

    run = pooled_runs["full"]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["head"]["pooling"] == "mean"
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "pooled_encoder" and config["pooling"] == "mean"
    assert "pooler" not in json.dumps(sorted(_weight_names(run / "model")))  # BERT's pooler is not read
    assert (run / "model" / "pooled_encoder.py").is_file()
    assert main(["eval", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    tuned, majority = metrics["tuned"]["scores"], metrics["majority"]["scores"]
    assert tuned["accuracy"]["value"] > 0.9 and majority["accuracy"]["value"] < 0.5


def _weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        return list(f.keys())


PIPELINE = """
import json, sys
from transformers import pipeline
classifier = pipeline("text-classification", model=sys.argv[1], trust_remote_code=True)
print(json.dumps([{r["label"]: r["score"] for r in classifier(t, top_k=None)} for t in sys.argv[2:]]))
"""


@pytest.mark.parametrize("which", ["full", "lora"])
def test_the_exported_folder_loads_elsewhere_and_agrees_with_predict(pooled_runs, tmp_path, which):
    """In a fresh interpreter that never imported tuneforge, so the model class comes from the folder."""
    run, out = pooled_runs[which], tmp_path / "export"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert (out / "pooled_encoder.py").is_file() and "trust_remote_code=True" in (out / "README.md").read_text()
    texts = ["item 7 was lovely and lovely today", "item 8 was broken and broken today"]
    source = write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in texts])
    assert main(["predict", str(run), "--input", str(source), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = list(csv.DictReader((tmp_path / "p.csv").open()))
    done = subprocess.run([sys.executable, "-c", PIPELINE, str(out), *texts], capture_output=True, text=True,
                          check=True)
    for theirs, mine in zip(json.loads(done.stdout.strip().splitlines()[-1]), predicted):
        assert max(theirs, key=theirs.get) == mine["label"]
        for name, score in theirs.items():
            assert score == pytest.approx(float(mine[f"score_{name}"]), abs=1e-4)


def test_a_pooled_head_exports_to_onnx_within_the_check_and_refuses_a_bare_adapter(pooled_runs, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(pooled_runs["lora"]), "--format", "onnx", "--out", str(out)]) == 0
    check = json.loads((out / "onnx_check.json").read_text())
    assert check["rows"] > 0 and check["max_abs_difference"] < 1e-4
    capsys.readouterr()
    assert main(["export", str(pooled_runs["lora"]), "--format", "adapter", "--out", str(tmp_path / "a")]) == 2
    assert "head.pooling: max" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_pooling_is_refused_for_an_image_task(tmp_path, tiny_image_model, capsys):
    recipe = {"name": "img", "task": "image_classification", "model": {"name": str(tiny_image_model)},
              "data": {"sources": [str(tmp_path)]}, "head": {"pooling": "mean"}}
    with pytest.raises(UserError, match="head.pooling: an image model pools its own feature map"):
        validate_recipe(recipe)
    assert main(["train", str(write_recipe(tmp_path, recipe))]) == 2
    assert "head.pooling" in capsys.readouterr().err
