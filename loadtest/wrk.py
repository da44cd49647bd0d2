"""Maximum-rate figures with Debian's `wrk`: the simulator's requests replayed closed-loop.

The open-loop ramp (lean.py) says what latency a given rate gets; `wrk` says how far the
service goes when a lean C generator keeps N connections busy. Both share the 2 cores with the
service, and wrk takes less of them. Closed loop: a connection waits for its answer before
sending again, so a stall delays the requests behind it instead of adding to their latency
(coordinated omission). Its percentiles therefore flatter the tail; use them for throughput.

The requests are planned by lean.plan (the same walking devices, bodies and codecs), written to
a file as `<length>\\n<request bytes>` records, and read on in order by a small Lua script
(cycling if a run sends more than was planned).

`run_paced` is the open-loop form (wrk2's idea on Debian's wrk, which has no `-R`): the default
driver of `make bench`'s ramp. Each planned request is due at its planned time; a connection
that comes free claims the next request and waits, through wrk's `delay()` hook (whole
milliseconds), until it is due. With more connections than requests in flight, a slow answer
holds up nothing behind it. wrk times a request from its actual send: the pacing's own error is
under a millisecond, and a request sent more than 1 ms after it was due (every connection was
busy: the service fell behind) is counted as late, and a step with late sends is not a knee.
(wrk also applies its own coordinated-omission correction at the end, adding samples for answers
slower than a connection's mean spacing, which at these rates is 30 ms or more.)
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.lean import PlannedRequest

LUA = r"""
local requests = {}
local position = 0
function init(args)
  local f = assert(io.open(args[1], "rb"))
  while true do
    local n = f:read("*l")
    if not n then break end
    requests[#requests + 1] = f:read(tonumber(n))
  end
  f:close()
  -- run after run, and instance by instance, the plan is read on in time order, so a device's
  -- pings keep their order (out of order they would only be ignored as stale)
  position = tonumber(args[2])
  step = tonumber(args[3])
end
function request()
  position = position % #requests + step
  return requests[position]
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), non-2xx answers and socket errors from wrk."""
    out: dict[str, Any] = {}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    out["requests_per_s"] = float(rate.group(1)) if rate else 0.0
    latency: dict[str, float] = {}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M):
        latency[f"p{pct}"] = round(_ms(value), 2)
    out["latency_ms"] = latency
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    out["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    out["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    return out


def run(
    base_urls: Sequence[str],
    planned: Sequence[PlannedRequest],
    connections: Sequence[int],
    duration_s: float,
    pings_per_request: int,
) -> list[dict[str, Any]]:
    """One run per connection count, over the same planned requests. Several instances: one wrk
    per instance at once, the connections split between them, rates summed, worst p99."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="geoservice-wrk-") as folder:
        script = Path(folder) / "replay.lua"
        script.write_text(LUA)
        data = Path(folder) / "requests.bin"
        with data.open("wb") as f:
            for request in planned:
                f.write(b"%d\n" % len(request.wire))
                f.write(request.wire)
        position = 0
        for count in connections:
            share = max(1, count // len(base_urls))
            command = ["wrk", "--latency", "-t", "1", "-d", f"{duration_s:g}s", "-s", str(script)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    [
                        *command,
                        "-c",
                        str(share),
                        base,
                        "--",
                        str(data),
                        str(position + instance),
                        str(len(base_urls)),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for instance, base in enumerate(base_urls)
            ]
            outputs = [p.communicate(timeout=duration_s + 60) for p in processes]
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            parsed = [parse(stdout) for stdout, _ in outputs]
            latency: dict[str, float] = {}
            for key in ("p50", "p75", "p90", "p99"):
                values = [p["latency_ms"][key] for p in parsed if key in p["latency_ms"]]
                if values:
                    latency[key] = max(values)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            requests_per_s = sum(p["requests_per_s"] for p in parsed)
            position = (position + round(requests_per_s * duration_s)) % len(planned)
            row: dict[str, Any] = {
                "connections": share * len(base_urls),
                "requests_per_s": round(requests_per_s, 1),
                "pings_per_s": round(requests_per_s * pings_per_request, 1),
                "latency_ms": latency,
                "non_2xx": sum(p["non_2xx"] for p in parsed),
                "socket_errors": sum(p["socket_errors"] for p in parsed),
                "wrk_cpu_percent": round(100 * cpu / max(wall, 1e-9), 1),
                "exit_codes": [p.returncode for p in processes],
            }
            failed = [
                err[-300:] for (_, err), p in zip(outputs, processes, strict=True) if p.returncode
            ]
            if failed:
                row["stderr"] = failed
            rows.append(row)
            print(
                f"  wrk -c {row['connections']:<3} {requests_per_s:>9.0f} req/s "
                f"{row['pings_per_s']:>9.0f} pings/s  p50 {latency.get('p50', '-')} "
                f"p99 {latency.get('p99', '-')} ms  non-2xx {row['non_2xx']}  "
                f"wrk CPU {row['wrk_cpu_percent']} %",
                flush=True,
            )
    return rows


def best(rows: Sequence[dict[str, Any]], limit_ms: float) -> dict[str, Any] | None:
    """The run with the most pings/s whose p99 is within the limit and had no error."""
    good = [
        r
        for r in rows
        if r["non_2xx"] == 0
        and r["socket_errors"] == 0
        and r["latency_ms"].get("p99", float("inf")) <= limit_ms
    ]
    return max(good, key=lambda r: r["pings_per_s"], default=None)


PACED_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } geoservice_timespec;
int clock_gettime(int clock, geoservice_timespec *tp);
]]
local clock = ffi.new("geoservice_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local due, bodies = {}, {}
local claims, first_claim, last_claim = {}, 1, 0  -- requests claimed, not yet written
local next_request, t0 = 1, nil
local needles = {}
sent, late, late_ms_max, ok, offers = 0, 0, 0, 0, 0
events, statuses = {enter = 0, exit = 0, dwell = 0}, {}

function init(args)
  local f = assert(io.open(args[1], "rb"))
  while true do
    local line = f:read("*l")
    if not line then break end
    local offset_ms, length = line:match("^(%S+) (%d+)$")
    due[#due + 1] = tonumber(offset_ms)
    bodies[#bodies + 1] = f:read(tonumber(length))
  end
  f:close()
  if args[2] == "msgpack" then
    needles = {enter = "\164type\165enter", exit = "\164type\164exit",
               dwell = "\164type\165dwell", offer = "\168offer_id"}
  else
    needles = {enter = '"type":"enter"', exit = '"type":"exit"', dwell = '"type":"dwell"',
               offer = '"offer_id"'}
  end
end

local function claim(now)
  local k = next_request
  next_request = k + 1
  last_claim = last_claim + 1
  claims[last_claim] = k
  return k
end

function delay()
  local now = now_ms()
  -- every connection claims its first request in the first milliseconds: start just after
  if t0 == nil then t0 = now + 20 end
  if next_request > #bodies then return 3600000 end  -- the plan is done: send nothing more
  local wait = t0 + due[claim(now)] - now
  if wait >= 0.5 then return math.floor(wait + 0.5) end
  if wait < -1 then
    late = late + 1
    if -wait > late_ms_max then late_ms_max = -wait end
  end
  return 0
end

function request()
  -- wrk calls request() once before the run to check that it is valid HTTP: show it the
  -- first request without taking it from the plan
  if t0 == nil then return bodies[1] end
  if first_claim > last_claim then
    -- a reconnect writes without a delay() first
    if next_request > #bodies then next_request = 1 end
    claim(now_ms())
  end
  local k = claims[first_claim]
  claims[first_claim] = nil
  first_claim = first_claim + 1
  sent = sent + 1
  return bodies[k]
end

local function count(s, needle)
  local n, at = 0, 1
  while true do
    local found = string.find(s, needle, at, true)
    if not found then return n end
    n = n + 1
    at = found + #needle
  end
end

local answered = 0
function response(status, headers, body)
  statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  answered = answered + 1
  if answered == #bodies then
    -- wrk runs for its whole -d: tell run_paced, which then stops it, so that neither the
    -- measured window nor the next step waits for idle seconds
    io.write("GEOSERVICE-ANSWERED\n")
    io.flush()
  end
  if status == 200 then
    ok = ok + 1
    if #body > 40 then  -- longer than an answer with no event, offer or ignored fix
      events.enter = events.enter + count(body, needles.enter)
      events.exit = events.exit + count(body, needles.exit)
      events.dwell = events.dwell + count(body, needles.dwell)
      offers = offers + count(body, needles.offer)
    end
  end
end

local threads = {}
function setup(thread) threads[#threads + 1] = thread end

function done(summary, latency, requests)
  local t = threads[1]
  local parts = {}
  for code, n in pairs(t:get("statuses")) do
    parts[#parts + 1] = string.format('"%s": %d', code, n)
  end
  local ev = t:get("events")
  local e = summary.errors
  io.write(string.format(
    'GEOSERVICE-PACED {"sent": %d, "ok": %d, "late": %d, "late_ms_max": %.3f, "offers": %d, '
    .. '"events": {"enter": %d, "exit": %d, "dwell": %d}, "statuses": {%s}, '
    .. '"socket_errors": %d, "timeouts": %d, "answered": %d, "latency_us": {"mean": %.1f, '
    .. '"p50": %d, "p90": %d, "p95": %d, "p99": %d, "p99.9": %d, "max": %d}}\n',
    t:get("sent"), t:get("ok"), t:get("late"), t:get("late_ms_max"), t:get("offers"),
    ev.enter, ev.exit, ev.dwell, table.concat(parts, ", "),
    e.connect + e.read + e.write, e.timeout, summary.requests, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


# Printed by PACED_LUA once every planned request has its answer.
ANSWERED = b"GEOSERVICE-ANSWERED\n"


def _until_answered(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> list[bytes]:
    """Each wrk's stdout so far, read until it has printed ANSWERED or exited (a request that
    never got an answer leaves wrk running to its -d)."""
    heard = {p.pid: bytearray() for p in processes}
    with selectors.DefaultSelector() as selector:
        for p in processes:
            assert p.stdout is not None
            selector.register(p.stdout, selectors.EVENT_READ, p)
        deadline = time.monotonic() + timeout_s
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                chunk = os.read(key.fd, 65536)  # not the file object: it would buffer ahead
                heard[key.data.pid] += chunk
                if not chunk or ANSWERED in heard[key.data.pid]:
                    selector.unregister(key.fileobj)
    return [bytes(heard[p.pid]) for p in processes]


def _stop_and_collect(
    processes: Sequence[subprocess.Popen[bytes]], heard: Sequence[bytes]
) -> list[tuple[str, str]]:
    """SIGINT ends wrk's run early; it then prints its summary (and ours, from done())."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    outputs = []
    for p, before in zip(processes, heard, strict=True):
        rest, err = p.communicate(timeout=60)
        outputs.append(((before + rest).decode(), err.decode()))
    return outputs


def run_paced(
    base_urls: Sequence[str],
    planned: Sequence[PlannedRequest],
    codec: str,
    connections: int,
    timeout_s: float,
    on_window: Callable[[bool], None] | None = None,
) -> dict[str, Any]:
    """Send the planned requests open-loop at their planned times (relative to the first), one
    wrk per instance taking every n-th request, and report what was answered and how fast.
    Latency percentiles are the worst instance's; counts are summed. `on_window(True)` is
    called as wrk starts, `on_window(False)` once every request is answered (or wrk gave up):
    the window a step's CPU is measured over."""
    if not planned:
        raise ValueError("nothing planned")
    start = planned[0].intended
    span_s = planned[-1].intended - start
    with tempfile.TemporaryDirectory(prefix="geoservice-wrk-") as folder:
        script = Path(folder) / "paced.lua"
        script.write_text(PACED_LUA)
        files = []
        for instance in range(len(base_urls)):
            data = Path(folder) / f"requests-{instance}.bin"
            with data.open("wb") as f:
                for request in planned[instance :: len(base_urls)]:
                    f.write(b"%.3f %d\n" % (1000 * (request.intended - start), len(request.wire)))
                    f.write(request.wire)
            files.append(data)
        share = max(1, connections // len(base_urls))
        # long enough for the last request's answer (wrk drops what is unanswered at the end);
        # wrk takes whole seconds
        duration_s = math.ceil(span_s + min(timeout_s, 2.0) + 0.5)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        command = ["wrk", "-t", "1", "-c", str(share), "-d", f"{duration_s}s"]
        command += ["--timeout", f"{math.ceil(timeout_s)}s", "-s", str(script)]
        if on_window is not None:
            on_window(True)
        started = time.perf_counter()
        processes = [
            subprocess.Popen(
                [*command, base, "--", str(data), codec],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for base, data in zip(base_urls, files, strict=True)
        ]
        try:
            heard = _until_answered(processes, duration_s + 60)
        finally:
            if on_window is not None:
                on_window(False)
        outputs = _stop_and_collect(processes, heard)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reports: list[dict[str, Any]] = []
    for (stdout, stderr), process in zip(outputs, processes, strict=True):
        line = next((x for x in stdout.splitlines() if x.startswith("GEOSERVICE-PACED ")), None)
        if process.returncode or line is None:
            raise RuntimeError(f"wrk failed ({process.returncode}): {(stderr or stdout)[-500:]}")
        reports.append(json.loads(line.split(" ", 1)[1]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    statuses: dict[str, int] = {}
    for r in reports:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    latency = {
        key: max(r["latency_us"][key] for r in reports) / 1000
        for key in ("mean", "p50", "p90", "p95", "p99", "p99.9", "max")
    }
    return {
        "planned": len(planned),
        "span_s": span_s,
        "sent": sum(r["sent"] for r in reports),
        "ok": sum(r["ok"] for r in reports),
        "answered": sum(r["answered"] for r in reports),
        "late_sends": sum(r["late"] for r in reports),
        "late_ms_max": max(r["late_ms_max"] for r in reports),
        "statuses": statuses,
        "socket_errors": sum(r["socket_errors"] for r in reports),
        "timeouts": sum(r["timeouts"] for r in reports),
        "events": {k: sum(r["events"][k] for r in reports) for k in ("enter", "exit", "dwell")},
        "offers": sum(r["offers"] for r in reports),
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "latency_ms_by_instance": {
            base: {k: v / 1000 for k, v in r["latency_us"].items()}
            for base, r in zip(base_urls, reports, strict=True)
        },
        "generator_cpu_percent": round(100 * cpu / max(wall, 1e-9), 1),
    }
