"""Property tests: ZoneIndex.lookup / lookup_many against brute force (shapely planar
containment for polygons, haversine for circles) over all zones."""

from __future__ import annotations

import math

import h3.api.basic_int as h3
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from geoservice import index as index_module
from geoservice.index import (
    MAX_CELLS_PER_ZONE,
    Circle,
    ZoneIndex,
    ZoneShape,
    ZoneTooLargeError,
    cover,
    estimate_cell_count,
    latlng_to_cells,
)
from tests.geo_reference import brute, destination

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- brute force (tests/geo_reference.py) ---------------------------------------------------


def check(idx: ZoneIndex, zones: dict[str, ZoneShape], pts: list[tuple[float, float]]) -> int:
    """Assert exact agreement for every point (single and batch); returns points inside."""
    lats = np.array([p[0] for p in pts])
    lons = np.array([p[1] for p in pts])
    batch = idx.lookup_many(lats, lons)
    assert len(batch) == len(pts)
    inside = 0
    for (lat, lon), b in zip(pts, batch, strict=True):
        want = brute(zones, lat, lon)
        inside += bool(want)
        got = idx.lookup(lat, lon)
        assert len(got) == len(set(got)), (lat, lon, got)
        assert set(got) == want, (lat, lon, sorted(set(got) ^ want))
        assert sorted(b) == sorted(got), (lat, lon)
    return inside


def rim_points(
    rng: np.random.Generator, zones: dict[str, ZoneShape], per_zone: int
) -> list[tuple[float, float]]:
    """Points 1 m inside and 1 m outside circle rims and polygon edges."""
    pts: list[tuple[float, float]] = []
    for s in zones.values():
        if isinstance(s, Circle):
            for _ in range(per_zone):
                b = rng.uniform(0, 2 * math.pi)
                pts.append(destination(s.lat, s.lon, s.radius_m - 1.0, b))
                pts.append(destination(s.lat, s.lon, s.radius_m + 1.0, b))
            continue
        for poly in s.geoms if isinstance(s, MultiPolygon) else [s]:
            xy = np.asarray(poly.exterior.coords)
            for _ in range(per_zone):
                i = int(rng.integers(0, len(xy) - 1))
                (x0, y0), (x1, y1) = xy[i], xy[i + 1]
                t = rng.uniform(0.05, 0.95)
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                # normal of the edge in lon/lat; 1 m in degrees is about 9e-6
                nx, ny = -(y1 - y0), x1 - x0
                n = math.hypot(nx, ny) or 1.0
                for sgn in (1.0, -1.0):
                    off = sgn * 1.0 / 111_195.0
                    lat = y + off * ny / n
                    lon = x + off * nx / n
                    if -90 <= lat <= 90 and -180 <= lon <= 180:
                        pts.append((lat, lon))
    return pts


def star_polygon(
    rng: np.random.Generator, lat: float, lon: float, radius_deg: float, n: int
) -> Polygon:
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius_deg * rng.uniform(0.3, 1.0, n)
    coslat = max(math.cos(math.radians(lat)), 0.05)
    poly = Polygon(np.c_[lon + r * np.cos(ang) / coslat, lat + r * np.sin(ang)])
    return poly if poly.is_valid else shapely.convex_hull(poly)


def random_zones(
    rng: np.random.Generator, lat0: float, lon0: float, n_circles: int, n_polys: int
) -> dict[str, ZoneShape]:
    zones: dict[str, ZoneShape] = {}
    for i in range(n_circles):
        radius = float(np.exp(rng.uniform(math.log(10), math.log(50_000))))
        zones[f"c{i}"] = Circle(
            float(lat0 + rng.normal(0, 0.2)), float(lon0 + rng.normal(0, 0.3)), radius
        )
    for i in range(n_polys):
        size = float(np.exp(rng.uniform(math.log(0.0005), math.log(0.3))))
        lat, lon = float(lat0 + rng.normal(0, 0.2)), float(lon0 + rng.normal(0, 0.3))
        kind = i % 3
        if kind == 0:
            zones[f"p{i}"] = star_polygon(rng, lat, lon, size, int(rng.integers(3, 40)))
        elif kind == 1:
            pts = rng.normal(0, size, (12, 2)) + np.array([lon, lat])
            zones[f"p{i}"] = shapely.convex_hull(shapely.MultiPoint(pts))
        else:
            a = star_polygon(rng, lat, lon, size, 8)
            b = star_polygon(rng, lat + 3 * size, lon + 3 * size, size / 2, 6)
            mp = MultiPolygon([a, b])
            zones[f"p{i}"] = mp if mp.is_valid else a
    return zones


