"""HTTP: what the shop and newsletter saw (interests), consent, export and erasure
(secret key)."""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, field_validator, model_validator

from geoservice import customers
from geoservice.customers import Interest, Profile
from geoservice.errors import FieldProblem, ValidationFailed
from geoservice.http.codec import read_model, respond
from geoservice.http.routing import Auth, EndpointTable, caller, path_id
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


Segment = Annotated[str, Field(pattern=ID_PATTERN)]
MAX_IMPORT_PROFILES = 10_000


class ProfileBody(Wire):
    segments: Annotated[list[Segment], Field(max_length=50)] = []
    birthday: Annotated[str, Field(pattern=r"^\d{2}-\d{2}$")] | None = Field(
        default=None, description="MM-DD: only month and day are kept; 02-29 is fine"
    )
    first_purchase_at: EpochMs | None = None
    last_purchase_at: EpochMs | None = None

    @field_validator("birthday")
    @classmethod
    def _real_day(cls, value: str | None) -> str | None:
        if value is not None:
            month, day = int(value[:2]), int(value[3:])
            # A leap year admits 29 February.
            try:
                date(2024, month, day)
            except ValueError:
                raise ValueError(f"{value} is not a day of the year") from None
        return value

    @model_validator(mode="after")
    def _purchases_in_order(self) -> ProfileBody:
        first, last = self.first_purchase_at, self.last_purchase_at
        if first is not None and last is not None and last < first:
            raise ValueError("last_purchase_at is before first_purchase_at")
        return self

    def profile(self) -> Profile:
        return Profile(
            tuple(dict.fromkeys(self.segments)),
            self.birthday,
            self.first_purchase_at,
            self.last_purchase_at,
        )


class ProfileImportItem(ProfileBody):
    customer_id: Id


class ProfileImport(Wire):
    customers: Annotated[
        list[ProfileImportItem], Field(min_length=1, max_length=MAX_IMPORT_PROFILES)
    ]


class ProfileView(Out):
    customer_id: str
    segments: list[str]
    birthday: str | None
    first_purchase_at: int | None
    last_purchase_at: int | None


class ProfilesImported(Out):
    imported: int


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
    customer_id = path_id(request, "customer_id")
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
    "PUT",
    "/v1/customers/{customer_id}",
    summary="Replace the customer's CRM profile: segments, birthday, purchase dates",
    auth=Auth.SECRET,
    tag="customers",
    body=ProfileBody,
    responses={200: ProfileView, 401: Problem, 403: Problem},
)
async def put_profile(request: web.Request) -> web.Response:
    customer_id = path_id(request, "customer_id")
    body, _ = await read_model(request, ProfileBody, request.app[SETTINGS].max_body_bytes)
    profile = body.profile()
    await request.app[CUSTOMERS].put_profiles(caller(request).tenant_id, [(customer_id, profile)])
    return respond(request, {"customer_id": customer_id, **profile.as_dict()})


@routes.route(
    "POST",
    "/v1/customers/import",
    summary="Replace up to 10,000 profiles at once (a CRM sync), all or nothing",
    auth=Auth.SECRET,
    tag="customers",
    body=ProfileImport,
    responses={200: ProfilesImported, 401: Problem, 403: Problem},
    description="If any profile is invalid the answer is 422 naming each bad field "
    "(customers[i]....) and nothing is written.",
)
async def import_profiles(request: web.Request) -> web.Response:
    body, _ = await read_model(request, ProfileImport, request.app[SETTINGS].max_import_body_bytes)
    seen: dict[str, int] = {}
    duplicates = []
    for index, item in enumerate(body.customers):
        if item.customer_id in seen:
            duplicates.append(
                FieldProblem(
                    f"customers[{index}].customer_id",
                    f"{item.customer_id!r} is also customers[{seen[item.customer_id]}]",
                )
            )
        seen.setdefault(item.customer_id, index)
    if duplicates:
        raise ValidationFailed.of(duplicates)
    await request.app[CUSTOMERS].put_profiles(
        caller(request).tenant_id, [(item.customer_id, item.profile()) for item in body.customers]
    )
    return respond(request, {"imported": len(body.customers)})


@routes.route(
    "GET",
    "/v1/customers/{customer_id}/export",
    summary="Everything held about the customer and its devices",
    auth=Auth.SECRET,
    tag="customers",
    responses={200: CustomerExport, 401: Problem, 403: Problem, 422: Problem},
)
async def export_customer(request: web.Request) -> web.Response:
    customer_id = path_id(request, "customer_id")
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
    customer_id = path_id(request, "customer_id")
    await customers.erase(request.app[STORE], caller(request).tenant_id, customer_id)
    return web.Response(status=204)
