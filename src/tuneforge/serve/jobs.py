"""What the API hands the engine and hears back: a request's sampling settings, the job (its rows and
where its events go), and a finished choice."""

import time
from dataclasses import dataclass, field
from typing import Callable


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
