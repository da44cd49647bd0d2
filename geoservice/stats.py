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


OFFER_COUNTERS = {"offer_issued": "offers_issued", "offer_redeemed": "redemptions"}


@dataclass(frozen=True, slots=True)
class OfferEvent:
    type: str  # offer_issued | offer_redeemed
    offer_id: str
    issued_id: str
    zone_id: str
    store_id: str | None
    at_ms: int


async def record_offer(store: Store, tenant_id: str, device: str, event: OfferEvent) -> None:
    """The event on the tenant's stream and one more on the zone's hourly counter."""
    key = keys.zone_stats(tenant_id, hour_of(event.at_ms))
    fields = {
        "type": event.type,
        "zone": event.zone_id,
        "device": device,
        "at": event.at_ms,
        "offer": event.offer_id,
        "issued": event.issued_id,
    }
    if event.store_id is not None:
        fields["store"] = event.store_id
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.xadd(keys.events(tenant_id), fields, maxlen=EVENT_STREAM_MAXLEN, approximate=True)
        pipe.hincrby(key, f"{event.zone_id}:{OFFER_COUNTERS[event.type]}", 1)
        pipe.expire(key, STATS_TTL_S)
        await pipe.execute()


ROW_COUNTERS = ("enters", "exits", "dwells", "offers_issued", "redemptions")


async def hourly(
    store: Store, tenant_id: str, from_ms: int, to_ms: int, zone_id: str | None
) -> list[dict[str, int | str]]:
    """Rows per zone and hour with any activity in [from_ms, to_ms), oldest hour first."""
    hours = list(range(hour_of(from_ms), to_ms, HOUR_MS))
    async with store.redis.pipeline(transaction=False) as pipe:
        for hour in hours:
            pipe.hgetall(keys.zone_stats(tenant_id, hour))
        counters_by_hour = await pipe.execute()
    rows: list[dict[str, int | str]] = []
    for hour, counters in zip(hours, counters_by_hour, strict=True):
        by_zone: dict[str, dict[str, int | str]] = {}
        for name, value in counters.items():
            zone, _, counter = name.decode().rpartition(":")
            if zone_id is not None and zone != zone_id:
                continue
            row = by_zone.setdefault(
                zone,
                {"zone_id": zone, "hour": hour, "unique_devices": 0} | {c: 0 for c in ROW_COUNTERS},
            )
            row[counter] = int(value)
        rows.extend(by_zone[z] for z in sorted(by_zone))
    if rows:
        async with store.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.pfcount(keys.zone_uniques(tenant_id, int(row["hour"]), str(row["zone_id"])))
            for row, unique in zip(rows, await pipe.execute(), strict=True):
                row["unique_devices"] = int(unique)
    return rows
