"""Maximum-rate figures with Debian's `wrk`: the simulator's requests replayed closed-loop.

The open-loop ramp (lean.py) says what latency a given rate gets; `wrk` says how far the
service goes when a lean C generator keeps N connections busy. Both share the 2 cores with the
service, and wrk takes less of them. Closed loop: a connection waits for its answer before
sending again, so a stall delays the requests behind it instead of adding to their latency
(coordinated omission). Its percentiles therefore flatter the tail; use them for throughput.

The requests are planned by lean.plan (the same walking devices, bodies and codecs), written to
a file as `<length>\\n<request bytes>` records, and read on in order by a small Lua script
(cycling if a run sends more than was planned).
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
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
