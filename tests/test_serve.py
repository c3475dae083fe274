"""`tuneforge serve`: the OpenAI-compatible API on a real localhost HTTP server, called by the official
`openai` client and by lm-evaluation-harness; adapters sharing one base; continuous batching giving
the same answers as one request at a time; the SQLite request log, feedback and its export; bad requests."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from openai import OpenAI

from conftest import arithmetic_rows, headless_chromium, needs_chromium, tiny_run_recipe, write_jsonl
from tuneforge.cli.main import main
from tuneforge.errors import UserError
from tuneforge.inference.run_models import RunModels
from tuneforge.inference.session import ChatSession
from tuneforge.recipe_file import validate_recipe
from tuneforge.serve.app import Limits
from tuneforge.serve.feedback import export_feedback
from tuneforge.serve.server import Background, _check_port, build
from tuneforge.train.run import train

QUESTIONS = ["What is the sum of two numbers?", "Return the square root of x.", "What is 3 + 4?",
             "Return the number of items in a container.", "You are a helpful assistant. What is 2 + 2?", "Hello"]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """Two LoRA runs and a full fine-tune of the tiny model (one base)."""
    tmp = tmp_path_factory.mktemp("serve")
    data = write_jsonl(tmp / "chat.jsonl", arithmetic_rows(80))
    raw = tiny_run_recipe(tiny_model, data, "lora-a")
    a = train(validate_recipe(raw), tmp / "runs")
    b = train(validate_recipe(raw | {"name": "lora-b", "seed": 1}), tmp / "runs")
    full = train(validate_recipe(raw | {"name": "full", "method": "full",
                                        "train": raw["train"] | {"learning_rate": 0.01}}), tmp / "runs")
    return {"lora-a": a, "lora-b": b, "full": full, "tmp": tmp}


@pytest.fixture(scope="module")
def server(runs, tiny_model):
    app, engine, store = build([runs["lora-a"], runs["lora-b"], runs["full"]], runs["tmp"] / "requests.sqlite",
                               precision="fp32", limits=Limits(max_tokens=64, max_body_bytes=20_000))
    with Background(app) as srv:
        srv.client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        srv.app, srv.engine, srv.store, srv.base = app, engine, store, tiny_model.name
        yield srv
    engine.stop()


def post(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ask(client, model: str, question: str, **kw) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       temperature=0, max_tokens=kw.pop("max_tokens", 12), **kw)
    return r.choices[0].message.content


def test_models_list_every_run_and_the_shared_base(server):
    models = {m.id: m for m in server.client.models.list().data}
    assert set(models) == {"lora-a", "lora-b", "full", server.base}
    assert models["lora-a"].owned_by == "tuneforge"
    pool = server.app.state.pool
    assert pool._models["lora-a"] is pool._models["lora-b"] is pool._models[server.base]  # one copy of the base
    assert pool._models["full"] is not pool._models["lora-a"]
    assert server.client.models.retrieve("full").id == "full"


def test_each_model_answers_as_tuneforge_generate_does(server, runs):
    """Greedy answers through the API equal the generate command's for each adapter, the full run and the
    base: the right adapter is switched on per request."""
    for name in ("lora-a", "lora-b", "full"):
        session = ChatSession(RunModels(runs[name]))
        for question in QUESTIONS[:3]:
            expected = session.reply([{"role": "user", "content": question}], max_new_tokens=12)
            assert ask(server.client, name, question).strip() == expected, (name, question)
    base = ChatSession(RunModels(runs["lora-a"]), base=True)
    assert ask(server.client, server.base, QUESTIONS[0]).strip() == \
        base.reply([{"role": "user", "content": QUESTIONS[0]}], max_new_tokens=12)
    # the two adapters are different models through the API too: the same prompt scores differently
    echo = {name: server.client.completions.create(model=name, prompt=QUESTIONS[0], max_tokens=0, echo=True,
                                                   logprobs=0).choices[0].logprobs.token_logprobs[1:]
            for name in ("lora-a", "lora-b")}
    assert echo["lora-a"] != pytest.approx(echo["lora-b"], abs=1e-4)


def test_concurrent_requests_are_batched_and_answer_as_one_at_a_time(server):
    jobs = [(m, q, n) for m in ("lora-a", "full") for q, n in zip(QUESTIONS, (3, 12, 7, 20, 5, 9))]
    alone = [ask(server.client, m, q, max_tokens=n) for m, q, n in jobs]
    before = dict(server.engine.stats)
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda j: ask(server.client, j[0], j[1], max_tokens=j[2]), jobs))
    assert together == alone
    forwards = server.engine.stats["forwards"] - before["forwards"]
    rows = server.engine.stats["rows_per_forward"] - before["rows_per_forward"]
    assert rows / forwards > 1.5  # several sequences per forward pass


def test_prefill_padded_to_few_shapes_answers_the_same(server, runs, monkeypatch):
    """On CPUs in bf16 prompts are left-padded to bucket_length (few matmul shapes, or memory grows with
    every new prompt length): forced here in fp32, with 7 extra pad tokens, greedy answers, batched and
    alone, and echoed prompt logprobs equal the unpadded server's."""
    from tuneforge.serve import batch as batch_module

    widths = []
    monkeypatch.setattr(batch_module, "shapes_cached_now", lambda model, device: True)
    monkeypatch.setattr(batch_module, "bucket_length", lambda n: widths.append(n) or n + 7)
    app, engine, _ = build([runs["full"]], runs["tmp"] / "bucketed.sqlite", precision="fp32")
    with Background(app) as padded:
        client = OpenAI(base_url=padded.url + "/v1", api_key="unused", max_retries=0)
        assert [ask(client, "full", q) for q in QUESTIONS] == [ask(server.client, "full", q) for q in QUESTIONS]
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            assert list(pool.map(lambda q: ask(client, "full", q), QUESTIONS)) == \
                [ask(server.client, "full", q) for q in QUESTIONS]
        echo = [c.completions.create(model="full", prompt="Return the square root", max_tokens=0, echo=True,
                                     logprobs=1).choices[0].logprobs.token_logprobs[1:] for c in (client, server.client)]
        assert echo[0] == pytest.approx(echo[1], abs=1e-5)
    engine.stop()
    assert len(widths) >= len(QUESTIONS)


