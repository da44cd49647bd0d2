"""HTTP: liveness, readiness, metrics and the OpenAPI document (no key)."""

from __future__ import annotations

import os

from aiohttp import web
from redis.exceptions import RedisError

from geoservice import metrics
from geoservice.errors import Unavailable
from geoservice.http.codec import respond
from geoservice.http.middleware import BREAKER
from geoservice.http.routing import Auth, EndpointTable
from geoservice.http.state import OPENAPI, READY, SETTINGS, STORE
from geoservice.http.wire import Out, Problem

routes = EndpointTable()


class Health(Out):
    status: str
    instance_id: str | None = None
    pid: int | None = None


@routes.route(
    "GET",
    "/healthz",
    summary="The process lives",
    auth=Auth.NONE,
    tag="operations",
    responses={200: Health},
)
async def healthz(request: web.Request) -> web.Response:
    instance_id = request.app[SETTINGS].instance_id
    return respond(request, {"status": "ok", "instance_id": instance_id, "pid": os.getpid()})


@routes.route(
    "GET",
    "/readyz",
    summary="The store answers and the zone index is loaded",
    auth=Auth.NONE,
    tag="operations",
    responses={200: Health, 503: Problem},
)
async def readyz(request: web.Request) -> web.Response:
    if not request.app[READY].is_set():
        raise Unavailable("the zone index is still loading", retry_after_s=1)
    breaker = request.app[BREAKER]
    try:
        await request.app[STORE].ping()
    except (RedisError, OSError) as exc:
        breaker.failed()
        raise Unavailable(f"the store is not answering: {exc}", retry_after_s=2) from None
    # Readiness probes keep coming while no traffic is routed here: they close the circuit.
    breaker.succeeded()
    return respond(request, {"status": "ready"})


@routes.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics",
    auth=Auth.NONE,
    tag="operations",
    responses={200: "text/plain"},
)
async def metrics_text(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


@routes.route(
    "GET",
    "/openapi.json",
    summary="This API as OpenAPI 3.1",
    auth=Auth.NONE,
    tag="operations",
    responses={200: "application/json"},
)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