def sample_points(
    rng: np.random.Generator, lat0: float, lon0: float, n: int, spread: float
) -> list[tuple[float, float]]:
    lat = np.clip(lat0 + rng.normal(0, spread, n), -90, 90)
    lon = (lon0 + rng.normal(0, spread * 1.5, n) + 540) % 360 - 180
    return list(zip(lat.tolist(), lon.tolist(), strict=True))


# --- properties ------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    lat0=st.floats(-70, 70),
    lon0=st.floats(-170, 170),
    bulk=st.booleans(),
)
def test_random_zones_match_brute_force(seed: int, lat0: float, lon0: float, bulk: bool) -> None:
    rng = np.random.default_rng(seed)
    zones = random_zones(rng, lat0, lon0, n_circles=25, n_polys=10)
    idx = ZoneIndex()
    if bulk:
        idx.put_many(zones.items())
    else:
        for zid, s in zones.items():
            idx.put(zid, s)
    assert len(idx) == len(zones)
    pts = sample_points(rng, lat0, lon0, 300, 0.3) + rim_points(rng, zones, 3)
    inside = check(idx, zones, pts)
    assert inside > 0


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_southern_hemisphere_dense_overlaps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    zones: dict[str, ZoneShape] = {}
    for i in range(150):
        zones[f"c{i}"] = Circle(
            float(rng.uniform(-34.0, -33.9)),
            float(rng.uniform(151.1, 151.25)),
            float(rng.uniform(50, 500)),
        )
    for i in range(20):
        zones[f"p{i}"] = star_polygon(
            rng, float(rng.uniform(-34, -33.9)), float(rng.uniform(151.1, 151.25)), 0.01, 12
        )
    idx = ZoneIndex()
    idx.put_many(zones.items())
    pts = [
        (float(a), float(b))
        for a, b in zip(
            rng.uniform(-34.0, -33.9, 400), rng.uniform(151.1, 151.25, 400), strict=True
        )
    ]
    assert check(idx, zones, pts + rim_points(rng, zones, 1)) > 10


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    radius_m=st.floats(1_000, 50_000),
    lat=st.floats(89.5, 89.99),
    south=st.booleans(),
)
def test_circle_containing_pole(seed: int, radius_m: float, lat: float, south: bool) -> None:
    rng = np.random.default_rng(seed)
    sign = -1.0 if south else 1.0
    c = Circle(sign * lat, float(rng.uniform(-180, 180)), radius_m)
    zones: dict[str, ZoneShape] = {"cap": c}
    idx = ZoneIndex()
    idx.put("cap", c)
    pts = rim_points(rng, zones, 20)
    pts += [(sign * 90.0, 0.0), (sign * 90.0, 180.0), (sign * 90.0, -123.4)]
    pts += [(sign * float(rng.uniform(88, 90)), float(rng.uniform(-180, 180))) for _ in range(200)]
    assert check(idx, zones, pts) > 0


