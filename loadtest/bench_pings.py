"""`make bench-pings`: the end-to-end benchmark. Starts geoservice, loads workload (a), drives
walking devices' pings at it open-loop, prints a table and writes loadtest/results/pings.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import itertools
import json
import os
import platform
import random
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import orjson
import psutil  # type: ignore[import-untyped]
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from geoservice.embedded_redis import _die_with_parent
from geoservice.server import event_loop_factory
from loadtest.city import City, Device, Fix, split_zone_count

RESULTS = Path(__file__).resolve().parent / "results" / "pings.json"
HOST = "127.0.0.1"
TENANT = {"tenant_id": "bench", "name": "Bench", "timezone": "Europe/Zurich"}
JSON = "application/json"
MSGPACK = "application/msgpack"
# Latencies are kept in microseconds; anything past a minute is a failure anyway.
HIST_MAX_US = 60_000_000
ERROR_SAMPLES_PER_KEY = 3


# -- the open-loop driver ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadConfig:
    devices: int = 2_000
    interval_s: float = 5.0
    batch: int = 1
    codec: str = "json"  # json | msgpack
    duration_s: float = 60.0
    warmup_s: float = 10.0
    connections: int = 64
    request_timeout_s: float = 10.0
    seed: int = 1

    @property
    def period_s(self) -> float:
        """Time between two requests of one device (it buffers `batch` fixes)."""
        return self.interval_s * self.batch


@dataclass
class LoadResult:
    config: LoadConfig
    latency_us: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, HIST_MAX_US, 3))
    # How late the generator itself started each request: large values mean the generator, not
    # the service, was the bottleneck (its lateness is still inside latency_us).
    send_lag_us: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, HIST_MAX_US, 3))
    scheduled: int = 0
    ok: int = 0
    pings_ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, list[str]] = field(default_factory=dict)
    unfinished: int = 0  # still in flight at the hard stop
    max_in_flight: int = 0
    per_second: list[dict[str, float]] = field(default_factory=list)
    # Offers issued, and the latency of the requests that got one (they do more Redis work).
    offers: int = 0
    offer_latency_us: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, HIST_MAX_US, 3))
    # Requests that fired no event at all: the fast path, one script round trip.
    quiet_latency_us: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, HIST_MAX_US, 3))
    # Per service instance (base URL) when the load is spread over several.
    instance_latency_us: dict[str, HdrHistogram] = field(default_factory=dict)
    generator_cpu_s: float = 0.0
    window_s: float = 0.0

    def count_answer(
        self, second: dict[str, float], latency: float, pings: int, answer: Any
    ) -> None:
        """One 200 answer of the recorded window: its latency, events, ignored fixes, offers."""
        _record(self.latency_us, latency)
        second["ok"] += 1
        second["max_ms"] = max(second["max_ms"], round(latency * 1000, 1))
        self.ok += 1
        self.pings_ok += pings
        events = answer.get("events", ())
        for event in events:
            self.events[event["type"]] += 1
        if not events:
            _record(self.quiet_latency_us, latency)
        for item in answer.get("ignored", ()):
            self.ignored[item["reason"]] += 1
        offers = len(answer.get("offers", ()))
        if offers:
            self.offers += offers
            _record(self.offer_latency_us, latency)

    def summary(self) -> dict[str, Any]:
        d = self.config.duration_s
        return {
            "offered_requests_per_s": round(self.scheduled / d, 1),
            "requests_per_s": round(self.ok / d, 1),
            "pings_per_s": round(self.pings_ok / d, 1),
            "requests_scheduled": self.scheduled,
            "requests_ok": self.ok,
            "latency_ms": _percentiles(self.latency_us),
            "send_lag_ms": _percentiles(self.send_lag_us),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": sum(n for s, n in self.statuses.items() if s != "200"),
            "error_samples": self.error_samples,
            "unfinished_at_stop": self.unfinished,
            "max_in_flight": self.max_in_flight,
            "events_total": dict(sorted(self.events.items())),
            "events_per_s": {k: round(n / d, 2) for k, n in sorted(self.events.items())},
            "ignored": dict(sorted(self.ignored.items())),
            "offers_total": self.offers,
            "offers_per_s": round(self.offers / d, 2),
            "offer_latency_ms": _percentiles(self.offer_latency_us),
            "no_event_latency_ms": _percentiles(self.quiet_latency_us),
            "latency_ms_by_instance": {
                base: _percentiles(h) for base, h in sorted(self.instance_latency_us.items())
            },
            "generator_cpu_percent": round(
                100 * self.generator_cpu_s / max(self.window_s, 1e-9), 1
            ),
        }


def _percentiles(h: HdrHistogram) -> dict[str, float | int]:
    if h.get_total_count() == 0:
        return {"count": 0}
    return {
        "count": h.get_total_count(),
        "mean": round(h.get_mean_value() / 1000, 2),
        "p50": round(h.get_value_at_percentile(50) / 1000, 2),
        "p95": round(h.get_value_at_percentile(95) / 1000, 2),
        "p99": round(h.get_value_at_percentile(99) / 1000, 2),
        "p99.9": round(h.get_value_at_percentile(99.9) / 1000, 2),
        "max": round(h.get_max_value() / 1000, 2),
    }


def _record(h: HdrHistogram, seconds: float) -> None:
    h.record_value(min(HIST_MAX_US, max(1, round(seconds * 1e6))))


class RecordingWindow:
    """The recorded window's two edges: the generator's own CPU over it, and the hook that
    starts and stops resource sampling (`on_window(True/False)`)."""

    def __init__(self, result: LoadResult, on_window: Callable[[bool], None] | None) -> None:
        self.result = result
        self.on_window = on_window
        self.is_open = False
        self._me = psutil.Process()
        self._cpu_at_open = 0.0

    def open(self) -> None:
        if self.is_open:
            return
        self.is_open = True
        self._cpu_at_open = _cpu_s(self._me)
        if self.on_window:
            self.on_window(True)

    def close(self) -> None:
        self.result.generator_cpu_s = _cpu_s(self._me) - self._cpu_at_open
        self.result.window_s = self.result.config.duration_s
        if self.on_window:
            self.on_window(False)


def ping_body(
    city: City,
    device: Device,
    now_s: float,
    config: LoadConfig,
    customer: str | None,
    consent: bool,
) -> tuple[list[Fix], dict[str, Any]]:
    """The device walked to now_s, and the request it sends: one fix, or `config.batch` buffered
    ones; its customer if it has one; consent on its first request."""
    fixes = (
        city.fixes(device, now_s, config.batch, config.interval_s)
        if config.batch > 1
        else [city.fix(device, now_s)]
    )
    body: dict[str, Any] = {"device_id": device.device_id, "pings": [f.wire() for f in fixes]}
    if customer is not None:
        body["customer_id"] = customer
    if consent:
        body["consent"] = {"location": True, "marketing": True}
    return fixes, body


async def drive(
    base_url: str | Sequence[str],
    sdk_key: str,
    city: City,
    config: LoadConfig,
    *,
    on_window: Callable[[bool], None] | None = None,
    customer_of: Callable[[int], str | None] | None = None,
) -> LoadResult:
    """Send every device's pings at their intended times, whatever the service's pace.

    Latency runs from the intended send time, so a request that waited (behind a slow service,
    in the connection pool or in a late generator) counts its wait. Only requests intended
    inside [warmup, warmup + duration) are recorded. `on_window(True/False)` is called when
    the recorded window opens and closes (resource sampling hooks onto it). `customer_of(i)`,
    when given, is the customer_id device i pings with (None: an anonymous device).

    Several base URLs (service instances) are used in turn, request by request, as a
    round-robin load balancer would; each gets an equal share of the keep-alive connections.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult(config)
    period = config.period_s
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = itertools.cycle(bases)
    if len(bases) > 1:
        for base in bases:
            result.instance_latency_us[base] = HdrHistogram(1, HIST_MAX_US, 3)
    codec = MSGPACK if config.codec == "msgpack" else JSON
    headers = {"Authorization": f"Bearer {sdk_key}", "Content-Type": codec, "Accept": codec}
    encode: Callable[[Any], bytes] = msgpack.packb if codec == MSGPACK else orjson.dumps
    decode: Callable[[bytes], Any] = msgpack.unpackb if codec == MSGPACK else orjson.loads

    # Devices start one period in the past so a buffering device has history to send at once.
    wall0 = time.time()
    devices: list[Device] = [
        city.spawn(f"dev-{i:06d}", wall0 - period) for i in range(config.devices)
    ]
    phases = random.Random(config.seed).random
    t0 = loop.time() + 0.5
    record_from = t0 + config.warmup_s
    record_to = record_from + config.duration_s
    seconds = max(1, int(config.duration_s + 0.999))
    per_second = [{"sent": 0.0, "ok": 0.0, "errors": 0.0, "max_ms": 0.0} for _ in range(seconds)]
    schedule = [(t0 + phases() * period, i) for i in range(config.devices)]
    heapq.heapify(schedule)
    in_flight: set[asyncio.Task[None]] = set()

    async def send(index: int, intended: float) -> None:
        started = loop.time()
        base = next(urls)
        recorded = record_from <= intended < record_to
        device = devices[index]
        now_s = time.time()
        customer = customer_of(index) if customer_of else None
        fixes, body = ping_body(city, device, now_s, config, customer, not device.consented)
        key = "200"
        answer: Any = None
        try:
            async with session.post(
                f"{base}/v1/pings", data=encode(body), headers=headers
            ) as response:
                raw = await response.read()
                key = str(response.status)
                if response.status == 200:
                    answer = decode(raw)
                elif recorded:
                    _sample(result, key, _readable(raw, response.content_type))
        except TimeoutError:
            key = "timeout"
        except aiohttp.ClientError as exc:
            key = type(exc).__name__
            if recorded:
                _sample(result, key, str(exc)[:300])
        if answer is not None:
            device.consented = True
        if not recorded:
            return
        done = loop.time()
        second = per_second[min(seconds - 1, int(intended - record_from))]
        second["sent"] += 1
        _record(result.send_lag_us, started - intended)
        result.statuses[key] += 1
        if answer is None:
            second["errors"] += 1
            return
        latency = done - intended
        if base in result.instance_latency_us:
            _record(result.instance_latency_us[base], latency)
        result.count_answer(second, latency, len(fixes), answer)

    per_instance = -(-config.connections // len(bases))
    connector = aiohttp.TCPConnector(limit=config.connections, limit_per_host=per_instance)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    window = RecordingWindow(result, on_window)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Every loop here ends: the schedule stops at record_to, the drain at a hard deadline.
        while schedule:
            intended, index = schedule[0]
            if intended >= record_to:
                break
            now = loop.time()
            if now >= record_from:
                window.open()
            if intended > now:
                # Before the window opens, wake at its start too: resource sampling begins then.
                wake = intended if window.is_open else min(intended, record_from)
                await asyncio.sleep(max(0.0, wake - now))
                continue
            heapq.heapreplace(schedule, (intended + period, index))
            if intended >= record_from:
                result.scheduled += 1
            task = loop.create_task(send(index, intended))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            if len(in_flight) > result.max_in_flight and intended >= record_from:
                result.max_in_flight = len(in_flight)
        window.open()  # a zero-length window still opens and closes
        await asyncio.sleep(max(0.0, record_to - loop.time()))
        window.close()
        hard_stop = loop.time() + config.request_timeout_s + 2.0
        while in_flight and loop.time() < hard_stop:
            await asyncio.wait(set(in_flight), timeout=max(0.0, hard_stop - loop.time()))
        result.unfinished = len(in_flight)
        for task in list(in_flight):
            task.cancel()
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=5.0)
    result.per_second = per_second
    return result


