"""`python -m loadtest.bench_offer_path`: how long the path of a ping is, in event-loop turns.

Under load a request waits for every turn of its worker's event loop that its path needs (a
Redis reply, a task starting, a gathered result), each as long as the other requests make it;
so the number of turns a request needs is a measure of its path that the machine's speed does
not blur. This starts the service in-process (one worker, its own embedded Redis) with two
store zones and two offers, and sends one request at a time through a real aiohttp server: a
ping that fires nothing, an offer to a known customer, an offer to an anonymous device. For each
it prints the median number of loop turns from send to answer (the client shares the loop, so
the no-event request's turns are the floor), the median wall time at zero load, and the median
CPU time of the process per request (client included). A `GET /healthz` (no key, no store) is
measured the same way: the framework's own floor beside which to read the others. Each of those
requests comes after 5-10 ms idle; `/healthz` and the no-event ping are then measured again
back to back, as under load. The difference is what an idle pause costs a request on this
machine (caches gone cold, the process woken): at low request rates a worker pays it often.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from geoservice.embedded_redis import EmbeddedRedis
from geoservice.http.app import create_app
from geoservice.http.state import READY
from geoservice.server import event_loop_factory
from geoservice.settings import Settings, settings_from_env

DOOR = (47.3717, 8.5392)  # inside the first store's zone
FAR = (47.40, 8.60)  # in no zone
T = TypeVar("T")
ALWAYS = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


class LoopTurns:
    """Counts the event loop's turns while on: a callback that puts itself back every turn."""

    def __init__(self) -> None:
        self.turns = 0
        self.on = True
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.turns += 1
        if self.on:
            asyncio.get_running_loop().call_soon(self._tick)


def now_ms() -> int:
    return int(time.time() * 1000)


async def ok(response: ClientResponse) -> Any:
    if not response.ok:
        raise RuntimeError(f"{response.method} {response.url.path}: {await response.text()}")
    return await response.json()


async def setup(client: TestClient[Any, Any], operator: dict[str, str]) -> dict[str, str]:
    response = await client.post(
        "/v1/tenants",
        json={"tenant_id": "bench", "name": "Bench", "timezone": "Europe/Zurich"},
        headers=operator,
    )
    keys = await ok(response)
    secret = {"Authorization": f"Bearer {keys['secret_key']}"}
    zone = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [DOOR[1], DOOR[0]]},
        "properties": {
            "name": "Door",
            "store_id": "s-1",
            "radius_m": 80,
            "opening_hours": ALWAYS,
        },
    }
    await ok(await client.put("/v1/zones/door", json=zone, headers=secret))
    for offer_id, fields in (
        ("slicer", {"product_ids": ["p-881"], "max_per_customer": 1000}),
        ("welcome", {"fallback": True, "max_per_customer": 1000}),
    ):
        body = {"title": offer_id, **fields}
        await ok(await client.put(f"/v1/offers/{offer_id}", json=body, headers=secret))
    caps = {"max_offers_per_day": 1000, "zone_cooldown_s": 0}
    await ok(await client.patch("/v1/tenant", json=caps, headers=secret))
    return {"Authorization": f"Bearer {keys['sdk_key']}"}


@dataclass(frozen=True)
class PathCost:
    turns: float  # medians, per request
    wall_ms: float
    cpu_ms: float  # of the whole process: the service and the client that shares its loop


@dataclass
class Samples:
    """Each timed request's loop turns, wall time and process CPU."""

    turns: list[int] = field(default_factory=list)
    millis: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    async def time(self, request: Awaitable[T], *, count_turns: bool, keep: bool = True) -> T:
        """Awaits the request, timed. Without count_turns the loop's turns are not counted:
        back to back, the counter's callback would keep the loop busy while a request waits
        for Redis, and its CPU would be counted with the request's."""
        counter = LoopTurns() if count_turns else None
        started, cpu_started = time.perf_counter(), time.process_time()
        result = await request
        cpu_ms = (time.process_time() - cpu_started) * 1000
        wall_ms = (time.perf_counter() - started) * 1000
        if counter is not None:
            counter.on = False
        if keep:
            self.millis.append(wall_ms)
            self.cpu.append(cpu_ms)
            if counter is not None:
                self.turns.append(counter.turns)
        return result

    def cost(self) -> PathCost:
        return PathCost(
            statistics.median(self.turns) if self.turns else math.nan,
            statistics.median(self.millis),
            statistics.median(self.cpu),
        )


