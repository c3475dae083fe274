"""Create, find and describe run folders (runs/<name>/, see DESIGN.md's contract)."""

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.json_text import jsonl_lines


def create_run_dir(runs_dir: Path, name: str, overwrite: bool = False) -> Path:
    """A new, empty run folder. An existing run is never touched unless `overwrite` is asked for;
    without it a free name (name-2, name-3, ...) is chosen and said."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / name
    if path.exists() and overwrite:
        if not (path / "recipe.yaml").is_file():
            raise UserError(f"{path}: exists and is not a tuneforge run; refusing to replace it. Choose another name.")
        shutil.rmtree(path)
    elif path.exists():
        n = 2
        while (runs_dir / f"{name}-{n}").exists():
            n += 1
        path = runs_dir / f"{name}-{n}"
        print(f"{runs_dir / name} exists; writing this run to {path} (pass --overwrite to replace it).")
    path.mkdir()
    return path


def open_run(path: str | Path) -> Path:
    """A run folder to read; UserError if the folder is not a run."""
    path = Path(path)
    if not (path / "recipe.yaml").is_file():
        hint = f" Runs here: {', '.join(sorted(p.name for p in path.parent.iterdir() if (p / 'recipe.yaml').is_file()))}." \
            if path.parent.is_dir() else ""
        raise UserError(f"{path}: not a tuneforge run folder (no recipe.yaml). Pass a folder made by `tuneforge train`.{hint}")
    return path


def finished_model(run_dir: Path) -> Path:
    """The model/ folder of a run that finished training; UserError (with how to continue) otherwise."""
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise UserError(f"{run_dir}: has no model/ yet (training did not finish). "
                        f"Continue it with: tuneforge train --resume {run_dir}")
    return model_dir


def append_metrics(run_dir: Path, record: dict) -> None:
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
    return records


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop lines logged after `last_step` (a resume repeats those steps)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def write_env(run_dir: Path, seed: int, device: str, precision: str, processes: int = 1) -> None:
    import peft
    import transformers

    env = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "seed": seed,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "tuneforge": _tuneforge_version()},
        "hardware": {"device": device, "precision": precision, "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "processes": processes,
                     "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
        "git_commit": _git_commit(),
    }
    (run_dir / "env.json").write_text(json.dumps(env, indent=1) + "\n")


def _tuneforge_version() -> str:
    from tuneforge import __version__

    return __version__


def _git_commit() -> str | None:
    """The commit of the tuneforge checkout that ran (None when installed from a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
