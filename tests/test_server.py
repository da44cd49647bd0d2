"""The service as a user runs it: the CLI, the embedded Redis, several workers, SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOSERVICE_", "REDIS_"))}
    env.update(extra)
    return env


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "geoservice", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready on port {port} within {timeout_s} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def service() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.timeout(90)
def test_embedded_default_starts_and_stops_its_own_redis(service):
    port = free_port()
    process = _start("--port", str(port), "--demo", env=_env())
    service.append(process)
    _wait_ready(port)
    redis_pids = [
        p for p in _children(process.pid) if "redis" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    assert len(redis_pids) == 1
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    socket_path = re.search(r"unix://(\S+)", output)
    assert socket_path is not None, output
    assert "demo tenant" in output
    assert f"listening on http://127.0.0.1:{port}" in output
    assert "operator token for this run" in output
    assert not _alive(redis_pids[0])
    assert not Path(socket_path.group(1)).parent.exists()


@pytest.mark.timeout(90)
def test_two_workers_share_the_port_and_stop_on_sigterm(service):
    port = free_port()
    process = _start("--port", str(port), "--workers", "2", env=_env())
    service.append(process)
    _wait_ready(port)
    pids = set()
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        # New connections are spread over the workers by the kernel (SO_REUSEPORT).
        pids.add(_get(f"http://127.0.0.1:{port}/healthz")[1]["pid"])
    assert len(pids) == 2
    assert process.pid not in pids
    everything = _children(process.pid)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    # multiprocessing's resource tracker leaves a moment after its parent: give it that moment.
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in everything) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in everything if _alive(pid)] == [], output


def test_bad_setting_fails_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "geoservice", "serve"],
        env=_env(GEOSERVICE_PORT="eighty"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "geoservice: GEOSERVICE_PORT='eighty' is not an integer"


def test_redis_url_without_secrets_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "geoservice", "serve"],
        env=_env(REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "geoservice: GEOSERVICE_OPERATOR_TOKEN is required when REDIS_URL is set"
    )


def test_missing_redis_server_says_how_to_get_it(tmp_path: Path):
    # A PATH with python but without redis-server.
    (tmp_path / "python").symlink_to(sys.executable)
    result = subprocess.run(
        [sys.executable, "-m", "geoservice", "serve"],
        env=_env(PATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shutil.which("redis-server", path=str(tmp_path)) is None
    assert result.returncode == 2
    assert "redis-server is not on PATH" in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_lists_the_environment():
    result = subprocess.run(
        [sys.executable, "-m", "geoservice", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for name in ("REDIS_URL", "GEOSERVICE_OPERATOR_TOKEN", "GEOSERVICE_SIGNING_KEYS", "--workers"):
        assert name in result.stdout


def test_zones_import_command_writes_a_file_into_a_tenant(redis_url: str, tmp_path: Path):
    import asyncio

    from redis.asyncio import Redis

    from geoservice.settings import Settings
    from geoservice.store import Store
    from geoservice.tenants import Tenants

    async def prepare() -> None:
        client = Redis.from_url(redis_url)
        await client.flushall()
        await client.aclose()
        store = Store.open(Settings(redis_url=redis_url))
        await Tenants(store).create("acme", "Acme", "Europe/Zurich")
        await store.close()

    asyncio.run(prepare())
    example = Path(__file__).resolve().parent.parent / "zones" / "switzerland.geojson"
    count = len(orjson.loads(example.read_bytes())["features"])
    command = [sys.executable, "-m", "geoservice", "zones", "import"]
    result = subprocess.run(
        [*command, str(example), "--tenant", "acme", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"{count} zones created, 0 replaced in 'acme'" in result.stdout
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}')
    result = subprocess.run(
        [*command, str(broken), "--tenant", "acme", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "1 of 1 Features are invalid" in result.stderr
    result = subprocess.run(
        [*command, str(example), "--tenant", "ghost", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "geoservice: tenant 'ghost' does not exist"
