"""Webhooks end to end: registrations over HTTP, events from real pings delivered to a real
receiver on 127.0.0.1, signatures checked with the recipe of docs/api.md, retries, takeover by
another instance, refused addresses, and a slow receiver beside the ping path."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from geoservice import keys
from geoservice.fences import device_pseudonym
from geoservice.http.state import SETTINGS, WEBHOOKS
from geoservice.settings import SettingsError, WebhookTimings, parse_webhook_allow
from geoservice.webhooks import (
    AllowList,
    Deliveries,
    GuardedResolver,
    RefusedDestination,
    internal_kind,
)
from tests.conftest import OPERATOR, AppClientFactory, TenantKeys, bearer

LAT0, LON0 = 47.3717, 8.5392
FAR = (47.40, 8.60)
STORE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [LON0, LAT0]},
    "properties": {"name": "Bahnhofstrasse", "store_id": "s-12", "radius_m": 100},
}
CONSENT = {"location": True, "marketing": True}
SECRET = "whsec-0123456789abcdef"
ALL_EVENTS = ["enter", "exit", "dwell", "offer_issued", "offer_redeemed"]
FAST = WebhookTimings(
    timeout_s=2.0,
    backoff_base_ms=50,
    backoff_cap_ms=200,
    give_up_after_s=3600.0,
    lease_ms=1000,
    claim_idle_ms=500,
)
LOOPBACK_ALLOWED = ("127.0.0.1/32",)


def verify(secret: str, header: str, body: bytes, tolerance_ms: int = 300_000) -> bool:
    """The recipe of docs/api.md, verbatim (test_docs_recipe_is_the_tested_one checks)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    mac = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() * 1000 - int(fields["t"])) <= tolerance_ms
    return fresh and hmac.compare_digest(mac.hexdigest(), fields["v1"])


def test_docs_recipe_is_the_tested_one():
    import inspect
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    body = inspect.getsource(verify).split('"""\n', 1)[1]
    assert body in docs


class Receiver:
    """A retailer's endpoint: records every request and answers by plan (a status; "hang": 200
    once released; "slow": 200 after 5 s or once released); after the plan, `default`."""

    def __init__(self) -> None:
        self.plan: list[int | str] = []
        self.default: int | str = 200
        self.requests: list[dict[str, Any]] = []
        self.released = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        action = self.plan.pop(0) if self.plan else self.default
        record = {"headers": dict(request.headers), "body": body, "answer": action}
        self.requests.append(record)
        if action == "hang":
            await self.released.wait()
            action = 200
        elif action == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 5.0)
            action = 200
        assert isinstance(action, int)
        return web.Response(status=action)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    def delivered(self) -> list[dict[str, Any]]:
        """Events of the requests answered 2xx, de-duplicated by id, in arrival order."""
        seen: set[str] = set()
        events = []
        for record in self.requests:
            if not (isinstance(record["answer"], int) and 200 <= record["answer"] < 300):
                continue
            for event in _events_of(record["body"]):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    events.append(event)
        return events


def _events_of(body: bytes) -> list[dict[str, Any]]:
    import orjson

    return list(orjson.loads(body)["events"])


@pytest.fixture
async def receivers() -> Any:
    started: list[Receiver] = []

    async def start() -> Receiver:
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        receiver.server = TestServer(app, host="127.0.0.1")
        # The service's idle keep-alive connections would hold a graceful shutdown a minute.
        await receiver.server.start_server(shutdown_timeout=0.5)
        started.append(receiver)
        return receiver

    yield start
    _release_all(started)
    for receiver in started:
        assert receiver.server is not None
        await receiver.server.close()


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def start_instance(make_client: AppClientFactory, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "ping_rate_per_s": 1000.0,
        "ping_burst": 1000,
        "webhook_allow": LOOPBACK_ALLOWED,
        "webhook_timings": FAST,
    }
    settings.update(overrides)
    return await make_client(**settings)


