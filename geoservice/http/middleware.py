"""The edge every request passes: overload bound, content negotiation, metrics, and the one
place where errors become RFC 9457 problem documents."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ClusterDownError, ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from geoservice import metrics
from geoservice.breaker import CircuitBreaker
from geoservice.errors import (
    PROBLEM_TYPE_PREFIX,
    GeoserviceError,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from geoservice.http.codec import JSON, MSGPACK, PROBLEM_JSON, encode, response_codec
from geoservice.http.state import SETTINGS

log = logging.getLogger(__name__)

IN_FLIGHT = web.AppKey("in_flight", list[int])
BREAKER = web.AppKey("breaker", CircuitBreaker)
# Bulk imports legitimately take longer than a ping.
IMPORT_DEADLINE_FACTOR = 15
# Redis Cluster: the key's slot has no primary now (a failover under way; MasterDownError is a
# ClusterDownError), or redirections that did not settle ("TTL exhausted" is a bare
# ClusterError). Only the requests for that slot get the 503; the others go on.
ClusterUnavailable = (ClusterDownError, TryAgainError, SlotNotCoveredError, ClusterError)
# A deadline past (TimeoutError) counts as the store not answering: it is what requests wait on.
StoreUnavailable = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    *ClusterUnavailable,
)
OVERLOAD_RETRY_AFTER_S = 1
STORE_RETRY_AFTER_S = 2
STORE_UNAVAILABLE = Unavailable(
    "the store is not answering, try again", retry_after_s=STORE_RETRY_AFTER_S
)


def problem_response(request: web.Request, error: GeoserviceError) -> web.Response:
    try:
        codec = response_codec(request.headers.get("Accept"))
    except NotAcceptable:
        codec = JSON
    document: dict[str, object] = {
        "type": PROBLEM_TYPE_PREFIX + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": request.path,
    }
    if error.errors:
        document["errors"] = [{"field": p.field, "message": p.message} for p in error.errors]
    document.update(error.extra)
    headers = dict(error.headers)
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return web.Response(
        body=encode(document, codec),
        status=error.status,
        content_type=PROBLEM_JSON if codec == JSON else MSGPACK,
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException) -> GeoserviceError:
    if exc.status == 404:
        return NotFound("no such route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(
            f"{exc.method} is not allowed here; allowed: {allowed}", headers={"Allow": allowed}
        )
    if exc.status == 413:
        return PayloadTooLarge("body too large")
    error = GeoserviceError(exc.text or exc.reason)
    error.status = exc.status  # type: ignore[misc]
    return error


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    in_flight = request.app[IN_FLIGHT]
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    response: web.StreamResponse
    in_flight[0] += 1
    try:
        if in_flight[0] > request.app[SETTINGS].max_in_flight:
            metrics.REJECTED_OVERLOAD.inc()
            raise Unavailable(
                "too many requests in flight, try again", retry_after_s=OVERLOAD_RETRY_AFTER_S
            )
        response_codec(request.headers.get("Accept"))  # 406 before any work is done
        settings = request.app[SETTINGS]
        uses_store = request.path.startswith("/v1/")
        breaker = request.app[BREAKER]
        if uses_store and not breaker.allow():
            raise Unavailable(
                "the store is not answering, try again", retry_after_s=breaker.retry_after_s()
            )
        deadline_s = settings.request_deadline_ms / 1000
        if request.path.endswith("/import"):
            deadline_s *= IMPORT_DEADLINE_FACTOR
        try:
            async with asyncio.timeout(deadline_s):
                response = await handler(request)
        except ClusterUnavailable:
            # One shard without a primary is not the store gone: the other shards' requests
            # must go on, so this does not count towards opening the circuit.
            raise
        except StoreUnavailable:
            if uses_store:
                breaker.failed()
            raise
        if uses_store:
            breaker.succeeded()
    except GeoserviceError as error:
        response = problem_response(request, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem_response(request, _from_http_exception(exc))
    except StoreUnavailable as exc:
        # The route's pattern, not the path: paths carry customer and zone ids.
        log.warning("store unavailable on %s %s: %r", request.method, route_name, exc)
        response = problem_response(request, STORE_UNAVAILABLE)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, route_name)
        response = problem_response(request, GeoserviceError("unexpected error, it was logged"))
    finally:
        in_flight[0] -= 1
    count, duration = metrics.request_series(route_name, request.method, response.status)
    count.inc()
    duration.observe(time.perf_counter() - started)
    return response
