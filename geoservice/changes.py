"""The change feed: every write to tenants, keys, zones or offers is announced on one Redis
Stream, and every instance follows it to refresh its in-memory caches (key lookups, tenant
settings, the zone index) within a second.

The stream id is the version: an instance notes the last id before its initial load and
follows from there, so a change made during the load is applied again (reloads are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from geoservice import keys
from geoservice.store import RedisClient

log = logging.getLogger(__name__)

# Long enough that an instance paused for a minute under heavy admin traffic still catches up;
# an instance that falls further behind reloads everything (see follow()).
FEED_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "tenant" | "keys" | "zone" | "offer"
    tenant_id: str
    item_id: str


ChangeHandler = Callable[[Change], Awaitable[None]]
ResyncHandler = Callable[[], Awaitable[None]]


async def publish(redis: RedisClient, kind: str, tenant_id: str, item_id: str = "") -> None:
    await redis.xadd(
        keys.CHANGES,
        {"k": kind, "t": tenant_id, "i": item_id},
        maxlen=FEED_MAXLEN,
        approximate=True,
    )


async def last_id(redis: RedisClient) -> bytes:
    newest: list[Any] = await redis.xrevrange(keys.CHANGES, count=1)
    return newest[0][0] if newest else b"0-0"


def _id(entry_id: bytes) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition(b"-")
    return int(millis), int(sequence or 0)


async def still_continuous(redis: RedisClient, cursor: bytes) -> bool:
    """Is every entry after `cursor` still in the stream? Not after a trim past it, nor after
    the store restarted empty (the stream is gone, or begins with entries newer than us)."""
    oldest: list[Any] = await redis.xrange(keys.CHANGES, count=1)
    if not oldest:
        return cursor == b"0-0"
    return _id(oldest[0][0]) <= _id(cursor) or cursor == b"0-0"


async def follow(
    redis: RedisClient,
    start_id: bytes,
    on_change: ChangeHandler,
    on_resync: ResyncHandler,
    *,
    block_ms: int = 500,
) -> None:
    """Apply changes after `start_id` forever. A timeout or a lost connection loses nothing:
    the feed goes on from its cursor. Only when entries after the cursor are gone (trimmed, or
    the store restarted empty) is everything reloaded."""
    cursor = start_id
    must_resync = False
    must_check = False
    while True:
        # On Python 3.11 asyncio.wait_for (inside redis-py's sends) swallows a cancellation that
        # arrives as its inner call completes; the loop would then go on forever and shutdown
        # would wait on it. Seen often on a Redis Cluster, where every XREAD is a fresh send.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        try:
            if must_resync:
                cursor = await last_id(redis)
                await on_resync()
                must_resync = False
            if must_check:
                must_resync = not await still_continuous(redis, cursor)
                must_check = False
                if must_resync:
                    log.warning("change feed: entries after %r are gone; reloading", cursor)
                    continue
            batches: list[Any] = await redis.xread(
                {keys.CHANGES: cursor}, count=100, block=block_ms
            )
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            # A blocked event loop can time a long XREAD out: not a reason to reload anything.
            if not isinstance(exc, RedisTimeoutError):
                log.warning("change feed: %s; retrying", exc)
                await asyncio.sleep(0.5)
            must_check = True
            continue
        for _stream, entries in batches:
            for entry_id, fields in entries:
                change = Change(
                    kind=fields.get(b"k", b"").decode(),
                    tenant_id=fields.get(b"t", b"").decode(),
                    item_id=fields.get(b"i", b"").decode(),
                )
                try:
                    await on_change(change)
                except asyncio.CancelledError:
                    raise
                except (RedisError, OSError) as exc:
                    log.warning("change feed: applying %s: %s; trying it again", change, exc)
                    must_check = True
                    break
                except Exception:
                    log.exception("change feed: applying %s failed; reloading", change)
                    must_resync = True
                    break
                cursor = entry_id
