"""Zones: the retailer's store circles and mall polygons, kept in Redis and mirrored into an
in-memory H3 index per tenant on every instance.

Redis is the truth (one hash of zone records and one sorted set of ids per tenant, both under the
tenant's hash tag so a bulk import is one atomic transaction, on a cluster too). The in-memory
directory is a cache rebuilt at start-up and refreshed from the change feed.

Writes are shielded from cancellation: a request cancelled half-way (client gone, deadline) still
finishes the write, this instance's copy and the change-feed entry, so no instance is left behind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import shapely

from geoservice import changes, keys, paging
from geoservice.errors import FieldProblem, NotFound
from geoservice.geometry import (
    FieldError,
    GeometryError,
    ZoneShape,
    area_m2,
    default_timezone,
    representative_point,
    shape_from_geojson,
    shape_to_geojson,
)
from geoservice.index import (
    MAX_CELLS_PER_ZONE,
    Circle,
    PreparedZones,
    ZoneIndex,
    estimate_cell_count,
)
from geoservice.store import Store

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_DWELL_S = 300
EARTH_RADIUS_M = 6_371_008.8
# Ids announced per change-feed entry for a bulk import (keeps entries small).
FEED_IDS_PER_ENTRY = 500


@dataclass(frozen=True, slots=True)
class Zone:
    zone_id: str
    name: str
    geometry: dict[str, Any]  # GeoJSON geometry as stored and returned
    store_id: str | None = None
    timezone: str = "UTC"
    dwell_s: int = DEFAULT_DWELL_S
    radius_m: float | None = None
    opening_hours: dict[str, list[list[str]]] | None = None
    enabled: bool = True
    area_m2: float = 0.0
    updated_at_ms: int = 0
    version: str = ""

    def to_feature(self) -> dict[str, Any]:
        properties: dict[str, Any] = {"name": self.name}
        if self.store_id is not None:
            properties["store_id"] = self.store_id
        if self.radius_m is not None:
            properties["radius_m"] = self.radius_m
        properties["timezone"] = self.timezone
        properties["dwell_s"] = self.dwell_s
        if self.opening_hours is not None:
            properties["opening_hours"] = self.opening_hours
        properties["enabled"] = self.enabled
        properties["area_m2"] = round(self.area_m2, 1)
        properties["updated_at"] = self.updated_at_ms
        return {
            "type": "Feature",
            "id": self.zone_id,
            "geometry": self.geometry,
            "properties": properties,
        }

    def pack(self) -> bytes:
        record = {
            "n": self.name,
            "g": self.geometry,
            "s": self.store_id,
            "tz": self.timezone,
            "d": self.dwell_s,
            "r": self.radius_m,
            "h": self.opening_hours,
            "e": self.enabled,
            "a": self.area_m2,
            "u": self.updated_at_ms,
            "v": self.version,
        }
        packed: bytes = msgpack.packb(record, use_bin_type=True)
        return packed

    @classmethod
    def unpack(cls, zone_id: str, raw: bytes) -> Zone:
        r = msgpack.unpackb(raw, raw=False)
        return cls(
            zone_id=zone_id,
            name=r["n"],
            geometry=r["g"],
            store_id=r["s"],
            timezone=r["tz"],
            dwell_s=r["d"],
            radius_m=r["r"],
            opening_hours=r["h"],
            enabled=r["e"],
            area_m2=r["a"],
            updated_at_ms=r["u"],
            version=r["v"],
        )


@dataclass(frozen=True, slots=True)
class ZoneDraft:
    """A zone as the client sent it, its fields already type-checked at the edge."""

    zone_id: str
    name: str
    geometry: object
    radius_m: object | None
    store_id: str | None
    timezone: str | None
    dwell_s: int | None
    opening_hours: dict[str, list[list[str]]] | None
    enabled: bool | None


def build_zone(draft: ZoneDraft, now_ms: int) -> tuple[Zone, ZoneShape]:
    """Geometry checks, the cell-count guard and computed fields; GeometryError lists problems."""
    shape = shape_from_geojson(draft.geometry, draft.radius_m)
    cells = estimate_cell_count(shape)
    if cells > MAX_CELLS_PER_ZONE:
        raise GeometryError(
            [
                FieldError(
                    "geometry",
                    f"this zone would need about {cells} index cells "
                    f"(at most {MAX_CELLS_PER_ZONE}): simplify or split it",
                )
            ]
        )
    timezone = draft.timezone
    if timezone is None:
        lat, lon = representative_point(shape)
        timezone = default_timezone(lat, lon)
    zone = Zone(
        zone_id=draft.zone_id,
        name=draft.name,
        # The canonical form: altitudes dropped, a naive antimeridian crossing stored split.
        geometry=shape_to_geojson(shape),
        store_id=draft.store_id,
        timezone=timezone,
        dwell_s=DEFAULT_DWELL_S if draft.dwell_s is None else draft.dwell_s,
        radius_m=float(draft.radius_m) if isinstance(draft.radius_m, int | float) else None,
        opening_hours=draft.opening_hours,
        enabled=True if draft.enabled is None else draft.enabled,
        area_m2=area_m2(shape),
        updated_at_ms=now_ms,
        version=secrets.token_hex(6),
    )
    return zone, shape


def problems_of(error: GeometryError, prefix: str = "") -> list[FieldProblem]:
    return [
        FieldProblem(f"{prefix}{e.field}" if prefix else e.field, e.message) for e in error.errors
    ]


DEFAULT_EXIT_MARGIN_M = 30.0
_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LON_EQUATOR = 111_320.0


def _haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def outer_shape(shape: ZoneShape, margin_m: float) -> ZoneShape:
    """A superset of every point within margin_m of the zone: candidates for "still near"."""
    if isinstance(shape, Circle):
        return Circle(shape.lat, shape.lon, min(shape.radius_m + margin_m, 60_000.0))
    if margin_m <= 0:
        return shape
    _, min_lat, _, max_lat = shape.bounds
    dlat = margin_m / _M_PER_DEG_LAT
    cos_lat = max(0.01, math.cos(math.radians(min(89.0, max(abs(min_lat), abs(max_lat)) + dlat))))
    # Generous by a quarter: the exact distance test below decides.
    grown = shape.buffer(1.25 * max(dlat, margin_m / (_M_PER_DEG_LON_EQUATOR * cos_lat)))
    clipped = grown.intersection(shapely.box(-180.0, -90.0, 180.0, 90.0))
    if isinstance(clipped, shapely.Polygon | shapely.MultiPolygon):
        return clipped
    return shape


def distance_outside_m(shape: ZoneShape, lat: float, lon: float) -> float:
    """Metres from the point to the zone (0 inside); polygons in a local equirectangular frame,
    which is exact enough for margins of metres to a few hundred metres."""
    if isinstance(shape, Circle):
        return max(0.0, _haversine_m(lat, lon, shape.lat, shape.lon) - shape.radius_m)
    kx = _M_PER_DEG_LON_EQUATOR * max(0.01, math.cos(math.radians(lat)))
    local = shapely.transform(shape, lambda xy: (xy - (lon, lat)) * (kx, _M_PER_DEG_LAT))
    return float(local.distance(shapely.Point(0.0, 0.0)))


def grown_index(shapes: Iterable[tuple[str, ZoneShape]], exit_margin_m: float) -> ZoneIndex:
    """An index of these shapes grown by the exit margin (see outer_shape). Touches nothing
    shared, so it may be built off the event loop."""
    index = ZoneIndex()
    index.put_many((zone_id, outer_shape(shape, exit_margin_m)) for zone_id, shape in shapes)
    return index


# From this many zones, the grown-shape index for a new exit margin is built in a thread beside
# the event loop instead of on it (~20 us per zone: 2 s at 100,000 circles, for which every
# request of the worker would wait and many pass their deadline); the tenant's pings use the
# previous margin until it is ready. Below it the rebuild takes under ~40 ms and runs at once.
BACKGROUND_REGROW_ZONES = 2_000
# From this many zones in one change (an import's request, a change-feed entry of one), their
# covers are computed in a thread (ZoneDirectory.apply_many_beside); below, at once (~1 ms).
BACKGROUND_APPLY_ZONES = 50
# ... and they are applied this many at a time, one turn of the event loop apart (~20 ms each).
APPLY_STEP_ZONES = 2_000


@dataclass(frozen=True, slots=True)
class PreparedChange:
    """A bulk change of one tenant's zones with its covers computed (TenantZones.prepare)."""

    disabled: list[str]  # ids of zones stored disabled: out of the indexes
    live: list[tuple[str, ZoneShape]]
    records: list[Zone]  # without their geometry
    inside: PreparedZones
    outer: PreparedZones
    exit_margin_m: float  # what `outer` was grown by


