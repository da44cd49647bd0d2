"""Smoke test of the load-test simulator: a few seconds of walking devices against a real app."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import TenantFactory, TenantKeys

pytest.importorskip("hdrh")

from loadtest.bench import (
    count_no_event_round_trips,
    cpu_costs,
    customer_of,
    knee,
    load_offers,
    median_rows,
    plot,
    set_audience_offer,
)
from loadtest.bench_pings import LoadConfig, drive, import_zones
from loadtest.city import City
from loadtest.lean import drive_lean, plan


async def city_service(
    client: TestClient[web.Request, web.Application], tenant: TenantKeys
) -> tuple[str, City]:
    """The app's base URL and a 200-zone city imported for the tenant."""
    base_url = str(client.server.make_url("")).rstrip("/")
    city = City.workload_a(200, seed=1, dwell_s=60)
    async with aiohttp.ClientSession() as session:
        calls = await import_zones(session, base_url, tenant.secret_key, city)
    assert [c.status for c in calls] == [200]
    return base_url, city


async def test_simulator_drives_pings_and_gets_events(
    client: TestClient[web.Request, web.Application], make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant("bench")
    base_url, city = await city_service(client, tenant)

    config = LoadConfig(devices=20, interval_s=1.0, duration_s=3.0, warmup_s=0.0, connections=8)
    result = await drive(base_url, tenant.sdk_key, city, config)

    assert result.ok > 0
    assert dict(result.statuses) == {"200": result.ok}, result.error_samples
    assert sum(result.events.values()) >= 1
    assert result.unfinished == 0


async def test_the_bench_counts_one_round_trip_and_five_commands_per_no_event_ping(
    client: TestClient[web.Request, web.Application], make_tenant: TenantFactory, redis_url: str
) -> None:
    """The figure the issue asks to count, by make bench's own counter (INFO commandstats
    around one ping per device, less the change feed's idle rate): one EVALSHA, whose script
    reads the consent and the state and writes the state and its TTL."""
    tenant = await make_tenant("noevent")
    base_url = str(client.server.make_url("")).rstrip("/")
    result = await count_no_event_round_trips(base_url, tenant.sdk_key, [redis_url], devices=100)
    assert result["statuses"] == {"200": 100}
    assert result["commands_per_ping"] == {
        "evalsha": 1.0, "hmget": 1.0, "hgetall": 1.0, "hset": 1.0, "expire": 1.0}  # fmt: skip
    assert result["redis_round_trips_per_no_event_ping"] == 1.0


@pytest.mark.parametrize(("batch", "codec"), [(1, "json"), (5, "msgpack")])
async def test_lean_driver_sends_the_simulated_city_and_reads_every_answer(
    client: TestClient[web.Request, web.Application],
    make_tenant: TenantFactory,
    batch: int,
    codec: str,
) -> None:
    tenant = await make_tenant("lean")
    base_url, city = await city_service(client, tenant)
    config = LoadConfig(
        devices=20, interval_s=1.0, batch=batch, codec=codec, duration_s=3.0, warmup_s=0.5,
        connections=4,
    )  # fmt: skip
    result = await drive_lean(base_url, tenant.sdk_key, city, config)

    assert dict(result.statuses) == {"200": result.ok}, result.error_samples
    # 20 devices, one request per device per period, over the 3 s window
    period = config.period_s
    assert abs(result.scheduled - 20 * 3.0 / period) <= 20
    assert result.ok == result.scheduled
    assert result.pings_ok == result.ok * batch
    assert sum(result.events.values()) >= 1
    assert result.latency_us.get_total_count() == result.ok
    assert result.unfinished == 0


@pytest.mark.parametrize(("batch", "codec"), [(1, "json"), (5, "msgpack")])
async def test_paced_wrk_sends_the_plan_on_time_and_counts_what_the_service_logged(
    client: TestClient[web.Request, web.Application],
    make_tenant: TenantFactory,
    batch: int,
    codec: str,
) -> None:
    """make bench's default driver: every planned request sent once, in order (a device's
    consent-carrying first request included: no 403), no earlier than planned, and the events
    it counts in the answers are the ones the service logged."""
    from loadtest import wrk

    if not wrk.available():
        pytest.skip("wrk is not installed (Debian: apt-get install wrk)")
    tenant = await make_tenant("paced")
    base_url, city = await city_service(client, tenant)
    config = LoadConfig(
        devices=30, interval_s=1.0, batch=batch, codec=codec, duration_s=3.0, warmup_s=0.0,
        connections=8,
    )  # fmt: skip
    planned = plan(base_url, tenant.sdk_key, city, config, time.time())
    started = time.perf_counter()
    run = await asyncio.to_thread(wrk.run_paced, [base_url], planned, codec, 8, 10.0)
    took = time.perf_counter() - started

    assert run["planned"] == run["sent"] == run["ok"] == len(planned)
    assert run["statuses"] == {"200": len(planned)}
    assert run["socket_errors"] == run["timeouts"] == run["late_sends"] == 0
    # paced, not as fast as possible: the plan spans ~3 s
    assert took >= run["span_s"] >= 2.5
    logged: dict[str, int] = {"enter": 0, "exit": 0, "dwell": 0}
    cursor: str | None = None
    async with aiohttp.ClientSession() as session:
        while True:
            query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            async with session.get(
                f"{base_url}/v1/events", params=query, headers=tenant.secret
            ) as response:
                assert response.status == 200, await response.text()
                page = await response.json()
            for event in page["events"]:
                if event["type"] in logged:
                    logged[event["type"]] += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert sum(logged.values()) >= 1
    assert run["events"] == logged


async def test_bench_offers_knee_and_plot(
    client: TestClient[web.Request, web.Application],
    make_tenant: TenantFactory,
    tmp_path: Path,
) -> None:
    """make bench's pieces: offers, interests and profiles load; customers' pings earn offers;
    the knee and the plot come out of the curve."""
    pytest.importorskip("matplotlib")
    tenant = await make_tenant("benchoffers")
    base_url, city = await city_service(client, tenant)
    async with aiohttp.ClientSession() as session:
        loaded = await load_offers(session, base_url, tenant.secret_key, customers=50, seed=1)
        await set_audience_offer(session, base_url, tenant.secret_key, on=True)
    assert loaded["profiles"] == 50
    assert loaded["interest_events_accepted"] == loaded["interest_events_sent"]

    config = LoadConfig(devices=20, interval_s=1.0, duration_s=3.0, warmup_s=0.0, connections=8)
    who = customer_of(0.5, 50)
    result = await drive(base_url, tenant.sdk_key, city, config, customer_of=who)
    assert dict(result.statuses) == {"200": result.ok}, result.error_samples
    assert result.offers >= 1
    assert result.offer_latency_us.get_total_count() >= 1

    def row(pings: float, p99: float, errors: int = 0) -> dict[str, Any]:
        return {"pings_per_s": pings, "latency_ms": {"p50": 1.0, "p99": p99}, "errors": errors,
                "codec": "json"}  # fmt: skip

    rows = [row(100, 3), row(200, 8), row(300, 9, errors=1), row(400, 50)]
    assert knee(rows, 10.0) == rows[1]
    assert knee(rows[3:], 10.0) is None
    # the paced driver sent 1 % of the step late (every connection busy): not a knee
    late = {**row(250, 6), "requests_per_s": 250, "window_s": 10.0, "late_sends": 25}
    assert knee([*rows, late], 10.0) == rows[1]
    assert knee([*rows, {**late, "late_sends": 2}], 10.0)["pings_per_s"] == 250
    plot({"single": rows, "batch": rows}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_ramps_run_again_give_knees_from_median_passes(tmp_path: Path) -> None:
    """--ramps 3: per rate the pass with the median p99 stands for the rate; an error in any
    pass, or one pass with too many late sends, keeps the rate from being a knee."""

    def step(rate: float, p99: float, errors: int = 0, late: int = 0) -> dict[str, Any]:
        return {"step": f"single {rate:g}/s", "target_requests_per_s": rate,
                "pings_per_s": rate, "requests_per_s": rate, "window_s": 10.0, "codec": "json",
                "latency_ms": {"p50": 1.0, "p99": p99}, "errors": errors,
                "late_sends": late}  # fmt: skip

    rows = [
        *(step(500, p99) for p99 in (4.0, 30.0, 6.0)),  # one slow pass: median 6 ms
        *(step(1000, p99) for p99 in (9.0, 8.0, 12.0)),  # median 9 ms
        step(1500, 5.0), step(1500, 7.0), step(1500, 6.0, errors=1),  # an error in one pass
        step(2000, 8.0), step(2000, 9.0), step(2000, 9.5, late=500),  # one pass sent late
    ]  # fmt: skip
    medians = {r["target_requests_per_s"]: r for r in median_rows(rows)}
    assert {rate: r["latency_ms"]["p99"] for rate, r in medians.items()} == {
        500: 6.0, 1000: 9.0, 1500: 6.0, 2000: 9.0}  # fmt: skip
    assert medians[500]["p99_ms_of_passes"] == [4.0, 30.0, 6.0]
    assert medians[1500]["errors"] == 1
    assert medians[2000]["late_sends"] == 500
    top = knee(list(medians.values()), 10.0)
    assert top is not None
    assert top["target_requests_per_s"] == 1000
    # without repeats the single slow pass would have decided: 500/s at 30 ms is no knee
    assert knee(rows[1:2], 10.0) is None
    plot({"single": rows, "batch": rows, "single_median": list(medians.values())},
         tmp_path / "medians.png")  # fmt: skip
    assert (tmp_path / "medians.png").read_bytes()[:4] == b"\x89PNG"


def test_cpu_costs_per_request_ping_node_and_primary() -> None:
    """The capacity figures of make bench: percent of a core over the window -> CPU ms."""
    summary = {"requests_per_s": 400.0, "pings_per_s": 8000.0}
    resources = {
        "service_cpu_percent": 40.0,
        "redis_cpu_percent": 8.0,
        "processes": [
            {"role": "main", "cpu_percent": 40.0},
            {"role": "redis", "node": "7001 primary", "cpu_percent": 6.0},
            {"role": "redis", "node": "7004 replica", "cpu_percent": 2.0},
        ],
    }
    commands = {"7001 primary": {"evalsha_usec": 600_000}}  # 0.6 s of scripts in 15 s
    costs = cpu_costs(summary, resources, commands, window_s=15.0)
    assert costs["service_cpu_ms_per_request"] == 1.0
    assert costs["service_cpu_ms_per_ping"] == 0.05
    assert costs["redis_cpu_ms_per_request"] == 0.2
    assert costs["redis_node_cpu_ms_per_request"] == {"7001 primary": 0.15, "7004 replica": 0.05}
    assert costs["redis_evalsha_ms_per_request_by_primary"] == {"7001 primary": 0.1}
    idle = cpu_costs({"requests_per_s": 0.0, "pings_per_s": 0.0}, resources, {}, 15.0)
    assert idle["service_cpu_ms_per_request"] is None


def test_wrk_output_is_read_in_milliseconds_and_the_best_run_is_within_the_limit() -> None:
    from loadtest import wrk

    output = """Running 8s test @ http://127.0.0.1:1
  1 threads and 8 connections
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    2.50ms
     99%   12.03ms
  22000 requests in 8.00s, 3.50MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:   2750.12
"""
    row = wrk.parse(output)
    assert row["requests_per_s"] == 2750.12
    assert row["latency_ms"] == {"p50": 0.85, "p75": 1.2, "p90": 2.5, "p99": 12.03}
    assert row["non_2xx"] == 5
    assert row["socket_errors"] == 3

    def run(pings: float, p99: float, non_2xx: int = 0) -> dict[str, Any]:
        return {"pings_per_s": pings, "latency_ms": {"p99": p99}, "non_2xx": non_2xx,
                "socket_errors": 0}  # fmt: skip

    runs = [run(1000, 3), run(2000, 9), run(3000, 8, non_2xx=1), run(4000, 30)]
    assert wrk.best(runs, 10.0) == runs[1]
    assert wrk.best(runs[3:], 10.0) is None


def test_bench_floor_ladder_answers_every_request_of_each_rung(tmp_path: Path) -> None:
    """python -m loadtest.bench_floor, short: the yardsticks, then the bare app, /healthz, the
    no-event ping and the no-event batch (the consent pass before them makes every ping a 200)
    each answer all their requests, and each rung costs the server some CPU per request."""
    import orjson

    from loadtest import bench_floor, wrk

    if not wrk.available():
        pytest.skip("wrk is not installed (Debian: apt-get install wrk)")
    out = tmp_path / "floor.json"
    log = tmp_path / "service.log"
    args = ["--rates", "300", "--batch-rates", "300", "--duration-s", "1", "--yardstick-s", "1"]
    assert bench_floor.main([*args, "--out", str(out), "--log", str(log)]) == 0
    result = orjson.loads(out.read_bytes())
    sticks = result["yardsticks"]
    assert sticks["bare_one_process"]["requests_per_s"] > 0
    assert set(sticks["evalsha_per_s"]) == {
        "redis_py_1_callers",
        "redis_py_32_callers",
        "autopipeline_1_callers",
        "autopipeline_32_callers",
    }
    assert min(sticks["evalsha_per_s"].values()) > 0
    factor = sticks["bare_rate_against_issue"]
    assert factor == pytest.approx(sticks["bare_one_process"]["requests_per_s"] / 28_000, 0.01)
    steps = [row["step"] for row in result["steps"]]
    assert steps == ["bare", "healthz", "no-event ping", "no-event batch20"]
    # the 20 fixes of a batch cost the workers more than one fix does
    assert result["per_added_fix"]["requests_per_s"] == pytest.approx(300, abs=2)
    assert result["per_added_fix"]["service_cpu_ms"] > 0
    for row in result["steps"]:
        assert row["statuses"] == {"200": 300}, row
        assert row["service_cpu_ms_per_request"] > 0, row
    assert result["steps"][0]["redis_cpu_ms_per_request"] == 0  # the bare app has no store
    assert result["service"]["exit_code"] == 0
