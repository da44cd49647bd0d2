"""The endpoint table: each route with its key kind, wire models and answers, declared once.

The same declarations register the aiohttp routes, guard each handler with its key check, and
generate /openapi.json, so the spec cannot drift from what the service does.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from aiohttp import web
from pydantic import BaseModel

from geoservice.errors import FieldProblem, Forbidden, Unauthorized, ValidationFailed
from geoservice.http.state import SETTINGS, TENANTS
from geoservice.http.wire import ID_PATTERN
from geoservice.tenants import Caller

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Auth(StrEnum):
    NONE = "none"
    OPERATOR = "operator"
    SECRET = "secret"
    SDK = "sdk"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    # status -> response model (None: no body; a string: a media type served as-is)
    responses: dict[int, type[BaseModel] | str | None]
    tag: str
    description: str = ""
    body_media: tuple[str, ...] = ("application/json", "application/msgpack")


@dataclass
class EndpointTable:
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: Auth,
        tag: str,
        responses: dict[int, type[BaseModel] | str | None],
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        description: str = "",
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            guarded = _guard(handler, auth)
            self.endpoints.append(
                Endpoint(
                    method, path, guarded, summary, auth, body, query, responses, tag, description
                )
            )
            return handler

        return register

    def add_to(self, app: web.Application) -> None:
        plain = {e.path for e in self.endpoints if "{" not in e.path}
        for endpoint in self.endpoints:
            app.router.add_route(
                endpoint.method, router_path(endpoint.path, plain), endpoint.handler
            )


def router_path(path: str, plain_paths: set[str]) -> str:
    """`/v1/zones/{zone_id}` must not also answer `/v1/zones/import`: a trailing parameter
    excludes the literal of a sibling plain route, so `Allow` and 405 tell the truth."""
    head, _, last = path.rpartition("/")
    match = re.fullmatch(r"{(\w+)}", last)
    if match is None:
        return path
    taken = sorted(p.rpartition("/")[2] for p in plain_paths if p.rpartition("/")[0] == head)
    if not taken:
        return path
    excluded = "|".join(re.escape(word) for word in taken)
    return f"{head}/{{{match.group(1)}:(?!(?:{excluded})$)[^/]+}}"


CALLER_KEY = web.RequestKey("caller", Caller)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("send 'Authorization: Bearer <key>'")
    return credentials.strip()


def _guard(handler: Handler, auth: Auth) -> Handler:
    if auth is Auth.NONE:
        return handler

    async def guarded(request: web.Request) -> web.StreamResponse:
        presented = _bearer(request)
        operator_token = request.app[SETTINGS].operator_token
        if hmac.compare_digest(presented.encode(), operator_token.encode()):
            if auth is not Auth.OPERATOR:
                raise Forbidden("the operator token only manages tenants")
            return await handler(request)
        caller = await request.app[TENANTS].authenticate(presented)
        if caller is None:
            raise Unauthorized("unknown key")
        if auth is Auth.OPERATOR or caller.kind.value != auth.value:
            wanted = {Auth.OPERATOR: "the operator token", Auth.SECRET: "a secret key (sk_)"}
            raise Forbidden(f"this route needs {wanted.get(auth, 'an SDK key (pk_)')}")
        request[CALLER_KEY] = caller
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


def path_id(request: web.Request, name: str) -> str:
    """A client-chosen id from the path, checked like every id (422 naming it otherwise)."""
    value = request.match_info[name]
    if not re.match(ID_PATTERN, value):
        raise ValidationFailed.of([FieldProblem(name, f"must match {ID_PATTERN}")])
    return value


def caller(request: web.Request) -> Caller:
    """The authenticated tenant key of this request (set by the guard)."""
    return request[CALLER_KEY]
