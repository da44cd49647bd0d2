"""Pings: hand-computed trajectories through a circle and a polygon, the ordering rules,
consent, concurrency, rate limits, and what is (not) stored."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from geoservice import keys
from geoservice.customers import Customers
from geoservice.http.state import ZONES
from tests.conftest import AppClientFactory, TenantFactory, TenantKeys

# A store on Bahnhofstrasse: circle of 100 m. A mall square 0.002° of longitude east of it.
LAT0, LON0 = 47.3717, 8.5392
M_PER_DEG_LAT = math.pi * 6_371_008.8 / 180  # great-circle metres per degree of latitude


def north(metres: float) -> tuple[float, float]:
    """A point `metres` due north of the circle's centre (great-circle distance exactly that)."""
    return LAT0 + metres / M_PER_DEG_LAT, LON0


def fix(position: tuple[float, float], ts: int, accuracy_m: float = 10.0, **extra: object):
    return {"lat": position[0], "lon": position[1], "accuracy_m": accuracy_m, "ts": ts, **extra}


STORE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [LON0, LAT0]},
    "properties": {"name": "Bahnhofstrasse", "store_id": "s-12", "radius_m": 100, "dwell_s": 300},
}
MALL_RING = [[8.55, 47.36], [8.56, 47.36], [8.56, 47.37], [8.55, 47.37], [8.55, 47.36]]
MALL = {
    "type": "Feature",
    "geometry": {"type": "Polygon", "coordinates": [MALL_RING]},
    "properties": {"name": "Mall", "store_id": "mall-1", "dwell_s": 60},
}
CONSENT = {"location": True, "marketing": True}


@pytest.fixture
async def fast_client(make_client: AppClientFactory):
    # Trajectory tests post many requests per device quickly: lift the rate limit.
    return await make_client(ping_rate_per_s=1000.0, ping_burst=1000)


@pytest.fixture
async def shop(fast_client, make_tenant: TenantFactory) -> TenantKeys:
    keys = await make_tenant()
    for zone_id, feature in (("store", STORE), ("mall", MALL)):
        response = await fast_client.put(f"/v1/zones/{zone_id}", json=feature, headers=keys.secret)
        assert response.status == 201, await response.text()
    return keys


def base_ts() -> int:
    return int(time.time() * 1000) - 3_600_000


async def post(client, keys: TenantKeys, pings, device="d-1", consent=CONSENT, **extra):
    body = {"device_id": device, "pings": pings, **extra}
    if consent is not None:
        body["consent"] = consent
    response = await client.post("/v1/pings", json=body, headers=keys.sdk)
    return response.status, await response.json()


def events_of(answer) -> list[tuple[str, str, int]]:
    return [(e["type"], e["zone_id"], e["at"]) for e in answer["events"]]


def walk(t0: int) -> tuple[list[dict], list[tuple[str, str, int]]]:
    """The circle trajectory and the events computed by hand (radius 100 m, margin 30 m,
    dwell 300 s)."""
    t = [t0 + s * 1000 for s in (0, 10, 20, 30, 40, 50, 350, 410, 420, 430, 740)]
    pings = [
        fix(north(200), t[0]),  # outside: nothing
        fix(north(50), t[1]),  # inside: enter
        fix(north(110), t[2]),  # 10 m out, within the 30 m margin: still inside
        fix(north(95), t[3]),  # inside again: nothing
        fix(north(140), t[4]),  # 40 m out: exit
        fix(north(0), t[5]),  # centre: enter (a new visit)
        fix(north(10), t[6]),  # 300 s inside: dwell
        fix(north(20), t[7]),  # still inside: dwell only once per visit
        fix(north(500), t[8]),  # far: exit
        fix(north(60), t[9]),  # enter (third visit)
        fix(north(70), t[10]),  # 310 s later: dwell again
    ]
    expected = [
        ("enter", "store", t[1]),
        ("exit", "store", t[4]),
        ("enter", "store", t[5]),
        ("dwell", "store", t[6]),
        ("exit", "store", t[8]),
        ("enter", "store", t[9]),
        ("dwell", "store", t[10]),
    ]
    return pings, expected


