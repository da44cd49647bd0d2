"""A tenant's objects as a hash of records beside a sorted set of their ids (all scores 0, so
ordered by id), both under the tenant's hash tag: written and removed together in one
transaction, and paged by id; the cursor is the last id of a page, base64url-encoded so it
stays opaque."""

from __future__ import annotations

import base64
import binascii

from geoservice.errors import FieldProblem, ValidationFailed
from geoservice.store import RedisClient


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed.of(
            [FieldProblem("cursor", "not a cursor this service handed out")]
        ) from None


async def store_records(
    redis: RedisClient, ids_key: str, records_key: str, records: dict[str, bytes]
) -> int:
    """Create or replace records; how many were new."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(records_key, mapping=records)
        pipe.zadd(ids_key, dict.fromkeys(records, 0))
        added, _ = await pipe.execute()
    return int(added)


async def remove_record(redis: RedisClient, ids_key: str, records_key: str, item_id: str) -> bool:
    """Remove one record; whether it existed."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(records_key, item_id)
        pipe.zrem(ids_key, item_id)
        removed, _ = await pipe.execute()
    return bool(removed)


async def page(
    redis: RedisClient, ids_key: str, records_key: str, cursor: str | None, limit: int
) -> tuple[list[tuple[str, bytes]], str | None]:
    """(id, record) pairs of one page and the cursor of the next (None on the last page)."""
    start = b"-" if cursor is None else b"(" + decode_cursor(cursor).encode()
    ids: list[bytes] = await redis.zrangebylex(ids_key, start, b"+", start=0, num=limit + 1)
    more = len(ids) > limit
    ids = ids[:limit]
    if not ids:
        return [], None
    records = await redis.hmget(records_key, ids)
    found = [
        (item_id.decode(), raw)
        for item_id, raw in zip(ids, records, strict=True)
        if raw is not None
    ]
    return found, encode_cursor(ids[-1].decode()) if more else None