async def create_tenant(api: Any, tenant_id: str = "acme") -> TenantKeys:
    response = await api.post(
        "/v1/tenants",
        json={"tenant_id": tenant_id, "name": tenant_id.title(), "timezone": "Europe/Zurich"},
        headers=OPERATOR,
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    tenant = TenantKeys(tenant_id, body["secret_key"], body["sdk_key"])
    response = await api.put("/v1/zones/store", json=STORE, headers=tenant.secret)
    assert response.status == 201, await response.text()
    return tenant


async def register(
    api: Any, tenant: TenantKeys, webhook_id: str, url: str, events: list[str] = ALL_EVENTS
) -> dict[str, Any]:
    response = await api.put(
        f"/v1/webhooks/{webhook_id}",
        json={"url": url, "events": events, "secret": SECRET},
        headers=tenant.secret,
    )
    assert response.status in (200, 201), await response.text()
    body: dict[str, Any] = await response.json()
    return body


_ts = itertools.count()


async def ping(api: Any, tenant: TenantKeys, device: str, position: tuple[float, float]) -> Any:
    # Strictly increasing fix times, even within one millisecond.
    ts = int(time.time() * 1000) + next(_ts) % 1000
    body = {
        "device_id": device,
        "consent": CONSENT,
        "pings": [{"lat": position[0], "lon": position[1], "accuracy_m": 10, "ts": ts}],
    }
    response = await api.post("/v1/pings", json=body, headers=tenant.sdk)
    assert response.status == 200, await response.text()
    return await response.json()


async def walk(api: Any, tenant: TenantKeys, device: str, steps: int) -> list[tuple[str, int]]:
    """In and out of the store `steps` times: the events the pings answered, in order."""
    events = []
    for step in range(steps):
        answer = await ping(api, tenant, device, (LAT0, LON0) if step % 2 == 0 else FAR)
        events += [(e["type"], e["at"]) for e in answer["events"]]
    return events


def pseudonym(api: Any, tenant: TenantKeys, device: str) -> str:
    return device_pseudonym(api.app[SETTINGS].pseudonym_key, tenant.tenant_id, device)


# --- delivery ------------------------------------------------------------------------------------


async def test_signed_events_verify_with_the_documented_recipe(make_client, receivers, redis):
    api = await start_instance(make_client)
    shop = await create_tenant(api)
    receiver = await receivers()
    created = await register(
        api, shop, "crm", receiver.url, ["enter", "offer_issued", "offer_redeemed"]
    )
    assert created["secret_hint"] == "…cdef"
    assert "secret" not in created
    response = await api.put(
        "/v1/offers/welcome", json={"title": "Welcome", "fallback": True}, headers=shop.secret
    )
    assert response.status == 201
    answer = await ping(api, shop, "d-1", (LAT0, LON0))
    [offer] = answer["offers"]
    response = await api.post(
        "/v1/redemptions", json={"token": offer["token"], "store_id": "s-12"}, headers=shop.secret
    )
    assert response.status == 200
    await ping(api, shop, "d-1", FAR)  # an exit: not subscribed
    await until(lambda: len(receiver.delivered()) == 3)

    for record in receiver.requests:
        header = record["headers"]["X-Geoservice-Signature"]
        assert verify(SECRET, header, record["body"])
        assert not verify("another-secret-0123456789", header, record["body"])
        assert not verify(SECRET, header, record["body"] + b" ")
        assert record["headers"]["Content-Type"] == "application/json"
    enter, issued, redeemed = receiver.delivered()
    device = pseudonym(api, shop, "d-1")
    assert device != "d-1"
    at = answer["events"][0]["at"]
    assert enter == {
        "id": enter["id"],
        "type": "enter",
        "zone_id": "store",
        "store_id": "s-12",
        "device_id": device,
        "at": at,
    }
    assert issued["type"] == "offer_issued"
    assert (issued["offer_id"], issued["issued_id"]) == ("welcome", offer["id"])
    assert redeemed["type"] == "offer_redeemed"
    assert (redeemed["offer_id"], redeemed["issued_id"]) == ("welcome", offer["id"])
    stream_ids = [i.decode() for i, _ in await redis.xrange(keys.events("acme"))]
    assert [e["id"] for e in receiver.delivered()] == [
        i for i in stream_ids if i in {enter["id"], issued["id"], redeemed["id"]}
    ]


async def test_a_receiver_failing_three_times_gets_everything_once_in_order(
    make_client, receivers, redis
):
    api = await start_instance(make_client)
    shop = await create_tenant(api)
    receiver = await receivers()
    receiver.plan = [500, 503, 404]
    await register(api, shop, "crm", receiver.url, ["enter", "exit"])
    walked: dict[str, list[tuple[str, int]]] = {"d-1": [], "d-2": [], "d-3": []}
    for _ in range(3):
        for device, events in walked.items():
            events.extend(await walk(api, shop, device, 2))
    expected_count = sum(len(v) for v in walked.values())
    assert expected_count == 18
    await until(lambda: len(receiver.delivered()) == expected_count)

    delivered = receiver.delivered()
    for device, events in walked.items():
        mine = [
            (e["type"], e["at"])
            for e in delivered
            if e["device_id"] == pseudonym(api, shop, device)
        ]
        assert mine == events
    answers = [r["answer"] for r in receiver.requests]
    assert answers[:3] == [500, 503, 404]
    # The same batch three times, then the same ids with 200: a retry resends, never reshapes.
    first_ids = [[e["id"] for e in _events_of(r["body"])] for r in receiver.requests[:4]]
    assert first_ids[0] == first_ids[1] == first_ids[2] == first_ids[3]
    # Acknowledged once the 200 reached the service (a moment after the receiver saw it).
    await until(lambda: _no_pending(redis, "acme", "crm"))
    log = (await (await api.get("/v1/webhooks/crm/deliveries", headers=shop.secret)).json())[
        "deliveries"
    ]
    oldest_four = log[-4:][::-1]
    assert [(d["attempt"], d["status"], d["outcome"]) for d in oldest_four] == [
        (1, 500, "failed"),
        (2, 503, "failed"),
        (3, 404, "failed"),
        (4, 200, "delivered"),
    ]
    assert oldest_four[0]["error"] == "HTTP 500"
    metrics = await (await api.get("/metrics")).text()
    assert 'geoservice_webhook_deliveries_total{outcome="retried"}' in metrics


async def test_an_instance_killed_mid_batch_loses_nothing(
    make_client, receivers, redis, monkeypatch
):
    # A killed process does not release its lease: it lapses (lease_ms) and the other instance
    # claims the pending entries once idle (claim_idle_ms).
    async def crash_without_release(self: Deliveries, lease: str, token: str) -> None:
        return None

    monkeypatch.setattr(Deliveries, "_let_go", crash_without_release)
    first = await start_instance(make_client)
    shop = await create_tenant(first)
    receiver = await receivers()
    receiver.plan = [503, "hang"]
    await register(first, shop, "crm", receiver.url)
    walked = await walk(first, shop, "d-1", 1)
    await until(lambda: len(receiver.requests) == 2)  # the retry is in flight, hanging
    in_flight_ids = [e["id"] for e in _events_of(receiver.requests[1]["body"])]
    second = await start_instance(make_client)
    await first.close()

    walked += await _walk_from(second, shop)
    await until(lambda: len(receiver.delivered()) == len(walked))
    delivered = receiver.delivered()
    assert [e["id"] for e in delivered][: len(in_flight_ids)] == in_flight_ids
    assert [(e["type"], e["at"]) for e in delivered] == walked
    await until(lambda: _no_pending(redis, "acme", "crm"))
    # The batch's retry count (and clock) went on where the killed instance left it.
    response = await second.get("/v1/webhooks/crm/deliveries", headers=shop.secret)
    oldest = (await response.json())["deliveries"][::-1]
    assert [(d["attempt"], d["status"], d["outcome"]) for d in oldest[:2]] == [
        (1, 503, "failed"),
        (2, 200, "delivered"),
    ]


async def _walk_from(api: Any, tenant: TenantKeys) -> list[tuple[str, int]]:
    """Out, in and out again (the device is inside after the first walk)."""
    events = []
    for position in (FAR, (LAT0, LON0), FAR):
        answer = await ping(api, tenant, "d-1", position)
        events += [(e["type"], e["at"]) for e in answer["events"]]
    return events


async def _no_pending(redis: Redis, tenant_id: str, webhook_id: str) -> bool:
    summary = await redis.xpending(keys.events(tenant_id), keys.webhook_group(webhook_id))
    return summary["pending"] == 0


async def test_a_batch_failing_past_the_retry_window_is_dropped(make_client, receivers, redis):
    timings = WebhookTimings(
        timeout_s=2.0,
        backoff_base_ms=20,
        backoff_cap_ms=50,
        give_up_after_s=0.3,
        lease_ms=1000,
        claim_idle_ms=500,
    )
    api = await start_instance(make_client, webhook_timings=timings)
    shop = await create_tenant(api)
    receiver = await receivers()
    receiver.default = 500
    await register(api, shop, "crm", receiver.url)
    await walk(api, shop, "d-1", 1)

    async def dropped() -> bool:
        log = await (await api.get("/v1/webhooks/crm/deliveries", headers=shop.secret)).json()
        return bool(log["deliveries"]) and log["deliveries"][0]["outcome"] == "dropped"

    await until(dropped)
    assert await _no_pending(redis, "acme", "crm")
    receiver.default = 200
    after = await _walk_from(api, shop)
    await until(lambda: len(receiver.delivered()) == len(after))
    assert [(e["type"], e["at"]) for e in receiver.delivered()] == after
    metrics = await (await api.get("/metrics")).text()
    assert 'geoservice_webhook_deliveries_total{outcome="dropped"}' in metrics


async def test_a_slow_receiver_holds_up_neither_pings_nor_other_webhooks(make_client, receivers):
    api = await start_instance(make_client, webhook_timings=WebhookTimings())
    shop = await create_tenant(api)

    async def ping_latencies(count: int, prefix: str) -> list[float]:
        """Each ping an enter or an exit of one of 20 devices: one event per ping."""
        latencies = []
        for step in range(count):
            position = (LAT0, LON0) if step % 40 < 20 else FAR
            started = time.perf_counter()
            await ping(api, shop, f"{prefix}-{step % 20}", position)
            latencies.append((time.perf_counter() - started) * 1000)
        return latencies

    baseline = await ping_latencies(400, "a")
    slow = [await receivers() for _ in range(5)]
    for index, receiver in enumerate(slow):
        receiver.default = "slow"  # 5 s per request
        await register(api, shop, f"slow-{index}", receiver.url)
    loaded = await ping_latencies(400, "b")
    # Another webhook gets every event while the slow ones still hold their first batch.
    fast = await receivers()
    await register(api, shop, "fast", fast.url)
    await ping_latencies(40, "c")
    await until(lambda: len(fast.delivered()) == 40)
    assert all(len(r.requests) == 1 and r.delivered() == [] for r in slow)
    for name, figures in (("without webhooks", baseline), ("with 5 slow receivers", loaded)):
        quantiles = statistics.quantiles(figures, n=100)
        print(
            f"\npings {name}: n={len(figures)} p50={quantiles[49]:.2f} ms "
            f"p99={quantiles[98]:.2f} ms max={max(figures):.2f} ms"
        )


def _release_all(receivers_: list[Receiver]) -> None:
    for receiver in receivers_:
        receiver.released.set()


# --- where webhooks may point --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://[::1]:8080/",
        "http://0.0.0.0/",
        "http://[::ffff:10.0.0.1]/",
        "http://100.64.0.1/",
        "https://224.0.0.1/",
        "http://192.168.1.1/",
        "http://[fd00::1]/",
    ],
)
async def test_internal_addresses_are_refused_at_registration(make_client, url):
    api = await start_instance(make_client, webhook_allow=())
    shop = await create_tenant(api, f"t{abs(hash(url)) % 10_000}")
    response = await api.put(
        "/v1/webhooks/crm",
        json={"url": url, "events": ["enter"], "secret": SECRET},
        headers=shop.secret,
    )
    assert response.status == 422, await response.text()
    problem = await response.json()
    assert [e["field"] for e in problem["errors"]] == ["url"]
    assert (await api.get("/v1/webhooks/crm", headers=shop.secret)).status == 404


