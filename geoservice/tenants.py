"""Tenants (retailers), their settings and their API keys.

Keys are random, shown once, and stored only as SHA-256 hashes (they carry 256 bits of entropy,
so a slow hash buys nothing). Every instance caches key lookups and tenant settings in memory
and drops them when the change feed announces a rotation or an edit, so the hot path does not
pay a Redis round trip for authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from geoservice import changes, keys
from geoservice.errors import Conflict, NotFound
from geoservice.store import Store


class KeyKind(StrEnum):
    SECRET = "secret"
    SDK = "sdk"


KEY_PREFIXES = {KeyKind.SECRET: "sk_", KeyKind.SDK: "pk_"}


@dataclass(frozen=True, slots=True)
class TenantSettings:
    max_offers_per_day: int = 3
    zone_cooldown_s: int = 14_400
    max_accuracy_m: float = 100.0
    exit_margin_m: float = 30.0
    interest_half_life_s: int = 604_800
    interest_lookback_s: int = 2_419_200
    offer_min_freshness_s: int = 120


SETTING_NAMES = tuple(f.name for f in fields(TenantSettings))


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    timezone: str
    created_at_ms: int
    settings: TenantSettings

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "name": self.name,
            "timezone": self.timezone,
            "created_at": self.created_at_ms,
            **asdict(self.settings),
        }


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    kind: KeyKind


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def new_key(kind: KeyKind) -> str:
    return KEY_PREFIXES[kind] + secrets.token_urlsafe(32)


def _decode_settings(raw: dict[bytes, bytes]) -> TenantSettings:
    values: dict[str, Any] = {}
    for f in fields(TenantSettings):
        stored = raw.get(f.name.encode())
        if stored is not None:
            values[f.name] = float(stored) if f.type == "float" else int(stored)
    return TenantSettings(**values)


class Tenants:
    """Tenant records in Redis with a per-process cache kept fresh by the change feed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._callers: dict[str, Caller] = {}
        self._tenants: dict[str, Tenant] = {}

    async def create(
        self,
        tenant_id: str,
        name: str,
        timezone: str,
        *,
        secret_key: str | None = None,
        sdk_key: str | None = None,
    ) -> tuple[Tenant, str, str]:
        """Keys are made here; passing them is only for the demo's well-known keys."""
        secret_key = secret_key or new_key(KeyKind.SECRET)
        sdk_key = sdk_key or new_key(KeyKind.SDK)
        now_ms = int(time.time() * 1000)
        tenant = Tenant(tenant_id, name, timezone, now_ms, TenantSettings())
        record: dict[str, Any] = {
            "name": name,
            "timezone": timezone,
            "created_at_ms": now_ms,
            "secret_hash": hash_key(secret_key),
            "sdk_hash": hash_key(sdk_key),
        }
        args: list[Any] = [x for item in record.items() for x in item]
        created = await self.store.run_script("create_tenant", [keys.tenant(tenant_id)], args)
        if not created:
            raise Conflict(f"tenant {tenant_id!r} exists already")
        # The key index is written after the tenant: a crash in between leaves a tenant whose
        # keys do not work yet, which a rotation repairs; never a key pointing at nothing.
        redis = self.store.redis
        await redis.hset(
            keys.api_key(record["secret_hash"]), mapping={"t": tenant_id, "k": "secret"}
        )
        await redis.hset(keys.api_key(record["sdk_hash"]), mapping={"t": tenant_id, "k": "sdk"})
        await redis.sadd(keys.TENANT_IDS, tenant_id)
        await changes.publish(redis, "tenant", tenant_id)
        return tenant, secret_key, sdk_key

    async def rotate_key(self, tenant_id: str, kind: KeyKind) -> str:
        redis = self.store.redis
        field = f"{kind.value}_hash"
        old_hash = await redis.hget(keys.tenant(tenant_id), field)
        if old_hash is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        raw_key = new_key(kind)
        new_hash = hash_key(raw_key)
        await redis.hset(keys.api_key(new_hash), mapping={"t": tenant_id, "k": kind.value})
        await redis.hset(keys.tenant(tenant_id), field, new_hash)
        await redis.delete(keys.api_key(old_hash.decode()))
        self.forget_keys(tenant_id)
        await changes.publish(redis, "keys", tenant_id)
        return raw_key

    async def authenticate(self, raw_key: str) -> Caller | None:
        key_hash = hash_key(raw_key)
        cached = self._callers.get(key_hash)
        if cached is not None:
            return cached
        record = await self.store.redis.hgetall(keys.api_key(key_hash))
        if not record:
            return None
        caller = Caller(record[b"t"].decode(), KeyKind(record[b"k"].decode()))
        # Confirm against the tenant's own record too: a rotation deletes the old index entry
        # last, so this closes the window in which both keys would work.
        stored = await self.store.redis.hget(keys.tenant(caller.tenant_id), f"{caller.kind}_hash")
        if stored is None or not hmac.compare_digest(stored, key_hash.encode()):
            return None
        self._callers[key_hash] = caller
        return caller

    async def get(self, tenant_id: str) -> Tenant:
        cached = self._tenants.get(tenant_id)
        if cached is not None:
            return cached
        raw = await self.store.redis.hgetall(keys.tenant(tenant_id))
        if not raw or b"name" not in raw:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        tenant = Tenant(
            tenant_id=tenant_id,
            name=raw[b"name"].decode(),
            timezone=raw[b"timezone"].decode(),
            created_at_ms=int(raw[b"created_at_ms"]),
            settings=_decode_settings(raw),
        )
        self._tenants[tenant_id] = tenant
        return tenant

    async def update(self, tenant_id: str, changes_: dict[str, Any]) -> Tenant:
        """Apply a partial update (settings, name, timezone); fields are written one by one so
        two concurrent edits of different fields both survive."""
        tenant = await self.get(tenant_id)
        if changes_:
            await self.store.redis.hset(keys.tenant(tenant_id), mapping=changes_)
            self.forget_tenant(tenant_id)
            await changes.publish(self.store.redis, "tenant", tenant_id)
            settings = replace(
                tenant.settings, **{k: v for k, v in changes_.items() if k in SETTING_NAMES}
            )
            tenant = replace(
                tenant,
                name=changes_.get("name", tenant.name),
                timezone=changes_.get("timezone", tenant.timezone),
                settings=settings,
            )
        return tenant

    async def list_ids(self) -> list[str]:
        members = await self.store.redis.smembers(keys.TENANT_IDS)
        return sorted(m.decode() for m in members)

    def forget_keys(self, tenant_id: str) -> None:
        self._callers = {h: c for h, c in self._callers.items() if c.tenant_id != tenant_id}

    def forget_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    def forget_all(self) -> None:
        self._callers.clear()
        self._tenants.clear()

    async def apply_change(self, change: changes.Change) -> None:
        if change.kind == "keys":
            self.forget_keys(change.tenant_id)
        elif change.kind == "tenant":
            self.forget_tenant(change.tenant_id)
