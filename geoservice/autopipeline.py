"""Automatic pipelining of the hot path's script calls to a Redis: the standalone one, or each
primary of a Redis Cluster.

Every ping runs one script. Through redis-py's pooled client each call borrows a connection,
writes, waits and parses on its own: about 55 us of this process's CPU per call (measured,
32 concurrent callers) and one write and one read system call on each side. Here the calls of
every request in flight share one connection: those made during one turn of the event loop go
out in a single write, Redis answers them in order, and hiredis parses the replies as they come
(about 3 us per call under the same load, 11 us alone). Redis executes commands of one
connection in order, so pipelining changes neither what a script sees nor its atomicity.

On a Redis Cluster the scripts go through one pipeline per primary, chosen by the slot of their
keys (Store._run_on_primary); a redirection or a failover hands them back to redis-py's cluster
client, and the other commands (batches, reads) keep it. Not used over TLS.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from typing import Any, cast

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.commands.core import CoreCommands
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError


def supports(url: str) -> bool:
    """Plain TCP or unix socket to one Redis: what this module speaks."""
    return url.startswith(("redis://", "unix://"))


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Batch:
    """The replies of commands sent together: one future for all of them, completed by the
    last reply. (A future per command gathered with asyncio.gather costs each command a
    callback and the caller one more turn of the event loop.)"""

    __slots__ = ("future", "missing", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.replies: list[Any] = [None] * size
        self.missing = size


class _Connection(asyncio.Protocol):
    """One socket: commands written in order, replies matched to their callers in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        # (future or batch, place in the batch, time the command was queued): the oldest
        # unanswered one tells a dead peer
        self.waiting: collections.deque[tuple[asyncio.Future[Any] | _Batch, int, float]] = (
            collections.deque()
        )
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:
                # A reply nobody asked for: the stream is out of step; never guess.
                self.abort(ConnectionError("redis sent an unexpected reply"))
                return
            target, place, _ = self.waiting.popleft()
            if isinstance(target, _Batch):
                # errors are returned in their place, as exception objects
                target.replies[place] = (
                    _error(reply) if isinstance(reply, hiredis.ReplyError) else reply
                )
                target.missing -= 1
                if not target.missing and not target.future.done():
                    target.future.set_result(target.replies)
                continue
            if target.done():  # its request was cancelled (deadline); the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                target.set_exception(_error(reply))
            else:
                target.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"connection to redis lost: {exc or 'closed by the server'}")
        self.transport = None
        self._fail_all(self.lost)

    def abort(self, error: Exception) -> None:
        self.lost = error
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        while self.waiting:
            target, _, _ = self.waiting.popleft()
            future = target.future if isinstance(target, _Batch) else target
            if not future.done():
                future.set_exception(error)
        self.outgoing.clear()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.outgoing.append(packed)
        self.waiting.append((future, -1, time.monotonic()))
        self._schedule_flush(loop)
        return future

    def send_many(self, packed: list[bytes]) -> asyncio.Future[list[Any]]:
        """Commands back to back; one future for all their replies, in order."""
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), len(packed))
        if not packed:
            batch.future.set_result([])  # no reply will come to complete it
            return batch.future
        now = time.monotonic()
        self.outgoing.extend(packed)
        self.waiting.extend((batch, place, now) for place in range(len(packed)))
        self._schedule_flush(loop)
        return batch.future

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is None or not self.outgoing:
            return
        data = b"".join(self.outgoing) if len(self.outgoing) > 1 else self.outgoing[0]
        self.outgoing.clear()
        self.transport.write(data)

    def oldest_wait_s(self) -> float:
        return time.monotonic() - self.waiting[0][2] if self.waiting else 0.0


