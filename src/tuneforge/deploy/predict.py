"""`tuneforge predict RUN --input FILE`: a classification or regression run's predictions for every row of
a file (any format `data.sources` reads: JSONL, CSV, Parquet, ...), written as JSONL (id, text, the
label and the score of each class, or the value) or CSV (one score column per class). Rows need a
`text` column (and may have `text_pair`), or for an image run an `image` path (or the input is an image
folder); a label column, when present, is kept next to the prediction.
The output is written next to its final path and renamed: an error leaves nothing half-written."""

import csv
import json
import os
from pathlib import Path

from tqdm import tqdm

from tuneforge.data.formats import RowReader
from tuneforge.data.sources import read_source
from tuneforge.errors import RowError, UserError
from tuneforge.inference.heads import ROWS_PER_BATCH, HeadModel, prediction
from tuneforge.recipe import SourceSpec
from tuneforge.tasks import get_task
from tuneforge.tasks.labelled import MULTI, REGRESSION

MAX_ROW_CHARS = 1_000_000


def predict_file(run_dir: Path, input_path: Path, out: Path | None = None, text_column: str = "text",
                 overwrite: bool = False) -> Path:
    from tuneforge.recipe_file import load_recipe
    from tuneforge.run_folder import open_run

    run_dir = open_run(run_dir)
    task = load_recipe(run_dir / "recipe.yaml").task
    if not get_task(task).head:
        raise UserError(f"{run_dir}: a {task} run generates text; predict is for classification and regression "
                        "runs. Use tuneforge generate RUN --prompt ..., or tuneforge serve RUN.")
    if not input_path.exists():
        raise UserError(f"--input {input_path}: no such file.")
    out = out or input_path.with_name(f"{input_path.stem}.predictions.jsonl")
    if out.suffix not in (".jsonl", ".csv"):
        raise UserError(f"--out {out}: write .jsonl or .csv.")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: already exists; nothing was written. Choose another --out or pass --overwrite.")
    images = get_task(task).images
    rows = _rows(input_path, _images(input_path) if images else _texts(text_column))
    model = HeadModel(run_dir)
    outputs = []
    for i in tqdm(range(0, len(rows), ROWS_PER_BATCH), desc="predict", unit=" batches", disable=None):
        outputs.extend(model.outputs(rows[i:i + ROWS_PER_BATCH]))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        records = [{**row, **prediction(o, model.classes, model.recipe.head.threshold)} for row, o in zip(rows, outputs)]
        (_write_csv if out.suffix == ".csv" else _write_jsonl)(tmp, records, model.classes)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"Wrote {len(records)} predictions to {out}")
    return out


def _rows(path: Path, inputs) -> list[dict]:
    """Each row of the input as {id, what `inputs(where, row)` takes from it, true_label when it has a label}."""
    rows = []
    for where, row in read_source(SourceSpec(path=str(path)), MAX_ROW_CHARS):
        if isinstance(row, RowError):
            raise UserError(f"{where}: {row}")
        out = {"id": str(row.get("id", len(rows))), **inputs(where, row)}
        if "label" in row:
            out["true_label"] = row["label"]
        rows.append(out)
    if not rows:
        raise UserError(f"--input {path}: no rows.")
    return rows


def _texts(text_column: str):
    def inputs(where: str, row: dict) -> dict:
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: needs a non-empty `{text_column}` text column to predict for; found "
                            f"{sorted(row)}. Name yours with --text-column.")
        return {"text": text, **({"text_pair": row["text_pair"]} if isinstance(row.get("text_pair"), str) else {})}

    return inputs


def _images(path: Path):
    """An `image` / `file_name` column naming an image file, relative to the input file's folder (an image
    folder's rows name theirs, with their subfolder as the true label)."""
    reader = RowReader(SourceSpec(path=str(path)), None, None)

    def inputs(where: str, row: dict) -> dict:
        column = reader.column(row, "image")
        value = row.get(column) if column else None
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: needs an `image` column with the path of an image file to predict for; "
                            f"found {sorted(row)}.")
        image = Path(value).expanduser()
        image = image if image.is_absolute() else reader.base / image
        if not image.is_file():
            raise UserError(f"{where}: `{column}` is {value!r}, and there is no such file (looked for {image}).")
        return {"image": str(image)}

    return inputs


def _write_jsonl(path: Path, records: list[dict], classes) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write_csv(path: Path, records: list[dict], classes) -> None:
    if classes.problem == REGRESSION:
        prediction_columns = ["value"]
    else:
        prediction_columns = ["labels" if classes.problem == MULTI else "label"] + \
                             (["score"] if classes.problem != MULTI else []) + [f"score_{n}" for n in classes.names]
    columns = [c for c in ("id", "text", "text_pair", "image", "true_label") if any(c in r for r in records)] + prediction_columns
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in records:
            flat = {**{k: v for k, v in r.items() if k != "scores"},
                    **{f"score_{n}": v for n, v in r.get("scores", {}).items()}}
            if classes.problem == MULTI:
                flat["labels"] = "|".join(r["labels"])
            writer.writerow({c: flat.get(c, "") for c in columns})
