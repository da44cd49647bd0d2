"""Security matrices over every route of the endpoint table (new routes are covered the day
they are added): keys of the wrong kind, missing keys, tenant A's key on tenant B's ids, the
redemption rate limit, and a TTL on every key that holds personal data."""

from __future__ import annotations

import re
import time

import pytest
from redis.asyncio import Redis

from geoservice.http.app import all_endpoints
from geoservice.http.routing import Auth
from tests.conftest import OPERATOR, AppClientFactory, TenantFactory, TenantKeys, bearer
from tests.redis_state import state_of

LAT, LON = 47.3717, 8.5392


def now_ms() -> int:
    return int(time.time() * 1000)


def sample_body(method: str, path: str) -> dict | None:
    """A valid body for each route that takes one, so a refusal is about the key or the id."""
    zone = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [LON, LAT]},
        "properties": {"name": "Z", "radius_m": 50},
    }
    bodies = {
        ("POST", "/v1/tenants"): {"tenant_id": "x-new", "name": "X"},
        ("POST", "/v1/tenants/{tenant_id}/keys/rotate"): {"kind": "sdk"},
        ("PATCH", "/v1/tenant"): {"max_offers_per_day": 4},
        ("PUT", "/v1/zones/{zone_id}"): zone,
        ("POST", "/v1/zones/import"): {
            "type": "FeatureCollection",
            "features": [{**zone, "id": "imported"}],
        },
        ("POST", "/v1/pings"): {
            "device_id": "d",
            "consent": {"location": True, "marketing": True},
            "pings": [{"lat": LAT, "lon": LON, "accuracy_m": 5, "ts": now_ms()}],
        },
        ("PUT", "/v1/offers/{offer_id}"): {"title": "T", "fallback": True},
        ("POST", "/v1/interests"): {
            "events": [{"customer_id": "c", "kind": "view", "product_id": "p", "ts": now_ms()}]
        },
        ("PUT", "/v1/customers/{customer_id}/consent"): {
            "location": True,
            "marketing": True,
            "source": "test",
        },
        ("PUT", "/v1/customers/{customer_id}"): {"segments": ["premium"]},
        ("POST", "/v1/customers/import"): {"customers": [{"customer_id": "c9"}]},
        ("POST", "/v1/redemptions"): {"token": "x.y", "store_id": "s"},
        ("PUT", "/v1/webhooks/{webhook_id}"): {
            "url": "https://hooks.example.com/geo",
            "events": ["enter"],
            "secret": "0123456789abcdef0123",
        },
    }
    return bodies.get((method, path))


def concrete(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids.get(m.group(1), "nothing-here"), path)


async def call(client, method: str, path: str, headers: dict[str, str]):
    body = (
        sample_body(method, re.sub(r"\?.*", "", path))
        if method in ("POST", "PUT", "PATCH")
        else None
    )
    return await client.request(method, path, json=body, headers=headers)


def query_for(path: str) -> str:
    return "?from=0&to=3600000" if path.startswith("/v1/stats") else ""


