"""`python -m loadtest.bench_floor`: what a request costs before any geofencing, on this machine.

The same paced `wrk` as `make bench`'s ramp (open loop, 128 connections, loopback) sends, at
each rate, 10 s of:
1. `bare`: a bare aiohttp app in as many processes as the service has workers (uvloop,
   SO_REUSEPORT, no middleware, no store), which reads the body of a ping and answers what a
   no-event ping answers: the framework's and the kernel's own floor per request;
2. `healthz`: the service's `GET /healthz` (its middleware and router, no store);
3. `no-event ping`: the service's `POST /v1/pings`, one fix far from every zone, of 20,000
   devices that sent their consent before (one Redis round trip, no event, no offer);
4. `no-event batch20`: the same with 20 fixes a request in msgpack, as `make bench`'s batches
   (`--batch-rates`); beside the single ping at the same request rate it gives what one more
   fix costs.
For each it prints the latency percentiles and the CPU per request of the service's (or the
bare app's) processes and of Redis. The ladder says how much of a request's cost is ours:
`make bench`'s workload adds events and offers on top of the third rung. Needs `wrk`.

First, the yardsticks the load-test issue sizes its targets by ("a bare aiohttp handler does
about 28,000 req/s on one core here and redis-py asyncio about 10,000-29,000 EVALSHA/s"): the
bare app in one process under closed-loop `wrk`, and redis-py's asyncio client running a
trivial script against a private redis-server, one caller and 32 at once (and the service's
automatic pipeline beside it). Hosts differ by a factor of 2-4 for this service from one day
to the next; the yardsticks say which kind of day a run had, so its figures can be compared
with another's (`--yardstick-s 0` skips them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import orjson
from aiohttp import web

from geoservice.autopipeline import AutoPipeline
from geoservice.embedded_redis import EmbeddedRedis
from loadtest import wrk
from loadtest.bench_pings import HOST, ResourceWatch, Service, create_tenant, free_port
from loadtest.lean import PlannedRequest

NO_EVENT_ANSWER = orjson.dumps({"events": [], "offers": [], "ignored": []})
FAR_AWAY = (46.5, 7.5)  # no demo or bench zone near it
DEVICES = 20_000
CONNECTIONS = 128
BATCH_FIXES = 20
NO_EVENT_PING = "no-event ping"
NO_EVENT_BATCH = f"no-event batch{BATCH_FIXES}"
# What the load-test issue quotes for its machine: the targets were sized by these.
ISSUE_BARE_REQUESTS_PER_S = 28_000
ISSUE_EVALSHA_PER_S = (10_000, 29_000)
ISSUE_TARGET_PINGS_PER_S = {"single": 5_000, "batch": 50_000}
TRIVIAL_SCRIPT = "return ARGV[1]"


# -- the bare app ------------------------------------------------------------------------------


async def _bare_answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=NO_EVENT_ANSWER, content_type="application/json")


def _serve_bare_process(port: int) -> None:
    import uvloop

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _bare_answer)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, reuse_port=True, backlog=2048).start()
        await asyncio.Event().wait()

    uvloop.run(serve())


def serve_bare(port: int, processes: int) -> None:
    """The bare app's parent: its processes share the port, as the service's workers do."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_serve_bare_process, args=(port,)) for _ in range(processes)]
    for child in children:
        child.start()

    def stop(signum: int, frame: object) -> None:
        # Else the children outlive a terminated parent, still serving the port.
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.join()


def start_bare(port: int, processes: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "loadtest.bench_floor", "--serve-bare", str(port)]
    return subprocess.Popen([*command, "--workers", str(processes)])


@contextlib.asynccontextmanager
async def running_bare(processes: int) -> AsyncIterator[tuple[str, ResourceWatch]]:
    """The bare app answering on a port of its own: its base URL and a watch on its processes."""
    port = free_port()
    bare = start_bare(port, processes)
    try:
        base = f"http://{HOST}:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.post(f"{base}/v1/pings", data=b"{}") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield base, ResourceWatch(bare.pid)
    finally:
        bare.terminate()
        bare.wait(10)