def _readable(raw: bytes, content_type: str) -> str:
    """An error body as text, whichever codec it came in."""
    if "msgpack" in content_type:
        with contextlib.suppress(ValueError, msgpack.UnpackException):
            return orjson.dumps(msgpack.unpackb(raw), default=str).decode()[:300]
    return raw.decode(errors="replace")[:300]


def _sample(result: LoadResult, key: str, text: str) -> None:
    samples = result.error_samples.setdefault(key, [])
    if len(samples) < ERROR_SAMPLES_PER_KEY:
        samples.append(text)


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# -- service set-up: tenant, zones -------------------------------------------------------


async def create_tenant(
    session: aiohttp.ClientSession, base_url: str, token: str
) -> dict[str, str]:
    async with session.post(
        f"{base_url}/v1/tenants", json=TENANT, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        text = await response.text()
        if response.status != 201:
            raise RuntimeError(f"POST /v1/tenants: {response.status} {text[:500]}")
        keys: dict[str, str] = orjson.loads(text)
        return keys


@dataclass(frozen=True, slots=True)
class ImportCall:
    features: int
    seconds: float
    status: int
    answer: str


IMPORT_ATTEMPTS = 3


async def import_zones(
    session: aiohttp.ClientSession, base_url: str, secret_key: str, city: City
) -> list[ImportCall]:
    """POST every chunk of the city's zones, every attempt recorded. A 5xx is retried (an import
    is create-or-replace, so idempotent) after its Retry-After, as a client would; a chunk
    still failing is not fatal: zones_visible checks the outcome by pings, and it is reported."""
    headers = {"Authorization": f"Bearer {secret_key}", "Content-Type": JSON}
    calls: list[ImportCall] = []
    for body in city.imports():
        data = orjson.dumps(body)
        for attempt in range(1, IMPORT_ATTEMPTS + 1):
            started = time.perf_counter()
            async with session.post(
                f"{base_url}/v1/zones/import",
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=900),
            ) as response:
                text = await response.text()
                retry_after = response.headers.get("Retry-After", "1")
            call = ImportCall(
                len(body["features"]), time.perf_counter() - started, response.status, text[:1000]
            )
            calls.append(call)
            print(
                f"  import of {call.features:>6} zones: {call.status} in {call.seconds:6.2f} s "
                f"{call.answer[:160]}",
                flush=True,
            )
            if call.status < 500 or attempt == IMPORT_ATTEMPTS:
                break
            await asyncio.sleep(min(10.0, float(retry_after) if retry_after.isdigit() else 1.0))
    return calls


