"""lm-evaluation-harness on a run's model, through its Python API (no subprocess, no hub).

Tasks are lm-eval's own names (they need their data sets: network or a local copy) or task YAML files in
a folder given with `include_path`; `text_task` writes such a folder for plain documents (a wikitext-style
`loglikelihood_rolling` task over a JSON-lines file), which runs offline.
"""

import json
from pathlib import Path

from tuneforge.errors import UserError

TEXT_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""


def text_task(folder: Path, name: str, texts: list[str]) -> Path:
    """A local lm-eval task named `name` that scores `texts` as documents; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(TEXT_TASK.format(name=name, data=json.dumps(str(data.resolve()))))
    return folder


def run_lm_eval(model, tokenizer, tasks: list[str], include_path: str | Path | None = None,
                batch_size: int = 1, max_length: int | None = None, limit: int | None = None,
                device: str = "cpu", autocast_dtype=None) -> dict:
    """lm-eval's results for `tasks` on an already-loaded model: {task: {metric: value}}. A model whose
    linear weights are stored in bf16 / fp16 (RunModels) needs `autocast_dtype`: lm-eval opens its own
    autocast context around each forward."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--lm-eval needs lm-evaluation-harness: pip install -c constraints.txt 'tuneforge[lm-eval]'") \
            from None
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--lm-eval-include: {include_path} is not a folder of task YAML files.")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise UserError(f"--lm-eval: unknown task(s) {', '.join(unknown)}. Name lm-eval tasks (lm-eval ls tasks) "
                        "or give a folder of task YAML files with --lm-eval-include.")
    # log-softmax in fp32 even when the model runs in bf16 (as tuneforge's own perplexity does): lm-eval's
    # default takes it in the logits' dtype, which moved word perplexity by 0.3% on the tiny test model
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device,
               mixed_precision_dtype=autocast_dtype, softmax_dtype="float32")
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                          bootstrap_iters=0)
    return {task: {k.split(",")[0]: v for k, v in values.items() if k != "alias" and not k.endswith("_stderr,none")}
            for task, values in out["results"].items()}