async def repeated(
    send: Callable[[int], Awaitable[object]], repeats: int, pause_s: float
) -> PathCost:
    """send(i) for i in range(repeats), each timed alone, `pause_s` idle before each; back to
    back (no pause) without counting the loop's turns (Samples.time)."""
    samples = Samples()
    for i in range(repeats):
        if pause_s:
            await asyncio.sleep(pause_s)
        await samples.time(send(i), count_turns=bool(pause_s))
    return samples.cost()


async def measure(settings: Settings, repeats: int) -> dict[str, PathCost]:
    app = create_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        await asyncio.wait_for(app[READY].wait(), 30)
        sdk = await setup(client, {"Authorization": f"Bearer {settings.operator_token}"})

        async def healthz(_: int) -> None:
            await ok(await client.get("/healthz"))

        async def ping(body: dict[str, Any]) -> Any:
            response = await client.post("/v1/pings", json=body, headers=sdk)
            return await response.json()

        results = {"GET /healthz (floor)": await repeated(healthz, repeats, 0.01)}
        for kind, customer, position in (
            ("no event", None, (FAR[0] + 0.001, FAR[1])),
            ("offer, customer", "c", DOOR),
            ("offer, no customer", None, DOOR),
        ):
            samples = Samples()
            for i in range(repeats + 1):  # the first one teaches Redis the scripts
                device = f"{kind.replace(' ', '').replace(',', '-')}-{i}"
                first: dict[str, Any] = {
                    "device_id": device,
                    "consent": {"location": True, "marketing": True},
                    "pings": [{"lat": FAR[0], "lon": FAR[1], "accuracy_m": 10, "ts": now_ms()}],
                }
                if customer:
                    first["customer_id"] = f"{customer}-{i}"
                await ok(await client.post("/v1/pings", json=first, headers=sdk))
                await asyncio.sleep(0.005)
                body = {k: v for k, v in first.items() if k != "consent"}
                lat, lon = position
                body["pings"] = [{"lat": lat, "lon": lon, "accuracy_m": 10, "ts": now_ms()}]
                answer = await samples.time(ping(body), count_turns=True, keep=bool(i))
                if bool(answer["offers"]) != kind.startswith("offer"):
                    raise AssertionError(f"{kind}: unexpected answer {answer}")
                await asyncio.sleep(0.01)  # the writes after the answer
            results[kind] = samples.cost()

        async def no_event_again(i: int) -> None:  # the no-event devices, one more step away
            body = {
                "device_id": f"noevent-{i + 1}",
                "pings": [{"lat": FAR[0] + 0.002, "lon": FAR[1], "accuracy_m": 10, "ts": now_ms()}],
            }
            answer = await ok(await client.post("/v1/pings", json=body, headers=sdk))
            if answer["events"] or answer["ignored"]:
                raise AssertionError(f"no event, back to back: unexpected answer {answer}")

        # With no idle time between requests, as under load: the caches stay warm.
        results["GET /healthz, back to back"] = await repeated(healthz, repeats, 0.0)
        results["no event, back to back"] = await repeated(no_event_again, repeats, 0.0)
        return results
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_offer_path", description=__doc__
    )
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as redis:
        # no REDIS_URL in this environment: secrets made up for the run
        settings = replace(settings_from_env({}), redis_url=redis.url, workers=1)
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            results = runner.run(measure(settings, args.repeats))
    print(f"one request at a time, {args.repeats} each (medians; the client shares the loop):")
    for kind, cost in results.items():
        turns = "    -" if math.isnan(cost.turns) else f"{cost.turns:5.0f}"
        print(
            f"  {kind:26} {turns} event-loop turns  {cost.wall_ms:6.2f} ms  "
            f"{cost.cpu_ms:6.3f} ms CPU"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
