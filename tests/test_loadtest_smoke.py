"""Smoke test of the load-test simulator: a few seconds of walking devices against a real app."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import TenantFactory

pytest.importorskip("hdrh")

from loadtest.bench_pings import LoadConfig, drive, import_zones
from loadtest.city import City


async def test_simulator_drives_pings_and_gets_events(
    client: TestClient[web.Request, web.Application], make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant("bench")
    base_url = str(client.server.make_url("")).rstrip("/")
    city = City.workload_a(200, seed=1, dwell_s=60)
    async with aiohttp.ClientSession() as session:
        calls = await import_zones(session, base_url, tenant.secret_key, city)
    assert [c.status for c in calls] == [200]

    config = LoadConfig(devices=20, interval_s=1.0, duration_s=3.0, warmup_s=0.0, connections=8)
    result = await drive(base_url, tenant.sdk_key, city, config)

    assert result.ok > 0
    assert dict(result.statuses) == {"200": result.ok}, result.error_samples
    assert sum(result.events.values()) >= 1
    assert result.unfinished == 0
