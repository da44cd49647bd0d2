"""Offers end to end: interests in, an offer out at the store door, caps and gates, redemption
at the till, export and erasure. Expectations are computed by hand from API.md's rules."""

from __future__ import annotations

import asyncio
import base64
import time

import msgpack
import pytest
from redis.asyncio import Redis

from geoservice import autopipeline
from geoservice.http.state import STORE
from geoservice.settings import SigningKey
from geoservice.tokens import TokenClaims, sign
from tests.conftest import AppClientFactory, TenantFactory, TenantKeys
from tests.redis_state import flatten, state_of

LAT, LON = 47.3717, 8.5392  # Bahnhofstrasse
LAT2, LON2 = 47.3780, 8.5400  # a second store ~700 m north
FAR = (47.40, 8.60)
HOUR = 3_600_000
DAY = 24 * HOUR
ALWAYS = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def store_zone(lat: float, lon: float, store_id: str, hours=ALWAYS) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {
            "name": store_id,
            "store_id": store_id,
            "radius_m": 80,
            "opening_hours": hours,
        },
    }


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def api(make_client: AppClientFactory):
    return await make_client(ping_rate_per_s=1000.0, ping_burst=1000)


@pytest.fixture
async def shop(api, make_tenant: TenantFactory) -> TenantKeys:
    keys = await make_tenant()
    for zone_id, (lat, lon) in {"bahnhofstrasse": (LAT, LON), "paradeplatz": (LAT2, LON2)}.items():
        response = await api.put(
            f"/v1/zones/{zone_id}", json=store_zone(lat, lon, f"s-{zone_id}"), headers=keys.secret
        )
        assert response.status == 201
    return keys


async def put_offer(api, keys: TenantKeys, offer_id: str, **fields) -> dict:
    body = {"title": offer_id.replace("-", " ").title(), **fields}
    response = await api.put(f"/v1/offers/{offer_id}", json=body, headers=keys.secret)
    assert response.status in (200, 201), await response.text()
    return await response.json()


async def interests(api, keys: TenantKeys, *events: dict) -> None:
    response = await api.post("/v1/interests", json={"events": list(events)}, headers=keys.secret)
    assert response.status == 202, await response.text()
    assert (await response.json())["accepted"] == len(events)


async def ping(
    api,
    keys: TenantKeys,
    lat: float,
    lon: float,
    *,
    device="d-1",
    customer="c-1001",
    ts=None,
    consent=None,
    with_consent=True,
) -> dict:
    """One ping; with consent unless `with_consent` is False (consent already on record)."""
    body = {
        "device_id": device,
        "pings": [{"lat": lat, "lon": lon, "accuracy_m": 10, "ts": ts or now_ms()}],
    }
    if with_consent:
        body["consent"] = consent or {"location": True, "marketing": True}
    if customer is not None:
        body["customer_id"] = customer
    response = await api.post("/v1/pings", json=body, headers=keys.sdk)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_the_story_a_newsletter_click_becomes_an_offer_at_the_door(api, shop):
    await put_offer(
        api, shop, "slicer-10", product_ids=["p-881"], body="10 % off", valid_for_s=7200
    )
    await put_offer(api, shop, "beans-5", product_ids=["p-100"])
    t = now_ms()
    await interests(
        api,
        shop,
        {"customer_id": "c-1001", "kind": "view", "product_id": "p-100", "ts": t - HOUR},
        {
            "customer_id": "c-1001",
            "kind": "newsletter_click",
            "product_id": "p-881",
            "ts": t - 2 * DAY,
        },
    )
    before = now_ms()
    answer = await ping(api, shop, LAT, LON)
    assert [e["type"] for e in answer["events"]] == ["enter"]
    [offer] = answer["offers"]
    assert offer["offer_id"] == "slicer-10"  # 2 * 0.5**(2/7) = 1.64 beats 1 * 0.5**(1/168)
    assert offer["zone_id"] == "bahnhofstrasse"
    assert offer["store_id"] == "s-bahnhofstrasse"
    assert offer["product_ids"] == ["p-881"]
    assert offer["body"] == "10 % off"
    assert before <= offer["issued_at"] <= now_ms()
    assert offer["expires_at"] == offer["issued_at"] + 7200 * 1000
    assert len(offer["id"]) == 26  # a ULID
    response = await api.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s-12"}, headers=shop.secret
    )
    assert response.status == 200
    redeemed = await response.json()
    assert redeemed["id"] == offer["id"]
    assert redeemed["offer_id"] == "slicer-10"
    assert redeemed["redeemed_store_id"] == "s-12"
    assert before <= redeemed["redeemed_at"] <= now_ms()


