"""Redemption at the till: verify the offer token, then mark the issued offer redeemed exactly
once (one script on the issued offer's key). Never retried blindly: a redemption whose answer
was lost is repeated by the client and then answered 409 with the first redemption."""

from __future__ import annotations

import math
from typing import Any

from geoservice import keys, stats
from geoservice.errors import Conflict, FieldProblem, Gone, RateLimited, ValidationFailed
from geoservice.settings import Settings
from geoservice.store import Store
from geoservice.tokens import InvalidToken, verify


def _not_ours(reason: str) -> ValidationFailed:
    return ValidationFailed.of([FieldProblem("token", reason)])


def _text(record: dict[bytes, bytes], name: str) -> str:
    return record.get(name.encode(), b"").decode()


def issued_view(record: dict[bytes, bytes], issued_id: str) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": issued_id,
        "offer_id": _text(record, "offer_id"),
        "title": _text(record, "title"),
        "zone_id": _text(record, "zone_id"),
        "store_id": _text(record, "store_id") or None,
        "issued_at": int(record.get(b"issued_at", b"0")),
        "expires_at": int(record.get(b"expires_at", b"0")),
    }
    if b"redeemed_at" in record:
        view["redeemed_at"] = int(record[b"redeemed_at"])
        view["redeemed_store_id"] = _text(record, "redeemed_store") or None
    return view


async def redeem(
    store: Store, settings: Settings, tenant_id: str, token: str, store_id: str, now_ms: int
) -> dict[str, Any]:
    # Every attempt counts, good token or bad: guessing tokens and farming offers are slow.
    retry_after_ms = await store.run_script(
        "rate_limit",
        [keys.redemption_rate(tenant_id)],
        [now_ms, settings.redemption_rate_per_s, settings.redemption_burst],
    )
    if retry_after_ms:
        raise RateLimited(
            "too many redemption attempts", retry_after_s=max(1, math.ceil(retry_after_ms / 1000))
        )
    try:
        claims = verify(settings.signing_keys, token)
    except InvalidToken as exc:
        raise _not_ours(str(exc)) from None
    if claims.tenant_id != tenant_id:
        # Said exactly like a forgery: another tenant's token reveals nothing.
        raise _not_ours("the token's signature does not verify")
    if now_ms >= claims.expires_at_ms:
        raise Gone(f"the offer expired at {claims.expires_at_ms}")
    key = keys.issued_offer(claims.issued_id)
    reply = await store.run_script("redeem", [key], [now_ms, store_id])
    verdict = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    if verdict == "gone":
        raise Gone("the offer is no longer held (expired or erased)")
    record = await store.redis.hgetall(key)
    if record.get(b"tenant", b"").decode() != tenant_id:
        raise _not_ours("the token's signature does not verify")
    view = issued_view(record, claims.issued_id)
    if verdict == "again":
        raise Conflict(
            "the offer was redeemed before",
            extra={
                "first_redemption": {
                    "redeemed_at": view["redeemed_at"],
                    "store_id": view["redeemed_store_id"],
                }
            },
        )
    await stats.record_offer(
        store,
        tenant_id,
        _text(record, "device"),
        stats.OfferEvent(
            "offer_redeemed",
            view["offer_id"],
            claims.issued_id,
            view["zone_id"],
            store_id,
            now_ms,
            tuple(s for s in _text(record, "segments").split(",") if s),
        ),
    )
    return view
