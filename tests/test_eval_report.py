"""The eval report and everything around it: forgetting, other runs side by side, lm-eval, the HTML in a
real headless Chromium, blind human ratings, the LLM judge (a local model and an HTTP endpoint), runs ls
and runs compare, and the command line's errors."""

import csv
import http.server
import json
import threading

import pytest
import torch
from conftest import arithmetic_rows, headless_chromium, needs_chromium, write_jsonl

from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.evaluate.harness import text_task
from tuneforge.evaluate.judge import judge_run
from tuneforge.evaluate.pairs import export_pairs, import_ratings
from tuneforge.evaluate.run import evaluate_run
from tuneforge.recipe_file import validate_recipe
from tuneforge.runs.table import compare_runs, list_runs
from tuneforge.train.run import train

PROSE = ["Return the square root of x.", "The answer is a number."]


def _word_perplexity(run, texts: list[str]) -> float:
    """lm-eval's word perplexity computed directly: each document's tokens scored after the end-of-text
    token (the tiny tokenizer has no BOS), exp(-total log-likelihood / total words), on the merged model
    in the evaluation's precision."""
    import torch

    from tuneforge.inference.run_models import RunModels

    models = RunModels(run, "auto")
    merged, tokenizer = models.tuned.merge_and_unload(), models.tokenizer
    total = 0.0
    for text in texts:
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad(), models.autocast():
            logp = torch.log_softmax(merged(torch.tensor([ids])).logits[0].float(), -1)
        total += float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))
    return float(torch.exp(torch.tensor(-total / sum(len(t.split()) for t in texts))))


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    """A LoRA run and a full fine-tune of the tiny model on the same data; the LoRA run evaluated against
    the full one, with an lm-eval task over local files."""
    tmp = tmp_path_factory.mktemp("eval-report")
    data = write_jsonl(tmp / "chat.jsonl", arithmetic_rows(120))
    raw = {"name": "lora", "model": {"name": str(tiny_model)},
           "data": {"sources": [str(data)], "val_ratio": 0.1, "test_ratio": 0.1, "max_length": 64},
           "train": {"global_batch_size": 8, "max_steps": 4, "eval_every": 2, "log_every": 1, "eval_examples": 8},
           "eval": {"max_samples": 6, "max_new_tokens": 8, "batch_size": 4}}
    lora = train(validate_recipe(raw), tmp / "runs")
    full = train(validate_recipe(raw | {"name": "full", "method": "full"}), tmp / "runs")
    tasks = text_task(tmp / "tasks", "local_prose", PROSE)
    metrics = evaluate_run(lora, compare=[full], lm_eval=["local_prose"], lm_eval_include=tasks)
    return lora, full, metrics


def test_eval_compares_other_runs_checks_forgetting_and_runs_lm_eval(evaluated):
    lora, full, metrics = evaluated
    assert set(metrics) >= {"base", "tuned", "full", "paired", "runs", "forgetting", "lm_eval", "precision"}
    paired = metrics["runs"]["full"]["paired"]
    assert paired["rougeL"]["wins"] + paired["rougeL"]["ties"] + paired["rougeL"]["losses"] == 6
    assert paired["perplexity"]["wins"] + paired["perplexity"]["ties"] + paired["perplexity"]["losses"] == \
        metrics["test_examples"]
    forgot = metrics["forgetting"]
    assert forgot["documents"] == 45 and forgot["threshold"] == 0.10
    assert forgot["base"] == pytest.approx(metrics["base"]["general_text"]["token_perplexity"], rel=1e-6)
    assert forgot["change"] == pytest.approx(forgot["tuned"] / forgot["base"] - 1, abs=1e-3)
    assert forgot["flagged"] == (forgot["change"] > 0.10)
    assert metrics["lm_eval"]["local_prose"]["word_perplexity"] == pytest.approx(_word_perplexity(lora, PROSE), rel=1e-4)
    samples = [json.loads(line) for line in (lora / "eval" / "samples.jsonl").read_text().splitlines()]
    assert all({"base", "tuned", "full"} <= s.keys() and set(s["scores"]) == {"base", "tuned", "full"} for s in samples)


