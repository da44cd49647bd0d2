"""The zone directory's answer for a ping, against a brute-force check: the zones containing the
point, and the zones within the tenant's exit margin of it that do not contain it (a device
inside one of those has not left yet)."""

from __future__ import annotations

import asyncio
import math
import threading

import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geoservice import index as index_module
from geoservice import keys
from geoservice import zones as zones_module
from geoservice.index import Circle, ZoneShape
from geoservice.store import Store
from geoservice.zones import (
    TenantZones,
    Zone,
    ZoneDirectory,
    ZoneDraft,
    Zones,
    build_zone,
    distance_outside_m,
)
from tests.geo_reference import brute, destination, haversine_m

CENTRE = (47.37, 8.54)


def _offset(lat: float, lon: float, metres: float, bearing_deg: float) -> tuple[float, float]:
    return destination(lat, lon, metres, math.radians(bearing_deg))


circles = st.lists(
    st.tuples(
        st.floats(-1500, 1500),  # metres north of the centre
        st.floats(-1500, 1500),  # metres east
        st.floats(10, 800),  # radius
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    circles=circles,
    margin=st.sampled_from([0.0, 5.0, 30.0, 250.0]),
    probes=st.lists(
        # half a metre or more off the flipping edge: floating point cannot blur that
        st.tuples(st.integers(0, 11), st.floats(0, 360), st.floats(0.5, 3), st.booleans()),
        min_size=1,
        max_size=20,
    ),
)
def test_inside_and_near_match_brute_force(
    circles: list[tuple[float, float, float]],
    margin: float,
    probes: list[tuple[int, float, float, bool]],
) -> None:
    directory = ZoneDirectory()
    directory.tenants["t"] = TenantZones(exit_margin_m=margin)
    shapes: dict[str, ZoneShape] = {}
    for n, (north, east, radius) in enumerate(circles):
        lat, lon = _offset(*CENTRE, math.hypot(north, east), math.degrees(math.atan2(east, north)))
        shapes[f"c{n}"] = Circle(lat, lon, radius)
    # one polygon too: its near test is the exact distance, not the grown index
    shapes["p"] = shapely.Polygon(
        [(8.535, 47.365), (8.545, 47.365), (8.545, 47.372), (8.535, 47.372), (8.535, 47.365)]
    )
    directory.apply_many("t", [(Zone(zone_id, zone_id, {}), s) for zone_id, s in shapes.items()])

    for which, bearing, off, outward in probes:
        delta = off if outward else -off
        # Points a few metres either side of a circle's edge grown by the margin, where the
        # "near" answer flips.
        circle = shapes[f"c{which % len(circles)}"]
        assert isinstance(circle, Circle)
        lat, lon = _offset(circle.lat, circle.lon, circle.radius_m + margin + delta, bearing)
        inside, near = directory.locate("t", lat, lon, margin)
        expected_inside = brute(shapes, lat, lon)
        expected_near = {
            zone_id
            for zone_id, shape in shapes.items()
            if zone_id not in expected_inside
            and (
                haversine_m(lat, lon, shape.lat, shape.lon) - shape.radius_m
                if isinstance(shape, Circle)
                else distance_outside_m(shape, lat, lon)
            )
            <= margin
        }
        assert {z.zone_id for z in inside} == expected_inside
        assert set(near) == expected_near


def test_a_new_exit_margin_changes_near_and_not_inside() -> None:
    """The tenant's exit margin changed (PATCH /v1/tenant): the next ping sees the new one."""
    directory = ZoneDirectory()
    circle = Circle(*CENTRE, 100.0)
    directory.apply_many("t", [(Zone("c", "c", {}), circle)])
    inside_point = _offset(*CENTRE, 50.0, 90.0)
    point_150 = _offset(*CENTRE, 250.0, 90.0)  # 150 m beyond the edge
    assert directory.locate("t", *point_150, 30.0) == ([], [])
    assert directory.locate("t", *point_150, 200.0) == ([], ["c"])
    inside, near = directory.locate("t", *inside_point, 200.0)
    assert [z.zone_id for z in inside] == ["c"]
    assert near == []
    assert directory.locate("t", *point_150, 100.0) == ([], [])
    # zones added after the change are in both indexes
    directory.apply_many("t", [(Zone("d", "d", {}), Circle(*_offset(*CENTRE, 400.0, 90.0), 100.0))])
    assert directory.locate("t", *point_150, 100.0) == ([], ["d"])
    inside, _ = directory.locate("t", *_offset(*CENTRE, 400.0, 90.0), 100.0)
    assert [z.zone_id for z in inside] == ["d"]


async def test_a_large_tenants_new_margin_is_built_beside_the_event_loop(monkeypatch) -> None:
    """From BACKGROUND_REGROW_ZONES zones the grown index for a new margin is built in a thread:
    pings meanwhile answer with the previous margin; zones changed during the build, or a
    margin changed again, make it start over instead of swapping in a stale index."""
    monkeypatch.setattr(zones_module, "BACKGROUND_REGROW_ZONES", 2)
    directory = ZoneDirectory()
    far = _offset(*CENTRE, 5000.0, 0.0)
    directory.apply_many(
        "t",
        [(Zone("c", "c", {}), Circle(*CENTRE, 100.0)), (Zone("f", "f", {}), Circle(*far, 50.0))],
    )
    point_150 = _offset(*CENTRE, 250.0, 90.0)  # 150 m beyond c's edge
    previous = directory.tenants["t"].exit_margin_m
    assert previous < 150

    async def built() -> None:
        while directory.regrowing:
            await next(iter(directory.regrowing.values()))[1]
            await asyncio.sleep(0)  # the swap runs in the build's done callback

    assert directory.locate("t", *point_150, 200.0) == ([], [])  # still the previous margin
    assert directory.regrowing["t"][0] == 200.0
    await built()
    assert directory.tenants["t"].exit_margin_m == 200.0
    assert directory.locate("t", *point_150, 200.0) == ([], ["c"])

    # A zone added while the margin's index is being built: that build is not swapped in.
    d_centre = _offset(*CENTRE, 400.0, 90.0)
    assert directory.locate("t", *point_150, 100.0) == ([], ["c"])  # 200 m still
    directory.apply_many("t", [(Zone("d", "d", {}), Circle(*d_centre, 100.0))])
    await built()
    assert directory.tenants["t"].exit_margin_m == 200.0  # refused: zones changed meanwhile
    directory.locate("t", *point_150, 100.0)  # builds again, from the zones as they are now
    await built()
    assert directory.tenants["t"].exit_margin_m == 100.0
    assert directory.locate("t", *point_150, 100.0) == ([], ["d"])

    # Margins changed twice before a build finished: the last one wins.
    directory.locate("t", *point_150, 300.0)
    directory.locate("t", *point_150, 20.0)
    await built()
    assert directory.tenants["t"].exit_margin_m == 20.0
    assert directory.locate("t", *point_150, 20.0) == ([], [])


async def test_a_large_tenants_index_merges_beside_the_event_loop(monkeypatch) -> None:
    """On the event loop, the table rebuilds that a stream of zone changes calls for run in a
    thread (ZoneIndex.MergeJob.build), both indexes of the tenant, and land by themselves;
    the answers match brute force all along."""
    monkeypatch.setattr(index_module, "DEFERRED_MERGE_MIN_ENTRIES", 0)
    built_in: list[int] = []
    build = index_module.MergeJob.build

    def recorded_build(job: index_module.MergeJob) -> object:
        built_in.append(threading.get_ident())
        return build(job)

    monkeypatch.setattr(index_module.MergeJob, "build", recorded_build)
    directory = ZoneDirectory()
    shapes: dict[str, ZoneShape] = {}
    for chunk in range(12):  # an import in chunks, as POST /v1/zones/import sends them
        items = []
        for i in range(400):
            zone_id = f"z{chunk}-{i}"
            shape = Circle(*_offset(*CENTRE, 30.0 * i, 30.0 * chunk), 40.0)
            shapes[zone_id] = shape
            items.append((Zone(zone_id, zone_id, {}), shape))
        directory.apply_many("t", items)
        await asyncio.sleep(0.01)  # the loop goes on serving meanwhile
    tenant = directory.tenants["t"]
    for _ in range(500):  # the last merges land
        if not any(i._merging or i.merge_wanted for i in (tenant.index, tenant.outer)):
            break
        await asyncio.sleep(0.01)
    assert built_in, "no merge ran"
    assert threading.get_ident() not in built_in
    for bearing in range(0, 360, 7):
        for metres in (7.0, 101.0, 2003.0, 9001.0):  # no point exactly on a rim
            lat, lon = _offset(*CENTRE, metres, bearing)
            inside, _ = directory.locate("t", lat, lon, tenant.exit_margin_m)
            assert {z.zone_id for z in inside} == brute(shapes, lat, lon)


def _circle_zone(zone_id: str, lat: float, lon: float, radius_m: float) -> tuple[Zone, Circle]:
    draft = ZoneDraft(
        zone_id, zone_id, {"type": "Point", "coordinates": [lon, lat]}, radius_m,
        None, "UTC", None, None, None,
    )  # fmt: skip
    zone, shape = build_zone(draft, 0)
    assert isinstance(shape, Circle)
    return zone, shape


async def test_a_large_change_is_covered_in_a_thread_and_lands_in_redis_order(
    settings, redis, monkeypatch
) -> None:
    """An import's covers are computed in a thread; a zone written to Redis after the import
    but applied while those covers are computed must not be overwritten by the import's older
    version when it lands: the directory ends as Redis is."""
    monkeypatch.setattr(zones_module, "BACKGROUND_APPLY_ZONES", 2)
    prepared_in: dict[int, int] = {}  # zones -> thread
    preparing, go_on = threading.Event(), threading.Event()
    prepare = TenantZones.prepare

    def recorded_prepare(tenant: TenantZones, items: list) -> object:
        prepared_in[len(items)] = threading.get_ident()
        if len(items) > 1:  # the import: held until the later write has arrived
            preparing.set()
            assert go_on.wait(10)
        return prepare(tenant, items)

    monkeypatch.setattr(TenantZones, "prepare", recorded_prepare)
    store = Store.open(settings)
    directory = ZoneDirectory()
    zones = Zones(store, directory)
    imported = [
        _circle_zone(f"z{i}", *_offset(*CENTRE, 500.0 * i, 90.0), 100.0) for i in range(300)
    ]
    importing = asyncio.ensure_future(zones.put_many("t", imported))
    for _ in range(1000):  # until the import is in Redis and its covers are being computed
        if preparing.is_set():
            break
        await asyncio.sleep(0.005)
    moved, moved_shape = _circle_zone("z0", *_offset(*CENTRE, 3000.0, 0.0), 100.0)
    putting = asyncio.ensure_future(zones.put("t", moved, moved_shape))
    await asyncio.sleep(0.1)  # Redis takes it after the import; its apply arrives meanwhile
    go_on.set()
    await asyncio.gather(importing, putting)
    assert prepared_in[300] != threading.get_ident()  # the import's covers, in a thread
    assert prepared_in[1] == threading.get_ident()  # one zone: at once
    stored = Zone.unpack("z0", await redis.hget(keys.zones("t"), "z0"))
    assert stored.version == moved.version
    assert directory.version("t", "z0") == moved.version
    assert [z.zone_id for z in directory.lookup("t", *_offset(*CENTRE, 3000.0, 0.0))] == ["z0"]
    assert directory.lookup("t", *CENTRE) == []
    assert {z.zone_id for z in directory.lookup("t", *_offset(*CENTRE, 1000.0, 90.0))} == {"z2"}
    await store.close()
