"""`tuneforge` / `python -m tuneforge`: parse arguments, call the library, turn UserError into exit 2."""

import argparse
import os
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

from tuneforge.errors import UserError

EXAMPLES = {
    "models": "tuneforge models",
    "train": "tuneforge train recipes/pydocs-lora.yaml --set train.max_steps=50\n"
             "  tuneforge train --resume runs/pydocs-lora\n"
             "  tuneforge train recipes/pydocs-full.yaml --find-lr\n"
             "  torchrun --nproc-per-node 2 -m tuneforge train recipes/pydocs-lora.yaml",
    "plan": "tuneforge plan recipes/pydocs-full.yaml --set train.gradient_checkpointing=true",
    "eval": "tuneforge eval runs/pydocs-lora\n"
            "  tuneforge eval runs/pydocs-lora --compare runs/pydocs-full --metrics perplexity,rougeL,bleu\n"
            "  tuneforge eval export-pairs runs/pydocs-lora\n"
            "  tuneforge eval import-ratings runs/pydocs-lora rated.csv\n"
            "  tuneforge eval judge runs/pydocs-lora --judge smollm2-135m-instruct",
    "eval run": "tuneforge eval runs/pydocs-lora\n"
                "  tuneforge eval runs/pydocs-lora --compare runs/pydocs-full runs/pydocs-freeze\n"
                "  tuneforge eval runs/pydocs-lora --lm-eval my_task --lm-eval-include tasks/",
    "eval export-pairs": "tuneforge eval export-pairs runs/pydocs-lora --out to-rate.csv",
    "eval import-ratings": "tuneforge eval import-ratings runs/pydocs-lora to-rate.csv",
    "eval judge": "tuneforge eval judge runs/pydocs-lora --judge smollm2-135m-instruct\n"
                  "  tuneforge eval judge runs/pydocs-lora --judge http://127.0.0.1:8000/v1 --judge-model gpt-4o-mini",
    "runs": "tuneforge runs ls\n  tuneforge runs compare runs/pydocs-lora runs/pydocs-full",
    "runs ls": "tuneforge runs ls --runs-dir runs",
    "runs compare": "tuneforge runs compare runs/pydocs-lora runs/pydocs-full --out comparison.png",
    "generate": "tuneforge generate runs/pydocs-lora --prompt 'What does `json.dumps` do?'",
    "chat": "tuneforge chat runs/pydocs-lora",
    "predict": "tuneforge predict runs/tickets-cls --input new-tickets.csv --out predicted.csv\n"
               "  tuneforge predict runs/tickets-cls --input new.jsonl --text-column body\n"
               "  tuneforge predict runs/fashion-mnist --input photos/   # an image run: a folder, or rows with an image path",
    "demo": "tuneforge demo\n  tuneforge demo text-classification\n  tuneforge demo image-classification",
    "export": "tuneforge export runs/pydocs-lora --format hf\n"
              "  tuneforge export runs/pydocs-lora --format adapter --out exports/pydocs-adapter\n"
              "  tuneforge export runs/pydocs-lora --format gguf --quant q8_0\n"
              "  tuneforge export runs/pydocs-modules --format onnx\n"
              "  tuneforge export runs/fashion-mnist --format onnx",
    "serve": "tuneforge serve runs/pydocs-lora\n"
             "  tuneforge serve runs/pydocs-lora runs/pydocs-dora --port 8080 --api-key s3cret\n"
             "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
             "    -d '{\"model\": \"pydocs-lora\", \"messages\": [{\"role\": \"user\", \"content\": \"What does `json.dumps` do?\"}]}'",
    "feedback": "tuneforge feedback export --db runs/requests.sqlite --out data/feedback",
    "feedback export": "tuneforge feedback export --db runs/requests.sqlite --out data/feedback",
    "data": "tuneforge data prepare recipes/own-data.yaml\n  tuneforge data preview recipes/own-data.yaml -n 3",
    "data prepare": "tuneforge data prepare recipes/own-data.yaml --out prepared/own-data\n"
                    "  tuneforge data prepare --data tickets.csv chats.jsonl --out prepared/tickets",
    "data preview": "tuneforge data preview recipes/own-data.yaml -n 3",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge", description="Fine-tune pre-trained generative models on your own data.",
        epilog="Quick start: tuneforge demo. Each command has --help with an example.")
    parser.add_argument("--version", action="version", version=f"tuneforge {version('tuneforge')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, parent=sub) -> argparse.ArgumentParser:
        return parent.add_parser(name.split()[-1], help=help, description=help,
                                 epilog=f"example:\n  {EXAMPLES[name]}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)

    command("models", "List the model catalogue: size, architecture, source, licence, memory to fine-tune.")

    p = command("train", "Fine-tune a model as a recipe says; writes a run folder under runs/.")
    p.add_argument("recipe", nargs="?", help="recipe YAML file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, for instance train.max_steps=100 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its newest checkpoint")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    p.add_argument("--find-lr", action="store_true",
                   help="instead of training: sweep the learning rate, plot loss vs lr, suggest one")
    p.add_argument("--find-lr-steps", type=int, default=200, metavar="N", help="steps of the sweep (default 200)")

    p = command("plan", "Print parameters, the memory estimate (weights, gradients, optimizer, activations) and "
                        "the micro-batch a recipe will use, before loading any weight.")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")

    data = command("data", "Prepare data (read, validate, clean, deduplicate, split, report) or preview it.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = command("data prepare", "Prepare a recipe's data (or --data files): splits, manifest.json, rejects, report.",
                data_sub)
    p.add_argument("recipe", nargs="?", help="recipe YAML file whose data section to use")
    p.add_argument("--data", nargs="+", metavar="FILE", help="data files or folders instead of a recipe")
    p.add_argument("--model", help="model whose tokenizer counts tokens (with --data; default: the bundled model)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, for instance data.clean.pii=true (repeatable)")
    p.add_argument("--out", help="folder to write (default: prepared/<recipe name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder at --out")
    p = command("data preview", "Print prepared examples with the chat template, marking tokens that carry loss.",
                data_sub)
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    ev = command("eval", "Evaluate a run (base vs tuned, forgetting, report); export / import blind human "
                         "ratings; ask an LLM judge. `tuneforge eval RUN` is short for `tuneforge eval run RUN`.")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    p = command("eval run", "Tuned vs base (and --compare runs) on the test split: perplexity, ROUGE, BLEU, chrF, "
                            "exact match, token F1, repetition, distinct-n with 95%% intervals, paired tests, the "
                            "forgetting check; writes eval/metrics.json, samples.jsonl, report.html and report.md.",
                ev_sub)
    p.add_argument("run", help="run folder, for instance runs/pydocs-lora")
    p.add_argument("--max-samples", type=int, help="test prompts to generate for (default: the recipe's eval.max_samples)")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="other runs to score on the same prompts")
    p.add_argument("--metrics", help="comma-separated metrics to show (default all): perplexity, rouge1, rouge2, "
                                     "rougeL, exact_match, token_f1, repetition, length, bleu, chrf, distinct_1, distinct_2")
    p.add_argument("--lm-eval", metavar="TASKS", help="comma-separated lm-evaluation-harness tasks to run on the "
                                                      "merged tuned model")
    p.add_argument("--lm-eval-include", metavar="FOLDER", help="folder of lm-eval task YAML files (local tasks)")
    p.add_argument("--lm-eval-limit", type=int, metavar="N", help="at most N documents per lm-eval task")
    p = command("eval export-pairs", "Write the tuned and base answers as blind pairs (order randomised, models "
                                     "hidden) to rate by hand: a CSV or JSONL with an empty rating column.", ev_sub)
    p.add_argument("run", help="an evaluated run folder")
    p.add_argument("--out", help="file to write, .csv or .jsonl (default: RUN/eval/pairs.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pairs file")
    p = command("eval import-ratings", "Read a rated pairs file (rating A, B or tie), map it back to the models "
                                       "and add the result to the report.", ev_sub)
    p.add_argument("run", help="the run the pairs were exported from")
    p.add_argument("file", help="the rated .csv or .jsonl file")
    p = command("eval judge", "Let a judge model compare tuned and base answers against a rubric, each pair in "
                              "both orders; adds the result to the report.", ev_sub)
    p.add_argument("run", help="an evaluated run folder")
    p.add_argument("--judge", required=True, help="a model (catalogue name, folder, hub id) or an OpenAI-compatible "
                                                  "endpoint URL (http://host:port/v1; key from TUNEFORGE_JUDGE_API_KEY "
                                                  "or OPENAI_API_KEY)")
    p.add_argument("--judge-model", help="the `model` field sent to an endpoint")
    p.add_argument("--rubric", help="a text file with the judging instructions (default: a built-in rubric)")

    runs = command("runs", "List runs or compare several: hyperparameters, best val loss, headline metrics.")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    p = command("runs ls", "A table of the runs in a folder: name, model, method, key hyperparameters, best val "
                           "loss, headline metrics, status.", runs_sub)
    p.add_argument("--runs-dir", help="folder holding run folders (default: runs; none there yet is an empty table)")
    p = command("runs compare", "Several runs side by side (recipe differences, metrics) with their loss curves "
                                "overlaid in one PNG.", runs_sub)
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    p.add_argument("--out", help="PNG for the overlaid loss curves (default: runs-compare.png)")

    p = command("generate", "Answer one prompt with a run's fine-tuned model.")
    p.add_argument("run", help="run folder")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--base", action="store_true", help="answer with the base model instead (for comparison)")

    p = command("chat", "Chat with a run's fine-tuned model in the terminal (streams tokens; /reset, /quit).")
    p.add_argument("run", help="run folder")
    p.add_argument("--max-new-tokens", type=int, default=300)

    p = command("predict", "Predict the label (and each class's score) or value of every row of a file with a "
                           "classification, regression or image classification run.")
    p.add_argument("run", help="run folder")
    p.add_argument("--input", required=True, help="rows to predict for: .jsonl, .csv, .tsv, .parquet, ... with a text "
                                                  "column (and optionally text_pair); for an image run, an image "
                                                  "column of paths, or an image folder")
    p.add_argument("--out", help="a .jsonl or .csv file to write (default: <input>.predictions.jsonl)")
    p.add_argument("--text-column", default="text", help="the column holding the text (default: text)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    p = command("export", "Export a run's model: hf (adapter merged into the base; transformers, vLLM), adapter "
                          "(PEFT), gguf (llama.cpp, Ollama), onnx (classification / regression, onnxruntime); each "
                          "with a model card.")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", required=True, choices=["hf", "adapter", "gguf", "onnx"],
                   help="what to write (onnx: classification / regression runs)")
    p.add_argument("--quant", default="f16", choices=["f16", "bf16", "f32", "q8_0"],
                   help="GGUF tensor type (default f16)")
    p.add_argument("--out", help="folder to write (default: exports/<run>-<format>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")

    p = command("serve", "Serve runs behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, "
                         "/v1/models, streaming) with a web playground at /, a SQLite request log and feedback.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders; runs on one base model share its weights")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (default: $TUNEFORGE_API_KEY; none)")
    p.add_argument("--db", help="SQLite request and feedback log (default: requests.sqlite next to the first run)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="most tokens a request may ask to generate")
    p.add_argument("--max-batch", type=int, default=16, help="most sequences decoded together (default 16)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="most requests waiting to start; more are answered 429 with Retry-After (default 256)")
    p.add_argument("--request-timeout", type=float, default=600, metavar="SECONDS",
                   help="a request not finished this long after it arrived is ended with a 504 (default 600)")

    fb = command("feedback", "Turn feedback collected by `tuneforge serve` into training data.")
    fb_sub = fb.add_subparsers(dest="feedback_command", metavar="SUBCOMMAND", required=True)
    p = command("feedback export", "Write corrections as SFT rows (sft.jsonl) and rated answers as preference "
                                   "pairs (preference.jsonl), in formats `tuneforge train` reads.", fb_sub)
    p.add_argument("--db", required=True, help="the server's SQLite log (requests.sqlite)")
    p.add_argument("--out", required=True, help="folder to write sft.jsonl and preference.jsonl into")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")

    p = command("demo", "Fine-tune the bundled model on the pydocs data set, evaluate it, print base vs tuned "
                        "(text-classification: the bundled encoder learns which package a docstring is from; "
                        "image-classification: the bundled EfficientNet-Lite0 learns Fashion-MNIST's clothes).")
    p.add_argument("which", nargs="?", default="chat", choices=["chat", "text-classification", "image-classification"],
                   help="which demo (default chat)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo recipe")
    return parser


EVAL_COMMANDS = ("run", "export-pairs", "import-ratings", "judge")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "eval" and argv[1] not in EVAL_COMMANDS and not argv[1].startswith("-"):
        argv.insert(1, "run")  # `tuneforge eval RUN` is `tuneforge eval run RUN`
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        return _run(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """tuneforge draws its own progress bars; the libraries' per-file bars and deprecation notes
    about their own internals are noise to a user."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _run(args) -> int | None:
    # Imports are local so `tuneforge --help` answers at once, without loading torch.
    if args.command == "models":
        from tuneforge.cli.catalog_table import print_catalog

        print_catalog()
    elif args.command == "train":
        from tuneforge.recipe_file import load_recipe
        from tuneforge.train.run import resume, train

        if args.find_lr:
            from tuneforge.train.find_lr import find_lr

            if not args.recipe or args.resume:
                raise UserError("--find-lr needs a recipe file (for instance recipes/pydocs-lora.yaml), not --resume.")
            if args.find_lr_steps < 10:
                raise UserError(f"--find-lr-steps: {args.find_lr_steps} is too few to see a trend; use at least 10.")
            find_lr(load_recipe(args.recipe, args.overrides), Path(args.runs_dir), args.find_lr_steps)
        elif args.resume:
            if args.recipe or args.overrides:
                raise UserError("--resume RUN continues a run with its recorded recipe; drop the recipe and --set.")
            resume(Path(args.resume))
        elif not args.recipe:
            raise UserError("train needs a recipe file (for instance recipes/pydocs-lora.yaml) or --resume RUN.")
        else:
            train(load_recipe(args.recipe, args.overrides), Path(args.runs_dir), args.overwrite)
    elif args.command == "plan":
        from tuneforge.recipe_file import load_recipe
        from tuneforge.train.run import plan_training

        plan_training(load_recipe(args.recipe, args.overrides))
    elif args.command == "data":
        _data(args)
    elif args.command == "eval":
        _eval(args)
    elif args.command == "runs":
        from tuneforge.runs.table import compare_runs, list_runs

        if args.runs_command == "ls":
            print(list_runs(Path(args.runs_dir or "runs"), missing_ok=args.runs_dir is None))
        else:
            print(compare_runs([Path(r) for r in args.runs], Path(args.out or "runs-compare.png")))
    elif args.command == "generate":
        from tuneforge.inference.session import ChatSession

        session = ChatSession.from_run(Path(args.run), base=args.base)
        print(session.reply([{"role": "user", "content": args.prompt}], args.max_new_tokens))
    elif args.command == "chat":
        from tuneforge.inference.chat import interactive_chat

        interactive_chat(Path(args.run), args.max_new_tokens)
    elif args.command == "predict":
        from tuneforge.deploy.predict import predict_file

        predict_file(Path(args.run), Path(args.input), Path(args.out) if args.out else None, args.text_column,
                     args.overwrite)
    elif args.command == "export":
        from tuneforge.deploy.export import export_run

        out = export_run(Path(args.run), args.format, Path(args.out) if args.out else None, args.quant, args.overwrite)
        print(f"Wrote {out} ({args.format}); its README.md is the model card.")
    elif args.command == "serve":
        from tuneforge.serve.app import Limits
        from tuneforge.serve.server import serve

        if min(args.max_tokens_limit, args.max_batch, args.max_queue) < 1:
            raise UserError("--max-tokens-limit, --max-batch and --max-queue must be 1 or more.")
        if not args.request_timeout > 0:
            raise UserError(f"--request-timeout: {args.request_timeout} s; give a positive number of seconds.")
        serve([Path(r) for r in args.runs], args.host, args.port, Path(args.db) if args.db else None, args.api_key,
              args.precision, Limits(max_tokens=args.max_tokens_limit, request_timeout=args.request_timeout),
              args.max_batch, args.max_queue)
    elif args.command == "feedback":
        from tuneforge.serve.feedback import export_feedback

        print(export_feedback(Path(args.db), Path(args.out), args.overwrite))
    elif args.command == "demo":
        from tuneforge.cli.demo import run_demo

        run_demo(Path(args.runs_dir), args.overrides, args.which)
    return 0


def _eval(args) -> None:
    if args.eval_command == "run":
        from tuneforge.evaluate.run import evaluate_run

        evaluate_run(Path(args.run), max_samples=args.max_samples, compare=[Path(r) for r in args.compare],
                     metrics_filter=_names(args.metrics), lm_eval=_names(args.lm_eval),
                     lm_eval_include=Path(args.lm_eval_include) if args.lm_eval_include else None,
                     lm_eval_limit=args.lm_eval_limit)
    elif args.eval_command == "export-pairs":
        from tuneforge.evaluate.pairs import export_pairs

        out = export_pairs(Path(args.run), Path(args.out) if args.out else None, overwrite=args.overwrite)
        print(f"Wrote {out}: fill the rating column with A, B or tie, then: tuneforge eval import-ratings {args.run} {out}")
    elif args.eval_command == "import-ratings":
        from tuneforge.evaluate.pairs import import_ratings

        result = import_ratings(Path(args.run), Path(args.file))
        p = result["pairs"][0]
        print(f"{p['a']} {p['a_wins']} wins, {p['ties']} ties, {p['b']} {p['b_wins']} wins "
              f"({p['a']} win rate {p['a_win_rate']:.0%}); {result['note']} Report: {args.run}/eval/report.html")
    else:
        from tuneforge.evaluate.judge import judge_run

        result = judge_run(Path(args.run), args.judge, Path(args.rubric) if args.rubric else None, args.judge_model)
        p = result["pairs"][0]
        print(f"{p['a']} {p['a_wins']} wins, {p['ties']} ties, {p['b']} {p['b_wins']} wins "
              f"({p['a']} win rate {p['a_win_rate']:.0%}). {result['note']}")


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _data(args) -> None:
    from tuneforge.recipe_file import load_recipe, validate_recipe

    if args.data_command == "preview":
        from tuneforge.data.preview import preview

        print(preview(load_recipe(args.recipe, args.overrides), args.n, args.split))
        return
    from tuneforge.data.prepare import prepare_command

    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # token counting is batched; nothing forks here

    if bool(args.recipe) == bool(args.data):
        raise UserError("data prepare needs a recipe file or --data FILE..., not both and not neither.")
    if args.data:
        raw = {"name": Path(args.data[0]).stem, "data": {"sources": args.data}}
        if args.model:
            raw["model"] = {"name": args.model}
        recipe = validate_recipe(raw, source="--data", overrides=args.overrides)
    else:
        recipe = load_recipe(args.recipe, args.overrides)
    prepare_command(recipe, Path(args.out) if args.out else Path("prepared") / recipe.name, args.overwrite)
