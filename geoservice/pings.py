"""A ping batch from one device: drop what cannot count (future, too old, inaccurate), find the
zones of each position in memory, move the device's geofence state in one atomic script, and
turn its transitions into events. Offers hang off the events (see offers.py)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from geoservice import fences, stats
from geoservice.customers import CustomerContext, Customers
from geoservice.decisions import IssuedOffer, OfferDesk
from geoservice.errors import Forbidden, RateLimited
from geoservice.fences import ConsentUpdate, FenceOutcome, FencePing
from geoservice.settings import Settings
from geoservice.stats import ZoneEvent
from geoservice.store import Store, may_go_unawaited
from geoservice.tenants import Tenant
from geoservice.zones import Zone, ZoneDirectory

FUTURE_TOLERANCE_MS = 5 * 60_000
MAX_AGE_MS = 24 * 3_600_000


# Not frozen: one is built per fix, and a frozen dataclass's __init__ sets each field through
# object.__setattr__ (~530 against ~140 ns here; 20 fixes a batch). Nothing changes them.
@dataclass(slots=True)
class Fix:
    lat: float
    lon: float
    accuracy_m: float
    ts_ms: int
    age_ms: int | None = None


@dataclass(frozen=True, slots=True)
class PingBatch:
    device_id: str
    fixes: list[Fix]
    customer_id: str | None = None
    consent: ConsentUpdate | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    index: int
    reason: str  # stale | future | too_old | inaccurate


@dataclass(frozen=True, slots=True)
class PingOutcome:
    events: list[ZoneEvent]
    offers: list[IssuedOffer]
    ignored: list[Ignored]


def fix_time_ms(fix: Fix, received_ms: int) -> int:
    """The phone's wall clock may be wrong; its monotonic age of the fix is not."""
    return received_ms - fix.age_ms if fix.age_ms is not None else fix.ts_ms


