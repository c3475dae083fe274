"""The OpenAI-compatible HTTP API (FastAPI) over the engine: models, chat completions, completions
(streaming or not), feedback, the request log and the web playground."""

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from tuneforge.serve.engine import Engine, Finished, Job, Sampling
from tuneforge.serve.models import ModelPool
from tuneforge.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest
from tuneforge.serve.store import Store


@dataclass
class Limits:
    max_tokens: int = 2048  # most tokens one choice may generate
    max_rows: int = 64  # prompts x n in one request
    max_body_bytes: int = 1 << 20


class APIError(Exception):
    """Becomes an OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def create_app(pool: ModelPool, engine: Engine, store: Store, api_key: str | None = None,
               limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="tuneforge", summary="OpenAI-compatible API for fine-tuned models", docs_url="/docs")
    app.state.pool, app.state.engine, app.state.store = pool, engine, store

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                error = APIError(401, "Incorrect or missing API key: send the header `Authorization: Bearer <key>` "
                                      "with the key the server was started with.", code="invalid_api_key")
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return resources.files("tuneforge.serve").joinpath("playground.html").read_text()

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(pool.served), "device": pool.device, "precision": pool.precision,
                "max_tokens_limit": limits.max_tokens, "api_key_required": bool(api_key)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(s) for s in pool.served.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return _model_card(pool.served[_known(pool, name)])

    async def read(request: Request, schema):
        """(arrival time, validated body, served model name, its tokenizer) of a generation request."""
        arrived = time.time()
        body = _parse(await _body(request, limits), schema)
        name = _known(pool, body.model)
        return arrived, body, name, pool.tokenizers[name]

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
        sampling = Sampling(max_tokens, body.temperature, body.top_p, body.stops(), body.seed,
                            logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        call = Call(engine, store, "chat.completions", f"chatcmpl-{secrets.token_hex(12)}", name, arrived,
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
        sampling = Sampling(max_tokens, body.temperature, body.top_p, body.stops(), body.seed, body.logprobs,
                            body.echo)
        texts = [tokenizer.decode(p) for p in prompts]
        call = Call(engine, store, "completions", f"cmpl-{secrets.token_hex(12)}", name, arrived,
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
        body = _parse(await _body(request, limits), FeedbackRequest)
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
    """One generation request from arrival to its log row: submits the job, gathers or streams events."""

    def __init__(self, engine: Engine, store: Store, endpoint: str, call_id: str, model: str, arrived: float,
                 record: dict):
        self.engine, self.store, self.endpoint, self.id, self.model = engine, store, endpoint, call_id, model
        self.arrived, self.record = arrived, record
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def submit(self, prompts: list[list[int]], sampling: Sampling, n: int) -> Job:
        """`prompts` holds each prompt n times in a row (one row per choice); usage counts each once."""
        self.prompt_tokens = sum(len(p) for p in prompts[::n])
        job = Job(self.model, prompts, sampling, lambda event: self.loop.call_soon_threadsafe(self.queue.put_nowait, event))
        self.engine.submit(job)
        return job

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": int(self.arrived), "model": self.model}

    def usage(self, results: list[Finished]) -> dict:
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def results(self, job: Job, count: int) -> list[Finished]:
        results: list[Finished | None] = [None] * count
        try:
            while any(r is None for r in results):
                event = await self.queue.get()
                if event[0] == "done":
                    results[event[1]] = event[2]
                elif event[0] == "error":
                    self.log([], 500, event[1])
                    raise APIError(500, f"generation failed: {event[1]}", kind="server_error")
        finally:
            job.cancelled = True  # no-op once finished; stops the rows if the client went away
        self.log(results, 200)
        return results

    async def stream(self, job: Job, count: int, chunk, usage: bool):
        results: list[Finished | None] = [None] * count
        try:
            for index in range(count):
                yield chunk(self, index, None, None, first=True)
            while any(r is None for r in results):
                event = await self.queue.get()
                if event[0] == "delta":
                    yield chunk(self, event[1], event[2], None)
                elif event[0] == "done":
                    results[event[1]] = event[2]
                    yield chunk(self, event[1], None, event[2].reason)
                else:
                    self.log([r for r in results if r], 500, event[1])
                    yield APIError(500, f"generation failed: {event[1]}", kind="server_error").body()
                    return
            if usage:
                yield {**self.head(_STREAM_KIND[self.endpoint]), "choices": [],
                       "usage": self.usage(results)}
            self.log(results, 200)
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


async def _body(request: Request, limits: Limits) -> bytes:
    size = int(request.headers.get("content-length") or 0)
    if size > limits.max_body_bytes:
        raise APIError(413, f"the request body is {size} bytes; this server accepts at most {limits.max_body_bytes}.")
    raw = await request.body()
    if len(raw) > limits.max_body_bytes:
        raise APIError(413, f"the request body is {len(raw)} bytes; this server accepts at most {limits.max_body_bytes}.")
    return raw


def _parse(raw: bytes, schema):
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON ({e}).") from None
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']} (got {json.dumps(first.get('input'))[:100]})"
                       if param else first["msg"], param) from None


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


def _params(body, max_tokens: int) -> dict:
    return {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens, "stop": list(body.stops()),
            "n": body.n, "seed": body.seed}


def _chat_logprobs(logprobs: dict | None) -> dict | None:
    if logprobs is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                         "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in top.items()]}
                        for t, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])]}