async def test_no_interest_no_fallback_no_offer_and_fallback_when_present(api, shop):
    await put_offer(api, shop, "slicer-10", product_ids=["p-881"])
    answer = await ping(api, shop, LAT, LON, device="a")
    assert answer["offers"] == []
    await put_offer(api, shop, "welcome", fallback=True)
    await ping(api, shop, *FAR, device="b")
    answer = await ping(api, shop, LAT, LON, device="b", customer="c-2")
    assert [o["offer_id"] for o in answer["offers"]] == ["welcome"]


async def test_marketing_consent_missing_means_events_but_no_offer(api, shop):
    await put_offer(api, shop, "welcome", fallback=True)
    answer = await ping(
        api, shop, LAT, LON, customer=None, consent={"location": True, "marketing": False}
    )
    assert [e["type"] for e in answer["events"]] == ["enter"]
    assert answer["offers"] == []


async def test_customer_consent_from_the_back_office_counts(api, shop):
    await put_offer(api, shop, "welcome", fallback=True)
    response = await api.put(
        "/v1/customers/c-1001/consent",
        json={"location": True, "marketing": True, "source": "crm:2026-11-01"},
        headers=shop.secret,
    )
    assert response.status == 200
    answer = await ping(api, shop, LAT, LON, device="new-phone", with_consent=False)
    assert [o["offer_id"] for o in answer["offers"]] == ["welcome"]


async def test_stale_ping_gives_event_not_offer(api, shop):
    await put_offer(api, shop, "welcome", fallback=True)
    # offer_min_freshness_s is 120: a fix three minutes old comes from a replayed buffer.
    answer = await ping(api, shop, LAT, LON, ts=now_ms() - 180_000)
    assert [e["type"] for e in answer["events"]] == ["enter"]
    assert answer["offers"] == []


async def test_closed_store_gives_no_offer(api, shop):
    closed = store_zone(LAT, LON, "s-closed", hours={})  # no day listed: closed all week
    await api.put("/v1/zones/bahnhofstrasse", json=closed, headers=shop.secret)
    await put_offer(api, shop, "welcome", fallback=True)
    answer = await ping(api, shop, LAT, LON)
    assert [e["type"] for e in answer["events"]] == ["enter"]
    assert answer["offers"] == []


async def test_campaign_window_and_zone_list_and_trigger(api, shop):
    t = now_ms()
    await put_offer(api, shop, "later", fallback=True, starts_at=t + DAY)
    await put_offer(api, shop, "over", fallback=True, starts_at=t - 2 * DAY, ends_at=t - DAY)
    await put_offer(api, shop, "elsewhere", fallback=True, zone_ids=["paradeplatz"])
    await put_offer(api, shop, "on-exit", fallback=True, trigger="exit")
    answer = await ping(api, shop, LAT, LON)
    assert answer["offers"] == []
    answer = await ping(api, shop, *FAR)
    assert [e["type"] for e in answer["events"]] == ["exit"]
    assert [o["offer_id"] for o in answer["offers"]] == ["on-exit"]


async def test_daily_cap_per_device(api, shop):
    response = await api.patch("/v1/tenant", json={"max_offers_per_day": 1}, headers=shop.secret)
    assert response.status == 200
    await put_offer(api, shop, "welcome", fallback=True, max_per_customer=10)
    assert len((await ping(api, shop, LAT, LON))["offers"]) == 1
    await ping(api, shop, *FAR)
    assert (await ping(api, shop, LAT2, LON2))["offers"] == []  # another zone, same day


