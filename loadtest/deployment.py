"""What `make bench` drives: one `geoservice serve` on its embedded Redis, or (`--cluster`)
several instances on a Redis Cluster of our own (loadtest/cluster.py), and the per-process CPU
and per-primary command counters of both sides over a recorded window."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import key_slot

from geoservice import keys
from loadtest.bench_pings import TENANT, ResourceWatch, Service, scan_log
from loadtest.cluster import RedisClusterHarness

BENCH_TENANT = str(TENANT["tenant_id"])


def redis_url_from_log(path: Path, deadline_s: float = 10.0) -> str:
    """The service announces its embedded Redis on stdout (captured in the log file)."""
    pattern = re.compile(rb"embedded Redis at (unix://\S+)")
    ends = time.monotonic() + deadline_s
    while time.monotonic() < ends:
        match = pattern.search(path.read_bytes()) if path.exists() else None
        if match:
            return match.group(1).decode()
        time.sleep(0.1)
    raise RuntimeError(f"no 'embedded Redis at' line in {path}")


class CommandStats:
    """INFO commandstats of every Redis primary, read when a window opens and closes (a
    synchronous INFO per primary: about a millisecond on loopback)."""

    def __init__(self, primaries: dict[str, str]) -> None:
        self.clients = {
            label: redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            for label, url in primaries.items()
        }
        self.before: dict[str, dict[str, tuple[int, int]]] = {}
        self.after: dict[str, dict[str, tuple[int, int]]] = {}

    def _read(self) -> dict[str, dict[str, tuple[int, int]]]:
        out = {}
        for label, client in self.clients.items():
            stats = client.info("commandstats")
            out[label] = {
                name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                for name, v in stats.items()
            }
        return out

    def open(self) -> None:
        self.before = self._read()

    def close(self) -> None:
        self.after = self._read()

    def report(self) -> dict[str, dict[str, Any]]:
        """Per primary: commands and their server-side microseconds in the window (INFO itself
        left out), and EVALSHA (the fence script: one per ping request) on its own. Commands a
        script calls are counted on their own line too, and their time is also inside the
        script's: `usec` over all commands counts that time twice; `evalsha_usec` does not."""
        out: dict[str, dict[str, Any]] = {}
        for label, after in self.after.items():
            before = self.before.get(label, {})
            delta = {
                name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
                for name, (calls, usec) in after.items()
                if name != "info"
            }
            evalsha_calls, evalsha_usec = delta.get("evalsha", (0, 0))
            out[label] = {
                "calls": sum(c for c, _ in delta.values()),
                "usec": sum(u for _, u in delta.values()),
                "evalsha_calls": evalsha_calls,
                "evalsha_usec": evalsha_usec,
                "evalsha_usec_per_call": round(evalsha_usec / evalsha_calls, 2)
                if evalsha_calls
                else None,
                "by_command": {
                    k: {"calls": c, "usec": u} for k, (c, u) in sorted(delta.items()) if c
                },
            }
        return out

    def close_clients(self) -> None:
        for client in self.clients.values():
            client.close()


