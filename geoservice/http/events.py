"""HTTP: the tenant's recent events, newest first (secret key): what the console shows."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from geoservice import event_log
from geoservice.http.codec import respond, validate_query
from geoservice.http.routing import Auth, EndpointTable, caller
from geoservice.http.state import STORE
from geoservice.http.wire import Id, Out, Problem

routes = EndpointTable()


class EventsQuery(BaseModel):
    """Query strings arrive as text, so not strict: "50" is the number 50 here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    zone_id: Id | None = Field(default=None, description="only this zone's events")
    cursor: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="next_cursor of the previous page: older events"
    )


class LoggedEventOut(Out):
    id: str = Field(description="the entry's id in the event stream")
    type: str = Field(description="enter, exit, dwell, offer_issued or offer_redeemed")
    zone_id: str
    store_id: str | None
    device: str = Field(description="the device's pseudonym (never the device id)")
    at: int = Field(description="epoch ms: the ping's time, or when the offer was issued/redeemed")
    offer_id: str | None = Field(description="offer events only")
    issued_id: str | None = Field(description="offer events only: the issued offer's id")


class EventsPage(Out):
    events: list[LoggedEventOut]
    next_cursor: str | None


@routes.route(
    "GET",
    "/v1/events",
    summary="The tenant's recent events and issued offers, newest first",
    auth=Auth.SECRET,
    tag="events",
    query=EventsQuery,
    responses={200: EventsPage, 401: Problem, 403: Problem, 422: Problem},
    description="Read from the tenant's capped event stream (the newest 100,000 entries). With "
    "`zone_id`, one request looks at no more than 10,000 entries; `next_cursor` goes on from "
    "there.",
)
async def list_events(request: web.Request) -> web.Response:
    query = validate_query(request, EventsQuery)
    events, next_cursor = await event_log.recent(
        request.app[STORE], caller(request).tenant_id, query.limit, query.zone_id, query.cursor
    )
    return respond(request, {"events": [e.as_dict() for e in events], "next_cursor": next_cursor})
