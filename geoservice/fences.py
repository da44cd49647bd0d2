"""Device geofence state: which zones a device is in, moved forward atomically by one Lua script
per ping batch (rate limit, consent gate, enter / exit / dwell), keyed by the device's pseudonym.

Device ids never reach Redis in clear: they are replaced by a keyed hash (HMAC-SHA256 with
GEOSERVICE_PSEUDONYM_KEY) scoped to the tenant, so the same phone in two retailers' apps is two
unrelated pseudonyms, and nobody with only the Redis data can tell which phone it was.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import msgpack

from geoservice import keys
from geoservice.store import Store

STATE_TTL_S = 86_400
# Consent is proof that must outlast a quiet day of the device; 13 months is the usual
# re-consent horizon.
CONSENT_TTL_S = 400 * 86_400


def device_pseudonym(pseudonym_key: bytes, tenant_id: str, device_id: str) -> str:
    digest = hmac.new(pseudonym_key, f"{tenant_id}\x00{device_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


@dataclass(slots=True)  # not frozen, like pings.Fix: one per fix, and frozen costs ~4x to build
class FencePing:
    index: int  # position in the request, for `ignored`
    ts_ms: int
    inside: list[str]  # zones containing the position
    near: list[str]  # zones within the exit margin, not containing it


@dataclass(frozen=True, slots=True)
class ConsentUpdate:
    location: bool
    marketing: bool | None
    source: str


@dataclass(frozen=True, slots=True)
class FenceEvent:
    type: str  # enter | exit | dwell
    zone_id: str
    ts_ms: int
    index: int


@dataclass(frozen=True, slots=True)
class Flow:
    """The device left one zone and entered another within the hour."""

    from_zone: str
    to_zone: str
    seconds_between: float
    at_ms: int


@dataclass(frozen=True, slots=True)
class FenceOutcome:
    status: str  # ok | rate | consent
    events: list[FenceEvent] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    marketing_consent: bool = False
    # The customer named is to be linked to the device: new to it, or its link not yet
    # confirmed written (confirm_link), so a link lost to a failed write is tried again.
    new_customer_link: bool = False
    retry_after_ms: int = 0
    flows: list[Flow] = field(default_factory=list)


async def advance(
    store: Store,
    device: str,
    now_ms: int,
    pings: list[FencePing],
    dwell_s: dict[str, int],
    *,
    rate_per_s: float,
    burst: int,
    consent: ConsentUpdate | None,
    customer_id: str | None,
) -> FenceOutcome:
    """Run the fence script for one device: one round trip."""
    request: dict[str, Any] = {
        "now": now_ms,
        "state_ttl_s": STATE_TTL_S,
        "rate_per_s": rate_per_s,
        "burst": burst,
        "consent_ttl_s": CONSENT_TTL_S,
        "dwell": dwell_s,
        "pings": [[p.index, p.ts_ms, p.inside, p.near] for p in pings],
    }
    if consent is not None:
        request["consent"] = {
            "loc": int(consent.location),
            "mkt": -1 if consent.marketing is None else int(consent.marketing),
            "src": consent.source,
        }
    if customer_id is not None:
        request["customer"] = customer_id
    raw = await store.run_script(
        "fence",
        [keys.device_state(device), keys.device_consent(device), keys.device_rate(device)],
        [msgpack.packb(request, use_bin_type=True)],
    )
    reply = msgpack.unpackb(raw, raw=False)
    if reply[0] == "rate":
        return FenceOutcome("rate", retry_after_ms=int(reply[1]))
    if reply[0] == "consent":
        return FenceOutcome("consent")
    _, events, stale, marketing, new_customer, flows = reply
    return FenceOutcome(
        "ok",
        events=[FenceEvent(e[0], e[1], int(e[2]), int(e[3])) for e in events or []],
        stale=[int(i) for i in stale or []],
        marketing_consent=bool(marketing),
        new_customer_link=bool(new_customer),
        flows=[Flow(f[0], f[1], float(f[2]), int(f[3])) for f in flows or []],
    )


async def confirm_link(store: Store, device: str, customer_id: str) -> None:
    """The customer's link to the device is written: its pings stop asking for it."""
    await store.run_script("confirm_link", [keys.device_state(device)], [customer_id])