async def test_sdk_key_is_403_on_every_admin_route(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    checked = []
    for endpoint in all_endpoints():
        if endpoint.auth not in (Auth.SECRET, Auth.OPERATOR):
            continue
        path = concrete(endpoint.path, {"tenant_id": "acme"}) + query_for(endpoint.path)
        response = await call(client, endpoint.method, path, keys.sdk)
        assert response.status == 403, (endpoint.method, endpoint.path)
        checked.append(endpoint.path)
    assert len(checked) >= 15


async def test_secret_key_and_operator_token_are_403_on_the_sdk_route(
    client, make_tenant: TenantFactory
):
    keys = await make_tenant()
    sdk_routes = [e for e in all_endpoints() if e.auth is Auth.SDK]
    assert sdk_routes
    for endpoint in sdk_routes:
        for headers in (keys.secret, OPERATOR):
            response = await call(client, endpoint.method, endpoint.path, headers)
            assert response.status == 403, endpoint.path


async def test_operator_token_is_403_on_tenant_routes(client, make_tenant: TenantFactory):
    await make_tenant()
    for endpoint in all_endpoints():
        if endpoint.auth is Auth.SECRET:
            path = concrete(endpoint.path, {}) + query_for(endpoint.path)
            response = await call(client, endpoint.method, path, OPERATOR)
            assert response.status == 403, (endpoint.method, endpoint.path)


async def test_every_keyed_route_is_401_without_or_with_an_unknown_key(client):
    for endpoint in all_endpoints():
        if endpoint.auth is Auth.NONE:
            continue
        path = concrete(endpoint.path, {"tenant_id": "acme"}) + query_for(endpoint.path)
        for headers in ({}, bearer("sk_unknown"), bearer("pk_unknown")):
            response = await call(client, endpoint.method, path, headers)
            assert response.status == 401, (endpoint.method, endpoint.path, headers)


async def tenant_state(redis: Redis, tenant_id: str) -> dict[bytes, object]:
    """Every key that belongs to the tenant (its tag or its customers' tag), with its value;
    not A's own attempts (its event stream and rate bucket)."""

    def belongs(key: bytes) -> bool:
        ours = f"t:{tenant_id}}}".encode() in key or f"c:{tenant_id}:".encode() in key
        return ours and b"events:" not in key and b"redeem-rate" not in key

    return await state_of(redis, belongs)


@pytest.fixture
async def two_tenants(
    make_client: AppClientFactory, make_tenant: TenantFactory
) -> tuple[object, TenantKeys, TenantKeys, dict[str, str]]:
    client = await make_client(ping_rate_per_s=1000.0, ping_burst=1000)
    a = await make_tenant("tenant-a")
    b = await make_tenant("tenant-b")
    ids = {
        "zone_id": "b-zone",
        "offer_id": "b-offer",
        "customer_id": "b-customer",
        "webhook_id": "b-hook",
    }
    zone = sample_body("PUT", "/v1/zones/{zone_id}")
    assert (await client.put("/v1/zones/b-zone", json=zone, headers=b.secret)).status == 201
    offer = {"title": "B only", "fallback": True}
    assert (await client.put("/v1/offers/b-offer", json=offer, headers=b.secret)).status == 201
    await client.put(
        "/v1/customers/b-customer/consent",
        json={"location": True, "marketing": True, "source": "b"},
        headers=b.secret,
    )
    await client.put("/v1/customers/b-customer", json={"segments": ["vip"]}, headers=b.secret)
    response = await client.post(
        "/v1/pings",
        json={
            "device_id": "b-phone",
            "customer_id": "b-customer",
            "consent": {"location": True, "marketing": True},
            "pings": [{"lat": LAT, "lon": LON, "accuracy_m": 5, "ts": now_ms()}],
        },
        headers=b.sdk,
    )
    offers = (await response.json())["offers"]
    ids["token"] = offers[0]["token"]
    return client, a, b, ids


async def test_bola_matrix_a_key_on_b_ids_is_answered_like_missing_and_changes_nothing(
    two_tenants, redis: Redis
):
    client, a, b, ids = two_tenants
    before = await tenant_state(redis, "tenant-b")
    assert before  # B has data to protect
    checked = 0
    for endpoint in all_endpoints():
        if endpoint.auth is not Auth.SECRET or "{" not in endpoint.path:
            continue
        on_b = concrete(endpoint.path, ids)
        on_nothing = concrete(endpoint.path, {})
        answer_b = await call(client, endpoint.method, on_b, a.secret)
        answer_nothing = await call(client, endpoint.method, on_nothing, a.secret)
        assert answer_b.status == answer_nothing.status, (endpoint.method, endpoint.path)
        if endpoint.method == "GET" and answer_b.status == 200:
            # e.g. an export of an unknown customer: empty, with nothing of B in it
            assert b"vip" not in await answer_b.read()
        checked += 1
    assert checked >= 8
    # B's token at A's till.
    response = await client.post(
        "/v1/redemptions", json={"token": ids["token"], "store_id": "s"}, headers=a.secret
    )
    assert response.status == 422
    assert await tenant_state(redis, "tenant-b") == before
    # And B still works.
    response = await client.post(
        "/v1/redemptions", json={"token": ids["token"], "store_id": "s"}, headers=b.secret
    )
    assert response.status == 200


async def test_redemption_attempts_are_rate_limited(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    client = await make_client(redemption_rate_per_s=1.0, redemption_burst=3)
    keys = await make_tenant()
    statuses = []
    for _ in range(5):
        response = await client.post(
            "/v1/redemptions", json={"token": "guess.guess", "store_id": "s"}, headers=keys.secret
        )
        statuses.append(response.status)
    assert statuses == [422, 422, 422, 429, 429]
    assert int(response.headers["Retry-After"]) >= 1


PERSONAL = (
    b"geo:dev:",
    b"geo:dev-consent:",
    b"geo:dev-rate:",
    b"geo:interests:",
    b"geo:consent:",
    b"geo:devices:",
    b"geo:profile:",
    b"geo:caps:",
    b"geo:offer-counts:",
    b"geo:issued-ids:",
    b"geo:issued:",
)


async def test_every_key_holding_personal_data_has_a_ttl(two_tenants, redis: Redis):
    client, _, b, ids = two_tenants
    await client.post(
        "/v1/interests",
        json={
            "events": [
                {"customer_id": "b-customer", "kind": "view", "product_id": "p", "ts": now_ms()}
            ]
        },
        headers=b.secret,
    )
    await client.post(
        "/v1/redemptions", json={"token": ids["token"], "store_id": "s"}, headers=b.secret
    )
    seen = set()
    async for key in redis.scan_iter():
        prefix = next((p for p in PERSONAL if key.startswith(p)), None)
        if prefix is None:
            continue
        seen.add(prefix)
        assert await redis.ttl(key) > 0, key
    # The rate bucket may already have expired (it lives a second or two): every other kind
    # must have been seen, so the check above really ran over each of them.
    assert set(PERSONAL) - {b"geo:dev-rate:"} <= seen
