"""Store.write_behind: writes after the answer run to completion, fail loudly in the log only,
and are waited for when too many are pending and when the store closes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from geoservice import store as store_module
from geoservice.settings import Settings
from geoservice.store import Store


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
