"""HTTP: what the shop and newsletter saw (interests), consent, export and erasure
(secret key)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field

from geoservice import customers
from geoservice.customers import Interest
from geoservice.errors import FieldProblem, ValidationFailed
from geoservice.http.codec import read_model, respond
from geoservice.http.routing import Auth, EndpointTable, caller
from geoservice.http.state import CUSTOMERS, SETTINGS, STORE, TENANTS
from geoservice.http.wire import ID_PATTERN, EpochMs, Id, Out, Problem, Wire

routes = EndpointTable()

FUTURE_TOLERANCE_MS = 5 * 60_000


class InterestEvent(Wire):
    customer_id: Id
    kind: Literal["view", "newsletter_click", "cart", "purchase"]
    product_id: Id | None = None
    categories: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=50)
    ] = []
    ts: EpochMs


class InterestBatch(Wire):
    events: Annotated[list[InterestEvent], Field(min_length=1, max_length=1000)]


class Accepted(Out):
    accepted: int = Field(description="events stored; those older than the lookback are dropped")


class ConsentBody(Wire):
    location: bool
    marketing: bool
    source: Annotated[str, Field(min_length=1, max_length=200)]


class ConsentView(Out):
    customer_id: str
    location: bool | None
    marketing: bool | None
    source: str
    at: int


class CustomerExport(Out):
    customer_id: str
    consent: dict[str, Any] | None
    profile: dict[str, Any] | None
    interests: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    issued_offers: list[dict[str, Any]]
    redemptions: list[dict[str, Any]]


def _path_customer_id(request: web.Request) -> str:
    customer_id = request.match_info["customer_id"]
    if not re.match(ID_PATTERN, customer_id):
        raise ValidationFailed.of([FieldProblem("customer_id", f"must match {ID_PATTERN}")])
    return customer_id


@routes.route(
    "POST",
    "/v1/interests",
    summary="Record what customers viewed, clicked, carted and bought (1..1000 events)",
    auth=Auth.SECRET,
    tag="customers",
    body=InterestBatch,
    responses={202: Accepted, 401: Problem, 403: Problem},
)
async def post_interests(request: web.Request) -> web.Response:
    body, _ = await read_model(request, InterestBatch, request.app[SETTINGS].max_body_bytes)
    now_ms = int(time.time() * 1000)
    future = [
        FieldProblem(f"events[{i}].ts", "more than 5 minutes in the future")
        for i, e in enumerate(body.events)
        if e.ts > now_ms + FUTURE_TOLERANCE_MS
    ]
    if future:
        raise ValidationFailed.of(future)
    tenant = await request.app[TENANTS].get(caller(request).tenant_id)
    accepted = await request.app[CUSTOMERS].add_interests(
        tenant.tenant_id,
        [
            (e.customer_id, Interest(e.kind, e.product_id, tuple(e.categories), e.ts))
            for e in body.events
        ],
        tenant.settings.interest_lookback_s,
    )
    return respond(request, {"accepted": accepted}, status=202)


@routes.route(
    "PUT",
    "/v1/customers/{customer_id}/consent",
    summary="Record the customer's consent, with its time as proof",
    auth=Auth.SECRET,
    tag="customers",
    body=ConsentBody,
    responses={200: ConsentView, 401: Problem, 403: Problem},
)
async def put_consent(request: web.Request) -> web.Response:
    customer_id = _path_customer_id(request)
    body, _ = await read_model(request, ConsentBody, request.app[SETTINGS].max_body_bytes)
    consent = await request.app[CUSTOMERS].record_consent(
        caller(request).tenant_id,
        customer_id,
        location=body.location,
        marketing=body.marketing,
        source=body.source,
    )
    return respond(
        request,
        {
            "customer_id": customer_id,
            "location": consent.location,
            "marketing": consent.marketing,
            "source": consent.source,
            "at": consent.at_ms,
        },
    )


@routes.route(
    "GET",
    "/v1/customers/{customer_id}/export",
    summary="Everything held about the customer and its devices",
    auth=Auth.SECRET,
    tag="customers",
    responses={200: CustomerExport, 401: Problem, 403: Problem, 422: Problem},
)
async def export_customer(request: web.Request) -> web.Response:
    customer_id = _path_customer_id(request)
    data = await customers.export(request.app[STORE], caller(request).tenant_id, customer_id)
    return respond(request, data)


@routes.route(
    "DELETE",
    "/v1/customers/{customer_id}",
    summary="Erase the customer: every key of it and of its linked devices, on every node",
    auth=Auth.SECRET,
    tag="customers",
    responses={204: None, 401: Problem, 403: Problem, 422: Problem},
)
async def erase_customer(request: web.Request) -> web.Response:
    customer_id = _path_customer_id(request)
    await customers.erase(request.app[STORE], caller(request).tenant_id, customer_id)
    return web.Response(status=204)
