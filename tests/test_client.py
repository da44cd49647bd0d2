"""geoservice.client against the real app: the offline buffer replays fixes dated by the
monotonic clock, in batches of at most 500, kept on 429 until Retry-After has passed."""

from __future__ import annotations

import ast
import asyncio
import time
from pathlib import Path

import pytest

from geoservice import client as client_module
from geoservice.client import (
    ApiError,
    Consent,
    Fix,
    GeoserviceClient,
    Interest,
    PingBuffer,
    Unreachable,
)
from tests.conftest import AppClientFactory, TenantFactory, TenantKeys, free_port

LAT, LON = 47.3717, 8.5392
INSIDE = (LAT, LON)
OUTSIDE = (47.3817, 8.5392)  # about 1.1 km north
STORE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [LON, LAT]},
    "properties": {"name": "Bahnhofstrasse", "store_id": "s-12", "radius_m": 100},
}
YES = Consent(location=True, marketing=True)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def now_ms() -> int:
    return int(time.time() * 1000)


async def shop_with_store(make_client: AppClientFactory, make_tenant: TenantFactory, **settings):
    api = await make_client(**settings)
    tenant = await make_tenant()
    response = await api.put("/v1/zones/store", json=STORE, headers=tenant.secret)
    assert response.status == 201, await response.text()
    return api, tenant


def url_of(api) -> str:
    return str(api.make_url("")).rstrip("/")


