"""`tuneforge serve` under bad and unlucky input, on a real localhost server: every request answered in
bounded time (a failing job, a deadline, a client that leaves, a full queue), no 5xx from bad input, one
OpenAI error shape for every 4xx, refused instead of ignored fields, and the sampler's penalties and
logit_bias against a direct computation on the model."""

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from openai import OpenAI

from conftest import arithmetic_rows, tiny_run_recipe, write_jsonl
from tuneforge.inference.run_models import RunModels
from tuneforge.recipe_file import validate_recipe
from tuneforge.serve import engine as engine_module
from tuneforge.serve.app import Limits
from tuneforge.serve.jobs import Job, Sampling
from tuneforge.serve.rows import Row
from tuneforge.serve.server import Background, build
from tuneforge.train.run import train

HI = [{"role": "user", "content": "What is 3 + 4?"}]


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    data = write_jsonl(tmp / "chat.jsonl", arithmetic_rows(40))
    return train(validate_recipe(tiny_run_recipe(tiny_model, data, "hard")), tmp / "runs")


def start(run, tmp_path, **kw):
    """A served run on a free port: (background server, engine, store)."""
    limits = Limits(**{k: kw.pop(k) for k in list(kw) if k in Limits.__dataclass_fields__})
    app, engine, store = build([run], tmp_path / "requests.sqlite", precision="fp32", limits=limits, **kw)
    srv = Background(app)
    srv.app = app
    return srv, engine, store


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    srv, engine, store = start(run, tmp_path_factory.mktemp("db"), max_tokens=64, max_body_bytes=20_000)
    with srv:
        srv.engine, srv.store = engine, store
        srv.client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        yield srv
    engine.stop()


def request(url: str, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, parsed JSON body) over a plain HTTP connection; `body` bytes are sent as given."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), json.loads(raw) if raw else None


def assert_openai_error(status: int, body: dict, expected_status: int, param=None, words: str = ""):
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param, body
    assert words.lower() in body["error"]["message"].lower(), body


def greedy(client, **kw):
    return client.chat.completions.create(model="hard", messages=HI, temperature=0, max_tokens=8, **kw)


def chat(**fields):
    return {"model": "hard", "messages": HI, "max_tokens": 4, **fields}