class Deployment:
    """`start()` (from the main thread: the cluster's nodes die with it), `await ready()`,
    then `base_urls` to drive; `stop()` stops the services first and the cluster last, and
    says whether anything was left running."""

    def __init__(self, *, workers: int, instances: int, cluster: bool, log_stem: Path) -> None:
        if cluster and (instances < 1 or workers % instances):
            raise ValueError(f"{workers} workers cannot be split evenly over {instances} instances")
        self.cluster = RedisClusterHarness() if cluster else None
        self.instances = instances if cluster else 1
        self.workers_per_instance = workers // self.instances
        self.token = secrets.token_urlsafe(24)
        env: dict[str, str] = {}
        if cluster:
            # REDIS_URL makes the three secrets mandatory; every instance needs the same ones.
            env = {
                "GEOSERVICE_SIGNING_KEYS": f"bench:{secrets.token_hex(16)}",
                "GEOSERVICE_PSEUDONYM_KEY": secrets.token_hex(16),
            }
        self.services = [
            Service(
                self.workers_per_instance,
                log_stem.with_name(f"{log_stem.name}-service{f'-{i + 1}' if cluster else ''}.log"),
                token=self.token,
                env={**env, "GEOSERVICE_INSTANCE_ID": f"bench-{i + 1}"} if cluster else None,
            )
            for i in range(self.instances)
        ]
        self.primaries: dict[str, str] = {}  # label -> URL, for INFO commandstats
        self.redis_nodes: dict[int, str] = {}  # pid -> label, cluster nodes only
        self.hot_keys: dict[str, str] = {}  # single-slot keys every instance or event hits

    @property
    def base_urls(self) -> list[str]:
        return [s.base_url for s in self.services]

    @property
    def commands(self) -> list[str]:
        return [" ".join(s.command) for s in self.services]

    def start(self) -> None:
        if self.cluster is not None:
            started = time.perf_counter()
            self.cluster.start()
            print(
                f"Redis Cluster up in {time.perf_counter() - started:.1f} s: "
                f"{self.cluster.url(len(self.cluster.nodes))}",
                flush=True,
            )
            pids = self.cluster.pids()
            roles = self.cluster.roles_sync()
            port_of = {r.node_id: r.port for r in roles}
            for role in roles:
                label = (
                    f"{role.port} primary"
                    if role.primary
                    else f"{role.port} replica of {port_of.get(role.primary_id or '', '?')}"
                )
                self.redis_nodes[pids[role.port]] = label
                if role.primary:
                    self.primaries[label] = f"redis://127.0.0.1:{role.port}"
            for key in (keys.CHANGES, keys.events(BENCH_TENANT), keys.TENANT_IDS):
                slot = key_slot(key.encode())
                port = next(r.port for r in roles if r.primary and r.serves(slot))
                self.hot_keys[key] = f"slot {slot} on {port} primary"
            # Each instance gets other startup nodes, as two machines would be configured.
            addresses = [n.address for n in self.cluster.nodes]
            for i, service in enumerate(self.services):
                seeds = [addresses[(2 * i + k) % len(addresses)] for k in range(2)]
                service.env["REDIS_URL"] = "redis+cluster://" + ",".join(seeds)
        for service in self.services:
            service.start()

    async def ready(self) -> float:
        started = time.perf_counter()
        for service in self.services:
            await service.wait_ready()
        if self.cluster is None:
            url = await asyncio.to_thread(redis_url_from_log, self.services[0].log_path)
            self.primaries = {"embedded": url}
        return time.perf_counter() - started

    def check_running(self) -> None:
        """Raise if a service or a cluster node has exited: the steps after it would measure
        nothing but connection errors."""
        for service in self.services:
            if service.process is None or service.process.poll() is not None:
                raise RuntimeError(f"a service exited; see {service.log_path}")
        if self.cluster is not None and len(self.cluster.pids()) < len(self.cluster.nodes):
            raise RuntimeError(f"a Redis Cluster node exited (folder {self.cluster.folder})")

    def watch(self) -> ResourceWatch:
        pids = [s.process.pid for s in self.services if s.process is not None]
        return ResourceWatch(*pids, redis_nodes=self.redis_nodes)

    def command_stats(self) -> CommandStats:
        return CommandStats(self.primaries)

    def describe(self) -> dict[str, Any]:
        return {
            "redis": "cluster" if self.cluster else "embedded",
            "instances": self.instances,
            "workers_per_instance": self.workers_per_instance,
            "service_commands": self.commands,
            "redis_urls": [s.env.get("REDIS_URL", "embedded") for s in self.services],
            "redis_nodes": sorted(self.redis_nodes.values()),
            "redis_primaries": sorted(self.primaries),
            "hot_keys": self.hot_keys,
        }

    def stop(self) -> dict[str, Any]:
        """Services first (they drain against a live Redis), then the cluster. Each step runs
        whatever the one before did."""
        out: dict[str, Any] = {}
        try:
            for i, service in enumerate(self.services):
                try:
                    out[f"service_{i + 1}"] = service.stop()
                finally:
                    out[f"service_{i + 1}_log"] = scan_log(service.log_path, None)
        finally:
            if self.cluster is not None:
                pids = list(self.cluster.pids().values())
                self.cluster.stop()
                out["cluster_nodes_left_running"] = [p for p in pids if _alive(p)]
        return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False
