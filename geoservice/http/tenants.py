"""HTTP: tenants and their keys (operator token), the tenant's own settings (secret key)."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import available_timezones

from aiohttp import web
from pydantic import Field, field_validator

from geoservice.http.codec import read_model, respond
from geoservice.http.routing import Auth, EndpointTable, caller
from geoservice.http.state import SETTINGS, TENANTS
from geoservice.http.wire import Id, Out, Problem, Wire
from geoservice.tenants import KeyKind

routes = EndpointTable()

_TIMEZONES: set[str] = set()


def check_timezone(name: str) -> str:
    if not _TIMEZONES:
        _TIMEZONES.update(available_timezones())
    if name not in _TIMEZONES:
        raise ValueError(f"unknown IANA time zone {name!r}")
    return name


class TenantCreate(Wire):
    tenant_id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    timezone: str = "UTC"

    _tz = field_validator("timezone")(check_timezone)


class TenantCreated(Out):
    tenant_id: str
    secret_key: str = Field(description="sk_…: back office key, shown once")
    sdk_key: str = Field(description="pk_…: ships inside the app, pings only; shown once")


class KeyRotate(Wire):
    kind: Literal["secret", "sdk"]


class KeyRotated(Out):
    tenant_id: str
    kind: Literal["secret", "sdk"]
    key: str = Field(description="the new key, shown once; the old one stops working")


class TenantPatch(Wire):
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    timezone: str | None = None
    max_offers_per_day: Annotated[int, Field(ge=0, le=1000)] | None = None
    zone_cooldown_s: Annotated[int, Field(ge=0, le=30 * 86_400)] | None = None
    max_accuracy_m: Annotated[float, Field(gt=0, le=10_000)] | None = None
    exit_margin_m: Annotated[float, Field(ge=0, le=5_000)] | None = None
    interest_half_life_s: Annotated[int, Field(ge=60, le=365 * 86_400)] | None = None
    interest_lookback_s: Annotated[int, Field(ge=3_600, le=365 * 86_400)] | None = None
    offer_min_freshness_s: Annotated[int, Field(ge=1, le=86_400)] | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)


class TenantView(Out):
    tenant_id: str
    name: str
    timezone: str
    created_at: int
    max_offers_per_day: int
    zone_cooldown_s: int
    max_accuracy_m: float
    exit_margin_m: float
    interest_half_life_s: int
    interest_lookback_s: int
    offer_min_freshness_s: int


ERRORS: dict[int, type[Problem]] = {401: Problem, 403: Problem, 422: Problem}


@routes.route(
    "POST",
    "/v1/tenants",
    summary="Create a tenant and its two keys",
    auth=Auth.OPERATOR,
    tag="tenants",
    body=TenantCreate,
    responses={201: TenantCreated, 409: Problem, **ERRORS},
)
async def create_tenant(request: web.Request) -> web.Response:
    body, _ = await read_model(request, TenantCreate, request.app[SETTINGS].max_body_bytes)
    tenant, secret_key, sdk_key = await request.app[TENANTS].create(
        body.tenant_id, body.name, body.timezone
    )
    created = TenantCreated(tenant_id=tenant.tenant_id, secret_key=secret_key, sdk_key=sdk_key)
    return respond(request, created.model_dump(), status=201)


@routes.route(
    "POST",
    "/v1/tenants/{tenant_id}/keys/rotate",
    summary="Replace a tenant's secret or SDK key; the old one stops working at once",
    auth=Auth.OPERATOR,
    tag="tenants",
    body=KeyRotate,
    responses={200: KeyRotated, 404: Problem, **ERRORS},
)
async def rotate_key(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    body, _ = await read_model(request, KeyRotate, request.app[SETTINGS].max_body_bytes)
    key = await request.app[TENANTS].rotate_key(tenant_id, KeyKind(body.kind))
    return respond(request, {"tenant_id": tenant_id, "kind": body.kind, "key": key})


@routes.route(
    "GET",
    "/v1/tenant",
    summary="The calling tenant's settings",
    auth=Auth.SECRET,
    tag="tenants",
    responses={200: TenantView, 401: Problem, 403: Problem},
)
async def get_tenant(request: web.Request) -> web.Response:
    tenant = await request.app[TENANTS].get(caller(request).tenant_id)
    return respond(request, tenant.as_dict())


@routes.route(
    "PATCH",
    "/v1/tenant",
    summary="Change the calling tenant's settings (only the fields sent)",
    auth=Auth.SECRET,
    tag="tenants",
    body=TenantPatch,
    responses={200: TenantView, **ERRORS},
)
async def patch_tenant(request: web.Request) -> web.Response:
    body, _ = await read_model(request, TenantPatch, request.app[SETTINGS].max_body_bytes)
    changes = body.model_dump(exclude_none=True)
    tenant = await request.app[TENANTS].update(caller(request).tenant_id, changes)
    return respond(request, tenant.as_dict())
