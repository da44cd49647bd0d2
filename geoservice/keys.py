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
