"""`make bench`: the full benchmark. Starts geoservice, loads the city and its offers, ramps
single pings then batches open-loop, finds the knees, counts Redis round trips per no-event ping.
`--cluster` (`make bench CLUSTER=1`): the same on a Redis Cluster of our own (3 primaries + 3
replicas on loopback) with two service instances, requests spread over both."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from redis.crc import key_slot

from geoservice.fences import device_pseudonym
from geoservice.keys import device_consent, device_state
from geoservice.server import event_loop_factory
from loadtest import bench_floor, wrk
from loadtest.bench_pings import (
    JSON,
    TENANT,
    LoadConfig,
    LoadResult,
    ZoneProbe,
    create_tenant,
    drive,
    import_zones,
    machine,
    source_version,
    wait_all_workers_see,
)
from loadtest.city import City, split_zone_count
from loadtest.deployment import Deployment
from loadtest.lean import Fleet, drive_lean, plan

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# One population of phones for the whole run: every step continues their walks.
FLEET = Fleet()
SINGLE_P99_MS = 10.0
# share of a step's requests the paced driver may send more than 1 ms late and still count
LATE_SENDS_ALLOWED = 0.001
BATCH_P99_MS = 20.0
# Commands the service's Lua scripts issue: inside a script they are not round trips of their own.
SCRIPT_COMMANDS = frozenset(
    [
        "del",
        "exists",
        "expire",
        "get",
        "hdel",
        "hget",
        "hgetall",
        "hmget",
        "hset",
        "incr",
        "pexpire",
        "zadd",
    ]
)
ROUND_TRIP_STARTERS = frozenset({"evalsha", "eval", "fcall", "multi"})
NOT_ROUND_TRIPS = frozenset({"exec", "info"})  # EXEC closes a MULTI's trip; INFO is ours
SEGMENTS = ("premium", "family", "students", "outdoor")
PRODUCTS = 60


# -- the offer workload ----------------------------------------------------------------------


def customer_of(share: float, customers: int) -> Callable[[int], str | None]:
    """Device i pings as a customer for `share` of the devices (spread, not the first ones)."""
    cut = round(share * 1000)

    def pick(index: int) -> str | None:
        return f"cust-{index % customers:06d}" if (index * 7919) % 1000 < cut else None

    return pick


OFFERS: dict[str, dict[str, Any]] = {
    "coffee": {"title": "Coffee 2 for 1", "product_ids": [f"p-{i}" for i in range(0, 20)]},
    "shoes": {"title": "10 % on shoes", "product_ids": [f"p-{i}" for i in range(20, 40)]},
    "books": {"title": "A free bookmark", "product_ids": [f"p-{i}" for i in range(40, 60)]},
    "welcome": {"title": "Welcome in", "fallback": True},
}
AUDIENCE_OFFER = (
    "premium-birthday",
    {
        "title": "Premium: a birthday treat",
        "fallback": True,
        "priority": 5,
        "audience": {"segments": ["premium"], "birthday_within_days": 30},
    },
)


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, key: str, body: Any, ok: set[int]
) -> Any:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": JSON}
    async with session.request(method, url, data=orjson.dumps(body), headers=headers) as resp:
        text = await resp.text()
        if resp.status not in ok:
            raise RuntimeError(f"{method} {url}: {resp.status} {text[:500]}")
        return orjson.loads(text) if text else None


async def set_audience_offer(
    session: aiohttp.ClientSession, base: str, secret: str, on: bool
) -> None:
    offer_id, offer = AUDIENCE_OFFER
    url = f"{base}/v1/offers/{offer_id}"
    if on:
        await _call(session, "PUT", url, secret, {**offer, "max_per_customer": 1000}, {200, 201})
    else:
        await _call(session, "DELETE", url, secret, None, {204, 404})


async def load_offers(
    session: aiohttp.ClientSession, base: str, secret: str, customers: int, seed: int
) -> dict[str, Any]:
    """Offers, interests (views and newsletter clicks) and CRM profiles for `customers`.
    Caps are raised so offers keep flowing over a run that reuses the same devices."""
    rng = random.Random(seed)
    await _call(
        session,
        "PATCH",
        f"{base}/v1/tenant",
        secret,
        {"max_offers_per_day": 1000, "zone_cooldown_s": 0},
        {200},
    )
    for offer_id, offer in OFFERS.items():
        body = {**offer, "max_per_customer": 1000}
        await _call(session, "PUT", f"{base}/v1/offers/{offer_id}", secret, body, {200, 201})
    now_ms = int(time.time() * 1000)
    events: list[dict[str, Any]] = []
    for c in range(customers):
        for _ in range(rng.randint(1, 8)):
            events.append(
                {
                    "customer_id": f"cust-{c:06d}",
                    "kind": "newsletter_click" if rng.random() < 0.3 else "view",
                    "product_id": f"p-{rng.randrange(PRODUCTS)}",
                    "categories": [],
                    "ts": now_ms - rng.randrange(1, 14 * 86_400_000),
                }
            )
    accepted = 0
    for start in range(0, len(events), 1000):
        chunk = {"events": events[start : start + 1000]}
        answer = await _call(session, "POST", f"{base}/v1/interests", secret, chunk, {202})
        accepted += int(answer["accepted"])
    today = datetime.now(UTC)
    profiles = [
        {
            "customer_id": f"cust-{c:06d}",
            "segments": rng.sample(SEGMENTS, rng.randint(0, 2)),
            "birthday": (today + timedelta(days=rng.randrange(365))).strftime("%m-%d"),
        }
        for c in range(customers)
    ]
    for start in range(0, len(profiles), 10_000):
        chunk = {"customers": profiles[start : start + 10_000]}
        await _call(session, "POST", f"{base}/v1/customers/import", secret, chunk, {200})
    return {
        "offers": sorted(OFFERS),
        "customers": customers,
        "interest_events_sent": len(events),
        "interest_events_accepted": accepted,
        "profiles": len(profiles),
        "tenant_caps": {"max_offers_per_day": 1000, "zone_cooldown_s": 0},
    }


# -- Redis round trips on the no-event path -------------------------------------------------


# Known devices: what a retailer's Redis holds after a day of traffic. Each gets the consent
# record and the geofence state the fence script keeps (fences.py), under the service's own
# pseudonyms and key layout, so the ramp's devices are among them and Redis works on a keyspace
# of the size the issue names. Written server-side by chunks: 10^6 devices in seconds.
SEED_DEVICES_LUA = """
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', ARGV[i + 1], 'loc', '1', 'mkt', '1', 'at', now, 'src', 'sdk')
  redis.call('EXPIRE', ARGV[i + 1], 34560000)
  redis.call('HSET', ARGV[i], 'last_ts', now - 3600000)
  redis.call('EXPIRE', ARGV[i], 86400)
