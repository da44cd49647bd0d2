"""Bodies in and out: content negotiation (JSON via orjson, msgpack), size limits, and
validation of a decoded body against its wire model, with every bad field named."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import msgpack
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from geoservice.errors import (
    FieldProblem,
    NotAcceptable,
    PayloadTooLarge,
    UndecodableBody,
    UnsupportedMediaType,
    ValidationFailed,
)

JSON = "application/json"
MSGPACK = "application/msgpack"
PROBLEM_JSON = "application/problem+json"
_MSGPACK_ALIASES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
_JSON_ALIASES = frozenset({JSON, "text/json"})

Model = TypeVar("Model", bound=BaseModel)


def request_codec(request: web.Request) -> str:
    """The media type of the body, from Content-Type (415 for anything else)."""
    content_type = request.headers.get("Content-Type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_ALIASES:
        return JSON
    if media in _MSGPACK_ALIASES:
        return MSGPACK
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not supported: send {JSON} or {MSGPACK}"
    )


# Accept header -> its codec. Every request asks twice (the edge, then the answer) and a fleet of
# SDKs sends a handful of distinct headers: parsed once each. Bounded against made-up headers.
_NEGOTIATED: dict[str, str] = {}
MAX_NEGOTIATED = 256


def response_codec(accept: str | None) -> str:
    """JSON or msgpack from the Accept header; JSON when absent or */*; NotAcceptable otherwise."""
    if not accept:
        return JSON
    codec = _NEGOTIATED.get(accept)
    if codec is None:
        codec = _negotiate(accept)
        if len(_NEGOTIATED) < MAX_NEGOTIATED:
            _NEGOTIATED[accept] = codec
    return codec


def _negotiate(accept: str) -> str:
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        media = media.lower()
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0 or not math.isfinite(quality):
            continue
        if media in _JSON_ALIASES or media in ("*/*", "application/*", PROBLEM_JSON):
            chosen = JSON
        elif media in _MSGPACK_ALIASES:
            chosen = MSGPACK
        else:
            continue
        # Higher quality wins; at equal quality the earlier entry wins.
        candidate = (quality, -position, chosen)
        if best is None or candidate > best:
            best = candidate
    if best is None:
        raise NotAcceptable(f"Accept {accept!r} names no supported type: use {JSON} or {MSGPACK}")
    return best[2]


def encode(value: Any, codec: str) -> bytes:
    if codec == MSGPACK:
        return msgpack.packb(value, use_bin_type=True)
    return orjson.dumps(value)


def _non_finite(constant: str) -> float:
    return float(constant)


def decode(body: bytes, codec: str) -> Any:
    if codec == MSGPACK:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
            raise UndecodableBody(f"body is not valid msgpack: {exc}") from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    # orjson refuses NaN/Infinity literals and integers beyond 64 bits. Python's parser takes
    # them, so the validator can name the field that holds them (422) instead of a bare 400.
    try:
        return json.loads(body, parse_constant=_non_finite)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise UndecodableBody(f"body is not valid JSON: {first_error}") from None


async def read_body(request: web.Request, max_bytes: int) -> tuple[Any, str]:
    """Read and decode the body; 415 for an unknown type, 413 past max_bytes, 400 if undecodable."""
    codec = request_codec(request)
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise UndecodableBody("the request has no body")
    return decode(body, codec), codec


def field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if part == "[key]":  # pydantic's marker for a bad dict key: the key is the field
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "body"


def validation_problems(error: ValidationError, prefix: str = "") -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    for item in error.errors(include_url=False):
        # Union members and tagged unions add their type names to the location: drop them.
        location = tuple(p for p in item["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        path = field_path(location)
        if prefix:
            path = prefix if path == "body" else f"{prefix}.{path}"
        problems.append(FieldProblem(path, item["msg"]))
    return problems


def validate(model: type[Model], data: Any) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed.of(validation_problems(exc)) from None


def validate_query(request: web.Request, model: type[Model]) -> Model:
    """Query parameters against their model; a parameter given twice is an error, not a guess."""
    repeated = sorted({name for name in request.query if len(request.query.getall(name)) > 1})
    if repeated:
        raise ValidationFailed.of([FieldProblem(name, "given more than once") for name in repeated])
    return validate(model, dict(request.query))


async def read_model(request: web.Request, model: type[Model], max_bytes: int) -> tuple[Model, str]:
    data, codec = await read_body(request, max_bytes)
    return validate(model, data), codec


def respond(
    request: web.Request, value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    codec = response_codec(request.headers.get("Accept"))
    return web.Response(
        body=encode(value, codec), status=status, content_type=codec, headers=headers
    )
