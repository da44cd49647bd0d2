"""Offers: the retailer's campaigns (stored in Redis, cached per instance like zones), and the
decision of which one, if any, an event earns: the gates (freshness, consent, opening hours,
campaign window) and the ranking by the customer's decayed interests.

Writes are shielded from cancellation: a request cancelled half-way (client gone, deadline) still
finishes the write, this instance's copy and the change-feed entry, so no instance is left behind.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgpack

from geoservice import changes, keys, paging
from geoservice.customers import Interest, Profile
from geoservice.errors import NotFound
from geoservice.store import Store
from geoservice.zones import Zone

KIND_WEIGHT = {"view": 1.0, "newsletter_click": 2.0, "cart": 3.0}
PRODUCT_MATCH = 1.0
CATEGORY_MATCH = 0.5
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    title: str
    body: str | None = None
    product_ids: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    zone_ids: tuple[str, ...] | None = None
    trigger: str = "enter"
    valid_for_s: int = 3600
    starts_at_ms: int | None = None
    ends_at_ms: int | None = None
    max_per_customer: int = 1
    budget: int | None = None
    priority: int = 0
    fallback: bool = False
    audience: dict[str, Any] | None = None
    updated_at_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id,
            "title": self.title,
            "body": self.body,
            "product_ids": list(self.product_ids),
            "categories": list(self.categories),
            "zone_ids": None if self.zone_ids is None else list(self.zone_ids),
            "trigger": self.trigger,
            "valid_for_s": self.valid_for_s,
            "starts_at": self.starts_at_ms,
            "ends_at": self.ends_at_ms,
            "max_per_customer": self.max_per_customer,
            "budget": self.budget,
            "priority": self.priority,
            "fallback": self.fallback,
            "audience": self.audience,
            "updated_at": self.updated_at_ms,
        }

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(asdict(self), use_bin_type=True)
        return packed

    @classmethod
    def unpack(cls, raw: bytes) -> Offer:
        data = msgpack.unpackb(raw, raw=False)
        for name in ("product_ids", "categories"):
            data[name] = tuple(data[name])
        if data["zone_ids"] is not None:
            data["zone_ids"] = tuple(data["zone_ids"])
        return cls(**data)

    def runs_at(self, now_ms: int) -> bool:
        if self.starts_at_ms is not None and now_ms < self.starts_at_ms:
            return False
        return self.ends_at_ms is None or now_ms < self.ends_at_ms

    def applies_to(self, zone_id: str, trigger: str) -> bool:
        return self.trigger == trigger and (self.zone_ids is None or zone_id in self.zone_ids)


def is_open(zone: Zone, at_ms: int) -> bool:
    """Opening hours in the zone's own time zone; no hours means always open."""
    if zone.opening_hours is None:
        return True
    local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(zone.timezone))
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    clock = f"{local.hour:02d}:{local.minute:02d}"
    return any(opens <= clock < closes for opens, closes in zone.opening_hours.get(day, []))


def days_to_birthday(birthday: str, today: date) -> int:
    """Days from today to the next birthday (0 on the day). 29 February is celebrated on
    28 February in years without one."""
    month, day = int(birthday[:2]), int(birthday[3:])

    def occurrence(year: int) -> date:
        if month == 2 and day == 29 and not calendar.isleap(year):
            return date(year, 2, 28)
        return date(year, month, day)

    upcoming = occurrence(today.year)
    if upcoming < today:
        upcoming = occurrence(today.year + 1)
    return (upcoming - today).days


def audience_admits(
    audience: dict[str, Any], profile: Profile | None, timezone: str, now_ms: int
) -> bool:
    """Every condition given must hold; no profile matches no audience."""
    if profile is None:
        return False
    segments = audience.get("segments")
    if segments and not set(segments).intersection(profile.segments):
        return False
    within = audience.get("birthday_within_days")
    if within is not None:
        if profile.birthday is None:
            return False
        today = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(timezone)).date()
        if days_to_birthday(profile.birthday, today) > within:
            return False
    lapsed = audience.get("lapsed_days")
    if lapsed is not None:
        last = profile.last_purchase_at_ms
        if last is None or now_ms - last < lapsed * DAY_MS:
            return False
    new_within = audience.get("new_within_days")
    if new_within is not None:
        first = profile.first_purchase_at_ms
        if first is None or now_ms - first > new_within * DAY_MS:
            return False
    return True


def score(offer: Offer, interests: Sequence[Interest], now_ms: int, half_life_s: int) -> float:
    """Sum over the interests of weight(kind) * match * 0.5 ** (age / half_life)."""
    total = 0.0
    products = set(offer.product_ids)
    categories = set(offer.categories)
    for interest in interests:
        weight = KIND_WEIGHT.get(interest.kind)
        if weight is None:
            continue
        if interest.product_id is not None and interest.product_id in products:
            match = PRODUCT_MATCH
        elif categories.intersection(interest.categories):
            match = CATEGORY_MATCH
        else:
            continue
        age_s = max(0.0, (now_ms - interest.ts_ms) / 1000)
        total += weight * match * 0.5 ** (age_s / half_life_s)
    return total


def rank(
    candidates: Sequence[Offer], interests: Sequence[Interest], now_ms: int, half_life_s: int
) -> list[Offer]:
    """Offers scoring > 0 first (highest score first), then fallback offers; ties by priority
    (higher first), then offer_id. An offer for a product the customer purchased within the
    lookback is left out; an offer matching nothing that is not a fallback is left out."""
    purchased = {i.product_id for i in interests if i.kind == "purchase" and i.product_id}
    scored: list[tuple[int, float, int, str, Offer]] = []
    for offer in candidates:
        if purchased.intersection(offer.product_ids):
            continue
        value = score(offer, interests, now_ms, half_life_s)
        if value > 0:
            scored.append((0, -value, -offer.priority, offer.offer_id, offer))
        elif offer.fallback:
            scored.append((1, 0.0, -offer.priority, offer.offer_id, offer))
    scored.sort(key=lambda item: item[:4])
    return [item[4] for item in scored]


