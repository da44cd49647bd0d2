"""Aggregates of geofence events: the tenant's capped event stream and per-zone hourly counters
(enters, exits, dwells, unique devices via HyperLogLog). Only aggregates outlive the device."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from geoservice import keys
from geoservice.store import KeysGivenTtl, Store

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


# Events carry device pseudonyms: none stays longer than a day (webhooks retry for 24 h), and
# a busy tenant's stream is capped in length as well.
EVENT_STREAM_KEEP_MS = 25 * HOUR_MS


# Trimming the stream by age once a second per tenant (and store) is as good as after every
# event: an entry outlives EVENT_STREAM_KEEP_MS by a second at most.
TRIM_EVERY_S = 1.0


def _append_event(store: Store, pipe: Any, tenant_id: str, fields: dict[str, Any]) -> None:
    stream = keys.events(tenant_id)
    pipe.xadd(stream, fields, maxlen=EVENT_STREAM_MAXLEN, approximate=True)
    now = time.monotonic()
    if now - store.streams_trimmed_at.get(stream, -TRIM_EVERY_S) < TRIM_EVERY_S:
        return
    store.streams_trimmed_at[stream] = now
    # Entry ids are insertion times: exact trimming by age costs only what it removes.
    oldest_kept_ms = int(time.time() * 1000) - EVENT_STREAM_KEEP_MS
    pipe.xtrim(stream, minid=f"{oldest_kept_ms}-0", approximate=False)


def _expire_once(pipe: Any, key: str, expiring: list[str], given: KeysGivenTtl) -> None:
    """EXPIRE after the write that made the key (an EXPIRE of no key does nothing), unless the
    store already gave it its TTL (an hourly key is written for a day at most, fixes being up to
    24 h old, and kept 400 days from its first write) or it is queued in this batch."""
    if key not in expiring and given.wanted(key):
        pipe.expire(key, STATS_TTL_S)
        expiring.append(key)


def hour_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS


async def record(store: Store, tenant_id: str, device: str, events: Sequence[ZoneEvent]) -> None:
    """One pipelined round trip (all keys on the tenant's slot), only when events fired."""
    if not events:
        return
    expiring: list[str] = []
    given = store.keys_with_ttl.now()
    async with store.batch(transaction=False) as pipe:
        for event in events:
            fields = {
                "type": event.type,
                "zone": event.zone_id,
                "device": device,
                "at": event.at_ms,
            }
            if event.store_id is not None:
                fields["store"] = event.store_id
            _append_event(store, pipe, tenant_id, fields)
            hour = hour_of(event.at_ms)
            counters = keys.zone_stats(tenant_id, hour)
            pipe.hincrby(counters, f"{event.zone_id}:{COUNTER_OF[event.type]}", 1)
            _expire_once(pipe, counters, expiring, given)
            if event.type == "enter":
                uniques = keys.zone_uniques(tenant_id, hour, event.zone_id)
                pipe.pfadd(uniques, device)
                _expire_once(pipe, uniques, expiring, given)
        await pipe.execute()
    given.add(expiring)


OFFER_COUNTERS = {"offer_issued": "offers_issued", "offer_redeemed": "redemptions"}


@dataclass(frozen=True, slots=True)
class OfferEvent:
    type: str  # offer_issued | offer_redeemed
    offer_id: str
    issued_id: str
    zone_id: str
    store_id: str | None
    at_ms: int
    segments: tuple[str, ...] = ()


NO_SEGMENT = "(none)"


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
    expiring: list[str] = []
    given = store.keys_with_ttl.now()
    async with store.batch(transaction=False) as pipe:
        _append_event(store, pipe, tenant_id, fields)
        pipe.hincrby(key, f"{event.zone_id}:{OFFER_COUNTERS[event.type]}", 1)
        _expire_once(pipe, key, expiring, given)
        by_segment = keys.segment_stats(tenant_id, hour_of(event.at_ms))
        for segment in event.segments or (NO_SEGMENT,):
            pipe.hincrby(by_segment, f"{event.zone_id}|{segment}|{OFFER_COUNTERS[event.type]}", 1)
        _expire_once(pipe, by_segment, expiring, given)
        await pipe.execute()
    given.add(expiring)


ROW_COUNTERS = ("enters", "exits", "dwells", "offers_issued", "redemptions")


async def _hashes_by_hour(
    store: Store, key_of: Callable[[int], str], from_ms: int, to_ms: int
) -> list[tuple[int, dict[bytes, bytes]]]:
    """The hourly hashes of [from_ms, to_ms), oldest first, in one round trip."""
    hours = list(range(hour_of(from_ms), to_ms, HOUR_MS))
    async with store.batch(transaction=False) as pipe:
        for hour in hours:
            pipe.hgetall(key_of(hour))
        return list(zip(hours, await pipe.execute(), strict=True))


async def hourly(
    store: Store, tenant_id: str, from_ms: int, to_ms: int, zone_id: str | None
) -> list[dict[str, int | str]]:
    """Rows per zone and hour with any activity in [from_ms, to_ms), oldest hour first."""
    rows: list[dict[str, int | str]] = []
    by_hour = await _hashes_by_hour(
        store, lambda hour: keys.zone_stats(tenant_id, hour), from_ms, to_ms
    )
    for hour, counters in by_hour:
        by_zone: dict[str, dict[str, int | str]] = {}
        for name, value in counters.items():
            zone, _, counter = name.decode().rpartition(":")
            if zone_id is not None and zone != zone_id:
                continue
            empty: dict[str, int | str] = {"zone_id": zone, "hour": hour, "unique_devices": 0}
            row = by_zone.setdefault(zone, empty | {c: 0 for c in ROW_COUNTERS})
            row[counter] = int(value)
        rows.extend(by_zone[z] for z in sorted(by_zone))
    if rows:
        async with store.batch(transaction=False) as pipe:
            for row in rows:
                # Spelled out: redis-py refuses pfcount() in a cluster pipeline outright (a
                # PFCOUNT may name keys of several slots); this one names one key.
                uniques = keys.zone_uniques(tenant_id, int(row["hour"]), str(row["zone_id"]))
                pipe.execute_command("PFCOUNT", uniques)
            for row, unique in zip(rows, await pipe.execute(), strict=True):
                row["unique_devices"] = int(unique)
    return rows


FLOW_MIN_DEVICES = 5


async def record_flows(
    store: Store, tenant_id: str, device: str, flows: Sequence[tuple[str, str, float, int]]
) -> None:
    """(from_zone, to_zone, seconds_between, at_ms) transitions, as hourly aggregates."""
    if not flows:
        return
    expiring: list[str] = []
    given = store.keys_with_ttl.now()
    async with store.batch(transaction=False) as pipe:
        for from_zone, to_zone, seconds, at_ms in flows:
            hour = hour_of(at_ms)
            pair = f"{from_zone}>{to_zone}"
            counts, histogram = (
                keys.flow_counts(tenant_id, hour),
                keys.flow_seconds(tenant_id, hour),
            )
            pipe.hincrby(counts, pair, 1)
            pipe.hincrby(histogram, f"{pair}|{int(seconds)}", 1)
            devices = keys.flow_devices(tenant_id, hour, pair)
            pipe.pfadd(devices, device)
            for key in (counts, histogram, devices):
                _expire_once(pipe, key, expiring, given)
        await pipe.execute()
    given.add(expiring)


def _median(histogram: dict[int, int]) -> float:
    total = sum(histogram.values())
    seen = 0
    ordered = sorted(histogram.items())
    for position, (seconds, count) in enumerate(ordered):
        seen += count
        if seen * 2 > total:
            return float(seconds)
        if seen * 2 == total:  # an even count splits between two values
            return (seconds + ordered[position + 1][0]) / 2
    return 0.0


async def flows(store: Store, tenant_id: str, from_ms: int, to_ms: int) -> list[dict[str, object]]:
    """Pairs of zones with the devices that went from one to the other within an hour, and the
    median seconds between; pairs of fewer than FLOW_MIN_DEVICES devices are left out."""
    hours = list(range(hour_of(from_ms), to_ms, HOUR_MS))
    async with store.batch(transaction=False) as pipe:
        for hour in hours:
            pipe.hkeys(keys.flow_counts(tenant_id, hour))
            pipe.hgetall(keys.flow_seconds(tenant_id, hour))
        replies = await pipe.execute()
    hours_of_pair: dict[str, list[int]] = {}
    seconds_of_pair: dict[str, dict[int, int]] = {}
    for hour, pairs, seconds in zip(hours, replies[::2], replies[1::2], strict=True):
        for pair in pairs:
            hours_of_pair.setdefault(pair.decode(), []).append(hour)
        for field, count in seconds.items():
            pair, _, value = field.decode().rpartition("|")
            histogram = seconds_of_pair.setdefault(pair, {})
            histogram[int(value)] = histogram.get(int(value), 0) + int(count)
    rows: list[dict[str, object]] = []
    for pair in sorted(hours_of_pair):
        # One PFCOUNT over the pair's hours counts each device once (all keys on one slot).
        device_keys = [keys.flow_devices(tenant_id, h, pair) for h in hours_of_pair[pair]]
        devices = int(await store.redis.pfcount(*device_keys))
        if devices < FLOW_MIN_DEVICES:
            continue
        from_zone, _, to_zone = pair.partition(">")
        rows.append(
            {
                "from_zone": from_zone,
                "to_zone": to_zone,
                "devices": devices,
                "median_s": _median(seconds_of_pair.get(pair, {})),
            }
        )
    return rows


async def hourly_by_segment(
    store: Store, tenant_id: str, from_ms: int, to_ms: int, zone_id: str | None
) -> list[dict[str, int | str]]:
    """Offers issued and redeemed per zone, CRM segment (at issue time) and hour."""
    rows: list[dict[str, int | str]] = []
    by_hour = await _hashes_by_hour(
        store, lambda hour: keys.segment_stats(tenant_id, hour), from_ms, to_ms
    )
    for hour, counters in by_hour:
        found: dict[tuple[str, str], dict[str, int | str]] = {}
        for name, value in counters.items():
            zone, segment, counter = name.decode().split("|")
            if zone_id is not None and zone != zone_id:
                continue
            row = found.setdefault(
                (zone, segment),
                {
                    "zone_id": zone,
                    "segment": segment,
                    "hour": hour,
                    "offers_issued": 0,
                    "redemptions": 0,
                },
            )
            row[counter] = int(value)
        rows.extend(found[k] for k in sorted(found))
    return rows
