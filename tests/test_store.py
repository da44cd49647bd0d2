"""Store.write_behind: writes after the answer run to completion, fail loudly in the log only,
and are waited for when too many are pending and when the store closes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError

from geoservice import store as store_module
from geoservice.settings import Settings
from geoservice.store import ServiceCluster, Store, _ClosedTransportIsConnectionError, connect


async def test_close_waits_for_the_writes_after_the_answer(settings: Settings, redis: Redis):
    store = Store.open(settings)
    gate = asyncio.Event()

    async def slow_write() -> None:
        await gate.wait()
        await store.redis.set("geo:test:behind", "1")

    await store.write_behind(slow_write())  # returns at once
    assert len(store.pending_writes) == 1
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # still waiting for the write
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert await redis.get("geo:test:behind") == b"1"
    assert not store.pending_writes


async def test_a_failed_write_after_the_answer_is_logged_not_raised(
    settings: Settings, caplog: pytest.LogCaptureFixture
):
    store = Store.open(settings)

    async def failing_write() -> None:
        raise ConnectionError("redis went away")

    with caplog.at_level(logging.WARNING, logger="geoservice.store"):
        await store.write_behind(failing_write())
        await asyncio.sleep(0.01)
    assert "redis went away" in caplog.text
    assert not store.pending_writes
    await store.close()


async def test_too_many_pending_writes_make_the_caller_wait(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(store_module, "MAX_PENDING_WRITES", 1)
    store = Store.open(settings)
    gate = asyncio.Event()
    done: list[str] = []

    async def write(name: str) -> None:
        await gate.wait()
        done.append(name)

    await store.write_behind(write("first"))  # pending
    second = asyncio.ensure_future(store.write_behind(write("second")))
    await asyncio.sleep(0.05)
    assert not second.done()  # past the limit: the caller waits for its own write
    gate.set()
    await asyncio.wait_for(second, 5)
    assert "second" in done
    await store.close()
    assert sorted(done) == ["first", "second"]


async def _pooled_connection_killed(store: Store, redis: Redis) -> None:
    """The store's one pooled connection closed by the server while it sits idle."""
    assert await store.redis.ping()
    name = f"killed-{id(store)}".encode()
    assert await store.redis.client_setname(name)
    clients = await redis.client_list()
    (victim,) = [c for c in clients if c["name"] == name.decode()]
    assert await redis.client_kill_filter(_id=victim["id"]) == 1
    pool_connection = store.redis.connection_pool._available_connections[0]
    for _ in range(100):  # the event loop sees the server's close
        if pool_connection._reader.at_eof():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the killed connection was not seen closing")


async def test_a_connection_reset_while_idle_is_replaced_not_failed(
    settings: Settings, redis: Redis
):
    """redis-py would write to it and fail the command (a ConnectionError at best, its
    transport's TypeError on some Pythons, redis/redis-py#4287); nothing went out on it, so
    the store takes a new connection and the command succeeds."""
    store = Store.open(settings)
    await _pooled_connection_killed(store, redis)
    assert await store.redis.get("geo:test:absent") is None
    await store.close()


@pytest.mark.parametrize(
    "leaked", [TypeError("'NoneType' object is not callable"), AttributeError("x")]
)
async def test_a_transport_error_under_a_closed_connection_is_a_connection_error(
    settings: Settings, redis: Redis, leaked: Exception, monkeypatch: pytest.MonkeyPatch
):
    """What CPython's transports raise when a connection closes under a write or a read
    becomes redis-py's ConnectionError (the store not answering: 503, retries, resync);
    the same error on an open connection is a bug and stays what it is."""
    store = Store.open(settings)
    assert await store.redis.ping()
    connection = store.redis.connection_pool._available_connections[0]
    transport = connection._writer.transport

    def leak(*_args: object) -> None:
        raise leaked

    monkeypatch.setattr(connection._writer, "writelines", leak)
    with pytest.raises(type(leaked)):  # open: not ours to hide
        await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
    monkeypatch.setattr(transport, "is_closing", lambda: True)
    # redis-py 8.2 and later look at the transport before writing and raise this themselves
    with pytest.raises(
        RedisConnectionError, match=r"closed under a write|closed by the server before write"
    ):
        await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])

    async def leak_on_read(*_args: object, **_kwargs: object) -> None:
        raise leaked

    monkeypatch.setattr(connection._parser, "read_response", leak_on_read)
    with pytest.raises(RedisConnectionError, match="closed under a read"):
        await connection._read_response_from_parser()
    monkeypatch.undo()
    await store.close()


def test_every_redis_connection_of_the_service_translates_a_closed_transport():
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/none.sock"):
        client = connect(Settings(), url)
        assert issubclass(
            client.connection_pool.connection_class, _ClosedTransportIsConnectionError
        )
    for ssl in (False, True):
        cluster = ServiceCluster(startup_nodes=[ClusterNode("127.0.0.1", 1)], ssl=ssl)
        assert issubclass(
            cluster.nodes_manager.connection_kwargs["connection_class"],
            _ClosedTransportIsConnectionError,
        )
        for node in cluster.nodes_manager.startup_nodes.values():
            assert issubclass(node.connection_class, _ClosedTransportIsConnectionError)