async def test_the_allow_list_lets_loopback_in_and_nothing_else(make_client, receivers):
    api = await start_instance(make_client)
    shop = await create_tenant(api)
    receiver = await receivers()
    assert receiver.url.startswith("http://127.0.0.1:")
    response = await api.put(
        "/v1/webhooks/crm",
        json={"url": receiver.url, "events": ["enter"], "secret": SECRET},
        headers=shop.secret,
    )
    assert response.status == 201, await response.text()
    for url in ("http://10.0.0.1/", "http://127.0.0.2/", "http://169.254.169.254/"):
        response = await api.put(
            "/v1/webhooks/other",
            json={"url": url, "events": ["enter"], "secret": SECRET},
            headers=shop.secret,
        )
        assert response.status == 422, url


async def test_delivery_checks_the_address_again(make_client, receivers):
    # Registered where loopback was allowed; delivered by an instance that does not allow it
    # (a name that resolves elsewhere since registration is the same case for the resolver).
    permissive = await start_instance(make_client)
    shop = await create_tenant(permissive)
    receiver = await receivers()
    await register(permissive, shop, "crm", receiver.url)
    await permissive.close()
    strict = await start_instance(make_client, webhook_allow=())
    await walk(strict, shop, "d-1", 1)

    async def refused() -> bool:
        log = await (await strict.get("/v1/webhooks/crm/deliveries", headers=shop.secret)).json()
        return bool(log["deliveries"])

    await until(refused)
    log = await (await strict.get("/v1/webhooks/crm/deliveries", headers=shop.secret)).json()
    first = log["deliveries"][-1]
    assert first["outcome"] == "failed"
    assert first["status"] is None
    assert first["error"] == "refused: 127.0.0.1 is loopback"
    assert receiver.requests == []


