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
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from geoservice import index as index_module
from geoservice.index import Circle
from geoservice.server import event_loop_factory
from geoservice.zones import Zone, ZoneDirectory
from loadtest.bench_margin import TENANT, LoopTicker, directory_of

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
    chunks = [
        [
            (
                Zone(f"new{c}-{i}", f"new{c}-{i}", {}),
                Circle(47 + rng.uniform(-1, 1), 8 + rng.uniform(-1.5, 1.5), rng.uniform(50, 500)),
            )
            for i in range(args.chunk_size)
        ]
        for c in range(args.chunks)
    ]
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
    args = parser.parse_args(argv)
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