async def test_circle_trajectory_in_one_batch(fast_client, shop):
    pings, expected = walk(base_ts())
    status, answer = await post(fast_client, shop, pings)
    assert status == 200, answer
    assert events_of(answer) == expected
    assert answer["ignored"] == []
    assert answer["offers"] == []
    assert {e["store_id"] for e in answer["events"]} == {"s-12"}


async def test_circle_trajectory_one_ping_per_request(fast_client, shop):
    pings, expected = walk(base_ts())
    seen = []
    for ping in pings:
        status, answer = await post(fast_client, shop, [ping])
        assert status == 200
        seen += events_of(answer)
    assert seen == expected


async def test_batch_out_of_order_is_taken_in_ts_order(fast_client, shop):
    pings, expected = walk(base_ts())
    shuffled = pings[::2] + pings[1::2]
    status, answer = await post(fast_client, shop, shuffled)
    assert status == 200
    assert events_of(answer) == expected
    assert answer["ignored"] == []


async def test_resend_is_stale_and_fires_nothing(fast_client, shop):
    pings, expected = walk(base_ts())
    _, first = await post(fast_client, shop, pings)
    assert events_of(first) == expected
    _, again = await post(fast_client, shop, pings)
    assert again["events"] == []
    assert again["ignored"] == [{"index": i, "reason": "stale"} for i in range(len(pings))]


async def test_older_ping_after_newer_is_stale(fast_client, shop):
    t0 = base_ts()
    await post(fast_client, shop, [fix(north(0), t0 + 5000)])
    _, answer = await post(fast_client, shop, [fix(north(500), t0), fix(north(500), t0 + 6000)])
    assert answer["ignored"] == [{"index": 0, "reason": "stale"}]
    assert events_of(answer) == [("exit", "store", t0 + 6000)]


async def test_future_too_old_and_inaccurate_are_ignored(fast_client, shop):
    now = int(time.time() * 1000)
    pings = [
        fix(north(0), now - 1000, accuracy_m=150.0),  # over max_accuracy_m (100)
        fix(north(0), now + 6 * 60_000),  # over 5 min in the future
        fix(north(0), now - 25 * 3_600_000),  # over 24 h old
        fix(north(0), now - 2000),  # counts
    ]
    status, answer = await post(fast_client, shop, pings)
    assert status == 200
    assert answer["ignored"] == [
        {"index": 0, "reason": "inaccurate"},
        {"index": 1, "reason": "future"},
        {"index": 2, "reason": "too_old"},
    ]
    assert events_of(answer) == [("enter", "store", now - 2000)]


async def test_age_ms_overrides_a_wrong_wall_clock(fast_client, shop):
    wrong_clock = 978_307_200_000  # the phone thinks it is 2001
    before = int(time.time() * 1000)
    status, answer = await post(fast_client, shop, [fix(north(0), wrong_clock, age_ms=1500)])
    after = int(time.time() * 1000)
    assert status == 200
    assert answer["ignored"] == []
    [event] = answer["events"]
    assert before - 1500 <= event["at"] <= after - 1500


async def test_polygon_enter_dwell_exit(fast_client, shop):
    t0 = base_ts()
    inside, outside_near, outside_far = (47.365, 8.555), (47.365, 8.5603), (47.365, 8.57)
    # 8.5603 is ~23 m east of the mall's edge at 8.56 (cos 47.365 * 111.32 km per degree).
    pings = [
        fix(outside_far, t0),
        fix(inside, t0 + 1000),
        fix(outside_near, t0 + 2000),
        fix(inside, t0 + 61_000),
        fix(outside_far, t0 + 62_000),
    ]
    _, answer = await post(fast_client, shop, pings)
    assert events_of(answer) == [
        ("enter", "mall", t0 + 1000),
        ("dwell", "mall", t0 + 61_000),
        ("exit", "mall", t0 + 62_000),
    ]