async def test_the_resolver_refuses_a_name_that_turned_internal():
    class Rebound:
        async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> Any:
            address = "93.184.215.14" if host == "shop.example" else "10.1.2.3"
            return [
                {"hostname": host, "host": address, "port": port, "family": family}
                | {"proto": 0, "flags": 0}
            ]

        async def close(self) -> None:
            return None

    resolver = GuardedResolver(AllowList.of(["internal.example"]))
    resolver._inner = Rebound()  # type: ignore[assignment]
    assert (await resolver.resolve("shop.example", 443))[0]["host"] == "93.184.215.14"
    with pytest.raises(RefusedDestination, match=r"10\.1\.2\.3 is private"):
        await resolver.resolve("rebound.example", 443)
    assert (await resolver.resolve("internal.example", 443))[0]["host"] == "10.1.2.3"


def test_address_kinds_and_allow_list_setting():
    import ipaddress

    kinds = {
        a: internal_kind(ipaddress.ip_address(a))
        for a in ("8.8.8.8", "127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fe80::1")
    }
    assert kinds == {
        "8.8.8.8": None,
        "127.0.0.1": "loopback",
        "10.0.0.1": "private",
        "169.254.169.254": "link-local",
        "::1": "loopback",
        "fe80::1": "link-local",
    }
    assert internal_kind(ipaddress.ip_address("64:ff9b::a00:1")) == "private"  # NAT64 10.0.0.1
    assert parse_webhook_allow(" 127.0.0.1, 10.0.0.0/8 ,Hooks.Internal ") == (
        "127.0.0.1/32",
        "10.0.0.0/8",
        "hooks.internal",
    )
    with pytest.raises(SettingsError, match="GEOSERVICE_WEBHOOK_ALLOW"):
        parse_webhook_allow("10.0.0.0/33x")


