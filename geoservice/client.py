"""A small typed client of the geoservice API, meant to be copied into an SDK or a back office.

It needs only aiohttp and the standard library (nothing else from this package), so this one
file can be lifted as it is. Two parts:

- `GeoserviceClient`: one method per call (pings, interests, zone import, redemption, recent
  events) returning dataclasses, raising `ApiError` with the service's problem document.
- `PingBuffer`: what a phone SDK does with fixes. `record()` keeps each fix with the monotonic
  time it was taken; `flush()` sends what is buffered in order, in requests of at most 500, each
  fix with `age_ms` measured on the monotonic clock, so the service dates it correctly even when
  the phone's wall clock is wrong or the fix waited hours for a network. Offline, or answered
  429/503, the fixes stay buffered and `flush()` honours `Retry-After` before trying again.

    async with GeoserviceClient("https://geo.example.com", "pk_...") as client:
        buffer = PingBuffer(client, "device-42", consent=Consent(location=True, marketing=True))
        buffer.record(47.3779, 8.5403, accuracy_m=12)
        outcome = await buffer.flush()
        for offer in (o for result in outcome.results for o in result.offers):
            print(offer.title, offer.token)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MAX_PINGS_PER_REQUEST = 500
# The service ignores fixes more than 24 h old ("too_old"): a buffer drops them instead of
# sending them.
MAX_FIX_AGE_S = 24 * 3600.0
# When a 429 or 503 comes without a usable Retry-After.
DEFAULT_RETRY_AFTER_S = 1.0


class ApiError(Exception):
    """The service answered with an error: `problem` is its RFC 9457 document."""

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after_s: float | None):
        self.status = status
        self.problem = dict(problem)
        self.retry_after_s = retry_after_s
        super().__init__(f"{status}: {self.detail}")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or "")

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        """(field, message) of every field the service named, e.g. ("pings[3].lat", "...")."""
        return [(str(e["field"]), str(e["message"])) for e in self.problem.get("errors") or []]


class Unreachable(Exception):
    """No answer: no network, the service is down or did not answer in time."""


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # enter | exit | dwell
    zone_id: str
    store_id: str | None
    at: int  # epoch ms: the ping's time

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Event:
        return cls(str(raw["type"]), str(raw["zone_id"]), raw.get("store_id"), int(raw["at"]))


@dataclass(frozen=True, slots=True)
class IssuedOffer:
    id: str
    offer_id: str
    title: str
    body: str | None
    product_ids: tuple[str, ...]
    zone_id: str
    store_id: str | None
    issued_at: int
    expires_at: int
    token: str  # show it at the till (a QR code, a barcode)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> IssuedOffer:
        return cls(
            id=str(raw["id"]),
            offer_id=str(raw["offer_id"]),
            title=str(raw["title"]),
            body=raw.get("body"),
            product_ids=tuple(raw.get("product_ids") or ()),
            zone_id=str(raw["zone_id"]),
            store_id=raw.get("store_id"),
            issued_at=int(raw["issued_at"]),
            expires_at=int(raw["expires_at"]),
            token=str(raw["token"]),
        )


@dataclass(frozen=True, slots=True)
class Ignored:
    index: int  # position of the fix in its request
    reason: str  # stale | future | too_old | inaccurate


@dataclass(frozen=True, slots=True)
class PingResult:
    events: tuple[Event, ...]
    offers: tuple[IssuedOffer, ...]
    ignored: tuple[Ignored, ...]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> PingResult:
        return cls(
            events=tuple(Event.of(e) for e in raw["events"]),
            offers=tuple(IssuedOffer.of(o) for o in raw["offers"]),
            ignored=tuple(Ignored(int(i["index"]), str(i["reason"])) for i in raw["ignored"]),
        )


@dataclass(frozen=True, slots=True)
class ImportResult:
    created: int
    updated: int


@dataclass(frozen=True, slots=True)
class Redemption:
    id: str
    offer_id: str
    title: str
    zone_id: str
    store_id: str | None
    issued_at: int
    expires_at: int
    redeemed_at: int
    redeemed_store_id: str | None


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    id: str
    type: str  # enter | exit | dwell | offer_issued | offer_redeemed
    zone_id: str
    store_id: str | None
    device: str  # the device's pseudonym
    at: int
    offer_id: str | None
    issued_id: str | None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: tuple[LoggedEvent, ...]
    next_cursor: str | None


# ---- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fix:
    """One location fix as the API takes it; `ts` is the phone's wall clock (epoch ms)."""

    lat: float
    lon: float
    accuracy_m: float
    ts: int
    speed_mps: float | None = None
    heading: float | None = None
    age_ms: int | None = None

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "lat": self.lat,
            "lon": self.lon,
            "accuracy_m": self.accuracy_m,
            "ts": self.ts,
        }
        for name in ("speed_mps", "heading", "age_ms"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body


@dataclass(frozen=True, slots=True)
class Consent:
    location: bool
    marketing: bool | None = None

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"location": self.location}
        if self.marketing is not None:
            body["marketing"] = self.marketing
        return body