async def test_zones_entered_at_once_share_the_daily_cap(api, shop, redis: Redis):
    """Offers for several zones entered by one ping are tried together: the cap still holds."""
    for n in range(4):
        zone = store_zone(LAT, LON, f"s-stack-{n}")
        response = await api.put(f"/v1/zones/stack-{n}", json=zone, headers=shop.secret)
        assert response.status in (200, 201)
    response = await api.patch("/v1/tenant", json={"max_offers_per_day": 2}, headers=shop.secret)
    assert response.status == 200
    await put_offer(api, shop, "welcome", fallback=True, max_per_customer=10)
    answer = await ping(api, shop, LAT, LON)
    entered = {e["zone_id"] for e in answer["events"] if e["type"] == "enter"}
    assert {f"stack-{n}" for n in range(4)} <= entered
    assert len(answer["offers"]) == 2
    assert len({o["zone_id"] for o in answer["offers"]}) == 2
    assert {o["zone_id"] for o in answer["offers"]} <= entered
    # every issued offer is on record, the refused ones left nothing behind
    issued = await redis.keys("geo:issued:*")
    assert len(issued) == 2


async def test_zone_cooldown(api, shop):
    await put_offer(api, shop, "welcome", fallback=True, max_per_customer=10)
    assert len((await ping(api, shop, LAT, LON))["offers"]) == 1
    await ping(api, shop, *FAR)
    assert (await ping(api, shop, LAT, LON))["offers"] == []  # same zone within 4 h
    await ping(api, shop, *FAR)
    assert len((await ping(api, shop, LAT2, LON2))["offers"]) == 1  # another zone is fine


async def test_max_per_customer_moves_on_to_the_next_offer(api, shop):
    await put_offer(api, shop, "first", fallback=True, priority=10)
    await put_offer(api, shop, "second", fallback=True, priority=1)
    answer = await ping(api, shop, LAT, LON, device="phone")
    assert [o["offer_id"] for o in answer["offers"]] == ["first"]
    await ping(api, shop, *FAR, device="phone")
    # The same customer on another phone, in another zone: "first" was theirs already.
    answer = await ping(api, shop, LAT2, LON2, device="tablet")
    assert [o["offer_id"] for o in answer["offers"]] == ["second"]


async def test_fifty_simultaneous_enters_against_a_budget_of_ten(api, shop, redis: Redis):
    await put_offer(api, shop, "limited", fallback=True, budget=10)
    answers = await asyncio.gather(
        *(ping(api, shop, LAT, LON, device=f"d-{i}", customer=f"c-{i}") for i in range(50))
    )
    assert sum(len(a["events"]) for a in answers) == 50
    assert sum(len(a["offers"]) for a in answers) == 10
    assert int(await redis.get("geo:budget:{o:acme:limited}")) == 10


async def test_sixteen_simultaneous_redemptions_one_wins(api, shop):
    await put_offer(api, shop, "welcome", fallback=True)
    [offer] = (await ping(api, shop, LAT, LON))["offers"]
    body = {"token": offer["token"], "store_id": "s-1"}
    responses = await asyncio.gather(
        *(api.post("/v1/redemptions", json=body, headers=shop.secret) for _ in range(16))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 15
    winner = next(r for r in responses if r.status == 200)
    redeemed_at = (await winner.json())["redeemed_at"]
    for response in responses:
        if response.status == 409:
            first = (await response.json())["first_redemption"]
            assert first == {"redeemed_at": redeemed_at, "store_id": "s-1"}


def _tamper(token: str) -> str:
    payload, signature = token.split(".")
    return payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]