# --- the API --------------------------------------------------------------------------------------


async def test_crud_paging_and_the_change_feed(make_client, receivers, redis):
    api = await start_instance(make_client)
    other_instance = await start_instance(make_client)
    shop = await create_tenant(api)
    receiver = await receivers()
    for webhook_id in ("c", "a", "b"):
        await register(api, shop, webhook_id, receiver.url, ["exit"])
    response = await api.put(
        "/v1/webhooks/a",
        json={"url": receiver.url + "?v=2", "events": ["dwell", "enter"], "secret": SECRET + "x"},
        headers=shop.secret,
    )
    assert response.status == 200
    replaced = await response.json()
    assert replaced["events"] == ["enter", "dwell"]  # canonical order
    assert replaced["secret_hint"] == "…defx"
    assert replaced["created_at"] <= replaced["updated_at"]

    response = await api.get("/v1/webhooks?limit=2", headers=shop.secret)
    page = await response.json()
    assert [w["webhook_id"] for w in page["webhooks"]] == ["a", "b"]
    response = await api.get(f"/v1/webhooks?cursor={page['next_cursor']}", headers=shop.secret)
    rest = await response.json()
    assert [w["webhook_id"] for w in rest["webhooks"]] == ["c"]
    assert rest["next_cursor"] is None

    cached = other_instance.app[WEBHOOKS].cached
    await until(
        lambda: cached.get(("acme", "a")) is not None and cached[("acme", "a")].url.endswith("?v=2")
    )
    groups = {g["name"].decode() for g in await redis.xinfo_groups(keys.events("acme"))}
    assert groups == {"wh:a", "wh:b", "wh:c"}

    response = await api.delete("/v1/webhooks/b", headers=shop.secret)
    assert response.status == 204
    assert (await api.get("/v1/webhooks/b", headers=shop.secret)).status == 404
    assert (await api.delete("/v1/webhooks/b", headers=shop.secret)).status == 404
    await until(lambda: ("acme", "b") not in cached)
    groups = {g["name"].decode() for g in await redis.xinfo_groups(keys.events("acme"))}
    assert groups == {"wh:a", "wh:c"}

    # A deleted webhook hears nothing more: "c" (moved) gets the exit, "b" (deleted, also on
    # exits) does not; "a" (replaced) hears the enter only.
    later = await receivers()
    await register(api, shop, "c", later.url, ["exit"])
    await walk(api, shop, "d-1", 2)
    await until(lambda: len(later.delivered()) == 1 and len(receiver.delivered()) == 1)
    assert [e["type"] for e in receiver.delivered()] == ["enter"]
    assert [e["type"] for e in later.delivered()] == ["exit"]