@dataclass(frozen=True, slots=True)
class Interest:
    """What the shop or newsletter saw a customer do."""

    customer_id: str
    kind: str  # view | newsletter_click | cart | purchase
    ts: int
    product_id: str | None = None
    categories: tuple[str, ...] = ()

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "customer_id": self.customer_id,
            "kind": self.kind,
            "ts": self.ts,
            "categories": list(self.categories),
        }
        if self.product_id is not None:
            body["product_id"] = self.product_id
        return body


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: geoservice sends seconds, a proxy might not


class GeoserviceClient:
    """One key, one base URL. Use `async with`, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __aenter__(self) -> GeoserviceClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for 204); ApiError for an error answer, Unreachable when
        there is none."""
        if self._session is None:
            # Created here, inside the event loop that will use it.
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        try:
            async with self._session.request(
                method, self.base_url + path, json=body, params=params, headers=headers
            ) as response:
                if response.status == 204:
                    return None
                payload = await response.json(content_type=None)
                if response.status >= 400:
                    problem = payload if isinstance(payload, dict) else {"detail": str(payload)}
                    raise ApiError(response.status, problem, _retry_after(response.headers))
                return payload
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise Unreachable(f"{method} {path}: {exc!r}") from exc
        except (aiohttp.ContentTypeError, ValueError) as exc:
            raise Unreachable(f"{method} {path}: the answer was not JSON ({exc})") from exc

    async def send_pings(
        self,
        device_id: str,
        fixes: Sequence[Fix],
        *,
        customer_id: str | None = None,
        consent: Consent | None = None,
    ) -> PingResult:
        """POST /v1/pings (SDK key): 1..500 fixes of one device."""
        body: dict[str, Any] = {"device_id": device_id, "pings": [f.wire() for f in fixes]}
        if customer_id is not None:
            body["customer_id"] = customer_id
        if consent is not None:
            body["consent"] = consent.wire()
        return PingResult.of(await self.request("POST", "/v1/pings", body=body))

    async def add_interests(self, events: Sequence[Interest]) -> int:
        """POST /v1/interests (secret key): how many were kept (older than the lookback: not)."""
        answer = await self.request(
            "POST", "/v1/interests", body={"events": [e.wire() for e in events]}
        )
        return int(answer["accepted"])

    async def import_zones(self, collection: Mapping[str, Any]) -> ImportResult:
        """POST /v1/zones/import (secret key): a GeoJSON FeatureCollection, all or nothing."""
        answer = await self.request("POST", "/v1/zones/import", body=collection)
        return ImportResult(int(answer["created"]), int(answer["updated"]))

    async def redeem(self, token: str, store_id: str) -> Redemption:
        """POST /v1/redemptions (secret key): ApiError 409 if redeemed before, 410 if expired."""
        answer = await self.request(
            "POST", "/v1/redemptions", body={"token": token, "store_id": store_id}
        )
        return Redemption(
            id=str(answer["id"]),
            offer_id=str(answer["offer_id"]),
            title=str(answer["title"]),
            zone_id=str(answer["zone_id"]),
            store_id=answer.get("store_id"),
            issued_at=int(answer["issued_at"]),
            expires_at=int(answer["expires_at"]),
            redeemed_at=int(answer["redeemed_at"]),
            redeemed_store_id=answer.get("redeemed_store_id"),
        )

    async def recent_events(
        self, *, limit: int = 100, zone_id: str | None = None, cursor: str | None = None
    ) -> EventPage:
        """GET /v1/events (secret key): newest first."""
        params = {"limit": str(limit)}
        if zone_id is not None:
            params["zone_id"] = zone_id
        if cursor is not None:
            params["cursor"] = cursor
        answer = await self.request("GET", "/v1/events", params=params)
        return EventPage(
            events=tuple(
                LoggedEvent(
                    id=str(e["id"]),
                    type=str(e["type"]),
                    zone_id=str(e["zone_id"]),
                    store_id=e.get("store_id"),
                    device=str(e["device"]),
                    at=int(e["at"]),
                    offer_id=e.get("offer_id"),
                    issued_id=e.get("issued_id"),
                )
                for e in answer["events"]
            ),
            next_cursor=answer.get("next_cursor"),
        )


