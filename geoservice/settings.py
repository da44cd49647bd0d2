"""The one settings object: built from the environment (and CLI flags) once at start-up.

Every value is checked here so a bad one stops the process with one clear line instead of
failing later inside a request.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A bad configuration value; the message is the one line shown to the operator."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class WebhookTimings:
    """Pacing of webhook deliveries: production values; tests shorten them."""

    timeout_s: float = 10.0
    backoff_base_ms: int = 1_000
    backoff_cap_ms: int = 300_000
    give_up_after_s: float = 86_400.0
    # The lease outlives a stalled holder by this much; pending entries idle this long are
    # claimed by the next holder (never longer than the lease, so a crash is always covered).
    lease_ms: int = 15_000
    claim_idle_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    operator_token: str = ""
    signing_keys: tuple[SigningKey, ...] = ()
    pseudonym_key: bytes = b""
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    instance_id: str = field(default_factory=lambda: secrets.token_hex(4))
    max_body_bytes: int = 1_048_576
    max_import_body_bytes: int = 33_554_432
    max_in_flight: int = 512
    redis_timeout_ms: int = 1_000
    request_deadline_ms: int = 2_000
    breaker_failures: int = 5
    breaker_open_ms: int = 1_000
    shutdown_grace_s: float = 20.0
    ping_rate_per_s: float = 1.0
    ping_burst: int = 10
    redemption_rate_per_s: float = 20.0
    redemption_burst: int = 100
    change_poll_block_ms: int = 500
    log_level: str = "INFO"
    # Hostnames and CIDR networks webhooks may reach although they are internal.
    webhook_allow: tuple[str, ...] = ()
    webhook_timings: WebhookTimings = field(default_factory=WebhookTimings)
    # True when the keys above were generated for this run because the embedded, throw-away
    # store is in use; the CLI says so on start-up.
    generated_secrets: tuple[str, ...] = ()

    @property
    def redis_is_cluster(self) -> bool:
        return (self.redis_url or "").split("://", 1)[0].endswith("+cluster")

    @property
    def active_signing_key(self) -> SigningKey:
        return self.signing_keys[0]

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


ENV_VARS: dict[str, str] = {
    "REDIS_URL": "Redis to use: redis://, rediss://, unix:// or redis+cluster://h:p[,h:p]. "
    "Unset: start a private redis-server (the embedded default).",
    "GEOSERVICE_OPERATOR_TOKEN": "Operator token for tenant management (>= 16 chars). "
    "Required with REDIS_URL.",
    "GEOSERVICE_SIGNING_KEYS": "Offer token keys, 'kid:secret[,kid:secret...]', first one signs. "
    "Required with REDIS_URL.",
    "GEOSERVICE_PSEUDONYM_KEY": "Key of the keyed hash pseudonymizing device ids (>= 16 chars). "
    "Required with REDIS_URL.",
    "GEOSERVICE_HOST": "Listen address (default 127.0.0.1).",
    "GEOSERVICE_PORT": "Listen port (default 8080).",
    "GEOSERVICE_WORKERS": "Worker processes sharing the port (default 1).",
    "GEOSERVICE_INSTANCE_ID": "Name of this instance in offer tokens and logs (default random).",
    "GEOSERVICE_MAX_BODY_BYTES": "Largest request body (default 1048576).",
    "GEOSERVICE_MAX_IMPORT_BODY_BYTES": "Largest body of bulk imports (default 33554432).",
    "GEOSERVICE_MAX_IN_FLIGHT": "Requests in flight per worker before answering 503 (default 512).",
    "GEOSERVICE_REDIS_TIMEOUT_MS": "Socket timeout for Redis commands (default 1000).",
    "GEOSERVICE_REQUEST_DEADLINE_MS": "Longest a request may take before it is answered 503 "
    "(default 2000; bulk imports get 15 times as long).",
    "GEOSERVICE_BREAKER_FAILURES": "Store failures in a row that open the circuit (default 5).",
    "GEOSERVICE_BREAKER_OPEN_MS": "How long an open circuit answers 503 at once (default 1000).",
    "GEOSERVICE_SHUTDOWN_GRACE_S": "Time in-flight requests get on SIGTERM (default 20).",
    "GEOSERVICE_PING_RATE_PER_S": "Sustained ping requests per device per second (default 1).",
    "GEOSERVICE_PING_BURST": "Burst of ping requests per device (default 10).",
    "GEOSERVICE_REDEMPTION_RATE_PER_S": "Redemption attempts per tenant per second, good or "
    "bad tokens alike (default 20): stops guessing and offer farming.",
    "GEOSERVICE_REDEMPTION_BURST": "Burst of redemption attempts per tenant (default 100).",
    "GEOSERVICE_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR (default INFO).",
    "GEOSERVICE_WEBHOOK_ALLOW": "Hostnames and CIDR networks webhooks may reach although they "
    "are loopback, private or otherwise internal, comma-separated (default none).",
}


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range ({low}..{high})")
    return value


def parse_signing_keys(raw: str) -> tuple[SigningKey, ...]:
    keys: list[SigningKey] = []
    for item in raw.split(","):
        kid, sep, secret = item.strip().partition(":")
        if not sep or not kid or not secret:
            raise SettingsError("GEOSERVICE_SIGNING_KEYS must be 'kid:secret[,kid:secret...]'")
        if not kid.isalnum() or len(kid) > 16:
            raise SettingsError(
                f"GEOSERVICE_SIGNING_KEYS: key id {kid!r} must be 1..16 letters/digits"
            )
        if len(secret) < 16:
            raise SettingsError(
                f"GEOSERVICE_SIGNING_KEYS: secret of {kid!r} is shorter than 16 chars"
            )
        if any(k.kid == kid for k in keys):
            raise SettingsError(f"GEOSERVICE_SIGNING_KEYS: key id {kid!r} appears twice")
        keys.append(SigningKey(kid, secret.encode()))
    return tuple(keys)


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*$")


def parse_webhook_allow(raw: str) -> tuple[str, ...]:
    entries: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            entries.append(str(ipaddress.ip_network(item, strict=False)))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.match(item):
            raise SettingsError(
                f"GEOSERVICE_WEBHOOK_ALLOW: {item!r} is neither a hostname nor a CIDR network"
            )
        entries.append(item.lower())
    return tuple(entries)


def validate_redis_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        raise SettingsError(
            f"REDIS_URL={url!r}: scheme must be redis, rediss, unix or redis+cluster"
        )
    return url


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    redis_url = env.get("REDIS_URL") or None
    if redis_url is not None:
        validate_redis_url(redis_url)
    generated: list[str] = []

    operator_token = env.get("GEOSERVICE_OPERATOR_TOKEN", "")
    signing_raw = env.get("GEOSERVICE_SIGNING_KEYS", "")
    pseudonym_raw = env.get("GEOSERVICE_PSEUDONYM_KEY", "")
    if redis_url is not None:
        # A persistent store outlives this process: secrets made up now would orphan its data.
        for name, value in (
            ("GEOSERVICE_OPERATOR_TOKEN", operator_token),
            ("GEOSERVICE_SIGNING_KEYS", signing_raw),
            ("GEOSERVICE_PSEUDONYM_KEY", pseudonym_raw),
        ):
            if not value:
                raise SettingsError(f"{name} is required when REDIS_URL is set")
    if not operator_token:
        operator_token = secrets.token_urlsafe(24)
        generated.append("GEOSERVICE_OPERATOR_TOKEN")
    if len(operator_token) < 16:
        raise SettingsError("GEOSERVICE_OPERATOR_TOKEN must be at least 16 characters")
    if not signing_raw:
        signing_raw = "dev:" + secrets.token_urlsafe(32)
        generated.append("GEOSERVICE_SIGNING_KEYS")
    if not pseudonym_raw:
        pseudonym_raw = secrets.token_urlsafe(32)
        generated.append("GEOSERVICE_PSEUDONYM_KEY")
    if len(pseudonym_raw) < 16:
        raise SettingsError("GEOSERVICE_PSEUDONYM_KEY must be at least 16 characters")

    log_level = env.get("GEOSERVICE_LOG_LEVEL", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(
            f"GEOSERVICE_LOG_LEVEL={log_level!r}: use DEBUG, INFO, WARNING or ERROR"
        )
    instance_id = env.get("GEOSERVICE_INSTANCE_ID") or secrets.token_hex(4)
    if not instance_id.replace("-", "").isalnum() or len(instance_id) > 32:
        raise SettingsError("GEOSERVICE_INSTANCE_ID must be 1..32 letters, digits or '-'")

    return Settings(
        redis_url=redis_url,
        operator_token=operator_token,
        signing_keys=parse_signing_keys(signing_raw),
        pseudonym_key=pseudonym_raw.encode(),
        host=env.get("GEOSERVICE_HOST", "127.0.0.1"),
        port=_int(env, "GEOSERVICE_PORT", 8080, 0, 65535),
        workers=_int(env, "GEOSERVICE_WORKERS", 1, 1, 256),
        instance_id=instance_id,
        max_body_bytes=_int(env, "GEOSERVICE_MAX_BODY_BYTES", 1_048_576, 1024, 1 << 30),
        max_import_body_bytes=_int(
            env, "GEOSERVICE_MAX_IMPORT_BODY_BYTES", 33_554_432, 1024, 1 << 31
        ),
        max_in_flight=_int(env, "GEOSERVICE_MAX_IN_FLIGHT", 512, 1, 1_000_000),
        redis_timeout_ms=_int(env, "GEOSERVICE_REDIS_TIMEOUT_MS", 1_000, 10, 60_000),
        request_deadline_ms=_int(env, "GEOSERVICE_REQUEST_DEADLINE_MS", 2_000, 50, 600_000),
        breaker_failures=_int(env, "GEOSERVICE_BREAKER_FAILURES", 5, 1, 1_000_000),
        breaker_open_ms=_int(env, "GEOSERVICE_BREAKER_OPEN_MS", 1_000, 10, 600_000),
        shutdown_grace_s=_float(env, "GEOSERVICE_SHUTDOWN_GRACE_S", 20.0, 0.0, 3600.0),
        ping_rate_per_s=_float(env, "GEOSERVICE_PING_RATE_PER_S", 1.0, 0.001, 1e6),
        ping_burst=_int(env, "GEOSERVICE_PING_BURST", 10, 1, 1_000_000),
        redemption_rate_per_s=_float(env, "GEOSERVICE_REDEMPTION_RATE_PER_S", 20.0, 0.001, 1e6),
        redemption_burst=_int(env, "GEOSERVICE_REDEMPTION_BURST", 100, 1, 1_000_000),
        log_level=log_level,
        webhook_allow=parse_webhook_allow(env.get("GEOSERVICE_WEBHOOK_ALLOW", "")),
        generated_secrets=tuple(generated),
    )
