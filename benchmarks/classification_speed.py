"""Text-classification training speed: tuneforge against transformers' Trainer with
AutoModelForSequenceClassification, same model, data, order, batch and steps.

    .venv/bin/python benchmarks/classification_speed.py                    # ~5 min on 2 cores
    .venv/bin/python benchmarks/classification_speed.py --steps 20 --repeats 3

The data is the text-classification demo's (pydocs-modules: standard-library docstrings labelled with
their package, prepared by tuneforge, so both trainers get the same training rows in the same order);
the model the bundled all-MiniLM-L6-v2 with a new head, fine-tuned in full. Each configuration runs in
a fresh process, configurations alternating per round:
  tuneforge       `tuneforge train`'s code path (plan_training, load_trainee, train_step), defaults
                  (bf16 autocast on a CPU with bf16 instructions; micro-batches sorted by length);
  tuneforge fp32  the same with train.precision fp32;
  trainer         transformers.Trainer, its defaults for this job (DataCollatorWithPadding: each batch
                  padded to its longest row) with bf16=True on the CPU (use_cpu), the same precision;
  trainer fp32    the same with bf16=False (Trainer's default on a CPU).
Shared: AdamW, learning rate 1e-4, constant schedule, grad-norm clip 1.0, dropout as the model's
config, max length --max-length, --batch examples a step, --steps timed steps after --warmup.

Reported: examples/s over the timed steps, peak RSS of the process, and the validation loss of the
trained model on the same 128 validation rows (the same function for both). Writes
benchmarks/results/classification_speed.{json,md}.
"""

import tempfile
from pathlib import Path

from versus_trainer import (
    arguments,
    clock,
    finish,
    main_loop,
    medians,
    run_ours,
    step_indices,
    table,
    work,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pydocs-modules-classification.yaml"


def main() -> None:
    parser = arguments(__doc__, 30, "tokens per example at most")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe key for the tuneforge runs (for instance train.micro_batch_size=16)")
    args = parser.parse_args()
    if args.worker:
        work(args.worker, lambda job: run_ours(job, benchmark_setup(job, job["option"])), run_trainer)
        return
    runs = main_loop(__file__, args, {"overrides": args.overrides})
    title = (f"all-MiniLM-L6-v2, full fine-tuning, pydocs-modules, batch {args.batch}, max length {args.max_length}, "
             f"{args.steps} timed steps after {args.warmup}, medians of {args.repeats}")
    write_results(RESULTS, "classification_speed", args, runs, table(medians(runs), title, "Trainer"))


def benchmark_setup(job: dict, precision: str):
    """tuneforge's setup for the demo recipe at this batch and length: the same prepared rows and
    encoding for both trainers."""
    from tuneforge.recipe_file import load_recipe
    from tuneforge.train.run import plan_training

    total = job["warmup"] + job["steps"]
    recipe = load_recipe(RECIPE, [f"train.global_batch_size={job['batch']}", f"data.max_length={job['max_length']}",
                                  f"train.max_steps={total}", "train.schedule=constant", "train.warmup_ratio=0",
                                  f"train.precision={precision}", "train.compile=false", *job["overrides"]])
    return plan_training(recipe)


def run_trainer(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tuneforge.models.loader import resolve_model

    setup = benchmark_setup({**job, "overrides": []}, "fp32")
    encoded = setup.data.encoded["train"]
    order = [i for step in step_indices(job, len(encoded)) for i in step]  # the rows and order ours trains on
    rows = [{"input_ids": encoded[i].input_ids, "token_type_ids": encoded[i].token_type_ids,
             "labels": encoded[i].target} for i in order]
    names = setup.data.classes.names
    torch.manual_seed(setup.recipe.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(setup.recipe.model.name), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, dtype=torch.float32)
    times = []
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=job["batch"], num_train_epochs=1,
                                 learning_rate=1e-4, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                                 train_sampling_strategy="sequential", save_strategy="no", report_to=[], logging_steps=10,
                                 seed=setup.recipe.seed, dataloader_num_workers=0, disable_tqdm=True, use_cpu=True,
                                 bf16=job["option"])
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[clock(times)],
                          data_collator=DataCollatorWithPadding(setup.tokenizer))
        trainer.train()
    return finish(job, model, setup.tokenizer.pad_token_id, times, setup, "bf16" if job["option"] else "fp32")


if __name__ == "__main__":
    main()
