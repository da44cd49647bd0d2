"""Locust users that walk the simulator's city (loadtest.city) and ping a running geoservice.

`pip install locust`; against a service started with GEOSERVICE_OPERATOR_TOKEN=T, create a
tenant and import the zones with `python -m loadtest.locustfile http://127.0.0.1:8080 T` (prints
the SDK key), then `GEOSERVICE_SDK_KEY=... locust -f loadtest/locustfile.py
--host http://127.0.0.1:8080`. Knobs (env): LOCUST_ZONES (20000), LOCUST_INTERVAL_S (5),
LOCUST_BATCH (1), LOCUST_CUSTOMER_SHARE (0.3), LOCUST_CUSTOMERS (5000), LOCUST_SEED (1).
The zones must be workload (a) at the same size and seed, or devices walk where no zone is.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from functools import cache
from typing import Any

from loadtest.city import City, Device

ZONES = int(os.environ.get("LOCUST_ZONES", "20000"))
INTERVAL_S = float(os.environ.get("LOCUST_INTERVAL_S", "5"))
BATCH = int(os.environ.get("LOCUST_BATCH", "1"))
CUSTOMER_SHARE = float(os.environ.get("LOCUST_CUSTOMER_SHARE", "0.3"))
CUSTOMERS = int(os.environ.get("LOCUST_CUSTOMERS", "5000"))
SEED = int(os.environ.get("LOCUST_SEED", "1"))
_numbers = itertools.count()


@cache
def city() -> City:
    """One city per Locust process, shared by its users (the zones' GeoJSON is not needed)."""
    shared = City.workload_a(ZONES, seed=SEED)
    shared.features.clear()
    return shared


def ping_body(device: Device, index: int, first: bool) -> dict[str, Any]:
    """The same request bench_pings sends: `BATCH` fixes ending now, consent on the first one,
    a customer id for `CUSTOMER_SHARE` of the devices (the bench's spread)."""
    c = city()
    now_s = time.time()
    fixes = c.fixes(device, now_s, BATCH, INTERVAL_S) if BATCH > 1 else [c.fix(device, now_s)]
    body: dict[str, Any] = {"device_id": device.device_id, "pings": [f.wire() for f in fixes]}
    if (index * 7919) % 1000 < round(CUSTOMER_SHARE * 1000):
        body["customer_id"] = f"cust-{index % CUSTOMERS:06d}"
    if first:
        body["consent"] = {"location": True, "marketing": True}
    return body


try:  # locust is optional: the test suite imports nothing from here, `pip install locust` to run
    from locust import HttpUser, constant_pacing, task
except ImportError:  # pragma: no cover
    HttpUser = None

if HttpUser is not None:

    class WalkingDevice(HttpUser):  # type: ignore[misc, valid-type]
        """One phone: a request every INTERVAL_S x BATCH seconds. Locust is closed-loop per user
        (a slow answer delays that user's next ping), unlike loadtest.bench's open loop."""

        wait_time = constant_pacing(INTERVAL_S * BATCH)

        def on_start(self) -> None:
            self.index = next(_numbers)
            self.device = city().spawn(f"locust-{os.getpid()}-{self.index:06d}", time.time())
            self.first = True
            self.headers = {"Authorization": f"Bearer {os.environ['GEOSERVICE_SDK_KEY']}"}

        @task
        def ping(self) -> None:
            body = ping_body(self.device, self.index, self.first)
            with self.client.post(
                "/v1/pings", json=body, headers=self.headers, name="/v1/pings", catch_response=True
            ) as response:
                if response.status_code == 200:
                    self.first = False
                    offers = len(response.json().get("offers", ()))
                    if offers:
                        # A separate entry in Locust's table: pings that earned an offer.
                        self.environment.events.request.fire(
                            request_type="OFFER",
                            name="pings with an offer",
                            response_time=response.elapsed.total_seconds() * 1000,
                            response_length=offers,
                            exception=None,
                            context={},
                        )
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")


async def _setup(base_url: str, operator_token: str) -> str:
    """A tenant with the city's zones; returns its SDK key."""
    import aiohttp

    from loadtest.bench_pings import create_tenant, import_zones

    shared = City.workload_a(ZONES, seed=SEED)
    async with aiohttp.ClientSession() as session:
        keys = await create_tenant(session, base_url, operator_token)
        await import_zones(session, base_url, keys["secret_key"], shared)
    return keys["sdk_key"]


if __name__ == "__main__":
    print("GEOSERVICE_SDK_KEY=" + asyncio.run(_setup(sys.argv[1].rstrip("/"), sys.argv[2])))
