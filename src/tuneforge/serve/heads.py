"""Classification / regression runs behind the server: /v1/classify (labels and scores, or values) and
OpenAI's /v1/embeddings (the tuned encoder's sentence embeddings, L2-normalised). An image run takes
images as base64 data URLs (`data:image/png;base64,...`, as OpenAI's image inputs are sent) or bare base64.

Each run gets one worker thread that owns its model: requests queue their rows, and the worker runs
whatever has queued, up to MAX_ROWS rows of one kind at a time, in one batch, so concurrent requests
share forward passes (a request's rows are never split across answers)."""

import asyncio
import base64
import binascii
import io
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneforge.data.images import decode
from tuneforge.errors import RowError
from tuneforge.inference.heads import HeadModel
from tuneforge.serve.errors import APIError

MAX_ROWS = 64


@dataclass
class _Job:
    kind: str  # "classify" or "embed"
    rows: list[dict]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


class HeadServer:
    def __init__(self, run_dir: Path, precision: str):
        self.model = HeadModel(run_dir, precision)
        self.run_dir = self.model.run_dir
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"tuneforge-head-{self.run_dir.name}", daemon=True)
        self._thread.start()

    async def run(self, kind: str, rows: list[dict]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        job = _Job(kind, rows, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        waiting: list[_Job] = []
        while True:
            job = self._queue.get() if not waiting else waiting.pop(0)
            if job is None:
                return
            batch = [job]
            while sum(len(j.rows) for j in batch) < MAX_ROWS:  # what else has queued meanwhile, of the same kind
                try:
                    other = self._queue.get_nowait()
                except queue.Empty:
                    break
                if other is None or other.kind != job.kind:
                    waiting.append(other)
                    break
                batch.append(other)
            rows = [r for j in batch for r in j.rows]
            try:
                out = self.model.outputs(rows) if job.kind == "classify" else _normalised(self.model.embeddings(rows))
            except Exception as e:  # the requests get the error; the worker keeps serving
                for j in batch:
                    j.loop.call_soon_threadsafe(_fail, j.future, e)
                continue
            start = 0
            for j in batch:
                j.loop.call_soon_threadsafe(_resolve, j.future, out[start:start + len(j.rows)])
                start += len(j.rows)


def image_input(value: str, index: int) -> io.BytesIO:
    """One request image, decoded and checked (400 naming `input[i]` for anything Pillow cannot use)."""
    field = f"input[{index}]"
    data = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{field}: not base64 image data; send a data URL like data:image/png;base64,... "
                            "(an image run classifies images, not text).", field) from None
    try:
        decode(raw, 1, True, field)
    except RowError as e:
        raise APIError(400, str(e), field) from None
    return io.BytesIO(raw)


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