def test_streaming_chat_equals_the_whole_answer_and_reports_usage(server):
    whole = server.client.chat.completions.create(model="lora-a", messages=[{"role": "user", "content": QUESTIONS[3]}],
                                                  temperature=0, max_tokens=20)
    stream = server.client.chat.completions.create(model="lora-a", messages=[{"role": "user", "content": QUESTIONS[3]}],
                                                   temperature=0, max_tokens=20, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_sampling_n_seed_top_p_and_stop(server):
    def sample(seed, **kw):
        r = server.client.chat.completions.create(model="lora-a", messages=[{"role": "user", "content": "Hello"}],
                                                  temperature=1.5, max_tokens=16, n=3, seed=seed, **kw)
        return [c.message.content for c in r.choices]

    first = sample(7)
    assert len(first) == 3 and sample(7) == first
    assert sample(8) != first
    assert sample(7, top_p=1e-6) == [ask(server.client, "lora-a", "Hello", max_tokens=16)] * 3  # top_p -> greedy
    # a stop string from inside a greedy answer: the answer ends just before it
    answers = [(m, q, ask(server.client, m, q, max_tokens=30)) for m in ("full", "lora-b", "lora-a") for q in QUESTIONS]
    model, question, free, at = next((m, q, a, i) for m, q, a in answers for i in range(1, len(a) - 1)
                                     if a.index(a[i:i + 2]) == i)
    r = server.client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              temperature=0, max_tokens=30, stop=["never there", free[at:at + 2]])
    assert r.choices[0].message.content == free[:at] and r.choices[0].finish_reason == "stop"


