"""The service process under SIGTERM and under a flood: in-flight requests finish, new
connections are refused, the process exits well inside Kubernetes' 30 s; past the in-flight
bound requests get a fast 503 and the service recovers when the flood stops. Figures are
printed (pytest -s), never asserted as timings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from geoservice.embedded_redis import EmbeddedRedis
from tests.conftest import free_port

pytestmark = pytest.mark.slow
TOKEN = "shutdown-operator-token-0123456"


def _start(port: int, **env_extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOSERVICE_", "REDIS_"))}
    env.update({"GEOSERVICE_OPERATOR_TOKEN": TOKEN, **env_extra})
    process = subprocess.Popen(
        [sys.executable, "-m", "geoservice", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("service did not become ready")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _tenant(port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/tenants",
        data=orjson.dumps({"tenant_id": "acme", "name": "Acme"}),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        keys: dict[str, str] = orjson.loads(response.read())
        return keys["sdk_key"]


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


async def test_sigterm_lets_in_flight_finish_refuses_new_and_exits(processes):
    # Our own Redis, so the test can make it slow: the request below is in flight, its handler
    # waiting on the store, when SIGTERM arrives.
    redis = EmbeddedRedis(tcp_port=free_port(), debug_command=True)
    redis.start()
    try:
        port = free_port()
        process = _start(
            port,
            REDIS_URL=f"redis://127.0.0.1:{redis.tcp_port}/0",
            GEOSERVICE_SIGNING_KEYS="k1:shutdown-signing-secret-0123",
            GEOSERVICE_PSEUDONYM_KEY="shutdown-pseudonym-key-0123",
        )
        processes.append(process)
        sdk_key = _tenant(port)
        body = {
            "device_id": "d-1",
            "consent": {"location": True},
            "pings": [{"lat": 47.37, "lon": 8.54, "accuracy_m": 5, "ts": int(time.time() * 1000)}],
        }
        admin = Redis.from_url(f"redis://127.0.0.1:{redis.tcp_port}/0")
        sleeper = asyncio.create_task(admin.execute_command("DEBUG", "SLEEP", "0.7"))
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.create_task(
                session.post(
                    f"http://127.0.0.1:{port}/v1/pings",
                    json=body,
                    headers={"Authorization": f"Bearer {sdk_key}"},
                )
            )
            await asyncio.sleep(0.1)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            refused_after = None
            while time.monotonic() - signalled < 10:
                if _refused(port):
                    refused_after = time.monotonic() - signalled
                    break
                await asyncio.sleep(0.02)
            response = await in_flight
            finished_after = time.monotonic() - signalled
            assert response.status == 200, await response.text()
            response.release()
        await sleeper
        await admin.aclose()
        assert refused_after is not None, "new connections still accepted 10 s after SIGTERM"
        exit_code = await asyncio.to_thread(process.wait, 30)
        exited_after = time.monotonic() - signalled
        print(
            f"\nSIGTERM: new connections refused after {refused_after:.2f} s; the request in "
            f"flight finished with 200 after {finished_after:.2f} s; exit code {exit_code} "
            f"after {exited_after:.2f} s"
        )
        assert exit_code == 0
    finally:
        redis.stop()


async def test_flood_far_past_the_bound_gets_fast_503_then_recovers(processes):
    port = free_port()
    process = _start(port, GEOSERVICE_MAX_IN_FLIGHT="8", GEOSERVICE_PING_BURST="1000")
    processes.append(process)
    sdk_key = _tenant(port)
    url = f"http://127.0.0.1:{port}/v1/pings"
    headers = {"Authorization": f"Bearer {sdk_key}"}
    now = int(time.time() * 1000)
    pings = [
        {"lat": 47.37, "lon": 8.54 + i * 1e-5, "accuracy_m": 5, "ts": now - i} for i in range(200)
    ]

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, float]:
        started = time.monotonic()
        body = {"device_id": f"d-{i}", "consent": {"location": True}, "pings": pings}
        async with session.post(url, json=body, headers=headers) as response:
            await response.read()
            return response.status, time.monotonic() - started

    connector = aiohttp.TCPConnector(limit=400)
    async with aiohttp.ClientSession(connector=connector) as session:
        answers = await asyncio.gather(*(one(session, i) for i in range(600)))
        statuses = [s for s, _ in answers]
        assert set(statuses) <= {200, 503}
        assert statuses.count(503) > 0
        slowest_503 = max(t for s, t in answers if s == 503)
        slowest = max(t for _, t in answers)
        after = await one(session, 10_000)
    print(
        f"\nflood of 600 concurrent 200-ping requests, in-flight bound 8: "
        f"{statuses.count(200)} x 200, {statuses.count(503)} x 503; "
        f"slowest 503 {slowest_503:.3f} s, "
        f"slowest answer {slowest:.3f} s; afterwards {after[0]} in {after[1]:.3f} s"
    )
    assert after[0] == 200
