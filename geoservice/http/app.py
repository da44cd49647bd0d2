"""The application factory: routes, middleware, and every long-lived resource opened and closed
in one cleanup context each (teardown runs in reverse even when start-up fails half-way)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from geoservice import changes
from geoservice.breaker import CircuitBreaker
from geoservice.customers import Customers
from geoservice.decisions import OfferDesk
from geoservice.http import (
    customers,
    offers,
    operations,
    pings,
    redemptions,
    tenants,
    webhooks,
    zones,
)
from geoservice.http.events import routes as event_routes
from geoservice.http.middleware import BREAKER, IN_FLIGHT, edge
from geoservice.http.openapi import build_spec
from geoservice.http.pages import routes as page_routes
from geoservice.http.routing import Endpoint, EndpointTable
from geoservice.http.state import (
    BACKGROUND,
    CUSTOMERS,
    OFFERS,
    OPENAPI,
    PINGS,
    READY,
    SETTINGS,
    STORE,
    TENANTS,
    WEBHOOKS,
    ZONES,
)
from geoservice.index import load_compiled_lookups
from geoservice.offers import OfferCatalog, Offers
from geoservice.pings import Pings
from geoservice.settings import Settings
from geoservice.store import Store
from geoservice.tenants import Tenants
from geoservice.webhooks import AllowList, Deliveries, HttpSender, Webhooks, open_session
from geoservice.zones import ZoneDirectory, Zones

log = logging.getLogger(__name__)

ROUTE_TABLES: tuple[EndpointTable, ...] = (
    operations.routes,
    tenants.routes,
    zones.routes,
    pings.routes,
    offers.routes,
    customers.routes,
    redemptions.routes,
    webhooks.routes,
    event_routes,
    page_routes,
)


def all_endpoints() -> list[Endpoint]:
    return [endpoint for table in ROUTE_TABLES for endpoint in table.endpoints]


def create_app(settings: Settings) -> web.Application:
    # aiohttp's own limit is the largest any route accepts; each route enforces its own.
    app = web.Application(
        middlewares=[edge],
        client_max_size=max(settings.max_body_bytes, settings.max_import_body_bytes),
    )
    app[SETTINGS] = settings
    app[IN_FLIGHT] = [0]
    app[BREAKER] = CircuitBreaker(
        failure_threshold=settings.breaker_failures,
        open_s=settings.breaker_open_ms / 1000,
        # On a cluster one shard failing over is not the store gone: the other shards' requests
        # go on, each bounded by its own timeouts, instead of all failing fast together.
        enabled=not settings.redis_is_cluster,
    )
    app[READY] = asyncio.Event()
    app[BACKGROUND] = []
    for table in ROUTE_TABLES:
        table.add_to(app)
    app[OPENAPI] = orjson.dumps(build_spec(all_endpoints()))
    app.cleanup_ctx.append(store_context)
    app.cleanup_ctx.append(domain_context)
    app.cleanup_ctx.append(webhooks_context)
    app.cleanup_ctx.append(background_context)
    return app


async def store_context(app: web.Application) -> AsyncIterator[None]:
    store = Store.open(app[SETTINGS])
    app[STORE] = store
    yield
    await store.close()


async def domain_context(app: web.Application) -> AsyncIterator[None]:
    # Before the server listens: no request waits for the zone index's compiled code.
    load_compiled_lookups()
    app[TENANTS] = Tenants(app[STORE])
    store, settings = app[STORE], app[SETTINGS]
    directory = ZoneDirectory()
    catalog = OfferCatalog()
    app[ZONES] = Zones(store, directory)
    app[OFFERS] = Offers(store, catalog)
    app[CUSTOMERS] = Customers(store)
    desk = OfferDesk(store, catalog, app[CUSTOMERS], settings)
    app[PINGS] = Pings(store, directory, app[CUSTOMERS], desk, settings)
    yield


async def webhooks_context(app: web.Application) -> AsyncIterator[None]:
    """Registrations, and one delivery task per webhook (started as the cache learns of them)
    with the HTTP client session they share."""
    settings = app[SETTINGS]
    allow = AllowList.of(settings.webhook_allow)
    app[WEBHOOKS] = Webhooks(app[STORE], allow)
    session = open_session(allow)
    sender = HttpSender(session, allow, settings.webhook_timings.timeout_s)
    deliveries = Deliveries(app[STORE], app[WEBHOOKS], sender, settings)
    yield
    await deliveries.close()
    await session.close()


# The zone index and caches are hundreds of thousands of long-lived objects. Python's cyclic
# collector would walk all of them on every full collection (tens of ms at 20,000 zones, a
# request's whole latency budget several times over); frozen, they are skipped. They hold no
# reference cycles that need collecting: refcounting still frees what a change replaces.
FREEZE_EVERY_ITEMS = 1_000


def _freeze_heap() -> None:
    gc.collect()
    gc.freeze()


async def _load_and_follow(app: web.Application) -> None:
    """Initial load of every cache, then follow the change feed; retries while Redis is away."""
    store, tenants_, zones_, offers_ = app[STORE], app[TENANTS], app[ZONES], app[OFFERS]
    applied = 0

    async def resync() -> None:
        tenants_.forget_all()
        zone_count = offer_count = 0
        for tenant_id in await tenants_.list_ids():
            zone_count += await zones_.load_tenant(tenant_id)
            offer_count += await offers_.load_tenant(tenant_id)
        log.info("loaded %d zones and %d offers", zone_count, offer_count)
        await app[WEBHOOKS].load(await tenants_.list_ids())
        _freeze_heap()

    async def apply(change: changes.Change) -> None:
        nonlocal applied
        await tenants_.apply_change(change)
        await zones_.apply_change(change)
        await offers_.apply_change(change)
        await app[WEBHOOKS].apply_change(change)
        before = applied
        applied += change.item_id.count(",") + 1  # an import's change names its zones
        if applied // FREEZE_EVERY_ITEMS != before // FREEZE_EVERY_ITEMS:
            gc.freeze()  # what the last changes built (an import) joins the frozen heap

    task = asyncio.current_task()
    while True:
        # redis-py can turn a cancellation into a connection error: do not retry past one.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        try:
            start_id = await changes.last_id(store.redis)
            await resync()
            break
        except (RedisError, OSError) as exc:
            log.warning("initial load: store not answering (%s); retrying", exc)
            await asyncio.sleep(0.5)
    app[READY].set()
    await changes.follow(
        store.redis, start_id, apply, resync, block_ms=app[SETTINGS].change_poll_block_ms
    )


async def background_context(app: web.Application) -> AsyncIterator[None]:
    tasks = app[BACKGROUND]
    tasks.append(asyncio.create_task(_load_and_follow(app), name="change-feed"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