def test_completions_prompt_shapes_echo_and_logprobs(server, runs):
    client = server.client
    text = client.completions.create(model="full", prompt="What is 3 +", max_tokens=5, temperature=0)
    assert text.object == "text_completion" and text.usage.completion_tokens <= 5
    tokenizer = server.app.state.pool.tokenizers["full"]
    ids = tokenizer("What is 3 +", add_special_tokens=False)["input_ids"]
    by_ids = client.completions.create(model="full", prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == text.choices[0].text
    many = client.completions.create(model="full", prompt=["What is 3 +", "Return the"], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3] and many.choices[0].text == text.choices[0].text
    echo = client.completions.create(model="full", prompt="Return the square root", max_tokens=0, echo=True, logprobs=3)
    lp = echo.choices[0].logprobs
    assert echo.choices[0].text == "Return the square root" and lp.token_logprobs[0] is None
    assert len(lp.tokens) == len(tokenizer("Return the square root", add_special_tokens=False)["input_ids"])
    # the logprobs equal the model's own, computed here directly
    model = RunModels(runs["full"]).tuned
    prompt_ids = torch.tensor([tokenizer("Return the square root", add_special_tokens=False)["input_ids"]])
    expected = torch.log_softmax(model(prompt_ids).logits[0].float(), -1)
    direct = [float(expected[i - 1, t]) for i, t in enumerate(prompt_ids[0].tolist()) if i > 0]
    assert lp.token_logprobs[1:] == pytest.approx(direct, abs=1e-4)
    # top alternatives: up to 3 (tokens that decode to the same text share a key, as in OpenAI's format)
    assert all(0 < len(top) <= 3 and max(top.values()) >= lp_ - 1e-6
               for top, lp_ in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))


