"""The serving engine: one worker thread owns the models and runs every forward pass.

Continuous batching: requests for the same model decode together, one batched forward per token; a
request that arrives while others are decoding is prefilled on its own and joins the running batch at
the next token (its KV cache left-padded to the batch's length), and a finished row leaves at once.
transformers' `generate` cannot do that (its batch is fixed for the whole call) nor give each row its
own temperature, top_p, seed, stop strings and token limit, so the decode loop is written here.
"""

import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from tuneforge.inference.kv_cache import GrowingLayer, growing_cache
from tuneforge.runtime.hardware import shapes_cached_now
from tuneforge.serve.models import ModelPool
from tuneforge.tasks.tokens import bucket_length


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # alternatives per generated token to report (0: only the chosen one's)
    echo: bool = False  # also return the prompt, with its tokens' logprobs (legacy completions)
    frequency_penalty: float = 0.0  # OpenAI's: logit - count * frequency - (count > 0) * presence, where
    presence_penalty: float = 0.0  # count is how often the token was generated so far in this choice
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit


@dataclass
class Job:
    """One API request: a row per choice (n copies of one prompt, or several prompts). `emit` is called
    from the worker thread with ("delta", index, text), ("done", index, Finished) or ("error", message)."""
    model: str
    prompts: list[list[int]]
    sampling: Sampling
    emit: Callable[[tuple], None]
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set by the API when the client has gone or the deadline passed: its rows stop
    # at the next token, and a job still queued is never started

    def send(self, event: tuple) -> None:
        """Tell the API; a listener that cannot hear any more (its event loop closed) must not stop the worker."""
        try:
            self.emit(event)
        except Exception:  # noqa: BLE001 - the request is gone either way
            self.cancelled = True

    def fail(self, error: Exception) -> None:
        self.send(("error", f"{type(error).__name__}: {error}"))
        self.cancelled = True


@dataclass
class Finished:
    text: str
    reason: str  # "stop" or "length"
    completion_tokens: int
    logprobs: dict | None = None


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
                    joining = Batch.prefill(model, tokenizer, jobs, eos_ids, self.pool.max_context) if jobs else None
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


# Temperatures below this decode greedily: float32 logits divided by less overflow (a temperature of
# 5e-324 is 0 in float32, and softmax of x / 0 is NaN), and the distribution is one token already.
GREEDY_BELOW = 1e-5


