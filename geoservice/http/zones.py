"""HTTP: the retailer's zones (secret key): single PUT/GET/DELETE, the paged list, bulk import."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, ValidationError, field_validator

from geoservice.errors import FieldProblem, ValidationFailed
from geoservice.geometry import GeometryError, ZoneShape
from geoservice.http.codec import (
    read_body,
    read_model,
    respond,
    validate_query,
    validation_problems,
)
from geoservice.http.routing import Auth, EndpointTable, caller, path_id
from geoservice.http.state import SETTINGS, ZONES
from geoservice.http.tenants import check_timezone
from geoservice.http.wire import Id, Out, Page, Problem, Wire
from geoservice.zones import WEEKDAYS, Zone, ZoneDraft, build_zone, now_ms, problems_of

routes = EndpointTable()

MAX_IMPORT_FEATURES = 10_000
# A hostile import could name a million problems; the answer lists this many and says so.
MAX_LISTED_INVALID_FEATURES = 1_000

ClockTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")]
Interval = Annotated[list[ClockTime], Field(min_length=2, max_length=2)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class ZoneProperties(Wire):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    store_id: Id | None = None
    radius_m: float | None = Field(
        default=None, description="metres, 10..50000; required for a Point, refused otherwise"
    )
    timezone: str | None = Field(
        default=None, description="IANA name; default: the time zone at the zone's location"
    )
    dwell_s: Annotated[int, Field(ge=0, le=86_400)] | None = Field(
        default=None, description="seconds inside before a dwell event (default 300)"
    )
    opening_hours: dict[Weekday, Annotated[list[Interval], Field(max_length=8)]] | None = Field(
        default=None,
        description='e.g. {"mon": [["08:00", "20:00"]]}; a day not listed is closed; '
        "absent means always open; an interval past midnight is split in two",
    )
    enabled: bool | None = None
    area_m2: float | None = Field(default=None, description="computed; ignored on input")
    updated_at: int | None = Field(default=None, description="computed; ignored on input")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("opening_hours")
    @classmethod
    def _intervals_in_order(
        cls, value: dict[str, list[list[str]]] | None
    ) -> dict[str, list[list[str]]] | None:
        if value is None:
            return None
        for day, intervals in value.items():
            for opens, closes in intervals:
                if opens >= closes:
                    raise ValueError(f"{day}: {opens}-{closes} does not close after it opens")
        return {day: value[day] for day in WEEKDAYS if day in value}


class ZoneFeature(Wire):
    type: Literal["Feature"]
    id: Id | None = None
    geometry: dict[str, Any] = Field(
        description="GeoJSON Point (with properties.radius_m), Polygon or MultiPolygon; "
        "positions are [lon, lat]"
    )
    properties: ZoneProperties
    bbox: list[float] | None = None


class ZoneImport(Wire):
    type: Literal["FeatureCollection"]
    features: Annotated[list[dict[str, Any]], Field(max_length=MAX_IMPORT_FEATURES)]
    bbox: list[float] | None = None


class StoredProperties(Out):
    name: str
    store_id: str | None = None
    radius_m: float | None = None
    timezone: str
    dwell_s: int
    opening_hours: dict[str, list[list[str]]] | None = None
    enabled: bool
    area_m2: float
    updated_at: int


class StoredZone(Out):
    type: Literal["Feature"]
    id: str
    geometry: dict[str, Any]
    properties: StoredProperties


class ZonePage(Out):
    type: Literal["FeatureCollection"]
    features: list[StoredZone]
    next_cursor: str | None


class ImportResult(Out):
    created: int
    updated: int


def _draft(zone_id: str, feature: ZoneFeature) -> ZoneDraft:
    p = feature.properties
    return ZoneDraft(
        zone_id=zone_id,
        name=p.name,
        geometry=feature.geometry,
        radius_m=p.radius_m,
        store_id=p.store_id,
        timezone=p.timezone,
        dwell_s=p.dwell_s,
        opening_hours=None if p.opening_hours is None else dict(p.opening_hours.items()),
        enabled=p.enabled,
    )


def _check_one(raw: Any, zone_id: str | None, prefix: str) -> tuple[Zone, ZoneShape]:
    """Validate one Feature; ValidationFailed names every problem with `prefix` before it."""
    try:
        feature = ZoneFeature.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ValidationFailed.of(
            [FieldProblem(prefix + p.field, p.message) for p in problems]
        ) from None
    if zone_id is None:
        if feature.id is None:
            raise ValidationFailed.of([FieldProblem(prefix + "id", "every Feature needs an id")])
        zone_id = feature.id
    elif feature.id is not None and feature.id != zone_id:
        raise ValidationFailed.of(
            [FieldProblem(prefix + "id", f"{feature.id!r} differs from {zone_id!r} in the path")]
        )
    try:
        return build_zone(_draft(zone_id, feature), now_ms())
    except GeometryError as exc:
        raise ValidationFailed.of(problems_of(exc, prefix)) from None


# check_import runs in a thread beside the event loop and is CPU-bound: left alone it kept most
# of the GIL, and a one-worker service answered nothing for ~0.9 s of a 10,000-zone import
# (p99 of 200 pings/s during it: 0.8-1.4 s; the 1 ms switch interval did not change that).
# Sleeping 1 ms every 100 features hands the GIL to the loop: p99 0.1-0.5 s, the import no
# slower (python -m loadtest.bench_import --live --workers 1, loadtest/RESULTS.md).
YIELD_EVERY_FEATURES = 100
YIELD_S = 0.001


def check_import(features: list[Any]) -> list[tuple[Zone, ZoneShape]]:
    built: list[tuple[Zone, ZoneShape]] = []
    problems: list[FieldProblem] = []
    invalid: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(features):
        if index % YIELD_EVERY_FEATURES == YIELD_EVERY_FEATURES - 1:
            time.sleep(YIELD_S)
        prefix = f"features[{index}]."
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        shown_id = raw_id if isinstance(raw_id, str) else None
        try:
            zone, shape = _check_one(raw, None, prefix)
        except ValidationFailed as exc:
            problems.extend(exc.errors)
            invalid.append({"index": index, "id": shown_id, "errors": _plain(exc.errors)})
            continue
        if zone.zone_id in first_index:
            duplicate = [
                FieldProblem(
                    prefix + "id", f"{zone.zone_id!r} is also features[{first_index[zone.zone_id]}]"
                )
            ]
            problems.extend(duplicate)
            invalid.append({"index": index, "id": zone.zone_id, "errors": _plain(duplicate)})
            continue
        first_index[zone.zone_id] = index
        built.append((zone, shape))
    if invalid:
        listed = invalid[:MAX_LISTED_INVALID_FEATURES]
        error = ValidationFailed(
            f"{len(invalid)} of {len(features)} Features are invalid; nothing was imported",
            errors=[p for p in problems if _index_of(p.field) in {i["index"] for i in listed}],
            extra={"invalid_features": listed, "invalid_count": len(invalid)},
        )
        raise error
    return built


def _plain(problems: list[FieldProblem]) -> list[dict[str, str]]:
    return [{"field": p.field, "message": p.message} for p in problems]


_INDEX = re.compile(r"^features\[(\d+)\]")


def _index_of(field: str) -> int:
    match = _INDEX.match(field)
    return int(match.group(1)) if match else -1


@routes.route(
    "PUT",
    "/v1/zones/{zone_id}",
    summary="Create or replace a zone",
    auth=Auth.SECRET,
    tag="zones",
    body=ZoneFeature,
    responses={200: StoredZone, 201: StoredZone, 401: Problem, 403: Problem},
)
async def put_zone(request: web.Request) -> web.Response:
    zone_id = path_id(request, "zone_id")
    data, _ = await read_body(request, request.app[SETTINGS].max_body_bytes)
    # Off the event loop: a 10,000-vertex polygon takes tens of milliseconds to check.
    zone, shape = await asyncio.to_thread(_check_one, data, zone_id, "")
    created = await request.app[ZONES].put(caller(request).tenant_id, zone, shape)
    return respond(request, zone.to_feature(), status=201 if created else 200)


@routes.route(
    "GET",
    "/v1/zones/{zone_id}",
    summary="One zone as a GeoJSON Feature with its computed area",
    auth=Auth.SECRET,
    tag="zones",
    responses={200: StoredZone, 401: Problem, 403: Problem, 404: Problem},
)
async def get_zone(request: web.Request) -> web.Response:
    zone = await request.app[ZONES].get(caller(request).tenant_id, request.match_info["zone_id"])
    return respond(request, zone.to_feature())


@routes.route(
    "DELETE",
    "/v1/zones/{zone_id}",
    summary="Delete a zone",
    auth=Auth.SECRET,
    tag="zones",
    responses={204: None, 401: Problem, 403: Problem, 404: Problem},
)
async def delete_zone(request: web.Request) -> web.Response:
    await request.app[ZONES].delete(caller(request).tenant_id, request.match_info["zone_id"])
    return web.Response(status=204)


@routes.route(
    "GET",
    "/v1/zones",
    summary="The tenant's zones, by id, a page at a time",
    auth=Auth.SECRET,
    tag="zones",
    query=Page,
    responses={200: ZonePage, 401: Problem, 403: Problem, 422: Problem},
)
async def list_zones(request: web.Request) -> web.Response:
    page = validate_query(request, Page)
    zones, next_cursor = await request.app[ZONES].page(
        caller(request).tenant_id, page.cursor, page.limit
    )
    return respond(
        request,
        {
            "type": "FeatureCollection",
            "features": [z.to_feature() for z in zones],
            "next_cursor": next_cursor,
        },
    )


@routes.route(
    "POST",
    "/v1/zones/import",
    summary="Create or replace up to 10,000 zones at once, all or nothing",
    auth=Auth.SECRET,
    tag="zones",
    body=ZoneImport,
    responses={200: ImportResult, 401: Problem, 403: Problem},
    description="If any Feature is invalid the answer is 422 listing each bad one by index and "
    "id (`invalid_features`), and nothing is changed.",
)
async def import_zones(request: web.Request) -> web.Response:
    body, _ = await read_model(request, ZoneImport, request.app[SETTINGS].max_import_body_bytes)
    # Geometry checks of thousands of Features take a while: off the event loop, so pings
    # served by this worker keep flowing meanwhile.
    items = await asyncio.to_thread(check_import, body.features)
    created, updated = await request.app[ZONES].put_many(caller(request).tenant_id, items)
    return respond(request, {"created": created, "updated": updated})