def test_lm_eval_local_completions_runs_a_local_task_against_the_server(server, runs, tiny_model, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": "4"} for q in QUESTIONS[:4]])
    (tmp_path / "tiny_qa.yaml").write_text(
        f"task: tiny_qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    (tmp_path / "tiny_ll.yaml").write_text(
        f"task: tiny_ll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: ['4', 'five']\ndoc_to_target: 0\n"
        "metric_list:\n  - metric: acc\n")
    before = server.store.recent(1000)
    results = simple_evaluate(
        model="local-completions", tasks=["tiny_qa", "tiny_ll"], task_manager=TaskManager(include_path=str(tmp_path)),
        model_args=f"model=full,base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                   f"tokenizer={tiny_model},num_concurrent=2,max_retries=1", log_samples=True)
    assert "exact_match,none" in results["results"]["tiny_qa"]
    # accuracy from the server's echoed logprobs equals the model's own choice between the two answers,
    # computed here directly as lm-eval defines it (context + " " + choice, scored on the choice's tokens)
    model, tokenizer = RunModels(runs["full"]).tuned, server.app.state.pool.tokenizers["full"]

    def loglikelihood(context: str, continuation: str) -> float:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        return float(sum(logp[i - 1, whole[i]] for i in range(start, len(whole))))

    direct = [[loglikelihood(q, " " + choice) for choice in ("4", "five")] for q in QUESTIONS[:4]]
    served = {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in results["samples"]["tiny_ll"]}
    assert [served[i] for i in range(4)] == [pytest.approx(d, abs=1e-4) for d in direct]
    picks = [scores.index(max(scores)) for scores in direct]
    assert results["results"]["tiny_ll"]["acc,none"] == pytest.approx(sum(p == 0 for p in picks) / 4)
    assert len(server.store.recent(1000)) >= len(before) + 4 + 8  # every request went through the API


def test_request_log_feedback_and_export_to_training_data(server, runs, tmp_path):
    r = server.client.chat.completions.create(model="lora-b", messages=[{"role": "user", "content": QUESTIONS[2]}],
                                              temperature=0, max_tokens=10)
    r2 = server.client.chat.completions.create(model="lora-b", messages=[{"role": "user", "content": QUESTIONS[2]}],
                                               temperature=1.5, seed=3, max_tokens=10)
    db = sqlite3.connect(runs["tmp"] / "requests.sqlite")
    row = db.execute("SELECT model, endpoint, messages, output, prompt_tokens, completion_tokens, latency_ms, status "
                     "FROM requests WHERE id = ?", (r.id,)).fetchone()
    assert row[:2] == ("lora-b", "chat.completions") and json.loads(row[2])[0]["content"] == QUESTIONS[2]
    assert row[3] == r.choices[0].message.content and row[4] == r.usage.prompt_tokens
    assert row[5] == r.usage.completion_tokens and row[6] > 0 and row[7] == 200
    assert post(f"{server.url}/v1/feedback", {"id": r.id, "rating": "down", "correction": "7"})[0] == 200
    assert post(f"{server.url}/v1/feedback", {"id": r2.id, "rating": "up"})[0] == 200
    status, body = post(f"{server.url}/v1/feedback", {"id": "chatcmpl-nope", "rating": "up"})
    assert status == 404 and body["error"]["param"] == "id"
    assert post(f"{server.url}/v1/feedback", {"id": r.id})[0] == 400
    assert db.execute("SELECT rating, correction FROM feedback WHERE request_id = ?", (r.id,)).fetchone() == ("down", "7")
    logs = json.loads(urllib.request.urlopen(f"{server.url}/v1/logs?limit=5").read())["data"]
    assert logs[0]["id"] == r2.id and logs[1]["rating"] == "down"

    summary = export_feedback(runs["tmp"] / "requests.sqlite", tmp_path / "fb")
    sft = [json.loads(line) for line in (tmp_path / "fb" / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "fb" / "preference.jsonl").read_text().splitlines()]
    assert {"messages": [{"role": "user", "content": QUESTIONS[2]}, {"role": "assistant", "content": "7"}]} in sft
    assert {"prompt": [{"role": "user", "content": QUESTIONS[2]}], "chosen": "7",
            "rejected": r.choices[0].message.content} in pairs
    if r2.choices[0].message.content != r.choices[0].message.content:
        assert {"prompt": [{"role": "user", "content": QUESTIONS[2]}], "chosen": r2.choices[0].message.content,
                "rejected": r.choices[0].message.content} in pairs
    assert "SFT rows" in summary
    # what tuneforge train reads: the exported files prepare without a rejected row
    assert main(["data", "prepare", "--data", str(tmp_path / "fb" / "sft.jsonl"), str(tmp_path / "fb" / "preference.jsonl"),
                 "--model", str(runs["full"] / "model"), "--out", str(tmp_path / "prepared")]) == 0
    assert main(["feedback", "export", "--db", str(runs["tmp"] / "requests.sqlite"), "--out", str(tmp_path / "fb")]) == 2


@pytest.mark.parametrize("body, status, param, code", [
    (b"{not json", 400, None, None),
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
    ({"model": "full", "messages": []}, 400, "messages", None),
    ({"model": "full", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens", None),
    ({"model": "full", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10 ** 6}, 400, "max_tokens", None),
    ({"model": "full", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature", None),
    ({"model": "full", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", None),
    ({"model": "full", "messages": [{"role": "user", "content": "What is 3 + 4? " * 60}]}, 400, "messages",
     "context_length_exceeded"),
    ({"model": "full", "messages": [{"role": "user", "content": "x" * 30_000}]}, 413, None, None),
])
def test_bad_requests_get_openai_style_errors_and_the_server_stays_up(server, body, status, param, code):
    got, error = post(f"{server.url}/v1/chat/completions", body)
    assert got == status, error
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["message"]
    assert error["error"]["param"] == param and error["error"]["code"] == code
    assert json.loads(urllib.request.urlopen(f"{server.url}/health").read())["status"] == "ok"


def test_completions_bad_prompts(server):
    for prompt, param in (([10 ** 7], "prompt"), ("", "prompt"), (["a"] * 70, "n")):
        status, error = post(f"{server.url}/v1/completions", {"model": "full", "prompt": prompt})
        assert status == 400 and error["error"]["param"] == param
    status, error = post(f"{server.url}/v1/no-such-thing", {})
    assert status == 404 and "error" in error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_with_an_api_key_from_the_environment(runs, tiny_model, tmp_path):
    port = _free_port()
    env = {**os.environ, "TUNEFORGE_API_KEY": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", str(runs["lora-a"]), "--port", str(port),
                             "--db", str(tmp_path / "log.sqlite"), "--precision", "fp32"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=1).read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.25)
        assert set(health["models"]) == {"lora-a", tiny_model.name}
        status, error = post(f"{url}/v1/chat/completions", {"model": "lora-a", "messages": [{"role": "user", "content": "hi"}]},
                             {"Authorization": "Bearer wrong"})
        assert status == 401 and error["error"]["code"] == "invalid_api_key"
        client = OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        expected = ChatSession(RunModels(runs["lora-a"])).reply([{"role": "user", "content": "hi"}], max_new_tokens=4)
        assert ask(client, "lora-a", "hi", max_tokens=4).strip() == expected  # the key let the request through
        # a second server on the same port: a clear error, exit 2
        busy = subprocess.run([sys.executable, "-m", "tuneforge", "serve", str(runs["lora-a"]), "--port", str(port)],
                              capture_output=True, text=True)
        assert busy.returncode == 2 and f"127.0.0.1:{port}" in busy.stderr and "--port" in busy.stderr
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    assert code == 0, proc.stdout.read()  # SIGTERM: a clean shutdown (uvicorn in a thread, the engine in the main one)


def test_a_port_a_stopped_server_just_left_is_free():
    """Restarting right after a stop: the server side that closed first keeps the port in TIME_WAIT for a
    minute, which uvicorn binds over; the port check must too (and still refuse a listening port)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server closes first: its end of the connection waits in TIME_WAIT
        client.close()
        with pytest.raises(UserError, match="another server may be using it"):
            _check_port("127.0.0.1", port)
    _check_port("127.0.0.1", port)


def test_serve_refuses_folders_that_are_not_servable(runs, tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a tuneforge run folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text((runs["lora-a"] / "recipe.yaml").read_text())
    assert main(["serve", str(unfinished)]) == 2
    assert "has no model/" in capsys.readouterr().err


@needs_chromium
def test_playground_chat_side_by_side_feedback_and_log_in_chromium(server, runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = headless_chromium(tmp_path / "profile")
    wait = WebDriverWait(driver, 60)
    db = sqlite3.connect(runs["tmp"] / "requests.sqlite")
    try:
        driver.get(server.url + "/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model-a")).options) == 4)
        Select(driver.find_element(By.ID, "model-a")).select_by_value("lora-a")
        driver.find_element(By.ID, "prompt").send_keys(QUESTIONS[2])
        driver.find_element(By.ID, "send").click()
        answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#transcript-a .msg.assistant[data-done='1']"))
        expected = ask(server.client, "lora-a", QUESTIONS[2], max_tokens=64)  # the page's default, capped by the server
        assert answer.find_element(By.CLASS_NAME, "body").text.strip() == expected.strip()  # streamed, greedy
        answer.find_element(By.CLASS_NAME, "thumb-up").click()
        wait.until(lambda d: answer.get_attribute("data-feedback") == "up")
        first_id = answer.get_attribute("data-id")
        assert db.execute("SELECT rating FROM feedback WHERE request_id = ?", (first_id,)).fetchone() == ("up",)

        # two models side by side on one prompt, and a correction
        driver.find_element(By.ID, "mode-side").click()
        Select(driver.find_element(By.ID, "model-a")).select_by_value("lora-b")
        Select(driver.find_element(By.ID, "model-b")).select_by_value("full")
        driver.find_element(By.ID, "prompt").send_keys(QUESTIONS[0])
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")) == 2)
        left, right = (driver.find_element(By.CSS_SELECTOR, f"#transcript-{s} .msg.assistant") for s in "ab")
        assert (left.get_attribute("data-model"), right.get_attribute("data-model")) == ("lora-b", "full")
        right.find_element(By.CLASS_NAME, "correct").click()
        box = right.find_element(By.CSS_SELECTOR, ".correction textarea")
        box.clear()
        box.send_keys("The sum of two numbers.")
        right.find_element(By.CLASS_NAME, "save-correction").click()
        wait.until(lambda d: right.get_attribute("data-feedback") == "corrected")
        assert db.execute("SELECT correction FROM feedback WHERE request_id = ?",
                          (right.get_attribute("data-id"),)).fetchone() == ("The sum of two numbers.",)

        # the request log shows these requests with their latency
        wanted = {first_id, left.get_attribute("data-id"), right.get_attribute("data-id")}
        driver.find_element(By.ID, "refresh-log").click()
        read_log = "return [...document.querySelectorAll('#log tbody tr')].map(r => [r.dataset.id, " \
                   "r.querySelector('.latency').textContent])"
        rows = wait.until(lambda d: (rows := d.execute_script(read_log)) and wanted <= {r[0] for r in rows} and rows)
        assert all(latency.endswith(" ms") for row_id, latency in rows if row_id in wanted)
        driver.save_screenshot(str(tmp_path / "playground.png"))
    finally:
        driver.quit()
    assert (tmp_path / "playground.png").stat().st_size > 20_000
