"""Test fixtures: a private redis-server for the session (never the machine's 6379), the app
built by the production factory, and factories that close what they open."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from geoservice.embedded_redis import EmbeddedRedis
from geoservice.http.app import create_app
from geoservice.http.state import READY
from geoservice.settings import Settings, SigningKey

OPERATOR_TOKEN = "test-operator-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tcp_port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    url = f"redis://127.0.0.1:{redis_server.tcp_port}/0"
    asyncio.run(_warm_up(url))
    return url


async def _warm_up(redis_url: str) -> None:
    """One app through the first tenant and zone write, before any test: the first zone PUT of
    a test session twice passed its 2 s request deadline in CI on a slow host (and never in
    later requests), so first-time costs of this process and of the session's Redis are paid
    here, not inside a test's request."""
    app = create_app(make_settings(redis_url))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        await asyncio.wait_for(app[READY].wait(), 60)
        response = await client.post(
            "/v1/tenants",
            json={"tenant_id": "warm-up", "name": "Warm-up", "timezone": "UTC"},
            headers=OPERATOR,
        )
        secret = bearer((await response.json())["secret_key"])
        zone = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [8.54, 47.37]},
            "properties": {"name": "Warm-up", "radius_m": 80},
        }
        await client.put("/v1/zones/warm-up", json=zone, headers=secret)
    finally:
        await client.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    base = Settings(
        redis_url=redis_url,
        operator_token=OPERATOR_TOKEN,
        signing_keys=(SigningKey("k2", b"second-signing-secret-0123456789"),),
        pseudonym_key=b"test-pseudonym-key-0123456789",
        instance_id="test",
        change_poll_block_ms=100,
    )
    return base.with_overrides(**overrides)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A raw client on the test session's own Redis; flushed before each test (ours only)."""
    client = Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


AppClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client(redis: Redis, redis_url: str) -> AsyncIterator[AppClientFactory]:
    """Start an app instance (each call another instance on the same Redis) behind a real
    aiohttp server; all are closed at the end of the test."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(
        *, wait_ready: bool = True, **overrides: Any
    ) -> TestClient[web.Request, web.Application]:
        app = create_app(make_settings(overrides.pop("redis_url", redis_url), **overrides))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        if wait_ready:
            await asyncio.wait_for(app[READY].wait(), 10)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def client(make_client: AppClientFactory) -> TestClient[web.Request, web.Application]:
    return await make_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


OPERATOR = bearer(OPERATOR_TOKEN)


@dataclass
class TenantKeys:
    tenant_id: str
    secret_key: str
    sdk_key: str

    @property
    def secret(self) -> dict[str, str]:
        return bearer(self.secret_key)

    @property
    def sdk(self) -> dict[str, str]:
        return bearer(self.sdk_key)


TenantFactory = Callable[..., Awaitable[TenantKeys]]


@pytest.fixture
def make_tenant(client: TestClient[web.Request, web.Application]) -> TenantFactory:
    async def create(tenant_id: str = "acme", timezone: str = "Europe/Zurich") -> TenantKeys:
        response = await client.post(
            "/v1/tenants",
            json={"tenant_id": tenant_id, "name": tenant_id.title(), "timezone": timezone},
            headers=OPERATOR,
        )
        assert response.status == 201, await response.text()
        body = await response.json()
        return TenantKeys(tenant_id, body["secret_key"], body["sdk_key"])

    return create


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