async def test_without_consent_403_and_nothing_stored(fast_client, shop, redis: Redis):
    before = sorted([k async for k in redis.scan_iter("geo:dev*")])
    status, answer = await post(fast_client, shop, [fix(north(0), base_ts())], consent=None)
    assert status == 403
    assert "consent" in answer["detail"]
    status, _ = await post(
        fast_client, shop, [fix(north(0), base_ts())], consent={"location": False}
    )
    assert status == 403
    assert [k async for k in redis.scan_iter("geo:dev:*")] == []
    assert [
        k
        for k in sorted([k async for k in redis.scan_iter("geo:dev*")])
        if b"dev-consent" not in k and b"dev-rate" not in k
    ] == before


async def test_consent_is_recorded_with_its_time(fast_client, shop, redis: Redis):
    t0 = base_ts()
    status, _ = await post(fast_client, shop, [fix(north(0), t0)])
    assert status == 200
    [consent_key] = [k async for k in redis.scan_iter("geo:dev-consent:*")]
    record = await redis.hgetall(consent_key)
    assert record[b"loc"] == b"1"
    assert record[b"mkt"] == b"1"
    assert abs(int(record[b"at"]) - time.time() * 1000) < 60_000
    assert await redis.ttl(consent_key) > 0
    # Later requests need not repeat it.
    status, _ = await post(fast_client, shop, [fix(north(0), t0 + 1000)], consent=None)
    assert status == 200


async def test_device_id_is_pseudonymized_and_state_expires(fast_client, shop, redis: Redis):
    await post(fast_client, shop, [fix(north(0), base_ts())], device="phone-of-alice")
    async for key in redis.scan_iter():
        assert b"phone-of-alice" not in key
        if await redis.type(key) == b"hash":
            assert b"phone-of-alice" not in b"".join(
                k + v for k, v in (await redis.hgetall(key)).items()
            )
    [state] = [k async for k in redis.scan_iter("geo:dev:*")]
    assert 86_000 < await redis.ttl(state) <= 86_400
    fields = await redis.hgetall(state)
    # no coordinates, no trail: the zones it is in, its last ping's time, its rate-limit bucket
    assert set(fields) == {b"last_ts", b"z:store", b"rt", b"ra"}


async def test_sixteen_concurrent_identical_requests_give_one_enter(fast_client, shop):
    ping = [fix(north(0), base_ts())]
    answers = await asyncio.gather(*(post(fast_client, shop, ping) for _ in range(16)))
    events = [e for status, answer in answers for e in answer["events"] if status == 200]
    assert [e["type"] for e in events] == ["enter"]
    stale = sum(
        1 for _, answer in answers if answer["ignored"] == [{"index": 0, "reason": "stale"}]
    )
    assert stale == 15


async def test_two_instances_share_device_state(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    a = await make_client(ping_rate_per_s=1000.0, ping_burst=1000)
    b = await make_client(ping_rate_per_s=1000.0, ping_burst=1000)
    keys = await make_tenant()
    await a.put("/v1/zones/store", json=STORE, headers=keys.secret)
    for _ in range(100):  # b hears of the zone through the change feed
        if b.app[ZONES].directory.zone_count():
            break
        await asyncio.sleep(0.01)
    t0 = base_ts()
    _, first = await post(a, keys, [fix(north(0), t0)])
    _, second = await post(b, keys, [fix(north(500), t0 + 1000)])
    assert events_of(first) == [("enter", "store", t0)]
    assert events_of(second) == [("exit", "store", t0 + 1000)]
    ping = [fix(north(0), t0 + 2000)]
    answers = await asyncio.gather(*(post(c, keys, ping) for c in (a, b) * 8))
    assert sum(len(answer["events"]) for _, answer in answers) == 1


async def test_zone_deleted_while_inside_fires_no_exit(fast_client, shop):
    t0 = base_ts()
    _, answer = await post(fast_client, shop, [fix(north(0), t0)])
    assert events_of(answer) == [("enter", "store", t0)]
    await fast_client.delete("/v1/zones/store", headers=shop.secret)
    _, answer = await post(
        fast_client, shop, [fix(north(0), t0 + 1000), fix(north(900), t0 + 2000)]
    )
    assert answer["events"] == []


async def test_zone_created_around_a_device_inside_enters_on_next_ping(fast_client, shop):
    t0 = base_ts()
    far = (47.40, 8.60)
    _, answer = await post(fast_client, shop, [fix(far, t0)])
    assert answer["events"] == []
    new_zone = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [far[1], far[0]]},
        "properties": {"name": "Pop-up", "radius_m": 50},
    }
    await fast_client.put("/v1/zones/popup", json=new_zone, headers=shop.secret)
    _, answer = await post(fast_client, shop, [fix(far, t0 + 1000)])
    assert events_of(answer) == [("enter", "popup", t0 + 1000)]


