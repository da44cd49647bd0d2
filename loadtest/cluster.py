"""A real Redis Cluster on loopback: three primaries and three replicas, each a `redis-server`
of its own in a temporary folder, joined with `redis-cli --cluster create`. One implementation
for the cluster tests (tests/test_cluster.py) and `make bench CLUSTER=1` (loadtest/bench.py).

Every node gets two free ports: its client port and, set explicitly with `cluster-port`, its
cluster bus port (the default bus port is client port + 10000, which for a port from the
ephemeral range can be past 65535). Nodes run in a session of their own, so a Ctrl-C reaches
the caller, which stops what uses the cluster first and the cluster last; they get SIGTERM when
the thread that started them dies (PR_SET_PDEATHSIG: call `start()` from the main thread), so
a killed run leaves no redis-server behind. `stop()` kills them and removes the folder; the
harness is also a context manager.

The control helpers (kill a primary, wait for a failover, flush) talk to the nodes directly;
tests use them to drive the cluster, never to synchronise by sleeping.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.cluster import key_slot
from redis.exceptions import RedisError

from geoservice.embedded_redis import _die_with_parent

NODE_TIMEOUT_MS = 2000


class ClusterError(RuntimeError):
    pass


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets are held open until every port is chosen."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Node:
    port: int
    bus_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def async_client(self) -> AsyncRedis:
        return AsyncRedis(port=self.port, socket_timeout=1, socket_connect_timeout=1)


@dataclass(frozen=True)
class Role:
    """One line of CLUSTER NODES, as this harness needs it."""

    node_id: str
    port: int
    primary: bool
    failed: bool
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    def serves(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def parse_cluster_nodes(text: str) -> list[Role]:
    roles = []
    for line in text.strip().splitlines():
        parts = line.split()
        node_id, address, flags, primary_id = parts[0], parts[1], parts[2].split(","), parts[3]
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        slots = []
        for spec in parts[8:]:
            if spec.startswith("["):  # a slot being migrated: none here
                continue
            low, _, high = spec.partition("-")
            slots.append((int(low), int(high or low)))
        roles.append(
            Role(
                node_id,
                port,
                "master" in flags,
                "fail" in flags or "fail?" in flags,
                None if primary_id == "-" else primary_id,
                tuple(slots),
            )
        )
    return roles


class RedisClusterHarness:
    """`start()` ... `stop()`; `url` is what the service takes as REDIS_URL."""

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.primaries = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout_s = startup_timeout_s
        self.folder: Path | None = None
        self.nodes: list[Node] = []

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> RedisClusterHarness:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise ClusterError(f"{binary} is not on PATH")
        self.folder = Path(tempfile.mkdtemp(prefix="geoservice-cluster-"))
        count = self.primaries * (1 + self.replicas_per_primary)
        ports = _free_ports(2 * count)
        self.nodes = [
            Node(ports[2 * i], ports[2 * i + 1], self.folder / str(ports[2 * i]))
            for i in range(count)
        ]
        try:
            for node in self.nodes:
                node.folder.mkdir()
                self._launch(node)
            deadline = time.monotonic() + self.startup_timeout_s
            for node in self.nodes:
                self._wait_answers(node, deadline)
            self._create()
            self.wait_healthy_sync(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _launch(self, node: Node) -> None:
        args = [
            "redis-server",
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-port", str(node.bus_port),
            "--cluster-config-file", f"nodes-{node.port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A slot without a primary refuses its own commands only; the default ("yes")
            # refuses every command on every node until the failover is done. Production
            # clusters for this service should set it the same way (docs/deployment.md).
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(node.folder),
            "--daemonize", "no",
        ]  # fmt: skip
        log = (node.folder / "redis.log").open("ab")
        node.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        log.close()

    def _wait_answers(self, node: Node, deadline: float) -> None:
        while True:
            if not node.alive:
                raise ClusterError(f"redis-server on {node.port} exited: {self._log_tail(node)}")
            try:
                with node.client() as client:
                    client.ping()
                return
            except RedisError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"redis-server on {node.port} does not answer") from None
                time.sleep(0.02)

    def _create(self) -> None:
        command = [
            "redis-cli",
            "--cluster", "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas", str(self.replicas_per_primary),
            "--cluster-yes",
        ]  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, timeout=self.startup_timeout_s, check=False
        )
        if result.returncode != 0:
            raise ClusterError(
                f"redis-cli --cluster create failed: {result.stdout.decode()[-2000:]}"
                f"{result.stderr.decode()[-2000:]}"
            )

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _log_tail(self, node: Node) -> str:
        try:
            return (node.folder / "redis.log").read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    # -- what the service and the tests connect to ----------------------------------------------

    def pids(self) -> dict[int, int]:
        """Client port -> pid of every live node."""
        return {n.port: n.process.pid for n in self.nodes if n.process and n.alive}

    def url(self, seeds: int = 2) -> str:
        """`redis+cluster://` with the first `seeds` nodes as startup nodes."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:seeds])

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    # -- topology -------------------------------------------------------------------------------

    def roles_sync(self) -> list[Role]:
        """CLUSTER NODES as seen by the first live node."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                with node.client() as client:
                    text = client.execute_command("CLUSTER", "NODES")
            except RedisError:
                continue
            return parse_cluster_nodes(text.decode() if isinstance(text, bytes) else text)
        raise ClusterError("no node answers")

    async def roles(self) -> list[Role]:
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.async_client()
            try:
                text = await client.execute_command("CLUSTER", "NODES")
            except RedisError:
                continue
            finally:
                await client.aclose()
            return parse_cluster_nodes(text.decode() if isinstance(text, bytes) else text)
        raise ClusterError("no node answers")

    async def primary_ports(self) -> list[int]:
        return [r.port for r in await self.roles() if r.primary and not r.failed and r.slots]

    async def primary_of_key(self, key: str | bytes) -> int:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for role in await self.roles():
            if role.primary and not role.failed and role.serves(slot):
                return role.port
        raise ClusterError(f"no live primary serves slot {slot}")

    def _healthy_sync(self) -> bool:
        """Every live node says cluster_state:ok, every slot has a live primary, and every
        primary with slots has its replicas attached and in sync."""
        live = [n for n in self.nodes if n.alive]
        for node in live:
            try:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    info = info.decode() if isinstance(info, bytes) else info
                    if "cluster_state:ok" not in info:
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                        or replication.get("master_sync_in_progress")
                    ):
                        return False
            except RedisError:
                return False
        roles = self.roles_sync()
        live_ports = {n.port for n in live}
        if any(r.failed and r.port in live_ports for r in roles):
            return False  # a restarted node not yet known to be back
        covered = sum(
            high - low + 1 for r in roles if r.primary and not r.failed for low, high in r.slots
        )
        return covered == 16384

    def wait_healthy_sync(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._healthy_sync():
            if time.monotonic() > deadline:
                raise ClusterError("the cluster did not become healthy in time")
            time.sleep(0.05)

    # -- failures -------------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to the cluster, no last replication."""
        node = self.node(port)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again with its nodes-P.conf: it rejoins (as a replica of whoever
        took over its slots)."""
        node = self.node(port)
        assert not node.alive
        self._launch(node)
        self._wait_answers(node, time.monotonic() + self.startup_timeout_s)

    # -- data -----------------------------------------------------------------------------------

    async def flushall(self) -> None:
        """FLUSHALL on every live primary of this cluster (replicas follow)."""
        for port in await self.primary_ports():
            client = self.node(port).async_client()
            try:
                await client.flushall()
            finally:
                await client.aclose()

    async def live_clients(self) -> list[AsyncRedis]:
        return [n.async_client() for n in self.nodes if n.alive]
