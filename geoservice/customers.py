"""Customers: consent records, the interests the shop and the newsletter saw, the devices that
pinged under the customer's id, and the export and erasure of all of it.

Every key of a customer carries the tag {c:<tenant>:<customer>}, so the reads the offer decision
needs are one pipelined round trip on one node, on a cluster too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from geoservice import keys
from geoservice.store import Store

# Bounds what one customer costs at ping time: the newest events are the ones that count.
MAX_INTERESTS_PER_CUSTOMER = 500
INTEREST_KINDS = ("view", "newsletter_click", "cart", "purchase")
# Consent records and device links are proof and bookkeeping, not behaviour: kept 13 months
# after their last change, the usual horizon for asking again.
RECORD_TTL_S = 400 * 86_400


@dataclass(frozen=True, slots=True)
class Interest:
    kind: str
    product_id: str | None
    categories: tuple[str, ...]
    ts_ms: int

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(
            [self.kind, self.product_id, list(self.categories), self.ts_ms], use_bin_type=True
        )
        return packed

    @classmethod
    def unpack(cls, raw: bytes) -> Interest:
        kind, product_id, categories, ts_ms = msgpack.unpackb(raw, raw=False)
        return cls(kind, product_id, tuple(categories), int(ts_ms))


@dataclass(frozen=True, slots=True)
class Consent:
    location: bool | None
    marketing: bool | None
    source: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Profile:
    """What the CRM knows: segments and life events (a birthday as month-day only)."""

    segments: tuple[str, ...] = ()
    birthday: str | None = None  # "MM-DD"
    first_purchase_at_ms: int | None = None
    last_purchase_at_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "segments": list(self.segments),
            "birthday": self.birthday,
            "first_purchase_at": self.first_purchase_at_ms,
            "last_purchase_at": self.last_purchase_at_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            tuple(data.get("segments") or ()),
            data.get("birthday"),
            data.get("first_purchase_at"),
            data.get("last_purchase_at"),
        )


@dataclass(frozen=True, slots=True)
class CustomerContext:
    """What the offer decision knows of a customer, read in one round trip."""

    interests: list[Interest] = field(default_factory=list)
    consent: Consent | None = None
    profile: Profile | None = None


def _consent_from(raw: dict[bytes, bytes]) -> Consent | None:
    if not raw:
        return None

    def flag(name: bytes) -> bool | None:
        value = raw.get(name)
        return None if value is None else value == b"1"

    return Consent(
        location=flag(b"loc"),
        marketing=flag(b"mkt"),
        source=raw.get(b"src", b"").decode(),
        at_ms=int(raw.get(b"at", b"0")),
    )


class Customers:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record_consent(
        self,
        tenant_id: str,
        customer_id: str,
        *,
        location: bool | None,
        marketing: bool | None,
        source: str,
    ) -> Consent:
        now_ms = int(time.time() * 1000)
        record: dict[str, Any] = {"at": now_ms, "src": source}
        if location is not None:
            record["loc"] = int(location)
        if marketing is not None:
            record["mkt"] = int(marketing)
        key = keys.customer_consent(tenant_id, customer_id)
        async with self.store.batch(transaction=True) as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, RECORD_TTL_S)
            pipe.hgetall(key)
            _, _, raw = await pipe.execute()
        consent = _consent_from(raw)
        assert consent is not None
        return consent

    async def consent(self, tenant_id: str, customer_id: str) -> Consent | None:
        return _consent_from(
            await self.store.redis.hgetall(keys.customer_consent(tenant_id, customer_id))
        )

    async def add_interests(
        self, tenant_id: str, events: Sequence[tuple[str, Interest]], lookback_s: int
    ) -> int:
        """Store interest events; those older than the lookback are dropped. Returns how many
        were kept."""
        now_ms = int(time.time() * 1000)
        horizon_ms = now_ms - lookback_s * 1000
        by_customer: dict[str, list[Interest]] = {}
        for customer_id, interest in events:
            if interest.ts_ms >= horizon_ms:
                by_customer.setdefault(customer_id, []).append(interest)
        if not by_customer:
            return 0
        async with self.store.batch(transaction=False) as pipe:
            for customer_id, interests in by_customer.items():
                key = keys.interests(tenant_id, customer_id)
                pipe.zadd(key, {i.pack(): i.ts_ms for i in interests})
                pipe.zremrangebyscore(key, "-inf", f"({horizon_ms}")
                pipe.zremrangebyrank(key, 0, -(MAX_INTERESTS_PER_CUSTOMER + 1))
                pipe.expire(key, lookback_s)
            await pipe.execute()
        return sum(len(i) for i in by_customer.values())

    async def context(self, tenant_id: str, customer_id: str, lookback_s: int) -> CustomerContext:
        """Interests within the lookback, consent and profile: one round trip."""
        horizon_ms = int(time.time() * 1000) - lookback_s * 1000
        async with self.store.batch(transaction=False) as pipe:
            pipe.zrangebyscore(keys.interests(tenant_id, customer_id), horizon_ms, "+inf")
            pipe.hgetall(keys.customer_consent(tenant_id, customer_id))
            pipe.hgetall(keys.customer_profile(tenant_id, customer_id))
            raw_interests, raw_consent, raw_profile = await pipe.execute()
        profile = (
            Profile.from_dict(msgpack.unpackb(raw_profile[b"p"], raw=False))
            if raw_profile
            else None
        )
        return CustomerContext(
            interests=[Interest.unpack(raw) for raw in raw_interests],
            consent=_consent_from(raw_consent),
            profile=profile,
        )

    async def put_profiles(self, tenant_id: str, profiles: Sequence[tuple[str, Profile]]) -> None:
        """Replace the profiles of these customers (one pipelined round trip)."""
        async with self.store.batch(transaction=False) as pipe:
            for customer_id, profile in profiles:
                key = keys.customer_profile(tenant_id, customer_id)
                pipe.hset(key, "p", msgpack.packb(profile.as_dict(), use_bin_type=True))
                pipe.expire(key, RECORD_TTL_S)
            await pipe.execute()

    async def link_device(self, tenant_id: str, customer_id: str, device: str) -> None:
        key = keys.customer_devices(tenant_id, customer_id)
        async with self.store.batch(transaction=True) as pipe:
            pipe.sadd(key, device)
            pipe.expire(key, RECORD_TTL_S)
            await pipe.execute()

    async def devices(self, tenant_id: str, customer_id: str) -> list[str]:
        members = await self.store.redis.smembers(keys.customer_devices(tenant_id, customer_id))
        return sorted(m.decode() for m in members)


async def export(store: Store, tenant_id: str, customer_id: str) -> dict[str, Any]:
    """Everything held about the customer and the devices linked to it."""
    from geoservice.redemptions import issued_view

    redis = store.redis
    holder = keys.customer_tag(tenant_id, customer_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.customer_consent(tenant_id, customer_id))
        pipe.zrange(keys.interests(tenant_id, customer_id), 0, -1)
        pipe.smembers(keys.customer_devices(tenant_id, customer_id))
        pipe.zrange(keys.issued_ids(holder), 0, -1)
        pipe.hgetall(keys.customer_profile(tenant_id, customer_id))
        raw_consent, raw_interests, raw_devices, raw_issued, raw_profile = await pipe.execute()
    devices = sorted(d.decode() for d in raw_devices)
    device_records = []
    for device in devices:
        device_consent = _consent_from(await redis.hgetall(keys.device_consent(device)))
        state = await redis.hgetall(keys.device_state(device))
        device_records.append(
            {
                "device": device,
                "consent": None if device_consent is None else _consent_dict(device_consent),
                "inside_zones": sorted(k.decode()[2:] for k in state if k.startswith(b"z:")),
                "last_ping_at": int(state[b"last_ts"]) if b"last_ts" in state else None,
            }
        )
    issued_ids = [i.decode() for i in raw_issued]
    for device in devices:  # offers a linked device got while pinging without the customer id
        device_issued = await redis.zrange(keys.issued_ids(keys.device_tag(device)), 0, -1)
        issued_ids += [i.decode() for i in device_issued]
    issued = []
    redemptions = []
    for issued_id in issued_ids:
        record = await redis.hgetall(keys.issued_offer(issued_id))
        if record:
            view = issued_view(record, issued_id)
            issued.append(view)
            if "redeemed_at" in view:
                redemptions.append(
                    {
                        "id": issued_id,
                        "redeemed_at": view["redeemed_at"],
                        "store_id": view["redeemed_store_id"],
                    }
                )
    consent = _consent_from(raw_consent)
    return {
        "customer_id": customer_id,
        "consent": None if consent is None else _consent_dict(consent),
        "profile": msgpack.unpackb(raw_profile[b"p"], raw=False) if raw_profile else None,
        "interests": [_interest_dict(Interest.unpack(raw)) for raw in raw_interests],
        "devices": device_records,
        "issued_offers": issued,
        "redemptions": redemptions,
    }


def _consent_dict(consent: Consent) -> dict[str, Any]:
    return {
        "location": consent.location,
        "marketing": consent.marketing,
        "source": consent.source,
        "at": consent.at_ms,
    }


def _interest_dict(interest: Interest) -> dict[str, Any]:
    return {
        "kind": interest.kind,
        "product_id": interest.product_id,
        "categories": list(interest.categories),
        "ts": interest.ts_ms,
    }


async def erase(store: Store, tenant_id: str, customer_id: str) -> int:
    """Delete every key of the customer and of its linked devices, and the devices' entries in
    the tenant's event stream. Each DEL names one key, so it works across cluster nodes."""
    redis = store.redis
    holder = keys.customer_tag(tenant_id, customer_id)
    devices = [
        d.decode() for d in await redis.smembers(keys.customer_devices(tenant_id, customer_id))
    ]
    issued = [i.decode() for i in await redis.zrange(keys.issued_ids(holder), 0, -1)]
    doomed = [
        keys.customer_consent(tenant_id, customer_id),
        keys.interests(tenant_id, customer_id),
        keys.customer_profile(tenant_id, customer_id),
        keys.offer_counts(holder),
    ]
    for device in devices:
        device_holder = keys.device_tag(device)
        doomed += [
            keys.device_state(device),
            keys.device_consent(device),
            keys.device_rate(device),
            keys.caps(holder, device),
            keys.caps(device_holder, device),
            keys.offer_counts(device_holder),
        ]
        issued += [i.decode() for i in await redis.zrange(keys.issued_ids(device_holder), 0, -1)]
    doomed += [keys.issued_offer(i) for i in issued]
    # The indexes that lead to everything else go last: the keys are on several nodes, and when
    # one fails part way (a failover) the client, answered 503, repeats the erasure, which must
    # still find every device, issued offer and stream entry.
    doomed += [keys.issued_ids(keys.device_tag(d)) for d in devices]
    doomed += [keys.issued_ids(holder), keys.customer_devices(tenant_id, customer_id)]
    removed = 0
    if devices:
        removed += await _forget_devices_in_stream(store, tenant_id, set(devices))
    for key in doomed:
        removed += int(await redis.delete(key))
    return removed


async def _forget_devices_in_stream(store: Store, tenant_id: str, devices: set[str]) -> int:
    stream = keys.events(tenant_id)
    doomed: list[bytes] = []
    cursor = "-"
    while True:
        entries = await store.redis.xrange(stream, min=cursor, max="+", count=1000)
        for entry_id, fields in entries:
            if fields.get(b"device", b"").decode() in devices:
                doomed.append(entry_id)
        if len(entries) < 1000:
            break
        cursor = "(" + entries[-1][0].decode()
    if doomed:
        return int(await store.redis.xdel(stream, *doomed))
    return 0
