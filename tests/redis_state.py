"""Reading a whole test Redis back, for tests that assert "nothing changed" or "nothing of this
customer is left anywhere"."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis


async def value_of(redis: Redis, key: bytes) -> object:
    """The key's value in a comparable form, whatever its type."""
    kind = await redis.type(key)
    if kind == b"hash":
        return await redis.hgetall(key)
    if kind == b"zset":
        return await redis.zrange(key, 0, -1, withscores=True)
    if kind == b"set":
        return await redis.smembers(key)
    if kind == b"string":
        return await redis.get(key)
    if kind == b"list":
        return await redis.lrange(key, 0, -1)
    if kind == b"stream":
        return [fields for _, fields in await redis.xrange(key)]
    return kind


async def state_of(
    redis: Redis, keep: Callable[[bytes], bool] = lambda key: True
) -> dict[bytes, object]:
    """Every kept key with its value."""
    return {
        key: await value_of(redis, key) async for key in redis.scan_iter(count=1000) if keep(key)
    }


def flatten(state: dict[bytes, object]) -> bytes:
    """All keys and values as one byte string, to search for a customer id or a pseudonym."""

    def parts(value: object) -> list[bytes]:
        if isinstance(value, bytes):
            return [value]
        if isinstance(value, dict):
            return [b for k, v in value.items() for b in (*parts(k), *parts(v))]
        if isinstance(value, list | tuple | set):
            return [b for item in value for b in parts(item)]
        return [str(value).encode()]

    return b"\n".join(b for key, value in state.items() for b in (key, *parts(value)))
