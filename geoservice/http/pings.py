"""HTTP: location pings from the mobile SDKs (SDK key)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field

from geoservice.fences import ConsentUpdate
from geoservice.http.codec import read_model, respond
from geoservice.http.routing import Auth, EndpointTable, caller
from geoservice.http.state import PINGS, SETTINGS, TENANTS
from geoservice.http.wire import EpochMs, Id, Out, Problem, Wire
from geoservice.pings import Fix, PingBatch

routes = EndpointTable()

MAX_PINGS_PER_REQUEST = 500


class PingFix(Wire):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    accuracy_m: Annotated[float, Field(ge=0, le=100_000)]
    ts: EpochMs
    speed_mps: Annotated[float, Field(ge=0, le=400)] | None = None
    heading: Annotated[float, Field(ge=0, le=360)] | None = None
    age_ms: Annotated[int, Field(ge=0, le=7 * 86_400_000)] | None = Field(
        default=None,
        description="how long before sending the phone took this fix, by its monotonic clock; "
        "when present the ping's time is the receive time minus age_ms (a wrong wall clock "
        "on the phone then does not matter)",
    )


class PingConsent(Wire):
    location: bool
    marketing: bool | None = None


class PingRequest(Wire):
    device_id: Id
    customer_id: Id | None = None
    consent: PingConsent | None = None
    pings: Annotated[list[PingFix], Field(min_length=1, max_length=MAX_PINGS_PER_REQUEST)]


class EventOut(Out):
    type: Literal["enter", "exit", "dwell"]
    zone_id: str
    store_id: str | None
    at: int


class IgnoredOut(Out):
    index: int
    reason: Literal["stale", "future", "too_old", "inaccurate"]


class OfferOut(Out):
    id: str
    offer_id: str
    title: str
    body: str | None = None
    product_ids: list[str]
    zone_id: str
    store_id: str | None
    issued_at: int
    expires_at: int
    token: str


class PingAnswer(Out):
    events: list[EventOut]
    offers: list[OfferOut]
    ignored: list[IgnoredOut]


@routes.route(
    "POST",
    "/v1/pings",
    summary="Report 1..500 location fixes of one device; get its events and offers",
    auth=Auth.SDK,
    tag="pings",
    body=PingRequest,
    responses={200: PingAnswer, 401: Problem, 403: Problem, 429: Problem},
    description="403 when the device has no location consent on record and the body brings "
    "none; nothing is stored then. 429 with Retry-After past the per-device rate.",
)
async def post_pings(request: web.Request) -> web.Response:
    received_ms = int(time.time() * 1000)
    body, _ = await read_model(request, PingRequest, request.app[SETTINGS].max_body_bytes)
    tenant = await request.app[TENANTS].get(caller(request).tenant_id)
    batch = PingBatch(
        device_id=body.device_id,
        customer_id=body.customer_id,
        consent=None
        if body.consent is None
        else ConsentUpdate(body.consent.location, body.consent.marketing, "sdk"),
        fixes=[Fix(p.lat, p.lon, p.accuracy_m, p.ts, p.age_ms) for p in body.pings],
    )
    outcome = await request.app[PINGS].handle(tenant, batch, received_ms)
    return respond(
        request,
        {
            "events": [
                {"type": e.type, "zone_id": e.zone_id, "store_id": e.store_id, "at": e.at_ms}
                for e in outcome.events
            ],
            "offers": [offer.as_dict() for offer in outcome.offers],
            "ignored": [{"index": i.index, "reason": i.reason} for i in outcome.ignored],
        },
    )
