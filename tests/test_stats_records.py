"""The aggregates written after an answer (stats.py): every hourly key gets its 400-day TTL,
once per key and connection of the store, and the event stream is trimmed by age."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from geoservice import keys, stats
from geoservice.settings import Settings
from geoservice.stats import OfferEvent, ZoneEvent
from geoservice.store import Store


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def record_everything(store: Store, tenant_id: str, at_ms: int) -> None:
    await stats.record(store, tenant_id, "dev-a", [ZoneEvent("enter", "z1", "s1", at_ms)])
    offer = OfferEvent("offer_issued", "o1", "i1", "z1", "s1", at_ms, ("vip",))
    await stats.record_offer(store, tenant_id, "dev-a", offer)
    await stats.record_flows(store, tenant_id, "dev-a", [("z0", "z1", 12.0, at_ms)])


def aggregate_keys(tenant_id: str, at_ms: int) -> list[str]:
    hour = stats.hour_of(at_ms)
    return [
        keys.zone_stats(tenant_id, hour),
        keys.zone_uniques(tenant_id, hour, "z1"),
        keys.segment_stats(tenant_id, hour),
        keys.flow_counts(tenant_id, hour),
        keys.flow_seconds(tenant_id, hour),
        keys.flow_devices(tenant_id, hour, "z0>z1"),
    ]


async def test_aggregate_keys_get_their_ttl_and_again_after_the_store_reconnects(
    settings: Settings, redis: Redis
):
    store = Store.open(settings)
    tenant_id, at_ms = tenant(), int(time.time() * 1000)
    await record_everything(store, tenant_id, at_ms)
    written = aggregate_keys(tenant_id, at_ms)
    for key in written:
        assert stats.STATS_TTL_S - 60 < await redis.ttl(key) <= stats.STATS_TTL_S, key
    assert int(await redis.hget(written[0], "z1:enters")) == 1
    assert int(await redis.hget(written[0], "z1:offers_issued")) == 1

    # A Redis that lost the TTLs (restarted from an older snapshot, failed over): within one
    # connection the store does not ask again, that is the point of remembering ...
    for key in written:
        await redis.persist(key)
    await record_everything(store, tenant_id, at_ms)
    assert [await redis.ttl(key) for key in written] == [-1] * len(written)
    assert int(await redis.hget(written[0], "z1:enters")) == 2

    # ... but such a Redis drops the connection, and a new connection forgets every key.
    assert store.pipeline is not None
    assert store.pipeline._connection is not None
    store.pipeline._connection.abort(RedisConnectionError("restarted"))
    await record_everything(store, tenant_id, at_ms)
    for key in written:
        assert await redis.ttl(key) > 0, key
    assert int(await redis.hget(written[0], "z1:enters")) == 3
    await store.close()


async def test_the_event_stream_is_trimmed_by_age_at_most_a_trim_interval_late(
    settings: Settings, redis: Redis
):
    store = Store.open(settings)
    tenant_id, now_ms = tenant(), int(time.time() * 1000)
    stream = keys.events(tenant_id)
    too_old_ms = now_ms - stats.EVENT_STREAM_KEEP_MS - 60_000
    await redis.xadd(stream, {"type": "enter"}, id=f"{too_old_ms}-0")
    await stats.record(store, tenant_id, "dev-a", [ZoneEvent("exit", "z1", None, now_ms)])
    entries = await redis.xrange(stream)
    assert [fields[b"type"] for _, fields in entries] == [b"exit"]  # the old one trimmed

    # Trimmed less than a trim interval ago: the next events are appended without a trim ...
    store.streams_trimmed_at[stream] = time.monotonic()
    await redis.delete(stream)
    await redis.xadd(stream, {"type": "dwell"}, id=f"{too_old_ms}-0")
    await stats.record(store, tenant_id, "dev-a", [ZoneEvent("enter", "z2", None, now_ms)])
    entries = await redis.xrange(stream)
    assert [fields[b"type"] for _, fields in entries] == [b"dwell", b"enter"]
    # ... and the first one after it trims again.
    store.streams_trimmed_at[stream] -= stats.TRIM_EVERY_S
    await stats.record(store, tenant_id, "dev-a", [ZoneEvent("exit", "z2", None, now_ms)])
    entries = await redis.xrange(stream)
    assert [fields[b"type"] for _, fields in entries] == [b"enter", b"exit"]
    await store.close()
