"""`python -m loadtest.bench_import`: what a zone import costs the event loop of a worker.

A directory of `--zones` circles (as `loadtest.bench_margin` builds it, heap frozen as the
service does), then `--chunks` imports of `--chunk-size` new circles, applied on the event loop
as a worker applies `POST /v1/zones/import` (the one that took the request and every other, from
the change feed), while the loop ticks every millisecond. Two ways, alternating by round: the
new zones' covers and the index's table rebuilds (merges) computed in the call ("in-call", how
every import was applied before), or in threads beside the loop ("thread":
ZoneDirectory.apply_many_beside, zones._merge_beside). Prints, per
way, medians over the rounds: the loop's longest pause, the p99 of its 1 ms ticks, and the time
until the last merge has landed.

`--live`: the same end to end instead. The service (`geoservice serve --workers 2`, its own
Redis; `--workers` to change it) gets `--zones` circles through `POST /v1/zones/import` (each
request's time printed), then `--chunks` imports of
`--chunk-size` more while a client sends `--ping-rate` single pings a second (devices far from
every zone: the one-round-trip path). Prints the pings' p50, p99 and longest time before and
during the imports (HdrHistogram-free: every latency is kept), and what the imports took.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from geoservice import index as index_module
from geoservice.server import event_loop_factory
from geoservice.zones import ZoneDirectory
from loadtest.bench_margin import TENANT, LoopTicker, circles, directory_of
from loadtest.bench_pings import create_tenant
from loadtest.city import feature
from loadtest.deployment import Deployment

DEFERRED_MERGE_MIN_ENTRIES = index_module.DEFERRED_MERGE_MIN_ENTRIES


@dataclass(frozen=True)
class Round:
    way: str  # in-call | thread
    longest_pause_ms: float
    p99_tick_ms: float
    merged_after_s: float


def merging(directory: ZoneDirectory) -> bool:
    tenant = directory.tenants[TENANT]
    return any(i._merging is not None or i.merge_wanted for i in (tenant.index, tenant.outer))


async def one_round(args: argparse.Namespace, way: str, seed: int) -> Round:
    index_module.DEFERRED_MERGE_MIN_ENTRIES = (
        10**12 if way == "in-call" else DEFERRED_MERGE_MIN_ENTRIES
    )
    directory = directory_of(args.zones, seed)
    rng = random.Random(seed + 1)
    chunks = [circles(f"new{c}-", args.chunk_size, rng) for c in range(args.chunks)]
    ticker = LoopTicker()
    await asyncio.sleep(0.1)
    for chunk in chunks:
        if way == "in-call":
            directory.apply_many(TENANT, chunk)
        else:
            await directory.apply_many_beside(TENANT, chunk)
        await asyncio.sleep(0.2)  # the next request of the import
    applied = time.perf_counter()
    for _ in range(12_000):  # a minute at most
        if not merging(directory):
            break
        await asyncio.sleep(0.005)
    merged_after_s = time.perf_counter() - applied
    longest_ms, p99_ms = await ticker.stop()
    del directory
    gc.unfreeze()  # the next round builds its own
    return Round(way, longest_ms, p99_ms, merged_after_s)


def circle_features(prefix: str, count: int, rng: random.Random) -> list[dict[str, Any]]:
    return [feature(zone.zone_id, shape) for zone, shape in circles(prefix, count, rng)]


async def live(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="geoservice-bench-import-") as folder:
        deployment = Deployment(
            workers=args.workers,
            instances=1,
            cluster=False,
            log_stem=Path(folder) / "bench-import",
        )
        deployment.start()
        try:
            await deployment.ready()
            await live_run(args, deployment.base_urls[0], deployment.token)
        finally:
            deployment.stop()


async def live_run(args: argparse.Namespace, base_url: str, token: str) -> None:
    rng = random.Random(args.seed)
    async with aiohttp.ClientSession() as session:
        tenant = await create_tenant(session, base_url, token)
        secret = {"Authorization": f"Bearer {tenant['secret_key']}"}
        sdk = {"Authorization": f"Bearer {tenant['sdk_key']}"}

        retried = 0

        def encoded(features: list[dict[str, Any]]) -> bytes:
            return orjson.dumps({"type": "FeatureCollection", "features": features})

        async def import_chunk(body: bytes) -> float:
            """Seconds until it is in; a 503 is sent again, as a client would (create or
            replace: idempotent)."""
            nonlocal retried
            started = time.perf_counter()
            headers = {**secret, "Content-Type": "application/json"}
            for _ in range(5):
                async with session.post(
                    f"{base_url}/v1/zones/import", data=body, headers=headers
                ) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
                    assert response.status == 503, await response.text()
                retried += 1
                await asyncio.sleep(1)
            raise RuntimeError("an import failed five times")

        loading = [
            await import_chunk(
                encoded(circle_features(f"z{start}-", min(10_000, args.zones - start), rng))
            )
            for start in range(0, args.zones, 10_000)
        ]
        print(
            f"{args.zones} circles in requests of 10,000 ({args.workers} "
            f"worker{'s' if args.workers != 1 else ''}): "
            f"{', '.join(f'{t:.2f}' for t in loading)} s",
            flush=True,
        )
        await asyncio.sleep(20)  # the other worker applies them from the change feed
        latencies: dict[str, list[float]] = {"before": [], "during": []}
        phase = "before"

        async def one_ping(device: int) -> None:
            body = {
                "device_id": f"far-{device}",
                "consent": {"location": True},
                "pings": [
                    {"lat": -45.0, "lon": -120.0, "accuracy_m": 10, "ts": int(time.time() * 1000)}
                ],
            }
            started = time.perf_counter()
            async with session.post(f"{base_url}/v1/pings", json=body, headers=sdk) as response:
                await response.read()
                ok = response.status == 200
            latencies[phase].append((time.perf_counter() - started) * 1000 if ok else math.inf)

        pinging = True

        async def pinger() -> None:
            tasks: set[asyncio.Task[None]] = set()
            device = 0
            started = time.perf_counter()
            while pinging:
                device += 1
                task = asyncio.ensure_future(one_ping(device % 5_000))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(
                    max(0.0, started + device / args.ping_rate - time.perf_counter())
                )
            await asyncio.gather(*tasks)

        # Built and encoded before the pings start: in the pings' own event loop, making 10,000
        # features and 1.5 MB of JSON holds their answers up (up to 1.5 s on this machine), which
        # would be counted as the service's.
        bodies = [
            encoded(circle_features(f"new{c}-", args.chunk_size, rng)) for c in range(args.chunks)
        ]
        pings = asyncio.ensure_future(pinger())
        await asyncio.sleep(5)
        phase = "during"
        took = [await import_chunk(body) for body in bodies]
        await asyncio.sleep(2)  # the change feed's applies in the other worker
        pinging = False
        await pings
    print(
        f"{args.zones} circles, then {args.chunks} x {args.chunk_size} more through the API; "
        f"imports took {', '.join(f'{t:.2f}' for t in took)} s ({retried} answered 503 and were"
        " sent again)"
    )
    for name, values in latencies.items():
        values.sort()
        failed = sum(1 for v in values if v == math.inf)
        print(
            f"  pings {name:6} {len(values):5}  p50 {values[len(values) // 2]:7.1f} ms"
            f"  p99 {values[int(len(values) * 0.99)]:7.1f} ms  longest {values[-1]:7.1f} ms"
            f"  failed {failed}"
        )


async def run(args: argparse.Namespace) -> list[Round]:
    rounds: list[Round] = []
    for r in range(args.rounds):
        for way in ("in-call", "thread"):
            rounds.append(await one_round(args, way, args.seed + r))
    return rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_import", description=__doc__)
    parser.add_argument("--zones", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--live", action="store_true", help="end to end, through the API")
    parser.add_argument("--ping-rate", type=float, default=200.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="--live: the service's workers (with 1, no other worker applies each import beside "
        "the one that took it)",
    )
    args = parser.parse_args(argv)
    if args.live:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(live(args))
        return 0
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        rounds = runner.run(run(args))
    print(
        f"{args.zones} circles, then {args.chunks} x {args.chunk_size} more; "
        f"{args.rounds} rounds per way (medians):"
    )
    for way in ("in-call", "thread"):
        mine = [r for r in rounds if r.way == way]
        print(
            f"  {way:8} longest pause {statistics.median(r.longest_pause_ms for r in mine):7.1f} ms"
            f"  p99 tick {statistics.median(r.p99_tick_ms for r in mine):7.1f} ms"
            f"  last merge landed {statistics.median(r.merged_after_s for r in mine):5.2f} s"
            " after the last chunk"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