BAD = {
    "seed over 64 bits": (chat(seed=2 ** 64), 400, "seed", "less than or equal to 9223372036854775807"),
    "seed under int64": (chat(seed=-(2 ** 63) - 1), 400, "seed", "greater than or equal"),
    "image part": (chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]),
        400, "messages.0.content", "part 1 is 'image_url'"),
    "audio part": (chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
                   400, "messages.0.content", "audio cannot be used"),
    "unknown part": (chat(messages=[{"role": "user", "content": [{"type": "video", "video": 1}]}]), 400,
                     "messages.0.content", "part 0 is not a text part"),
    "text part without text": (chat(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]), 400,
                               "messages.0.content", "part 0 is not a text part"),
    "content a number": (chat(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content",
                         "content is a string or a list"),
    "tool calls in a message": (chat(messages=[{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
                                               *HI]), 400, "messages.0.tool_calls", "unknown field"),
    "tools": (chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "function calling"),
    "tool_choice": (chat(tool_choice="required"), 400, "tool_choice", "function calling"),
    "json mode": (chat(response_format={"type": "json_object"}), 400, "response_format", "json"),
    "unknown field": (chat(temprature=0.5), 400, "temprature", "unknown field"),
    "penalty out of range": (chat(frequency_penalty=3), 400, "frequency_penalty", "less than or equal to 2"),
    "logit_bias key": (chat(logit_bias={"hello": 5}), 400, "logit_bias", "not a token id"),
    "logit_bias token": (chat(logit_bias={"99999": 5}), 400, "logit_bias", "not in this model's vocabulary"),
    "logit_bias value": (chat(logit_bias={"5": 500}), 400, "logit_bias.5", "less than or equal to 100"),
    "too many stops": (chat(stop=["a"] * 17), 400, "stop", "at most 16 strings"),
    "stop not text": (chat(stop=[1]), 400, "stop", "stop is a string or a list"),
    "stop too long": (chat(stop="x" * 257), 400, "stop", "of at most 256 characters"),
    "stream_options without stream": (chat(stream_options={"include_usage": True}), 400, "stream_options",
                                      "send stream: true"),
    "top_logprobs without logprobs": (chat(top_logprobs=3), 400, "top_logprobs", "needs logprobs: true"),
    "a message without content": (chat(messages=[{"role": "user"}]), 400, "messages.0.content", "field required"),
    "a message with null content": (chat(messages=[{"role": "user", "content": None}]), 400, "messages.0.content",
                                    "content is a string"),
    "n too large": (chat(n=10 ** 9), 400, "n", "less than or equal to 1024"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_values_the_engine_cannot_take_are_refused_naming_the_field(server, case):
    body, status, param, words = BAD[case]
    got, _, error = request(server.url, "POST", "/v1/chat/completions", body)
    assert_openai_error(got, error, status, param, words)


def test_seeds_at_the_int64_edges_sample_reproducibly(server):
    for seed in (2 ** 63 - 1, -(2 ** 63)):
        texts = [server.client.chat.completions.create(model="hard", messages=HI, temperature=1.5, max_tokens=8,
                                                       seed=seed).choices[0].message.content for _ in range(2)]
        assert texts[0] == texts[1]


RAW = {
    "deep nesting": (b'{"model": "hard", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nests"),
    "brackets inside strings are text": (json.dumps(chat(messages=[{"role": "user", "content": '"[[{' * 20}])).encode(),
                                         200, ""),
    "NaN": (b'{"model": "hard", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
            "not a json value"),
    "5,000-digit number": (b'{"model": "hard", "messages": [], "seed": ' + b"9" * 5000 + b"}", 400, "not valid json"),
    "lone surrogate": (b'{"model": "hard", "messages": [{"role": "user", "content": "a\\ud800b"}]}', 400,
                       "unpaired utf-16 surrogate"),
    "paired surrogates are an emoji": (b'{"model": "hard", "max_tokens": 2, "messages": [{"role": "user", '
                                       b'"content": "\\ud83d\\ude00"}]}', 200, ""),
    "not UTF-8": (b'{"model": "h\xff\xfe"}', 400, "not valid json"),
    "a list, not an object": (b"[1, 2]", 400, "valid dictionary"),
}


@pytest.mark.parametrize("case", RAW, ids=list(RAW))
def test_malformed_bodies_get_400_before_anything_runs(server, case):
    body, status, words = RAW[case]
    got, _, answer = request(server.url, "POST", "/v1/chat/completions", body)
    if status == 200:
        assert got == 200, answer
    else:
        assert_openai_error(got, answer, status, answer["error"]["param"], words)


def test_a_body_over_the_limit_is_refused_without_reading_it_all(server):
    """A chunked upload has no Content-Length: the server stops reading at the limit."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b'{"model": "hard", "pad": "' + b"x" * 8000 for _ in range(10 ** 6))  # 8 GB if all were sent
    conn.request("POST", "/v1/chat/completions", chunks, {"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert_openai_error(response.status, json.loads(response.read()), 413, None, "over 20000 bytes")
    conn.close()


def test_framework_errors_have_the_openai_shape(server):
    status, _, body = request(server.url, "GET", "/v1/logs?limit=abc")
    assert_openai_error(status, body, 400, "limit", "valid integer")
    status, headers, body = request(server.url, "GET", "/v1/chat/completions")
    assert_openai_error(status, body, 405, None, "method not allowed")
    assert headers["allow"] == "POST"
    # an OpenAI route this server does not have (/v1/embeddings it has: for classification runs)
    status, _, body = request(server.url, "POST", "/v1/images/generations", {"model": "hard", "prompt": "x"})
    assert_openai_error(status, body, 404, None, "not found")
    assert body["error"]["type"] == "not_found_error"
    status, _, body = request(server.url, "POST", "/v1/feedback", {"id": "x", "rating": "up", "choice": 2 ** 70})
    assert_openai_error(status, body, 400, "choice", "less than or equal")


def test_a_job_that_fails_inside_the_engine_fails_alone(server, run):
    """Straight to the engine, past the API's checks: a job whose sampling cannot be set up (a seed torch
    refuses) prefilled together with good jobs gets its error; the good ones answer as they do alone."""
    events: dict[int, list] = {0: [], 1: [], 2: []}
    done = threading.Event()
    ids = server.app.state.pool.tokenizers["hard"]("What is 3 + 4?")["input_ids"]

    def listener(i):
        def emit(event):
            events[i].append(event)
            if all(any(e[0] in ("done", "error") for e in v) for v in events.values()):
                done.set()
        return emit

    jobs = [Job("hard", [ids], Sampling(6, temperature=0, seed=s), listener(i)) for i, s in enumerate([1, 2 ** 70, 3])]
    server.engine._queue.put(jobs[0])  # straight onto the queue, all three before the worker looks
    server.engine._queue.put(jobs[1])
    server.engine._queue.put(jobs[2])
    assert done.wait(30)
    assert events[1] == [("error", "ValueError: Overflow when unpacking long long")]
    alone = server.client.completions.create(model="hard", prompt=ids, max_tokens=6, temperature=0).choices[0].text
    for i in (0, 2):
        assert events[i][-1][0] == "done" and events[i][-1][2].text == alone


def test_a_failing_step_answers_500_and_the_server_keeps_serving(server, monkeypatch):
    before = greedy(server.client).choices[0].message.content
    original = engine_module.Batch.step
    calls = {"n": 0}

    def fails_once(self, model):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected decode failure")
        return original(self, model)

    monkeypatch.setattr(engine_module.Batch, "step", fails_once)
    status, _, body = request(server.url, "POST", "/v1/chat/completions", chat(max_tokens=8, temperature=0))
    assert status == 500 and body["error"]["type"] == "server_error" and "injected" in body["error"]["message"]
    assert greedy(server.client).choices[0].message.content == before
    assert server.store.recent(2)[1]["status"] == 500


@pytest.fixture
def slow_steps(monkeypatch):
    """Each decode step takes 0.2 s more (a busy or slow machine), so a request outlives its deadline."""
    original = engine_module.Batch.step

    def slow(self, model):
        time.sleep(0.2)
        return original(self, model)

    monkeypatch.setattr(engine_module.Batch, "step", slow)


def _wait(condition, seconds: float = 5.0) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_deadline_ends_a_request_and_frees_its_rows(run, tmp_path, slow_steps):
    srv, engine, store = start(run, tmp_path, request_timeout=1.0)
    with srv:
        started = time.time()
        status, _, body = request(srv.url, "POST", "/v1/chat/completions", chat(max_tokens=60))
        took = time.time() - started
        assert_openai_error(status, body, 504, None, "within the server's 1 s")
        assert body["error"]["code"] == "request_timeout" and 0.9 < took < 3
        assert _wait(lambda: engine._batch is None)  # the rows left at the next token
        started = time.time()
        stream = OpenAI(base_url=srv.url + "/v1", api_key="-", max_retries=0).chat.completions.create(
            model="hard", messages=HI, max_tokens=60, stream=True)
        with pytest.raises(openai.APIError, match="did not finish within the server's 1 s"):
            list(stream)  # the error arrives as the stream's last event
        assert time.time() - started < 3
        assert store.recent(1)[0]["status"] == 504
    engine.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_frees_its_slot(run, tmp_path, slow_steps, stream):
    srv, engine, store = start(run, tmp_path)
    with srv:
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps(chat(max_tokens=60, stream=stream)),
                     {"Content-Type": "application/json"})
        assert _wait(lambda: engine._batch is not None and engine._batch.rows)
        if stream:
            response = conn.getresponse()
            assert response.read(50)  # the first chunks arrived
            response.close()
        started = time.time()
        conn.close()  # the client goes away; 60 tokens at 0.2 s would take 12 s
        assert _wait(lambda: engine._batch is None, 3), "the rows kept decoding for nobody"
        assert time.time() - started < 3
        assert _wait(lambda: store.recent(1) and store.recent(1)[0]["status"] == 499, 3)
    engine.stop()


def test_a_full_queue_answers_429_with_retry_after(run, tmp_path, slow_steps):
    srv, engine, _ = start(run, tmp_path, max_batch=1, max_queue=1)
    with srv:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(request, srv.url, "POST", "/v1/chat/completions", chat(max_tokens=5))
            assert _wait(lambda: engine._batch is not None)
            second = pool.submit(request, srv.url, "POST", "/v1/chat/completions", chat(max_tokens=5))
            assert _wait(lambda: engine._queue.qsize() + len(engine._waiting) == 1)
            status, headers, body = request(srv.url, "POST", "/v1/chat/completions", chat(max_tokens=5))
            assert_openai_error(status, body, 429, None, "--max-queue")
            assert body["error"]["type"] == "rate_limit_error" and int(headers["retry-after"]) >= 1
            assert first.result()[0] == second.result()[0] == 200
    engine.stop()


def _reference_greedy(model, tokenizer, ids: list[int], steps: int, bias=None, frequency=0.0, presence=0.0) -> str:
    """OpenAI's documented sampling adjustments applied by hand to the model's full-sequence logits."""
    out: list[int] = []
    eos = {tokenizer.eos_token_id}
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
        for token, value in (bias or {}).items():
            logits[token] += value
        for token, count in Counter(out).items():
            logits[token] -= count * frequency + presence
        token = int(logits.argmax())
        if token in eos:
            break
        out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


def test_penalties_and_logit_bias_match_a_direct_computation(server, run):
    models = RunModels(run)
    tokenizer = models.tokenizer
    ids = tokenizer("What is the sum of two", add_special_tokens=False)["input_ids"]

    def api(**kw):
        return server.client.completions.create(model="hard", prompt=ids, max_tokens=20, temperature=0,
                                                **kw).choices[0].text

    plain = api()
    assert plain == _reference_greedy(models.tuned, tokenizer, ids, 20)
    first = tokenizer(plain, add_special_tokens=False)["input_ids"][0]
    cases = [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"frequency_penalty": -1.0},
             {"logit_bias": {str(first): -100}}, {"logit_bias": {"42": 100}}]
    for kw in cases:
        bias = {int(k): v for k, v in kw.get("logit_bias", {}).items()}
        expected = _reference_greedy(models.tuned, tokenizer, ids, 20, bias, kw.get("frequency_penalty", 0.0),
                                     kw.get("presence_penalty", 0.0))
        assert api(**kw) == expected, kw
    assert api(logit_bias={"42": 100}) == tokenizer.decode([42] * 20)
    assert api(frequency_penalty=2.0) != plain and api(logit_bias={str(first): -100}) != plain  # they act


def test_sampler_adjustments_equal_the_formula():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    job = Job("m", [[1]], Sampling(9, frequency_penalty=0.7, presence_penalty=0.3, logit_bias={3: 5.0, 7: -2.0}),
              lambda e: None)
    row = Row(job, 0, [1], tokenizer=None)
    row.ids = [3, 3, 9, 3, 11]
    expected = logits.clone()
    expected[3] += 5.0
    expected[7] -= 2.0
    for token, count in {3: 3, 9: 1, 11: 1}.items():
        expected[token] -= 0.7 * count + 0.3
    torch.testing.assert_close(row.adjusted(logits), expected)
    assert torch.equal(Row(Job("m", [[1]], Sampling(9), lambda e: None), 0, [1], None).adjusted(logits),
                       logits)


def test_chat_logprobs_are_the_models_own(server, run):
    r = server.client.chat.completions.create(model="hard", messages=HI, temperature=0, max_tokens=6, logprobs=True,
                                              top_logprobs=3)
    content = r.choices[0].logprobs.content
    models = RunModels(run)
    tokenizer = models.tokenizer
    prompt = tokenizer.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated = tokenizer(r.choices[0].message.content, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(models.tuned(torch.tensor([ids + generated])).logits[0].float(), -1)
    direct = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(generated)]
    assert [c.token for c in content] == [tokenizer.decode([t]) for t in generated]
    assert [c.logprob for c in content] == pytest.approx(direct, abs=1e-4)
    for c, i in zip(content, range(len(generated))):
        top = torch.topk(logp[len(ids) - 1 + i], 3)
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-6)  # greedy took the most likely
        assert c.bytes == list(c.token.encode())
    without = server.client.chat.completions.create(model="hard", messages=HI, temperature=0, max_tokens=6)
    assert without.choices[0].logprobs is None and without.choices[0].message.content == r.choices[0].message.content


def test_health_says_when_the_engine_is_not_running(run, tmp_path):
    srv, engine, _ = start(run, tmp_path)
    with srv:
        assert request(srv.url, "GET", "/health")[0] == 200
        engine.stop()
        status, _, body = request(srv.url, "GET", "/health")
        assert status == 503 and body["status"] == "engine stopped"
