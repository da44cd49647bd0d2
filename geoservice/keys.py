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
    return f"{PREFIX}dev:{{d:{device}}}"


def device_consent(device: str) -> str:
    return f"{PREFIX}dev-consent:{{d:{device}}}"


def device_rate(device: str) -> str:
    return f"{PREFIX}dev-rate:{{d:{device}}}"


def events(tenant_id: str) -> str:
    """The tenant's event stream (capped): stats, webhooks and other consumers read it."""
    return f"{PREFIX}events:{{t:{tenant_id}}}"


def zone_stats(tenant_id: str, hour_ms: int) -> str:
    """Counters of one hour: fields '<zone_id>:<counter>'."""
    return f"{PREFIX}stats:{{t:{tenant_id}}}:{hour_ms}"


def zone_uniques(tenant_id: str, hour_ms: int, zone_id: str) -> str:
    """HyperLogLog of the device pseudonyms seen entering a zone in one hour."""
    return f"{PREFIX}uniq:{{t:{tenant_id}}}:{hour_ms}:{zone_id}"
