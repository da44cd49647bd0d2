"""`python -m loadtest.bench_margin`: what a tenant's exit-margin change costs the event loop.

A directory of `--zones` circles (workload (a)'s radii, 50-500 m, in a 2 x 3 degree box), then
a new exit margin while a ping is looked up every millisecond: once with the grown-shape index
rebuilt on the event loop (below zones.BACKGROUND_REGROW_ZONES, how every tenant was served
before), once built in a thread beside it. Rounds alternate the two; the figures are medians.
Prints, per way: the event loop's longest pause, the p99 of its 1 ms ticks, the time until the
new margin is in use, and the lookups answered meanwhile.
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

from geoservice import zones as zones_module
from geoservice.index import Circle
from geoservice.server import event_loop_factory
from geoservice.zones import DEFAULT_EXIT_MARGIN_M, Zone, ZoneDirectory

TENANT = "t"
PROBE = (47.1, 8.1)


@dataclass(frozen=True)
class Round:
    way: str  # on-loop | thread
    longest_pause_ms: float
    p99_tick_ms: float
    in_use_after_s: float
    lookups_meanwhile: int


def circles(prefix: str, count: int, rng: random.Random) -> list[tuple[Zone, Circle]]:
    """`count` zones of workload (a)'s radii (50-500 m) in a 2 x 3 degree box."""
    return [
        (
            Zone(f"{prefix}{i}", f"{prefix}{i}", {}),
            Circle(47 + rng.uniform(-1, 1), 8 + rng.uniform(-1.5, 1.5), rng.uniform(50, 500)),
        )
        for i in range(count)
    ]


def directory_of(zone_count: int, seed: int) -> ZoneDirectory:
    directory = ZoneDirectory()
    directory.apply_many(TENANT, circles("z", zone_count, random.Random(seed)))
    directory.locate(TENANT, *PROBE, DEFAULT_EXIT_MARGIN_M)
    # As the service does after loading its zones (http/app.py): the collector skips them.
    gc.collect()
    gc.freeze()
    return directory


class LoopTicker:
    """A task that wakes every millisecond on the event loop: the gaps between its wake-ups
    are the loop's pauses (what every request of a worker would wait)."""

    def __init__(self) -> None:
        self.gaps_ms: list[float] = []
        self._done = asyncio.Event()
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        last = time.perf_counter()
        while not self._done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.gaps_ms.append((now - last) * 1000)
            last = now

    async def stop(self) -> tuple[float, float]:
        """(longest gap, p99 of the gaps) in ms."""
        self._done.set()
        await self._task
        gaps = sorted(self.gaps_ms)
        return gaps[-1], gaps[int(len(gaps) * 0.99)]


async def one_round(directory: ZoneDirectory, way: str, margin_m: float) -> Round:
    zones_module.BACKGROUND_REGROW_ZONES = 10**12 if way == "on-loop" else 2_000
    lookups = 0
    ticker = LoopTicker()
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    while directory.tenants[TENANT].exit_margin_m != margin_m:
        directory.locate(TENANT, *PROBE, margin_m)  # the ping that asks for the new margin
        lookups += 1
        await asyncio.sleep(0.001)
    in_use_after_s = time.perf_counter() - started
    longest_ms, p99_ms = await ticker.stop()
    return Round(way, longest_ms, p99_ms, in_use_after_s, lookups)


async def run(args: argparse.Namespace) -> list[Round]:
    directory = directory_of(args.zones, args.seed)
    rounds: list[Round] = []
    margin = DEFAULT_EXIT_MARGIN_M
    for _ in range(args.rounds):
        for way in ("on-loop", "thread"):
            margin = 45.0 if margin != 45.0 else 60.0  # a change every time
            rounds.append(await one_round(directory, way, margin))
    return rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_margin", description=__doc__)
    parser.add_argument("--zones", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        rounds = runner.run(run(args))
    print(f"{args.zones} circles, {args.rounds} rounds per way (medians):")
    for way in ("on-loop", "thread"):
        mine = [r for r in rounds if r.way == way]
        print(
            f"  {way:8} longest pause {statistics.median(r.longest_pause_ms for r in mine):7.1f} ms"
            f"  p99 tick {statistics.median(r.p99_tick_ms for r in mine):7.1f} ms"
            f"  new margin in use after {statistics.median(r.in_use_after_s for r in mine):5.2f} s"
            f"  lookups meanwhile {statistics.median(r.lookups_meanwhile for r in mine):7.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