end
return (#ARGV - 1) / 2
"""
SEED_CHUNK = 5_000


async def seed_known_devices(
    primaries: Sequence[str], pseudonym_key: str, tenant_id: str, count: int
) -> dict[str, Any]:
    """`count` devices dev-000000… with consent on record and an hour-old state. Keys travel as
    ARGV, so each chunk goes to the primary that owns its devices' slots (a device's keys share
    its hash tag); one primary: all of them."""
    started = time.perf_counter()
    clients = [aioredis.Redis.from_url(url) for url in primaries]
    owner_of_slot: list[int] = [0] * 16384
    key = pseudonym_key.encode()
    now_ms = int(time.time() * 1000)
    try:
        if len(clients) > 1:
            port_of = [int(url.rsplit(":", 1)[1]) for url in primaries]
            for first, last, master, *_ in await clients[0].execute_command("CLUSTER", "SLOTS"):
                owner = port_of.index(int(master[1]))
                owner_of_slot[first : last + 1] = [owner] * (last - first + 1)
        scripts = [client.register_script(SEED_DEVICES_LUA) for client in clients]
        for first in range(0, count, SEED_CHUNK):
            chunks: list[list[Any]] = [[now_ms] for _ in clients]
            for i in range(first, min(count, first + SEED_CHUNK)):
                device = device_pseudonym(key, tenant_id, f"dev-{i:06d}")
                state = device_state(device)
                chunk = chunks[owner_of_slot[key_slot(state.encode())] if len(clients) > 1 else 0]
                chunk += [state, device_consent(device)]
            for script, args in zip(scripts, chunks, strict=True):
                if len(args) > 1:
                    await script(keys=[], args=args)
        used_mb = 0.0
        size = 0
        for client in clients:
            used_mb += (await client.info("memory"))["used_memory"] / 2**20
            size += await client.dbsize()
    finally:
        for client in clients:
            await client.aclose()
    return {
        "devices": count,
        "seconds": round(time.perf_counter() - started, 1),
        "redis_keys": size,
        "redis_used_memory_mb": round(used_mb, 1),
    }


async def _commandstats(clients: Sequence[aioredis.Redis]) -> dict[str, int]:
    """Calls per command, summed over the primaries (replicas repeat their writes: left out)."""
    total: dict[str, int] = {}
    for client in clients:
        stats = await client.info("commandstats")
        for k, v in stats.items():
            name = k.removeprefix("cmdstat_")
            total[name] = total.get(name, 0) + int(v["calls"])
    return total


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


async def count_no_event_round_trips(
    base: str, sdk_key: str, redis_urls: Sequence[str], devices: int = 300
) -> dict[str, Any]:
    """Commands per ping far from every zone (mid South Pacific): commandstats before and after
    (summed over the primaries), minus the background rate (change feed etc.) measured idle
    over the same time."""
    clients = [aioredis.Redis.from_url(url) for url in redis_urls]
    headers = {"Authorization": f"Bearer {sdk_key}", "Content-Type": JSON}
    url = f"{base}/v1/pings"

    async def ping_all(session: aiohttp.ClientSession, consent: bool) -> list[int]:
        sem = asyncio.Semaphore(8)
        ts = int(time.time() * 1000)

        async def one(i: int) -> int:
            body: dict[str, Any] = {
                "device_id": f"far-{i:05d}",
                "pings": [{"lat": -45.0 + i * 1e-4, "lon": -150.0, "accuracy_m": 10.0, "ts": ts}],
            }
            if consent:
                body["consent"] = {"location": True, "marketing": True}
            async with sem, session.post(url, data=orjson.dumps(body), headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(i) for i in range(devices))))

    try:
        async with aiohttp.ClientSession() as session:
            await ping_all(session, consent=True)  # records consent: not the steady path
            await asyncio.sleep(1.5)  # past the per-device rate limit's refill
            idle0, t0 = await _commandstats(clients), time.perf_counter()
            await asyncio.sleep(2.0)
            idle1, t1 = await _commandstats(clients), time.perf_counter()
            before, t2 = await _commandstats(clients), time.perf_counter()
            statuses = await ping_all(session, consent=False)
            after, t3 = await _commandstats(clients), time.perf_counter()
    finally:
        for client in clients:
            await client.aclose()
    idle = _delta(idle1, idle0)
    busy = _delta(after, before)
    scale = (t3 - t2) / max(1e-9, t1 - t0)
    net = {k: busy.get(k, 0) - idle.get(k, 0) * scale for k in set(busy) | set(idle)}
    # The idle rate is an estimate: the workers' blocking XREADs of the change feed return a
    # few more or fewer while the pings run (-0.6 XREAD once, i.e. -0.002 "per ping"). Every
    # no-event ping does the same, so a command seen on fewer than one ping in 20 is that
    # background, not the ping's.
    noise = max(2.0, devices / 20)
    net = {k: v for k, v in net.items() if k not in NOT_ROUND_TRIPS and abs(v) >= noise}
    per_ping = {k: round(v / devices, 3) for k, v in sorted(net.items())}
    trips = sum(
        v
        for k, v in per_ping.items()
        if k in ROUND_TRIP_STARTERS or k not in SCRIPT_COMMANDS  # see SCRIPT_COMMANDS
    )
    return {
        "devices": devices,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "commands_per_ping": per_ping,
        "redis_commands_per_no_event_ping": round(sum(per_ping.values()), 3),
        "redis_round_trips_per_no_event_ping": round(trips, 3),
        "idle_commands_per_s": {k: round(v / (t1 - t0), 2) for k, v in sorted(idle.items())},
        "method": "INFO commandstats deltas around one ping per device far from every zone "
        "(consent already recorded), minus the idle rate over the same time; commands a Lua "
        "script issues are counted within that script's EVALSHA, not as trips of their own",
    }


# -- the ramp --------------------------------------------------------------------------------


async def run_step(
    deployment: Deployment,
    sdk_key: str,
    city: City,
    config: LoadConfig,
    who: Callable[[int], str | None],
    label: str,
    driver: str,
) -> dict[str, Any]:
    deployment.check_running()
    watch = deployment.watch()
    counters = deployment.command_stats()

    def on_window(opening: bool) -> None:
        (watch.open if opening else watch.close)()
        (counters.open if opening else counters.close)()

    per_second: list[dict[str, float]] = []
    try:
        if driver == "wrk":
            s = await drive_paced(deployment.base_urls, sdk_key, city, config, who, on_window)
        else:
            result: LoadResult
            if driver == "lean":
                result = await drive_lean(
                    deployment.base_urls, sdk_key, city, config, on_window=on_window,
                    customer_of=who, fleet=FLEET,
                )  # fmt: skip
            else:
                result = await drive(
                    deployment.base_urls, sdk_key, city, config, on_window=on_window,
                    customer_of=who,
                )  # fmt: skip
            s, per_second = result.summary(), result.per_second
    finally:
        counters.close_clients()
    res = watch.report()
    commands = counters.report()
    row = {
        "step": label,
        "driver": driver,
        "window_s": config.duration_s,
        # from the first request sent to the last answer: what the CPU figures are measured over
        "measured_window_s": res.get("window_s"),
        "batch": config.batch,
        "codec": config.codec,
        "devices": config.devices,
        "target_requests_per_s": round(config.devices / config.period_s, 1),
        "requests_per_s": s["requests_per_s"],
        "pings_per_s": s["pings_per_s"],
        "latency_ms": s["latency_ms"],
        "send_lag_ms": s["send_lag_ms"],
        "late_sends": s.get("late_sends", 0),
        "statuses": s["statuses"],
        "errors": s["errors"] + s["unfinished_at_stop"],
        "error_samples": s["error_samples"],
        "events_per_s": round(sum(s["events_per_s"].values()), 1),
        "events_per_s_by_type": s["events_per_s"],
        "offers_per_s": s["offers_per_s"],
        "offer_latency_ms": s["offer_latency_ms"],
        "no_event_latency_ms": s["no_event_latency_ms"],
        "latency_ms_by_instance": s["latency_ms_by_instance"],
        "per_second": per_second,
        "service_cpu_percent": res["service_cpu_percent"],
        "service_rss_mb": res["service_rss_mb"],
        "redis_cpu_percent": res["redis_cpu_percent"],
        "generator_cpu_percent": s["generator_cpu_percent"],
        "machine_cpu_percent": res["machine_cpu_percent"],
        "load_average_1m_at_start_end": res["load_average_1m_at_start_end"],
        "processes": res["processes"],
        "redis_commandstats": commands,
        **cpu_costs(s, res, commands, config.duration_s),
    }
    lat = row["latency_ms"]
    print(
        f"  {label:<22} {row['pings_per_s']:>8} pings/s  p50 {lat.get('p50', '-'):>7} "
        f"p99 {lat.get('p99', '-'):>8} p99.9 {lat.get('p99.9', '-'):>8} ms  errors "
        f"{row['errors']:>4}  offers/s {row['offers_per_s']:>6}  service CPU "
        f"{row['service_cpu_percent']:>5} %  redis {row['redis_cpu_percent']:>5} %  generator "
        f"{row['generator_cpu_percent']:>5} %  machine {row['machine_cpu_percent']:>5} %  load "
        f"{res['load_average_1m_at_start_end'][1]:.2f}",
        flush=True,
    )
    return row


async def drive_paced(
    bases: Sequence[str],
    sdk_key: str,
    city: City,
    config: LoadConfig,
    who: Callable[[int], str | None],
    on_window: Callable[[bool], None],
) -> dict[str, Any]:
    """One step through wrk, paced open-loop (loadtest/wrk.py run_paced): the step's planned
    requests, its warm-up seconds unrecorded, then the window. The same keys as
    LoadResult.summary(); wrk cannot tell an offer's latency from the others', nor give
    per-second figures, so those stay empty (the lean driver has them)."""
    wall0 = time.time() + 1.0  # the fixes are stamped for when the step starts
    planned = plan(bases[0], sdk_key, city, config, wall0, who, FLEET)
    warmup = [r for r in planned if r.intended < config.warmup_s]
    window = planned[len(warmup) :]
    await asyncio.sleep(max(0.0, wall0 - time.time()))
    if warmup:
        await asyncio.to_thread(
            wrk.run_paced, bases, warmup, config.codec, config.connections, config.request_timeout_s
        )
    run = await asyncio.to_thread(
        wrk.run_paced,
        bases,
        window,
        config.codec,
        config.connections,
        config.request_timeout_s,
        on_window,
    )
    d = config.duration_s
    pings_per_request = sum(r.pings for r in window) / max(1, len(window))
    statuses = {code: n for code, n in run["statuses"].items()}
    unanswered = run["sent"] - run["answered"] - run["socket_errors"] - run["timeouts"]
    for key, n in (
        ("socket_error", run["socket_errors"]),
        ("timeout", run["timeouts"]),
        ("unanswered_at_stop", max(0, unanswered)),
        ("not_sent", run["planned"] - run["sent"]),
    ):
        if n:
            statuses[key] = n
    return {
        "offered_requests_per_s": round(run["planned"] / d, 1),
        "requests_per_s": round(run["ok"] / d, 1),
        "pings_per_s": round(run["ok"] * pings_per_request / d, 1),
        "requests_scheduled": run["planned"],
        "requests_ok": run["ok"],
        "latency_ms": run["latency_ms"],
        "send_lag_ms": {},
        "late_sends": run["late_sends"],
        "late_ms_max": run["late_ms_max"],
        "statuses": dict(sorted(statuses.items())),
        "errors": sum(n for code, n in statuses.items() if code != "200"),
        "error_samples": {},
        "unfinished_at_stop": 0,
        "events_per_s": {k: round(n / d, 2) for k, n in run["events"].items() if n},
        "offers_per_s": round(run["offers"] / d, 2),
        "offer_latency_ms": {},
        "no_event_latency_ms": {},
        "latency_ms_by_instance": run["latency_ms_by_instance"] if len(bases) > 1 else {},
        "generator_cpu_percent": run["generator_cpu_percent"],
    }


def cpu_costs(
    summary: dict[str, Any],
    resources: dict[str, Any],
    commands: dict[str, dict[str, Any]],
    window_s: float,
) -> dict[str, Any]:
    """CPU milliseconds per answered request and per ping: the service's processes, every Redis
    process, per Redis node (process CPU), and per primary the fence script's own time."""
    requests = float(summary["requests_per_s"]) or float("nan")
    pings = float(summary["pings_per_s"]) or float("nan")
    # The rates are the answers over the planned window; the CPU is measured from wrk's start
    # to the last answer, which a service that fell behind makes longer than the window.
    measured_s = float(resources.get("window_s", window_s))
    stretch = measured_s / window_s

    def ms(percent: float, per: float) -> float | None:
        value = 10 * percent * stretch / per  # percent of a core = 10 ms of CPU per second
        return None if value != value else round(value, 4)  # NaN: nothing answered

    service = float(resources["service_cpu_percent"])
    redis_all = float(resources["redis_cpu_percent"])
    nodes = {
        p["node"]: ms(float(p["cpu_percent"]), requests)
        for p in resources["processes"]
        if "node" in p
    }
    # The fence script's time (usec over the window) as a percent of a core, then per request.
    per_primary = {
        label: ms(c["evalsha_usec"] / 1e4 / measured_s, requests) for label, c in commands.items()
    }
    return {
        "service_cpu_ms_per_request": ms(service, requests),
        "service_cpu_ms_per_ping": ms(service, pings),
        "redis_cpu_ms_per_request": ms(redis_all, requests),
        "redis_cpu_ms_per_ping": ms(redis_all, pings),
        "redis_node_cpu_ms_per_request": nodes,
        "redis_evalsha_ms_per_request_by_primary": per_primary,
    }


