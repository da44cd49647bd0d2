"""The store slow or gone: fast 503s with Retry-After, an open circuit, /readyz false, recovery
by itself, and no half-written state. Each test runs its own redis-server, which it pauses,
kills and restarts; figures are printed (run with -s to see them), never asserted as timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from geoservice.embedded_redis import EmbeddedRedis
from geoservice.http.state import STORE
from tests.conftest import OPERATOR, AppClientFactory, bearer, free_port

pytestmark = pytest.mark.slow

CIRCLE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [8.5392, 47.3717]},
    "properties": {"name": "Store", "radius_m": 100},
}


@pytest.fixture
async def own_redis() -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis(tcp_port=free_port(), debug_command=True)
    server.start()
    yield server
    server.stop()


def url_of(server: EmbeddedRedis) -> str:
    return f"redis://127.0.0.1:{server.tcp_port}/0"


async def start(make_client: AppClientFactory, server: EmbeddedRedis):
    return await make_client(
        redis_url=url_of(server),
        redis_timeout_ms=300,
        request_deadline_ms=1000,
        breaker_failures=3,
        breaker_open_ms=500,
        change_poll_block_ms=100,
    )


async def new_tenant(client) -> dict[str, str]:
    response = await client.post(
        "/v1/tenants", json={"tenant_id": "acme", "name": "Acme"}, headers=OPERATOR
    )
    assert response.status == 201
    return bearer((await response.json())["secret_key"])


async def wait_for(check, timeout_s: float = 15.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


async def test_paused_store_fast_503_open_circuit_then_recovery(make_client, own_redis):
    client = await start(make_client, own_redis)
    secret = await new_tenant(client)
    admin = Redis.from_url(url_of(own_redis))
    await admin.execute_command("CLIENT", "PAUSE", "2500", "ALL")
    started = time.monotonic()
    statuses, elapsed = [], []
    for _ in range(6):
        t = time.monotonic()
        response = await client.get("/v1/zones", headers=secret)
        elapsed.append(round(time.monotonic() - t, 3))
        statuses.append(response.status)
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
    ready = await client.get("/readyz")
    assert ready.status == 503
    print(f"\npaused store: 503 answers took {elapsed} s")
    recovered = await wait_for(
        lambda: _status_is(client.get("/v1/zones", headers=secret), 200), timeout_s=20
    )
    print(f"paused store: recovered {time.monotonic() - started:.2f} s after the pause began")
    assert (await client.get("/readyz")).status == 200
    assert recovered >= 0
    await admin.aclose()


async def _status_is(request, status: int) -> bool:
    response = await request
    return bool(response.status == status)


async def test_debug_sleep_is_a_503_not_a_hang(make_client, own_redis):
    client = await start(make_client, own_redis)
    secret = await new_tenant(client)
    admin = Redis.from_url(url_of(own_redis))
    sleeper = asyncio.create_task(admin.execute_command("DEBUG", "SLEEP", "1.5"))
    await asyncio.sleep(0.05)
    t = time.monotonic()
    response = await client.put("/v1/zones/z1", json=CIRCLE, headers=secret)
    print(f"\nDEBUG SLEEP: answered {response.status} after {time.monotonic() - t:.3f} s")
    assert response.status == 503
    await sleeper
    await wait_for(lambda: _status_is(client.get("/v1/zones", headers=secret), 200))
    # The write that timed out is all or nothing: the zone exists whole, or not at all.
    stored = await client.get("/v1/zones/z1", headers=secret)
    assert stored.status in (200, 404)
    if stored.status == 200:
        assert (await stored.json())["properties"]["radius_m"] == 100
    await admin.aclose()


async def test_killed_then_restarted_empty_store(make_client, own_redis):
    client = await start(make_client, own_redis)
    secret = await new_tenant(client)
    assert (await client.put("/v1/zones/z1", json=CIRCLE, headers=secret)).status == 201
    own_redis.stop()
    killed = time.monotonic()
    for _ in range(5):
        response = await client.get("/v1/zones", headers=secret)
        assert response.status == 503
        assert "Retry-After" in response.headers
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200  # the worker lives on
    own_redis.start()  # the same port, empty
    took = await wait_for(lambda: _status_is(client.get("/readyz"), 200))
    since_kill = time.monotonic() - killed
    print(f"\nkilled store: ready {since_kill:.2f} s after the kill, {took:.2f} s after restart")
    # The store forgot the tenant: so does the service (no stale key or zone in memory).
    await wait_for(lambda: _status_is(client.get("/v1/zones", headers=secret), 401))
    secret = await new_tenant(client)
    page = await (await client.get("/v1/zones", headers=secret)).json()
    assert page["features"] == []


async def test_import_during_outage_is_all_or_nothing(make_client, own_redis):
    client = await start(make_client, own_redis)
    secret = await new_tenant(client)
    features = [{**CIRCLE, "id": f"z{i}"} for i in range(200)]
    admin = Redis.from_url(url_of(own_redis))
    await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
    response = await client.post(
        "/v1/zones/import",
        json={"type": "FeatureCollection", "features": features},
        headers=secret,
    )
    print(f"\nimport during a write pause: {response.status}")
    await asyncio.sleep(1.6)
    await wait_for(lambda: _status_is(client.get("/v1/zones", headers=secret), 200))
    count = await admin.hlen("geo:zones:{t:acme}")
    assert count in (0, 200)
    await admin.aclose()


async def test_a_closed_store_connection_is_a_503_and_our_own_bug_a_500(
    client, monkeypatch: pytest.MonkeyPatch
):
    """The store's connections report a connection closed under them as redis-py's
    ConnectionError, whatever the transport raised (tests/test_store.py): the store not
    answering, 503 with Retry-After. An AttributeError of our own stays a 500."""
    store = client.app[STORE]
    closed = RedisConnectionError("redis connection closed under a write: TypeError(...)")
    for error, status in ((closed, 503), (AttributeError("our own bug"), 500)):

        async def ping(error: BaseException = error) -> bool:
            raise error

        monkeypatch.setattr(store, "ping", ping)
        response = await client.get("/readyz")  # it pings the store
        assert response.status == status, await response.text()
        if status == 503:
            assert response.headers["Retry-After"] == "2"
            assert (await response.json())["type"].endswith("unavailable")
