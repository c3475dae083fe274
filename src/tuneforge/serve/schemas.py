"""Request bodies of the OpenAI-compatible API. Every field is either honoured or refused: unknown
fields are errors (as OpenAI's own API answers "Unrecognized request argument"), and OpenAI fields a
text model served here cannot act on (tools, images, JSON mode) are refused with a message saying
so, never accepted and dropped. Numbers are bounded to what the engine can take."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

INT64 = (-(1 << 63), (1 << 63) - 1)
MAX_STOPS = 16
MAX_STOP_CHARS = 256  # each is looked for at every token, with every partial match held back


def refused(message: str) -> PydanticCustomError:
    """A validation error whose message is exactly `message` (pydantic would prefix "Value error, ")."""
    return PydanticCustomError("unsupported", message)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data):
        """OpenAI's API takes null for any optional field and means its default (clients send
        `"n": null` for an argument left as None)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields
                    or cls.model_fields[k].is_required()}
        return data


class TextPart(Strict):
    type: Literal["text"]
    text: str


_OTHER_PARTS = {"image_url": "images", "input_image": "images", "input_audio": "audio", "audio": "audio",
                "file": "files", "input_file": "files", "refusal": "refusals"}


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value):
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise refused("content is a string or a list of {\"type\": \"text\", \"text\": ...} parts.")
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _OTHER_PARTS:
                raise refused(f"part {i} is {kind!r}: the models served here take text only, so {_OTHER_PARTS[kind]} "
                              "cannot be used. Send the content as a string or as {\"type\": \"text\"} parts.")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise refused(f"part {i} is not a text part; each part is {{\"type\": \"text\", \"text\": \"...\"}}.")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class Sampled(Strict):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1024)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    """Subtracted from a token's logit once per time it was generated so far."""
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    """Subtracted from a token's logit if it was generated so far."""
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    """Token id (as a string) -> a bias added to its logit before sampling."""
    user: str | None = Field(None, max_length=256)
    """The end user's id; kept in the request log."""

    @field_validator("stop", mode="before")
    @classmethod
    def _strings(cls, value):
        stops = [value] if isinstance(value, str) else value
        if value is None or (isinstance(stops, list) and len(stops) <= MAX_STOPS and all(
                isinstance(v, str) and len(v) <= MAX_STOP_CHARS for v in stops)):
            return value
        raise refused(f"stop is a string or a list of at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} "
                      "characters.")

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value):
        for key in value or {}:
            if not key.strip().lstrip("-").isdigit():
                raise refused(f"key {key!r} is not a token id; logit_bias maps token ids (as strings) to a bias.")
        return value

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)

    def bias(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}


class StreamOptions(Strict):
    include_usage: bool = False


def _needs_stream(value, info):
    if value is not None and not info.data.get("stream"):
        raise refused("stream_options applies to streamed answers only; send stream: true or leave it out.")
    return value


def _refuse_tools(value, allowed=()):
    """OpenAI's function-calling fields pass only with their defaults (absent, [] or `allowed`)."""
    if value is None or value == [] or value in allowed:
        return value
    raise refused("function calling is not supported: the models served here were not tuned to call tools. "
                  "Leave the field out.")


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: StreamOptions | None = None
    _stream_options = field_validator("stream_options")(_needs_stream)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value, info):
        if value is not None and not info.data.get("logprobs"):
            raise refused("top_logprobs needs logprobs: true (it says how many alternatives each logprob lists).")
        return value

    @field_validator("tools", "functions", "tool_choice", "function_call", "parallel_tool_calls")
    @classmethod
    def _no_tools(cls, value):
        return _refuse_tools(value, allowed=("none", False))

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value is None or value == {"type": "text"}:
            return value
        raise refused("only {\"type\": \"text\"} is supported: nothing here constrains decoding to JSON or a "
                      "schema. Ask for JSON in the prompt, or leave `response_format` out.")


class CompletionRequest(Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    """OpenAI's four shapes: a string, strings, token ids, lists of token ids."""
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    stream_options: StreamOptions | None = None
    _stream_options = field_validator("stream_options")(_needs_stream)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value):
        def ids(v):
            return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

        if isinstance(value, str) or ids(value) or (isinstance(value, list) and (
                all(isinstance(v, str) for v in value) or all(ids(v) for v in value))):
            return value
        raise refused("prompt is a string, a list of strings, a list of token ids or a list of lists of token ids.")

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value, info):
        if value is not None and value != info.data.get("n", 1):
            raise refused("choosing the best of several completions is not supported; ask for `n` completions "
                          "and leave `best_of` out (or equal to n).")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value):
        if value:
            raise refused("insertion (a suffix after the completion) is not supported; leave `suffix` out.")
        return value


class FeedbackRequest(Strict):
    id: str = Field(description="the id of the response being rated (chatcmpl-... or cmpl-...)", max_length=256)
    choice: int = Field(0, ge=0, le=1024)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, description="what the answer should have been")
    comment: str | None = None


class _Texts(Strict):
    @field_validator("input", "text_pair", check_fields=False)
    @classmethod
    def _texts(cls, value):
        texts = [value] if isinstance(value, str) else value
        if texts is not None and (not texts or not all(t.strip() for t in texts)):
            raise refused("give a text or a non-empty list of non-empty texts.")
        return value


class ClassifyRequest(_Texts):
    """/v1/classify: a classification or regression run's labels and scores (or values) for texts."""

    model: str
    input: str | list[str]
    text_pair: str | list[str] | None = None  # the second text of each pair, for runs trained on pairs


class EmbeddingRequest(_Texts):
    """OpenAI's /v1/embeddings, for the encoder of a classification or regression run."""

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value):
        if value is not None:
            raise refused("dimensions: the encoder's embeddings have one size; leave dimensions out.")
        return value