class Row:
    """One choice being generated: its tokens, what has been sent, its own sampler."""

    def __init__(self, job: Job, index: int, prompt: list[int], tokenizer):
        self.job, self.index, self.prompt, self.tokenizer = job, index, prompt, tokenizer
        s = job.sampling
        seed = s.seed + index if s.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.ids: list[int] = []
        self._text: str | None = ""  # decoded self.ids; None after a new token
        self.sent = ""
        self.finished: str | None = None
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.prompt_logprobs: list[float | None] = []
        self.prompt_top: list[dict[str, float] | None] = []

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from the model's logits for this row. Logprobs report the model's own
        distribution, before logit_bias, penalties, temperature and top_p (as vLLM's do by default)."""
        s = self.job.sampling
        scores = self.adjusted(logits)
        if s.temperature < GREEDY_BELOW:
            token = int(scores.argmax())
        else:
            probs = torch.softmax(scores / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < s.top_p
                keep[0] = True  # the most likely, even when top_p is below float32's smallest number
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if s.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
            self.token_logprobs.append(float(logp[token]))
            self.top_logprobs.append(self._top(logp, s.logprobs))
        return token

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """logit_bias added, then OpenAI's frequency and presence penalties over this row's tokens so far."""
        s = self.job.sampling
        if s.logit_bias:
            ids = torch.tensor(list(s.logit_bias))
            logits = logits.index_add(0, ids, torch.tensor(list(s.logit_bias.values()), dtype=logits.dtype))
        if (s.frequency_penalty or s.presence_penalty) and self.ids:
            counts = torch.bincount(torch.tensor(self.ids), minlength=logits.shape[-1]).to(logits.dtype)
            logits = logits - counts * s.frequency_penalty - (counts > 0).to(logits.dtype) * s.presence_penalty
        return logits

    def _top(self, logp: torch.Tensor, k: int) -> dict[str, float]:
        if k <= 0:
            return {}
        values, ids = logp.topk(k)
        return {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids)}

    def add(self, token: int, eos_ids: set[int], max_context: int) -> None:
        s = self.job.sampling
        if token in eos_ids:
            self.finished = "stop"
            return
        self.ids.append(token)
        self._text = None
        if len(self.ids) >= s.max_tokens or len(self.prompt) + len(self.ids) >= max_context:
            self.finished = "length"
        if s.stop:
            text = self.text()
            cut = min((text.find(stop) for stop in s.stop if stop in text), default=-1)
            if cut >= 0:
                self.finished = "stop"

    def text(self) -> str:
        """The generated text, decoded once per token (stop checks and streaming both read it)."""
        if self._text is None:
            self._text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._text

    def visible(self) -> str:
        """What can be sent so far: up to a stop string; while running, minus a trailing partial UTF-8
        character and minus an ending that could still become a stop string."""
        text = self.text()
        cuts = [text.find(stop) for stop in self.job.sampling.stop if stop in text]
        if cuts:
            return text[:min(cuts)]
        if self.finished:
            return text
        text = text.rstrip("\ufffd")
        hold = max((n for stop in self.job.sampling.stop for n in range(1, min(len(stop), len(text) + 1))
                    if text.endswith(stop[:n])), default=0)
        return text[:len(text) - hold]

    def delta(self) -> str:
        visible = self.visible()
        new = visible[len(self.sent):] if visible.startswith(self.sent) else ""
        self.sent = self.sent + new
        return new

    def result(self) -> Finished:
        logprobs = None
        if self.job.sampling.logprobs is not None:
            tokens = [self.tokenizer.decode([t]) for t in self.ids]
            logprobs = {"tokens": tokens, "token_logprobs": self.token_logprobs[:len(tokens)],
                        "top_logprobs": self.top_logprobs[:len(tokens)]}
            if self.job.sampling.echo:
                prompt_tokens = [self.tokenizer.decode([t]) for t in self.prompt]
                logprobs = {"tokens": prompt_tokens + logprobs["tokens"],
                            "token_logprobs": self.prompt_logprobs + logprobs["token_logprobs"],
                            "top_logprobs": self.prompt_top + logprobs["top_logprobs"]}
            offsets, at = [], 0
            for token in logprobs["tokens"]:
                offsets.append(at)
                at += len(token)
            logprobs["text_offset"] = offsets
        return Finished(self.sent, self.finished or "length", len(self.ids), logprobs)


class Batch:
    """Rows decoding together: left-padded attention mask, per-row positions, one KV cache."""

    def __init__(self, rows: list[Row], cache, mask: torch.Tensor, positions: torch.Tensor, eos_ids: set[int],
                 max_context: int):
        self.rows, self.cache, self.mask, self.positions = rows, cache, mask, positions
        self.eos_ids, self.max_context = eos_ids, max_context
        # Rows can join a running batch only where every cache layer keeps every position
        # (a sliding-window layer drops old ones, so left-padding it would shift them).
        self.mergeable = all(type(layer) is GrowingLayer for layer in cache.layers)

    @classmethod
    def prefill(cls, model, tokenizer, jobs: list[Job], eos_ids: set[int], max_context: int) -> "Batch | None":
        """The jobs' prompts in one forward pass and each row's first token. A job that fails on its own
        (setting up its rows, sampling) gets its error and the others go on; if the forward pass fails,
        every job of this prefill gets the error and the running batch goes on. None if no row is left."""
        rows = []
        for job in jobs:
            try:
                rows += [Row(job, i, prompt, tokenizer) for i, prompt in enumerate(job.prompts)]
            except Exception as e:  # noqa: BLE001 - the client is answered with it
                job.fail(e)
        try:
            return cls._prefill(model, tokenizer, rows, eos_ids, max_context) if rows else None
        except Exception as e:  # noqa: BLE001
            for job in jobs:
                job.fail(e)
            return None

    @classmethod
    def _prefill(cls, model, tokenizer, rows: list[Row], eos_ids: set[int], max_context: int) -> "Batch":
        width = max(len(r.prompt) for r in rows)
        if shapes_cached_now(model, model.device.type):
            # few prefill shapes, or a server's memory grows with every new prompt length (bucket_length)
            width = max(width, min(bucket_length(width), max_context))
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        echo = any(r.job.sampling.echo for r in rows)
        cache = growing_cache(model)
        out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                    position_ids=positions.to(model.device), past_key_values=cache, use_cache=True,
                    logits_to_keep=0 if echo else 1)
        logits = out.logits.float().cpu()
        batch = cls(rows, out.past_key_values, mask, positions[:, -1] + 1, eos_ids, max_context)

        def first(i: int, row: Row) -> None:
            if row.job.sampling.echo:
                _prompt_logprobs(row, logits[i, width - len(row.prompt):])
            if row.job.sampling.max_tokens == 0:
                row.finished = "length"
            else:
                row.add(row.choose(logits[i, -1]), eos_ids, max_context)

        _each_row(rows, first)
        return batch

    def step(self, model) -> None:
        tokens = torch.tensor([[r.ids[-1]] for r in self.rows])
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], dim=1)
        out = model(input_ids=tokens.to(model.device), attention_mask=self.mask.to(model.device),
                    position_ids=self.positions[:, None].to(model.device), past_key_values=self.cache,
                    use_cache=True)
        self.positions = self.positions + 1
        logits = out.logits[:, -1].float().cpu()
        _each_row(self.rows, lambda i, row: row.add(row.choose(logits[i]), self.eos_ids, self.max_context))

    def emit_and_drop(self) -> None:
        """Send each row's new text; finished rows report and leave the batch (and the cache), and so do
        the rows of a job that was cancelled or failed."""

        def emit(_: int, row: Row) -> None:
            new = row.delta()
            if new:
                row.job.send(("delta", row.index, new))
            if row.finished:
                row.job.send(("done", row.index, row.result()))

        _each_row(self.rows, emit)
        keep = [i for i, row in enumerate(self.rows) if not (row.finished or row.job.cancelled)]
        if len(keep) < len(self.rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep)
        self.cache.batch_select_indices(index.to(self.cache.layers[0].keys.device))
        self.mask, self.positions = self.mask[index], self.positions[index]
        unused = int((self.mask.sum(0) == 0).cumprod(0).sum())  # columns every remaining row pads
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def merge(self, other: "Batch") -> "Batch":
        """Append `other`'s rows: the shorter side's KV cache and mask are left-padded with zeros."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows
        return self


def _each_row(rows: list[Row], action: Callable[[int, Row], None]) -> None:
    """action(i, row) for each row whose job is still on; a row that raises fails its job alone."""
    for i, row in enumerate(rows):
        if not row.job.cancelled:
            try:
                action(i, row)
            except Exception as e:  # noqa: BLE001 - the client is answered with it
                row.job.fail(e)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros in front along the sequence axis (axis 2 of a [batch, heads, seq, dim] cache, 1 of a mask)."""
    axis = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _prompt_logprobs(row: Row, logits: torch.Tensor) -> None:
    """Each prompt token's logprob given the tokens before it (the first has none), as OpenAI's legacy
    completions return with echo."""
    logp = torch.log_softmax(logits, dim=-1)
    k = row.job.sampling.logprobs or 0
    row.prompt_logprobs = [None] + [float(logp[i - 1, t]) for i, t in enumerate(row.prompt) if i > 0]
    row.prompt_top = [None] + [row._top(logp[i - 1], k) for i in range(1, len(row.prompt))]
