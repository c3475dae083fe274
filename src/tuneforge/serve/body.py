"""A request body from the wire to a validated schema: read no further than the size limit, refused
when nested too deep before the parser recurses into it, parsed as strict JSON (no NaN / Infinity),
refused when a string is not Unicode, then validated."""

import json

from fastapi import Request
from pydantic import ValidationError

from tuneforge.json_text import text_nesting
from tuneforge.serve.errors import APIError, invalid


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, read no further than the limit (a chunked upload has no Content-Length to trust)."""
    too_big = APIError(413, f"The request body is over {max_bytes} bytes, the most this server accepts.")
    if int(request.headers.get("content-length") or 0) > max_bytes:
        raise too_big
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise too_big
    return bytes(raw)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON value; send numbers as finite decimals")


def parse_body(raw: bytes, schema, max_depth: int):
    depth = text_nesting(raw)
    if depth > max_depth:
        raise APIError(400, f"The request body nests arrays and objects {depth} deep; this server accepts at most "
                            f"{max_depth}.")
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
        raise invalid(e.errors()) from None


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
