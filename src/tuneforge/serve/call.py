"""One generation request from arrival to its log row, and the streamed chunks it sends."""

import asyncio
import json
import math
import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from tuneforge.serve.engine import Engine, QueueFull
from tuneforge.serve.errors import APIError
from tuneforge.serve.jobs import Finished, Job, Sampling
from tuneforge.serve.store import Store


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
            if not self.queue.empty():  # most events are waiting already: no timer, no task
                return self.queue.get_nowait()
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


def chat_chunk(call: Call, index: int, text: str | None, reason: str | None, first: bool = False) -> dict:
    delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
    return {**call.head("chat.completion.chunk"), "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                               "finish_reason": reason}]}


def completion_chunk(call: Call, index: int, text: str | None, reason: str | None, first: bool = False) -> dict | None:
    if first:
        return None
    return {**call.head("text_completion"), "choices": [{"index": index, "text": text or "", "logprobs": None,
                                                         "finish_reason": reason}]}


def sse(events) -> StreamingResponse:
    async def lines():
        async for event in events:
            if event is not None:
                yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
