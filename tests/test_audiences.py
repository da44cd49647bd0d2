"""Audiences and path analysis: each audience rule by hand (birthdays across the year end and
29 February), the CRM profile API, stats by segment, and a mall walked by 20 devices."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from geoservice.customers import Profile
from geoservice.offers import audience_admits, days_to_birthday
from tests.conftest import AppClientFactory, TenantFactory, TenantKeys

DAY = 86_400_000
ZURICH = "Europe/Zurich"


def at(year: int, month: int, day: int, hour: int = 12, tz: str = ZURICH) -> int:
    return int(datetime(year, month, day, hour, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


@pytest.mark.parametrize(
    ("birthday", "today", "days"),
    [
        ("03-14", date(2026, 3, 14), 0),
        ("03-14", date(2026, 3, 10), 4),
        ("03-14", date(2026, 3, 15), 364),  # just past: next year's (2027 is not a leap year)
        ("01-02", date(2026, 12, 30), 3),  # across the year end
        ("12-31", date(2027, 1, 1), 364),
        ("02-29", date(2027, 2, 25), 3),  # 2027 has no 29 February: the 28th
        ("02-29", date(2028, 2, 25), 4),  # 2028 has one
        ("02-29", date(2027, 3, 1), 365),  # next: 29 February 2028
    ],
)
def test_days_to_birthday(birthday: str, today: date, days: int):
    assert days_to_birthday(birthday, today) == days


def test_birthday_within_days_uses_the_zones_time_zone():
    profile = Profile(birthday="01-01")
    audience = {"birthday_within_days": 0}
    # 23:30 UTC on 31 December is already 1 January in Zurich, still 31 December in New York.
    now = int(datetime(2026, 12, 31, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    assert audience_admits(audience, profile, ZURICH, now) is True
    assert audience_admits(audience, profile, "America/New_York", now) is False
    assert audience_admits({"birthday_within_days": 7}, Profile(), ZURICH, now) is False


def test_segments_any_of():
    premium = Profile(segments=("premium", "truffle-lovers"))
    assert audience_admits({"segments": ["premium", "students"]}, premium, ZURICH, 0)
    assert not audience_admits({"segments": ["students"]}, premium, ZURICH, 0)
    assert not audience_admits({"segments": ["premium"]}, None, ZURICH, 0)


def test_lapsed_and_new():
    now = at(2026, 11, 23)
    lapsed = Profile(first_purchase_at_ms=now - 400 * DAY, last_purchase_at_ms=now - 100 * DAY)
    fresh = Profile(first_purchase_at_ms=now - 10 * DAY, last_purchase_at_ms=now - 2 * DAY)
    never = Profile()
    assert audience_admits({"lapsed_days": 90}, lapsed, ZURICH, now)
    assert not audience_admits({"lapsed_days": 90}, fresh, ZURICH, now)
    assert not audience_admits({"lapsed_days": 90}, never, ZURICH, now)
    assert audience_admits({"new_within_days": 30}, fresh, ZURICH, now)
    assert not audience_admits({"new_within_days": 30}, lapsed, ZURICH, now)
    assert not audience_admits({"new_within_days": 30}, never, ZURICH, now)
    # Every condition must hold.
    both = {"lapsed_days": 90, "segments": ["premium"]}
    assert not audience_admits(both, lapsed, ZURICH, now)
    assert audience_admits(both, Profile(("premium",), None, None, now - 100 * DAY), ZURICH, now)


# --- over HTTP -------------------------------------------------------------------------------

LAT, LON = 47.3717, 8.5392
FAR = (47.40, 8.60)


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def api(make_client: AppClientFactory):
    return await make_client(ping_rate_per_s=1000.0, ping_burst=1000)


@pytest.fixture
async def shop(api, make_tenant: TenantFactory) -> TenantKeys:
    keys = await make_tenant()
    zone = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [LON, LAT]},
        "properties": {"name": "Store", "store_id": "s-1", "radius_m": 80},
    }
    assert (await api.put("/v1/zones/store", json=zone, headers=keys.secret)).status == 201
    return keys


async def enter(api, keys: TenantKeys, device: str, customer: str | None) -> list[str]:
    body = {
        "device_id": device,
        "consent": {"location": True, "marketing": True},
        "pings": [{"lat": LAT, "lon": LON, "accuracy_m": 5, "ts": now_ms()}],
    }
    if customer:
        body["customer_id"] = customer
    response = await api.post("/v1/pings", json=body, headers=keys.sdk)
    assert response.status == 200
    return [o["offer_id"] for o in (await response.json())["offers"]]


async def test_offer_audience_over_http(api, shop):
    await api.put(
        "/v1/offers/premium-only",
        json={"title": "For premium", "fallback": True, "audience": {"segments": ["premium"]}},
        headers=shop.secret,
    )
    await api.put("/v1/customers/c-premium", json={"segments": ["premium"]}, headers=shop.secret)
    await api.put("/v1/customers/c-basic", json={"segments": ["basic"]}, headers=shop.secret)
    assert await enter(api, shop, "d1", "c-premium") == ["premium-only"]
    assert await enter(api, shop, "d2", "c-basic") == []
    assert await enter(api, shop, "d3", None) == []  # no customer: never an audience offer


async def test_profile_validation(api, shop):
    response = await api.put(
        "/v1/customers/c1",
        json={
            "segments": ["ok", "not ok"],
            "birthday": "02-30",
            "first_purchase_at": -1,
            "age": 42,
        },
        headers=shop.secret,
    )
    assert response.status == 422
    fields = sorted(e["field"] for e in (await response.json())["errors"])
    assert fields == ["age", "birthday", "first_purchase_at", "segments[1]"]
    response = await api.put(
        "/v1/customers/c1", json={"birthday": "02-29", "segments": ["a"]}, headers=shop.secret
    )
    assert response.status == 200
    assert (await response.json())["birthday"] == "02-29"
    export = await (await api.get("/v1/customers/c1/export", headers=shop.secret)).json()
    assert export["profile"]["segments"] == ["a"]


async def test_profile_import_all_or_nothing(api, shop, redis):
    good = [{"customer_id": f"c{i}", "segments": ["premium"]} for i in range(3)]
    bad = [*good, {"customer_id": "c9", "birthday": "13-01"}, {"customer_id": "c0"}]
    response = await api.post("/v1/customers/import", json={"customers": bad}, headers=shop.secret)
    assert response.status == 422
    fields = sorted(e["field"] for e in (await response.json())["errors"])
    assert fields == ["customers[3].birthday"]
    assert [k async for k in redis.scan_iter("geo:profile:*")] == []
    response = await api.post(
        "/v1/customers/import",
        json={"customers": [*good, {"customer_id": "c0"}]},
        headers=shop.secret,
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["customers[3].customer_id"]
    response = await api.post("/v1/customers/import", json={"customers": good}, headers=shop.secret)
    assert response.status == 200
    assert await response.json() == {"imported": 3}
    assert len([k async for k in redis.scan_iter("geo:profile:*")]) == 3


async def test_stats_by_segment(api, shop):
    await api.put(
        "/v1/offers/welcome",
        json={"title": "Welcome", "fallback": True, "max_per_customer": 5},
        headers=shop.secret,
    )
    await api.put("/v1/customers/c1", json={"segments": ["premium"]}, headers=shop.secret)
    await api.put("/v1/customers/c2", json={"segments": ["premium", "new"]}, headers=shop.secret)
    body = {
        "device_id": "d1",
        "customer_id": "c1",
        "consent": {"location": True, "marketing": True},
        "pings": [{"lat": LAT, "lon": LON, "accuracy_m": 5, "ts": now_ms()}],
    }
    offer = (await (await api.post("/v1/pings", json=body, headers=shop.sdk)).json())["offers"][0]
    await enter(api, shop, "d2", "c2")
    await enter(api, shop, "d3", None)
    await api.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s-1"}, headers=shop.secret
    )
    t = now_ms()
    response = await api.get(
        "/v1/stats",
        params={"from": str(t - DAY), "to": str(t + 3_600_000), "group_by": "segment"},
        headers=shop.secret,
    )
    assert response.status == 200
    totals: dict[str, tuple[int, int]] = {}
    for row in (await response.json())["stats"]:
        issued, redeemed = totals.get(row["segment"], (0, 0))
        totals[row["segment"]] = (issued + row["offers_issued"], redeemed + row["redemptions"])
    assert totals == {"premium": (2, 1), "new": (1, 0), "(none)": (1, 0)}


async def test_mall_flows_entrance_shop_parking(api, make_tenant: TenantFactory):
    keys = await make_tenant("mall")

    def box(lon: float, lat: float) -> dict:
        ring = [
            [lon, lat],
            [lon + 0.001, lat],
            [lon + 0.001, lat + 0.001],
            [lon, lat + 0.001],
            [lon, lat],
        ]
        return {"type": "Polygon", "coordinates": [ring]}

    # Three zones 0.003° of longitude (~225 m) apart along a street.
    places = {"entrance": 8.500, "shop": 8.503, "parking": 8.506, "cafe": 8.509}
    for zone_id, lon in places.items():
        feature = {"type": "Feature", "geometry": box(lon, 47.0), "properties": {"name": zone_id}}
        assert (
            await api.put(f"/v1/zones/{zone_id}", json=feature, headers=keys.secret)
        ).status == 201

    def spot(zone_id: str) -> tuple[float, float]:
        return 47.0005, places[zone_id] + 0.0005

    gap = (47.0005, 8.5025)  # between the zones, beyond every exit margin
    t0 = now_ms() - 2 * 3_600_000

    async def walk(device: str, route: list[str], seconds_between: int) -> None:
        pings, t = [], t0
        for zone_id in route:
            pings.append(
                {"lat": spot(zone_id)[0], "lon": spot(zone_id)[1], "accuracy_m": 5, "ts": t}
            )
            t += 120_000
            pings.append({"lat": gap[0], "lon": gap[1], "accuracy_m": 5, "ts": t})
            t += seconds_between * 1000
        response = await api.post(
            "/v1/pings",
            json={"device_id": device, "consent": {"location": True}, "pings": pings},
            headers=keys.sdk,
        )
        assert response.status == 200

    # 20 devices: entrance -> shop -> parking, 60 + i seconds between leaving and entering.
    await asyncio.gather(
        *(walk(f"d{i}", ["entrance", "shop", "parking"], 60 + i) for i in range(20))
    )
    # 3 devices go shop -> cafe: too few to be shown.
    await asyncio.gather(*(walk(f"c{i}", ["shop", "cafe"], 30) for i in range(3)))
    t = now_ms()
    response = await api.get(
        "/v1/stats/flows",
        params={"from": str(t - 5 * 3_600_000), "to": str(t)},
        headers=keys.secret,
    )
    assert response.status == 200
    # The median of 60..79 s is (69 + 70) / 2.
    assert await response.json() == [
        {"from_zone": "entrance", "to_zone": "shop", "devices": 20, "median_s": 69.5},
        {"from_zone": "shop", "to_zone": "parking", "devices": 20, "median_s": 69.5},
    ]