async def test_bad_tokens_are_422_expired_410(api, shop, make_tenant: TenantFactory):
    await put_offer(api, shop, "welcome", fallback=True)
    [offer] = (await ping(api, shop, LAT, LON))["offers"]
    token = offer["token"]
    payload, signature = token.split(".")
    claims = msgpack.unpackb(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_payload = (
        base64.urlsafe_b64encode(msgpack.packb([*claims[:-1], claims[-1] + DAY]))
        .decode()
        .rstrip("=")
    )
    rotated_out = SigningKey("old", b"a-key-nobody-holds-any-more-0123")
    bad = {
        "tampered": _tamper(token),
        "truncated": token[: len(token) // 2],
        "garbled": "not-a-token",
        "extended": f"{forged_payload}.{signature}",
        "old key": sign(rotated_out, TokenClaims("old", "acme", offer["id"], "x", now_ms() + HOUR)),
    }
    for name, candidate in bad.items():
        response = await api.post(
            "/v1/redemptions", json={"token": candidate, "store_id": "s"}, headers=shop.secret
        )
        assert response.status == 422, name
        assert [e["field"] for e in (await response.json())["errors"]] == ["token"], name
    other = await make_tenant("other")
    response = await api.post(
        "/v1/redemptions", json={"token": token, "store_id": "s"}, headers=other.secret
    )
    assert response.status == 422
    key = SigningKey("k2", b"second-signing-secret-0123456789")  # the test settings' key
    expired = sign(key, TokenClaims("k2", "acme", offer["id"], "x", now_ms() - 1))
    response = await api.post(
        "/v1/redemptions", json={"token": expired, "store_id": "s"}, headers=shop.secret
    )
    assert response.status == 410
    # None of that redeemed it.
    response = await api.post(
        "/v1/redemptions", json={"token": token, "store_id": "s"}, headers=shop.secret
    )
    assert response.status == 200


async def test_old_signing_key_still_verifies_after_rotation(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    old = SigningKey("k1", b"first-signing-secret-0123456789xx")
    new = SigningKey("k9", b"ninth-signing-secret-0123456789xx")
    before = await make_client(ping_rate_per_s=1000.0, ping_burst=1000, signing_keys=(old,))
    keys = await make_tenant()
    await before.put("/v1/zones/z", json=store_zone(LAT, LON, "s"), headers=keys.secret)
    await put_offer(before, keys, "welcome", fallback=True)
    [offer] = (await ping(before, keys, LAT, LON))["offers"]
    after = await make_client(signing_keys=(new, old))
    response = await after.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s"}, headers=keys.secret
    )
    assert response.status == 200
    only_new = await make_client(signing_keys=(new,))
    response = await only_new.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s"}, headers=keys.secret
    )
    assert response.status == 422


async def test_offer_validation_and_foreign_zone_ids(api, shop, make_tenant: TenantFactory):
    other = await make_tenant("other")
    await api.put("/v1/zones/theirs", json=store_zone(LAT, LON, "t"), headers=other.secret)
    response = await api.put(
        "/v1/offers/o1",
        json={
            "title": "",
            "valid_for_s": 59,
            "trigger": "linger",
            "max_per_customer": 0,
            "budget": -1,
            "starts_at": 2000,
            "ends_at": 1000,
            "zone_ids": ["theirs"],
            "surprise": True,
        },
        headers=shop.secret,
    )
    assert response.status == 422
    fields = sorted(e["field"] for e in (await response.json())["errors"])
    assert fields == ["budget", "max_per_customer", "surprise", "title", "trigger", "valid_for_s"]
    response = await api.put(
        "/v1/offers/o1",
        json={"title": "x", "starts_at": 2000, "ends_at": 1000},
        headers=shop.secret,
    )
    assert response.status == 422
    response = await api.put(
        "/v1/offers/o1",
        json={"title": "x", "zone_ids": ["bahnhofstrasse", "theirs"]},
        headers=shop.secret,
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["zone_ids[1]"]
    assert (await api.get("/v1/offers/o1", headers=shop.secret)).status == 404


async def test_offers_crud_and_isolation(api, shop, make_tenant: TenantFactory):
    created = await put_offer(api, shop, "o1", product_ids=["p"], priority=3)
    assert created["valid_for_s"] == 3600
    assert created["max_per_customer"] == 1
    assert created["trigger"] == "enter"
    assert created["zone_ids"] is None
    response = await api.put("/v1/offers/o1", json={"title": "New"}, headers=shop.secret)
    assert response.status == 200
    for i in range(3):
        await put_offer(api, shop, f"o{i + 2}")
    page = await (await api.get("/v1/offers", params={"limit": "2"}, headers=shop.secret)).json()
    assert [o["offer_id"] for o in page["offers"]] == ["o1", "o2"]
    page = await (
        await api.get("/v1/offers", params={"cursor": page["next_cursor"]}, headers=shop.secret)
    ).json()
    assert [o["offer_id"] for o in page["offers"]] == ["o3", "o4"]
    assert page["next_cursor"] is None
    other = await make_tenant("other")
    assert (await api.get("/v1/offers/o1", headers=other.secret)).status == 404
    assert (await api.delete("/v1/offers/o1", headers=other.secret)).status == 404
    assert (await api.delete("/v1/offers/o1", headers=shop.secret)).status == 204
    assert (await api.get("/v1/offers/o1", headers=shop.secret)).status == 404


async def test_interests_validation_and_lookback(api, shop):
    t = now_ms()
    response = await api.post(
        "/v1/interests",
        json={
            "events": [
                {"customer_id": "c", "kind": "view", "product_id": "p", "ts": t},
                {"customer_id": "c", "kind": "stare", "ts": t},
                {"customer_id": "c", "kind": "view", "ts": t + HOUR},
            ]
        },
        headers=shop.secret,
    )
    assert response.status == 422
    assert sorted(e["field"] for e in (await response.json())["errors"]) == ["events[1].kind"]
    response = await api.post(
        "/v1/interests",
        json={"events": [{"customer_id": "c", "kind": "view", "ts": t + HOUR}]},
        headers=shop.secret,
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["events[0].ts"]
    response = await api.post(
        "/v1/interests",
        json={
            "events": [
                {"customer_id": "c", "kind": "view", "product_id": "p", "ts": t},
                {"customer_id": "c", "kind": "view", "product_id": "q", "ts": t - 40 * DAY},
            ]
        },
        headers=shop.secret,
    )
    assert await response.json() == {"accepted": 1}  # 40 days is past the 28-day lookback
    assert (await api.post("/v1/interests", json={"events": []}, headers=shop.secret)).status == 422


async def scan_everything(redis: Redis) -> bytes:
    return flatten(await state_of(redis))


async def test_export_then_erasure_leaves_nothing(api, shop, redis: Redis):
    await put_offer(api, shop, "welcome", fallback=True)
    await interests(
        api, shop, {"customer_id": "c-1001", "kind": "view", "product_id": "p-1", "ts": now_ms()}
    )
    await api.put(
        "/v1/customers/c-1001/consent",
        json={"location": True, "marketing": True, "source": "app"},
        headers=shop.secret,
    )
    [offer] = (await ping(api, shop, LAT, LON, device="phone-1"))["offers"]
    await ping(api, shop, *FAR, device="phone-1")
    await ping(api, shop, LAT2, LON2, device="phone-2")
    await api.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s"}, headers=shop.secret
    )
    # Someone else, who must survive the erasure.
    await ping(api, shop, LAT, LON, device="phone-3", customer="c-2002")

    export = await (await api.get("/v1/customers/c-1001/export", headers=shop.secret)).json()
    assert export["consent"]["source"] == "sdk"  # the pings' consent object came last
    assert [i["product_id"] for i in export["interests"]] == ["p-1"]
    assert len(export["devices"]) == 2
    assert [o["id"] for o in export["issued_offers"]] == [offer["id"]]
    assert [r["id"] for r in export["redemptions"]] == [offer["id"]]
    pseudonyms = [d["device"].encode() for d in export["devices"]]
    everything = await scan_everything(redis)
    assert b"c-1001" in everything
    assert all(p in everything for p in pseudonyms)

    assert (await api.delete("/v1/customers/c-1001", headers=shop.secret)).status == 204
    everything = await scan_everything(redis)
    assert b"c-1001" not in everything
    for pseudonym in pseudonyms:
        assert pseudonym not in everything
    assert b"c-2002" in everything
    export = await (await api.get("/v1/customers/c-1001/export", headers=shop.secret)).json()
    assert export["devices"] == []
    assert export["issued_offers"] == []


async def test_stats_per_zone_and_hour(api, shop):
    await put_offer(api, shop, "welcome", fallback=True, max_per_customer=5)
    [offer] = (await ping(api, shop, LAT, LON, device="a", customer="x"))["offers"]
    await ping(api, shop, LAT, LON, device="b", customer="y")
    await ping(api, shop, *FAR, device="a", customer="x")
    await api.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s"}, headers=shop.secret
    )
    t = now_ms()
    response = await api.get(
        "/v1/stats", params={"from": str(t - HOUR), "to": str(t + HOUR)}, headers=shop.secret
    )
    assert response.status == 200
    rows = [r for r in (await response.json())["stats"] if r["zone_id"] == "bahnhofstrasse"]
    totals = {
        k: sum(r[k] for r in rows)
        for k in ("enters", "exits", "dwells", "offers_issued", "redemptions")
    }
    assert totals == {"enters": 2, "exits": 1, "dwells": 0, "offers_issued": 2, "redemptions": 1}
    assert sum(r["unique_devices"] for r in rows) == 2
    bad = await api.get("/v1/stats", params={"from": "10", "to": "5"}, headers=shop.secret)
    assert bad.status == 422
    bad = await api.get("/v1/stats", params={"from": "0", "to": str(40 * DAY)}, headers=shop.secret)
    assert bad.status == 422


def _command_name(packed: bytes, scripts: dict[bytes, str]) -> str:
    """A command as hiredis packed it: its name, or for EVALSHA the script's."""
    parts = packed.split(b"\r\n")
    name = parts[2].decode().upper()
    return scripts.get(parts[4], name) if name == "EVALSHA" else name


DERIVED_WRITES = {"XADD", "XTRIM", "HINCRBY", "EXPIRE", "PFADD"}


async def test_an_offer_request_waits_for_two_round_trips(api, shop, monkeypatch):
    """The customer's context leaves in the fence script's write, the issued record in the
    issue script's; the event stream and counters follow the answer (Store.write_behind)."""
    await put_offer(api, shop, "slicer-10", product_ids=["p-881"])
    await put_offer(api, shop, "welcome", fallback=True)
    t = now_ms()
    await interests(
        api, shop, {"customer_id": "c-1001", "kind": "view", "product_id": "p-881", "ts": t - HOUR}
    )
    await ping(api, shop, *FAR)  # consent on record, far from every zone
    # Another customer's offer first: Redis learns the issue script (a first EVALSHA of it is
    # refused NOSCRIPT and sent again, a round trip that is not the path's).
    assert (await ping(api, shop, LAT2, LON2, device="d-2", customer="c-2"))["offers"]
    store = api.app[STORE]
    scripts = {script.sha.encode(): name for name, script in store.scripts.items()}
    writes: list[list[str]] = []
    flush = autopipeline._Connection._flush

    def spy(connection: autopipeline._Connection) -> None:
        writes.append([_command_name(packed, scripts) for packed in connection.outgoing])
        flush(connection)

    monkeypatch.setattr(autopipeline._Connection, "_flush", spy)
    answer = await ping(api, shop, LAT, LON, with_consent=False)
    assert [o["offer_id"] for o in answer["offers"]] == ["slicer-10"]  # the interest counted
    await asyncio.sleep(0.05)  # the writes after the answer

    [fence_write] = [i for i, names in enumerate(writes) if "fence" in names]
    [issue_write] = [i for i, names in enumerate(writes) if "issue_offer" in names]
    assert "ZRANGEBYSCORE" in writes[fence_write]  # the interests, beside the fence script
    assert "HGETALL" in writes[fence_write]  # consent and profile
    assert "HSET" in writes[issue_write]  # the issued record, beside the issue script
    between = {name for names in writes[fence_write + 1 : issue_write] for name in names}
    assert between <= DERIVED_WRITES  # nothing the request waited for
    after = [name for names in writes[issue_write + 1 :] for name in names]
    assert "XADD" in after  # the offer_issued event, after the answer
    events = await api.get("/v1/events", headers=shop.secret)
    logged = [(e["type"], e["zone_id"]) for e in (await events.json())["events"]]
    assert logged[:2] == [("offer_issued", "bahnhofstrasse"), ("enter", "bahnhofstrasse")]
