"""`python -m loadtest.bench_cluster_scripts`: what a script call costs the service on a cluster.

Starts a Redis Cluster of its own (loadtest/cluster.py: 3 primaries, 3 replicas on loopback),
opens the service's Store on it and calls a small script (`confirm_link`, one key, one HSET
when the key exists) `--calls` times, `--concurrency` at once on keys spread over every
primary, two ways alternating by round: through redis-py's cluster client (how every script
went before) and through the automatic pipeline of the primary holding the keys (what
Store.run_script does now). Prints, per way, medians over the rounds: this process's CPU per
call (the client's cost, which the service pays on every ping) and calls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

from geoservice import keys
from geoservice.server import event_loop_factory
from geoservice.settings import settings_from_env
from geoservice.store import Store
from loadtest.cluster import RedisClusterHarness

WAYS = ("redis-py", "pipeline")


async def one_round(store: Store, way: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(client CPU us per call, calls per second)"""
    pipelines = store.primary_pipelines
    if way == "redis-py":
        store.primary_pipelines = None  # run_script then takes redis-py's cluster client
    states = [keys.device_state(f"bench-{i}") for i in range(concurrency)]
    cpu_started, started = time.process_time(), time.perf_counter()
    try:
        for _ in range(calls // concurrency):
            await asyncio.gather(
                *(store.run_script("confirm_link", [state], ["c"]) for state in states)
            )
    finally:
        store.primary_pipelines = pipelines
    done = calls // concurrency * concurrency
    cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - started
    return cpu_s / done * 1e6, done / wall_s


async def run(args: argparse.Namespace, url: str) -> dict[str, list[tuple[float, float]]]:
    # no REDIS_URL in this environment: secrets made up for the run
    store = Store.open(replace(settings_from_env({}), redis_url=url))
    try:
        await store.redis.initialize()
        for way in WAYS:  # connections opened, scripts loaded on every primary
            await one_round(store, way, 20 * args.concurrency, args.concurrency)
        rounds: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                rounds[way].append(await one_round(store, way, args.calls, args.concurrency))
        return rounds
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_cluster_scripts", description=__doc__
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with RedisClusterHarness() as cluster, asyncio.Runner(loop_factory=event_loop_factory()) as r:
        rounds = r.run(run(args, cluster.url()))
    print(
        f"{args.calls} script calls per round, {args.concurrency} at once, "
        f"{args.rounds} rounds per way (medians):"
    )
    for way, results in rounds.items():
        print(
            f"  {way:9} client CPU per call {statistics.median(r[0] for r in results):6.1f} us"
            f"  calls/s {statistics.median(r[1] for r in results):8.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
