"""Reading the tenant's event stream back, newest first, for the console and other viewers.

The stream (keys.events) is written by stats.record and stats.record_offer; each entry holds
type, zone, device (the pseudonym), at, store and, for offers, offer and issued. Entries of
erased customers are already gone from it (customers.erase), so reading it shows nothing an
export would not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from geoservice import keys
from geoservice.errors import FieldProblem, ValidationFailed
from geoservice.paging import decode_cursor, encode_cursor
from geoservice.store import Store

# A zone filter has to look at entries of other zones too; one request reads at most this many
# so a quiet zone in a busy tenant costs a bounded amount (the cursor then goes on from there).
MAX_SCANNED = 10_000
_CHUNK = 500
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    id: str  # the stream entry id
    type: str
    zone_id: str
    store_id: str | None
    device: str
    at_ms: int
    offer_id: str | None
    issued_id: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "type": self.type,
            "zone_id": self.zone_id,
            "store_id": self.store_id,
            "device": self.device,
            "at": self.at_ms,
            "offer_id": self.offer_id,
            "issued_id": self.issued_id,
        }


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return None if value is None or value == b"" else value.decode()


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> LoggedEvent:
    at = fields.get(b"at", b"0")
    return LoggedEvent(
        id=entry_id.decode(),
        type=_text(fields, b"type") or "",
        zone_id=_text(fields, b"zone") or "",
        store_id=_text(fields, b"store"),
        device=_text(fields, b"device") or "",
        at_ms=int(at) if at.isdigit() else 0,
        offer_id=_text(fields, b"offer"),
        issued_id=_text(fields, b"issued"),
    )


def _start_after(cursor: str | None) -> str:
    if cursor is None:
        return "+"
    entry_id = decode_cursor(cursor)
    if not _STREAM_ID.match(entry_id):
        raise ValidationFailed.of([FieldProblem("cursor", "not a cursor this service handed out")])
    return "(" + entry_id


async def recent(
    store: Store, tenant_id: str, limit: int, zone_id: str | None, cursor: str | None
) -> tuple[list[LoggedEvent], str | None]:
    """Up to `limit` events, newest first, optionally of one zone; and the cursor of the next
    page (None once the stream's oldest entry has been read)."""
    stream = keys.events(tenant_id)
    found: list[LoggedEvent] = []
    start = _start_after(cursor)
    scanned = 0
    while True:
        count = _CHUNK if zone_id is not None else limit - len(found) + 1
        entries = await store.redis.xrevrange(stream, max=start, min="-", count=count)
        for entry_id, fields in entries:
            scanned += 1
            event = _event(entry_id, fields)
            if zone_id is not None and event.zone_id != zone_id:
                if scanned >= MAX_SCANNED:
                    return found, encode_cursor(event.id)
                continue
            if len(found) == limit:
                # One more than asked exists: the page ends at the previous one.
                return found, encode_cursor(found[-1].id)
            found.append(event)
            if scanned >= MAX_SCANNED:
                return found, encode_cursor(event.id)
        if len(entries) < count:
            return found, None
        start = "(" + entries[-1][0].decode()
