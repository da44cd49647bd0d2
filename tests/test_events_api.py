"""GET /v1/events: the tenant's recent events newest first, filtered by zone, paged, keyed."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from geoservice import event_log, keys
from tests.conftest import AppClientFactory, TenantFactory, TenantKeys, bearer

LAT, LON = 47.3717, 8.5392
STORE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [LON, LAT]},
    "properties": {"name": "Bahnhofstrasse", "store_id": "s-12", "radius_m": 100},
}
KIOSK = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [8.5403, 47.3779]},
    "properties": {"name": "Kiosk", "radius_m": 50},
}
FAR = {"lat": 47.0, "lon": 8.0}


@pytest.fixture
async def api(make_client: AppClientFactory):
    return await make_client(ping_rate_per_s=1000.0, ping_burst=1000)


@pytest.fixture
async def shop(api, make_tenant: TenantFactory) -> TenantKeys:
    tenant = await make_tenant()
    for zone_id, feature in (("store", STORE), ("kiosk", KIOSK)):
        response = await api.put(f"/v1/zones/{zone_id}", json=feature, headers=tenant.secret)
        assert response.status == 201, await response.text()
    offer = {"title": "A free espresso", "fallback": True, "zone_ids": ["kiosk"]}
    response = await api.put("/v1/offers/espresso", json=offer, headers=tenant.secret)
    assert response.status == 201, await response.text()
    return tenant


async def ping(api, tenant: TenantKeys, device: str, *positions: dict, t0: int) -> dict:
    body = {
        "device_id": device,
        "consent": {"location": True, "marketing": True},
        "pings": [{**p, "accuracy_m": 10, "ts": t0 + i * 1000} for i, p in enumerate(positions)],
    }
    response = await api.post("/v1/pings", json=body, headers=tenant.sdk)
    assert response.status == 200, await response.text()
    answer: dict = await response.json()
    return answer


async def events(api, tenant: TenantKeys, **query) -> tuple[int, dict]:
    response = await api.get("/v1/events", params=query, headers=tenant.secret)
    return response.status, await response.json()


async def test_newest_first_with_pseudonyms_and_offers(api, shop):
    t0 = int(time.time() * 1000) - 5_000
    await ping(api, shop, "phone-1", {"lat": LAT, "lon": LON}, FAR, t0=t0)
    answer = await ping(api, shop, "phone-1", {"lat": 47.3779, "lon": 8.5403}, t0=t0 + 3_000)
    assert [o["offer_id"] for o in answer["offers"]] == ["espresso"]

    status, page = await events(api, shop)
    assert status == 200
    assert page["next_cursor"] is None
    listed = [(e["type"], e["zone_id"]) for e in page["events"]]
    assert listed == [
        ("offer_issued", "kiosk"),
        ("enter", "kiosk"),
        ("exit", "store"),
        ("enter", "store"),
    ]
    newest = page["events"][0]
    assert newest["offer_id"] == "espresso"
    assert newest["issued_id"] == answer["offers"][0]["id"]
    enter_store = page["events"][-1]
    assert enter_store["at"] == t0
    assert enter_store["store_id"] == "s-12"
    assert enter_store["offer_id"] is None
    # The device is shown by its pseudonym, never by the id the app sent.
    assert {e["device"] for e in page["events"]} == {enter_store["device"]}
    assert "phone-1" not in str(page)


async def test_zone_filter_and_paging(api, shop):
    t0 = int(time.time() * 1000) - 60_000
    for n in range(3):
        inside, outside = {"lat": LAT, "lon": LON}, FAR
        await ping(api, shop, f"d-{n}", inside, outside, t0=t0 + n * 5_000)
    await ping(api, shop, "k-1", {"lat": 47.3779, "lon": 8.5403}, t0=t0)

    status, page = await events(api, shop, zone_id="store", limit="4")
    assert status == 200
    assert [e["zone_id"] for e in page["events"]] == ["store"] * 4
    assert page["next_cursor"] is not None
    status, rest = await events(api, shop, zone_id="store", limit="4", cursor=page["next_cursor"])
    assert status == 200
    assert len(rest["events"]) == 2
    assert rest["next_cursor"] is None
    seen = [e["id"] for e in page["events"] + rest["events"]]
    assert len(set(seen)) == 6
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)

    status, kiosk = await events(api, shop, zone_id="kiosk")
    assert {e["type"] for e in kiosk["events"]} == {"enter", "offer_issued"}


async def test_limits_and_cursors_are_checked(api, shop):
    for bad in ("0", "1001", "ten", "-1", "1.5"):
        status, problem = await events(api, shop, limit=bad)
        assert status == 422, bad
        assert problem["errors"][0]["field"] == "limit"
    status, problem = await events(api, shop, cursor="not-a-cursor!")
    assert status == 422
    assert problem["errors"][0]["field"] == "cursor"
    status, problem = await events(api, shop, zone_id="no spaces allowed")
    assert status == 422
    status, problem = await events(api, shop, unknown="1")
    assert status == 422


async def test_keys_and_tenants(api, shop, make_tenant: TenantFactory):
    response = await api.get("/v1/events")
    assert response.status == 401
    response = await api.get("/v1/events", headers=shop.sdk)
    assert response.status == 403
    response = await api.get("/v1/events", headers=bearer("sk_not_a_key"))
    assert response.status == 401
    await ping(api, shop, "phone-1", {"lat": LAT, "lon": LON}, t0=int(time.time() * 1000))
    other = await make_tenant("other")
    status, page = await events(api, other)
    assert status == 200
    assert page == {"events": [], "next_cursor": None}


async def test_zone_filter_reads_a_bounded_number_of_entries(
    api, shop, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(event_log, "MAX_SCANNED", 50)
    stream = keys.events(shop.tenant_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(stream, {"type": "enter", "zone": "store", "device": "p", "at": 1})
        for n in range(120):
            pipe.xadd(stream, {"type": "enter", "zone": "busy", "device": "p", "at": n + 2})
        await pipe.execute()
    status, page = await events(api, shop, zone_id="store")
    assert status == 200
    assert page["events"] == []
    assert page["next_cursor"] is not None  # nothing yet, but the stream goes on
    found: list[dict] = []
    cursor = page["next_cursor"]
    for _ in range(5):
        status, page = await events(api, shop, zone_id="store", cursor=cursor)
        found += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["at"] for e in found] == [1]
    assert cursor is None
