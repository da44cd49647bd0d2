"""The lean open-loop driver: the simulator's requests are computed before a step, then sent at
their intended times over raw keep-alive HTTP/1.1 connections.

Why not aiohttp's client here: it costs 0.4-0.7 ms of CPU per request (measured), so on this
2-core machine the generator, not the service, would set the maximum rate. Here the window
costs a write, a read, a status-line parse and a body decode per request (`generator_cpu_percent`
in the results says what it took). What a step sends is the same as `bench_pings.drive`: every
device walks the city (loadtest/city.py) and reports on its own period; a device's first request
carries consent; latency runs from the intended send time, so waiting for a free connection
or behind a slow service counts (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack
import orjson
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from loadtest.bench_pings import (
    HIST_MAX_US,
    JSON,
    MSGPACK,
    LoadConfig,
    LoadResult,
    RecordingWindow,
    _readable,
    _record,
    _sample,
    ping_body,
)
from loadtest.city import City, Device


@dataclass
class Fleet:
    """The city's phones across steps: each keeps walking from where the last step left it,
    and only its first request ever carries consent. (Spawning afresh every step would make
    each device jump on its first request: an exit and an enter nobody walked.)"""

    devices: dict[int, Device] = field(default_factory=dict)
    consented: set[int] = field(default_factory=set)

    def device(self, city: City, index: int, now_s: float) -> Device:
        device = self.devices.get(index)
        if device is None:
            device = self.devices[index] = city.spawn(f"dev-{index:06d}", now_s)
        return device


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    intended: float  # seconds after the step's start
    pings: int
    wire: bytes  # the whole HTTP request


def plan(
    base_url: str,
    sdk_key: str,
    city: City,
    config: LoadConfig,
    wall0: float,
    customer_of: Callable[[int], str | None] | None = None,
    fleet: Fleet | None = None,
) -> list[PlannedRequest]:
    """Every request of the step (warm-up and window) in send order, with its body as the device
    would send it then: `wall0` is the wall-clock time of the step's start."""
    codec = MSGPACK if config.codec == "msgpack" else JSON
    encode: Callable[[Any], bytes] = msgpack.packb if codec == MSGPACK else orjson.dumps
    host = urlsplit(base_url).netloc
    head = (
        f"POST /v1/pings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {sdk_key}\r\n"
        f"Content-Type: {codec}\r\nAccept: {codec}\r\nContent-Length: "
    ).encode()
    period = config.period_s
    end = config.warmup_s + config.duration_s
    fleet = fleet if fleet is not None else Fleet()
    devices = [fleet.device(city, i, wall0 - period) for i in range(config.devices)]
    phases = random.Random(config.seed).random
    schedule = [(phases() * period, i) for i in range(config.devices)]
    heapq.heapify(schedule)
    out: list[PlannedRequest] = []
    while schedule and schedule[0][0] < end:
        intended, index = schedule[0]
        heapq.heapreplace(schedule, (intended + period, index))
        device = devices[index]
        now_s = wall0 + intended
        customer = customer_of(index) if customer_of else None
        fixes, body = ping_body(city, device, now_s, config, customer, index not in fleet.consented)
        fleet.consented.add(index)
        data = encode(body)
        # On a 1 ms grid: the event loop's timers have millisecond resolution, and waiting for
        # a time between two ticks would spin the CPU instead of sleeping.
        intended = math.ceil(intended * 1000) / 1000
        out.append(PlannedRequest(intended, len(fixes), head + b"%d\r\n\r\n" % len(data) + data))
    return out


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time (no HTTP pipelining: a phone doesn't)."""

    def __init__(
        self, instance: int, on_answer: Callable[[_Connection, int, bytes, str], None]
    ) -> None:
        self.instance = instance
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current: tuple[float, PlannedRequest] | None = None
        self.sent_at = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, intended: float, request: PlannedRequest, now: float) -> None:
        assert self.transport is not None
        self.current = (intended, request)
        self.sent_at = now
        self.transport.write(request.wire)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            content_type = ""
            at = head.find(b"content-type:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                content_type = head[at + 13 : stop if stop > 0 else len(head)].strip().decode()
            del self.buffer[: end + 4 + length]
            self.on_answer(self, status, body, content_type)


async def drive_lean(
    base_url: str | Sequence[str],
    sdk_key: str,
    city: City,
    config: LoadConfig,
    *,
    on_window: Callable[[bool], None] | None = None,
    customer_of: Callable[[int], str | None] | None = None,
    fleet: Fleet | None = None,
) -> LoadResult:
    """Same contract as bench_pings.drive, on planned requests and raw connections; with a
    `fleet`, devices carry on from earlier steps. Several base URLs (service instances) take
    the requests in turn, as a round-robin load balancer would, each over its equal share of
    the connections."""
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    if len(bases) > 1:
        result_histograms = {b: HdrHistogram(1, HIST_MAX_US, 3) for b in bases}
    else:
        result_histograms = {}
    loop = asyncio.get_running_loop()
    result = LoadResult(config)
    wall0 = time.time() + 2.0  # planning takes a moment; the step starts after it
    planned = plan(bases[0], sdk_key, city, config, wall0, customer_of, fleet)
    result.instance_latency_us.update(result_histograms)
    decode: Callable[[bytes], Any] = msgpack.unpackb if config.codec == "msgpack" else orjson.loads
    t0 = loop.time() + max(0.0, wall0 - time.time())
    record_from = t0 + config.warmup_s
    record_to = record_from + config.duration_s
    seconds = max(1, int(config.duration_s + 0.999))
    per_second = [{"sent": 0.0, "ok": 0.0, "errors": 0.0, "max_ms": 0.0} for _ in range(seconds)]
    # per instance: requests waiting for a connection, connections waiting for a request
    backlogs: list[collections.deque[tuple[float, PlannedRequest]]] = [
        collections.deque() for _ in bases
    ]
    idles: list[collections.deque[_Connection]] = [collections.deque() for _ in bases]
    turn = itertools.cycle(range(len(bases)))
    busy: set[_Connection] = set()
    addresses = [(urlsplit(b).hostname or "127.0.0.1", urlsplit(b).port or 80) for b in bases]

    def take_next(conn: _Connection, now: float) -> None:
        """A free connection sends its instance's oldest waiting request, or waits idle."""
        backlog = backlogs[conn.instance]
        if backlog:
            intended, request = backlog.popleft()
            busy.add(conn)
            conn.send(intended, request, now)
        else:
            idles[conn.instance].append(conn)

    def answered(conn: _Connection, status: int, raw: bytes, content_type: str) -> None:
        done = loop.time()
        assert conn.current is not None
        intended, request = conn.current
        conn.current = None
        busy.discard(conn)
        take_next(conn, done)
        finish(intended, request, str(status), raw, content_type, conn.sent_at, done)
        if result_histograms and record_from <= intended < record_to and status == 200:
            _record(result_histograms[bases[conn.instance]], done - intended)

    def finish(
        intended: float,
        request: PlannedRequest,
        key: str,
        raw: bytes,
        content_type: str,
        started: float,
        done: float,
    ) -> None:
        if not record_from <= intended < record_to:
            return
        second = per_second[min(seconds - 1, int(intended - record_from))]
        second["sent"] += 1
        _record(result.send_lag_us, started - intended)
        result.statuses[key] += 1
        if key != "200":
            second["errors"] += 1
            _sample(result, key, _readable(raw, content_type) if raw else key)
            return
        answer = decode(raw)
        latency = done - intended
        result.count_answer(second, latency, request.pings, answer)

    async def open_connection(instance: int) -> _Connection:
        host, port = addresses[instance]
        _, conn = await loop.create_connection(lambda: _Connection(instance, answered), host, port)
        return conn

    per_instance = -(-config.connections // len(bases))
    for instance in range(len(bases)):
        for _ in range(per_instance):
            idles[instance].append(await open_connection(instance))
    window = RecordingWindow(result, on_window)
    next_check = loop.time() + 0.5

    replacing: set[asyncio.Task[None]] = set()

    def start_replacement(instance: int) -> None:
        task = loop.create_task(replace(instance))
        replacing.add(task)
        task.add_done_callback(replacing.discard)

    def check_timeouts(now: float) -> None:
        """A request past the client timeout fails; its connection is replaced."""
        for conn in list(busy):
            timed_out = now - conn.sent_at > config.request_timeout_s
            if conn.current is None or not (timed_out or conn.transport is None):
                continue
            intended, request = conn.current
            conn.current = None
            busy.discard(conn)
            if conn.transport is not None:
                conn.transport.abort()
            key = "timeout" if timed_out else "ServerDisconnected"
            finish(intended, request, key, b"", "", conn.sent_at, now)
            start_replacement(conn.instance)

    async def replace(instance: int) -> None:
        take_next(await open_connection(instance), loop.time())

    # Every loop here ends: the plan is finite, the drain has a hard deadline.
    position = 0
    while position < len(planned):
        now = loop.time()
        if now >= record_from:
            window.open()
        while position < len(planned) and t0 + planned[position].intended <= now:
            request = planned[position]
            position += 1
            intended = t0 + request.intended
            if intended >= record_from:
                result.scheduled += 1
            instance = next(turn)
            idle = idles[instance]
            while idle and idle[0].transport is None:
                idle.popleft()
            if idle:
                conn = idle.popleft()
                busy.add(conn)
                conn.send(intended, request, now)
            else:
                backlogs[instance].append((intended, request))
        in_flight = len(busy) + sum(len(b) for b in backlogs)
        if in_flight > result.max_in_flight and now >= record_from:
            result.max_in_flight = in_flight
        if now >= next_check:
            check_timeouts(now)
            next_check = now + 0.5
        if position < len(planned):
            wake = t0 + planned[position].intended
            if not window.is_open:
                wake = min(wake, record_from)
            await asyncio.sleep(max(0.001, wake - loop.time()))
    window.open()  # a zero-length window still opens and closes
    await asyncio.sleep(max(0.0, record_to - loop.time()))
    window.close()
    hard_stop = loop.time() + config.request_timeout_s + 2.0
    while (busy or any(backlogs)) and loop.time() < hard_stop:
        await asyncio.sleep(0.05)
        check_timeouts(loop.time())
    result.unfinished = len(busy) + sum(len(b) for b in backlogs)
    for conn in [*busy, *(c for idle in idles for c in idle)]:
        if conn.transport is not None:
            conn.transport.close()
    result.per_second = per_second
    return result