class ZoneProbe:
    """A fresh device pinging at a zone's centre: did that zone fire an enter, and in which
    worker? /healthz (which names its pid) and the ping go over one connection, and each probe
    opens a new one, so SO_REUSEPORT spreads the probes over the workers."""

    def __init__(self, base_url: str, sdk_key: str, city: City) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {sdk_key}"}
        self.city = city
        self.count = 0

    async def enters(self, zone: int) -> tuple[int, bool]:
        """(pid of the worker that answered, whether the zone fired an enter)."""
        self.count += 1
        ping = {
            "lat": float(self.city.centre_lat[zone]),
            "lon": float(self.city.centre_lon[zone]),
            "accuracy_m": 5.0,
            "ts": int(time.time() * 1000),
        }
        body = {
            "device_id": f"probe-{self.count}",
            "consent": {"location": True, "marketing": False},
            "pings": [ping],
        }
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=30)
        ) as session:
            async with session.get(f"{self.base_url}/healthz") as response:
                pid = int((await response.json())["pid"])
            async with session.post(
                f"{self.base_url}/v1/pings", json=body, headers=self.headers
            ) as response:
                answer = await response.json() if response.status == 200 else {}
        zone_id = self.city.ids[zone]
        return pid, any(e["zone_id"] == zone_id for e in answer.get("events", ()))


