"""OpenAPI 3.1 built from the endpoint table and the pydantic wire models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from geoservice import __version__
from geoservice.http.routing import Auth, Endpoint
from geoservice.http.wire import Problem

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Undecodable body",
    401: "Missing or unknown key",
    403: "Key of the wrong kind for this route",
    404: "Not found (also another tenant's object)",
    406: "Accept names no supported type",
    409: "Conflict",
    410: "Gone",
    413: "Body too large",
    415: "Unsupported Content-Type",
    422: "Invalid fields, each listed in `errors`",
    429: "Over the rate limit; see Retry-After",
    503: "Overloaded or the store is away; see Retry-After",
}

_SECURITY = {
    Auth.OPERATOR: "operatorToken",
    Auth.SECRET: "secretKey",
    Auth.SDK: "sdkKey",
}


def _models(endpoints: list[Endpoint]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"Problem": Problem}
    for endpoint in endpoints:
        for model in (endpoint.body, endpoint.query, *endpoint.responses.values()):
            if isinstance(model, type) and issubclass(model, BaseModel):
                found[model.__name__] = model
    return list(found.values())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(schema: dict[str, Any], media: tuple[str, ...]) -> dict[str, Any]:
    return {m: {"schema": schema} for m in media}


def build_spec(endpoints: list[Endpoint]) -> dict[str, Any]:
    models = _models(endpoints)
    _, definitions = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = definitions.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": endpoint.handler.__name__,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
            "responses": {},
        }
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.auth in _SECURITY:
            operation["security"] = [{_SECURITY[endpoint.auth]: []}]
        else:
            operation["security"] = []
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", endpoint.path)
        ]
        if endpoint.query is not None:
            for name, info in endpoint.query.model_fields.items():
                field_schema = schemas.get(endpoint.query.__name__, {}).get("properties", {})
                parameters.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": info.is_required(),
                        "schema": field_schema.get(name, {"type": "string"}),
                    }
                )
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": _content(_ref(endpoint.body), endpoint.body_media),
            }
        statuses = dict(endpoint.responses)
        if endpoint.body is not None:
            statuses.setdefault(413, Problem)
            statuses.setdefault(415, Problem)
            statuses.setdefault(422, Problem)
        # Any request can be malformed below the API (a request line over 8 KiB, a bad header):
        # the HTTP parser answers that 400 in plain text before a route is chosen. An
        # undecodable body is the service's own 400, a problem document.
        statuses[400] = Problem
        statuses.setdefault(406, Problem)
        statuses.setdefault(503, Problem)
        for status, model in sorted(statuses.items()):
            answer: dict[str, Any] = {"description": _STATUS_TEXT.get(status, str(status))}
            if isinstance(model, type):
                media: tuple[str, ...] = (
                    ("application/problem+json", "application/msgpack")
                    if model is Problem
                    else ("application/json", "application/msgpack")
                )
                answer["content"] = _content(_ref(model), media)
                if status == 400:
                    answer["content"]["text/plain"] = {"schema": {"type": "string"}}
            elif isinstance(model, str):
                served = {"type": "object"} if model.endswith("json") else {"type": "string"}
                answer["content"] = {model: {"schema": served}}
            if status in (429, 503):
                answer["headers"] = {
                    "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
                }
            operation["responses"][str(status)] = answer
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "geoservice",
            "version": __version__,
            "description": "Real-time geofenced offers for retail. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                name: {"type": "http", "scheme": "bearer"} for name in _SECURITY.values()
            },
        },
    }