@SETTINGS
@given(seed=st.integers(0, 2**31), lat_min=st.floats(60, 88), south=st.booleans())
def test_polar_cap_polygon(seed: int, lat_min: float, south: bool) -> None:
    rng = np.random.default_rng(seed)
    cap = box(-180, lat_min, 180, 90) if not south else box(-180, -90, 180, -lat_min)
    zones: dict[str, ZoneShape] = {
        "cap": cap,
        "near": Circle(89.0 if not south else -89.0, 10.0, 30_000),
    }
    idx = ZoneIndex()
    idx.put_many(zones.items())
    sign = -1 if south else 1
    pts = [
        (sign * float(rng.uniform(lat_min - 3, 90)), float(rng.uniform(-180, 180)))
        for _ in range(300)
    ]
    # a metre on either side of the cap's parallel
    for lon in rng.uniform(-179.9, 179.9, 40).tolist():
        pts.append((sign * (lat_min + 1e-5), lon))
        pts.append((sign * (lat_min - 1e-5), lon))
    assert check(idx, zones, pts) > 0


@SETTINGS
@given(seed=st.integers(0, 2**31), lat=st.floats(-60, 60), half_width=st.floats(0.001, 2.0))
def test_antimeridian_split_multipolygon_and_circle(
    seed: int, lat: float, half_width: float
) -> None:
    rng = np.random.default_rng(seed)
    h = half_width
    mp = MultiPolygon([box(180 - h, lat - h, 180, lat + h), box(-180, lat - h, -180 + h, lat + h)])
    zones: dict[str, ZoneShape] = {
        "am": mp,
        "west_edge": Polygon([(-180, lat), (-179.5, lat - 0.3), (-179.2, lat + 0.4)]),
        "c": Circle(lat, 179.99, float(rng.uniform(500, 30_000))),
        "c2": Circle(lat + 0.1, -179.995, float(rng.uniform(100, 5_000))),
    }
    idx = ZoneIndex()
    for zid, s in zones.items():
        idx.put(zid, s)
    pts = [
        (float(lat + rng.uniform(-2 * h - 0.3, 2 * h + 0.3)), float(x))
        for x in np.r_[rng.uniform(179, 180, 150), rng.uniform(-180, -179, 150)]
    ]
    pts += [(float(lat + rng.uniform(-h, h)), s * 180.0) for s in (1, -1) for _ in range(10)]
    pts += rim_points(rng, zones, 5)
    assert check(idx, zones, pts) > 0


@SETTINGS
@given(seed=st.integers(0, 2**31), lat=st.floats(-50, 50), width=st.floats(181, 350))
def test_polygon_wider_than_180_degrees(seed: int, lat: float, width: float) -> None:
    rng = np.random.default_rng(seed)
    x0 = -180 + float(rng.uniform(0, 360 - width))
    wide = Polygon(
        [
            (x0, lat),
            (x0 + width / 2, lat - 5),
            (x0 + width, lat),
            (x0 + width, lat + 8),
            (x0, lat + 8),
        ]
    )
    zones: dict[str, ZoneShape] = {"wide": wide, "small": Circle(lat + 4, x0 + 1, 20_000)}
    idx = ZoneIndex()
    idx.put_many(zones.items())
    pts = [
        (float(a), float(b))
        for a, b in zip(
            rng.uniform(lat - 7, lat + 10, 400), rng.uniform(-180, 180, 400), strict=True
        )
    ]
    assert check(idx, zones, pts + rim_points(rng, zones, 10)) > 0


