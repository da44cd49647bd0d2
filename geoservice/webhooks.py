"""Webhooks: the retailer's registrations (url, event types, signing secret) and the delivery of
the tenant's event stream to them.

A registration is a record in Redis plus a consumer group of its own on the tenant's event
stream. Every instance caches the registrations (the change feed refreshes them) and runs one
delivery task per webhook; a lease in Redis lets one instance at a time deliver for a webhook, so
batches leave in stream order, hence in order per device. What a holder read but did not
acknowledge stays in the group's pending list: whoever takes the lease next claims it and sends
it again before anything newer. At least once: an entry is acknowledged after a 2xx, or when its
batch is given up after the retry window.

Addresses are checked twice: at registration, and at delivery on the very addresses the HTTP
client connects to (a resolver that refuses internal answers), so a name that resolves elsewhere
since registration (DNS rebinding) cannot reach an internal service.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import aiohttp
import msgpack
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from redis.exceptions import RedisError, ResponseError
from yarl import URL

from geoservice import changes, keys, metrics, paging
from geoservice.errors import FieldProblem, NotFound, ValidationFailed
from geoservice.settings import Settings, WebhookTimings
from geoservice.store import Store

log = logging.getLogger(__name__)

EVENT_TYPES = ("enter", "exit", "dwell", "offer_issued", "offer_redeemed")
OFFER_EVENT_TYPES = frozenset({"offer_issued", "offer_redeemed"})
MAX_BATCH = 100
LOG_LENGTH = 100
MAX_URL_LENGTH = 2048
SECRET_MIN_LENGTH, SECRET_MAX_LENGTH = 16, 256
SIGNATURE_HEADER = "X-Geoservice-Signature"
RESOLVE_TIMEOUT_S = 5.0
# A Redis outage or a bug: wait this long before the task tries again.
TROUBLE_PAUSE_S = 1.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[str, str]  # (tenant_id, webhook_id)

# NAT64 (RFC 6052) embeds an IPv4 address that a NAT64 gateway would reach.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class Webhook:
    webhook_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at_ms: int
    updated_at_ms: int

    def as_dict(self) -> dict[str, Any]:
        """The registration as answered: the secret itself is never shown again."""
        return {
            "webhook_id": self.webhook_id,
            "url": self.url,
            "events": list(self.events),
            "secret_hint": "…" + self.secret[-4:],
            "created_at": self.created_at_ms,
            "updated_at": self.updated_at_ms,
        }

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(asdict(self), use_bin_type=True)
        return packed

    @classmethod
    def unpack(cls, raw: bytes) -> Webhook:
        data = msgpack.unpackb(raw, raw=False)
        data["events"] = tuple(data["events"])
        return cls(**data)


# --- where a webhook may point -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowList:
    """GEOSERVICE_WEBHOOK_ALLOW: hostnames and networks allowed although internal."""

    hostnames: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> AllowList:
        hostnames: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hostnames.add(entry.lower().rstrip("."))
        return cls(frozenset(hostnames), tuple(networks))

    def permits_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hostnames

    def permits_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


class RefusedDestination(OSError):
    """The destination is internal and not allow-listed (an OSError so that aiohttp's
    connector reports it as a failed connection)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def url_problem(url: str) -> str | None:
    """What is wrong with the URL's form, or None: http(s), a host, no credentials, ≤ 2048."""
    if len(url) > MAX_URL_LENGTH:
        return f"at most {MAX_URL_LENGTH} characters"
    # Parsers disagree on backslashes and stray whitespace; refusing them leaves no ambiguity
    # between what was checked here and where the HTTP client goes.
    if any(c.isspace() or c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "must not contain whitespace, control characters or backslashes"
    try:
        parsed = URL(url)
        parsed.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return "scheme must be http or https"
    if parsed.user is not None or parsed.password is not None or "@" in parsed.raw_authority:
        return "must not carry credentials (user:password@)"
    if not parsed.host:
        return "needs a host"
    return None


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def internal_kind(address: IPAddress) -> str | None:
    """Why the address is no place for a webhook, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return internal_kind(embedded)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def address_problem(address: IPAddress, allow: AllowList) -> str | None:
    if allow.permits_address(address):
        return None
    kind = internal_kind(address)
    return None if kind is None else f"{address} is {kind}"


async def destination_problem(url: str, allow: AllowList) -> str | None:
    """At registration: the host, a literal or every address it resolves to now, must be public
    or allow-listed. None when it is."""
    host = URL(url).host or ""
    if allow.permits_host(host):
        return None
    literal = ip_literal(host)
    if literal is not None:
        problem = address_problem(literal, allow)
        return None if problem is None else f"refused: {problem}"
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError) as exc:
        return f"host {host!r} does not resolve ({exc or 'timeout'})"
    if not infos:
        return f"host {host!r} resolves to no address"
    for *_, sockaddr in infos:
        address = ip_literal(str(sockaddr[0]))
        problem = "an unparseable address" if address is None else address_problem(address, allow)
        if problem is not None:
            return f"refused: host {host!r} resolves to {problem}"
    return None


class GuardedResolver(AbstractResolver):
    """The delivery session's resolver: refuses a name with any internal answer. aiohttp then
    connects only to the addresses returned here, so the check cannot be raced."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow.permits_host(host):
            return results
        for result in results:
            address = ip_literal(result["host"])
            problem = "an unparseable address" if address is None else None
            if address is not None:
                problem = address_problem(address, self._allow)
            if problem is not None:
                raise RefusedDestination(f"host {host!r} resolves to {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


# --- signing and sending -----------------------------------------------------------------------


def signature(secret: str, t_ms: int, body: bytes) -> str:
    """X-Geoservice-Signature: t=<epoch ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    digest = hmac.new(secret.encode(), f"{t_ms}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t_ms},v1={digest}"


class Sender(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST the body; the answer's status. Raises on anything short of an answer."""


def open_session(allow: AllowList) -> aiohttp.ClientSession:
    # No connection limit: each webhook has at most one request in flight, and a shared limit
    # would let hanging receivers hold up the others. No proxies from the environment.
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow), limit=0)
    return aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": "geoservice-webhooks/1"}, trust_env=False
    )