def _fields(config: LoadConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in LoadConfig.__dataclass_fields__}


def knee(rows: list[dict[str, Any]], limit_ms: float) -> dict[str, Any] | None:
    """The highest-throughput step with p99 within the limit and no errors."""
    good = [
        r
        for r in rows
        if r["errors"] == 0
        and r["latency_ms"].get("p99", float("inf")) <= limit_ms
        # paced wrk: a request sent late (every connection busy) understates the latency
        and r.get("late_sends", 0)
        <= LATE_SENDS_ALLOWED * r.get("requests_per_s", 0) * r.get("window_s", 0)
    ]
    return max(good, key=lambda r: r["pings_per_s"], default=None)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    circles, polygons = split_zone_count(args.zones)
    city = City.workload_a(args.zones, seed=args.seed, dwell_s=60)
    deployment = Deployment(
        workers=args.workers,
        instances=args.instances,
        cluster=args.cluster,
        log_stem=args.out.with_suffix(""),
    )
    doc: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    who = customer_of(args.customer_share, args.customers)
    driver = args.driver
    if driver == "wrk" and not wrk.available():
        print("wrk is not installed (Debian: apt-get install wrk): the lean driver paces the ramp")
        driver = "lean"
    if args.yardstick_s > 0:  # before anything else runs: the host's speed today
        doc["yardsticks"] = await bench_floor.yardsticks(args.yardstick_s)
    try:
        deployment.start()  # in the main thread: the cluster's nodes die with it
        ready_s = await deployment.ready()
        doc["deployment"] = deployment.describe()
        doc["service_command"] = " & ".join(deployment.commands)
        base = deployment.base_urls[0]  # set-up goes to one instance, like a back office
        print(
            f"service ready in {ready_s:.1f} s at {', '.join(deployment.base_urls)}; Redis "
            f"primaries {', '.join(deployment.primaries.values())}",
            flush=True,
        )
        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            keys = await create_tenant(session, base, deployment.token)
            started = time.perf_counter()
            calls = await import_zones(session, base, keys["secret_key"], city)
            import_s = time.perf_counter() - started
            visible: list[float | None] = []
            for service in deployment.services:  # the others apply it from the change feed
                probe = ZoneProbe(service.base_url, keys["sdk_key"], city)
                visible.append(await wait_all_workers_see(probe, service.workers, 120.0))
            visible_s = None if None in visible else max(v for v in visible if v is not None)
            offers = await load_offers(session, base, keys["secret_key"], args.customers, args.seed)
            await set_audience_offer(session, base, keys["secret_key"], args.audiences == "on")
        print(
            f"{len(city)} zones ({circles} circles, {polygons} polygons) imported in "
            f"{import_s:.1f} s, in every worker {visible_s} s later; offers: {offers}",
            flush=True,
        )
        doc["zones"] = {
            "count": len(city),
            "import_s": round(import_s, 2),
            "import_statuses": [c.status for c in calls],
            "visible_in_all_workers_after_s": visible_s,
        }
        doc["offer_workload"] = {**offers, "audiences": args.audiences}
        if args.known_devices:
            doc["known_devices"] = await seed_known_devices(
                list(deployment.primaries.values()),
                deployment.services[0].pseudonym_key,
                TENANT["tenant_id"],
                args.known_devices,
            )
            print(f"known devices: {doc['known_devices']}", flush=True)
        city.features.clear()  # the import bodies: millions of objects the GC would walk
        gc.collect()
        gc.freeze()

        doc["no_event_path"] = await count_no_event_round_trips(
            base, keys["sdk_key"], list(deployment.primaries.values())
        )
        print(f"no-event path: {doc['no_event_path']['commands_per_ping']}", flush=True)

        def config(rate: float, batch: int, codec: str) -> LoadConfig:
            interval = args.interval_s if batch == 1 else args.batch_interval_s
            return LoadConfig(
                devices=max(1, round(rate * interval * batch)),
                interval_s=interval,
                batch=batch,
                codec=codec,
                duration_s=args.duration_s,
                warmup_s=args.warmup_s,
                connections=args.connections,
                seed=args.seed,
            )

        sdk = keys["sdk_key"]
        if args.warmup_step_s > 0:
            # Caches, connections, interpreter warm-up, and every device of the run pinging
            # once (consent, the zones it is in): the steps then see phones that were already
            # walking, not a crowd of first contacts each firing an enter and earning an offer.
            # A step of its own, at most --warmup-rate req/s, reported apart from the curve.
            fleet_size = max(
                [cfg.devices for cfg in (config(r, 1, args.codec) for r in args.rates)]
                + [
                    cfg.devices
                    for cfg in (config(r, args.batch, args.batch_codec) for r in args.batch_rates)
                ]
            )
            period = max(args.warmup_step_s, fleet_size / args.warmup_rate)
            cfg = LoadConfig(
                **{
                    **_fields(config((args.rates or [1.0])[0], 1, args.codec)),
                    "devices": fleet_size,
                    "interval_s": period,
                    "warmup_s": 0.0,
                    "duration_s": period,
                }
            )
            doc["warmup_step"] = await run_step(deployment, sdk, city, cfg, who, "warm-up", driver)
        single: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        for ramp in range(args.ramps):
            # Each ramp whole, then the next: a slow minute of the host lands in one pass of a
            # rate, which the median over the passes then discounts (summarise).
            nth = f" #{ramp + 1}" if args.ramps > 1 else ""
            for rate in args.rates:
                label = f"single {rate:g}/s{nth}"
                cfg = config(rate, 1, args.codec)
                single.append(await run_step(deployment, sdk, city, cfg, who, label, driver))
            for rate in args.batch_rates:
                cfg = config(rate, args.batch, args.batch_codec)
                label = f"batch{args.batch} {rate:g}/s{nth}"
                batch.append(await run_step(deployment, sdk, city, cfg, who, label, driver))
        doc["single"], doc["batch"] = single, batch

        if args.wrk_connections and wrk.available():
            # Maximum rates with a lean C generator (closed loop), after the open-loop ramp.
            doc["wrk"] = {}
            for kind, size, codec, limit in (
                ("single", 1, args.codec, SINGLE_P99_MS),
                ("batch", args.batch, args.batch_codec, BATCH_P99_MS),
            ):
                # The run's own devices (all walking since the warm-up): new ones would make
                # wrk's first seconds a crowd of first contacts, enters and offers.
                rate = max(args.rates if size == 1 else args.batch_rates, default=0)
                if not rate:
                    continue
                cfg = config(rate, size, codec)
                # Enough requests for every run without cycling, stamped over the next minutes
                # (the service takes fixes up to 5 minutes ahead of its clock; wrk may send
                # them faster than planned, which the devices' rate limit allows up to its
                # burst).
                span_s = max(60.0, 2 * args.wrk_duration_s * len(args.wrk_connections))
                cfg = LoadConfig(**{**_fields(cfg), "warmup_s": 0.0, "duration_s": span_s})
                planned = plan(deployment.base_urls[0], sdk, city, cfg, time.time(), who, FLEET)
                print(f"wrk, {kind} ({len(planned)} planned requests, cycled):", flush=True)
                rows = await asyncio.to_thread(
                    wrk.run,
                    deployment.base_urls,
                    planned,
                    args.wrk_connections,
                    args.wrk_duration_s,
                    size,
                )
                top = wrk.best(rows, limit)
                doc["wrk"][kind] = {
                    "runs": rows,
                    "best_within_limit": top,
                    "p99_limit_ms": limit,
                }
        elif args.wrk_connections:
            doc["wrk"] = {"skipped": "wrk is not installed (Debian: apt-get install wrk)"}

        audiences: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        if args.compare_audiences_rate > 0:
            cfg = config(args.compare_audiences_rate, 1, args.codec)
            # ABBA order, so a drift over time (device state, Redis memory) favours neither.
            order = [("on", "off"), ("off", "on")] * args.compare_audiences_rounds
            async with aiohttp.ClientSession() as session:
                for n, state in enumerate(s for pair in order for s in pair):
                    await set_audience_offer(session, base, keys["secret_key"], state == "on")
                    label = f"audiences {state} #{n + 1}"
                    audiences[state].append(
                        await run_step(deployment, sdk, city, cfg, who, label, driver)
                    )
        doc["audiences_compare"] = audiences
    finally:
        stopped = deployment.stop()
        doc["service_exit"] = stopped["service_1"]
        doc["service_log"] = stopped["service_1_log"]
        doc["teardown"] = stopped
        doc["load_average_at_end"] = os.getloadavg()
    return doc


