"""The OpenAI-compatible HTTP API (FastAPI) over the engine: models, chat completions, completions
(streaming or not), feedback, the request log and the web playground."""

import asyncio
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from tuneforge.json_text import MAX_NESTING, text_nesting
from tuneforge.serve.engine import Engine, Finished, Job, QueueFull, Sampling
from tuneforge.serve.models import ModelPool
from tuneforge.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest
from tuneforge.serve.store import Store


@dataclass
class Limits:
    max_tokens: int = 2048  # most tokens one choice may generate
    max_rows: int = 64  # prompts x n in one request
    max_body_bytes: int = 1 << 20
    max_depth: int = MAX_NESTING  # JSON nesting; deeper is refused before it is parsed
    request_timeout: float = 600.0  # seconds from arrival to the last token, queueing included


log = logging.getLogger("tuneforge.serve")


class APIError(Exception):
    """Becomes an OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def create_app(pool: ModelPool, engine: Engine, store: Store, api_key: str | None = None,
               limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="tuneforge", summary="OpenAI-compatible API for fine-tuned models", docs_url="/docs")
    app.state.pool, app.state.engine, app.state.store = pool, engine, store
    if api_key:
        app.add_middleware(RequireKey, key=api_key)

    # One error shape everywhere: tuneforge's own errors, Starlette's (404, 405, ...), FastAPI's
    # validation of query and path parameters, and anything unexpected (logged with its traceback).
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError):
        return e.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException):
        return APIError(e.status_code, str(e.detail), kind=_KINDS.get(e.status_code, "invalid_request_error"),
                        headers=e.headers).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError):
        return _invalid(e.errors()).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return APIError(500, f"The server failed on this request ({type(e).__name__}); the server log has the "
                             "details.", kind="server_error").response()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return resources.files("tuneforge.serve").joinpath("playground.html").read_text()

    @app.get("/health")
    async def health():
        state = {"status": "ok" if engine.running else "engine stopped", "models": list(pool.served),
                 "device": pool.device, "precision": pool.precision, "max_tokens_limit": limits.max_tokens,
                 "api_key_required": bool(api_key)}
        return JSONResponse(state, status_code=200 if engine.running else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(s) for s in pool.served.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return _model_card(pool.served[_known(pool, name)])

    async def read(request: Request, schema):
        """(arrival time, validated body, served model name, its tokenizer) of a generation request."""
        arrived = time.time()
        body = _parse(await _body(request, limits), schema, limits)
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
            return _sse(call.stream(job, body.n, _chat_chunk, usage))
        results = await call.results(job, body.n)
        return {**call.head("chat.completion"), "choices": [
            {"index": i, "message": {"role": "assistant", "content": r.text},
             "logprobs": _chat_logprobs(r.logprobs) if body.logprobs else None, "finish_reason": r.reason}
            for i, r in enumerate(results)], "usage": call.usage(results)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        arrived, body, name, tokenizer = await read(request, CompletionRequest)
        prompts = _prompt_ids(body.prompt, tokenizer)
        max_tokens = _max_tokens(body.max_tokens, prompts, pool, limits, "max_tokens", "prompt")
        _rows(body.n, len(prompts), limits)
        if body.echo and body.stream:
            raise APIError(400, "echo is not supported with stream: true.", "echo")
        sampling = _sampling(body, max_tokens, logprobs=body.logprobs, echo=body.echo)
        texts = [tokenizer.decode(p) for p in prompts]
        call = new_call(request, "completions", "cmpl", name, arrived,
                    {"prompt": texts[0] if len(texts) == 1 else json.dumps(texts), "params": _params(body, max_tokens)})
        rows = [p for p in prompts for _ in range(body.n)]
        job = call.submit(rows, sampling, body.n)
        if body.stream:
            usage = body.stream_options.include_usage if body.stream_options else False
            return _sse(call.stream(job, len(rows), _completion_chunk, usage))
        results = await call.results(job, len(rows))
        return {**call.head("text_completion"), "choices": [
            {"index": i, "text": (texts[i // body.n] if body.echo else "") + r.text, "logprobs": r.logprobs,
             "finish_reason": r.reason} for i, r in enumerate(results)], "usage": call.usage(results)}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = _parse(await _body(request, limits), FeedbackRequest, limits)
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


class Call:
    """One generation request from arrival to its log row: submits the job, gathers or streams events,
    and answers within its deadline whatever the engine does; a client that goes away cancels the job."""

    def __init__(self, engine: Engine, store: Store, request: Request, endpoint: str, call_id: str, model: str,
                 arrived: float, deadline: float, record: dict):
        self.engine, self.store, self.request, self.endpoint, self.id = engine, store, request, endpoint, call_id
        self.model, self.arrived, self.deadline, self.record = model, arrived, deadline, record
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.checked = arrived  # when the client's connection was last looked at

    def submit(self, prompts: list[list[int]], sampling: Sampling, n: int) -> Job:
        """`prompts` holds each prompt n times in a row (one row per choice); usage counts each once."""
        self.prompt_tokens = sum(len(p) for p in prompts[::n])
        job = Job(self.model, prompts, sampling, lambda event: self.loop.call_soon_threadsafe(self.queue.put_nowait, event))
        try:
            self.engine.submit(job)
        except QueueFull:
            wait = max(1, math.ceil(self.engine.seconds_per_job))
            error = APIError(429, f"The server is busy: {self.engine.max_queue} requests are waiting "
                                  f"(tuneforge serve --max-queue). Retry in about {wait} s.",
                             code="queue_full", kind="rate_limit_error", headers={"Retry-After": str(wait)})
            self.log([], 429, error.message)
            raise error from None
        return job

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": int(self.arrived), "model": self.model}

    def usage(self, results: list[Finished]) -> dict:
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def next_event(self, results: list) -> tuple | None:
        """The engine's next event, or ("timeout",) once the deadline has passed; None once the client has
        disconnected (looked at twice a second)."""
        while True:
            now = time.time()
            if now >= self.deadline:
                return ("timeout",)
            if now >= self.checked + 0.5:
                self.checked = now
                if await self.request.is_disconnected():
                    self.log([r for r in results if r], 499, "the client disconnected")
                    return None
            try:
                return await asyncio.wait_for(self.queue.get(), min(self.deadline - now, 0.5))
            except TimeoutError:
                continue

    def failure(self, event: tuple, results: list) -> APIError:
        if event[0] == "timeout":
            error = APIError(504, f"The request did not finish within the server's {self.deadline - self.arrived:.0f} s "
                                  "(tuneforge serve --request-timeout); ask for fewer max_tokens or retry later.",
                             code="request_timeout", kind="server_error")
        else:
            error = APIError(500, f"generation failed: {event[1]}", kind="server_error")
        self.log([r for r in results if r], error.status, error.message)
        return error

    async def results(self, job: Job, count: int) -> list[Finished]:
        results: list[Finished | None] = [None] * count
        try:
            while any(r is None for r in results):
                event = await self.next_event(results)
                if event is None:
                    return []  # nobody is listening
                if event[0] == "done":
                    results[event[1]] = event[2]
                elif event[0] != "delta":
                    raise self.failure(event, results)
        finally:
            job.cancelled = True  # no-op once finished; frees the rows of a request that failed or was left
        self.engine.record(job)
        self.log(results, 200)
        return results

    async def stream(self, job: Job, count: int, chunk, usage: bool):
        results: list[Finished | None] = [None] * count
        try:
            for index in range(count):
                yield chunk(self, index, None, None, first=True)
            while any(r is None for r in results):
                event = await self.next_event(results)
                if event is None:
                    return
                if event[0] == "delta":
                    yield chunk(self, event[1], event[2], None)
                elif event[0] == "done":
                    results[event[1]] = event[2]
                    yield chunk(self, event[1], None, event[2].reason)
                else:
                    yield self.failure(event, results).body()
                    return
            if usage:
                yield {**self.head(_STREAM_KIND[self.endpoint]), "choices": [],
                       "usage": self.usage(results)}
            self.engine.record(job)
            self.log(results, 200)
        except (GeneratorExit, asyncio.CancelledError):  # the client went away while a chunk was sent
            self.log([r for r in results if r], 499, "the client disconnected")
            raise
        finally:
            job.cancelled = True

    def log(self, results: list[Finished], status: int, error: str | None = None) -> None:
        completion = sum(r.completion_tokens for r in results)
        self.store.log({"id": self.id, "created": self.arrived, "model": self.model, "endpoint": self.endpoint,
                        **self.record, "output": results[0].text if results else None,
                        "choices": [{"text": r.text, "finish_reason": r.reason} for r in results],
                        "prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                        "latency_ms": round((time.time() - self.arrived) * 1000, 1), "status": status, "error": error})


_STREAM_KIND = {"chat.completions": "chat.completion.chunk", "completions": "text_completion"}


def _chat_chunk(call: Call, index: int, text: str | None, reason: str | None, first: bool = False) -> dict:
    delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
    return {**call.head("chat.completion.chunk"), "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                               "finish_reason": reason}]}


def _completion_chunk(call: Call, index: int, text: str | None, reason: str | None, first: bool = False) -> dict | None:
    if first:
        return None
    return {**call.head("text_completion"), "choices": [{"index": index, "text": text or "", "logprobs": None,
                                                         "finish_reason": reason}]}


def _sse(events) -> StreamingResponse:
    async def lines():
        async for event in events:
            if event is not None:
                yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class RequireKey:
    """ASGI middleware: /v1/ paths need `Authorization: Bearer <key>`. Plain ASGI rather than FastAPI's
    @middleware("http"), which wraps the request stream so that an endpoint cannot see a disconnect."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                error = APIError(401, "Incorrect or missing API key: send the header `Authorization: Bearer <key>` "
                                      "with the key the server was started with.", code="invalid_api_key",
                                 kind="authentication_error")
                return await error.response()(scope, receive, send)
        await self.app(scope, receive, send)