class AutoPipeline:
    """Sends commands over one shared connection, reconnecting when it is lost.

    A command whose answer is lost with the connection fails with ConnectionError and is not
    repeated here: whether it ran is unknown, and only the caller knows if a repeat is safe.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self._options = parse_url(url)
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        # Connections made so far: a new one may face a Redis that restarted (and lost keys)
        self.connections_made = 0

    def epoch(self) -> int:
        """Moves on when a connection is lost: the Redis of the next one may have restarted."""
        connection = self._connection
        alive = connection is not None and connection.transport is not None
        return self.connections_made if alive else self.connections_made + 1

    async def execute(self, *args: Any) -> Any:
        connection = await self._ready()
        return await connection.send(hiredis.pack_command(args))

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands back to back on the wire (nothing of another caller between them,
        so MULTI ... EXEC stays one transaction); every reply, error replies as exception
        objects. A lost connection raises, as for `execute`."""
        connection = await self._ready()
        return await connection.send_many([hiredis.pack_command(args) for args in commands])

    async def _ready(self) -> _Connection:
        connection = self._connection
        if connection is None or connection.transport is None:
            connection = await self._connect()
        elif connection.oldest_wait_s() > self._timeout_s:
            # Nothing came back for longer than the socket timeout: the peer is gone without
            # a reset (or hung). Waiting callers fail, the next ones get a new connection.
            connection.abort(RedisTimeoutError("redis did not answer within the socket timeout"))
            connection = await self._connect()
        return connection

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._connection
            if current is not None and current.transport is not None:
                return current  # another caller connected while this one waited
            loop = asyncio.get_running_loop()
            options = self._options
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(self._timeout_s):
                    if options.get("connection_class") is UnixDomainSocketConnection:
                        _, connection = await loop.create_unix_connection(
                            _Connection, options["path"]
                        )
                    else:
                        _, connection = await loop.create_connection(
                            _Connection, options.get("host", "localhost"), options.get("port", 6379)
                        )
                    await self._handshake(connection)
            except BaseException as exc:
                if connection is not None:  # a half-made connection is not left open
                    connection.abort(ConnectionError("connecting to redis failed"))
                if isinstance(exc, TimeoutError):
                    raise RedisTimeoutError(f"connecting to redis: {exc}") from None
                if isinstance(exc, OSError):
                    raise ConnectionError(f"connecting to redis: {exc}") from None
                raise
            self._connection = connection
            self.connections_made += 1
            return connection

    async def _handshake(self, connection: _Connection) -> None:
        options = self._options
        password = options.get("password")
        if password:
            username = options.get("username")
            auth: tuple[Any, ...] = ("AUTH", username, password) if username else ("AUTH", password)
            try:
                await connection.send(hiredis.pack_command(auth))
            except ResponseError as exc:
                connection.abort(AuthenticationError(str(exc)))
                raise AuthenticationError(str(exc)) from None
        db = int(options.get("db") or 0)
        if db:
            select: tuple[Any, ...] = ("SELECT", db)
            await connection.send(hiredis.pack_command(select))

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.close()


class QueuedCommands(CoreCommands):
    """redis-py's pipeline interface (`async with store.batch() as pipe: pipe.hset(...)`,
    `await pipe.execute()`) over the automatic pipeline: the commands go out together with
    those of every other request of the same loop turn. Replies get redis-py's response
    callbacks, so callers see the same types either way; like redis-py, the first error
    reply is raised after all have arrived."""

    _event_dispatcher: Any = None  # declared by redis-py's command mixins; unused here

    def __init__(
        self, pipeline: AutoPipeline, callbacks: Mapping[str, Any], transaction: bool
    ) -> None:
        self._pipeline = pipeline
        self._callbacks = callbacks
        self._transaction = transaction
        self._queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def __aenter__(self) -> QueuedCommands:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._queued.clear()

    def execute_command(self, *args: Any, **options: Any) -> QueuedCommands:
        options.pop("keys", None)  # routing hints of redis-py's cluster client
        self._queued.append((args, options))
        return self

    async def execute(self) -> list[Any]:
        queued, self._queued = self._queued, []
        if not queued:
            return []
        commands = [args for args, _ in queued]
        if self._transaction:
            replies = await self._pipeline.execute_many([("MULTI",), *commands, ("EXEC",)])
            for reply in replies[:-1]:
                if isinstance(reply, Exception):
                    raise reply  # refused while queueing: EXEC was aborted
            results = replies[-1]
            if isinstance(results, Exception):
                raise results
            results = [_error(r) if isinstance(r, hiredis.ReplyError) else r for r in results]
        else:
            results = await self._pipeline.execute_many(commands)
        for reply in results:
            if isinstance(reply, Exception):
                raise reply
        out = []
        for (args, options), reply in zip(queued, results, strict=True):
            callback = self._callbacks.get(str(args[0]).upper())
            out.append(callback(reply, **options) if callback is not None else reply)
        return out
