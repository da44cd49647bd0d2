"""The Redis connection: one client per process, standalone or cluster, and the Lua scripts.

Scripts live as `.lua` files beside this module; they are registered once and called by SHA
(loaded again when a server restarted empty). The scripts go through the automatic pipeline
(autopipeline.py): the standalone Redis's, or on a cluster the one of the primary holding their
keys; everything else through redis-py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

from redis._parsers.response_callbacks import get_response_callbacks
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands import READ_COMMANDS
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)

from geoservice import autopipeline
from geoservice.autopipeline import AutoPipeline, QueuedCommands
from geoservice.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
NOT_RUN = object()  # Store._run_on_primary: the script did not run, redis-py is to send it

# redis-py's annotations cannot know that replies are bytes (decode_responses=False) and type
# every reply as bytes | str; the service treats the client as untyped and decodes at each use.
RedisClient = Any

SCRIPT_NAMES = (
    "create_tenant",
    "fence",
    "confirm_link",
    "issue_offer",
    "reserve_budget",
    "redeem",
    "rate_limit",
)

# The automatic pipeline speaks RESP2; redis-py (8) speaks RESP3 and shapes replies into its
# legacy (RESP2-era) types. Its RESP2 callbacks give the same shapes from RESP2 replies.
RESP2_CALLBACKS = get_response_callbacks(user_protocol=2, legacy_responses=True)

# Failover (docs/deployment.md, "Redis Cluster"). redis-py's cluster client repeats whatever
# failed with a lost connection, up to 10 times by default. That is wrong for writes: a
# redemption whose answer was lost would answer 409 to its own first attempt, a budget unit
# given back twice would let one offer too many out. So its own retries are off, and the only
# commands sent once more (after a topology refresh) are those a repeat cannot change: reads,
# and the scripts listed here. `fence` is keyed by ping ts, so a repeat finds every ping stale
# and fires nothing; `redeem` is never repeated: the client repeats it and then gets 409.
REPEATABLE_SCRIPTS = frozenset({"fence"})
REPEATABLE_COMMANDS = READ_COMMANDS | {"PING"}
# Errors after which the command was not, or need not have been, carried out and a refreshed
# topology may route it elsewhere. Not TimeoutError: the wait already used the whole socket
# timeout, and a repeat would double it past the request deadline.
REPEAT_ON = (ConnectionError, ClusterDownError)
REPEAT_PAUSE_S = 0.05
# The cluster client's per-node pool does not wait for a free connection, it fails at once:
# room for every request in flight (one command each at a time) and the background tasks.
SPARE_CONNECTIONS = 32
# Error replies from a cluster node meaning the script did not run there and redis-py's client,
# which follows redirections and waits out a failover, is to send it (Store._run_on_primary).
NOT_RUN_HERE = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
# Writes after the answer (Store.write_behind) that may be pending at once; past this, a request
# waits for its own, so a slow Redis slows the requests instead of growing this process.
MAX_PENDING_WRITES = 1_000


class _ClosedTransportIsConnectionError(AbstractConnection):
    """A redis-py connection whose peer closed it fails with redis-py's ConnectionError.

    redis-py 8.1 lets the transport's own TypeError or AttributeError out when it writes to a
    connection the peer reset while it sat idle in the pool, or reads from one closed under it
    (redis/redis-py#4287, seen here in a Redis Cluster failover). Nothing recovers from those:
    not redis-py's retries, not the cluster client's topology refresh, not the service's 503.
    As ConnectionError they are the store not answering on that connection, as they should be.
    The check is the transport's state, not the error's wording, so a TypeError of any other
    cause still surfaces as the bug it is."""

    __slots__ = ()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._closed_by_peer():
            # Closed or reset by the server while idle (a restart, a failover, its timeout):
            # nothing went out on it, so a new connection is safe to use.
            await self.disconnect(nowait=True)
        await super().send_packed_command(command, check_health)

    def _closed_by_peer(self) -> bool:
        writer, reader = self._writer, self._reader
        if writer is None or reader is None:
            return False  # not connected: redis-py connects first
        return writer.transport.is_closing() or reader.at_eof()

    async def _send_packed_command(self, command: Any) -> None:
        try:
            await super()._send_packed_command(command)
        except (AttributeError, TypeError) as exc:
            if self._transport_closed():
                raise ConnectionError(f"redis connection closed under a write: {exc!r}") from exc
            raise

    async def _read_response_from_parser(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._read_response_from_parser(*args, **kwargs)
        except (AttributeError, TypeError) as exc:
            if self._transport_closed():
                raise ConnectionError(f"redis connection closed under a read: {exc!r}") from exc
            raise

    def _transport_closed(self) -> bool:
        writer = self._writer
        return writer is None or writer.transport.is_closing()


class _TcpConnection(_ClosedTransportIsConnectionError, Connection):
    __slots__ = ()


class _TlsConnection(_ClosedTransportIsConnectionError, SSLConnection):
    __slots__ = ()


class _UnixConnection(_ClosedTransportIsConnectionError, UnixDomainSocketConnection):
    __slots__ = ()


# redis-py picks its connection class from the URL's scheme; each is swapped for ours.
CONNECTION_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


class ServiceCluster(RedisCluster):
    """RedisCluster that repeats a read once after a failover or a lost connection, and turns
    the cluster-only exceptions that mean "no node serves this now" into RedisErrors, which
    the service already treats as the store being unavailable (503, resynchronise, retry)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The cluster client sets its connection class inside its constructor (no argument
        # for it): every node made from here on takes it from the nodes manager's kwargs.
        manager_kwargs = self.nodes_manager.connection_kwargs
        # (TCP or TLS: the cluster client has no unix sockets)
        ours = cast("type[Connection]", CONNECTION_CLASSES[manager_kwargs["connection_class"]])
        manager_kwargs["connection_class"] = ours
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = ours

    async def initialize(self, *args: Any, **kwargs: Any) -> ServiceCluster:
        try:
            await super().initialize(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterDownError(str(exc)) from exc
        except RedisClusterException as exc:
            # "Redis Cluster cannot be connected": no startup node answered.
            if isinstance(exc.__cause__, ConnectionError | TimeoutError | OSError):
                raise ConnectionError(str(exc)) from exc
            raise
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._execute_once(*args, **kwargs)
        except REPEAT_ON as exc:
            if str(args[0]).upper() not in REPEATABLE_COMMANDS:
                raise
            log.info(
                "redis cluster: %s failed (%r); once more after a topology refresh", args[0], exc
            )
            await asyncio.sleep(REPEAT_PAUSE_S)
            return await self._execute_once(*args, **kwargs)

    async def _execute_once(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterDownError(str(exc)) from exc


def may_go_unawaited(task: asyncio.Task[T]) -> asyncio.Task[T]:
    """The task, its failure marked as seen: for a read or write started early that the
    request may not wait for after all (asyncio logs the failures nobody retrieved)."""

    def seen(done: asyncio.Task[T]) -> None:
        if not done.cancelled():
            done.exception()

    task.add_done_callback(seen)
    return task


def load_script_source(name: str) -> str:
    return (files("geoservice") / "lua" / f"{name}.lua").read_text()


def connect(settings: Settings, url: str | None = None) -> Redis | RedisCluster:
    url = url or settings.redis_url
    if url is None:
        raise ValueError("no Redis URL: the embedded Redis must be started first")
    timeout_s = settings.redis_timeout_ms / 1000
    parts = urlsplit(url)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        nodes = []
        for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = hostport.rpartition(":")
            nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
        return ServiceCluster(
            startup_nodes=nodes,
            password=parts.password,
            ssl=parts.scheme == "rediss+cluster",
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=False,
            health_check_interval=30,
            # No repeats by redis-py (see REPEAT_ON); a failed command marks the topology for
            # a refresh, which the next command does.
            retry=Retry(NoBackoff(), 0),
            # Start, and refresh the topology, while some slots have no primary: requests for
            # those slots fail fast (503), the others go on.
            require_full_coverage=False,
            # Never refresh the topology on MOVED: redis-py's refresh on MOVED first closes
            # every connection, failing commands in flight on healthy nodes too. A MOVED after
            # a failover re-points the whole slot range of the old primary at once anyway.
            reinitialize_steps=0,
            max_connections=settings.max_in_flight + SPARE_CONNECTIONS,
        )
    pool = ConnectionPool.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=False,
        health_check_interval=30,
    )
    pool.connection_class = CONNECTION_CLASSES[pool.connection_class]
    return Redis.from_pool(pool)  # the client owns the pool and closes it


class KeysGivenTtl:
    """The keys given their TTL in one epoch of the store (KeysWithTtl)."""

    LIMIT = 200_000  # keys remembered; past it the memory starts over (a few EXPIREs again)

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def wanted(self, key: str) -> bool:
        return key not in self._keys

    def add(self, expired: list[str]) -> None:
        """Keys whose EXPIRE succeeded."""
        if len(self._keys) + len(expired) > self.LIMIT:
            self._keys.clear()
        self._keys.update(expired)


class KeysWithTtl:
    """Keys this store has given their TTL, so that keys written again and again (hourly
    aggregates) get one EXPIRE, not one per write. Remembered for one epoch of the store: a new
    connection may face a Redis that restarted or failed over and lost a key and its TTL."""

    def __init__(self, epoch: Callable[[], int]) -> None:
        self._epoch_of = epoch
        self._epoch = -1
        self._given = KeysGivenTtl()

    def now(self) -> KeysGivenTtl:
        """The memory of the current epoch (a batch that began in an older one adds its keys to
        that one's memory, which is dropped)."""
        epoch = self._epoch_of()
        if epoch != self._epoch:
            self._given = KeysGivenTtl()
            self._epoch = epoch
        return self._given


@dataclass
class Store:
    """The process's Redis client and its registered scripts."""

    redis: RedisClient
    scripts: dict[str, AsyncScript] = field(default_factory=dict)
    pipeline: AutoPipeline | None = None
    pending_writes: set[asyncio.Task[None]] = field(default_factory=set)
    # On a Redis Cluster over plain TCP: one automatic pipeline per primary for the scripts,
    # opened on first use (`primary_url` gives each one's address with the credentials).
    primary_pipelines: dict[str, AutoPipeline] | None = None
    primary_url: str = ""
    timeout_s: float = 1.0
    keys_with_ttl: KeysWithTtl = field(init=False)
    # stream key -> when this store last trimmed it by age (time.monotonic(); stats.py)
    streams_trimmed_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys_with_ttl = KeysWithTtl(self._epoch)

    def _epoch(self) -> int:
        """Over the automatic pipeline, one per connection; else (a cluster, whose failovers
        redis-py follows unseen) a new epoch every minute."""
        if self.pipeline is not None:
            return self.pipeline.epoch()
        return int(time.monotonic() // 60)

    @classmethod
    def open(cls, settings: Settings, url: str | None = None) -> Store:
        url = url or settings.redis_url
        redis = connect(settings, url)
        store = cls(redis)
        for name in SCRIPT_NAMES:
            store.scripts[name] = redis.register_script(load_script_source(name))
        store.timeout_s = settings.redis_timeout_ms / 1000
        if url is not None and autopipeline.supports(url):
            store.pipeline = AutoPipeline(url, store.timeout_s)
        elif url is not None and url.startswith("redis+cluster://"):
            parts = urlsplit(url)
            credentials = ""
            if parts.password:
                user = quote(parts.username or "", safe="")
                credentials = f"{user}:{quote(parts.password, safe='')}@"
            store.primary_url = f"redis://{credentials}{{host}}:{{port}}"
            store.primary_pipelines = {}
        return store

    async def run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self.primary_pipelines is not None:
            reply = await self._run_on_primary(name, keys, args)
            if reply is not NOT_RUN:
                return reply
        if self.pipeline is not None:
            return await self._evalsha(self.pipeline, name, keys, args)
        try:
            return await self.scripts[name](keys=keys, args=args)
        except REPEAT_ON as exc:
            if name not in REPEATABLE_SCRIPTS or not isinstance(self.redis, ServiceCluster):
                raise
            log.info("redis cluster: script %s failed (%r); once more", name, exc)
            await asyncio.sleep(REPEAT_PAUSE_S)
            return await self.scripts[name](keys=keys, args=args)

    async def _run_on_primary(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """The script through the automatic pipeline of the primary that holds its keys (one
        slot: they share a hash tag), as on a standalone Redis. NOT_RUN when it did not run
        there and redis-py's cluster client is to send it instead: a redirection (the slot
        moved), a cluster failing over, or a lost connection for a script that may be sent
        twice; a lost connection for any other script is the store not answering (503)."""
        try:
            node = self.redis.get_node_from_key(keys[0])
        except SlotNotCoveredError:
            return NOT_RUN  # redis-py refreshes the topology, or reports the cluster down
        assert self.primary_pipelines is not None
        pipeline = self.primary_pipelines.get(node.name)
        if pipeline is None:
            url = self.primary_url.format(host=node.host, port=node.port)
            pipeline = self.primary_pipelines[node.name] = AutoPipeline(url, self.timeout_s)
        try:
            return await self._evalsha(pipeline, name, keys, args)
        except ResponseError as exc:
            # (NOSCRIPT again: the topology redis-py loaded it by is behind; it loads it too)
            if isinstance(exc, NoScriptError) or str(exc).startswith(NOT_RUN_HERE):
                return NOT_RUN
            raise
        except (ConnectionError, TimeoutError):
            # As redis-py does on a lost connection: its next command re-reads the topology
            # (there is no public call for it).
            self.redis._initialize = True
            if name in REPEATABLE_SCRIPTS:
                return NOT_RUN
            raise

    async def _evalsha(
        self, pipeline: AutoPipeline, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        """The script by SHA over an automatic pipeline. A server that has not seen it (one
        restarted empty, a promoted replica, a node added) answers NOSCRIPT without running
        it: it is loaded and sent again."""
        script = self.scripts[name]
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await pipeline.execute(*command)
        except NoScriptError:
            await self.redis.script_load(script.script)
            return await pipeline.execute(*command)

    def batch(self, transaction: bool = False) -> Any:
        """Commands sent in one go (`async with store.batch() as pipe`, then `pipe.execute()`):
        over the automatic pipeline when there is one, else a redis-py pipeline."""
        if self.pipeline is None:
            return self.redis.pipeline(transaction=transaction)
        return QueuedCommands(self.pipeline, RESP2_CALLBACKS, transaction)

    async def write_behind(self, *writes: Coroutine[Any, Any, None]) -> None:
        """Start these writes and return without waiting for their replies.

        For records derived from a change already made, never for the change itself: the event
        stream and hourly counters after the fence script moved the device (the source of
        truth), the offer events after the issue script counted the offer. Waiting for them
        cost an offer request one round trip and an event request its second, and told the
        client nothing it could act on: a failure there left the device moved and the answer
        a 503 that a retry could not repair. They leave in the same write as the next commands
        of this event-loop turn; a failure is logged; `close` waits for those still pending.
        """
        if len(self.pending_writes) >= MAX_PENDING_WRITES:
            await asyncio.gather(*writes)
            return
        for write in writes:
            task = asyncio.ensure_future(write)
            self.pending_writes.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self.pending_writes.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("a write after the answer failed, stats or events miss it: %r", error)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        while self.pending_writes:
            await asyncio.gather(*self.pending_writes, return_exceptions=True)
        if self.pipeline is not None:
            await self.pipeline.close()
        for pipeline in (self.primary_pipelines or {}).values():
            await pipeline.close()
        await self.redis.aclose()
