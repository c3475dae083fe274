"""The model card (README.md) every export carries: what the model is, how to load it, the recipe,
the data it saw and how it scored."""

import json
from pathlib import Path

from tuneforge.models.catalog import CATALOG
from tuneforge.models.loader import pooled_head
from tuneforge.recipe import Recipe
from tuneforge.runs.table import run_summary
from tuneforge.tasks import TASKS

USAGE = {
    "hf": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForCausalLM.from_pretrained("{path}")
messages = [{{"role": "user", "content": "What does `json.dumps` do?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=100)[0, inputs["input_ids"].shape[1]:]))
```""",
    "adapter": """```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{path}")  # fetches the base model {base}
tokenizer = AutoTokenizer.from_pretrained("{path}")
```

vLLM serves it as a LoRA module: `vllm serve {base} --enable-lora --lora-modules tuned={path}`.""",
    "hf_head": """```python
from transformers import pipeline

{remote}classifier = pipeline("text-classification", model="{path}"{trust})
print(classifier("the text to classify", top_k=None))  # every label with its score
```""",
    "onnx_head": """```python
import onnxruntime
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
session = onnxruntime.InferenceSession("{path}/model.onnx")
inputs = tokenizer(["the text to classify"], return_tensors="np")
logits = session.run(None, {{i.name: inputs[i.name] for i in session.get_inputs()}})[0]
```

Checked against PyTorch on {rows} test rows: largest logit difference {max_abs_difference:.1e} (tolerance {tolerance:g}).""",
    "hf_image": """```python
from transformers import pipeline

# trust_remote_code: the folder carries its model's code (efficientnet_lite.py) when transformers lacks it
classifier = pipeline("image-classification", model="{path}", trust_remote_code=True)
print(classifier("photo.jpg", top_k=3))
```""",
    "onnx_image": """```python
import onnxruntime
from PIL import Image
from transformers import AutoImageProcessor

processor = AutoImageProcessor.from_pretrained("{path}")
session = onnxruntime.InferenceSession("{path}/model.onnx")
pixels = processor([Image.open("photo.jpg").convert("RGB")], return_tensors="np")["pixel_values"]
logits = session.run(None, {{"pixel_values": pixels}})[0]
```

Checked against PyTorch on {rows} test images: largest logit difference {max_abs_difference:.1e} (tolerance {tolerance:g}).""",
    "adapter_head": """```python
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer

model = AutoPeftModelForSequenceClassification.from_pretrained("{path}")  # fetches the base model {base}
tokenizer = AutoTokenizer.from_pretrained("{path}")
```""",
    "hf_seq2seq": """```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForSeq2SeqLM.from_pretrained("{path}")
inputs = tokenizer(["What does `json.dumps` do?"], return_tensors="pt")  # the prompt, as in training
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=100)[0], skip_special_tokens=True))
```""",
    "adapter_seq2seq": """```python
from peft import AutoPeftModelForSeq2SeqLM
from transformers import AutoTokenizer

model = AutoPeftModelForSeq2SeqLM.from_pretrained("{path}")  # fetches the base model {base}
tokenizer = AutoTokenizer.from_pretrained("{path}")
```""",
    "gguf": """```
llama-cli -m {path}/{gguf} -cnv
ollama create tuned -f {path}/Modelfile && ollama run tuned
```""",
}


def _usage(recipe: Recipe, fmt: str) -> str:
    task = TASKS[recipe.task]
    if task.images and fmt in ("hf", "onnx"):
        return f"{fmt}_image"
    if task.encoder_decoder:
        return f"{fmt}_seq2seq"
    return f"{fmt}_head" if task.head else fmt


def model_card(run_dir: Path, recipe: Recipe, fmt: str, out: Path, extra: dict | None = None) -> str:
    summary = run_summary(run_dir)
    entry = CATALOG.get(recipe.model.name)
    base = entry.hub_id if entry else recipe.model.name
    licence = entry.licence if entry else "unknown"
    tags = ["tuneforge", recipe.method] + ([fmt] if fmt in ("gguf", "onnx") else [])
    lines = ["---", f"base_model: {base}", f"license: {licence.lower()}",
             f"library_name: {dict(adapter='peft', hf='transformers', gguf='gguf', onnx='onnx')[fmt]}",
             "tags:", *(f"- {t}" for t in tags), "---", "",
             f"# {run_dir.name}", "",
             f"{base} fine-tuned with tuneforge ({recipe.method}, {summary['steps']} steps) on "
             f"{_data_line(run_dir)}. Exported as `{fmt}` from the run folder `{run_dir}`.", "",
             "## Use", "", USAGE[_usage(recipe, fmt)].format(
                 path=out, base=base, **_remote_code(recipe), **(extra or {})), ""]
    lines += _metrics_section(run_dir, summary)
    lines += ["## Data", "", *_manifest_lines(run_dir), "",
              "## Recipe", "", "```yaml", (run_dir / "recipe.yaml").read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def _remote_code(recipe: Recipe) -> dict:
    """A pooled text head's folder carries its model's code (pooled_encoder.py): the snippet says so."""
    if pooled_head(recipe):
        return {"remote": f"# trust_remote_code: the folder carries its model's code (pooled_encoder.py: "
                          f"head.pooling {recipe.head.pooling})\n", "trust": ", trust_remote_code=True"}
    return {"remote": "", "trust": ""}


def _data_line(run_dir: Path) -> str:
    train = _manifest(run_dir).get("tokens", {}).get("train")
    return f"{train['rows']} training examples ({train['tokens']} tokens)" if train else "its recipe's data"


def _manifest(run_dir: Path) -> dict:
    path = run_dir / "data" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _manifest_lines(run_dir: Path) -> list[str]:
    """Sources with their hashes, examples and tokens per split, what cleaning removed (data/manifest.json)."""
    manifest = _manifest(run_dir)
    if not manifest:
        return ["(the run folder has no data manifest)"]
    lines = [f"- source: {s.get('kind', '?')} {s.get('path', '')} (sha256 {str(s.get('sha256', '?'))[:16]})".rstrip()
             for s in manifest.get("sources", [])]
    lines += [f"- {split}: {t['rows']} examples, {t['tokens']} tokens" for split, t in manifest.get("tokens", {}).items()
              if isinstance(t, dict)]
    counts = manifest.get("counts", {})
    removed = {k: counts[k] for k in ("invalid", "exact_duplicates", "near_duplicates", "too_long") if counts.get(k)}
    if removed:
        lines.append("- removed: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in removed.items()))
    if manifest.get("files"):
        lines.append("- split files (sha256): " + ", ".join(f"{k} {v[:12]}" for k, v in manifest["files"].items()))
    return lines


def _metrics_section(run_dir: Path, summary: dict) -> list[str]:
    lines = ["## Evaluation", ""]
    if summary["best_val_loss"] is not None:
        lines.append(f"Best validation loss {summary['best_val_loss']:.4f}.")
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return lines + ["Not evaluated yet (`tuneforge eval RUN` adds test-split metrics).", ""]
    metrics = json.loads(path.read_text())
    if "problem" in metrics:  # a head: against the linear probe (evaluate/heads.py)
        return lines + _head_metrics(metrics)
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = [(name, key) for name, key in (("perplexity (test)", "perplexity"), ("ROUGE-L", "rouge_l"),
                                          ("BLEU", "bleu"), ("chrF", "chrf")) if key in tuned]
    lines += ["", "| metric | base | tuned |", "|---|---|---|",
              *(f"| {name} | {_num(base.get(key))} | {_num(tuned.get(key))} |" for name, key in rows)]
    forgetting = metrics.get("forgetting")
    if forgetting:
        lines += ["", f"General-text perplexity (forgetting check): {forgetting['base']:.2f} -> "
                      f"{forgetting['tuned']:.2f} ({forgetting['change']:+.1%}"
                      f"{', flagged' if forgetting.get('flagged') else ''})."]
    return lines + [""]


def _head_metrics(metrics: dict) -> list[str]:
    names = list(metrics["tuned"]["scores"])
    lines = ["", f"On {metrics['test_examples']} test examples (bootstrap 95% intervals); probe = a linear model on "
                 "the pre-trained encoder's embeddings.", "", "| metric | majority | probe | tuned |", "|---|---|---|---|"]
    for name in names:
        cells = [metrics[m]["scores"][name] for m in ("majority", "probe", "tuned")]
        lines.append(f"| {name} | " + " | ".join(f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" for c in cells) + " |")
    paired = metrics["paired"]["tuned_vs_probe"]
    lines += ["", f"Tuned against the probe per example: {paired['wins']} better, {paired['ties']} same, "
                  f"{paired['losses']} worse (paired bootstrap p = {paired['p_value']:.4f})."]
    return lines + [""]


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"