# -- output ----------------------------------------------------------------------------------


def median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target rate, for ramps run more than once: the pass with the median p99 (the
    upper one of an even count), carrying every pass's errors and the most late sends of any
    pass, so a rate is a knee only if no pass of it failed."""
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        by_rate.setdefault(float(r["target_requests_per_s"]), []).append(r)
    out = []
    for passes in by_rate.values():
        ranked = sorted(passes, key=lambda r: r["latency_ms"].get("p99", float("inf")))
        middle = ranked[len(ranked) // 2]
        out.append(
            {
                **middle,
                "passes": len(passes),
                "p99_ms_of_passes": [r["latency_ms"].get("p99") for r in passes],
                "errors": sum(r["errors"] for r in passes),
                "late_sends": max(r.get("late_sends", 0) for r in passes),
            }
        )
    return out


def summarise(doc: dict[str, Any]) -> None:
    ramps = int(doc.get("knobs", {}).get("ramps", 1))
    if ramps > 1:
        doc["single_median"] = median_rows(doc["single"])
        doc["batch_median"] = median_rows(doc["batch"])
    single = doc.get("single_median", doc["single"])
    batch = doc.get("batch_median", doc["batch"])
    ks, kb = knee(single, SINGLE_P99_MS), knee(batch, BATCH_P99_MS)
    doc["knee_single_pings_per_s"] = ks["pings_per_s"] if ks else 0
    doc["knee_batch_pings_per_s"] = kb["pings_per_s"] if kb else 0
    doc["p99_ms_at_knee_single"] = ks["latency_ms"]["p99"] if ks else None
    doc["p99_ms_at_knee_batch"] = kb["latency_ms"]["p99"] if kb else None
    doc["redis_round_trips_per_no_event_ping"] = doc["no_event_path"][
        "redis_round_trips_per_no_event_ping"
    ]
    doc["curve"] = doc["single"] + doc["batch"]
    # The targets were sized on a host whose bare aiohttp app did 28,000 req/s on one
    # core; this run's host is put beside it by the same measure (bench_floor.yardsticks).
    sticks = doc.get("yardsticks") or {}
    doc["host_bare_rate_against_issue"] = sticks.get("bare_rate_against_issue")
    doc["targets_scaled_to_host_pings_per_s"] = sticks.get("targets_scaled_pings_per_s")
    for kind in ("single", "batch"):
        top = doc.get("wrk", {}).get(kind, {}).get("best_within_limit")
        doc[f"wrk_max_{kind}_pings_per_s"] = top["pings_per_s"] if top else None
        doc[f"wrk_p99_ms_at_max_{kind}"] = top["latency_ms"]["p99"] if top else None
    a = doc["audiences_compare"]
    if a["on"] and a["off"]:

        def cpu_per_req(rows: list[dict[str, Any]]) -> float:
            cpu = sum(float(r["service_cpu_percent"]) for r in rows)
            return cpu / max(1e-9, sum(float(r["requests_per_s"]) for r in rows))

        def mean(rows: list[dict[str, Any]], key: str, pct: str) -> float:
            return sum(float(r[key].get(pct, 0)) for r in rows) / len(rows)

        doc["audiences_cpu_per_request_ratio_on_off"] = round(
            cpu_per_req(a["on"]) / max(1e-9, cpu_per_req(a["off"])), 3
        )
        for key, pct in (("latency_ms", "p50"), ("latency_ms", "p99"), ("offer_latency_ms", "p50")):
            name = f"audiences_{'offer_' if key.startswith('offer') else ''}{pct}_ratio_on_off"
            doc[name] = round(mean(a["on"], key, pct) / max(1e-9, mean(a["off"], key, pct)), 3)


def print_table(doc: dict[str, Any]) -> None:
    cols = (
        "step pings/s p50 p95 p99 p99.9 errors events/s offers/s offer-p50 offer-p99 "
        "no-event-p99 svcCPU% RSSMB genCPU% machineCPU%"
    )
    print("\n" + " | ".join(cols.split()))
    rows = doc["curve"] + doc["audiences_compare"]["on"] + doc["audiences_compare"]["off"]
    for r in rows:
        lat = r["latency_ms"]
        print(
            " | ".join(
                str(x)
                for x in (
                    r["step"],
                    r["pings_per_s"],
                    lat.get("p50"),
                    lat.get("p95"),
                    lat.get("p99"),
                    lat.get("p99.9"),
                    r["errors"],
                    r["events_per_s"],
                    r["offers_per_s"],
                    r["offer_latency_ms"].get("p50", "-"),
                    r["offer_latency_ms"].get("p99", "-"),
                    r["no_event_latency_ms"].get("p99", "-"),
                    r["service_cpu_percent"],
                    r["service_rss_mb"],
                    r["generator_cpu_percent"],
                    r.get("machine_cpu_percent", "-"),
                )
            )
        )
    for kind in ("single", "batch"):
        for r in doc.get(f"{kind}_median", []):
            print(
                f"{r['step'].split(' #')[0]}: median p99 {r['latency_ms'].get('p99')} ms of "
                f"{r['p99_ms_of_passes']}, errors {r['errors']}, "
                f"late sends (most) {r['late_sends']}"
            )
    for key in (
        "knee_single_pings_per_s",
        "p99_ms_at_knee_single",
        "knee_batch_pings_per_s",
        "p99_ms_at_knee_batch",
        "redis_round_trips_per_no_event_ping",
        "wrk_max_single_pings_per_s",
        "wrk_p99_ms_at_max_single",
        "wrk_max_batch_pings_per_s",
        "wrk_p99_ms_at_max_batch",
        "audiences_cpu_per_request_ratio_on_off",
        "audiences_p50_ratio_on_off",
        "audiences_p99_ratio_on_off",
        "audiences_offer_p50_ratio_on_off",
        "host_bare_rate_against_issue",
        "targets_scaled_to_host_pings_per_s",
    ):
        print(f"{key}: {doc.get(key)}")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, limit in ((axes[0], "single", SINGLE_P99_MS), (axes[1], "batch", BATCH_P99_MS)):
        rows = doc.get(f"{key}_median", doc[key])  # with --ramps N, the median pass of each rate
        x = [r["pings_per_s"] for r in rows]
        for pct in ("p50", "p95", "p99", "p99.9"):
            ax.plot(x, [r["latency_ms"].get(pct, float("nan")) for r in rows], "o-", label=pct)
        ax.axhline(limit, color="grey", linestyle="--", label=f"p99 target {limit:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("achieved pings/s")
        paced = bool(rows) and rows[0].get("driver") == "wrk"
        ax.set_ylabel(
            "latency ms (from the actual send)" if paced else "latency ms (from intended send time)"
        )
        # What the latency is read against: on a machine shared with Redis and the generator,
        # the knee sits where the cores run out.
        busy = ax.twinx()
        busy.plot(
            x, [r.get("machine_cpu_percent", float("nan")) for r in rows], "k:", label="machine CPU"
        )
        busy.set_ylim(0, 100 * doc.get("machine", {}).get("cores", 2))
        busy.set_ylabel("machine CPU % (100 = one core), dotted")
        setup = doc.get("deployment", {})
        where = (
            f", {setup['instances']} instances on a Redis Cluster"
            if setup.get("redis") == "cluster"
            else ""
        )
        medians = f", medians of {rows[0]['passes']} ramps" if rows and "passes" in rows[0] else ""
        ax.set_title(f"{key} ({rows[0]['codec'] if rows else ''}){where}{medians}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def rates(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x]

    def rates_int(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    ap.add_argument("--zones", type=int, default=105_000, help="workload (a) scaled to this many")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="service worker processes in all (with --cluster: split evenly over the instances)",
    )
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="run on a Redis Cluster of our own (3 primaries + 3 replicas on loopback) with "
        "--instances geoservice processes, requests spread over them",
    )
    ap.add_argument("--instances", type=int, default=2, help="service instances with --cluster")
    ap.add_argument(
        "--rates",
        type=rates,
        default=[500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000],
        help="req/s",
    )
    ap.add_argument(
        "--batch-rates",
        type=rates,
        # Up to the target (2,500 x 20 = 50,000 pings/s): a fast host passes 1,200 within 20 ms.
        default=[50, 100, 200, 400, 600, 800, 1200, 1600, 2000, 2500],
        help="req/s",
    )
    ap.add_argument(
        "--ramps",
        type=int,
        default=1,
        help="run the ramps this many times; the knees then come from each rate's median p99 "
        "(on a noisy machine, 3 says more than 1)",
    )
    ap.add_argument("--batch", type=int, default=20, help="pings per batched request")
    ap.add_argument("--codec", choices=("json", "msgpack"), default="json", help="single pings")
    ap.add_argument("--batch-codec", choices=("json", "msgpack"), default="msgpack")
    ap.add_argument("--interval-s", type=float, default=5.0, help="between a device's requests")
    ap.add_argument("--batch-interval-s", type=float, default=1.0, help="between batched fixes")
    ap.add_argument("--duration-s", type=float, default=10.0, help="recorded, per step")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="not recorded, per step")
    ap.add_argument("--warmup-step-s", type=float, default=15.0, help="a warm-up step (0: none)")
    ap.add_argument(
        "--warmup-rate",
        type=float,
        default=400,
        help="req/s of the warm-up step, in which every device of the run pings once (first "
        "contacts: enters and offers in every zone a phone stands in)",
    )
    ap.add_argument(
        "--connections",
        type=int,
        default=128,
        help="of the open-loop driver: more than a step's requests in flight, so that a slow "
        "answer holds up no request behind it",
    )
    ap.add_argument(
        "--wrk-connections",
        type=rates_int,
        default=[4, 8, 12, 16, 32],
        help="wrk runs after the ramp, one per connection count ('': none)",
    )
    ap.add_argument("--wrk-duration-s", type=float, default=8.0)
    ap.add_argument(
        "--driver",
        choices=("wrk", "lean", "aiohttp"),
        default="wrk",
        help="the open-loop ramp. wrk: the planned requests paced by Debian's wrk (loadtest/"
        "wrk.py; the lean driver when wrk is missing); lean: sent from Python over raw "
        "connections (loadtest/lean.py; also times offer and no-event requests apart, at ~3x "
        "wrk's CPU); aiohttp: computed while sending, through aiohttp's client (costs most)",
    )
    ap.add_argument(
        "--known-devices",
        type=int,
        default=1_000_000,
        help="devices with consent and state on record before the ramp (its devices among them)",
    )
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--customer-share", type=float, default=0.3, help="devices with a customer")
    ap.add_argument("--audiences", choices=("on", "off"), default="on", help="during the ramp")
    ap.add_argument(
        "--compare-audiences-rate",
        type=float,
        default=0,
        help="single req/s of extra steps with and without the audience offer (0: skip)",
    )
    ap.add_argument("--compare-audiences-rounds", type=int, default=1, help="on-off-off-on rounds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--yardstick-s",
        type=float,
        default=6.0,
        help="seconds of each of the host's yardsticks (bench_floor; 0 skips them)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: loadtest/results/latest.json, with --cluster latest-cluster.json; the "
        "plot (.png) and the service logs (-service*.log) go beside it",
    )
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = RESULTS_DIR / ("latest-cluster.json" if args.cluster else "latest.json")
    if args.workers < 1 or args.instances < 1:
        ap.error("--workers and --instances must be at least 1")
    if args.cluster and args.workers % args.instances:
        ap.error(f"--workers {args.workers} cannot be split evenly over {args.instances} instances")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM as Ctrl-C: the runner cancels the run, whose clean-up stops the services and then
    # the cluster (asyncio.Runner turns SIGINT into a cancellation of the main task).
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    # A shell starts a background job (`make bench &`) with SIGINT ignored; the runner then
    # installs no handler of its own and neither Ctrl-C nor SIGTERM would stop the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # What the service runs is what the tree held when it started, not at the end of the run.
    source = source_version()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        doc = runner.run(bench(args))
    doc = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "loadtest.bench", *(argv or sys.argv[1:])]),
        "knobs": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "source": source,
        **doc,
    }
    summarise(doc)
    print_table(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plot(doc, png)
    print(f"\nwrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
