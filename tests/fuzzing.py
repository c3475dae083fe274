"""Hypothesis strategies derived from pydantic models (the API's request schemas, the recipe), so a new
field is fuzzed without a new test: valid values from each field's type and bounds, and mutations that
break them (wrong types, out-of-range numbers, huge and empty strings, odd Unicode, unknown fields,
missing fields, deep nesting)."""

import json
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)  # any code point UTF-8 can carry
EDGE_TEXT = st.sampled_from(["", " ", "\x00", "\u202e", "e\u0301", "\U0001f600" * 3, "\ufeff", "\n" * 5, "'\"\\",
                             "null", "0", "-1", "1e309", "{}", "[]", "<|im_end|>", "<|im_start|>system"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(1 << 80), 1 << 80)
           | st.floats(allow_nan=False) | ODD_TEXT | EDGE_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(ODD_TEXT | EDGE_TEXT, inner, max_size=4), max_leaves=12)


def _bounds(metadata: list) -> dict:
    out = {}
    for m in metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if isinstance(m, (at.Ge, at.Gt, at.Le, at.Lt, at.MinLen, at.MaxLen)) and hasattr(m, name):
                out[name] = getattr(m, name)
    return out


def valid(annotation, metadata: list = (), overrides: dict | None = None, path: str = ""):
    """Values a field of this type and these bounds accepts; `overrides` maps dotted paths to strategies."""
    overrides = overrides or {}
    if path in overrides:
        return overrides[path]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        extra = [m for a in args[1:] for m in (a.metadata if isinstance(a, FieldInfo) else [a])]
        return valid(args[0], [*metadata, *extra], overrides, path)
    if origin in (Union, types.UnionType):
        return st.one_of([valid(a, metadata, overrides, path) for a in args])
    if annotation is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    b = _bounds(metadata)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low = b.get("ge", b["gt"] + 1 if "gt" in b else None)
        high = b.get("le", b["lt"] - 1 if "lt" in b else None)
        return st.integers(low, high)
    if annotation is float:
        return st.floats(b.get("ge", b.get("gt")), b.get("le", b.get("lt")), allow_nan=False, allow_infinity=False,
                         exclude_min="gt" in b, exclude_max="lt" in b)
    if annotation is str:
        return st.text(st.characters(codec="utf-8"), min_size=b.get("min_length", 0),
                       max_size=min(b.get("max_length", 60), 60)) | EDGE_TEXT.filter(
            lambda s: b.get("min_length", 0) <= len(s) <= b.get("max_length", 1 << 30))
    if origin is list:
        return st.lists(valid(args[0], (), overrides, path + ".0"), min_size=b.get("min_length", 0),
                        max_size=min(b.get("max_length", 3), 3))
    if origin is dict:
        return st.dictionaries(valid(args[0], (), overrides, path + ".key"), valid(args[1], (), overrides, path + ".*"),
                               max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_dicts(annotation, overrides, path)
    if annotation is Any or annotation is typing.Any or annotation is dict:
        return JSON_VALUES
    raise TypeError(f"no strategy for {annotation!r} at {path!r}")


def model_dicts(model: type[BaseModel], overrides: dict | None = None, path: str = ""):
    """JSON objects the model accepts: required fields always, optional ones sometimes."""
    required, optional = {}, {}
    for name, info in model.model_fields.items():
        where = f"{path}.{name}".lstrip(".")
        strategy = valid(info.annotation, info.metadata, overrides, where)
        (required if info.is_required() else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional)


def field_paths(model: type[BaseModel], path: str = "") -> list[tuple[str, Any, list]]:
    """(dotted path, annotation, metadata) of every field, nested sections included."""
    out = []
    for name, info in model.model_fields.items():
        where = f"{path}.{name}".lstrip(".")
        out.append((where, info.annotation, info.metadata))
        inner = [a for a in (info.annotation, *get_args(info.annotation)) if isinstance(a, type)
                 and issubclass(a, BaseModel)]
        for section in inner:
            out += field_paths(section, where)
    return out


@st.composite
def mutated(draw, bodies, model: type[BaseModel]):
    """A body with one thing broken: a field given any JSON value, removed, or nested deep; an unknown
    field; a string made huge; or the whole body replaced by another JSON value."""
    body = draw(bodies)
    names = sorted(model.model_fields)
    kind = draw(st.sampled_from(["retype", "remove", "unknown", "deep", "huge", "replace"]))
    name = draw(st.sampled_from(names))
    if kind == "retype":
        body[name] = draw(JSON_VALUES)
    elif kind == "remove":
        body.pop(name, None)
    elif kind == "unknown":
        body[draw(ODD_TEXT.filter(lambda k: k not in model.model_fields))] = draw(JSON_VALUES)
    elif kind == "deep":
        value = body.get(name, 1)
        for _ in range(draw(st.integers(20, 200))):
            value = [value]
        body[name] = value
    elif kind == "huge":
        body[name] = draw(st.sampled_from(["x", "\U0001f600", "<|im_end|>", "[", "\\"])) * draw(
            st.sampled_from([5_000, 200_000]))
    else:
        body = draw(JSON_VALUES)
    return body


@st.composite
def raw_bytes(draw, bodies):
    """A JSON body broken at the byte level: NaN, an unpaired surrogate escape, cut short, bytes that are
    not UTF-8, or a few bytes flipped."""
    raw = json.dumps(draw(bodies)).encode()
    kind = draw(st.sampled_from(["nan", "surrogate", "cut", "latin1", "flip", "empty"]))
    if kind == "nan":
        return raw.replace(b"}", b', "temperature": NaN}', 1) if raw.endswith(b"}") else b"[Infinity]"
    if kind == "surrogate":
        return raw.replace(b'"', b'"\\udc80', 2) if b'"' in raw else b'"\\ud800"'
    if kind == "cut":
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "latin1":
        return raw.replace(b'"', b'"\xe9\xff', 2)
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return b""