async def test_offline_fixes_are_replayed_with_their_monotonic_age(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    api, tenant = await shop_with_store(make_client, make_tenant)
    clock = FakeClock()
    # The phone's wall clock is a year behind: `ts` would be "too_old"; age_ms makes it moot.
    wrong_wall = lambda: time.time() - 365 * 86_400  # noqa: E731
    async with (
        GeoserviceClient(f"http://127.0.0.1:{free_port()}", tenant.sdk_key) as offline,
        GeoserviceClient(url_of(api), tenant.sdk_key) as online,
        GeoserviceClient(url_of(api), tenant.secret_key) as back_office,
    ):
        buffer = PingBuffer(offline, "phone-1", consent=YES, clock=clock, wall_clock=wrong_wall)
        for step_s, position in ((0, OUTSIDE), (30, INSIDE), (30, INSIDE), (60, OUTSIDE)):
            clock.now += step_s
            buffer.record(*position, accuracy_m=10)
        taken = [5_000.0, 5_030.0, 5_060.0, 5_120.0]

        outcome = await buffer.flush()
        assert outcome.offline
        assert (outcome.sent, outcome.pending) == (0, 4)
        assert len(buffer) == 4

        clock.now += 120  # two minutes later the network is back
        buffer.client = online
        before = now_ms()
        outcome = await buffer.flush()
        after = now_ms()
        assert not outcome.offline
        assert (outcome.sent, outcome.pending, outcome.dropped) == (4, 0, 0)
        assert [(e.type, e.zone_id) for e in outcome.events] == [
            ("enter", "store"),
            ("exit", "store"),
        ]
        assert outcome.results[0].ignored == ()
        # The service dated each fix as receive time minus its age on the monotonic clock.
        enter_age_ms = (clock.now - taken[1]) * 1000
        exit_age_ms = (clock.now - taken[3]) * 1000
        enter, exit_ = outcome.events
        assert before - enter_age_ms - 2 <= enter.at <= after - enter_age_ms + 2
        assert before - exit_age_ms - 2 <= exit_.at <= after - exit_age_ms + 2
        assert exit_.at - enter.at == 90_000

        page = await back_office.recent_events(zone_id="store")
        assert [(e.type, e.at) for e in page.events] == [("exit", exit_.at), ("enter", enter.at)]
        assert page.events[0].device != "phone-1"  # a pseudonym

        # Consent went with the first request that got through; the next needs none.
        assert buffer.consent is None
        clock.now += 5
        buffer.record(*INSIDE, accuracy_m=10)
        outcome = await buffer.flush()
        assert [e.type for e in outcome.events] == ["enter"]


async def test_batches_of_500_kept_on_429_until_retry_after(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    # Two requests of burst, then one per 0.2 s: the third request in a row gets 429.
    api, tenant = await shop_with_store(make_client, make_tenant, ping_rate_per_s=5.0, ping_burst=2)
    clock = FakeClock()
    async with GeoserviceClient(url_of(api), tenant.sdk_key) as sdk:
        calls: list[int] = []
        send = sdk.send_pings

        async def counting_send(device_id, fixes, **kwargs):
            calls.append(len(fixes))
            return await send(device_id, fixes, **kwargs)

        sdk.send_pings = counting_send  # type: ignore[method-assign]
        buffer = PingBuffer(sdk, "phone-2", consent=YES, clock=clock)
        for n in range(1_200):
            clock.now += 0.05
            buffer.record(*(INSIDE if 400 <= n < 700 else OUTSIDE), accuracy_m=10)

        outcome = await buffer.flush()
        assert calls == [500, 500, 200]
        assert (outcome.sent, outcome.pending) == (1_000, 200)
        assert outcome.retry_after_s is not None
        assert outcome.retry_after_s >= 1
        assert [e.type for e in outcome.events] == ["enter", "exit"]
        assert all(r.ignored == () for r in outcome.results)

        # Before Retry-After has passed, flush() does not even try.
        outcome = await buffer.flush()
        assert calls == [500, 500, 200]
        assert (outcome.sent, outcome.pending) == (0, 200)
        assert outcome.retry_after_s is not None
        assert outcome.retry_after_s > 0

        waited = buffer.waiting_s()
        clock.now += waited
        await asyncio.sleep(waited)  # the service's own bucket refills in real time
        outcome = await buffer.flush()
        assert calls == [500, 500, 200, 200]
        assert (outcome.sent, outcome.pending) == (200, 0)
        assert all(r.ignored == () for r in outcome.results)


async def test_other_errors_raise_and_keep_the_buffer(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    api, tenant = await shop_with_store(make_client, make_tenant)
    async with GeoserviceClient(url_of(api), tenant.sdk_key) as sdk:
        buffer = PingBuffer(sdk, "no-consent-yet")
        buffer.record(*INSIDE, accuracy_m=10)
        with pytest.raises(ApiError) as caught:
            await buffer.flush()
        assert caught.value.status == 403
        assert len(buffer) == 1
        buffer.consent = YES
        outcome = await buffer.flush()
        assert [e.type for e in outcome.events] == ["enter"]


async def test_fixes_older_than_a_day_are_dropped_and_the_buffer_is_bounded():
    clock = FakeClock()
    async with GeoserviceClient(f"http://127.0.0.1:{free_port()}", "pk_x") as offline:
        buffer = PingBuffer(offline, "d", max_fixes=3, clock=clock)
        for _ in range(5):
            clock.now += 1
            buffer.record(*INSIDE, accuracy_m=10)
        assert len(buffer) == 3
        clock.now += 86_400 - 1.5  # the oldest kept fix is now just over a day old
        outcome = await buffer.flush()
        assert (outcome.dropped, outcome.pending, outcome.offline) == (1, 2, True)
        with pytest.raises(Unreachable):
            await offline.send_pings("d", [Fix(LAT, LON, 10.0, now_ms())])


async def test_back_office_calls(make_client: AppClientFactory, make_tenant: TenantFactory):
    api = await make_client()
    tenant: TenantKeys = await make_tenant()
    collection = {"type": "FeatureCollection", "features": [{**STORE, "id": "store"}]}
    async with (
        GeoserviceClient(url_of(api), tenant.secret_key) as office,
        GeoserviceClient(url_of(api), tenant.sdk_key) as sdk,
    ):
        assert (await office.import_zones(collection)).created == 1
        assert (await office.import_zones(collection)).updated == 1
        bad = {"type": "FeatureCollection", "features": [{**STORE, "id": "x", "properties": {}}]}
        with pytest.raises(ApiError) as caught:
            await office.import_zones(bad)
        assert caught.value.status == 422
        assert any(f.startswith("features[0].") for f, _ in caught.value.field_errors)

        offer = {"title": "10 % on the truffle slicer", "product_ids": ["p-881"]}
        response = await api.put("/v1/offers/truffle", json=offer, headers=tenant.secret)
        assert response.status == 201
        kept = await office.add_interests(
            [Interest("c-1", "newsletter_click", now_ms() - 60_000, product_id="p-881")]
        )
        assert kept == 1

        result = await sdk.send_pings(
            "phone-3",
            [Fix(LAT, LON, 10.0, now_ms())],
            customer_id="c-1",
            consent=YES,
        )
        assert [o.offer_id for o in result.offers] == ["truffle"]
        token = result.offers[0].token
        redeemed = await office.redeem(token, "s-12")
        assert (redeemed.offer_id, redeemed.redeemed_store_id) == ("truffle", "s-12")
        with pytest.raises(ApiError) as caught:
            await office.redeem(token, "s-12")
        assert caught.value.status == 409

        with pytest.raises(ApiError) as caught:
            await sdk.recent_events()
        assert caught.value.status == 403


def test_the_client_is_one_file_to_copy():
    """Only the standard library and aiohttp: an SDK author lifts the file as it is."""
    tree = ast.parse(Path(client_module.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "asyncio",
        "time",
        "collections",
        "dataclasses",
        "typing",
        "aiohttp",
    }
