"""The OpenAI-compatible HTTP API (FastAPI) over the engine: models, chat completions, completions
(streaming or not), feedback, the request log and the web playground."""

import base64
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tuneforge.inference.heads import prediction
from tuneforge.json_text import MAX_NESTING
from tuneforge.serve.auth import RequireKey
from tuneforge.serve.body import parse_body, read_body
from tuneforge.serve.call import Call, chat_chunk, completion_chunk, sse
from tuneforge.serve.engine import Engine
from tuneforge.serve.errors import APIError, install_handlers
from tuneforge.serve.heads import HeadServer, image_input
from tuneforge.serve.jobs import Sampling
from tuneforge.serve.models import ModelPool
from tuneforge.serve.schemas import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
)
from tuneforge.serve.store import Store
from tuneforge.tasks.seq2seq import prompt_text


@dataclass
class Limits:
    max_tokens: int = 2048  # most tokens one choice may generate
    max_rows: int = 64  # prompts x n in one request
    max_body_bytes: int = 1 << 20
    max_depth: int = MAX_NESTING  # JSON nesting; deeper is refused before it is parsed
    request_timeout: float = 600.0  # seconds from arrival to the last token, queueing included


def create_app(pool: ModelPool, engine: Engine, store: Store, api_key: str | None = None,
               limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="tuneforge", summary="OpenAI-compatible API for fine-tuned models", docs_url="/docs")
    app.state.pool, app.state.engine, app.state.store = pool, engine, store
    if api_key:
        app.add_middleware(RequireKey, key=api_key)

    install_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return resources.files("tuneforge.serve").joinpath("playground.html").read_text()

    @app.get("/health")
    async def health():
        state = {"status": "ok" if engine.running else "engine stopped", "models": [*pool.served, *pool.heads],
                 "device": pool.device, "precision": pool.precision, "max_tokens_limit": limits.max_tokens,
                 "api_key_required": bool(api_key)}
        return JSONResponse(state, status_code=200 if engine.running else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(s) for s in pool.served.values()]
                + [_head_card(h) for h in pool.heads.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name in pool.heads:
            return _head_card(pool.heads[name])
        return _model_card(pool.served[_known(pool, name)])

    async def read(request: Request, schema):
        """(arrival time, validated body, served model name, its tokenizer) of a generation request."""
        arrived = time.time()
        body = parse_body(await read_body(request, limits.max_body_bytes), schema, limits.max_depth)
        name = _known(pool, body.model)
        _check_bias(body, pool.tokenizers[name])
        return arrived, body, name, pool.tokenizers[name]

    def new_call(request: Request, endpoint: str, prefix: str, name: str, arrived: float, record: dict) -> "Call":
        return Call(engine, store, request, endpoint, f"{prefix}-{secrets.token_hex(12)}", name, arrived,
                    arrived + limits.request_timeout, record)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        arrived, body, name, tokenizer = await read(request, ChatRequest)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        if name in pool.encoder_decoder:
            prompt = _seq2seq_prompt(messages)
            ids = tokenizer(prompt)["input_ids"]  # as training encoded it, with the tokenizer's special tokens
        else:
            try:
                prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # the template's own rules (role order, system support) raise TemplateError
                raise APIError(400, f"messages: the model's chat template refused them ({e}).", "messages") from None
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = _max_tokens(body.max_completion_tokens or body.max_tokens, [ids], pool, limits,
                                 "max_completion_tokens" if body.max_completion_tokens else "max_tokens", "messages")
        _rows(body.n, 1, limits)
        sampling = _sampling(body, max_tokens, logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        call = new_call(request, "chat.completions", "chatcmpl", name, arrived,
                    {"messages": messages, "prompt": prompt, "params": _params(body, max_tokens)})
        job = call.submit([ids] * body.n, sampling, body.n)
        usage = body.stream_options.include_usage if body.stream_options else False
        if body.stream:
            return sse(call.stream(job, body.n, chat_chunk, usage))
        results = await call.results(job, body.n)
        return {**call.head("chat.completion"), "choices": [
            {"index": i, "message": {"role": "assistant", "content": r.text},
             "logprobs": _chat_logprobs(r.logprobs) if body.logprobs else None, "finish_reason": r.reason}
            for i, r in enumerate(results)], "usage": call.usage(results)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        arrived, body, name, tokenizer = await read(request, CompletionRequest)
        prompts = _prompt_ids(body.prompt, tokenizer, special_tokens=name in pool.encoder_decoder)
        max_tokens = _max_tokens(body.max_tokens, prompts, pool, limits, "max_tokens", "prompt")
        _rows(body.n, len(prompts), limits)
        if body.echo and body.stream:
            raise APIError(400, "echo is not supported with stream: true.", "echo")
        if body.echo and name in pool.encoder_decoder:
            raise APIError(400, f"echo: `{name}` is an encoder-decoder; its answer does not continue the prompt, so "
                                "there are no prompt logprobs to echo. Leave echo false.", "echo")
        sampling = _sampling(body, max_tokens, logprobs=body.logprobs, echo=body.echo)
        texts = [tokenizer.decode(p) for p in prompts]
        call = new_call(request, "completions", "cmpl", name, arrived,
                    {"prompt": texts[0] if len(texts) == 1 else json.dumps(texts), "params": _params(body, max_tokens)})
        rows = [p for p in prompts for _ in range(body.n)]
        job = call.submit(rows, sampling, body.n)
        if body.stream:
            usage = body.stream_options.include_usage if body.stream_options else False
            return sse(call.stream(job, len(rows), completion_chunk, usage))
        results = await call.results(job, len(rows))
        return {**call.head("text_completion"), "choices": [
            {"index": i, "text": (texts[i // body.n] if body.echo else "") + r.text, "logprobs": r.logprobs,
             "finish_reason": r.reason} for i, r in enumerate(results)], "usage": call.usage(results)}

    async def head_rows(request: Request, schema) -> tuple[object, str, list[dict], HeadServer]:
        body = parse_body(await read_body(request, limits.max_body_bytes), schema, limits.max_depth)
        if body.model not in pool.heads:
            _known(pool, body.model)  # 404 for a name served nowhere
            raise APIError(400, f"model: `{body.model}` generates text; {request.url.path} serves classification and "
                                f"regression runs ({', '.join(pool.heads) or 'none here'}).", "model")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if pool.heads[body.model].model.task.images:
            if len(texts) > limits.max_rows:
                raise APIError(400, f"input: {len(texts)} images, more than this server's {limits.max_rows} per "
                                    "request; split the request.", "input")
            return body, body.model, [{"image": image_input(t, i)} for i, t in enumerate(texts)], pool.heads[body.model]
        pairs = getattr(body, "text_pair", None)
        pairs = None if pairs is None else [pairs] if isinstance(pairs, str) else pairs
        if pairs is not None and len(pairs) != len(texts):
            raise APIError(400, f"text_pair: {len(pairs)} texts for {len(texts)} inputs; give one per input.",
                           "text_pair")
        if len(texts) > limits.max_rows:
            raise APIError(400, f"input: {len(texts)} texts, more than this server's {limits.max_rows} per request; "
                                "split the request.", "input")
        rows = [{"text": t, **({"text_pair": pairs[i]} if pairs else {})} for i, t in enumerate(texts)]
        return body, body.model, rows, pool.heads[body.model]

    @app.post("/v1/classify")
    async def classify(request: Request):
        _, name, rows, head = await head_rows(request, ClassifyRequest)
        outputs = await head.run("classify", rows)
        classes = head.model.classes
        return {"object": "list", "model": name, "task": head.model.recipe.task,
                "data": [{"index": i, **prediction(o, classes, head.model.recipe.head.threshold)}
                         for i, o in enumerate(outputs)],
                "usage": _head_usage(head, rows)}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body, name, rows, head = await head_rows(request, EmbeddingRequest)
        vectors = await head.run("embed", rows)
        encode = (lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode()) if body.encoding_format == "base64" \
            else (lambda v: [round(float(x), 7) for x in v])
        return {"object": "list", "model": name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": _head_usage(head, rows)}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = parse_body(await read_body(request, limits.max_body_bytes), FeedbackRequest, limits.max_depth)
        if body.rating is None and not body.correction:
            raise APIError(400, "feedback needs a rating (up or down) or a correction.", "rating")
        if not store.has_request(body.id):
            raise APIError(404, f"id: no logged response {body.id!r}; pass the `id` of a chat.completion or "
                                "text_completion this server returned.", "id", "not_found")
        feedback_id = store.add_feedback(body.id, body.choice, body.rating, body.correction, body.comment)
        return {"object": "feedback", "id": feedback_id, "request_id": body.id, "rating": body.rating,
                "correction": body.correction}

    @app.get("/v1/logs")
    async def logs(limit: int = 50, model: str | None = None):
        if not 1 <= limit <= 1000:
            raise APIError(400, f"limit: {limit} is outside 1..1000.", "limit")
        return {"object": "list", "data": store.recent(limit, model)}

    return app


def _known(pool: ModelPool, name: str) -> str:
    """A generative model's name; a head run's is refused (400), any other unknown (404)."""
    if name in pool.heads:
        raise APIError(400, f"model: `{name}` is a {pool.heads[name].model.recipe.task} run; it answers POST "
                            "/v1/classify and /v1/embeddings, not text generation.", "model")
    if name not in pool.served:
        raise APIError(404, f"The model `{name}` does not exist here. Served: {', '.join([*pool.served, *pool.heads])}.",
                       "model", "model_not_found")
    return name


def _head_card(head: HeadServer) -> dict:
    m = head.model
    return {"id": head.run_dir.name, "object": "model", "created": int((head.run_dir / "model").stat().st_mtime),
            "owned_by": "tuneforge", "root": m.recipe.model.name, "parent": m.recipe.model.name,
            "method": m.recipe.method, "task": m.recipe.task, "labels": m.classes.names}


def _head_usage(head: HeadServer, rows: list[dict]) -> dict:
    if head.model.task.images:  # no tokens: OpenAI's usage fields stay, with the images counted beside them
        return {"prompt_tokens": 0, "total_tokens": 0, "images": len(rows)}
    tokenizer, limit = head.model.tokenizer, head.model.recipe.data.max_length
    tokens = sum(min(len(tokenizer(r["text"], r.get("text_pair"))["input_ids"]), limit) for r in rows)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _model_card(served) -> dict:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "tuneforge",
            "root": served.base, "parent": None if served.run_dir is None else served.base,
            "method": served.method}


def _max_tokens(asked: int | None, prompts: list[list[int]], pool: ModelPool, limits: Limits, param: str,
                prompt_param: str) -> int:
    longest = max(len(p) for p in prompts)
    room = pool.max_context - longest
    if room <= 0:
        raise APIError(400, f"This model's maximum context length is {pool.max_context} tokens; the prompt has "
                            f"{longest}. Shorten the prompt.", prompt_param,
                       "context_length_exceeded")
    if asked is None:
        return min(limits.max_tokens, room)
    if asked < 0:
        raise APIError(400, f"{param}: {asked} is negative; ask for 1 or more tokens.", param)
    if asked > limits.max_tokens:
        raise APIError(400, f"{param}: {asked} is over this server's limit of {limits.max_tokens} "
                            "(tuneforge serve --max-tokens-limit).", param)
    if asked > room:
        raise APIError(400, f"This model's maximum context length is {pool.max_context} tokens; you asked for "
                            f"{longest + asked} ({longest} in the prompt, {asked} to generate). Lower {param}.",
                       param, "context_length_exceeded")
    return asked


def _rows(n: int, prompts: int, limits: Limits) -> None:
    if n * prompts > limits.max_rows:
        raise APIError(400, f"n: {prompts} prompt(s) x n={n} is over this server's limit of {limits.max_rows} "
                            "choices a request.", "n")


def _seq2seq_prompt(messages: list[dict]) -> str:
    """What a seq2seq model's encoder reads for a chat request: the system text and the one prompt, a blank
    line apart, as its training rows were (tasks/seq2seq.py); a conversation with answers in it is refused."""
    if any(m["role"] == "assistant" for m in messages) or not any(m["role"] == "user" for m in messages):
        raise APIError(400, "messages: this model is an encoder-decoder (a seq2seq run) and answers one prompt: "
                            "send one user message (a system message may come first), without assistant turns.",
                       "messages")
    return prompt_text(messages)


def _prompt_ids(prompt, tokenizer, special_tokens: bool = False) -> list[list[int]]:
    """OpenAI's four prompt shapes: a string, strings, token ids, lists of token ids. A string is tokenised
    with the tokenizer's special tokens for an encoder-decoder (its encoder was trained so)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt: is empty.", "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    ids = [tokenizer(p, add_special_tokens=special_tokens)["input_ids"] if isinstance(p, str) else list(p)
           for p in prompt]
    vocab = len(tokenizer)
    for p in ids:
        if not p:
            raise APIError(400, "prompt: an empty prompt has nothing to continue.", "prompt")
        if any(t < 0 or t >= vocab for t in p):
            raise APIError(400, f"prompt: token ids must be in 0..{vocab - 1}.", "prompt")
    return ids


def _check_bias(body, tokenizer) -> None:
    vocab = len(tokenizer)
    wrong = [k for k in body.bias() if not 0 <= k < vocab]
    if wrong:
        raise APIError(400, f"logit_bias: token id {wrong[0]} is not in this model's vocabulary (0..{vocab - 1}).",
                       "logit_bias")


def _sampling(body, max_tokens: int, logprobs: int | None, echo: bool = False) -> Sampling:
    return Sampling(max_tokens, body.temperature, body.top_p, body.stops(), body.seed, logprobs, echo,
                    body.frequency_penalty, body.presence_penalty, body.bias())


def _params(body, max_tokens: int) -> dict:
    """What the request log keeps of the sampling (defaults left out of the penalties and bias)."""
    params = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens,
              "stop": list(body.stops()), "n": body.n, "seed": body.seed}
    extra = {"frequency_penalty": body.frequency_penalty, "presence_penalty": body.presence_penalty,
             "logit_bias": body.logit_bias, "user": body.user}
    return params | {k: v for k, v in extra.items() if v}


def _chat_logprobs(logprobs: dict | None) -> dict | None:
    if logprobs is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                         "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in top.items()]}
                        for t, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])]}
