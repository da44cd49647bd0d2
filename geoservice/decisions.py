"""The offer decision for the events of one ping batch: which offer, if any, each event earns,
and issuing it under every cap.

Gates: the ping is fresh, the customer or device has marketing consent, the zone's store is open,
the campaign runs. Ranking: offers.rank. Caps: the per-device daily cap, the per-zone cooldown and
each offer's max_per_customer are checked and counted in one script under the holder's hash tag;
an offer's budget is reserved first on its own key and given back if the holder's caps refuse,
so no cap and no budget is ever exceeded, on any number of instances (a crash between the two
steps can only leave a budget one short, never over).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ulid import ULID

from geoservice import keys, stats
from geoservice.customers import CustomerContext, Customers
from geoservice.offers import Offer, OfferCatalog, audience_admits, is_open, rank
from geoservice.settings import Settings
from geoservice.stats import OfferEvent, ZoneEvent
from geoservice.store import Store
from geoservice.tenants import Tenant
from geoservice.tokens import TokenClaims, sign
from geoservice.zones import Zone

MAX_PER_CUSTOMER_WINDOW_MS = 30 * 86_400_000
# An issued offer stays readable this long after it expired, so a late redemption gets a clear
# 410 and the export still shows it.
ISSUED_GRACE_S = 7 * 86_400
CAPS_TTL_S = 31 * 86_400


@dataclass(frozen=True, slots=True)
class IssueRecord:
    """Who an offer is being issued to: what the caps are counted on and the record keeps."""

    tenant: Tenant
    device: str
    holder: str  # the caps' hash tag: the customer when known, else the device
    customer_id: str | None
    segments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IssuedOffer:
    id: str
    offer: Offer
    zone: Zone
    issued_at_ms: int
    expires_at_ms: int
    token: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "offer_id": self.offer.offer_id,
            "title": self.offer.title,
            "body": self.offer.body,
            "product_ids": list(self.offer.product_ids),
            "zone_id": self.zone.zone_id,
            "store_id": self.zone.store_id,
            "issued_at": self.issued_at_ms,
            "expires_at": self.expires_at_ms,
            "token": self.token,
        }


def local_day(tenant: Tenant, at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, ZoneInfo(tenant.timezone)).strftime("%Y-%m-%d")


class OfferDesk:
    def __init__(
        self, store: Store, catalog: OfferCatalog, customers: Customers, settings: Settings
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.customers = customers
        self.settings = settings

    def could_offer(self, tenant_id: str, zones: Iterable[Zone], now_ms: int) -> bool:
        """Whether a position inside these zones could earn an offer now: an enter or dwell
        offer of one of them runs. (Exits happen in zones the position is not in.)"""
        return any(
            self.catalog.candidates(tenant_id, zone.zone_id, trigger, now_ms)
            for zone in zones
            for trigger in ("enter", "dwell")
        )

    async def decide(
        self,
        tenant: Tenant,
        device: str,
        customer_id: str | None,
        device_marketing: bool,
        events: list[ZoneEvent],
        zones: dict[str, Zone],
        now_ms: int,
        context_read: Awaitable[CustomerContext] | None = None,
    ) -> list[IssuedOffer]:
        """The offers these events earn, issued. `context_read`: the customer's context,
        already on its way (read beside the fence script, see pings.py), else read here."""
        limits = tenant.settings
        freshness_ms = limits.offer_min_freshness_s * 1000
        eligible: list[tuple[Zone, list[Offer]]] = []
        for event in events:
            zone = zones.get(event.zone_id)
            if zone is None or now_ms - event.at_ms > freshness_ms:
                continue  # a replayed offline buffer yields events, not offers
            candidates = self.catalog.candidates(tenant.tenant_id, zone.zone_id, event.type, now_ms)
            if candidates and is_open(zone, event.at_ms):
                eligible.append((zone, candidates))
        if not eligible:
            return []  # the common case costs no further round trip

        if customer_id is None:
            context = CustomerContext()
        elif context_read is not None:
            context = await context_read
        else:
            context = await self.customers.context(
                tenant.tenant_id, customer_id, limits.interest_lookback_s
            )
        customer_marketing = context.consent is not None and context.consent.marketing is True
        if not (device_marketing or customer_marketing):
            return []
        holder = (
            keys.customer_tag(tenant.tenant_id, customer_id)
            if customer_id is not None
            else keys.device_tag(device)
        )
        record = IssueRecord(
            tenant, device, holder, customer_id, context.profile.segments if context.profile else ()
        )

        async def for_zone(zone: Zone, candidates: list[Offer]) -> IssuedOffer | None:
            ranked = rank(
                [
                    o
                    for o in candidates
                    if o.audience is None
                    or audience_admits(o.audience, context.profile, zone.timezone, now_ms)
                ],
                context.interests,
                now_ms,
                limits.interest_half_life_s,
            )
            for offer in ranked:
                outcome = await self._try_issue(record, offer, zone, now_ms)
                if isinstance(outcome, IssuedOffer):
                    return outcome
                if outcome in ("day", "cooldown"):
                    break  # caps of the device or zone: no other offer can pass either
            return None

        # The zones entered at once are tried at once: their issue scripts leave together and
        # Redis runs them in this order, each checking the caps atomically, so the day cap
        # still stops the zones past it (they are refused "day") as a loop would, in one
        # round trip instead of one per zone.
        if len(eligible) == 1:  # the usual case: no tasks to gather, two loop turns fewer
            outcomes = [await for_zone(*eligible[0])]
        else:
            outcomes = await asyncio.gather(*(for_zone(z, c) for z, c in eligible))
        issued = [o for o in outcomes if o is not None]
        if issued:
            # The offer events feed the stream and the counters: written after the answer.
            await self.store.write_behind(
                *(
                    stats.record_offer(
                        self.store,
                        tenant.tenant_id,
                        device,
                        OfferEvent(
                            "offer_issued",
                            offer.offer.offer_id,
                            offer.id,
                            offer.zone.zone_id,
                            offer.zone.store_id,
                            offer.issued_at_ms,
                            record.segments,
                        ),
                    )
                    for offer in issued
                )
            )
        return issued

    async def _try_issue(
        self, record: IssueRecord, offer: Offer, zone: Zone, now_ms: int
    ) -> IssuedOffer | str:
        tenant, device, holder = record.tenant, record.device, record.holder
        budget_key = keys.offer_budget(tenant.tenant_id, offer.offer_id)
        if offer.budget is not None:
            reserved = await self.store.run_script("reserve_budget", [budget_key], [offer.budget])
            if not reserved:
                return "budget"
        issued_id = str(ULID())
        expires_at_ms = now_ms + offer.valid_for_s * 1000
        limits = tenant.settings
        issue = self.store.run_script(
            "issue_offer",
            [keys.caps(holder, device), keys.offer_counts(holder), keys.issued_ids(holder)],
            [
                now_ms,
                local_day(tenant, now_ms),
                limits.max_offers_per_day,
                zone.zone_id,
                limits.zone_cooldown_s * 1000,
                offer.offer_id,
                offer.max_per_customer,
                MAX_PER_CUSTOMER_WINDOW_MS,
                issued_id,
                expires_at_ms,
                CAPS_TTL_S,
            ],
        )
        # The issued record (what a redemption reads) goes with the script, not after its
        # verdict: one round trip. It lies under its own fresh id, which nobody can redeem
        # before this answer hands out the token, so a refused offer's record is only removed.
        # Gathered: both coroutines start in the same later turn, ahead of that turn's write.
        written = self._write_record(record, offer, zone, issued_id, now_ms, expires_at_ms)
        verdict, _ = await asyncio.gather(issue, written)
        verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        if verdict != "ok":
            await self.store.write_behind(self._remove_record(issued_id))
            if offer.budget is not None:
                await self.store.redis.decr(budget_key)
            return verdict
        token = sign(
            self.settings.active_signing_key,
            TokenClaims(
                self.settings.active_signing_key.kid,
                tenant.tenant_id,
                issued_id,
                self.settings.instance_id,
                expires_at_ms,
            ),
        )
        return IssuedOffer(issued_id, offer, zone, now_ms, expires_at_ms, token)

    async def _write_record(
        self,
        record: IssueRecord,
        offer: Offer,
        zone: Zone,
        issued_id: str,
        now_ms: int,
        expires_at_ms: int,
    ) -> None:
        key = keys.issued_offer(issued_id)
        ttl_s = (expires_at_ms - now_ms) // 1000 + ISSUED_GRACE_S
        fields = {
            "tenant": record.tenant.tenant_id,
            "offer_id": offer.offer_id,
            "title": offer.title,
            "zone_id": zone.zone_id,
            "store_id": zone.store_id or "",
            "customer_id": record.customer_id or "",
            "device": record.device,
            "issued_at": now_ms,
            "expires_at": expires_at_ms,
            "segments": ",".join(record.segments),
        }
        async with self.store.batch(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def _remove_record(self, issued_id: str) -> None:
        async with self.store.batch(transaction=False) as pipe:
            pipe.delete(keys.issued_offer(issued_id))
            await pipe.execute()
