"""A classification run behind the real server next to a chat run: /v1/classify (batched across
concurrent requests), OpenAI's /v1/embeddings called by the `openai` client, /v1/models, and the
OpenAI-style errors for requests that do not fit the model."""

import base64
import json
import threading

import numpy as np
import pytest
from conftest import labelled_rows, tiny_run_recipe, write_jsonl
from conftest import post_json as post
from openai import OpenAI

from tuneforge.recipe_file import validate_recipe
from tuneforge.serve.app import Limits
from tuneforge.serve.server import Background, build
from tuneforge.train.run import train


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_encoder, tiny_model):
    tmp = tmp_path_factory.mktemp("serve-heads")
    moods = write_jsonl(tmp / "moods.jsonl", labelled_rows(120))
    head = train(validate_recipe({
        "name": "moods", "task": "classification", "method": "full", "model": {"name": str(tiny_encoder)},
        "data": {"sources": [str(moods)], "val_ratio": 0.1, "test_ratio": 0.1, "max_length": 32},
        "train": {"global_batch_size": 8, "max_steps": 60, "eval_every": 60, "learning_rate": 4e-3,
                  "precision": "fp32"}}), tmp / "runs")
    chat = train(validate_recipe(tiny_run_recipe(tiny_model, write_jsonl(tmp / "chat.jsonl", [
        {"prompt": f"What is {i}?", "completion": f"It is {i}."} for i in range(40)]), "chat")), tmp / "runs")
    app, engine, store = build([head, chat], tmp / "requests.sqlite", precision="fp32", limits=Limits(max_rows=8))
    with Background(app) as srv:
        srv.client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        srv.head = head
        yield srv
    engine.stop()


def test_classify_answers_what_predict_writes(server, tmp_path):
    from tuneforge.cli.main import main

    texts = ["item 5 was lovely and lovely today", "item 6 was broken and broken today"]
    status, body = post(server.url + "/v1/classify", {"model": "moods", "input": texts})
    assert status == 200 and body["task"] == "classification" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] > 0
    source = write_jsonl(tmp_path / "rows.jsonl", [{"text": t} for t in texts])
    assert main(["predict", str(server.head), "--input", str(source), "--out", str(tmp_path / "p.jsonl")]) == 0
    written = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    for served, mine in zip(body["data"], written):
        assert served["label"] == mine["label"]
        assert served["scores"] == pytest.approx(mine["scores"], abs=1e-4)


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(server):
    texts = [f"item {i} was {w} and {w} today" for i, w in enumerate(["great", "sad", "plain", "happy"] * 4)]
    alone = {t: post(server.url + "/v1/classify", {"model": "moods", "input": t})[1]["data"][0] for t in texts}
    answers = {}

    def ask(text):
        answers[text] = post(server.url + "/v1/classify", {"model": "moods", "input": text})[1]["data"][0]

    threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for text in texts:  # batched with others (padding to another length) gives the same answer
        assert answers[text]["label"] == alone[text]["label"]
        assert answers[text]["scores"] == pytest.approx(alone[text]["scores"], abs=1e-4)


def test_embeddings_through_the_openai_client(server):
    from tuneforge.inference.heads import HeadModel

    texts = ["item 1 was great", "a different text entirely"]
    floats = server.client.embeddings.create(model="moods", input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in floats.data])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    default = server.client.embeddings.create(model="moods", input=texts)  # the client asks for base64
    assert np.allclose(np.array([d.embedding for d in default.data]), vectors, atol=1e-6)
    direct = HeadModel(server.head).embeddings([{"text": t} for t in texts])
    assert np.allclose(direct / np.linalg.norm(direct, axis=1, keepdims=True), vectors, atol=1e-5)
    status, raw = post(server.url + "/v1/embeddings", {"model": "moods", "input": "x", "encoding_format": "base64"})
    assert status == 200 and len(base64.b64decode(raw["data"][0]["embedding"])) == 32 * 4


def test_models_lists_the_head_run_with_its_labels(server):
    models = {m.id: m for m in server.client.models.list().data}
    assert {"moods", "chat"} <= set(models)
    assert models["moods"].model_extra["task"] == "classification"
    assert models["moods"].model_extra["labels"] == ["bad", "good", "meh"]


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/classify", {"model": "chat", "input": "hi"}, 400, "model"),
    ("/v1/classify", {"model": "nope", "input": "hi"}, 404, "model"),
    ("/v1/classify", {"model": "moods", "input": []}, 400, "input"),
    ("/v1/classify", {"model": "moods", "input": ["a"] * 9}, 400, "input"),
    ("/v1/classify", {"model": "moods", "input": ["a", "b"], "text_pair": ["c"]}, 400, "text_pair"),
    ("/v1/classify", {"model": "moods", "input": "a", "temperature": 1}, 400, "temperature"),
    ("/v1/embeddings", {"model": "moods", "input": "a", "dimensions": 8}, 400, "dimensions"),
    ("/v1/chat/completions", {"model": "moods", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
])
def test_requests_that_do_not_fit_get_openai_style_errors(server, path, body, status, param):
    got, answer = post(server.url + path, body)
    assert got == status and answer["error"]["param"] == param, answer
    assert post(server.url + "/v1/classify", {"model": "moods", "input": "still up"})[0] == 200