# An offer's place in the catalog's index: its trigger, then one of its zones, or ANY_ZONE.
ANY_ZONE = None
OfferKey = tuple[str, str | None]


@dataclass
class OfferCatalog:
    """Every tenant's offers in memory, refreshed from the change feed, and indexed by
    trigger and zone: a ping that names a customer asks it for every zone it lies in
    (`OfferDesk.could_offer`), so that question must not cost a scan of the tenant's offers."""

    tenants: dict[str, dict[str, Offer]] = field(default_factory=dict)
    # tenant -> (trigger, zone_id or ANY_ZONE) -> offer_id -> offer
    _by_trigger_zone: dict[str, dict[OfferKey, dict[str, Offer]]] = field(default_factory=dict)

    def candidates(self, tenant_id: str, zone_id: str, trigger: str, now_ms: int) -> list[Offer]:
        index = self._by_trigger_zone.get(tenant_id)
        if not index:
            return []
        found = [o for o in index.get((trigger, zone_id), {}).values() if o.runs_at(now_ms)]
        found.extend(o for o in index.get((trigger, ANY_ZONE), {}).values() if o.runs_at(now_ms))
        return found

    def put(self, tenant_id: str, offer: Offer) -> None:
        self.remove(tenant_id, offer.offer_id)
        self.tenants.setdefault(tenant_id, {})[offer.offer_id] = offer
        index = self._by_trigger_zone.setdefault(tenant_id, {})
        for key in _index_keys(offer):
            index.setdefault(key, {})[offer.offer_id] = offer

    def remove(self, tenant_id: str, offer_id: str) -> None:
        offer = self.tenants.get(tenant_id, {}).pop(offer_id, None)
        if offer is None:
            return
        index = self._by_trigger_zone[tenant_id]
        for key in _index_keys(offer):
            entries = index[key]
            del entries[offer_id]
            if not entries:
                del index[key]

    def replace(self, tenant_id: str, offers: dict[str, Offer]) -> None:
        self.tenants[tenant_id] = {}
        self._by_trigger_zone[tenant_id] = {}
        for offer in offers.values():
            self.put(tenant_id, offer)


def _index_keys(offer: Offer) -> list[OfferKey]:
    if offer.zone_ids is None:
        return [(offer.trigger, ANY_ZONE)]
    return [(offer.trigger, zone_id) for zone_id in set(offer.zone_ids)]


class Offers:
    def __init__(self, store: Store, catalog: OfferCatalog) -> None:
        self.store = store
        self.catalog = catalog

    async def put(self, tenant_id: str, offer: Offer) -> bool:
        # Shielded: a write a cancelled request began is finished whole (see the module doc).
        return await asyncio.shield(self._put(tenant_id, offer))

    async def _put(self, tenant_id: str, offer: Offer) -> bool:
        added = await paging.store_records(
            self.store.redis,
            keys.offer_ids(tenant_id),
            keys.offers(tenant_id),
            {offer.offer_id: offer.pack()},
        )
        self.catalog.put(tenant_id, offer)
        await changes.publish(self.store.redis, "offer", tenant_id, offer.offer_id)
        return bool(added)

    async def get(self, tenant_id: str, offer_id: str) -> Offer:
        raw = await self.store.redis.hget(keys.offers(tenant_id), offer_id)
        if raw is None:
            raise NotFound(f"offer {offer_id!r} does not exist")
        return Offer.unpack(raw)

    async def delete(self, tenant_id: str, offer_id: str) -> None:
        # Shielded: a write a cancelled request began is finished whole (see the module doc).
        return await asyncio.shield(self._delete(tenant_id, offer_id))

    async def _delete(self, tenant_id: str, offer_id: str) -> None:
        removed = await paging.remove_record(
            self.store.redis, keys.offer_ids(tenant_id), keys.offers(tenant_id), offer_id
        )
        if not removed:
            raise NotFound(f"offer {offer_id!r} does not exist")
        self.catalog.remove(tenant_id, offer_id)
        await changes.publish(self.store.redis, "offer", tenant_id, offer_id)

    async def page(
        self, tenant_id: str, cursor: str | None, limit: int
    ) -> tuple[list[Offer], str | None]:
        found, next_cursor = await paging.page(
            self.store.redis, keys.offer_ids(tenant_id), keys.offers(tenant_id), cursor, limit
        )
        return [Offer.unpack(raw) for _, raw in found], next_cursor

    async def issued_count(self, tenant_id: str, offer_id: str) -> int:
        raw = await self.store.redis.get(keys.offer_budget(tenant_id, offer_id))
        return int(raw or 0)

    async def load_tenant(self, tenant_id: str) -> int:
        offers: dict[str, Offer] = {}
        async for offer_id, raw in self.store.redis.hscan_iter(keys.offers(tenant_id), count=500):
            offers[offer_id.decode()] = Offer.unpack(raw)
        self.catalog.replace(tenant_id, offers)
        return len(offers)

    async def apply_change(self, change: changes.Change) -> None:
        if change.kind != "offer":
            return
        raw = await self.store.redis.hget(keys.offers(change.tenant_id), change.item_id)
        if raw is None:
            self.catalog.remove(change.tenant_id, change.item_id)
        else:
            self.catalog.put(change.tenant_id, Offer.unpack(raw))


def now_ms() -> int:
    return int(time.time() * 1000)
