"""Seq2seq training speed: tuneforge against transformers' Seq2SeqTrainer with AutoModelForSeq2SeqLM,
same model, data, order, batch and steps.

    .venv/bin/python benchmarks/seq2seq_speed.py                    # ~6 min on 2 cores
    .venv/bin/python benchmarks/seq2seq_speed.py --steps 10 --repeats 3

No pre-trained seq2seq model installs offline, so the model is Flan-T5-small's architecture (T5 v1.1:
gated GELU, 8 + 8 blocks, d_model 512, no output scaling; transformers 5 ties every T5's head to its
embeddings: 48 M parameters with this vocabulary) randomly
initialised with a fixed seed at 0.05 of T5's initial scale (so its first logits are of a pre-trained
model's size, not a loss near 50), and its tokenizer a T5-layout Unigram tokenizer (8,000 pieces) trained
on the data. Speed per step depends on the shapes, not on the weights' values. The data is the chat
demo's pydocs set (questions about the Python standard library, answered by its docstrings) as prompt /
answer pairs, prepared by tuneforge, so both trainers get the same rows in the same order. Each
configuration runs in a fresh process, configurations alternating per round:
  tuneforge       `tuneforge train`'s code path (plan_training, load_trainee, train_step), defaults
                  (bf16 autocast on a CPU with bf16 instructions; micro-batches sorted by length);
  tuneforge fp32  the same with train.precision fp32;
  trainer         transformers' Seq2SeqTrainer with DataCollatorForSeq2Seq (each batch padded to its
                  longest prompt and answer), bf16=True on the CPU (use_cpu), the same precision;
  trainer fp32    the same with bf16=False (Trainer's default on a CPU).
Shared: full fine-tuning, AdamW, learning rate 1e-3, constant schedule, grad-norm clip 1.0, max length
--max-length per side, --batch examples a step, --steps timed steps after --warmup.

Reported: examples/s over the timed steps, peak RSS of the process, and the validation loss of the
trained model on the same 128 validation pairs (the same function for both). Writes
benchmarks/results/seq2seq_speed.{json,md}.
"""

import json
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
MODEL = Path(tempfile.gettempdir()) / "tuneforge-bench-flan-t5-small-random"


def main() -> None:
    parser = arguments(__doc__, 20, "tokens per side at most")
    parser.add_argument("--model-only", action="store_true", help="build the random model folder, print its path")
    args = parser.parse_args()
    if args.worker:
        work(args.worker, lambda job: run_ours(job, benchmark_setup(job, job["option"])), run_trainer)
        return
    print(f"Model: {build_model(MODEL)}")
    if args.model_only:
        return
    runs = main_loop(__file__, args, {})
    title = (f"Flan-T5-small architecture (random init), full fine-tuning, pydocs pairs, batch {args.batch}, max "
             f"length {args.max_length} per side, {args.steps} timed steps after {args.warmup}, medians of "
             f"{args.repeats}")
    write_results(RESULTS, "seq2seq_speed", args, runs, table(medians(runs), title, "Seq2SeqTrainer"))


def build_model(folder: Path) -> Path:
    """Flan-T5-small's architecture, random weights (seed 0), a T5-layout tokenizer trained on pydocs."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    from tuneforge.data.pydocs import build_pydocs

    texts = [m["content"] for row in build_pydocs() for m in row["messages"]]
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=8000, unk_token="<unk>",
                                                               special_tokens=["<pad>", "</s>", "<unk>"]))
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                      feed_forward_proj="gated-gelu", dropout_rate=0.1,
                      tie_word_embeddings=False,  # T5 v1.1's unscaled decoder outputs (transformers 5 ties anyway)
                      initializer_factor=0.05,  # logits of a sane size at the start, as a pre-trained model's
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def benchmark_setup(job: dict, precision: str):
    """tuneforge's setup for pydocs pairs at this batch and length: the same prepared rows and encoding
    for both trainers."""
    from tuneforge.recipe_file import validate_recipe
    from tuneforge.train.run import plan_training

    recipe = validate_recipe({
        "name": "bench", "task": "seq2seq", "method": "full", "model": {"name": str(MODEL)},
        "data": {"sources": ["pydocs"], "val_ratio": 0.05, "test_ratio": 0.05, "max_length": job["max_length"]},
        "train": {"global_batch_size": job["batch"], "max_steps": job["warmup"] + job["steps"], "learning_rate": 1e-3,
                  "schedule": "constant", "warmup_ratio": 0, "precision": precision, "compile": False}})
    return plan_training(recipe)


def run_trainer(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSeq2SeqLM,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    setup = benchmark_setup(job, "fp32")
    encoded = setup.data.encoded["train"]
    order = [i for step in step_indices(job, len(encoded)) for i in step]  # the rows and order ours trains on
    rows = [{"input_ids": encoded[i].input_ids, "labels": encoded[i].labels} for i in order]
    torch.manual_seed(setup.recipe.seed)
    model = AutoModelForSeq2SeqLM.from_pretrained(MODEL, dtype=torch.float32)
    times = []
    with tempfile.TemporaryDirectory() as out:
        args = Seq2SeqTrainingArguments(
            output_dir=out, per_device_train_batch_size=job["batch"], num_train_epochs=1, learning_rate=1e-3,
            lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, train_sampling_strategy="sequential",
            save_strategy="no", report_to=[], logging_steps=10, seed=setup.recipe.seed, dataloader_num_workers=0,
            disable_tqdm=True, use_cpu=True, bf16=job["option"])
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 callbacks=[clock(times)], data_collator=DataCollatorForSeq2Seq(setup.tokenizer, model=model))
        trainer.train()
    return finish(job, model, setup.tokenizer.pad_token_id, times, setup, "bf16" if job["option"] else "fp32")


if __name__ == "__main__":
    main()
