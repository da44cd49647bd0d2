"""`python -m loadtest.bench_floor`: what a request costs before any geofencing, on this machine.

The same paced `wrk` as `make bench`'s ramp (open loop, 128 connections, loopback) sends, at
each rate, 10 s of:
1. `bare`: a bare aiohttp app in as many processes as the service has workers (uvloop,
   SO_REUSEPORT, no middleware, no store), which reads the body of a ping and answers what a
   no-event ping answers: the framework's and the kernel's own floor per request;
2. `healthz`: the service's `GET /healthz` (its middleware and router, no store);
3. `no-event ping`: the service's `POST /v1/pings`, one fix far from every zone, of 20,000
   devices that sent their consent before (one Redis round trip, no event, no offer).
For each it prints the latency percentiles and the CPU per request of the service's (or the
bare app's) processes and of Redis. The ladder says how much of a request's cost is ours:
`make bench`'s workload adds events and offers on top of the third rung. Needs `wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from loadtest import wrk
from loadtest.bench_pings import HOST, ResourceWatch, Service, create_tenant, free_port
from loadtest.lean import PlannedRequest

NO_EVENT_ANSWER = orjson.dumps({"events": [], "offers": [], "ignored": []})
FAR_AWAY = (46.5, 7.5)  # no demo or bench zone near it
DEVICES = 20_000
CONNECTIONS = 128


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
    for child in children:
        child.join()


def start_bare(port: int, processes: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "loadtest.bench_floor", "--serve-bare", str(port)]
    return subprocess.Popen([*command, "--workers", str(processes)])


# -- the requests ------------------------------------------------------------------------------


def ping_body(device: int, ts_ms: int, consent: bool) -> bytes:
    body: dict[str, Any] = {
        "device_id": f"floor-{device:06d}",
        "pings": [{"lat": FAR_AWAY[0], "lon": FAR_AWAY[1], "accuracy_m": 10, "ts": ts_ms}],
    }
    if consent:
        body["consent"] = {"location": True}
    return orjson.dumps(body)


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def plan_pings(rate: float, seconds: float, sdk_key: str, consent: bool) -> list[PlannedRequest]:
    """Each device pings every DEVICES / rate seconds (5 s at 4,000/s: under its rate limit),
    with fixes stamped at their send time so none is stale."""
    count = round(rate * seconds)
    now_ms = time.time() * 1000
    auth = {"Authorization": f"Bearer {sdk_key}"}
    return [
        PlannedRequest(
            i / rate,
            1,
            http_request(
                "POST",
                "/v1/pings",
                auth,
                ping_body(i % DEVICES, int(now_ms + 1000 * i / rate), consent),
            ),
        )
        for i in range(count)
    ]


def plan_same(rate: float, seconds: float, wire: bytes) -> list[PlannedRequest]:
    return [PlannedRequest(i / rate, 1, wire) for i in range(round(rate * seconds))]


def step(
    label: str, base_url: str, planned: list[PlannedRequest], watch: ResourceWatch
) -> dict[str, Any]:
    rate = len(planned) / max(planned[-1].intended, 1e-9)

    def on_window(starting: bool) -> None:
        (watch.open if starting else watch.close)()

    result = wrk.run_paced([base_url], planned, "json", CONNECTIONS, 5.0, on_window)
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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    port = free_port()
    bare = start_bare(port, args.workers)
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
        watch = ResourceWatch(bare.pid)
        print(f"bare aiohttp app, {args.workers} processes:", flush=True)
        for rate in args.rates:
            planned = plan_pings(rate, args.duration_s, "none", consent=False)
            rows.append(await asyncio.to_thread(step, "bare", base, planned, watch))
    finally:
        bare.terminate()
        bare.wait(10)

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
            rows.append(await asyncio.to_thread(step, "no-event ping", base, planned, watch))
    finally:
        exit_state = service.stop()
    return {"rates": args.rates, "workers": args.workers, "steps": rows, "service": exit_state}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_floor", description=__doc__)
    parser.add_argument("--rates", default="2000,4000", help="req/s, comma-separated")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration-s", type=float, default=10.0)
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
    result = asyncio.run(run(args))
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
