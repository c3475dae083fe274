"""Where metrics go: metrics.jsonl always; TensorBoard and MLflow when the recipe lists them."""

from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.recipe import Recipe
from tuneforge.run_folder import append_metrics


class Trackers:
    def __init__(self, run_dir: Path, recipe: Recipe, resumed: bool = False):
        self.run_dir, self.tensorboard, self.mlflow = run_dir, None, None
        wanted = recipe.train.report_to
        if "tensorboard" in wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.report_to: tensorboard needs the tensorboard package "
                                "(pip install tensorboard), or remove it from report_to.") from None
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if "mlflow" in wanted:
            self.mlflow = _start_mlflow(run_dir, recipe, resumed)

    def log(self, record: dict) -> None:
        append_metrics(self.run_dir, record)
        step = record["step"]
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and v is not None}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step=step)

    def close(self, status: str = "FINISHED") -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run(status)


def _start_mlflow(run_dir: Path, recipe: Recipe, resumed: bool):
    try:
        import mlflow
    except ImportError:
        raise UserError("train.report_to: mlflow needs the mlflow package (pip install mlflow-skinny sqlalchemy "
                        "alembic), or remove it from report_to.") from None
    uri = recipe.train.mlflow_tracking_uri or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tuneforge")
    id_file = run_dir / "mlflow_run_id"
    if resumed and id_file.is_file():
        mlflow.start_run(run_id=id_file.read_text().strip())
    else:
        run = mlflow.start_run(run_name=run_dir.name)
        id_file.write_text(run.info.run_id + "\n")
        mlflow.log_params(_flat(recipe.model_dump(mode="json")))
        mlflow.set_tags({"run_dir": str(run_dir.resolve()), "method": recipe.method})
    return mlflow


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)[:500]  # MLflow caps parameter values
    return out