async def wait_all_workers_see(probe: ZoneProbe, workers: int, deadline_s: float) -> float | None:
    """Seconds until every worker fires an enter for the last imported zone (the workers that
    did not take an import apply it from the change feed, later); None past the deadline."""
    last = len(probe.city) - 1
    started = time.perf_counter()
    seen: set[int] = set()
    while len(seen) < workers:
        if time.perf_counter() - started > deadline_s:
            return None
        pid, entered = await probe.enters(last)
        if entered:
            seen.add(pid)
        else:
            await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def zones_visible(probe: ZoneProbe, sample: int, seed: int) -> dict[str, str]:
    """Per worker pid, "entered/probed" over a random sample of zones: catches lost zones."""
    zones = random.Random(seed).sample(range(len(probe.city)), min(sample, len(probe.city)))
    tally: dict[int, list[int]] = {}
    for zone in zones:
        pid, entered = await probe.enters(zone)
        counts = tally.setdefault(pid, [0, 0])
        counts[0] += entered
        counts[1] += 1
    return {str(pid): f"{n}/{of}" for pid, (n, of) in sorted(tally.items())}


# -- the service process -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """`python -m geoservice serve` as a subprocess, with its private embedded Redis or, given
    `env` with a REDIS_URL (and the secrets it requires), on that Redis; output (the service
    logs to stderr) goes to a file. It gets SIGTERM if this process dies."""

    def __init__(
        self,
        workers: int,
        log_path: Path,
        *,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workers = workers
        self.log_path = log_path
        self.port = free_port()
        self.token = token or secrets.token_urlsafe(24)
        self.env = dict(env or {})
        # Known to the bench so it can seed device records under the service's pseudonyms
        # (instances on one cluster share it through `env`).
        self.pseudonym_key = self.env.setdefault(
            "GEOSERVICE_PSEUDONYM_KEY", secrets.token_urlsafe(24)
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.exit: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "geoservice", "serve",
            "--host", HOST, "--port", str(self.port), "--workers", str(self.workers),
        ]  # fmt: skip

    def start(self) -> None:
        env = dict(os.environ)
        # The embedded Redis and default rate limits are part of what is measured.
        for name in (
            "REDIS_URL",
            "GEOSERVICE_PING_RATE_PER_S",
            "GEOSERVICE_PING_BURST",
            "GEOSERVICE_MAX_IN_FLIGHT",
        ):
            env.pop(name, None)
        env.update(self.env)
        env["GEOSERVICE_OPERATOR_TOKEN"] = self.token
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    async def wait_ready(self, deadline_s: float = 120.0, needed: int = 10) -> float:
        """GET /readyz = 200 `needed` times in a row on new connections (all workers up)."""
        started = time.perf_counter()
        streak = 0
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=5)
        ) as session:
            while streak < needed:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"service exited with {self.process.returncode} at start-up; "
                        f"see {self.log_path}"
                    )
                if time.perf_counter() - started > deadline_s:
                    raise RuntimeError(f"service not ready in {deadline_s} s; see {self.log_path}")
                try:
                    async with session.get(f"{self.base_url}/readyz") as response:
                        streak = streak + 1 if response.status == 200 else 0
                except (aiohttp.ClientError, TimeoutError):
                    streak = 0
                if streak == 0:
                    await asyncio.sleep(0.1)
        return time.perf_counter() - started

    def stop(self, timeout_s: float = 40.0) -> dict[str, Any]:
        """SIGTERM, wait, and check that the whole tree (workers, redis-server) is gone."""
        if self.process is None:
            return self.exit
        tree: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(self.process.pid).children(recursive=True)
        started = time.perf_counter()
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                killed = True
                self.process.kill()
                self.process.wait()
        _, alive = psutil.wait_procs(tree, timeout=5)
        for leftover in alive:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        self.exit = {
            "exit_code": self.process.returncode,
            "stop_s": round(time.perf_counter() - started, 2),
            "killed_after_timeout": killed,
            "children_left_running": [f"{p.pid} {_name(p)}" for p in alive],
        }
        self.process = None
        return self.exit


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.Error:
        return "?"


def _machine_busy_s() -> float:
    """CPU seconds spent on anything but idling, summed over all cores."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class ResourceWatch:
    """CPU and RSS of the service tree(s) over the recorded window; redis-server kept apart.
    `redis_nodes` (pid -> label) are Redis processes outside those trees (a cluster's nodes)."""

    def __init__(
        self, root_pid: int, *more_roots: int, redis_nodes: Mapping[int, str] | None = None
    ) -> None:
        self.roots = [psutil.Process(pid) for pid in (root_pid, *more_roots)]
        self.root = self.roots[0]
        self.node_labels = dict(redis_nodes or {})
        self.nodes = [psutil.Process(pid) for pid in self.node_labels]
        self.start_cpu: dict[int, float] = {}
        self.end_cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.rss_peak: dict[int, int] = {}
        self.rss_last: dict[int, int] = {}
        self.started = 0.0
        self.ended = 0.0
        self.seen_pids: set[int] = set()
        self.machine_busy_start = self.machine_busy_end = 0.0
        self.load_start = self.load_end = (0.0, 0.0, 0.0)

    def _tree(self) -> list[psutil.Process]:
        tree: list[psutil.Process] = []
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                tree += [root, *root.children(recursive=True)]
        return tree + self.nodes

    def _role(self, process: psutil.Process) -> str:
        if process.pid in self.node_labels:
            return "redis"
        if any(process.pid == root.pid for root in self.roots):
            return "main"
        name = _name(process)
        if "redis" in name:
            return "redis"
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" in " ".join(process.cmdline()):
                return "resource_tracker"
        return "worker"

    def _cpu(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for process in self._tree():
            with contextlib.suppress(psutil.Error):
                out[process.pid] = _cpu_s(process)
                self.roles.setdefault(process.pid, self._role(process))
        return out

    def open(self) -> None:
        self.started = time.perf_counter()
        self.start_cpu = self._cpu()
        self.machine_busy_start = _machine_busy_s()
        self.load_start = os.getloadavg()
        self.seen_pids = set(self.start_cpu)
        self.sample()

    def close(self) -> None:
        self.sample()
        self.end_cpu = self._cpu()
        self.machine_busy_end = _machine_busy_s()
        self.load_end = os.getloadavg()
        self.ended = time.perf_counter()

    def sample(self) -> None:
        for process in self._tree():
            with contextlib.suppress(psutil.Error):
                rss = process.memory_info().rss
                self.roles.setdefault(process.pid, self._role(process))
                self.rss_last[process.pid] = rss
                self.rss_peak[process.pid] = max(rss, self.rss_peak.get(process.pid, 0))
                self.seen_pids.add(process.pid)

    def report(self) -> dict[str, Any]:
        wall = max(1e-9, self.ended - self.started)
        processes: list[dict[str, Any]] = []
        for pid, role in sorted(self.roles.items(), key=lambda item: (item[1], item[0])):
            cpu = self.end_cpu.get(pid, 0.0) - self.start_cpu.get(pid, 0.0)
            processes.append(
                {
                    "pid": pid,
                    "role": role,
                    **({"node": self.node_labels[pid]} if pid in self.node_labels else {}),
                    "cpu_percent": round(100 * cpu / wall, 1),
                    "rss_mb": round(self.rss_last.get(pid, 0) / 2**20, 1),
                    "rss_peak_mb": round(self.rss_peak.get(pid, 0) / 2**20, 1),
                }
            )

        def total(key: str, redis: bool) -> float:
            return round(
                sum(float(p[key]) for p in processes if (p["role"] == "redis") == redis), 1
            )

        return {
            "window_s": round(wall, 3),
            "service_cpu_percent": total("cpu_percent", False),
            "service_rss_mb": total("rss_mb", False),
            "service_rss_peak_mb": total("rss_peak_mb", False),
            "redis_cpu_percent": total("cpu_percent", True),
            "redis_rss_mb": total("rss_mb", True),
            "processes": processes,
            # A pid that appeared mid-run is a restarted worker.
            "new_processes_during_run": sorted(self.seen_pids - set(self.start_cpu)),
            # Everything busy on the machine (100 = one core): the generator and anything else
            # running (other people's tests) compete with the service for the same cores.
            "machine_cpu_percent": round(
                100 * (self.machine_busy_end - self.machine_busy_start) / wall, 1
            ),
            "load_average_1m_at_start_end": [self.load_start[0], self.load_end[0]],
        }


# -- the command -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
    }