# -- the requests ------------------------------------------------------------------------------


def ping_body(device: int, ts_ms: int, consent: bool, fixes: int = 1, codec: str = "json") -> bytes:
    """The device's last `fixes` positions, a second apart, the last one taken at ts_ms."""
    body: dict[str, Any] = {
        "device_id": f"floor-{device:06d}",
        "pings": [
            {"lat": FAR_AWAY[0], "lon": FAR_AWAY[1], "accuracy_m": 10, "ts": ts_ms - 1000 * k}
            for k in reversed(range(fixes))
        ],
    }
    if consent:
        body["consent"] = {"location": True}
    return msgpack.packb(body) if codec == "msgpack" else orjson.dumps(body)


def http_request(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", codec: str = "json"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if method == "POST":
        media = f"application/{codec}"
        lines += [f"Content-Type: {media}", f"Accept: {media}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def plan_pings(
    rate: float, seconds: float, sdk_key: str, consent: bool, fixes: int = 1, codec: str = "json"
) -> list[PlannedRequest]:
    """Each device pings every DEVICES / rate seconds (5 s at 4,000/s: under its rate limit),
    with its last fix stamped at the send time and the others a second apart before it (20 s
    at 1,000/s: a batch never reaches back to the one before), so none is stale."""
    count = round(rate * seconds)
    now_ms = time.time() * 1000
    auth = {"Authorization": f"Bearer {sdk_key}"}
    return [
        PlannedRequest(
            i / rate,
            fixes,
            http_request(
                "POST",
                "/v1/pings",
                auth,
                ping_body(i % DEVICES, int(now_ms + 1000 * i / rate), consent, fixes, codec),
                codec,
            ),
        )
        for i in range(count)
    ]


def plan_same(rate: float, seconds: float, wire: bytes) -> list[PlannedRequest]:
    return [PlannedRequest(i / rate, 1, wire) for i in range(round(rate * seconds))]


def step(
    label: str,
    base_url: str,
    planned: list[PlannedRequest],
    watch: ResourceWatch,
    codec: str = "json",
) -> dict[str, Any]:
    rate = len(planned) / max(planned[-1].intended, 1e-9)

    def on_window(starting: bool) -> None:
        (watch.open if starting else watch.close)()

    result = wrk.run_paced([base_url], planned, codec, CONNECTIONS, 5.0, on_window)
    resources = watch.report()
    requests = max(1, result["answered"])
    window_s = resources["window_s"]
    service_ms = 10 * resources["service_cpu_percent"] * window_s / requests
    redis_ms = 10 * resources["redis_cpu_percent"] * window_s / requests
    row = {
        "step": label,
        "target_requests_per_s": round(rate),
        "statuses": result["statuses"],
        "late_sends": result["late_sends"],
        "latency_ms": result["latency_ms"],
        "service_cpu_percent": resources["service_cpu_percent"],
        "redis_cpu_percent": resources["redis_cpu_percent"],
        "service_cpu_ms_per_request": round(service_ms, 4),
        "redis_cpu_ms_per_request": round(redis_ms, 4),
        "generator_cpu_percent": result["generator_cpu_percent"],
    }
    lat = result["latency_ms"]
    print(
        f"  {label:<16} {rate:>6.0f}/s  p50 {lat['p50']:>6.2f}  p99 {lat['p99']:>7.2f} ms  "
        f"CPU ms/request: processes {service_ms:.3f}, redis {redis_ms:.3f}  "
        f"(wrk {result['generator_cpu_percent']} %, late {result['late_sends']}, "
        f"statuses {result['statuses']})",
        flush=True,
    )
    return row


def marginal_fix_cost(rows: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """(batch - single) / (BATCH_FIXES - 1) at the first request rate both rungs ran."""
    single = {r["target_requests_per_s"]: r for r in rows if r["step"] == NO_EVENT_PING}
    batch = [r for r in rows if r["step"] == NO_EVENT_BATCH]
    for b in batch:
        s = single.get(b["target_requests_per_s"])
        if s is None:
            continue
        return {
            "requests_per_s": b["target_requests_per_s"],
            **{
                f"{part}_cpu_ms": round(
                    (b[f"{part}_cpu_ms_per_request"] - s[f"{part}_cpu_ms_per_request"])
                    / (BATCH_FIXES - 1),
                    5,
                )
                for part in ("service", "redis")
            },
        }
    return None


# -- the yardsticks ---------------------------------------------------------------------------


async def bare_on_one_core(seconds: float) -> dict[str, Any]:
    """The bare app in one process (so on one core at most), `wrk` closed loop from the other."""
    wire = http_request("POST", "/v1/pings", {}, ping_body(0, int(time.time() * 1000), False))
    async with running_bare(1) as (base, watch):
        watch.open()
        runs = await asyncio.to_thread(wrk.run, [base], plan_same(1000, 1, wire), [32], seconds, 1)
        watch.close()
    resources = watch.report()
    return {
        "requests_per_s": runs[0]["requests_per_s"],
        "latency_ms": runs[0]["latency_ms"],
        "server_cpu_percent": resources["service_cpu_percent"],
        "wrk_cpu_percent": runs[0]["wrk_cpu_percent"],
    }


async def _calls_per_s(call: Callable[[], Awaitable[None]], callers: int, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await call()
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return count / (time.perf_counter() - started)


async def evalsha_rates(seconds: float) -> dict[str, float]:
    """redis-py's asyncio client (hiredis, TCP, a pool) and the service's automatic pipeline
    running one trivial script, one caller at a time and 32 at once, on a private Redis."""
    import redis.asyncio as redis_asyncio
    import uvloop

    rates: dict[str, float] = {}
    with EmbeddedRedis(tcp_port=free_port()) as server:
        url = f"redis://{HOST}:{server.tcp_port}"

        async def measure() -> None:
            client = redis_asyncio.Redis.from_url(url, max_connections=64)
            pipeline = AutoPipeline(url, timeout_s=5.0)
            try:
                sha = await client.script_load(TRIVIAL_SCRIPT)

                async def with_redis_py() -> None:
                    await client.evalsha(sha, 0, "x")

                async def with_pipeline() -> None:
                    await pipeline.execute("EVALSHA", sha, 0, "x")

                for name, call in (("redis_py", with_redis_py), ("autopipeline", with_pipeline)):
                    for callers in (1, 32):
                        await _calls_per_s(call, callers, min(0.5, seconds))  # warm
                        rate = await _calls_per_s(call, callers, seconds)
                        rates[f"{name}_{callers}_callers"] = round(rate)
            finally:
                await pipeline.close()
                await client.aclose()

        # In a loop of its own (uvloop, as the service runs), in a thread: this one is running.
        await asyncio.to_thread(uvloop.run, measure())
    return rates


async def yardsticks(seconds: float) -> dict[str, Any] | None:
    """The issue's yardsticks measured on this host, and its targets scaled by the first."""
    low, high = ISSUE_EVALSHA_PER_S
    print(
        "yardsticks (the load-test issue's machine: bare aiohttp "
        f"~{ISSUE_BARE_REQUESTS_PER_S:,} req/s on one core, redis-py asyncio {low:,}-{high:,} "
        "EVALSHA/s):",
        flush=True,
    )
    if not wrk.available():
        print("  wrk is not installed: no yardsticks", flush=True)
        return None
    bare = await bare_on_one_core(seconds)
    print(
        f"  bare aiohttp app, one process, wrk -c 32: {bare['requests_per_s']:,.0f} req/s "
        f"(server CPU {bare['server_cpu_percent']} %, wrk {bare['wrk_cpu_percent']} %)",
        flush=True,
    )
    evalsha = await evalsha_rates(seconds / 2)
    print(
        "  EVALSHA of a trivial script: redis-py {redis_py_1_callers:,}/s alone, "
        "{redis_py_32_callers:,}/s 32 at once; the service's pipeline {autopipeline_1_callers:,}"
        "/s alone, {autopipeline_32_callers:,}/s 32 at once".format(**evalsha),
        flush=True,
    )
    # How this host compares with the issue's: its targets scaled by the bare app's rate.
    factor = bare["requests_per_s"] / ISSUE_BARE_REQUESTS_PER_S
    scaled = {kind: round(target * factor) for kind, target in ISSUE_TARGET_PINGS_PER_S.items()}
    print(
        f"  this host does {factor:.2f}x the issue's bare rate: its targets scaled alike are "
        f"{scaled['single']:,} single and {scaled['batch']:,} batched pings/s",
        flush=True,
    )
    return {
        "bare_one_process": bare,
        "evalsha_per_s": evalsha,
        "bare_rate_against_issue": round(factor, 3),
        "targets_scaled_pings_per_s": scaled,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    measured = await yardsticks(args.yardstick_s) if args.yardstick_s > 0 else None
    async with running_bare(args.workers) as (base, watch):
        print(f"bare aiohttp app, {args.workers} processes:", flush=True)
        for rate in args.rates:
            planned = plan_pings(rate, args.duration_s, "none", consent=False)
            rows.append(await asyncio.to_thread(step, "bare", base, planned, watch))

    service = Service(args.workers, Path(args.log))
    service.start()
    try:
        await service.wait_ready()
        base = service.base_url
        async with aiohttp.ClientSession() as session:
            keys = await create_tenant(session, base, service.token)
        assert service.process is not None
        watch = ResourceWatch(service.process.pid)
        print(f"geoservice, {args.workers} workers, embedded Redis:", flush=True)
        healthz = http_request("GET", "/healthz", {})
        for rate in args.rates:
            planned = plan_same(rate, args.duration_s, healthz)
            rows.append(await asyncio.to_thread(step, "healthz", base, planned, watch))
        # Every device's consent first (unrecorded), so that the pings measured are no-event.
        consent = plan_pings(DEVICES / 10, 10, keys["sdk_key"], consent=True)
        await asyncio.to_thread(step, "(consent)", base, consent, watch)
        for rate in args.rates:
            planned = plan_pings(rate, args.duration_s, keys["sdk_key"], consent=False)
            rows.append(await asyncio.to_thread(step, NO_EVENT_PING, base, planned, watch))
        for rate in args.batch_rates:
            planned = plan_pings(
                rate, args.duration_s, keys["sdk_key"], False, BATCH_FIXES, "msgpack"
            )
            rows.append(
                await asyncio.to_thread(step, NO_EVENT_BATCH, base, planned, watch, "msgpack")
            )
    finally:
        exit_state = service.stop()
    per_fix = marginal_fix_cost(rows)
    if per_fix:
        print(
            f"one more fix in a request, at {per_fix['requests_per_s']:g} req/s: "
            f"{1000 * per_fix['service_cpu_ms']:.1f} us in the workers, "
            f"{1000 * per_fix['redis_cpu_ms']:.1f} us in Redis",
            flush=True,
        )
    return {
        "rates": args.rates,
        "workers": args.workers,
        "batch_rates": args.batch_rates,
        "yardsticks": measured,
        "steps": rows,
        "per_added_fix": per_fix,
        "service": exit_state,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_floor", description=__doc__)
    parser.add_argument("--rates", default="1000,2000,4000", help="req/s, comma-separated")
    parser.add_argument(
        "--batch-rates",
        default="1000",
        help="req/s of 20-fix requests, comma-separated (beside the same rate of single pings: "
        "what a fix costs)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument(
        "--yardstick-s",
        type=float,
        default=6.0,
        help="seconds of each yardstick (the bare app on one core, EVALSHA rates); 0 skips them",
    )
    parser.add_argument("--log", default="/tmp/geoservice-bench-floor-service.log")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    parser.add_argument("--serve-bare", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare, args.workers)
        return 0
    if not wrk.available():
        print("wrk is not installed (Debian: apt-get install wrk; `make wrk` does it)")
        return 1
    args.rates = [float(r) for r in args.rates.split(",") if r]
    args.batch_rates = [float(r) for r in args.batch_rates.split(",") if r]
    result = asyncio.run(run(args))
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