def test_vertices_at_minus_180() -> None:
    rng = np.random.default_rng(3)
    zones: dict[str, ZoneShape] = {
        "a": box(-180, -10, -175, 10),
        "b": Polygon([(-180, 20), (-170, 25), (-180, 30)]),
        "c": box(175, -10, 180, 10),
    }
    idx = ZoneIndex()
    idx.put_many(zones.items())
    pts = [
        (float(a), float(b))
        for a, b in zip(
            rng.uniform(-15, 35, 600),
            np.r_[rng.uniform(-180, -169, 300), rng.uniform(174, 180, 300)],
            strict=True,
        )
    ]
    pts += [(float(y), -180.0) for y in rng.uniform(-12, 32, 20)]
    pts += [(float(y), 180.0) for y in rng.uniform(-12, 32, 20)]
    assert check(idx, zones, pts + rim_points(rng, zones, 10)) > 0


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_replace_and_remove(seed: int) -> None:
    rng = np.random.default_rng(seed)
    zones = random_zones(rng, 10.0, 20.0, n_circles=15, n_polys=6)
    idx = ZoneIndex()
    idx.put_many(zones.items())
    ids = sorted(zones)
    # replace some (new shapes elsewhere), remove some, add some, via put and put_many
    for zid in ids[::3]:
        new = random_zones(rng, 10.2, 20.1, 1, 0)["c0"]
        zones[zid] = new
        idx.put(zid, new)
    for zid in ids[1::4]:
        del zones[zid]
        idx.remove(zid)
    idx.remove("never-there")
    extra = random_zones(rng, 10.1, 20.0, 4, 2)
    extra = {f"x{k}": v for k, v in extra.items()}
    zones.update(extra)
    idx.put_many(extra.items())
    assert len(idx) == len(zones)
    for zid in ids[1::4]:
        assert zid not in idx
    pts = sample_points(rng, 10.1, 20.0, 400, 0.3) + rim_points(rng, zones, 2)
    check(idx, zones, pts)


def test_merge_keeps_answers_after_many_incremental_changes() -> None:
    rng = np.random.default_rng(11)
    zones: dict[str, ZoneShape] = {}
    idx = ZoneIndex()
    base = {
        f"b{i}": Circle(float(rng.uniform(45, 45.2)), float(rng.uniform(7, 7.3)), 200.0)
        for i in range(2000)
    }
    idx.put_many(base.items())
    zones.update(base)
    # enough single puts and removes to trigger overlay merges
    for _ in range(3000):
        zid = f"b{int(rng.integers(0, 2500))}"
        if rng.uniform() < 0.3:
            idx.remove(zid)
            zones.pop(zid, None)
        else:
            s = Circle(
                float(rng.uniform(45, 45.2)),
                float(rng.uniform(7, 7.3)),
                float(rng.uniform(20, 400)),
            )
            idx.put(zid, s)
            zones[zid] = s
    assert len(idx) == len(zones)
    pts = sample_points(rng, 45.1, 7.15, 1500, 0.07)
    check(idx, zones, pts)