def source_version() -> dict[str, Any]:
    """The commit measured, and which service files differed from it (others edit meanwhile)."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=root, capture_output=True, text=True, check=False
            )
        except OSError:
            return ""
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "geoservice").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_service_files": changed}


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def scan_log(path: Path, window: tuple[int, int] | None) -> dict[str, Any]:
    """Problems and zone reloads ("loaded N zones") in the service log, in all and within the
    recorded window (byte offsets noted when it opened and closed)."""
    raw = path.read_bytes() if path.exists() else b""

    def notable(text: bytes) -> list[str]:
        keep = (" ERROR ", " WARNING ", "Traceback", "Error:", " loaded ")
        lines = text.decode(errors="replace").splitlines()
        return [ln[:300] for ln in lines if any(k in ln for k in keep)]

    everything = notable(raw)
    inside = notable(raw[window[0] : window[1]]) if window else []
    return {
        "path": str(path),
        "warnings": sum(" WARNING " in ln for ln in everything),
        "errors": sum(" ERROR " in ln for ln in everything),
        "tracebacks": sum("Traceback" in ln for ln in everything),
        "notable": everything[:60],
        "during_recorded_window": inside[:60],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    circles, polygons = split_zone_count(args.zones)
    started = time.perf_counter()
    city = City.workload_a(args.zones, seed=args.seed, dwell_s=args.dwell_s or None)
    generate_s = time.perf_counter() - started
    print(
        f"workload (a): {circles} circles + {polygons} polygons in {generate_s:.1f} s", flush=True
    )

    load_1m = os.getloadavg()[0]
    if load_1m > 0.5:
        print(
            f"warning: the machine is already busy (load average {load_1m:.1f}); other "
            "processes will compete with the service and the generator for the CPU",
            flush=True,
        )
    service = Service(args.workers, args.service_log)
    log_window = [0, 0]
    doc: dict[str, Any] = {
        "service_command": shlex.join(service.command),
        "load_average_1m_before": load_1m,
    }
    service.start()
    try:
        assert service.process is not None
        ready_s = await service.wait_ready()
        print(f"service ready in {ready_s:.1f} s at {service.base_url} (log: {args.service_log})")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            keys = await create_tenant(session, service.base_url, service.token)
            started = time.perf_counter()
            calls = await import_zones(session, service.base_url, keys["secret_key"], city)
            import_s = time.perf_counter() - started
        probe = ZoneProbe(service.base_url, keys["sdk_key"], city)
        visible_s = await wait_all_workers_see(probe, args.workers, args.visible_deadline_s)
        sampled = await zones_visible(probe, args.verify_zones, args.seed)
        failed = [c for c in calls if c.status != 200]
        print(
            f"imported {len(city)} zones in {import_s:.1f} s ({len(failed)} of {len(calls)} "
            "requests failed, 5xx retried); every worker fires the last zone "
            + ("NEVER" if visible_s is None else f"{visible_s:.1f} s later")
            + f"; sampled zones entered per worker pid: {sampled}",
            flush=True,
        )
        doc["zones"] = {
            "count": len(city),
            "circles": circles,
            "polygons": polygons,
            "dwell_s": args.dwell_s or None,
            "generate_s": round(generate_s, 2),
            "import_s": round(import_s, 2),
            "import_requests": [
                {"features": c.features, "status": c.status, "seconds": round(c.seconds, 2)}
                for c in calls
            ],
            "import_failures": [{"status": c.status, "answer": c.answer} for c in failed],
            "import_retries_allowed": IMPORT_ATTEMPTS - 1,
            "zones_per_s": round(len(city) / import_s, 1),
            "visible_in_all_workers_after_s": None if visible_s is None else round(visible_s, 2),
            "visible_deadline_s": args.visible_deadline_s,
            "sampled_zones_entered_by_worker": sampled,
        }

        # The generator's own pauses would count as latency: drop the ~4 M objects of the
        # import bodies and move what is left out of the collector's reach before driving.
        city.features.clear()
        gc.collect()
        gc.freeze()
        config = LoadConfig(
            devices=args.devices,
            interval_s=args.interval_s,
            batch=args.batch,
            codec=args.codec,
            duration_s=args.duration_s,
            warmup_s=args.warmup_s,
            connections=args.connections,
            request_timeout_s=args.request_timeout_s,
            seed=args.seed,
        )
        watch = ResourceWatch(service.process.pid)
        sampling = True

        def on_window(opening: bool) -> None:
            nonlocal sampling
            if opening:
                watch.open()
                log_window[0] = _log_size(args.service_log)
            else:
                watch.close()
                log_window[1] = _log_size(args.service_log)
                sampling = False

        async def sample_rss() -> None:
            while sampling:
                await asyncio.sleep(1.0)
                if watch.started and sampling:
                    watch.sample()

        print(
            f"driving {config.devices} devices, one request per {config.period_s:g} s each "
            f"({config.devices / config.period_s:.0f} req/s offered): "
            f"{config.warmup_s:g} s warm-up + {config.duration_s:g} s recorded",
            flush=True,
        )
        sampler = asyncio.create_task(sample_rss())
        try:
            result = await drive(
                service.base_url, keys["sdk_key"], city, config, on_window=on_window
            )
        finally:
            sampling = False
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        doc["load"] = result.summary()
        doc["resources"] = watch.report()
        doc["per_second"] = result.per_second
    finally:
        doc["service_exit"] = service.stop()
        window = (log_window[0], log_window[1]) if log_window[1] else None
        doc["service_log"] = scan_log(args.service_log, window)
    return doc


def other_cpu(doc: dict[str, Any]) -> float:
    """CPU % of processes that are neither the service, its redis, nor the generator."""
    res = doc["resources"]
    ours = sum(
        float(x)
        for x in (
            res["service_cpu_percent"],
            res["redis_cpu_percent"],
            doc["load"]["generator_cpu_percent"],
        )
    )
    return round(max(0.0, float(res["machine_cpu_percent"]) - ours), 1)


def print_table(doc: dict[str, Any]) -> None:
    load, res, zones = doc["load"], doc["resources"], doc["zones"]
    lat = load["latency_ms"]
    lag = load["send_lag_ms"]
    knobs = doc["knobs"]
    failures = zones["import_failures"]
    visible = zones["visible_in_all_workers_after_s"]
    rows = [
        ("zones imported", f"{zones['count']} in {zones['import_s']} s "
         f"({zones['zones_per_s']}/s)"),
        ("last zone in every worker after", "NOT within the deadline" if visible is None
         else f"+{visible} s"),
        ("import requests failed (5xx retried)",
         f"{len(failures)} of {len(zones['import_requests'])} "
         f"{sorted({f['status'] for f in failures})}"),
        ("sampled zones entered, by worker", zones["sampled_zones_entered_by_worker"]),
        ("devices / interval / batch / codec",
         f"{knobs['devices']} / {knobs['interval_s']} s / {knobs['batch']} / {knobs['codec']}"),
        ("offered requests/s", load["offered_requests_per_s"]),
        ("achieved requests/s (200)", load["requests_per_s"]),
        ("achieved pings/s", load["pings_per_s"]),
        ("latency p50 / p95 / p99 / p99.9 / max ms",
         " / ".join(str(lat.get(k, "-")) for k in ("p50", "p95", "p99", "p99.9", "max"))),
        ("generator send lag p99 / max ms", f"{lag.get('p99', '-')} / {lag.get('max', '-')}"),
        ("responses by status", load["statuses"]),
        ("unfinished at stop", load["unfinished_at_stop"]),
        ("events/s", load["events_per_s"]),
        ("ignored pings", load["ignored"] or "none"),
        ("service CPU % (main+workers)", res["service_cpu_percent"]),
        ("service RSS MB (peak)", f"{res['service_rss_mb']} ({res['service_rss_peak_mb']})"),
        ("redis CPU % / RSS MB", f"{res['redis_cpu_percent']} / {res['redis_rss_mb']}"),
        ("generator CPU %", load["generator_cpu_percent"]),
        ("machine CPU % (all processes)", f"{res['machine_cpu_percent']} of "
         f"{100 * doc['machine']['cores']}; other processes: {other_cpu(doc)}"),
        ("load average 1 min (start, end)", res["load_average_1m_at_start_end"]),
        ("service exit", doc["service_exit"]),
        ("service log warnings / errors", f"{doc['service_log']['warnings']} / "
         f"{doc['service_log']['errors']} ({doc['service_log']['path']})"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if doc["service_log"]["during_recorded_window"]:
        print("service log lines during the recorded window:")
        for line in doc["service_log"]["during_recorded_window"]:
            print("  " + line[:200])
    print("(CPU %: 100 = one core; this machine has", doc["machine"]["cores"], "cores)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.bench_pings",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--zones", type=int, default=105_000, help="workload (a) scaled to this many")
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--interval-s", type=float, default=5.0, help="between two fixes of a device")
    ap.add_argument("--batch", type=int, default=1, help="fixes buffered per request")
    ap.add_argument("--codec", choices=("json", "msgpack"), default="json")
    ap.add_argument("--duration-s", type=float, default=60.0, help="recorded window")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="not recorded")
    ap.add_argument("--workers", type=int, default=2, help="service worker processes")
    ap.add_argument("--connections", type=int, default=64, help="client keep-alive connections")
    ap.add_argument("--request-timeout-s", type=float, default=10.0)
    ap.add_argument(
        "--dwell-s",
        type=int,
        default=60,
        help="dwell_s of every zone, so dwell events happen within a short run (0: the "
        "service default of 300 s)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verify-zones", type=int, default=100, help="zones probed after the import")
    ap.add_argument(
        "--visible-deadline-s",
        type=float,
        default=120.0,
        help="how long every worker may take to apply the import before the run goes on anyway",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--service-log", type=Path, default=None, help="default: <out>-service.log")
    args = ap.parse_args(argv)
    if args.service_log is None:
        args.service_log = args.out.with_name(args.out.stem + "-service.log")
    for name in ("zones", "devices", "batch", "workers", "connections"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if not 1 <= args.batch <= 500:
        ap.error("--batch must be 1..500 (the service takes at most 500 pings per request)")
    if args.interval_s <= 0 or args.duration_s <= 0 or args.warmup_s < 0:
        ap.error("--interval-s and --duration-s must be positive, --warmup-s not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = source_version()  # the tree the service starts from (see loadtest.bench)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        doc = runner.run(bench(args))
    doc = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "loadtest.bench_pings", *(argv or sys.argv[1:])]),
        "knobs": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "source": source,
        **doc,
    }
    if "resources" in doc:
        doc["resources"]["other_processes_cpu_percent"] = other_cpu(doc)
    print_table(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
