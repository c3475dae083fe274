"""`tuneforge export RUN --format onnx` for a classification / regression run: the merged model as one
ONNX graph (torch.onnx's exporter over torch.export, batch and sequence length dynamic) that maps
input_ids, attention_mask (and token_type_ids) to logits, with the tokenizer and config next to it; for an
image run, pixel_values (batch dynamic, the processor's size) to logits, with the image processor.

The export is checked before it is kept: onnxruntime and PyTorch run the same test rows, and the
logits must agree within TOLERANCE, or nothing is written."""

import contextlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from tuneforge.errors import UserError

TOLERANCE = 1e-4
OPSET = 18


def export_onnx(hf_dir: Path, folder: Path, check_texts: list[str]) -> dict:
    """Write folder/model.onnx from the transformers folder `hf_dir`; returns what the check measured."""
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    sample = tokenizer(["a short text", "a longer text, so that the batch has padding in it"], padding=True,
                       return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    folder.mkdir(parents=True)
    print("Exporting to ONNX ...", flush=True)
    with _quiet():
        torch.onnx.export(_Logits(model).eval(), tuple(sample[n] for n in names), folder / "model.onnx",
                          input_names=names, output_names=["logits"],
                          dynamic_shapes={n: {0: batch, 1: length} for n in names}, opset_version=OPSET,
                          dynamo=True, optimize=True, verbose=False)
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    check = _check(model, tokenizer, folder / "model.onnx", names, check_texts or ["a text"],
                   onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]))
    (folder / "onnx_check.json").write_text(json.dumps(check, indent=1) + "\n")
    return check


def export_image_onnx(hf_dir: Path, folder: Path, check_images: list[str]) -> dict:
    """Write folder/model.onnx for an image classifier; checked on the test split's images."""
    import onnxruntime
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tuneforge.models import loader  # noqa: F401  (registers the bundled EfficientNet-Lite's classes)
    from tuneforge.tasks.image_inputs import pixel_values

    model = AutoModelForImageClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(hf_dir)
    sample = pixel_values(processor, (check_images * 2)[:2])  # two: a batch of one would be traced as fixed
    folder.mkdir(parents=True)
    print("Exporting to ONNX ...", flush=True)
    with _quiet():
        torch.onnx.export(_ImageLogits(model).eval(), (sample,), folder / "model.onnx", input_names=["pixel_values"],
                          output_names=["logits"], dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
                          opset_version=OPSET, dynamo=True, optimize=True, verbose=False)
    processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(check_images), 16):
            pixels = pixel_values(processor, check_images[i:i + 16])
            theirs = session.run(None, {"pixel_values": pixels.numpy()})[0]
            worst = max(worst, float(np.abs(theirs - model(pixel_values=pixels).logits.numpy()).max()))
    check = _verdict(folder / "model.onnx", worst, len(check_images))
    (folder / "onnx_check.json").write_text(json.dumps(check, indent=1) + "\n")
    return check


class _ImageLogits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


@contextlib.contextmanager
def _quiet():
    """The exporter's notes that do not concern this model (torchvision's ops missing, axis renames)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


class _Logits(torch.nn.Module):
    """The model with tensors in and logits out, the form torch.export traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


@torch.no_grad()
def _check(model, tokenizer, path: Path, names: list[str], texts: list[str], session) -> dict:
    worst = 0.0
    for i in range(0, len(texts), 16):
        enc = tokenizer(texts[i:i + 16], padding=True, truncation=True, max_length=512, return_tensors="np")
        theirs = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
        ours = model(**{n: torch.from_numpy(enc[n].astype(np.int64)) for n in names}).logits.numpy()
        worst = max(worst, float(np.abs(theirs - ours).max()))
    return _verdict(path, worst, len(texts))


def _verdict(path: Path, worst: float, rows: int) -> dict:
    if worst > TOLERANCE:
        raise UserError(f"{path}: onnxruntime's logits differ from PyTorch's by up to {worst:.2e} (more than "
                        f"{TOLERANCE:g}) on {rows} test rows; the export was not kept. Export --format hf.")
    return {"rows": rows, "max_abs_difference": worst, "tolerance": TOLERANCE, "opset": OPSET}
