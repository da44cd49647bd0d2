"""HTTP: offers (secret key): PUT/GET/DELETE and the paged list."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, model_validator

from geoservice import keys
from geoservice.errors import FieldProblem, ValidationFailed
from geoservice.http.codec import read_model, respond, validate_query
from geoservice.http.routing import Auth, EndpointTable, caller, path_id
from geoservice.http.state import OFFERS, SETTINGS, STORE
from geoservice.http.wire import ID_PATTERN, EpochMs, Id, Out, Page, Problem, Wire
from geoservice.offers import Offer, now_ms

routes = EndpointTable()

Category = Annotated[str, Field(min_length=1, max_length=100)]


class Audience(Wire):
    """Who may get the offer; every condition given must hold; a device without a customer
    never matches an offer with an audience."""

    segments: (
        Annotated[list[Annotated[str, Field(pattern=ID_PATTERN)]], Field(max_length=50)] | None
    ) = Field(default=None, description="any of these CRM segments")
    birthday_within_days: Annotated[int, Field(ge=0, le=366)] | None = Field(
        default=None,
        description="the birthday is today or within this many days, in the zone's time zone",
    )
    lapsed_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        default=None, description="the last purchase is at least this many days ago"
    )
    new_within_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        default=None, description="the first purchase is at most this many days ago"
    )


class OfferBody(Wire):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    body: Annotated[str, Field(max_length=2000)] | None = None
    product_ids: Annotated[list[Id], Field(max_length=1000)] = []
    categories: Annotated[list[Category], Field(max_length=100)] = []
    zone_ids: Annotated[list[Id], Field(max_length=10_000)] | None = Field(
        default=None, description="absent or null: every zone of the tenant"
    )
    trigger: Literal["enter", "dwell", "exit"] = "enter"
    valid_for_s: Annotated[int, Field(ge=60, le=86_400)] = Field(
        default=3600, description="how long an issued offer stays redeemable"
    )
    starts_at: EpochMs | None = None
    ends_at: EpochMs | None = None
    max_per_customer: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=1,
        description="issuances to one customer (or one device without a customer) in 30 days",
    )
    budget: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = Field(
        default=None, description="total issuances allowed; absent = unlimited"
    )
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = Field(
        default=0, description="higher wins a tie in score"
    )
    fallback: bool = Field(default=False, description="may be issued without any interest match")
    audience: Audience | None = None
    offer_id: str | None = Field(default=None, description="ignored on input (the path names it)")
    updated_at: int | None = Field(default=None, description="computed; ignored on input")

    @model_validator(mode="after")
    def _window(self) -> OfferBody:
        starts_at, ends_at = self.starts_at, self.ends_at
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class OfferView(Out):
    offer_id: str
    title: str
    body: str | None
    product_ids: list[str]
    categories: list[str]
    zone_ids: list[str] | None
    trigger: str
    valid_for_s: int
    starts_at: int | None
    ends_at: int | None
    max_per_customer: int
    budget: int | None
    priority: int
    fallback: bool
    audience: dict[str, object] | None = None
    updated_at: int


class OfferPage(Out):
    offers: list[OfferView]
    next_cursor: str | None


@routes.route(
    "PUT",
    "/v1/offers/{offer_id}",
    summary="Create or replace an offer",
    auth=Auth.SECRET,
    tag="offers",
    body=OfferBody,
    responses={200: OfferView, 201: OfferView, 401: Problem, 403: Problem},
    description="Every zone id in zone_ids must be one of the tenant's zones (422 otherwise).",
)
async def put_offer(request: web.Request) -> web.Response:
    offer_id = path_id(request, "offer_id")
    body, _ = await read_model(request, OfferBody, request.app[SETTINGS].max_body_bytes)
    tenant_id = caller(request).tenant_id
    if body.zone_ids:
        known = await request.app[STORE].redis.hmget(keys.zones(tenant_id), body.zone_ids)
        missing = [
            FieldProblem(f"zone_ids[{i}]", f"the tenant has no zone {zone_id!r}")
            for i, (zone_id, raw) in enumerate(zip(body.zone_ids, known, strict=True))
            if raw is None
        ]
        if missing:
            raise ValidationFailed.of(missing)
    offer = Offer(
        offer_id=offer_id,
        title=body.title,
        body=body.body,
        product_ids=tuple(body.product_ids),
        categories=tuple(body.categories),
        zone_ids=None if body.zone_ids is None else tuple(body.zone_ids),
        trigger=body.trigger,
        valid_for_s=body.valid_for_s,
        starts_at_ms=body.starts_at,
        ends_at_ms=body.ends_at,
        max_per_customer=body.max_per_customer,
        budget=body.budget,
        priority=body.priority,
        fallback=body.fallback,
        audience=None if body.audience is None else body.audience.model_dump(exclude_none=True),
        updated_at_ms=now_ms(),
    )
    created = await request.app[OFFERS].put(tenant_id, offer)
    return respond(request, offer.as_dict(), status=201 if created else 200)


@routes.route(
    "GET",
    "/v1/offers/{offer_id}",
    summary="One offer",
    auth=Auth.SECRET,
    tag="offers",
    responses={200: OfferView, 401: Problem, 403: Problem, 404: Problem},
)
async def get_offer(request: web.Request) -> web.Response:
    offer = await request.app[OFFERS].get(caller(request).tenant_id, request.match_info["offer_id"])
    return respond(request, offer.as_dict())


@routes.route(
    "DELETE",
    "/v1/offers/{offer_id}",
    summary="Delete an offer (offers already issued stay redeemable)",
    auth=Auth.SECRET,
    tag="offers",
    responses={204: None, 401: Problem, 403: Problem, 404: Problem},
)
async def delete_offer(request: web.Request) -> web.Response:
    await request.app[OFFERS].delete(caller(request).tenant_id, request.match_info["offer_id"])
    return web.Response(status=204)


@routes.route(
    "GET",
    "/v1/offers",
    summary="The tenant's offers, by id, a page at a time",
    auth=Auth.SECRET,
    tag="offers",
    query=Page,
    responses={200: OfferPage, 401: Problem, 403: Problem, 422: Problem},
)
async def list_offers(request: web.Request) -> web.Response:
    page = validate_query(request, Page)
    offers, next_cursor = await request.app[OFFERS].page(
        caller(request).tenant_id, page.cursor, page.limit
    )
    return respond(request, {"offers": [o.as_dict() for o in offers], "next_cursor": next_cursor})
