"""Aggregates of geofence events: the tenant's capped event stream and per-zone hourly counters
(enters, exits, dwells, unique devices via HyperLogLog). Only aggregates outlive the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from geoservice import keys
from geoservice.store import Store

HOUR_MS = 3_600_000
EVENT_STREAM_MAXLEN = 100_000
STATS_TTL_S = 400 * 86_400
COUNTER_OF = {"enter": "enters", "exit": "exits", "dwell": "dwells"}


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    type: str
    zone_id: str
    store_id: str | None
    at_ms: int


def hour_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS


async def record(store: Store, tenant_id: str, device: str, events: Sequence[ZoneEvent]) -> None:
    """One pipelined round trip (all keys on the tenant's slot), only when events fired."""
    if not events:
        return
    async with store.redis.pipeline(transaction=False) as pipe:
        for event in events:
            fields = {
                "type": event.type,
                "zone": event.zone_id,
                "device": device,
                "at": event.at_ms,
            }
            if event.store_id is not None:
                fields["store"] = event.store_id
            pipe.xadd(keys.events(tenant_id), fields, maxlen=EVENT_STREAM_MAXLEN, approximate=True)
            hour = hour_of(event.at_ms)
            counters = keys.zone_stats(tenant_id, hour)
            pipe.hincrby(counters, f"{event.zone_id}:{COUNTER_OF[event.type]}", 1)
            pipe.expire(counters, STATS_TTL_S)
            if event.type == "enter":
                uniques = keys.zone_uniques(tenant_id, hour, event.zone_id)
                pipe.pfadd(uniques, device)
                pipe.expire(uniques, STATS_TTL_S)
        await pipe.execute()
