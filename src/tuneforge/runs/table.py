"""`tuneforge runs ls` and `tuneforge runs compare`: runs as tables, read from their folders only."""

import json
from pathlib import Path

import yaml

from tuneforge.errors import UserError
from tuneforge.run_folder import open_run, read_metrics


def run_summary(run_dir: Path) -> dict:
    """What a table row says about one run folder."""
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    records = read_metrics(run_dir)
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    steps = max((r.get("step", 0) for r in records), default=0)
    evaluation = run_dir / "eval" / "metrics.json"
    metrics = json.loads(evaluation.read_text()) if evaluation.is_file() else {}
    tuned = metrics.get("tuned", {})
    if metrics:
        status = "evaluated"
    elif (run_dir / "model").is_dir():
        status = "trained"
    else:
        status = f"incomplete (step {steps})"
    return {"name": run_dir.name, "model": recipe.get("model", {}).get("name", "?"), "method": recipe.get("method", "?"),
            "task": recipe.get("task", "chat"), "recipe": recipe, "steps": steps,
            "best_val_loss": min(vals) if vals else None,
            "perplexity": tuned.get("perplexity"), "rouge_l": tuned.get("rouge_l"), "bleu": tuned.get("bleu"),
            "head": _head_score(metrics), "forgetting": metrics.get("forgetting", {}).get("change"), "status": status}


def _head_score(metrics: dict) -> str | None:
    """A classification / regression run's headline on the test split (evaluate/heads.py), as `name value`."""
    scores = metrics.get("tuned", {}).get("scores", {}) if "problem" in metrics else {}
    name = next((n for n in ("accuracy", "exact_match", "rmse") if n in scores), None)
    return f"{name} {scores[name]['value']:.3f}" if name else None


def _hyperparameters(summary: dict) -> str:
    recipe = summary["recipe"]
    train = recipe.get("train", {})
    parts = [f"lr {train.get('learning_rate', '?'):g}" if isinstance(train.get("learning_rate"), float) else "",
             f"batch {train.get('global_batch_size', '?')}", f"steps {summary['steps']}"]
    if summary["method"] in ("lora", "rslora", "dora", "qlora"):
        parts.insert(1, f"r {recipe.get('lora', {}).get('r', '?')}")
    return ", ".join(p for p in parts if p)


def _fmt(value, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def list_runs(runs_dir: Path, missing_ok: bool = False) -> str:
    """The runs under runs_dir as a table; a folder without runs (or, with missing_ok, no folder: the
    default runs/ before the first run) is an empty table. A folder named but missing is a typo."""
    if not runs_dir.is_dir() and not missing_ok:
        raise UserError(f"{runs_dir}: no such folder. Runs are written under runs/ by `tuneforge train`; "
                        "pass another folder with --runs-dir.")
    found = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    summaries = [run_summary(p) for p in found if (p / "recipe.yaml").is_file()]
    header = ["name", "model", "method", "task", "hyperparameters", "best val", "ppl", "ROUGE-L", "BLEU", "head",
              "forgetting", "status"]
    rows = [[s["name"], s["model"], s["method"], s["task"], _hyperparameters(s), _fmt(s["best_val_loss"], "{:.4f}"),
             _fmt(s["perplexity"]), _fmt(s["rouge_l"], "{:.1f}"), _fmt(s["bleu"], "{:.1f}"), s["head"] or "-",
             _fmt(s["forgetting"], "{:+.1%}"), s["status"]] for s in summaries]
    table = format_table(header, rows)
    if not rows:
        table += f"\n(no runs in {runs_dir} yet; train one: tuneforge train recipes/pydocs-lora.yaml)"
    return table


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_runs(run_dirs: list[Path], plot: Path) -> str:
    """Recipe keys that differ, then results, one column per run; the loss curves overlaid in `plot`."""
    if len(run_dirs) < 2:
        raise UserError("runs compare needs two or more run folders, for instance: "
                        "tuneforge runs compare runs/pydocs-lora runs/pydocs-full")
    if plot.suffix != ".png":
        raise UserError(f"--out: {plot} must end in .png.")
    summaries = [run_summary(open_run(p)) for p in run_dirs]
    names = [s["name"] for s in summaries]
    if len(set(names)) < len(names):
        names = [str(p) for p in run_dirs]
    flat = [_flatten(s["recipe"]) for s in summaries]
    keys = sorted({k for f in flat for k in f if len({json.dumps(x.get(k), sort_keys=True) for x in flat}) > 1})
    rows = [[key, *(json.dumps(f.get(key)) for f in flat)] for key in keys if key != "name"]
    rows += [["best val loss", *(_fmt(s["best_val_loss"], "{:.4f}") for s in summaries)],
             ["steps", *(str(s["steps"]) for s in summaries)],
             ["test perplexity", *(_fmt(s["perplexity"]) for s in summaries)],
             ["ROUGE-L", *(_fmt(s["rouge_l"], "{:.1f}") for s in summaries)],
             ["BLEU", *(_fmt(s["bleu"], "{:.1f}") for s in summaries)],
             ["head (test)", *(s["head"] or "-" for s in summaries)],
             ["forgetting", *(_fmt(s["forgetting"], "{:+.1%}") for s in summaries)],
             ["status", *(s["status"] for s in summaries)]]
    from tuneforge.evaluate.plots import loss_curves

    drawn = loss_curves(dict(zip(names, run_dirs)), plot)
    text = format_table(["", *names], rows)
    return text + (f"\n\nLoss curves: {drawn}" if drawn else "\n\n(no logged losses to plot)")