def test_report_has_every_section_and_its_plots(evaluated):
    lora, _, _ = evaluated
    report = (lora / "eval" / "report.md").read_text()
    for section in ("## Summary", "## Training", "## Metrics (95% bootstrap intervals)", "## Forgetting check",
                    "## Side by side", "## lm-evaluation-harness", "## Data", "## Recipe"):
        assert section in report, section
    for plot in ("loss.png", "metrics.png", "deltas.png"):
        assert (lora / "eval" / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{plot}" in report
    html = (lora / "eval" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "src='plots/" not in html  # self-contained
    # the Data section: the splits as trained, what preparation removed, the source pinned by its hash
    manifest = json.loads((lora / "data" / "manifest.json").read_text())
    encoding = json.loads((lora / "data" / "encoding.json").read_text())
    data = report.split("## Data")[1].split("## Recipe")[0]
    for split in ("train", "val", "test"):
        row = f"| {split} | {manifest['counts']['final'][split]} | {encoding['tokens'][split]} | " \
              f"{encoding['loss_tokens'][split]} | 0 |"
        assert row in data, (row, data)
    assert "120 rows read, 0 invalid" in data
    source = manifest["sources"][0]
    assert f"| {source['path']} | sha256 {source['sha256'][:16]} | 120 | 0 | messages 120 |" in data


@needs_chromium
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    lora, _, _ = evaluated
    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.get((lora / "eval" / "report.html").resolve().as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        headings = driver.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    assert [alt for alt, *_ in images] == ["train and val loss", "metrics with 95% intervals",
                                           "per-example ROUGE-L change"]
    assert all(complete and width > 300 and height > 150 for _, complete, width, height in images)
    assert "Forgetting check" in headings and "Recipe" in headings
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_blind_pairs_round_trip(evaluated, tmp_path):
    lora, _, _ = evaluated
    out = export_pairs(lora, tmp_path / "pairs.csv")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and set(rows[0]) == {"pair_id", "prompt", "reference", "answer_a", "answer_b", "rating",
                                               "comment"}
    assert not any("tuned" in str(v) or "base" in str(v) for r in rows for v in r.values())  # names hidden
    key = json.loads((lora / "eval" / "pairs-key.json").read_text())["pairs"]
    # the rater prefers the tuned answer on every pair, wherever it was shown; one pair left unrated
    for r in rows[:5]:
        r["rating"] = "A" if key[r["pair_id"]]["a"] == "tuned" else "b"
    with (tmp_path / "rated.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    result = import_ratings(lora, tmp_path / "rated.csv")
    assert result["pairs"][0] | {} == {"a": "tuned", "b": "base", "a_wins": 5, "ties": 0, "b_wins": 0, "a_win_rate": 1.0}
    assert "## Human ratings (blind)" in (lora / "eval" / "report.md").read_text()
    with pytest.raises(UserError, match="exists"):
        export_pairs(lora, tmp_path / "pairs.csv")
    rows[0]["pair_id"] = "p-from-elsewhere"
    write_jsonl(tmp_path / "wrong.jsonl", rows)
    with pytest.raises(UserError, match=r"wrong.jsonl:1: pair_id 'p-from-elsewhere' is not one of the pairs"):
        import_ratings(lora, tmp_path / "wrong.jsonl")
    rows[0]["pair_id"], rows[0]["rating"] = rows[1]["pair_id"], "maybe"
    write_jsonl(tmp_path / "bad-rating.jsonl", rows)
    with pytest.raises(UserError, match=r"bad-rating.jsonl:1: rating 'maybe'; expected A, B or tie"):
        import_ratings(lora, tmp_path / "bad-rating.jsonl")


class _Judge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose verdict the test sets: "A" always (pure position bias),
    or the letter of the answer that equals the reference."""
    mode = "A"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        if self.mode == "A":
            verdict = "A"
        else:
            reference = text.split("Reference answer: ")[1].split("\n\n")[0]
            verdict = "A" if f"Answer A: {reference}\n" in text else "B"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"{verdict}."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_judge_endpoint_cancels_position_bias_and_finds_the_better_answer(evaluated):
    lora, _, _ = evaluated
    samples_path = lora / "eval" / "samples.jsonl"
    original = samples_path.read_text()
    samples = [json.loads(line) for line in original.splitlines()]
    for s in samples:  # tuned answers the reference, base does not
        s["tuned"], s["base"] = s["reference"], "I do not know."
    samples_path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        _Judge.mode = "A"
        biased = judge_run(lora, url)
        assert biased["pairs"][0]["ties"] == 6 and biased["position_a_share"] == 1.0
        _Judge.mode = "reference"
        fair = judge_run(lora, url)
        assert fair["pairs"][0]["a_wins"] == 6 and fair["position_a_share"] == 0.5
        assert "## LLM judge" in (lora / "eval" / "report.md").read_text()
    finally:
        server.shutdown()
        server.server_close()
        samples_path.write_text(original)
    with pytest.raises(UserError, match="cannot reach the endpoint"):
        judge_run(lora, url)


def test_local_judge_asks_both_orders(evaluated, tiny_model):
    """Each verdict is the option the judge model ranks first after the prompt (asked here one prompt at a
    time, unpadded), in both orders; a pair is won only when both orders agree."""
    from tuneforge.evaluate.judge import OPTIONS, RUBRIC, judge_prompt
    from tuneforge.evaluate.pairs import read_samples
    from tuneforge.models.chat_template import render_prompt
    from tuneforge.models.loader import load_model, load_tokenizer

    lora, _, _ = evaluated
    result = judge_run(lora, str(tiny_model))
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model).eval()
    option_ids = [tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in OPTIONS]

    def verdict(sample, first, second):
        ids = tokenizer(render_prompt(tokenizer, judge_prompt(RUBRIC, sample, first, second)),
                        return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            return OPTIONS[int(model(ids).logits[0, -1, option_ids].argmax())]

    samples = read_samples(lora)
    assert len(result["verdicts"]) == len(samples) == 6
    for sample, record in zip(samples, result["verdicts"]):
        assert record["a_first"] == verdict(sample, sample["tuned"], sample["base"])
        assert record["b_first"] == verdict(sample, sample["base"], sample["tuned"])
        both = {"A": "tuned", "B": "base"}.get(record["a_first"]), {"A": "base", "B": "tuned"}.get(record["b_first"])
        assert record["winner"] == (both[0] if both[0] == both[1] and both[0] else "tie")
    assert sum(result["pairs"][0][k] for k in ("a_wins", "ties", "b_wins")) == 6


def test_runs_ls_and_compare(evaluated, tmp_path):
    lora, full, _ = evaluated
    table = list_runs(lora.parent)
    assert table.splitlines()[0].split()[:3] == ["name", "model", "method"]
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert rows["lora"].endswith("evaluated") and rows["full"].endswith("trained") and "r 16" in rows["lora"]
    text = compare_runs([lora, full], tmp_path / "curves.png")
    assert "method" in text and '"lora"' in text and '"full"' in text and "best val loss" in text
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="two or more"):
        compare_runs([lora], tmp_path / "c.png")
    with pytest.raises(UserError, match="no such folder"):
        list_runs(tmp_path / "nowhere")
    # before the first run: the default folder missing, or a folder without runs, is an empty table
    for empty in (list_runs(tmp_path / "nowhere", missing_ok=True), list_runs(tmp_path)):
        assert empty.splitlines()[0].split()[:3] == ["name", "model", "method"] and "no runs in" in empty


def test_command_line_eval_errors_exit_2(evaluated, tmp_path, capsys):
    lora, _, _ = evaluated
    assert main(["eval", str(lora), "--metrics", "rougeL,bogus"]) == 2
    assert "--metrics: unknown bogus" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a tuneforge run folder" in capsys.readouterr().err
    assert main(["eval", "import-ratings", str(lora), str(tmp_path / "none.csv")]) == 2
    assert "no such ratings file" in capsys.readouterr().err
    assert main(["runs", "compare", str(lora)]) == 2
