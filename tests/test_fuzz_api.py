"""Fuzzing `tuneforge serve` on a real localhost server: requests built from the API's own request schemas,
valid and broken, to every endpoint. Each must be answered within a deadline, never with a 5xx, every
4xx in the OpenAI error shape, every 200 in the shape its endpoint promises; afterwards the server is
healthy and gives a known greedy request the answer it gave before."""

import http.client
import json
import urllib.parse

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from conftest import arithmetic_rows, fuzz, tiny_run_recipe, write_jsonl
from fuzzing import JSON_VALUES, ODD_TEXT, model_dicts, mutated, raw_bytes
from tuneforge.recipe_file import validate_recipe
from tuneforge.serve.app import Limits
from tuneforge.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest
from tuneforge.serve.server import Background, build
from tuneforge.train.run import train

DEADLINE = 30  # seconds for any one answer (generation is capped at 16 tokens of the tiny model)
KNOWN = {"model": "fuzz", "messages": [{"role": "user", "content": "What is 3 + 4?"}], "temperature": 0,
         "max_tokens": 12}

SHORT_TEXT = st.text(max_size=30) | ODD_TEXT
# Valid requests need the served model's name, prompts that fit its 256 positions and short answers;
# everything else is drawn from the schemas' own types and bounds.
SEMANTIC = {
    "model": st.sampled_from(["fuzz"] * 7 + ["no-such-model"]),
    "messages.0.content": SHORT_TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": SHORT_TEXT}),
                                                max_size=2),
    "prompt": SHORT_TEXT | st.lists(SHORT_TEXT, min_size=1, max_size=2)
    | st.lists(st.integers(0, 338), min_size=1, max_size=20) | st.lists(st.integers(-5, 10 ** 6), max_size=3),
    "max_tokens": st.none() | st.integers(0, 16),
    "max_completion_tokens": st.none() | st.integers(0, 16),
    "n": st.integers(1, 3),
    "logit_bias": st.none() | st.dictionaries(st.integers(0, 338).map(str), st.floats(-100, 100), max_size=3),
    "stream": st.booleans(),
    "stream_options": st.none(),
    # OpenAI fields refused unless left at their defaults: the valid bodies keep the defaults (the
    # mutations give them other values)
    **{name: st.none() for name in ("tools", "functions", "tool_choice", "function_call", "parallel_tool_calls",
                                     "best_of", "suffix")},
    "response_format": st.none() | st.just({"type": "text"}),
}


def bodies(schema):
    valid = model_dicts(schema, SEMANTIC)
    return st.one_of(valid, valid, mutated(valid, schema), raw_bytes(valid))  # half of them valid


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    data = write_jsonl(tmp / "chat.jsonl", arithmetic_rows(40))
    run = train(validate_recipe(tiny_run_recipe(tiny_model, data, "fuzz")), tmp / "runs")
    app, engine, store = build([run], tmp / "requests.sqlite", precision="fp32",
                               limits=Limits(max_tokens=16, max_body_bytes=100_000))
    with Background(app) as srv:
        srv.engine = engine
        srv.before = send(srv, "POST", "/v1/chat/completions", KNOWN)
        yield srv
    engine.stop()


def send(srv, method: str, path: str, body=None) -> tuple[int, bytes, dict]:
    host, port = srv.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=DEADLINE)  # a hang fails as a timeout
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def check_answer(status: int, raw: bytes, headers: dict, endpoint: str, body) -> None:
    event(f"HTTP {status}")  # the mix of answers: pytest --hypothesis-show-statistics
    assert status < 500, raw[:2000]
    if status >= 400:
        error = json.loads(raw)
        assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}, error
        assert isinstance(error["error"]["message"], str) and error["error"]["message"], error
        return
    assert status == 200, raw[:500]
    if headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line for line in raw.decode().split("\n\n") if line]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert all("error" not in e for e in events), events
        return
    answer = json.loads(raw)
    if endpoint == "other":
        return
    if endpoint == "feedback":
        assert answer["object"] == "feedback"
    elif endpoint == "logs":
        assert isinstance(answer["data"], list)
    else:
        prompts = 1
        if endpoint == "completions" and isinstance(body["prompt"], list) and body["prompt"] \
                and not isinstance(body["prompt"][0], int):
            prompts = len(body["prompt"])
        assert len(answer["choices"]) == prompts * (body.get("n") or 1)  # null means the default
        assert answer["usage"]["completion_tokens"] >= 0
        assert all(c["finish_reason"] in ("stop", "length") for c in answer["choices"])


def still_healthy(srv) -> None:
    status, raw, _ = send(srv, "GET", "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"  # the engine's worker is running


@fuzz(examples=300)
@given(body=bodies(ChatRequest))
def test_fuzzed_chat_requests(server, body):
    check_answer(*send(server, "POST", "/v1/chat/completions", body), "chat", body)
    still_healthy(server)


@fuzz(examples=250)
@given(body=bodies(CompletionRequest))
def test_fuzzed_completion_requests(server, body):
    check_answer(*send(server, "POST", "/v1/completions", body), "completions", body)
    still_healthy(server)


@fuzz(examples=100)
@given(body=bodies(FeedbackRequest), known=st.booleans())
def test_fuzzed_feedback(server, body, known):
    if known and isinstance(body, dict):  # about a logged response, so the valid ones are stored
        body["id"] = json.loads(server.before[1])["id"]
    check_answer(*send(server, "POST", "/v1/feedback", body), "feedback", body)
    still_healthy(server)


@fuzz(examples=100)
@given(params=st.dictionaries(st.sampled_from(["limit", "model", "other"]),
                              st.integers(-5, 2000).map(str) | ODD_TEXT | JSON_VALUES.map(json.dumps), max_size=3),
       method=st.sampled_from(["GET", "GET", "POST", "DELETE", "PUT"]),
       path=st.sampled_from(["/v1/logs", "/v1/models", "/v1/models/fuzz", "/v1/models/%00", "/v1/models/..%2F",
                             "/v1/chat/completions", "/v1/nothing", "/health"]))
def test_fuzzed_logs_models_and_methods(server, params, method, path):
    query = urllib.parse.urlencode(params)
    status, raw, headers = send(server, method, f"{path}?{query}" if query else path)
    check_answer(status, raw, headers, "logs" if path == "/v1/logs" else "other", None)


def test_after_fuzzing_the_server_answers_as_before(server):
    """Runs after the fuzz tests in this module (pytest keeps file order)."""
    still_healthy(server)
    status, raw, _ = send(server, "POST", "/v1/chat/completions", KNOWN)
    before = json.loads(server.before[1])
    assert status == 200 and json.loads(raw)["choices"][0]["message"] == before["choices"][0]["message"]
    assert server.engine._batch is None and not server.engine._waiting  # nothing left running
