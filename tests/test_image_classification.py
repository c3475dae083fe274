"""image_classification on a tiny random EfficientNet-Lite built in-process, over three classes of
generated pattern images: augmentation only for training, the plan, training, the evaluation against the
majority class and a linear probe, predict, and the exports (transformers' image-classification pipeline
on the hf folder, onnxruntime on the ONNX graph)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import pattern_image, read_jsonl, write_image_folder
from conftest import post_json as post

from tuneforge.cli.main import main
from tuneforge.recipe_file import validate_recipe


def image_run_recipe(model, data, name: str, **train) -> dict:
    return {"name": name, "task": "image_classification", "model": {"name": str(model)},
            "data": {"sources": [str(data)], "val_ratio": 0.15, "test_ratio": 0.2},
            "train": {"global_batch_size": 8, "max_steps": 60, "eval_every": 30, "learning_rate": 3e-3,
                      "precision": "fp32", **train}}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_image_model):
    from tuneforge.train.run import train

    root = tmp_path_factory.mktemp("image-run")
    data = write_image_folder(root / "patterns", per_class=30)
    return train(validate_recipe(image_run_recipe(tiny_image_model, data, "patterns")), root / "runs")


def test_training_augments_and_validation_does_not(tiny_image_model, tmp_path):
    from tuneforge.models.loader import load_inputs
    from tuneforge.tasks import get_task
    from tuneforge.tasks.image_inputs import ImageExample

    task = get_task("image_classification")
    processor = load_inputs(tiny_image_model, task)
    path = tmp_path / "one.png"
    pattern_image("stripes", 1, size=48).save(path)
    rows = [ImageExample("a", str(path), 0)] * 4
    recipe = validate_recipe({"task": "image_classification"})
    collate = task.collator(processor, "single_label_classification", recipe)
    torch.manual_seed(0)
    train = collate(rows, training=True)["pixel_values"]
    assert train.shape == (4, 3, 32, 32)
    assert len({t.numpy().tobytes() for t in train}) == 4  # four different crops / flips of the same image
    plain = collate(rows)["pixel_values"]
    assert torch.equal(plain[0], plain[3])
    recipe.data.image.augment = False
    assert torch.equal(task.collator(processor, "single_label_classification", recipe)(rows, training=True)
                       ["pixel_values"], plain)


def test_random_resized_crop_keeps_the_asked_share_of_the_area():
    from PIL import Image

    from tuneforge.tasks.image_inputs import random_resized_crop

    torch.manual_seed(0)
    image = Image.new("RGB", (100, 80))
    areas = [np.prod(random_resized_crop(image, 0.5).size) / 8000 for _ in range(200)]
    assert min(areas) >= 0.48 and max(areas) <= 1.0 and np.mean(areas) > 0.6


def test_the_run_trains_the_whole_model_with_the_largest_micro_batch(image_run, tiny_image_model):
    from safetensors.torch import load_file

    recipe = yaml.safe_load((image_run / "recipe.yaml").read_text())
    assert recipe["method"] == "full" and recipe["data"]["image"]["size"] == 32  # derived: the model's own
    plan = json.loads((image_run / "plan.json").read_text())
    assert plan["micro_batch"] == 8 and plan["accumulation"] == 1  # BatchNorm sees the whole batch
    assert plan["derived"]["data.image.size"]["value"] == 32
    assert (image_run / "model" / "efficientnet_lite.py").is_file()
    processor = json.loads((image_run / "model" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32}
    before, after = load_file(tiny_image_model / "model.safetensors"), load_file(image_run / "model" / "model.safetensors")
    moved = [k for k in before if "classifier" not in k and k in after and not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2
    log = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_loss" in r]
    assert val[-1]["val_loss"] < val[0]["val_loss"]


def test_eval_beats_the_majority_and_writes_the_image_report(image_run):
    from tuneforge.evaluate.heads import evaluate_head

    metrics = evaluate_head(image_run)
    assert metrics["images"] and metrics["test_examples"] == 18
    assert metrics["tuned"]["scores"]["accuracy"]["value"] > metrics["majority"]["scores"]["accuracy"]["value"] + 0.2
    assert metrics["probe"]["scores"]["accuracy"]["value"] > 0.3
    f = metrics["forgetting"]
    assert f["documents"] == 51 and -1 <= f["min_cosine"] <= f["mean_cosine"] <= 1
    predictions = read_jsonl(image_run / "eval" / "predictions.jsonl")
    assert len(predictions) == 18 and all(p["image"].endswith(".png") and "tuned" in p for p in predictions)
    assert (image_run / "eval" / "confusion.png").is_file()
    assert "pooled features" in (image_run / "eval" / "report.md").read_text()


def test_predict_reads_image_paths_and_image_folders(image_run, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "new", per_class=2, start=100)
    files = sorted(folder.rglob("*.png"))
    (tmp_path / "rows.csv").write_text("image\n" + "".join(f"new/{f.parent.name}/{f.name}\n" for f in files))
    assert main(["predict", str(image_run), "--input", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith("id,image,label,score,score_checks") and len(lines) == 7
    assert main(["predict", str(image_run), "--input", str(folder), "--out", str(tmp_path / "p.jsonl")]) == 0
    records = read_jsonl(tmp_path / "p.jsonl")
    assert {r["true_label"] for r in records} == {"checks", "columns", "stripes"} and all("label" in r for r in records)
    (tmp_path / "bad.csv").write_text("image\nmissing.png\n")
    assert main(["predict", str(image_run), "--input", str(tmp_path / "bad.csv")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_hf_export_loads_in_the_image_classification_pipeline(image_run, tmp_path):
    """In a fresh interpreter, so only the exported folder's own code file defines the model."""
    import subprocess
    import sys

    from tuneforge.inference.heads import HeadModel

    assert main(["export", str(image_run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "image-classification" in (tmp_path / "hf" / "README.md").read_text()
    test = read_jsonl(image_run / "data" / "test.jsonl")[:6]
    paths = [str(image_run / "data" / r["image"]) for r in test]
    ours = HeadModel(image_run).outputs([{"image": p} for p in paths])
    script = ("import json, sys; from transformers import pipeline; "
              f"c = pipeline('image-classification', model={str(tmp_path / 'hf')!r}, trust_remote_code=True); "
              f"print(json.dumps([c(p, top_k=None) for p in {paths!r}]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    names = sorted({"checks", "columns", "stripes"})
    for probs, scores in zip(ours, theirs):
        assert scores[0]["label"] == names[int(np.argmax(probs))]
        assert abs(scores[0]["score"] - float(np.max(probs))) < 1e-4


def test_onnx_export_matches_pytorch(image_run, tmp_path):
    import onnxruntime
    from transformers import AutoImageProcessor

    from tuneforge.tasks.image_inputs import pixel_values

    assert main(["export", str(image_run), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    check = json.loads((tmp_path / "onnx" / "onnx_check.json").read_text())
    assert check["rows"] == 18 and check["max_abs_difference"] < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    processor = AutoImageProcessor.from_pretrained(tmp_path / "onnx")
    paths = [str(image_run / "data" / r["image"]) for r in read_jsonl(image_run / "data" / "test.jsonl")[:5]]
    logits = session.run(None, {"pixel_values": pixel_values(processor, paths).numpy()})[0]
    assert logits.shape == (5, 3)


def test_lora_adapts_named_convolutions_and_all_linear_is_refused(tiny_image_model, tmp_path):
    from tuneforge.errors import UserError
    from tuneforge.inference.heads import HeadModel
    from tuneforge.train.run import train

    data = write_image_folder(tmp_path / "patterns", per_class=12)
    recipe = image_run_recipe(tiny_image_model, data, "lora", max_steps=4, eval_every=4)
    with pytest.raises(UserError, match=r"no linear layer outside its new head .* \[project\.0\]"):
        train(validate_recipe({**recipe, "method": "lora"}), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    run = train(validate_recipe({**recipe, "method": "lora", "lora": {"target_modules": ["project.0"], "r": 2}}),
                tmp_path / "runs")
    config = json.loads((run / "model" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["target_modules"] == ["project.0"]
    probs = HeadModel(run).outputs([{"image": str(p)} for p in sorted(data.rglob("*.png"))[:4]])
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_preview_writes_each_example_as_the_model_sees_it(tiny_image_model, tmp_path):
    from PIL import Image

    from tuneforge.data.preview import preview

    data = write_image_folder(tmp_path / "patterns", per_class=5)
    text = preview(validate_recipe(image_run_recipe(tiny_image_model, data, "preview")), 3)
    assert "data.image.size = 32" in text and "(40 x 40) -> label" in text
    png = text.rsplit("Wrote ", 1)[1].strip()
    assert Image.open(png).size[0] > 400  # five columns: stored, model input, three training views


def test_the_server_classifies_data_urls_and_embeds_images(image_run):
    import base64

    from openai import OpenAI

    from tuneforge.inference.heads import HeadModel
    from tuneforge.serve.server import Background, build

    paths = [str(image_run / "data" / r["image"]) for r in read_jsonl(image_run / "data" / "test.jsonl")[:3]]
    urls = ["data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode() for p in paths]
    expected = HeadModel(image_run).outputs([{"image": p} for p in paths])
    app, engine, _ = build([image_run], image_run.parent / "requests.sqlite", precision="fp32")
    with Background(app) as srv:
        status, body = post(srv.url + "/v1/classify", {"model": "patterns", "input": urls})
        assert status == 200 and body["usage"] == {"prompt_tokens": 0, "total_tokens": 0, "images": 3}
        for served, probs in zip(body["data"], expected):
            assert abs(served["score"] - float(np.max(probs))) < 1e-4
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        vectors = client.embeddings.create(model="patterns", input=urls[:2]).data
        assert len(vectors) == 2 and abs(np.linalg.norm(vectors[0].embedding) - 1) < 1e-4
        for bad, why in (("a text, not an image", "not base64 image data"),
                         (base64.b64encode(b"not a picture").decode(), "is not an image Pillow can read")):
            status, body = post(srv.url + "/v1/classify", {"model": "patterns", "input": [urls[0], bad]})
            assert status == 400 and body["error"]["param"] == "input[1]" and why in body["error"]["message"]
    engine.stop()


def test_any_image_classifier_trains_a_tiny_vit_in_full_and_with_lora(tmp_path):
    """The generic path: a transformers ViT (linear layers, so LoRA's all-linear applies) with its own
    processor; 20-pixel images keep the ViT's own 32 (its position embeddings are for that size)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from tuneforge.evaluate.heads import evaluate_head
    from tuneforge.train.run import train

    torch.manual_seed(0)
    vit = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    data = tmp_path / "patterns"
    for c, kind in enumerate(("stripes", "columns", "checks")):
        (data / kind).mkdir(parents=True)
        for i in range(12):
            pattern_image(kind, 100 * c + i, size=20).save(data / kind / f"{i}.png")
    from safetensors.torch import load_file

    before = load_file(vit / "model.safetensors")
    for method in ("full", "lora"):
        run = train(validate_recipe({**image_run_recipe(vit, data, f"vit-{method}", max_steps=6, eval_every=6,
                                                        early_stopping_patience=None),
                                     "method": method}), tmp_path / "runs")
        assert yaml.safe_load((run / "recipe.yaml").read_text())["data"]["image"]["size"] == 32
        metrics = evaluate_head(run)
        assert metrics["test_examples"] == 6 and len(metrics["tuned"]["per_class"]) == 3  # 2 of each class
        if method == "full":
            after = load_file(run / "model" / "model.safetensors")
            assert not torch.equal(before["vit.encoder.layer.0.attention.attention.query.weight"],
                                   after["vit.encoder.layer.0.attention.attention.query.weight"])
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["classifier"] and any("attention" in t for t in adapter["target_modules"])
    lora = load_file(run / "model" / "adapter_model.safetensors")
    assert any("attention" in k and "lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())


def test_a_text_model_for_images_and_an_image_model_for_text_are_refused(tiny_model, tiny_image_model, tmp_path,
                                                                         capsys):
    data = write_image_folder(tmp_path / "patterns", per_class=4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(image_run_recipe(tiny_model, data, "mixed")))
    assert main(["train", str(recipe), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "has no image processor" in capsys.readouterr().err
    assert main(["train", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--set", f"model.name={tiny_image_model}",
                 "--set", "task=classification"]) == 2
    assert "is an image model" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_freeze_keeps_the_frozen_batch_norm_statistics(tiny_image_model, tmp_path):
    from safetensors.torch import load_file

    from tuneforge.train.run import train

    data = write_image_folder(tmp_path / "patterns", per_class=12)
    run = train(validate_recipe({**image_run_recipe(tiny_image_model, data, "freeze", max_steps=8, eval_every=8,
                                                    early_stopping_patience=None),
                                 "method": "freeze", "freeze": {"trainable_blocks": 1}}), tmp_path / "runs")
    before, after = load_file(tiny_image_model / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    stats = [k for k in before if k.endswith("running_mean")]
    last = [k for k in stats if ".blocks.2." in k]  # the one block that learns (3 blocks in all)
    assert last and all(not torch.equal(before[k], after[k]) for k in last)
    assert all(torch.equal(before[k], after[k]) for k in stats if k not in last)
