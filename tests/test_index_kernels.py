"""The compiled paths of the zone index (geoservice/index_kernels.py) against brute force and
h3: the scalar cell mapping, the point-in-polygon test on edges and holes, the overlay as it
grows, the output buffer when many zones overlap, and the h3 fallback near pentagons."""

from __future__ import annotations

import h3.api.basic_int as h3
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from geoservice import index_kernels
from geoservice.index import Circle, ZoneIndex, ZoneShape
from tests.test_index import check, random_zones, rim_points, sample_points


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), res=st.integers(0, 15))
def test_compiled_cell_matches_h3(seed: int, res: int) -> None:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))
    lon = rng.uniform(-180, 180, 3000)
    lat[:6] = [90, -90, 0, 0, 45, -45]
    lon[:6] = [0, 0, 180, -180, 180, -180]
    fallback = 0
    for a, b in zip(lat.tolist(), lon.tolist(), strict=True):
        cell = index_kernels._cell(a, b, res)[0]
        if cell < 0:  # pentagon base cells and the like: the caller asks h3
            fallback += 1
        else:
            assert cell == h3.latlng_to_cell(a, b, res), (a, b, res)
    assert fallback < 300


def test_polygon_edges_vertices_and_holes_as_shapely() -> None:
    outer = [(0, 0), (4, 0), (4, 4), (0, 4), (0, 0)]
    hole = [(1, 1), (3, 1), (3, 3), (1, 3), (1, 1)]
    zones: dict[str, ZoneShape] = {
        "holed": Polygon(outer, [hole]),
        "tri": Polygon([(5, 0), (7, 2), (5, 4)]),
        "multi": MultiPolygon([box(8, 0, 9, 1), box(8, 2, 9, 3)]),
    }
    idx = ZoneIndex()
    idx.put_many(zones.items())
    # on edges, on vertices, in holes, between parts, just inside and outside
    xs = [0, 0.5, 1, 2, 3, 3.5, 4, 5, 6, 7, 8, 8.5, 9, 1e-9, 4 - 1e-9, 6 + 1e-9]
    ys = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 1e-9, 1 + 1e-9]
    pts = [(float(y), float(x)) for x in xs for y in ys]
    for lat, lon in pts:
        want = {z for z, s in zones.items() if shapely.contains_xy(s, lon, lat)}
        assert set(idx.lookup(lat, lon)) == want, (lat, lon)
    check(idx, zones, pts)


def test_overlay_grows_then_merges_and_answers_stay_exact() -> None:
    rng = np.random.default_rng(5)
    zones = random_zones(rng, 46.0, 7.0, n_circles=300, n_polys=40)
    idx = ZoneIndex()
    idx.put_many(zones.items())
    # single puts go to the overlay, which re-hashes as it grows, until a merge
    for i in range(400):
        z = random_zones(rng, 46.0, 7.0, 1, 1)
        zid = f"o{i}"
        zones[zid] = z["c0"] if i % 3 else z["p0"]
        idx.put(zid, zones[zid])
        if i % 50 == 0:
            check(idx, zones, sample_points(rng, 46.0, 7.0, 60, 0.2))
    for zid in sorted(zones)[::3]:
        idx.remove(zid)
        del zones[zid]
    pts = sample_points(rng, 46.0, 7.0, 600, 0.2) + rim_points(rng, zones, 1)
    assert check(idx, zones, pts) > 0


def test_many_zones_on_one_point_and_everything_removed() -> None:
    idx = ZoneIndex()
    zones: dict[str, ZoneShape] = {f"z{i}": Circle(10.0, 20.0, 100.0 + i) for i in range(300)}
    idx.put_many(zones.items())
    # more answers than the lookup's preallocated buffer holds
    assert sorted(idx.lookup(10.0, 20.0)) == sorted(zones)
    assert sorted(idx.lookup_many(np.array([10.0]), np.array([20.0]))[0]) == sorted(zones)
    # ints and numpy scalars are accepted like floats
    assert len(idx.lookup(10, 20)) == 300
    assert len(idx.lookup(np.float64(10.0), np.float64(20.0))) == 300
    for zid in zones:
        idx.remove(zid)
    assert idx.lookup(10.0, 20.0) == []
    assert idx.lookup_many(np.array([10.0, 0.0]), np.array([20.0, 0.0])) == [[], []]
    idx.put("again", Circle(10.0, 20.0, 50.0))
    assert idx.lookup(10.0, 20.0) == ["again"]


@pytest.mark.parametrize("pentagon", [c for c in h3.get_res0_cells() if h3.is_pentagon(c)][:4])
def test_zones_around_pentagons(pentagon: int) -> None:
    # points whose cells the compiled mapping leaves to h3
    lat0, lon0 = h3.cell_to_latlng(pentagon)
    rng = np.random.default_rng(pentagon % 1000)
    zones = random_zones(rng, lat0, lon0, n_circles=20, n_polys=6)
    idx = ZoneIndex()
    idx.put_many(zones.items())
    pts = sample_points(rng, lat0, lon0, 300, 0.3) + rim_points(rng, zones, 2)
    assert any(index_kernels._cell(a, b, 10)[0] < 0 for a, b in pts)
    check(idx, zones, pts)


def test_replaced_polygons_are_compacted_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ZoneIndex, "PV_SLACK", 1000)
    rng = np.random.default_rng(9)
    idx = ZoneIndex()
    zones: dict[str, ZoneShape] = {}
    written = 0
    for i in range(400):
        zid = f"p{i % 10}"
        zones[zid] = random_zones(rng, -33.0, 151.0, 0, 1)["p0"]
        written += 2 * len(shapely.get_coordinates(zones[zid]))
        idx.put(zid, zones[zid])
    # the records were rewritten: far fewer floats than every version ever written
    assert idx._pv_len < written / 4
    check(idx, zones, sample_points(rng, -33.0, 151.0, 500, 0.2) + rim_points(rng, zones, 3))