async def test_rate_limit_is_429_with_retry_after(make_client: AppClientFactory, make_tenant):
    client = await make_client(ping_rate_per_s=1.0, ping_burst=2)
    keys = await make_tenant()
    t0 = base_ts()
    statuses = []
    for i in range(3):
        response = await client.post(
            "/v1/pings",
            json={"device_id": "d", "consent": CONSENT, "pings": [fix(north(0), t0 + i)]},
            headers=keys.sdk,
        )
        statuses.append(response.status)
    assert statuses == [200, 200, 429]
    assert response.headers["Retry-After"] == "1"
    # Another device is not affected.
    response = await client.post(
        "/v1/pings",
        json={"device_id": "other", "consent": CONSENT, "pings": [fix(north(0), t0)]},
        headers=keys.sdk,
    )
    assert response.status == 200


async def test_the_rate_limit_holds_with_and_without_consent_and_keeps_no_key_of_its_own(
    make_client: AppClientFactory, make_tenant, redis: Redis
):
    """A device with location consent keeps its bucket in its state; one without (a 403,
    which keeps no state) in a short-lived key apart; the limit holds for both, and a refused
    request records nothing, not even the consent it brings."""
    client = await make_client(ping_rate_per_s=1.0, ping_burst=2)
    keys_ = await make_tenant()
    t0 = base_ts()

    async def ping(device: str, i: int, consent: dict[str, bool] | None) -> int:
        body: dict[str, object] = {"device_id": device, "pings": [fix(north(0), t0 + i)]}
        if consent is not None:
            body["consent"] = consent
        response = await client.post("/v1/pings", json=body, headers=keys_.sdk)
        return response.status

    assert [await ping("with", i, CONSENT) for i in range(3)] == [200, 200, 429]
    assert [k async for k in redis.scan_iter("geo:dev-rate:*")] == []
    [state] = [k async for k in redis.scan_iter("geo:dev:*")]
    assert {b"rt", b"ra"} <= set(await redis.hkeys(state))

    assert [await ping("without", i, None) for i in range(3)] == [403, 403, 429]
    assert len([k async for k in redis.scan_iter("geo:dev-rate:*")]) == 1
    assert [k async for k in redis.scan_iter("geo:dev:*")] == [state]  # none for "without"
    # Consent given past the rate does not open a fresh bucket, and is not recorded either.
    assert await ping("without", 3, CONSENT) == 429
    assert len([k async for k in redis.scan_iter("geo:dev-consent:*")]) == 1  # "with"'s