@dataclass
class TenantZones:
    """One tenant's zones as the hot path needs them: the index, each zone's record and shape,
    and an index of the shapes grown by the exit margin for the "still near" test."""

    exit_margin_m: float = DEFAULT_EXIT_MARGIN_M
    index: ZoneIndex = field(default_factory=ZoneIndex)
    outer: ZoneIndex = field(default_factory=ZoneIndex)
    zones: dict[str, Zone] = field(default_factory=dict)
    shapes: dict[str, ZoneShape] = field(default_factory=dict)
    # Counts changes of the zones: a grown index built from an older snapshot is out of date.
    generation: int = 0

    def put_many(self, items: list[tuple[Zone, ZoneShape]]) -> None:
        self.commit(self.prepare(items))

    def prepare(self, items: list[tuple[Zone, ZoneShape]]) -> PreparedChange:
        """The work of put_many that changes nothing (the covers, the records): safe to run
        in another thread while the zones serve lookups; `commit` applies it."""
        live = [(z.zone_id, s) for z, s in items if z.enabled]
        return PreparedChange(
            [z.zone_id for z, _ in items if not z.enabled],
            live,
            # The hot path needs the zone's facts, not its coordinates (the shape has them,
            # GET reads Redis): at 10^5 zones the GeoJSON lists would cost tens of megabytes.
            [replace(zone, geometry={}) for zone, _ in items],
            self.index.prepare_many(live),
            self.outer.prepare_many((i, outer_shape(s, self.exit_margin_m)) for i, s in live),
            self.exit_margin_m,
        )

    def commit(self, change: PreparedChange) -> None:
        self.generation += 1
        for zone_id in change.disabled:
            self.index.remove(zone_id)
            self.outer.remove(zone_id)
            self.shapes.pop(zone_id, None)
        self.index.commit(change.inside)
        outer = change.outer
        if change.exit_margin_m != self.exit_margin_m:  # the margin changed since: grow again
            margin = self.exit_margin_m
            outer = self.outer.prepare_many((i, outer_shape(s, margin)) for i, s in change.live)
        self.outer.commit(outer)
        self.shapes.update(change.live)
        for record in change.records:
            self.zones[record.zone_id] = record

    def remove(self, zone_id: str) -> None:
        self.generation += 1
        self.index.remove(zone_id)
        self.outer.remove(zone_id)
        self.zones.pop(zone_id, None)
        self.shapes.pop(zone_id, None)

    def near(
        self, outer_ids: list[str], inside_ids: list[str], lat: float, lon: float
    ) -> list[str]:
        """Of the zones whose outer shape holds the point, those within the exit margin that do
        not contain it. A circle's outer shape is the circle grown by the margin (radius plus
        margin stays under outer_shape's cap: API limits), which the index tests exactly, so
        only polygons (buffered generously) need the distance computed."""
        shapes = self.shapes
        return [
            zone_id
            for zone_id in outer_ids
            if zone_id not in inside_ids
            and (
                type(shape := shapes[zone_id]) is Circle
                or distance_outside_m(shape, lat, lon) <= self.exit_margin_m
            )
        ]

    def with_margin(self, exit_margin_m: float, outer: ZoneIndex | None = None) -> TenantZones:
        """The same zones under another exit margin. Only the grown shapes depend on it: the
        zone index, records and shapes are taken over (this object is dropped). `outer`: the
        grown index, already built from these zones (ZoneDirectory builds large ones in a
        thread), else built here."""
        if outer is None:
            outer = grown_index(self.shapes.items(), exit_margin_m)
        return TenantZones(
            exit_margin_m, self.index, outer, self.zones, self.shapes, self.generation
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # called outside the service's event loop (scripts, tests)
        return None


def _defer_merges(tenant: TenantZones, loop: asyncio.AbstractEventLoop | None) -> None:
    """On the event loop, a large index's table rebuilds go to a thread (_merge_beside): a
    10,000-zone import into 100,000 zones rebuilds both indexes of the tenant, ~1 s of work
    that would hold up every request of the worker. Elsewhere they run in the call."""
    for index in (tenant.index, tenant.outer):
        index.defer_merges = loop is not None


def _merge_beside(tenant: TenantZones, loop: asyncio.AbstractEventLoop | None) -> None:
    if loop is not None:
        for index in (tenant.index, tenant.outer):
            _start_merge(index, loop)


def _change(tenant: TenantZones, change: Callable[[], object]) -> None:
    """Every change to a tenant's indexes: on the event loop, a table rebuild it calls for is
    built in a thread (_merge_beside), elsewhere in the call."""
    loop = _running_loop()
    _defer_merges(tenant, loop)
    change()
    _merge_beside(tenant, loop)


def _start_merge(index: ZoneIndex, loop: asyncio.AbstractEventLoop) -> None:
    """Builds the index's wanted merge in a thread and installs it on the loop; changes made
    meanwhile go to the overlay and are carried over (ZoneIndex.finish_merge)."""
    job = index.start_merge()
    if job is None:
        return
    build = loop.run_in_executor(None, job.build)

    def built(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            index.finish_merge(job, None)
            return
        error = done.exception()
        if error is not None:
            log.error("zone index merge failed (the next change retries): %r", error)
            index.finish_merge(job, None)
            return
        if index.finish_merge(job, done.result()):
            _start_merge(index, loop)  # the changes made meanwhile may call for the next one

    build.add_done_callback(built)


class ZoneDirectory:
    """Every tenant's zones in memory. Mutations are synchronous, so a lookup running on the
    event loop never sees a zone half-applied (record and index change together)."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantZones] = {}
        # Grown indexes being built in a thread: tenant -> (exit margin, its build)
        self.regrowing: dict[str, tuple[float, asyncio.Future[ZoneIndex]]] = {}

    def apply(self, tenant_id: str, zone: Zone, shape: ZoneShape) -> None:
        self.apply_many(tenant_id, [(zone, shape)])

    def apply_many(self, tenant_id: str, items: list[tuple[Zone, ZoneShape]]) -> None:
        tenant = self.tenants.setdefault(tenant_id, TenantZones())
        _change(tenant, functools.partial(tenant.put_many, items))

    async def apply_many_beside(self, tenant_id: str, items: list[tuple[Zone, ZoneShape]]) -> None:
        """apply_many, with a large batch's covers computed in a thread (an import's 10,000
        zones: ~0.5 s of work that would hold up every request of the worker). It lands after
        them in steps of APPLY_STEP_ZONES, a turn of the event loop apart (committing 10,000
        zones at once holds the loop for ~0.1 s); callers keep their changes in order (Zones
        does)."""
        loop = asyncio.get_running_loop()
        if len(items) < BACKGROUND_APPLY_ZONES:
            self.apply_many(tenant_id, items)
            return
        tenant = self.tenants.setdefault(tenant_id, TenantZones())
        steps = [items[i : i + APPLY_STEP_ZONES] for i in range(0, len(items), APPLY_STEP_ZONES)]
        prepare = tenant.prepare
        prepared = await loop.run_in_executor(None, lambda: [prepare(step) for step in steps])
        for number, change in enumerate(prepared):
            if number:
                await asyncio.sleep(0)  # the requests waiting meanwhile go first
            # the tenant's object now: a new exit margin replaces it (sharing the zone index)
            tenant = self.tenants.setdefault(tenant_id, TenantZones())
            _change(tenant, functools.partial(tenant.commit, change))

    def remove(self, tenant_id: str, zone_id: str) -> None:
        tenant = self.tenants.get(tenant_id)
        if tenant is not None:
            _change(tenant, functools.partial(tenant.remove, zone_id))

    def is_live(self, tenant_id: str, zone_id: str) -> bool:
        """The zone exists and is enabled (a deleted or disabled zone fires no events)."""
        tenant = self.tenants.get(tenant_id)
        return tenant is not None and zone_id in tenant.shapes

    def zone(self, tenant_id: str, zone_id: str) -> Zone | None:
        tenant = self.tenants.get(tenant_id)
        return tenant.zones.get(zone_id) if tenant else None

    def locate(
        self, tenant_id: str, lat: float, lon: float, exit_margin_m: float
    ) -> tuple[list[Zone], list[str]]:
        """Zones containing the point, and ids of the zones within exit_margin_m of it that do
        not contain it (a device inside those has not left yet)."""
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return [], []
        if tenant.exit_margin_m != exit_margin_m:
            tenant = self._regrow(tenant_id, tenant, exit_margin_m)
        inside_ids = tenant.index.lookup(lat, lon)
        near = tenant.near(tenant.outer.lookup(lat, lon), inside_ids, lat, lon)
        return [tenant.zones[zone_id] for zone_id in inside_ids], near

    def _regrow(self, tenant_id: str, tenant: TenantZones, exit_margin_m: float) -> TenantZones:
        """The tenant's zones to answer with now that its exit margin changed: rebuilt at once
        when small, else the current ones while a thread builds the grown index."""
        loop = _running_loop()
        if loop is None or len(tenant.shapes) < BACKGROUND_REGROW_ZONES:
            fresh = self.tenants[tenant_id] = tenant.with_margin(exit_margin_m)
            return fresh
        running = self.regrowing.get(tenant_id)
        if running is None or running[0] != exit_margin_m:
            snapshot = list(tenant.shapes.items())
            build = loop.run_in_executor(None, grown_index, snapshot, exit_margin_m)
            entry = (exit_margin_m, build)
            self.regrowing[tenant_id] = entry
            generation = tenant.generation

            def regrown(done: asyncio.Future[ZoneIndex]) -> None:
                superseded = self.regrowing.get(tenant_id) is not entry  # by a later margin
                if not superseded:
                    del self.regrowing[tenant_id]
                if done.cancelled():
                    return
                error = done.exception()  # retrieved even when superseded, or asyncio logs it
                if superseded:
                    return
                if error is not None:
                    log.error("grown index for tenant %s failed: %r", tenant_id, error)
                    return  # the next ping tries again
                if self.tenants.get(tenant_id) is not tenant or tenant.generation != generation:
                    return  # zones changed meanwhile: the next ping builds from the new ones
                self.tenants[tenant_id] = tenant.with_margin(exit_margin_m, done.result())

            build.add_done_callback(regrown)
        return tenant

    def version(self, tenant_id: str, zone_id: str) -> str | None:
        tenant = self.tenants.get(tenant_id)
        zone = tenant.zones.get(zone_id) if tenant else None
        return zone.version if zone else None

    def lookup(self, tenant_id: str, lat: float, lon: float) -> list[Zone]:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return []
        return [tenant.zones[zone_id] for zone_id in tenant.index.lookup(lat, lon)]

    def zone_count(self) -> int:
        return sum(len(t.zones) for t in self.tenants.values())


class Zones:
    """Zone records in Redis, the local directory kept in step, and the change feed."""

    def __init__(self, store: Store, directory: ZoneDirectory) -> None:
        self.store = store
        self.directory = directory
        # The directory takes the changes in the order Redis took them, although a large one
        # waits for its covers in a thread: each change queues here (FIFO) right after its
        # Redis write, with no await in between.
        self._in_order = asyncio.Lock()

    async def put(self, tenant_id: str, zone: Zone, shape: ZoneShape) -> bool:
        # Shielded: a write a cancelled request began is finished whole (see the module doc).
        return await asyncio.shield(self._put(tenant_id, zone, shape))

    async def _put(self, tenant_id: str, zone: Zone, shape: ZoneShape) -> bool:
        """Create or replace; True when created."""
        added = await paging.store_records(
            self.store.redis,
            keys.zone_ids(tenant_id),
            keys.zones(tenant_id),
            {zone.zone_id: zone.pack()},
        )
        async with self._in_order:
            self.directory.apply(tenant_id, zone, shape)
        await changes.publish(self.store.redis, "zone", tenant_id, zone.zone_id)
        return bool(added)

    async def put_many(
        self, tenant_id: str, items: list[tuple[Zone, ZoneShape]]
    ) -> tuple[int, int]:
        # Shielded: a write a cancelled request began is finished whole (see the module doc).
        return await asyncio.shield(self._put_many(tenant_id, items))

    async def _put_many(
        self, tenant_id: str, items: list[tuple[Zone, ZoneShape]]
    ) -> tuple[int, int]:
        """All-or-nothing bulk write (one MULTI on the tenant's slot); (created, updated)."""
        if not items:
            return 0, 0
        added = await paging.store_records(
            self.store.redis,
            keys.zone_ids(tenant_id),
            keys.zones(tenant_id),
            {z.zone_id: z.pack() for z, _ in items},
        )
        async with self._in_order:
            await self.directory.apply_many_beside(tenant_id, items)
        ids = [z.zone_id for z, _ in items]
        for start in range(0, len(ids), FEED_IDS_PER_ENTRY):
            chunk = ",".join(ids[start : start + FEED_IDS_PER_ENTRY])
            await changes.publish(self.store.redis, "zone", tenant_id, chunk)
        return int(added), len(items) - int(added)

    async def get(self, tenant_id: str, zone_id: str) -> Zone:
        raw = await self.store.redis.hget(keys.zones(tenant_id), zone_id)
        if raw is None:
            raise NotFound(f"zone {zone_id!r} does not exist")
        return Zone.unpack(zone_id, raw)

    async def delete(self, tenant_id: str, zone_id: str) -> None:
        # Shielded: a write a cancelled request began is finished whole (see the module doc).
        return await asyncio.shield(self._delete(tenant_id, zone_id))

    async def _delete(self, tenant_id: str, zone_id: str) -> None:
        removed = await paging.remove_record(
            self.store.redis, keys.zone_ids(tenant_id), keys.zones(tenant_id), zone_id
        )
        if not removed:
            raise NotFound(f"zone {zone_id!r} does not exist")
        async with self._in_order:
            self.directory.remove(tenant_id, zone_id)
        await changes.publish(self.store.redis, "zone", tenant_id, zone_id)

    async def page(
        self, tenant_id: str, cursor: str | None, limit: int
    ) -> tuple[list[Zone], str | None]:
        found, next_cursor = await paging.page(
            self.store.redis, keys.zone_ids(tenant_id), keys.zones(tenant_id), cursor, limit
        )
        return [Zone.unpack(zone_id, raw) for zone_id, raw in found], next_cursor

    async def load_tenant(self, tenant_id: str) -> int:
        """Rebuild one tenant's directory entry from Redis (start-up and resynchronisation).
        The new entry is built in a thread (seconds for 10^5 zones) while the old one serves;
        changes wait meanwhile, so none lands in the old entry and is lost with it."""
        async with self._in_order:
            items: list[tuple[Zone, ZoneShape]] = []
            async for zone_id, raw in self.store.redis.hscan_iter(
                keys.zones(tenant_id), count=1000
            ):
                zone = Zone.unpack(zone_id.decode(), raw)
                items.append((zone, shape_from_geojson(zone.geometry, zone.radius_m)))
            previous = self.directory.tenants.get(tenant_id)
            fresh = TenantZones(previous.exit_margin_m if previous else DEFAULT_EXIT_MARGIN_M)
            await asyncio.get_running_loop().run_in_executor(None, fresh.put_many, items)
            # Swap the whole tenant at once: lookups see the old or the new set, never a mix.
            self.directory.tenants[tenant_id] = fresh
            return len(items)

    async def refresh(self, tenant_id: str, zone_ids: Iterable[str]) -> None:
        """Apply a change-feed entry: re-read the named zones, skipping what we wrote ourselves."""
        ids = list(zone_ids)
        if not ids:
            return
        records = await self.store.redis.hmget(keys.zones(tenant_id), ids)
        async with self._in_order:
            changed: list[tuple[Zone, ZoneShape]] = []
            for zone_id, raw in zip(ids, records, strict=True):
                if raw is None:
                    self.directory.remove(tenant_id, zone_id)
                    continue
                zone = Zone.unpack(zone_id, raw)
                if self.directory.version(tenant_id, zone_id) == zone.version:
                    continue
                changed.append((zone, shape_from_geojson(zone.geometry, zone.radius_m)))
            if changed:
                await self.directory.apply_many_beside(tenant_id, changed)

    async def apply_change(self, change: changes.Change) -> None:
        if change.kind == "zone":
            await self.refresh(change.tenant_id, change.item_id.split(","))


def now_ms() -> int:
    return int(time.time() * 1000)
