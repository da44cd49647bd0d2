"""Offer tokens: what the phone shows at the till. A compact msgpack payload (key id, tenant,
issued offer id, issuing instance, expiry) signed with HMAC-SHA256; only the service can mint
one, keys rotate through GEOSERVICE_SIGNING_KEYS (the first signs, all verify)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import msgpack

from geoservice.settings import SigningKey

TOKEN_VERSION = 1
# 128 bits of HMAC-SHA256: forging needs 2^128 tries; keeps the token short enough for a QR code.
SIGNATURE_BYTES = 16
MAX_TOKEN_CHARS = 512


class InvalidToken(ValueError):
    """Forged, garbled, or signed with a key this service does not hold."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    kid: str
    tenant_id: str
    issued_id: str
    instance_id: str
    expires_at_ms: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _signature(secret: bytes, payload_b64: str) -> bytes:
    return hmac.new(secret, payload_b64.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES]


def sign(key: SigningKey, claims: TokenClaims) -> str:
    payload = msgpack.packb(
        [
            TOKEN_VERSION,
            key.kid,
            claims.tenant_id,
            claims.issued_id,
            claims.instance_id,
            claims.expires_at_ms,
        ],
        use_bin_type=True,
    )
    payload_b64 = _b64(payload)
    return f"{payload_b64}.{_b64(_signature(key.secret, payload_b64))}"


def verify(keys: tuple[SigningKey, ...], token: str) -> TokenClaims:
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise InvalidToken("not a token of this service")
    payload_b64, signature_b64 = token.split(".")
    try:
        payload = _unb64(payload_b64)
        signature = _unb64(signature_b64)
        version, kid, tenant_id, issued_id, instance_id, expires_at_ms = msgpack.unpackb(
            payload, raw=False
        )
    except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
        raise InvalidToken("not a token of this service") from None
    if version != TOKEN_VERSION or not all(
        isinstance(v, str) for v in (kid, tenant_id, issued_id, instance_id)
    ):
        raise InvalidToken("not a token of this service")
    key = next((k for k in keys if k.kid == kid), None)
    if key is None or not hmac.compare_digest(signature, _signature(key.secret, payload_b64)):
        raise InvalidToken("the token's signature does not verify")
    if not isinstance(expires_at_ms, int):
        raise InvalidToken("not a token of this service")
    return TokenClaims(kid, tenant_id, issued_id, instance_id, expires_at_ms)