async def test_events_feed_the_stream_and_hourly_counters(fast_client, shop, redis: Redis):
    pings, expected = walk(base_ts())
    await post(fast_client, shop, pings, device="d-1")
    await post(fast_client, shop, [fix(north(0), base_ts())], device="d-2")
    assert await redis.xlen("geo:events:{t:acme}") == len(expected) + 1
    counters: dict[bytes, int] = {}
    async for key in redis.scan_iter("geo:stats:{t:acme}:*"):
        for name, value in (await redis.hgetall(key)).items():
            counters[name] = counters.get(name, 0) + int(value)
    assert counters == {b"store:enters": 4, b"store:exits": 2, b"store:dwells": 2}
    uniques = 0
    async for key in redis.scan_iter("geo:uniq:{t:acme}:*"):
        uniques += await redis.pfcount(key)
    hours = {e[2] // 3_600_000 for e in expected if e[0] == "enter"} | {base_ts() // 3_600_000}
    assert uniques >= 2
    assert uniques <= 2 * len(hours)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"device_id": "d", "pings": []}, ["pings"]),
        ({"device_id": "d", "pings": [fix(north(0), 1)] * 501}, ["pings"]),
        ({"device_id": "d", "pings": [fix((91.0, 0.0), 1)]}, ["pings[0].lat"]),
        (
            {"device_id": "d", "pings": [fix((0.0, -181.0), 1), {"lat": 1}]},
            ["pings[0].lon", "pings[1].lon", "pings[1].accuracy_m", "pings[1].ts"],
        ),
        ({"device_id": "bad id", "pings": [fix(north(0), 1)], "extra": 1}, ["device_id", "extra"]),
        ({"device_id": "d", "pings": [fix(north(0), 1, age_ms=-1)]}, ["pings[0].age_ms"]),
    ],
)
async def test_bad_pings_are_422_naming_fields_and_store_nothing(
    fast_client, shop, redis: Redis, body, fields
):
    response = await fast_client.post("/v1/pings", json=body, headers=shop.sdk)
    assert response.status == 422
    got = sorted(e["field"] for e in (await response.json())["errors"])
    assert got == sorted(fields)
    assert [k async for k in redis.scan_iter("geo:dev*")] == []


async def test_nan_latitude_is_422(fast_client, shop):
    raw = b'{"device_id": "d", "pings": [{"lat": NaN, "lon": 8.5, "accuracy_m": 5, "ts": 1}]}'
    response = await fast_client.post(
        "/v1/pings", data=raw, headers={**shop.sdk, "Content-Type": "application/json"}
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["pings[0].lat"]


async def test_secret_key_cannot_ping(fast_client, shop):
    status, _ = await post(fast_client, TenantKeys("acme", shop.sdk_key, shop.secret_key), [])
    assert status == 403


async def test_event_stream_keeps_no_entry_older_than_a_day(fast_client, shop, redis: Redis):
    old_ms = int(time.time() * 1000) - 26 * 3_600_000
    await redis.xadd("geo:events:{t:acme}", {"type": "enter", "device": "old"}, id=f"{old_ms}-0")
    await post(fast_client, shop, [fix(north(0), base_ts())])
    entries = await redis.xrange("geo:events:{t:acme}")
    assert [fields[b"device"] for _, fields in entries if fields[b"device"] == b"old"] == []
    assert len(entries) == 1


async def test_a_lost_customer_link_is_written_by_the_next_ping(
    fast_client, shop, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    """Erasure finds a customer's devices through the link a ping writes. When that write
    fails the ping answers 503, and the next ping writes it (the device's state already
    names the customer); once the link is confirmed, pings stop writing it."""
    written: list[str] = []
    link_device = Customers.link_device

    async def failing_once(self, tenant_id: str, customer_id: str, device: str) -> None:
        written.append(device)
        if len(written) == 1:
            raise RedisConnectionError("connection lost under the write")
        await link_device(self, tenant_id, customer_id, device)

    monkeypatch.setattr(Customers, "link_device", failing_once)
    devices = keys.customer_devices(shop.tenant_id, "c-1")
    t0 = base_ts()
    status, _ = await post(fast_client, shop, [fix(north(500), t0)], customer_id="c-1")
    assert status == 503
    assert await redis.scard(devices) == 0
    status, _ = await post(fast_client, shop, [fix(north(500), t0 + 1000)], customer_id="c-1")
    assert status == 200
    assert len(written) == 2
    [device] = await redis.smembers(devices)
    state = keys.device_state(device.decode())
    for _ in range(200):  # the confirmation is written after the answer
        if await redis.hget(state, "linked") == b"c-1":
            break
        await asyncio.sleep(0.01)
    assert await redis.hget(state, "linked") == b"c-1"
    status, _ = await post(fast_client, shop, [fix(north(500), t0 + 2000)], customer_id="c-1")
    assert status == 200
    assert len(written) == 2  # confirmed: not written again
    status, _ = await post(fast_client, shop, [fix(north(500), t0 + 3000)], customer_id="c-2")
    assert len(written) == 3  # another customer on the device: its link is written
