"""EfficientNet-Lite as a transformers model: the architecture (TF "SAME" padding, skips, the pooled
features), save / reload through the auto classes and, elsewhere, as remote code; the bundled ImageNet
weights converted once and classifying real photographs through transformers' pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from transformers import AutoModelForImageClassification

from tuneforge.models.catalog import CATALOG
from tuneforge.models.efficientnet_lite import (LITE0_STAGES, EfficientNetLiteConfig,
                                                EfficientNetLiteForImageClassification, SameConv, from_lukemelas)
from tuneforge.models.loader import resolve_model

TINY_STAGES = [(1, 3, 1, 1, 8, 8), (2, 5, 2, 4, 8, 12)]


def tiny_model(num_labels: int = 3) -> EfficientNetLiteForImageClassification:
    torch.manual_seed(0)
    config = EfficientNetLiteConfig(stages=TINY_STAGES, stem_channels=8, head_channels=16, num_labels=num_labels)
    return EfficientNetLiteForImageClassification(config).eval()


@pytest.mark.parametrize("size", [7, 8, 31, 32])
@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (5, 2)])
def test_same_padding_gives_tensorflow_output_sizes(size, kernel, stride):
    """ceil(input / stride) for every size and kernel, the extra row and column of an odd padding on the
    bottom / right (as TensorFlow pads): a ones kernel over ones shows where the zeros went."""
    conv = SameConv(1, 1, kernel, stride, bias=False)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, size, size))
    assert out.shape[-1] == -(-size // stride)
    total = max((out.shape[-1] - 1) * stride + kernel - size, 0)
    if total % 2:  # the top-left output sees fewer zeros than the bottom-right one
        assert out[0, 0, 0, 0] > out[0, 0, -1, -1]


def test_blocks_follow_the_stage_table():
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=1000))
    blocks = model.efficientnet_lite.blocks
    assert len(blocks) == sum(s[0] for s in LITE0_STAGES) == 16
    assert blocks[0].expand is None and blocks[1].expand is not None
    assert [b.skip for b in blocks[:3]] == [False, False, True]  # the first of a stage changes the shape
    assert sum(p.numel() for p in model.parameters()) == CATALOG["efficientnet-lite0"].params


def test_forward_gives_logits_pooled_features_and_a_loss():
    model = tiny_model()
    pixels = torch.randn(2, 3, 33, 40)  # any size: the features are averaged over the spatial grid
    labels = torch.tensor([0, 2])
    out = model(pixels, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (2, 3) and out.hidden_states[0].shape == (2, 16)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reloads_through_the_auto_class_and_as_remote_code(tmp_path):
    """In this process the auto class knows the model; a fresh Python without tuneforge loads the saved
    folder from the code file it carries (trust_remote_code) and gives the same logits."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("efficientnet_lite.")
    assert "tuneforge" not in (tmp_path / "efficientnet_lite.py").read_text().split('"""', 2)[2]
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model(pixels).logits
        assert torch.equal(AutoModelForImageClassification.from_pretrained(tmp_path).eval()(pixels).logits, expected)
    script = ("import sys, torch; from transformers import AutoModelForImageClassification as A; "
              "assert 'tuneforge' not in sys.modules; "
              "m = A.from_pretrained(sys.argv[1], trust_remote_code=True).eval(); "
              "print(m(torch.load(sys.argv[1] + '/pixels.pt')).logits.tolist())")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.allclose(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])), expected, atol=1e-6)


def test_lukemelas_keys_map_onto_every_parameter():
    """A state dict in lukemelas' layout (as the bundled package carries it) fills the model exactly."""
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=1000))
    ours = model.state_dict()
    renamed = {"stem.0": "_conv_stem", "stem.1": "_bn0", "head.0": "_conv_head", "head.1": "_bn1"}
    layers = {"expand.0": "_expand_conv", "expand.1": "_bn0", "depthwise.0": "_depthwise_conv",
              "depthwise.1": "_bn1", "project.0": "_project_conv", "project.1": "_bn2"}
    theirs = {}
    for key, value in ours.items():
        if key.startswith("classifier."):
            theirs["_fc." + key.split(".", 1)[1]] = value
            continue
        parts = key.split(".")[1:]
        if parts[0] == "blocks":
            theirs[".".join(["_blocks", parts[1], layers[".".join(parts[2:4])], *parts[4:]])] = value
        else:
            theirs[".".join([renamed[".".join(parts[:2])], *parts[2:]])] = value
    mapped = from_lukemelas(theirs | {"_bn0.num_batches_tracked": torch.tensor(0)})
    assert mapped.keys() == {k for k in ours if not k.endswith("num_batches_tracked")}


@pytest.mark.e2e
def test_bundled_weights_classify_real_photographs():
    """The bundled ImageNet weights, converted once, through transformers' own pipeline: Grace Hopper's
    portrait (matplotlib's sample data) is a military uniform, class 652 in ImageNet's order."""
    from transformers import pipeline

    folder = resolve_model("efficientnet-lite0")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "efficientnet_lite.py"} <= {
        p.name for p in folder.iterdir()}
    assert resolve_model("efficientnet-lite0") == folder  # converted once, then found in the cache
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    top = pipeline("image-classification", model=str(folder), trust_remote_code=True)(str(photo), top_k=3)
    assert top[0]["label"] == "LABEL_652" and top[0]["score"] > 0.3, top