class Pings:
    def __init__(
        self,
        store: Store,
        directory: ZoneDirectory,
        customers: Customers,
        desk: OfferDesk,
        settings: Settings,
    ) -> None:
        self.store = store
        self.directory = directory
        self.customers = customers
        self.desk = desk
        self.settings = settings

    async def handle(self, tenant: Tenant, batch: PingBatch, received_ms: int) -> PingOutcome:
        limits = tenant.settings
        ignored: list[Ignored] = []
        usable: list[tuple[int, int, Fix]] = []
        for index, fix in enumerate(batch.fixes):
            ts_ms = fix_time_ms(fix, received_ms)
            if ts_ms > received_ms + FUTURE_TOLERANCE_MS:
                ignored.append(Ignored(index, "future"))
            elif ts_ms < received_ms - MAX_AGE_MS:
                ignored.append(Ignored(index, "too_old"))
            elif fix.accuracy_m > limits.max_accuracy_m:
                ignored.append(Ignored(index, "inaccurate"))
            else:
                usable.append((ts_ms, index, fix))
        usable.sort(key=lambda item: (item[0], item[1]))

        fence_pings: list[FencePing] = []
        dwell_s: dict[str, int] = {}
        zones: dict[str, Zone] = {}
        for ts_ms, index, fix in usable:
            inside, near = self.directory.locate(
                tenant.tenant_id, fix.lat, fix.lon, limits.exit_margin_m
            )
            for zone in inside:
                dwell_s[zone.zone_id] = zone.dwell_s
                zones[zone.zone_id] = zone
            fence_pings.append(FencePing(index, ts_ms, [z.zone_id for z in inside], near))

        device = fences.device_pseudonym(
            self.settings.pseudonym_key, tenant.tenant_id, batch.device_id
        )

        async def advance(consent: ConsentUpdate | None) -> FenceOutcome:
            return await fences.advance(
                self.store,
                device,
                received_ms,
                fence_pings,
                dwell_s,
                rate_per_s=self.settings.ping_rate_per_s,
                burst=self.settings.ping_burst,
                consent=consent,
                customer_id=batch.customer_id,
            )

        # A customer's context (interests, consent, profile) is read beside the fence script
        # when this batch could earn an offer: the decision then waits for no read of its own.
        # Not when the request carries consent: the decision must see it recorded first.
        context_read: asyncio.Task[CustomerContext] | None = None
        if (
            batch.customer_id is not None
            and batch.consent is None
            and self.desk.could_offer(tenant.tenant_id, zones.values(), received_ms)
        ):
            # Left unread when no offer comes of it: its failure, if any, is not news then.
            context_read = may_go_unawaited(
                asyncio.ensure_future(
                    self.customers.context(
                        tenant.tenant_id, batch.customer_id, limits.interest_lookback_s
                    )
                )
            )

        outcome = await advance(batch.consent)
        if outcome.status == "consent" and batch.consent is None and batch.customer_id:
            # First contact of a device whose customer consented through the back office:
            # the device takes the customer's consent, then the batch runs again.
            recorded = await self.customers.consent(tenant.tenant_id, batch.customer_id)
            if recorded is not None and recorded.location:
                outcome = await advance(ConsentUpdate(True, recorded.marketing, "customer"))
        if outcome.status == "rate":
            raise RateLimited(
                "too many ping requests for this device",
                retry_after_s=max(1, math.ceil(outcome.retry_after_ms / 1000)),
            )
        if outcome.status == "consent":
            raise Forbidden(
                "no location consent on record for this device: send "
                '"consent": {"location": true} once the user agreed'
            )
        if batch.customer_id is not None and batch.consent is not None:
            # Before the decision: a consent withdrawn in this very request must hold for it.
            await self.customers.record_consent(
                tenant.tenant_id,
                batch.customer_id,
                location=batch.consent.location,
                marketing=batch.consent.marketing,
                source=batch.consent.source,
            )
        ignored.extend(Ignored(index, "stale") for index in outcome.stale)
        ignored.sort(key=lambda item: item.index)
        events: list[ZoneEvent] = []
        for event in outcome.events:
            known = zones.get(event.zone_id) or self.directory.zone(tenant.tenant_id, event.zone_id)
            # An exit from a zone deleted or disabled meanwhile is no news: the script cleaned
            # the state, the event is dropped.
            if known is None or not self.directory.is_live(tenant.tenant_id, event.zone_id):
                continue
            zones[event.zone_id] = known
            events.append(ZoneEvent(event.type, event.zone_id, known.store_id, event.ts_ms))
        if not events and not outcome.flows and not outcome.new_customer_link:
            return PingOutcome(events, [], ignored)  # the common case: one round trip in all
        flows = [
            (f.from_zone, f.to_zone, f.seconds_between, f.at_ms)
            for f in outcome.flows
            if self.directory.is_live(tenant.tenant_id, f.from_zone)
            and self.directory.is_live(tenant.tenant_id, f.to_zone)
        ]
        # The event stream, hourly counters and flows are derived from the device's move,
        # which the fence script made: written after the answer (Store.write_behind).
        derived = [stats.record(self.store, tenant.tenant_id, device, events)] if events else []
        if flows:
            derived.append(stats.record_flows(self.store, tenant.tenant_id, device, flows))
        await self.store.write_behind(*derived)
        decision = self.desk.decide(
            tenant,
            device,
            batch.customer_id,
            outcome.marketing_consent,
            events,
            zones,
            received_ms,
            context_read,
        )
        if batch.customer_id is None or not outcome.new_customer_link:
            return PingOutcome(events, await decision, ignored)
        # The link is what erasure follows from the customer to the device: waited for, and
        # confirmed to the device's state after the answer (until then every ping asks again).
        link = self.customers.link_device(tenant.tenant_id, batch.customer_id, device)
        offers, _ = await asyncio.gather(decision, link)
        await self.store.write_behind(fences.confirm_link(self.store, device, batch.customer_id))
        return PingOutcome(events, offers, ignored)
