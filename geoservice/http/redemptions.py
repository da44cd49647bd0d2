"""HTTP: redemption at the till, and the per-zone hourly statistics (secret key)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from geoservice import redemptions, stats
from geoservice.http.codec import read_model, respond, validate_query
from geoservice.http.routing import Auth, EndpointTable, caller
from geoservice.http.state import SETTINGS, STORE
from geoservice.http.wire import EpochMs, Id, Out, Problem, Wire

routes = EndpointTable()


class RedemptionBody(Wire):
    token: Annotated[str, Field(min_length=1, max_length=512)]
    store_id: Id


class Redeemed(Out):
    id: str
    offer_id: str
    title: str
    zone_id: str
    store_id: str | None
    issued_at: int
    expires_at: int
    redeemed_at: int
    redeemed_store_id: str | None


@routes.route(
    "POST",
    "/v1/redemptions",
    summary="Redeem an issued offer by its token, exactly once",
    auth=Auth.SECRET,
    tag="redemptions",
    body=RedemptionBody,
    responses={
        200: Redeemed,
        401: Problem,
        403: Problem,
        409: Problem,
        410: Problem,
        429: Problem,
    },
    description="409 carries `first_redemption` ({redeemed_at, store_id}); 410 once expired; "
    "422 for a forged, garbled or another tenant's token; 429 past the tenant's rate of "
    "redemption attempts.",
)
async def post_redemption(request: web.Request) -> web.Response:
    body, _ = await read_model(request, RedemptionBody, request.app[SETTINGS].max_body_bytes)
    view = await redemptions.redeem(
        request.app[STORE],
        request.app[SETTINGS],
        caller(request).tenant_id,
        body.token,
        body.store_id,
        int(time.time() * 1000),
    )
    return respond(request, view)


MAX_STATS_HOURS = 31 * 24


class HourRange(BaseModel):
    """?from=&to= of the statistics: at most 31 days, hour by hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_: EpochMs = Field(alias="from", description="epoch ms, inclusive")
    to: EpochMs = Field(description="epoch ms, exclusive; at most 31 days after from")

    @model_validator(mode="after")
    def _range(self) -> HourRange:
        if self.to <= self.from_:
            raise ValueError("to must be after from")
        if self.to - self.from_ > MAX_STATS_HOURS * stats.HOUR_MS:
            raise ValueError("at most 31 days at once")
        return self


class StatsQuery(HourRange):
    zone_id: Id | None = None
    group_by: Literal["zone", "segment"] = Field(
        default="zone",
        description="zone: per zone and hour; segment: offers issued and redeemed per zone, "
        "CRM segment (as the customer's profile had it at issue) and hour",
    )


class StatsRow(Out):
    zone_id: str
    hour: int
    enters: int
    exits: int
    dwells: int
    unique_devices: int
    offers_issued: int
    redemptions: int


class SegmentStatsRow(Out):
    zone_id: str
    segment: str = Field(description='a CRM segment, or "(none)" for customers without any')
    hour: int
    offers_issued: int
    redemptions: int


class StatsAnswer(Out):
    stats: list[StatsRow] | list[SegmentStatsRow]


@routes.route(
    "GET",
    "/v1/stats",
    summary="Per zone and hour: enters, exits, dwells, unique devices, offers, redemptions",
    auth=Auth.SECRET,
    tag="stats",
    query=StatsQuery,
    responses={200: StatsAnswer, 401: Problem, 403: Problem, 422: Problem},
)
async def get_stats(request: web.Request) -> web.Response:
    query = validate_query(request, StatsQuery)
    counts = stats.hourly if query.group_by == "zone" else stats.hourly_by_segment
    rows = await counts(
        request.app[STORE], caller(request).tenant_id, query.from_, query.to, query.zone_id
    )
    return respond(request, {"stats": rows})


class FlowsQuery(HourRange):
    pass


class FlowRow(Out):
    from_zone: str
    to_zone: str
    devices: int
    median_s: float


class Flows(RootModel[list[FlowRow]]):
    pass


@routes.route(
    "GET",
    "/v1/stats/flows",
    summary="How shoppers move: devices that left one zone and entered another within an hour",
    auth=Auth.SECRET,
    tag="stats",
    query=FlowsQuery,
    responses={200: Flows, 401: Problem, 403: Problem, 422: Problem},
    description="A JSON array of pairs; aggregates only, no device ids; pairs seen by fewer "
    "than 5 devices are left out.",
)
async def get_flows(request: web.Request) -> web.Response:
    query = validate_query(request, FlowsQuery)
    rows = await stats.flows(request.app[STORE], caller(request).tenant_id, query.from_, query.to)
    return respond(request, rows)
