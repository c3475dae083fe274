"""Request bodies of the OpenAI-compatible API. Fields OpenAI defines that tuneforge does not act on
(frequency_penalty, logit_bias, tools, ...) are accepted and ignored, as other compatible servers do,
so existing client code keeps working."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        """OpenAI allows content as a list of parts; text parts are joined, others are refused upstream."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class Sampled(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: StreamOptions | None = None


class CompletionRequest(Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    stream_options: StreamOptions | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="the id of the response being rated (chatcmpl-... or cmpl-...)")
    choice: int = Field(0, ge=0)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, description="what the answer should have been")
    comment: str | None = None
