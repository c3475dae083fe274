"""`tuneforge export RUN --format hf | adapter | gguf | onnx`: a run's model in the form other tools load.

hf: the adapter merged into the base (transformers, vLLM, TGI); adapter: the PEFT adapter alone (PEFT,
vLLM --lora-modules); gguf: one llama.cpp file (llama.cpp, Ollama, LM Studio; decoder-only models);
onnx: a classification or regression model as one ONNX graph (onnxruntime), checked against PyTorch (deploy/onnx.py). Each
export is a folder with a model card; it is written next to its final place and renamed, so an
interrupted export leaves nothing behind and an existing path is never replaced unless --overwrite
says so.
"""

import json
import os
import shutil
from pathlib import Path

from tuneforge.deploy import gguf
from tuneforge.deploy.card import model_card
from tuneforge.errors import UserError
from tuneforge.methods import get_method
from tuneforge.models.catalog import CATALOG
from tuneforge.models.loader import pooled_head
from tuneforge.recipe_file import load_recipe
from tuneforge.run_folder import open_run
from tuneforge.tasks import get_task

FORMATS = ("hf", "adapter", "gguf", "onnx")
FOR = {"gguf": "generative decoder-only models (llama.cpp, Ollama)",
       "onnx": "classification and regression runs (one graph with the head)"}


def default_out(run_dir: Path, fmt: str, quant: str) -> Path:
    return Path("exports") / (f"{run_dir.name}-{fmt}" + (f"-{quant}" if fmt == "gguf" else ""))


def export_run(run_dir: Path, fmt: str, out: Path | None = None, quant: str = "f16", overwrite: bool = False) -> Path:
    run_dir = open_run(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise UserError(f"{run_dir}: has no model/ (training did not finish); nothing to export. "
                        f"Continue it with: tuneforge train --resume {run_dir}")
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}.")
    if quant not in gguf.QUANTS:
        raise UserError(f"--quant: {quant!r} is not one of {', '.join(gguf.QUANTS)}.")
    method = get_method(recipe.method)
    adapter = method.adapter
    task = get_task(recipe.task)
    pooled = pooled_head(recipe)
    fits = [f for f in FORMATS if (f != "onnx" or task.head) and (f != "adapter" or (adapter and not pooled))
            and (f != "gguf" or not (task.head or task.encoder_decoder))]
    if fmt == "adapter" and pooled:
        raise UserError(f"{run_dir}: its head pools the token states (head.pooling: {recipe.head.pooling}) in a model "
                        "class of tuneforge's own, which PEFT's AutoPeft classes cannot rebuild from an adapter; "
                        "export it with --format hf (the adapter merged, the class's code in the folder).")
    if fmt == "adapter" and not adapter:
        raise UserError(f"{run_dir}: a {recipe.method} run changed the model's own weights, so it has no adapter; "
                        f"export it with --format {' or '.join(fits)}.")
    if fmt not in fits:
        raise UserError(f"{run_dir}: --format {fmt} is for {FOR[fmt]}; a {recipe.method} {recipe.task} run exports with "
                        f"--format {', '.join(fits)}.")
    if fmt != "adapter" and not method.mergeable:
        raise UserError(f"{run_dir}: a prompt-tuning run's soft prompt cannot be merged into the weights; "
                        "export it with --format adapter (PEFT loads it).")
    out = out or default_out(run_dir, fmt, quant)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; nothing was written. Choose another --out or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extra = _write(run_dir, recipe, fmt, quant, tmp, adapter)
        (tmp / "README.md").write_text(model_card(run_dir, recipe, fmt, out, extra))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(run_dir: Path, recipe, fmt: str, quant: str, folder: Path, adapter: bool) -> dict:
    model_dir = run_dir / "model"
    if fmt == "adapter":
        shutil.copytree(model_dir, folder)
        _point_adapter_at_hub(folder, recipe.model.name)
        return {}
    if fmt == "hf":
        _merged(run_dir, recipe, folder, adapter)
        return {}
    if fmt == "onnx":
        from tuneforge.data.prepare import read_split
        from tuneforge.deploy.onnx import export_image_onnx, export_onnx

        hf_dir = folder.with_name(f"{folder.name}-hf")
        try:
            _merged(run_dir, recipe, hf_dir, adapter)
            test = read_split(run_dir / "data", "test")[:64]
            if get_task(recipe.task).images:
                images = [r["image"] for r in test or read_split(run_dir / "data", "train")[:8]]
                return export_image_onnx(hf_dir, folder, images)
            return export_onnx(hf_dir, folder, [r["text"] for r in test])
        finally:
            shutil.rmtree(hf_dir, ignore_errors=True)
    folder.mkdir()
    name = f"{run_dir.name}-{quant}.gguf"
    hf_dir = folder / "hf"
    _merged(run_dir, recipe, hf_dir, adapter)
    gguf.convert(hf_dir, folder / name, quant)
    shutil.rmtree(hf_dir)
    (folder / "Modelfile").write_text(f"FROM ./{name}\n")  # Ollama reads the chat template from the GGUF
    return {"gguf": name}


def _merged(run_dir: Path, recipe, folder: Path, adapter: bool) -> None:
    """A plain transformers folder: the adapter merged into an fp32 base (with a task's head and its
    id2label), or the full run's weights."""
    from tuneforge.models.loader import load_inputs, load_model, resolve_model

    model_dir = run_dir / "model"
    if not adapter:
        shutil.copytree(model_dir, folder)
        return
    from peft import PeftModel

    print("Merging the adapter into the base model ...", flush=True)
    if get_task(recipe.task).head:
        from tuneforge.inference.heads import HeadModel

        merged = HeadModel(run_dir).model.cpu().merge_and_unload()
    else:
        base = load_model(resolve_model(recipe.model.name), model_class=get_task(recipe.task).model_class)
        merged = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    merged.save_pretrained(folder)
    load_inputs(model_dir, get_task(recipe.task)).save_pretrained(folder)


def _point_adapter_at_hub(folder: Path, model_name: str) -> None:
    """The run's adapter names the base by its local cache path; an exported one names the hub id, so
    PEFT and vLLM elsewhere can fetch the base."""
    entry = CATALOG.get(model_name)
    if entry is None:
        return
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = entry.hub_id
    path.write_text(json.dumps(config, indent=2) + "\n")
