"""The serving engine: one worker thread owns the models and runs every forward pass.

Continuous batching: requests for the same model decode together, one batched forward per token; a
request that arrives while others are decoding is prefilled on its own and joins the running batch at
the next token (its KV cache left-padded to the batch's length), and a finished row leaves at once.
transformers' `generate` cannot do that (its batch is fixed for the whole call) nor give each row its
own temperature, top_p, seed, stop strings and token limit, so the decode loop is written here.
"""

import queue
import threading
import time

import torch

from tuneforge.serve.batch import Batch
from tuneforge.serve.encoder_decoder_batch import EncoderDecoderBatch
from tuneforge.serve.jobs import Job
from tuneforge.serve.models import ModelPool


class QueueFull(Exception):
    """The engine already has `max_queue` requests waiting; the API answers 429."""


class Engine:
    def __init__(self, pool: ModelPool, max_batch: int = 16, max_queue: int = 256):
        self.pool, self.max_batch, self.max_queue = pool, max_batch, max_queue
        self.seconds_per_job = 1.0  # a running mean of submit -> finish, for Retry-After
        self._batch: Batch | None = None
        self._queue: queue.Queue[Job] = queue.Queue()
        self._waiting: list[Job] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tuneforge-engine", daemon=True)
        self.stats = {"forwards": 0, "rows_per_forward": 0}
        self.running = False

    def start(self) -> "Engine":
        """Work in a thread of its own (tests, an app served in-process)."""
        self._thread.start()
        return self

    def run(self) -> None:
        """Work in the calling thread until stop(): `tuneforge serve` gives the engine the main thread.
        On this CPU oneDNN's bf16 kernels run at half speed in any thread but the first to use OpenMP (the
        main one, which loaded the models): a linear layer of one decode step took 150-200 us against 70-90,
        and a request to the demo run 1.43 s against 0.73 s."""
        self._work()

    def stop(self) -> None:
        """From any thread: the worker ends once the requests it is decoding are done."""
        self._stopped.set()
        self._queue.put(None)  # type: ignore[arg-type]
        if self._thread.is_alive():  # not when the caller ran it (Engine.run)
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFull when `max_queue` jobs are already waiting to start."""
        if self._queue.qsize() + len(self._waiting) >= self.max_queue:
            raise QueueFull
        self._queue.put(job)

    # ---- the worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        self.running = True
        try:
            while not self._stopped.is_set():
                self._collect(block=not self._waiting)
                if not self._waiting:
                    continue
                model_name = self._waiting[0].model  # the oldest request's model decodes next
                try:
                    self._decode(model_name)
                except Exception as e:  # a bug must not kill the server; every request decoding learns why
                    for job in {id(r.job): r.job for r in (self._batch.rows if self._batch else [])}.values():
                        job.fail(e)
                    self._batch = None
        finally:
            self.running = False  # /health reports it; requests still time out at their deadline

    def _collect(self, block: bool) -> None:
        try:
            job = self._queue.get(block=block, timeout=0.5 if block else None)
            while True:
                if job is not None:
                    self._waiting.append(job)
                job = self._queue.get_nowait()
        except queue.Empty:
            return

    def _admit(self, model_name: str, free: int) -> list[Job]:
        """Waiting jobs of this model that fit, oldest first; none while an older job for another model
        waits (it gets the worker when this batch drains)."""
        self._waiting = [job for job in self._waiting if not job.cancelled]  # gone before they started
        taken = []
        for job in list(self._waiting):
            if job.model != model_name:
                break
            if len(job.prompts) > free and (taken or free < self.max_batch):
                break
            taken.append(job)
            free -= len(job.prompts)
            self._waiting.remove(job)
        return taken

    def _decode(self, model_name: str) -> None:
        """Decode this model's requests, admitting newcomers between tokens, until none is left."""
        model = self.pool.activate(model_name)
        tokenizer, eos_ids = self.pool.tokenizers[model_name], self.pool.eos_ids[model_name]
        while True:
            batch = self._batch
            if batch is None or batch.mergeable:
                jobs = self._admit(model_name, self.max_batch - (len(batch.rows) if batch else 0))
                with self.pool.autocast():
                    kind = EncoderDecoderBatch if model_name in self.pool.encoder_decoder else Batch
                    joining = kind.prefill(model, tokenizer, jobs, eos_ids, self.pool.max_context) if jobs else None
                if joining is not None:
                    self._batch = batch = joining if batch is None else batch.merge(joining)
            if batch is None:
                return
            batch.emit_and_drop()
            if not batch.rows:
                self._batch = None
                self._collect(block=False)
                if not (self._waiting and self._waiting[0].model == model_name):
                    return
                continue
            with self.pool.autocast():
                batch.step(model)
            self.stats["forwards"] += 1
            self.stats["rows_per_forward"] += len(batch.rows)
            self._collect(block=False)

    def record(self, job: Job) -> None:
        """A job has been answered: update the running mean of the time a job takes (for Retry-After)."""
        self.seconds_per_job += 0.1 * (time.monotonic() - job.created - self.seconds_per_job)
