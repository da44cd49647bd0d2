"""HTTP: webhooks (secret key): PUT/GET/DELETE, the paged list, and the delivery log."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, field_validator

from geoservice.http.codec import read_model, respond, validate_query
from geoservice.http.routing import Auth, EndpointTable, caller, path_id
from geoservice.http.state import SETTINGS, WEBHOOKS
from geoservice.http.wire import Out, Page, Problem, Wire
from geoservice.webhooks import (
    MAX_URL_LENGTH,
    SECRET_MAX_LENGTH,
    SECRET_MIN_LENGTH,
    url_problem,
)

routes = EndpointTable()

EventType = Literal["enter", "exit", "dwell", "offer_issued", "offer_redeemed"]


class WebhookBody(Wire):
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)] = Field(
        description="http or https, no credentials; its host must not be internal (loopback, "
        "private, link-local, …) unless GEOSERVICE_WEBHOOK_ALLOW names it"
    )
    events: Annotated[list[EventType], Field(min_length=1, max_length=5)] = Field(
        description="the event types to receive"
    )
    secret: Annotated[str, Field(min_length=SECRET_MIN_LENGTH, max_length=SECRET_MAX_LENGTH)] = (
        Field(description="signs every delivery (X-Geoservice-Signature); never shown again")
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists an event type twice")
        return value


class WebhookView(Out):
    webhook_id: str
    url: str
    events: list[str]
    secret_hint: str = Field(description="the secret's last four characters, after '…'")
    created_at: int
    updated_at: int


class WebhookPage(Out):
    webhooks: list[WebhookView]
    next_cursor: str | None


class DeliveryAttempt(Out):
    at: int = Field(description="when the attempt started (epoch ms)")
    status: int | None = Field(description="the receiver's HTTP status; null without an answer")
    error: str | None = Field(description="why it failed: HTTP status, timeout, refused, …")
    events: int = Field(description="events in the batch")
    duration_ms: int
    attempt: int = Field(description="1 for the first attempt of a batch, 2 for its retry, …")
    outcome: Literal["delivered", "failed", "dropped"]


class DeliveryLog(Out):
    deliveries: list[DeliveryAttempt]


@routes.route(
    "PUT",
    "/v1/webhooks/{webhook_id}",
    summary="Create or replace a webhook",
    auth=Auth.SECRET,
    tag="webhooks",
    body=WebhookBody,
    responses={200: WebhookView, 201: WebhookView, 401: Problem, 403: Problem, 422: Problem},
    description="A new webhook receives the events from now on; a replaced one keeps what it "
    "has not delivered yet. `422` on `url` when its host is, or resolves to, an internal "
    "address that is not allow-listed.",
)
async def put_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id")
    body, _ = await read_model(request, WebhookBody, request.app[SETTINGS].max_body_bytes)
    webhook, created = await request.app[WEBHOOKS].put(
        caller(request).tenant_id, webhook_id, body.url, body.events, body.secret
    )
    return respond(request, webhook.as_dict(), status=201 if created else 200)


@routes.route(
    "GET",
    "/v1/webhooks/{webhook_id}",
    summary="One webhook (without its secret)",
    auth=Auth.SECRET,
    tag="webhooks",
    responses={200: WebhookView, 401: Problem, 403: Problem, 404: Problem},
)
async def get_webhook(request: web.Request) -> web.Response:
    webhook = await request.app[WEBHOOKS].get(
        caller(request).tenant_id, request.match_info["webhook_id"]
    )
    return respond(request, webhook.as_dict())


@routes.route(
    "DELETE",
    "/v1/webhooks/{webhook_id}",
    summary="Delete a webhook: its deliveries stop, undelivered events are let go",
    auth=Auth.SECRET,
    tag="webhooks",
    responses={204: None, 401: Problem, 403: Problem, 404: Problem},
)
async def delete_webhook(request: web.Request) -> web.Response:
    await request.app[WEBHOOKS].delete(caller(request).tenant_id, request.match_info["webhook_id"])
    return web.Response(status=204)


@routes.route(
    "GET",
    "/v1/webhooks",
    summary="The tenant's webhooks, by id, a page at a time",
    auth=Auth.SECRET,
    tag="webhooks",
    query=Page,
    responses={200: WebhookPage, 401: Problem, 403: Problem, 422: Problem},
)
async def list_webhooks(request: web.Request) -> web.Response:
    page = validate_query(request, Page)
    webhooks, next_cursor = await request.app[WEBHOOKS].page(
        caller(request).tenant_id, page.cursor, page.limit
    )
    return respond(
        request, {"webhooks": [w.as_dict() for w in webhooks], "next_cursor": next_cursor}
    )


@routes.route(
    "GET",
    "/v1/webhooks/{webhook_id}/deliveries",
    summary="The webhook's last 100 delivery attempts, newest first",
    auth=Auth.SECRET,
    tag="webhooks",
    responses={200: DeliveryLog, 401: Problem, 403: Problem, 404: Problem},
)
async def list_deliveries(request: web.Request) -> web.Response:
    attempts = await request.app[WEBHOOKS].delivery_log(
        caller(request).tenant_id, request.match_info["webhook_id"]
    )
    return respond(request, {"deliveries": attempts})