async def _body(request: Request, limits: Limits) -> bytes:
    """The body, read no further than the limit (a chunked upload has no Content-Length to trust)."""
    too_big = APIError(413, f"The request body is over {limits.max_body_bytes} bytes, the most this server accepts.")
    if int(request.headers.get("content-length") or 0) > limits.max_body_bytes:
        raise too_big
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limits.max_body_bytes:
            raise too_big
    return bytes(raw)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON value; send numbers as finite decimals")


def _parse(raw: bytes, schema, limits: Limits):
    depth = text_nesting(raw)
    if depth > limits.max_depth:
        raise APIError(400, f"The request body nests arrays and objects {depth} deep; this server accepts at most "
                            f"{limits.max_depth}.")
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, NaN / Infinity, a 5,000-digit number
        raise APIError(400, f"The request body is not valid JSON ({e}).") from None
    where = _lone_surrogate(data)
    if where is not None:
        raise APIError(400, f"{where or 'body'}: a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), "
                            "which is not text; send valid Unicode.", where or None)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise _invalid(e.errors()) from None


def _lone_surrogate(value, path: str = "") -> str | None:
    """The path of the first string with an unpaired surrogate (it cannot be encoded as UTF-8, so the
    tokenizer and the log could not take it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            found = _lone_surrogate(key, path) if isinstance(key, str) else None
            found = found if found is not None else _lone_surrogate(item, f"{path}.{key}".lstrip("."))
            if found is not None:
                return found
    return None


def _invalid(errors: list[dict]) -> APIError:
    """A 400 naming the first field pydantic or FastAPI refused (for the query and path parameters their
    location starts with "query" / "path", which is dropped), what it expected and what it got."""
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    loc = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    param = ".".join(loc) or None
    got = json.dumps(first.get("input"), default=str)[:100]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field; this server does not implement it, so it is refused rather than ignored. Remove it"
    return APIError(400, f"{param}: {message} (got {got})" if param else message, param)


def _known(pool: ModelPool, name: str) -> str:
    if name not in pool.served:
        raise APIError(404, f"The model `{name}` does not exist here. Served: {', '.join(pool.served)}.", "model",
                       "model_not_found")
    return name


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


def _prompt_ids(prompt, tokenizer) -> list[list[int]]:
    """OpenAI's four prompt shapes: a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt: is empty.", "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p) for p in prompt]
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