@dataclass(frozen=True, slots=True)
class HttpSender:
    session: aiohttp.ClientSession
    allow: AllowList
    timeout_s: float

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        host = URL(url).host or ""
        literal = ip_literal(host)
        # aiohttp connects to an IP literal without asking the resolver: check it here.
        if literal is not None and not self.allow.permits_host(host):
            problem = address_problem(literal, self.allow)
            if problem is not None:
                raise RefusedDestination(problem)
        # Redirects are not followed: a 3xx could point anywhere, and counts as a failure.
        async with self.session.post(
            url,
            data=body,
            headers=dict(headers),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        ) as response:
            return response.status


def describe_failure(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, RefusedDestination):
        return f"refused: {exc.strerror}"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, RefusedDestination
    ):
        return f"refused: {exc.os_error.strerror}"
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}"[:300]


# --- registrations -----------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


class Webhooks:
    """Registrations: stored in Redis, cached per instance, announced on the change feed.
    Listeners (the delivery tasks) hear of every cache change."""

    def __init__(self, store: Store, allow: AllowList) -> None:
        self.store = store
        self.allow = allow
        self.cached: dict[Key, Webhook] = {}
        self.listeners: list[Callable[[Key], None]] = []

    async def check_destination(self, url: str) -> None:
        problem = await destination_problem(url, self.allow)
        if problem is not None:
            raise ValidationFailed.of([FieldProblem("url", problem)])

    async def put(
        self, tenant_id: str, webhook_id: str, url: str, events: Iterable[str], secret: str
    ) -> tuple[Webhook, bool]:
        """Create or replace; True when created. A replacement keeps the consumer group (and
        so what it has not delivered yet)."""
        redis = self.store.redis
        await self.check_destination(url)
        raw = await redis.hget(keys.webhooks(tenant_id), webhook_id)
        now = now_ms()
        wanted = set(events)
        webhook = Webhook(
            webhook_id=webhook_id,
            url=url,
            events=tuple(e for e in EVENT_TYPES if e in wanted),
            secret=secret,
            created_at_ms=now if raw is None else Webhook.unpack(raw).created_at_ms,
            updated_at_ms=now,
        )
        # The group first: once the record is visible, the group exists. "$": a new webhook
        # hears of events from now on, not of the stream's history.
        await ensure_group(redis, tenant_id, webhook_id)
        added = await paging.store_records(
            redis,
            keys.webhook_ids(tenant_id),
            keys.webhooks(tenant_id),
            {webhook_id: webhook.pack()},
        )
        self._cache((tenant_id, webhook_id), webhook)
        await changes.publish(redis, "webhook", tenant_id, webhook_id)
        return webhook, bool(added)

    async def get(self, tenant_id: str, webhook_id: str) -> Webhook:
        raw = await self.store.redis.hget(keys.webhooks(tenant_id), webhook_id)
        if raw is None:
            raise NotFound(f"webhook {webhook_id!r} does not exist")
        return Webhook.unpack(raw)

    async def delete(self, tenant_id: str, webhook_id: str) -> None:
        """Removes the registration, its group (its pending entries with it), lease and log."""
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.webhooks(tenant_id), webhook_id)
            pipe.zrem(keys.webhook_ids(tenant_id), webhook_id)
            pipe.delete(
                keys.webhook_lease(tenant_id, webhook_id),
                keys.webhook_retry(tenant_id, webhook_id),
                keys.webhook_log(tenant_id, webhook_id),
            )
            pipe.xgroup_destroy(keys.events(tenant_id), keys.webhook_group(webhook_id))
            # A stream that never existed has no group to destroy: that error is no news.
            removed, *_ = await pipe.execute(raise_on_error=False)
        if isinstance(removed, Exception):
            raise removed
        if not removed:
            raise NotFound(f"webhook {webhook_id!r} does not exist")
        self._cache((tenant_id, webhook_id), None)
        await changes.publish(self.store.redis, "webhook", tenant_id, webhook_id)

    async def page(
        self, tenant_id: str, cursor: str | None, limit: int
    ) -> tuple[list[Webhook], str | None]:
        found, next_cursor = await paging.page(
            self.store.redis, keys.webhook_ids(tenant_id), keys.webhooks(tenant_id), cursor, limit
        )
        return [Webhook.unpack(raw) for _, raw in found], next_cursor

    async def delivery_log(self, tenant_id: str, webhook_id: str) -> list[dict[str, Any]]:
        """The last attempts, newest first."""
        await self.get(tenant_id, webhook_id)
        raws = await self.store.redis.lrange(
            keys.webhook_log(tenant_id, webhook_id), 0, LOG_LENGTH - 1
        )
        return [orjson.loads(raw) for raw in raws]

    async def load(self, tenant_ids: Iterable[str]) -> int:
        """Every tenant's registrations into the cache (start-up and resync)."""
        fresh: dict[Key, Webhook] = {}
        for tenant_id in tenant_ids:
            async for webhook_id, raw in self.store.redis.hscan_iter(
                keys.webhooks(tenant_id), count=500
            ):
                fresh[(tenant_id, webhook_id.decode())] = Webhook.unpack(raw)
        gone = set(self.cached) - set(fresh)
        self.cached = fresh
        for key in [*gone, *fresh]:
            self._notify(key)
        return len(fresh)

    async def apply_change(self, change: changes.Change) -> None:
        if change.kind != "webhook":
            return
        raw = await self.store.redis.hget(keys.webhooks(change.tenant_id), change.item_id)
        webhook = None if raw is None else Webhook.unpack(raw)
        self._cache((change.tenant_id, change.item_id), webhook)

    def _cache(self, key: Key, webhook: Webhook | None) -> None:
        if webhook is None:
            self.cached.pop(key, None)
        else:
            self.cached[key] = webhook
        self._notify(key)

    def _notify(self, key: Key) -> None:
        for listener in self.listeners:
            listener(key)