@pytest.mark.parametrize("seed", [3, 17])
def test_deferred_merges_keep_answers_whenever_they_land(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges built from a snapshot while changes go on (as the service runs them in a
    thread), installed late, superseded by a merge in the call, or failed: the answers match
    brute force before, during and after each."""
    monkeypatch.setattr(index_module, "DEFERRED_MERGE_MIN_ENTRIES", 0)
    rng = np.random.default_rng(seed)

    def circle() -> Circle:
        return Circle(
            float(rng.uniform(45, 45.2)), float(rng.uniform(7, 7.3)), float(rng.uniform(20, 400))
        )

    idx = ZoneIndex()
    zones: dict[str, ZoneShape] = {f"b{i}": circle() for i in range(2000)}
    idx.put_many(zones.items())
    idx.defer_merges = True
    pts = sample_points(rng, 45.1, 7.15, 300, 0.07)
    job = None
    landed = superseded = failed = 0
    for step in range(2500):
        zid = f"b{int(rng.integers(0, 2500))}"
        if rng.uniform() < 0.3:
            idx.remove(zid)
            zones.pop(zid, None)
        elif rng.uniform() < 0.002:  # a bulk put big enough to merge in the call
            bulk = {f"m{step}-{i}": circle() for i in range(600)}
            idx.put_many(bulk.items())
            zones.update(bulk)
        else:
            zones[zid] = shape = circle()
            idx.put(zid, shape)
        if job is None:
            job = idx.start_merge()
            built = job.build() if job is not None else None  # from the snapshot, at once
        elif rng.uniform() < 0.02:  # lands some changes later
            if rng.uniform() < 0.1:
                assert not idx.finish_merge(job, None)
                failed += 1
                assert idx.merge_wanted
            elif idx.finish_merge(job, built):
                landed += 1
            else:
                superseded += 1
            job = None
        if step % 500 == 0:
            check(idx, zones, pts)
    assert landed >= 3, (landed, superseded, failed)
    assert len(idx) == len(zones)
    check(idx, zones, pts + sample_points(rng, 45.1, 7.15, 1000, 0.07))


def test_replace_circle_by_polygon_and_back() -> None:
    idx = ZoneIndex()
    idx.put("z", Circle(0.0, 0.0, 1000))
    assert idx.lookup(0.0, 0.0) == ["z"]
    idx.put("z", box(1, 1, 2, 2))
    assert idx.lookup(0.0, 0.0) == []
    assert idx.lookup(1.5, 1.5) == ["z"]
    idx.put_many([("z", Circle(0.0, 0.0, 1000))])
    assert idx.lookup(1.5, 1.5) == []
    assert idx.lookup_many(np.array([0.0, 1.5]), np.array([0.0, 1.5])) == [["z"], []]
    idx.remove("z")
    assert idx.lookup(0.0, 0.0) == []
    assert len(idx) == 0
    assert "z" not in idx


def test_put_many_last_write_wins_and_failed_put_changes_nothing() -> None:
    idx = ZoneIndex(max_cells_per_zone=100)
    idx.put_many([("a", Circle(0, 0, 100)), ("a", Circle(10, 10, 100))])
    assert idx.lookup(0, 0) == []
    assert idx.lookup(10, 10) == ["a"]
    scattered = MultiPolygon(
        [box(x, y, x + 0.001, y + 0.001) for x in range(-170, 170, 10) for y in range(-60, 60, 10)]
    )
    with pytest.raises(ZoneTooLargeError):
        idx.put("a", scattered)
    with pytest.raises(ZoneTooLargeError):
        idx.put_many([("b", Circle(1, 1, 100)), ("a", scattered)])
    assert idx.lookup(10, 10) == ["a"]
    assert "b" not in idx
    assert len(idx) == 1


def test_estimate_cell_count_bounds_cover() -> None:
    rng = np.random.default_rng(5)
    shapes: list[ZoneShape] = [
        Circle(47.0, 8.0, 10),
        Circle(47.0, 8.0, 50_000),
        Circle(89.9, 0.0, 50_000),
        box(-180, 80, 180, 90),
        box(-100, 0, 100, 10),
        star_polygon(rng, 47, 8, 0.01, 30),
    ]
    for s in shapes:
        est = estimate_cell_count(s)
        cov = cover(s)
        assert 0 < len(cov.cells) <= est <= MAX_CELLS_PER_ZONE
        assert len(cov.cells) == len(np.unique(cov.cells))
    # sizes are chosen per zone, so the estimate stays small across four orders of magnitude
    assert max(estimate_cell_count(Circle(0, 0, r)) for r in (10, 100, 1000, 50_000)) <= 200
    # resolutions adapt to the size, so even thousands of scattered parts stay under the cap
    # (here: every res-0 cell); lower caps refuse them before covering
    scattered = MultiPolygon(
        [box(x, y, x + 0.001, y + 0.001) for x in range(-170, 170, 2) for y in range(-60, 60, 2)]
    )
    assert estimate_cell_count(scattered) == 122
    with pytest.raises(ZoneTooLargeError):
        cover(scattered, max_cells=121)
    with pytest.raises(ZoneTooLargeError):
        ZoneIndex(max_cells_per_zone=121).put("big", scattered)
    with pytest.raises(ZoneTooLargeError):
        ZoneIndex(max_cells_per_zone=10).put_many([("c", Circle(1, 1, 1000))])
    # clustered parts are estimated by one disk around all of them, not one per part
    cluster = MultiPolygon(
        [
            box(8 + x / 1000, 47 + y / 1000, 8 + x / 1000 + 2e-4, 47 + y / 1000 + 2e-4)
            for x in range(0, 100, 3)
            for y in range(0, 100, 3)
        ]
    )
    assert estimate_cell_count(cluster) < 400


def test_empty_index_and_empty_batch() -> None:
    idx = ZoneIndex()
    assert idx.lookup(1.0, 2.0) == []
    assert idx.lookup_many(np.array([1.0]), np.array([2.0])) == [[]]
    idx.put("a", Circle(1.0, 2.0, 100))
    assert idx.lookup_many(np.array([]), np.array([])) == []


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), res=st.integers(0, 15))
def test_vectorized_latlng_to_cells_matches_h3(seed: int, res: int) -> None:
    rng = np.random.default_rng(seed)
    n = 20_000
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    lat[:6] = [90, -90, 0, 0, 45, -45]
    lon[:6] = [0, 0, 180, -180, 180, -180]
    got = latlng_to_cells(lat, lon, res)
    want = np.array([h3.latlng_to_cell(a, b, res) for a, b in zip(lat, lon, strict=True)])
    # float rounding may only differ within ~1e-15 rad of an edge: random points never are
    assert (got == want).all()


def test_non_finite_coordinates_are_refused() -> None:
    idx = ZoneIndex()
    idx.put("a", Circle(1.0, 2.0, 100))
    with pytest.raises(ValueError, match="finite"):
        idx.lookup_many(np.array([1.0, np.nan]), np.array([2.0, 2.0]))
    with pytest.raises(ValueError):  # noqa: PT011 (h3's H3LatLngDomainError)
        idx.lookup(float("nan"), 2.0)


@pytest.mark.parametrize(
    "bad",
    [Circle(0, 0, 0), Circle(0, 0, -5), Circle(91, 0, 100), Circle(float("nan"), 0, 100)],
)
def test_invalid_circles_are_refused(bad: Circle) -> None:
    idx = ZoneIndex()
    with pytest.raises(ValueError, match="invalid circle"):
        idx.put("x", bad)
    with pytest.raises(ValueError, match="invalid circle"):
        idx.put_many([("y", Circle(0, 0, 100)), ("x", bad)])
    assert len(idx) == 0


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_small_zones_only_at_antimeridian_and_pole(seed: int) -> None:
    # only fine resolutions in the index: batches skip points far from every zone
    rng = np.random.default_rng(seed)
    zones: dict[str, ZoneShape] = {}
    for i in range(60):
        lon = float(rng.choice([-1.0, 1.0]) * rng.uniform(179.97, 180.0))
        zones[f"a{i}"] = Circle(float(rng.uniform(-0.02, 0.02)), lon, float(rng.uniform(50, 2000)))
    for i in range(30):
        zones[f"n{i}"] = Circle(
            float(rng.uniform(89.97, 89.999)), float(rng.uniform(-180, 180)), 300.0
        )
        zones[f"p{i}"] = star_polygon(rng, float(rng.uniform(-0.02, 0.02)), 179.985, 0.005, 9)
    idx = ZoneIndex()
    idx.put_many(zones.items())
    pts = [(float(rng.uniform(-0.03, 0.03)), float(x)) for x in rng.uniform(179.9, 180, 150)]
    pts += [(float(rng.uniform(-0.03, 0.03)), float(x)) for x in rng.uniform(-180, -179.9, 150)]
    pts += [(float(rng.uniform(-0.03, 0.03)), s * 180.0) for s in (1, -1) for _ in range(20)]
    pts += [(float(rng.uniform(89.9, 90)), float(rng.uniform(-180, 180))) for _ in range(150)]
    pts += [(90.0, 0.0), (0.0, 0.0), (-45.0, 10.0), (12.0, -179.0)]
    assert check(idx, zones, pts + rim_points(rng, zones, 2)) > 0
    # a batch where no point is near any zone
    far = idx.lookup_many(np.array([10.0, -20.0, 30.0]), np.array([0.0, 50.0, -100.0]))
    assert far == [[], [], []]