# ---- the SDK's offline buffer ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Buffered:
    lat: float
    lon: float
    accuracy_m: float
    wall_ms: int
    taken_at: float  # monotonic seconds
    speed_mps: float | None
    heading: float | None


@dataclass(frozen=True, slots=True)
class FlushOutcome:
    results: tuple[PingResult, ...] = ()
    sent: int = 0  # fixes the service took (each request answered 200)
    pending: int = 0  # still buffered
    dropped: int = 0  # too old to send (over 24 h)
    offline: bool = False  # the service could not be reached
    retry_after_s: float | None = None  # 429/503, or still waiting for an earlier Retry-After

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(e for r in self.results for e in r.events)

    @property
    def offers(self) -> tuple[IssuedOffer, ...]:
        return tuple(o for r in self.results for o in r.offers)


@dataclass
class PingBuffer:
    """Fixes of one device, kept until the service has them.

    Sends oldest first, each request after the previous one's answer: the service ignores a fix
    that is not newer than the last one it processed for the device. `consent`, if given, goes
    with the first request that reaches the service (a new install's answer to the prompt).
    The buffer holds at most `max_fixes`; past that the oldest are dropped, since the newest say
    where the phone is. Errors other than 429/503 and "unreachable" (say a 403 because
    location consent is missing) raise `ApiError` and keep the buffer: fix the cause, or
    `clear()` it.
    """

    client: GeoserviceClient
    device_id: str
    customer_id: str | None = None
    consent: Consent | None = None
    max_fixes: int = 10_000
    # Injectable for tests; production uses the real clocks.
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _fixes: deque[_Buffered] = field(default_factory=deque, init=False, repr=False)
    _not_before: float = field(default=0.0, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __len__(self) -> int:
        return len(self._fixes)

    def record(
        self,
        lat: float,
        lon: float,
        accuracy_m: float,
        *,
        speed_mps: float | None = None,
        heading: float | None = None,
    ) -> None:
        """Keep a fix taken now."""
        if len(self._fixes) >= self.max_fixes:
            self._fixes.popleft()
        self._fixes.append(
            _Buffered(
                lat,
                lon,
                accuracy_m,
                int(self.wall_clock() * 1000),
                self.clock(),
                speed_mps,
                heading,
            )
        )

    def clear(self) -> None:
        self._fixes.clear()

    def waiting_s(self) -> float:
        """Seconds until the service said to come back (0: now)."""
        return max(0.0, self._not_before - self.clock())

    def _drop_too_old(self) -> int:
        now = self.clock()
        dropped = 0
        while self._fixes and now - self._fixes[0].taken_at > MAX_FIX_AGE_S:
            self._fixes.popleft()
            dropped += 1
        return dropped

    async def flush(self) -> FlushOutcome:
        """Send everything buffered, in order, in requests of at most 500 fixes."""
        async with self._lock:
            dropped = self._drop_too_old()
            waiting = self.waiting_s()
            if waiting > 0:
                return FlushOutcome(pending=len(self), dropped=dropped, retry_after_s=waiting)
            results: list[PingResult] = []
            sent = 0
            while self._fixes:
                batch = [self._fixes[i] for i in range(min(MAX_PINGS_PER_REQUEST, len(self)))]
                # Measured right before sending: the service subtracts it from its receive time.
                now = self.clock()
                fixes = [
                    Fix(
                        f.lat,
                        f.lon,
                        f.accuracy_m,
                        f.wall_ms,
                        f.speed_mps,
                        f.heading,
                        age_ms=max(0, int((now - f.taken_at) * 1000)),
                    )
                    for f in batch
                ]
                try:
                    result = await self.client.send_pings(
                        self.device_id, fixes, customer_id=self.customer_id, consent=self.consent
                    )
                except Unreachable:
                    return FlushOutcome(
                        tuple(results), sent, len(self), dropped, offline=True, retry_after_s=None
                    )
                except ApiError as exc:
                    if exc.status not in (429, 503):
                        raise
                    retry = (
                        exc.retry_after_s
                        if exc.retry_after_s is not None
                        else DEFAULT_RETRY_AFTER_S
                    )
                    self._not_before = self.clock() + retry
                    return FlushOutcome(tuple(results), sent, len(self), dropped, False, retry)
                self.consent = None  # on record now: later requests need not carry it
                for _ in batch:
                    self._fixes.popleft()
                sent += len(batch)
                results.append(result)
            return FlushOutcome(tuple(results), sent, 0, dropped)