async def ensure_group(redis: Any, tenant_id: str, webhook_id: str) -> None:
    try:
        await redis.xgroup_create(
            keys.events(tenant_id), keys.webhook_group(webhook_id), id="$", mkstream=True
        )
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# --- delivery ----------------------------------------------------------------------------------

# Compare-and-set on the lease: only the holder that set it renews or releases it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# Log an attempt (KEYS[2], capped at ARGV[3]) and note the retry state (KEYS[3], ARGV[4..]) only
# while the webhook exists (KEYS[1] field ARGV[1]): a delete racing an attempt leaves no orphans.
_RECORD = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('lpush', KEYS[2], ARGV[2])
redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[3]) - 1)
if #ARGV > 3 then
  redis.call('hset', KEYS[3], 'first_id', ARGV[4], 'first_attempt_ms', ARGV[5], 'attempts', ARGV[6])
end
return 1
"""


def event_payload(entry_id: bytes, fields: Mapping[bytes, bytes]) -> dict[str, Any] | None:
    """One stream entry as the receiver sees it; None for an entry that is not an event."""
    kind = fields.get(b"type", b"").decode()
    if kind not in EVENT_TYPES:
        return None
    try:
        at_ms = int(fields.get(b"at", b""))
    except ValueError:
        return None
    store_id = fields.get(b"store")
    payload: dict[str, Any] = {
        "id": entry_id.decode(),
        "type": kind,
        "zone_id": fields.get(b"zone", b"").decode(),
        "store_id": None if store_id is None else store_id.decode(),
        "device_id": fields.get(b"device", b"").decode(),
        "at": at_ms,
    }
    if kind in OFFER_EVENT_TYPES:
        payload["offer_id"] = fields.get(b"offer", b"").decode()
        payload["issued_id"] = fields.get(b"issued", b"").decode()
    return payload


def backoff_s(timings: WebhookTimings, attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling_ms = min(timings.backoff_cap_ms, timings.backoff_base_ms * 2 ** min(attempt - 1, 40))
    return random.uniform(0, ceiling_ms) / 1000


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until they ended, cancelling again while they run: on Python
    3.11, asyncio.wait_for (inside redis-py's writes) swallows a cancellation that arrives as
    its inner call completes."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)


def _cancel_requested() -> bool:
    """True once this task was asked to stop, even if a library swallowed the CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class Deliveries:
    """One task per cached webhook on this instance; each delivers while it holds the lease."""

    store: Store
    webhooks: Webhooks
    sender: Sender
    settings: Settings
    consumer: str = ""
    _tasks: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)
    _workers: set[asyncio.Task[None]] = field(default_factory=set)
    _closed: bool = False

    def __post_init__(self) -> None:
        # Unique per process and start: a restarted instance finds its old entries by claiming.
        self.consumer = f"{self.settings.instance_id}:{os.getpid()}:{secrets.token_hex(3)}"
        self.timings = self.settings.webhook_timings
        # Below the Redis socket timeout, else an idle XREADGROUP would look like an outage.
        self.block_ms = max(10, min(1000, self.settings.redis_timeout_ms // 2))
        self._renew_lease = self.store.redis.register_script(_RENEW)
        self._release_lease = self.store.redis.register_script(_RELEASE)
        self._record = self.store.redis.register_script(_RECORD)
        self.webhooks.listeners.append(self.refresh)

    def refresh(self, key: Key) -> None:
        """Start or stop the webhook's task to match the cache."""
        if self._closed:
            return
        task = self._tasks.get(key)
        if key in self.webhooks.cached:
            if task is None or task.done():
                self._tasks[key] = asyncio.create_task(
                    self._run(key), name=f"webhook {key[0]}/{key[1]}"
                )
        elif task is not None:
            del self._tasks[key]
            task.cancel()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        self._closed = True
        await stop_tasks([*self._tasks.values(), *self._retiring])
        await stop_tasks(list(self._workers))
        self._tasks.clear()
        self._retiring.clear()

    def _go_on(self, key: Key) -> bool:
        """Whether this webhook's task should keep working; raises CancelledError once it was
        asked to stop (so a swallowed cancellation still ends it)."""
        if self._closed or _cancel_requested():
            raise asyncio.CancelledError
        return key in self.webhooks.cached

    async def _run(self, key: Key) -> None:
        tenant_id, webhook_id = key
        lease = keys.webhook_lease(tenant_id, webhook_id)
        redis = self.store.redis
        while self._go_on(key):
            try:
                token = f"{self.consumer}:{secrets.token_hex(4)}"
                if await redis.set(lease, token, nx=True, px=self.timings.lease_ms):
                    await self._hold(key, token)
                    continue
                # Someone else delivers: look again when its lease would lapse.
                ttl_ms = int(await redis.pttl(lease))
                wait_ms = self.timings.lease_ms if ttl_ms == -1 else max(ttl_ms, 0)
                await asyncio.sleep(
                    min(wait_ms, self.timings.lease_ms) / 1000 + random.random() / 20
                )
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("webhook %s/%s: store trouble (%s); retrying", *key, exc)
                await asyncio.sleep(TROUBLE_PAUSE_S)
            except Exception:
                # Never let a bug end the deliveries of this webhook (or reach the worker).
                log.exception("webhook %s/%s: delivery loop failed; restarting it", *key)
                await asyncio.sleep(TROUBLE_PAUSE_S)

    async def _hold(self, key: Key, token: str) -> None:
        """Deliver while renewing the lease; stop delivering the moment it is lost."""
        lease = keys.webhook_lease(*key)
        work = asyncio.create_task(self._deliver_while_holding(key), name=f"deliver {key}")
        self._workers.add(work)
        work.add_done_callback(self._workers.discard)
        try:
            while self._go_on(key):
                done, _ = await asyncio.wait({work}, timeout=self.timings.lease_ms / 3000)
                if done:
                    work.result()
                    return
                if not await self._renew_lease(keys=[lease], args=[token, self.timings.lease_ms]):
                    log.warning("webhook %s/%s: lease lost; another instance delivers", *key)
                    return
        finally:
            await stop_tasks([work])
            await self._let_go(lease, token)

    async def _let_go(self, lease: str, token: str) -> None:
        """Release the lease so another instance takes over without waiting for it to lapse."""
        try:
            await self._release_lease(keys=[lease], args=[token])
        except (RedisError, OSError) as exc:
            log.warning("releasing %s: %s (it lapses by itself)", lease, exc)

    async def _deliver_while_holding(self, key: Key) -> None:
        tenant_id, webhook_id = key
        stream, group = keys.events(tenant_id), keys.webhook_group(webhook_id)
        redis = self.store.redis
        await self._recover(key)
        while self._go_on(key):
            try:
                reply = await redis.xreadgroup(
                    group, self.consumer, {stream: ">"}, count=MAX_BATCH, block=self.block_ms
                )
            except ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._group_missing(key)
                continue
            for _stream, entries in reply or []:
                if entries:
                    await self._deliver(key, entries, recovered=False)

    async def _recover(self, key: Key) -> None:
        """Claim and send again, oldest first, what earlier holders read and did not finish."""
        tenant_id, webhook_id = key
        stream, group = keys.events(tenant_id), keys.webhook_group(webhook_id)
        redis = self.store.redis
        while self._go_on(key):
            cursor: bytes | str = "0-0"
            try:
                while True:
                    cursor, entries, *_deleted = await redis.xautoclaim(
                        stream,
                        group,
                        self.consumer,
                        min_idle_time=self.timings.claim_idle_ms,
                        start_id=cursor,
                        count=MAX_BATCH,
                    )
                    live = [(i, f) for i, f in entries if f]
                    if len(live) < len(entries):
                        # Redis 6.2 claims entries trimmed from the stream as nil: let them go.
                        await redis.xack(stream, group, *[i for i, f in entries if not f])
                    if live:
                        await self._deliver(key, live, recovered=True)
                    if cursor in (b"0-0", "0-0"):
                        break
                pending = await redis.xpending(stream, group)
            except ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._group_missing(key)
                return
            if not pending["pending"]:
                await self._forget_idle_consumers(stream, group)
                return
            # A holder that let go a moment ago (shutdown) left entries younger than the claim
            # idle time: wait for them rather than send newer events first.
            await asyncio.sleep(min(self.timings.claim_idle_ms, 1000) / 1000)

    async def _forget_idle_consumers(self, stream: str, group: str) -> None:
        """Each process start is a new consumer; drop the old ones once they own nothing."""
        redis = self.store.redis
        for consumer in await redis.xinfo_consumers(stream, group):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else ""
            if name and name != self.consumer and not consumer["pending"]:
                await redis.xgroup_delconsumer(stream, group, name)

    async def _group_missing(self, key: Key) -> None:
        """The group vanished: the webhook was deleted (its task stops soon), or the stream was
        lost (a Redis without persistence restarted): then a new group hears from now on."""
        tenant_id, webhook_id = key
        if await self.store.redis.hexists(keys.webhooks(tenant_id), webhook_id):
            log.warning("webhook %s/%s: consumer group missing; recreated", *key)
            await ensure_group(self.store.redis, tenant_id, webhook_id)
        else:
            await asyncio.sleep(TROUBLE_PAUSE_S)

    async def _deliver(self, key: Key, entries: list[Entry], *, recovered: bool) -> None:
        """Send one batch until a 2xx or the end of the retry window; then acknowledge it."""
        tenant_id, webhook_id = key
        redis = self.store.redis
        retry_key = keys.webhook_retry(tenant_id, webhook_id)
        first_id = entries[0][0].decode()
        attempt, first_attempt_ms = 0, 0
        if recovered:
            # The previous holder's retry clock goes on where it stopped.
            state = await redis.hgetall(retry_key)
            if state.get(b"first_id", b"").decode() == first_id:
                attempt = int(state[b"attempts"])
                first_attempt_ms = int(state[b"first_attempt_ms"])
        while self._go_on(key):
            webhook = self.webhooks.cached.get(key)
            if webhook is None:
                return  # deleted: its group went with it, nothing to acknowledge
            events = [
                payload
                for entry_id, fields in entries
                if (payload := event_payload(entry_id, fields)) is not None
                and payload["type"] in webhook.events
            ]
            if not events:
                await self._ack(key, entries, clear_retry=attempt > 0)
                return
            started_ms = now_ms()
            first_attempt_ms = first_attempt_ms or started_ms
            body = orjson.dumps({"events": events})
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature(webhook.secret, started_ms, body),
                "X-Geoservice-Webhook-Id": webhook_id,
            }
            status: int | None = None
            error: str | None = None
            clock = time.perf_counter()
            try:
                status = await self.sender.post(webhook.url, body, headers)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = describe_failure(exc, self.timings.timeout_s)
            duration_ms = round((time.perf_counter() - clock) * 1000)
            delivered = status is not None and 200 <= status < 300
            if status is not None and not delivered:
                error = f"HTTP {status}"
            give_up = not delivered and (
                now_ms() - first_attempt_ms >= self.timings.give_up_after_s * 1000
            )
            metrics.WEBHOOK_DELIVERIES.labels("sent" if delivered else "failed").inc()
            if attempt:
                metrics.WEBHOOK_DELIVERIES.labels("retried").inc()
            outcome = "delivered" if delivered else "dropped" if give_up else "failed"
            attempt_log = {
                "at": started_ms,
                "status": status,
                "error": error,
                "events": len(events),
                "duration_ms": duration_ms,
                "attempt": attempt + 1,
                "outcome": outcome,
            }
            retry_state: list[str | int] = []
            if outcome == "failed":
                # Kept in Redis so that an instance taking over goes on with this batch's clock.
                retry_state = [first_id, first_attempt_ms, attempt + 1]
            await self._record(
                keys=[keys.webhooks(tenant_id), keys.webhook_log(*key), retry_key],
                args=[webhook_id, orjson.dumps(attempt_log), LOG_LENGTH, *retry_state],
            )
            if delivered:
                done_ms = now_ms()
                for event in events:
                    stream_ms = int(event["id"].split("-", 1)[0])
                    metrics.WEBHOOK_LAG_SECONDS.observe(max(0, done_ms - stream_ms) / 1000)
                await self._ack(key, entries, clear_retry=attempt > 0)
                return
            if give_up:
                metrics.WEBHOOK_DELIVERIES.labels("dropped").inc()
                metrics.WEBHOOK_EVENTS_DROPPED.inc(len(events))
                log.error(
                    "webhook %s/%s: dropped a batch of %d events (%s..%s) after %d attempts "
                    "since %d: %s",
                    *key,
                    len(events),
                    first_id,
                    entries[-1][0].decode(),
                    attempt + 1,
                    first_attempt_ms,
                    error,
                )
                await self._ack(key, entries, clear_retry=True)
                return
            attempt += 1
            pause_s = backoff_s(self.timings, attempt)
            log.warning(
                "webhook %s/%s: attempt %d failed (%s); next in %.1f s",
                *key,
                attempt,
                error,
                pause_s,
            )
            await asyncio.sleep(pause_s)

    async def _ack(self, key: Key, entries: list[Entry], *, clear_retry: bool) -> None:
        tenant_id, webhook_id = key
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.xack(
                keys.events(tenant_id), keys.webhook_group(webhook_id), *[i for i, _ in entries]
            )
            if clear_retry:
                pipe.delete(keys.webhook_retry(tenant_id, webhook_id))
            # A group deleted meanwhile answers NOGROUP: nothing left to acknowledge then.
            await pipe.execute(raise_on_error=False)
