"""Every Redis key name the service uses, built in one place.

The part in braces is the hash tag: keys that one script or transaction touches together share
it, so every multi-key operation runs unchanged on Redis Cluster. Personal data is keyed by
pseudonyms (device) or by the tenant-scoped customer id, never by anything else.
"""

from __future__ import annotations

PREFIX = "geo:"

# Global keys (one slot each).
TENANT_IDS = PREFIX + "tenants"
CHANGES = PREFIX + "changes"  # stream: the change feed every instance follows


def api_key(key_hash: str) -> str:
    """Hash of an API key -> {tenant, kind}. Spread over slots by the hash itself."""
    return f"{PREFIX}key:{{k:{key_hash}}}"


def tenant(tenant_id: str) -> str:
    return f"{PREFIX}tenant:{{t:{tenant_id}}}"


def zones(tenant_id: str) -> str:
    """Hash zone_id -> stored zone (msgpack); one per tenant, read whole at start-up."""
    return f"{PREFIX}zones:{{t:{tenant_id}}}"


def zone_ids(tenant_id: str) -> str:
    """Sorted set of the tenant's zone ids (all scores 0): ordered paging by id."""
    return f"{PREFIX}zone-ids:{{t:{tenant_id}}}"


def device_state(device: str) -> str:
    """Geofence state of one device (pseudonym): which zones it is in since when; TTL 24 h."""
    return f"{PREFIX}dev:{{{device_tag(device)}}}"


def device_consent(device: str) -> str:
    return f"{PREFIX}dev-consent:{{{device_tag(device)}}}"


def device_rate(device: str) -> str:
    return f"{PREFIX}dev-rate:{{{device_tag(device)}}}"


def events(tenant_id: str) -> str:
    """The tenant's event stream (capped): stats, webhooks and other consumers read it."""
    return f"{PREFIX}events:{{t:{tenant_id}}}"


def zone_stats(tenant_id: str, hour_ms: int) -> str:
    """Counters of one hour: fields '<zone_id>:<counter>'."""
    return f"{PREFIX}stats:{{t:{tenant_id}}}:{hour_ms}"


def zone_uniques(tenant_id: str, hour_ms: int, zone_id: str) -> str:
    """HyperLogLog of the device pseudonyms seen entering a zone in one hour."""
    return f"{PREFIX}uniq:{{t:{tenant_id}}}:{hour_ms}:{zone_id}"


def offers(tenant_id: str) -> str:
    """Hash offer_id -> stored offer (msgpack)."""
    return f"{PREFIX}offers:{{t:{tenant_id}}}"


def offer_ids(tenant_id: str) -> str:
    return f"{PREFIX}offer-ids:{{t:{tenant_id}}}"


def offer_budget(tenant_id: str, offer_id: str) -> str:
    """Issuances of an offer so far, against its budget (its own slot: a hot offer is one key)."""
    return f"{PREFIX}budget:{{o:{tenant_id}:{offer_id}}}"


def customer_tag(tenant_id: str, customer_id: str) -> str:
    return f"c:{tenant_id}:{customer_id}"


def device_tag(device: str) -> str:
    return f"d:{device}"


def interests(tenant_id: str, customer_id: str) -> str:
    """Sorted set of the customer's interest events, scored by ts; TTL = the lookback."""
    return f"{PREFIX}interests:{{{customer_tag(tenant_id, customer_id)}}}"


def customer_consent(tenant_id: str, customer_id: str) -> str:
    return f"{PREFIX}consent:{{{customer_tag(tenant_id, customer_id)}}}"


def customer_devices(tenant_id: str, customer_id: str) -> str:
    """Pseudonyms of the devices that pinged with this customer id (for export and erasure)."""
    return f"{PREFIX}devices:{{{customer_tag(tenant_id, customer_id)}}}"


def customer_profile(tenant_id: str, customer_id: str) -> str:
    return f"{PREFIX}profile:{{{customer_tag(tenant_id, customer_id)}}}"


def caps(holder_tag: str, device: str) -> str:
    """One device's offer caps (per-day count, per-zone cooldown), kept under the holder's tag
    (the customer when known, else the device) so one script checks every cap at once."""
    return f"{PREFIX}caps:{{{holder_tag}}}:{device}"


def offer_counts(holder_tag: str) -> str:
    """Per offer, the issue times to this customer (or device) in the last 30 days."""
    return f"{PREFIX}offer-counts:{{{holder_tag}}}"


def issued_ids(holder_tag: str) -> str:
    """Ids of the offers issued to this customer (or device), for export and erasure."""
    return f"{PREFIX}issued-ids:{{{holder_tag}}}"


def redemption_rate(tenant_id: str) -> str:
    """Token bucket of the tenant's redemption attempts."""
    return f"{PREFIX}redeem-rate:{{t:{tenant_id}}}"


def issued_offer(offer_instance_id: str) -> str:
    """One issued offer and, once redeemed, its redemption; TTL validity + grace."""
    return f"{PREFIX}issued:{{i:{offer_instance_id}}}"


def flow_counts(tenant_id: str, hour_ms: int) -> str:
    """Zone-to-zone transitions of one hour: fields '<from>><to>' (aggregates only)."""
    return f"{PREFIX}flows:{{t:{tenant_id}}}:{hour_ms}"


def flow_seconds(tenant_id: str, hour_ms: int) -> str:
    """Histogram of the seconds between exit and enter: fields '<from>><to>|<whole seconds>'."""
    return f"{PREFIX}flow-s:{{t:{tenant_id}}}:{hour_ms}"


def flow_devices(tenant_id: str, hour_ms: int, pair: str) -> str:
    """HyperLogLog of the devices making one transition in one hour."""
    return f"{PREFIX}flow-dev:{{t:{tenant_id}}}:{hour_ms}:{pair}"


def segment_stats(tenant_id: str, hour_ms: int) -> str:
    """Offers issued and redeemed per zone and CRM segment: fields '<zone>|<segment>|<counter>'."""
    return f"{PREFIX}seg-stats:{{t:{tenant_id}}}:{hour_ms}"


def webhooks(tenant_id: str) -> str:
    """Hash webhook_id -> registration (msgpack: url, events, secret, times)."""
    return f"{PREFIX}webhooks:{{t:{tenant_id}}}"


def webhook_ids(tenant_id: str) -> str:
    """Sorted set of the tenant's webhook ids (all scores 0): ordered paging by id."""
    return f"{PREFIX}webhook-ids:{{t:{tenant_id}}}"


def webhook_group(webhook_id: str) -> str:
    """Name of the webhook's consumer group on its tenant's event stream (not a key)."""
    return f"wh:{webhook_id}"


def webhook_lease(tenant_id: str, webhook_id: str) -> str:
    """Which instance delivers for the webhook now (SET NX PX, renewed while it works)."""
    return f"{PREFIX}wh-lease:{{t:{tenant_id}}}:{webhook_id}"


def webhook_retry(tenant_id: str, webhook_id: str) -> str:
    """Hash of the failing batch: first entry id, first attempt time, attempts (for takeover)."""
    return f"{PREFIX}wh-retry:{{t:{tenant_id}}}:{webhook_id}"


def webhook_log(tenant_id: str, webhook_id: str) -> str:
    """List of the last delivery attempts, newest first (capped)."""
    return f"{PREFIX}wh-log:{{t:{tenant_id}}}:{webhook_id}"
