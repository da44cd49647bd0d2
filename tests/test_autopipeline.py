"""The automatic pipeline against the test session's own Redis: every caller gets its own reply,
whatever the interleaving; a lost connection fails the waiting callers and the next ones get a
new connection; a cancelled caller does not shift the replies of the others."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from geoservice.autopipeline import AutoPipeline, supports
from tests.conftest import free_port


async def test_concurrent_callers_each_get_their_own_reply(redis: Redis, redis_url: str) -> None:
    pipeline = AutoPipeline(redis_url, timeout_s=2.0)
    try:
        replies = await asyncio.gather(
            *(pipeline.execute("EVAL", "return ARGV[1]", 0, f"caller-{i}") for i in range(500))
        )
        assert replies == [f"caller-{i}".encode() for i in range(500)]
        # writes and reads interleave too
        await asyncio.gather(*(pipeline.execute("SET", f"k{i}", i) for i in range(100)))
        got = await asyncio.gather(*(pipeline.execute("GET", f"k{i}") for i in range(100)))
        assert got == [str(i).encode() for i in range(100)]
    finally:
        await pipeline.close()


async def test_an_error_reply_goes_to_its_caller_only(redis: Redis, redis_url: str) -> None:
    pipeline = AutoPipeline(redis_url, timeout_s=2.0)
    try:
        results = await asyncio.gather(
            pipeline.execute("EVAL", "return 1", 0),
            pipeline.execute("EVAL", "return redis.error_reply('ERR nope')", 0),
            pipeline.execute("EVALSHA", "0" * 40, 0),
            pipeline.execute("EVAL", "return 3", 0),
            return_exceptions=True,
        )
        assert results[0] == 1
        assert results[3] == 3
        assert isinstance(results[1], ResponseError)
        assert "nope" in str(results[1])
        assert type(results[2]).__name__ == "NoScriptError"
    finally:
        await pipeline.close()


async def test_a_cancelled_caller_does_not_shift_the_replies(redis: Redis, redis_url: str) -> None:
    pipeline = AutoPipeline(redis_url, timeout_s=5.0)
    try:
        slow = asyncio.ensure_future(
            pipeline.execute("EVAL", "local t = redis.call('TIME') return 'slow'", 0)
        )
        after = asyncio.ensure_future(pipeline.execute("EVAL", "return 'after'", 0))
        slow.cancel()
        assert await after == b"after"
        assert await pipeline.execute("EVAL", "return 'next'", 0) == b"next"
    finally:
        await pipeline.close()


async def test_batches_and_single_calls_interleave_each_gets_its_replies(
    redis: Redis, redis_url: str
) -> None:
    """execute_many: one future for the batch, replies in order, an error reply in its place;
    a cancelled batch does not shift the replies of the calls after it."""
    pipeline = AutoPipeline(redis_url, timeout_s=5.0)
    try:
        assert await pipeline.execute("PING") == b"PONG"  # connected
        cancelled = asyncio.ensure_future(
            pipeline.execute_many([("SET", "a", 1), ("EVAL", "return 'slow'", 0)])
        )
        await asyncio.sleep(0)  # sent, waiting for its replies
        calls = [
            pipeline.execute_many(
                [
                    ("EVAL", "return ARGV[1]", 0, f"b{i}"),
                    ("EVAL", "return redis.error_reply('ERR nope')", 0),
                    ("INCR", "counter"),
                ]
            )
            if i % 2
            else pipeline.execute("EVAL", "return ARGV[1]", 0, f"s{i}")
            for i in range(200)
        ]
        cancelled.cancel()
        results = await asyncio.gather(*calls)
        for i, result in enumerate(results):
            if i % 2 == 0:
                assert result == f"s{i}".encode()
                continue
            first, error, counter = result
            assert first == f"b{i}".encode()
            assert isinstance(error, ResponseError)
            assert "nope" in str(error)
            assert isinstance(counter, int)
        assert sorted(r[2] for r in results[1::2]) == list(range(1, 101))  # each INCR once
        assert cancelled.cancelled()
        assert await pipeline.execute("GET", "a") == b"1"  # it had been sent: it ran
        assert await pipeline.execute_many([]) == []
    finally:
        await pipeline.close()


def test_only_plain_standalone_urls_are_pipelined() -> None:
    assert supports("redis://127.0.0.1:6390/0")
    assert supports("unix:///tmp/r.sock?db=1")
    assert not supports("rediss://host:6390")
    assert not supports("redis+cluster://h:1,h:2")


async def test_a_lost_connection_fails_the_waiting_and_the_next_call_reconnects(
    tmp_path: Path,
) -> None:
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
        )
        return process

    async def wait_up() -> None:
        for _ in range(100):
            try:
                client = Redis(port=port)
                await client.ping()
                await client.aclose()
                return
            except ConnectionError:
                await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    server = start()
    pipeline = AutoPipeline(f"redis://127.0.0.1:{port}/0", timeout_s=2.0)
    try:
        await wait_up()
        assert await pipeline.execute("PING") == b"PONG"
        waiting = asyncio.ensure_future(pipeline.execute("BLPOP", "nothing", 0))
        waiting_batch = asyncio.ensure_future(pipeline.execute_many([("PING",), ("PING",)]))
        await asyncio.sleep(0.1)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        with pytest.raises(ConnectionError):
            await waiting
        with pytest.raises(ConnectionError):
            await waiting_batch  # queued behind the BLPOP: its replies never came
        with pytest.raises(ConnectionError):
            await pipeline.execute("PING")  # nobody listens now
        server = start()
        await wait_up()
        assert await pipeline.execute("PING") == b"PONG"
    finally:
        await pipeline.close()
        server.kill()
        server.wait()


async def test_a_peer_that_stops_answering_is_dropped_after_the_socket_timeout(
    redis: Redis, redis_url: str
) -> None:
    pipeline = AutoPipeline(redis_url, timeout_s=0.3)
    try:
        assert await pipeline.execute("PING") == b"PONG"
        await redis.execute_command("CLIENT", "PAUSE", 800, "ALL")
        stuck = asyncio.ensure_future(pipeline.execute("PING"))
        await asyncio.sleep(0.4)
        # the next call finds the oldest unanswered command past the timeout: the stuck caller
        # fails, the new one goes over a new connection (answered once the pause ends)
        assert await pipeline.execute("PING") == b"PONG"
        with pytest.raises(Exception, match="did not answer"):
            await stuck
    finally:
        await pipeline.close()


@pytest.mark.parametrize("transaction", [False, True])
async def test_a_batch_answers_in_the_shapes_of_a_redis_py_pipeline(
    redis: Redis, redis_url: str, transaction: bool
) -> None:
    from geoservice.settings import Settings
    from geoservice.store import Store

    store = Store.open(Settings(redis_url=redis_url), redis_url)
    assert store.pipeline is not None

    async def run(batch: Any) -> list[Any]:
        async with batch as pipe:
            pipe.hset("h", mapping={"a": 1, "b": "x"})
            pipe.expire("h", 100)
            pipe.hgetall("h")
            pipe.hgetall("missing")
            pipe.zadd("z", {"m1": 1, "m2": 2})
            pipe.zrangebyscore("z", 0, "+inf")
            pipe.sadd("s", "one")
            pipe.smembers("s")
            pipe.pfadd("u", "d1")
            return list(await pipe.execute())

    try:
        ours = await run(store.batch(transaction=transaction))
        await redis.flushdb()
        theirs = await run(store.redis.pipeline(transaction=transaction))
        assert ours == theirs
        assert ours[2] == {b"a": b"1", b"b": b"x"}
        async with store.batch(transaction=transaction) as pipe:
            pipe.set("k", "v")
            pipe.hget("k", "f")  # WRONGTYPE
            with pytest.raises(ResponseError):
                await pipe.execute()
    finally:
        await store.close()