async def test_every_route_wants_a_secret_key(make_client):
    api = await start_instance(make_client)
    shop = await create_tenant(api)
    routes = [
        ("PUT", "/v1/webhooks/crm"),
        ("GET", "/v1/webhooks/crm"),
        ("DELETE", "/v1/webhooks/crm"),
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/crm/deliveries"),
    ]
    body = {"url": "http://127.0.0.1:9/", "events": ["enter"], "secret": SECRET}
    for method, path in routes:
        response = await api.request(method, path, json=body)
        assert response.status == 401, (method, path)
        for headers in (shop.sdk, OPERATOR, bearer("sk_unknown")):
            response = await api.request(method, path, json=body, headers=headers)
            assert response.status == (401 if headers["Authorization"].endswith("unknown") else 403)
    assert (await api.get("/v1/webhooks/crm", headers=shop.secret)).status == 404


async def test_bad_input_names_the_fields_and_changes_nothing(make_client, receivers):
    api = await start_instance(make_client)
    shop = await create_tenant(api)
    receiver = await receivers()
    before = await register(api, shop, "crm", receiver.url, ["enter"])
    cases = [
        ({"url": "ftp://127.0.0.1/", "events": ["enter"], "secret": SECRET}, ["url"]),
        ({"url": "http://u:p@127.0.0.1/", "events": ["enter"], "secret": SECRET}, ["url"]),
        ({"url": "http://127.0.0.1/" + "a" * 2048, "events": ["enter"], "secret": SECRET}, ["url"]),
        ({"url": receiver.url, "events": [], "secret": SECRET}, ["events"]),
        ({"url": receiver.url, "events": ["enter", "enter"], "secret": SECRET}, ["events"]),
        ({"url": receiver.url, "events": ["teleport"], "secret": SECRET}, ["events[0]"]),
        ({"url": receiver.url, "events": ["enter"], "secret": "short"}, ["secret"]),
        ({"url": receiver.url, "events": ["enter"], "secret": "s" * 257}, ["secret"]),
        ({"url": 5, "events": "enter", "extra": 1}, ["url", "events", "secret", "extra"]),
    ]
    for body, fields in cases:
        response = await api.put("/v1/webhooks/crm", json=body, headers=shop.secret)
        assert response.status == 422, body
        assert sorted(e["field"] for e in (await response.json())["errors"]) == sorted(fields)
    response = await api.put(
        "/v1/webhooks/bad%20id",
        json={"url": receiver.url, "events": ["enter"], "secret": SECRET},
        headers=shop.secret,
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["webhook_id"]
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("cursor=%%%", "cursor")):
        response = await api.get(f"/v1/webhooks?{query}", headers=shop.secret)
        assert response.status == 422, query
        assert [e["field"] for e in (await response.json())["errors"]] == [field]
    now = await (await api.get("/v1/webhooks/crm", headers=shop.secret)).json()
    assert now == before
    listed = await (await api.get("/v1/webhooks", headers=shop.secret)).json()
    assert [w["webhook_id"] for w in listed["webhooks"]] == ["crm"]


async def test_another_tenants_webhook_is_not_found_and_stays(make_client, receivers):
    api = await start_instance(make_client)
    shop = await create_tenant(api, "acme")
    rival = await create_tenant(api, "rival")
    receiver = await receivers()
    before = await register(api, shop, "crm", receiver.url, ["enter"])
    for method, path in (
        ("GET", "/v1/webhooks/crm"),
        ("DELETE", "/v1/webhooks/crm"),
        ("GET", "/v1/webhooks/crm/deliveries"),
    ):
        response = await api.request(method, path, headers=rival.secret)
        assert response.status == 404, (method, path)
    listed = await (await api.get("/v1/webhooks", headers=rival.secret)).json()
    assert listed == {"webhooks": [], "next_cursor": None}
    assert await (await api.get("/v1/webhooks/crm", headers=shop.secret)).json() == before
    # The rival's events never reach the shop's webhook; its own pings do.
    await walk(api, rival, "d-1", 1)
    await walk(api, shop, "d-1", 1)
    await until(lambda: len(receiver.delivered()) == 1)
    assert receiver.delivered()[0]["device_id"] == pseudonym(api, shop, "d-1")
