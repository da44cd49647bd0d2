"""geoservice.geometry: GeoJSON validation, area, default time zone, and the example zone files."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import shapely

from geoservice.geometry import (
    MAX_REPORTED_ERRORS,
    MAX_VERTICES,
    FieldError,
    GeometryError,
    ZoneShape,
    area_m2,
    default_timezone,
    representative_point,
    shape_from_geojson,
    shape_to_geojson,
)
from geoservice.index import Circle

ZONES_DIR = Path(__file__).resolve().parent.parent / "zones"
FEATURE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
DAYS = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}

# WGS84, for independent expectations (not the code under test).
WGS84_A_M = 6_378_137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)


def polygon(*rings: object) -> dict[str, object]:
    return {"type": "Polygon", "coordinates": list(rings)}


def closed(*positions: tuple[float, float]) -> list[list[float]]:
    return [list(p) for p in (*positions, positions[0])]


def square_m(lat: float, lon: float, side_m: float) -> list[list[float]]:
    """A CCW lon/lat rectangle with sides of side_m (ellipsoid radii of curvature at mid height)."""

    def radii_m(phi_deg: float) -> tuple[float, float]:
        s = 1 - WGS84_E2 * math.sin(math.radians(phi_deg)) ** 2
        return WGS84_A_M * (1 - WGS84_E2) / s**1.5, WGS84_A_M / math.sqrt(s)

    dlat = math.degrees(side_m / radii_m(lat)[0])
    mid_lat = lat + dlat / 2
    dlon = math.degrees(side_m / (radii_m(mid_lat)[1] * math.cos(math.radians(mid_lat))))
    return closed((lon, lat), (lon + dlon, lat), (lon + dlon, lat + dlat), (lon, lat + dlat))


def band_m2(lat1_deg: float, lat2_deg: float, dlon_deg: float = 360.0) -> float:
    """Exact WGS84 area between two parallels and dlon_deg of longitude (authalic latitude)."""
    e = math.sqrt(WGS84_E2)
    b_m = WGS84_A_M * (1 - WGS84_F)

    def q(phi_deg: float) -> float:
        s = math.sin(math.radians(phi_deg))
        return s / (1 - WGS84_E2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    return math.pi * b_m**2 * (q(lat2_deg) - q(lat1_deg)) * dlon_deg / 360.0


def polar_cap_m2(lat_deg: float) -> float:
    return band_m2(lat_deg, 90.0)


def rectangle_of_area(lat: float, lon: float, dlat: float, area_m2: float) -> list[list[float]]:
    dlon = 360.0 * area_m2 / band_m2(lat, lat + dlat)
    return closed((lon, lat), (lon + dlon, lat), (lon + dlon, lat + dlat), (lon, lat + dlat))


def errors_of(geometry: object, radius_m: object | None = None) -> list[FieldError]:
    with pytest.raises(GeometryError) as caught:
        shape_from_geojson(geometry, radius_m)
    return caught.value.errors


ZRH = square_m(47.37, 8.54, 500)
ZRH_HOLE = square_m(47.3711, 8.5415, 100)[::-1]


# --- valid shapes -------------------------------------------------------------------------------


def test_point_with_radius_is_a_circle() -> None:
    shape = shape_from_geojson({"type": "Point", "coordinates": [8.5392, 47.3717]}, 80)
    assert shape == Circle(lat=47.3717, lon=8.5392, radius_m=80.0)
    assert isinstance(shape, Circle)
    assert type(shape.radius_m) is float


def test_point_altitude_is_dropped_and_boundaries_are_legal() -> None:
    assert shape_from_geojson({"type": "Point", "coordinates": [-180, 90, 412.5]}, 10) == Circle(
        lat=90.0, lon=-180.0, radius_m=10.0
    )
    assert shape_from_geojson({"type": "Point", "coordinates": [180, -90]}, 50_000) == Circle(
        lat=-90.0, lon=180.0, radius_m=50_000.0
    )


def test_polygon() -> None:
    shape = shape_from_geojson(polygon(ZRH), None)
    assert isinstance(shape, shapely.Polygon)
    assert shape.equals_exact(shapely.Polygon(ZRH), 0.0)


def test_polygon_altitudes_are_dropped() -> None:
    shape = shape_from_geojson(polygon([[x, y, 408.0] for x, y in ZRH]), None)
    assert not shape.has_z
    assert shape.equals_exact(shapely.Polygon(ZRH), 0.0)


def test_clockwise_polygon_is_accepted_and_oriented_counter_clockwise() -> None:
    shape = shape_from_geojson(polygon(ZRH[::-1]), None)
    assert shape.exterior.is_ccw
    assert shape.equals(shapely.Polygon(ZRH))


def test_polygon_with_hole() -> None:
    shape = shape_from_geojson(polygon(ZRH, ZRH_HOLE), None)
    assert isinstance(shape, shapely.Polygon)
    assert len(shape.interiors) == 1
    assert shape.equals(shapely.Polygon(ZRH, [ZRH_HOLE]))
    assert area_m2(shape) == pytest.approx(500 * 500 - 100 * 100, rel=0.005)


def test_multipolygon() -> None:
    bern = square_m(46.949, 7.439, 200)
    shape = shape_from_geojson({"type": "MultiPolygon", "coordinates": [[ZRH], [bern]]}, None)
    assert isinstance(shape, shapely.MultiPolygon)
    assert len(shape.geoms) == 2
    assert shape.geoms[0].equals_exact(shapely.Polygon(ZRH), 0.0)
    assert shape.geoms[1].equals_exact(shapely.Polygon(bern), 0.0)


def test_single_part_multipolygon_stays_a_multipolygon() -> None:
    shape = shape_from_geojson({"type": "MultiPolygon", "coordinates": [[ZRH]]}, None)
    assert isinstance(shape, shapely.MultiPolygon)
    assert len(shape.geoms) == 1


def test_vertex_limit_is_inclusive() -> None:
    ring = _circle_ring(MAX_VERTICES)
    assert len(ring) == MAX_VERTICES
    assert isinstance(shape_from_geojson(polygon(ring), None), shapely.Polygon)


def _circle_ring(positions: int) -> list[list[float]]:
    n = positions - 1
    ring = [
        [8.54 + 0.01 * math.cos(2 * math.pi * k / n), 47.37 + 0.01 * math.sin(2 * math.pi * k / n)]
        for k in range(n)
    ]
    return [*ring, ring[0]]


# --- invalid input: exact paths and messages ---------------------------------------------------

BAD_LENGTH = "position must have 2 or 3 numbers [lon, lat, alt?], got "


def _nested(depth: int) -> object:
    value: object = 8.5
    for _ in range(depth):
        value = [value]
    return value


BOWTIE = [[8.5, 47.3], [8.51, 47.31], [8.51, 47.3], [8.5, 47.31], [8.5, 47.3]]
BIG_SQUARE = rectangle_of_area(47.0, 8.0, 0.5, 3_000e6)  # about 55 km x 55 km

INVALID: list[tuple[str, object, object | None, list[tuple[str, str]]]] = [
    (
        "bowtie",
        polygon(BOWTIE),
        None,
        [("geometry.coordinates", "invalid polygon: Self-intersection[8.505 47.305]")],
    ),
    (
        "hole outside shell",
        polygon(ZRH, square_m(47.40, 8.60, 100)),
        None,
        [("geometry.coordinates", "invalid polygon: Hole lies outside shell[8.6 47.4]")],
    ),
    (
        "unclosed ring",
        polygon(ZRH[:-1]),
        None,
        [
            (
                "geometry.coordinates[0]",
                f"linear ring is not closed: first position [{ZRH[0][0]!r}, {ZRH[0][1]!r}] "
                f"differs from last [{ZRH[3][0]!r}, {ZRH[3][1]!r}]",
            )
        ],
    ),
    (
        "3 positions",
        polygon([[8.5, 47.3], [8.6, 47.3], [8.5, 47.3]]),
        None,
        [("geometry.coordinates[0]", "linear ring needs at least 4 positions, got 3")],
    ),
    (
        "lon 181",
        polygon(closed((8.5, 47.3), (181, 47.3), (8.6, 47.4))),
        None,
        [("geometry.coordinates[0][1]", "longitude 181 is outside [-180, 180]")],
    ),
    (
        "lat -91",
        polygon(closed((8.5, 47.3), (8.6, 47.3), (8.6, -91))),
        None,
        [("geometry.coordinates[0][2]", "latitude -91 is outside [-90, 90]")],
    ),
    (
        "NaN",
        polygon(closed((8.5, 47.3), (8.6, math.nan), (8.6, 47.4))),
        None,
        [("geometry.coordinates[0][1]", "latitude must be a finite number, got nan")],
    ),
    (
        "infinity",
        {"type": "Point", "coordinates": [math.inf, 47.3]},
        50,
        [("geometry.coordinates", "longitude must be a finite number, got inf")],
    ),
    (
        "string coordinate",
        polygon([[8.5, 47.3], ["8.6", 47.3], [8.6, 47.4], [8.5, 47.3]]),
        None,
        [("geometry.coordinates[0][1]", "longitude must be a number, got string")],
    ),
    (
        "bool coordinate",
        polygon([[8.5, 47.3], [8.6, True], [8.6, 47.4], [8.5, 47.3]]),
        None,
        [("geometry.coordinates[0][1]", "latitude must be a number, got boolean")],
    ),
    (
        "string altitude",
        {"type": "Point", "coordinates": [8.5, 47.3, "high"]},
        50,
        [("geometry.coordinates", "altitude must be a number, got string")],
    ),
    (
        "huge integer",
        {"type": "Point", "coordinates": [10**5000, 47.3]},
        50,
        [("geometry.coordinates", "longitude a huge integer is outside [-180, 180]")],
    ),
    (
        "position with 4 numbers",
        {"type": "Point", "coordinates": [8.5, 47.3, 1, 2]},
        50,
        [("geometry.coordinates", f"{BAD_LENGTH}4")],
    ),
    (
        "position is an object",
        {"type": "Point", "coordinates": {"lon": 8.5, "lat": 47.3}},
        50,
        [("geometry.coordinates", "position must be an array [lon, lat], got object")],
    ),
    (
        "radius 9",
        {"type": "Point", "coordinates": [8.5, 47.3]},
        9,
        [("properties.radius_m", "must be between 10 and 50000 metres, got 9")],
    ),
    (
        "radius 50,001",
        {"type": "Point", "coordinates": [8.5, 47.3]},
        50_001,
        [("properties.radius_m", "must be between 10 and 50000 metres, got 50001")],
    ),
    (
        "radius bool",
        {"type": "Point", "coordinates": [8.5, 47.3]},
        True,
        [("properties.radius_m", "must be a number of metres, got boolean")],
    ),
    (
        "radius NaN",
        {"type": "Point", "coordinates": [8.5, 47.3]},
        math.nan,
        [("properties.radius_m", "must be a finite number, got nan")],
    ),
    (
        "radius string",
        {"type": "Point", "coordinates": [8.5, 47.3]},
        "80",
        [("properties.radius_m", "must be a number of metres, got string")],
    ),
    (
        "missing radius on a Point",
        {"type": "Point", "coordinates": [8.5, 47.3]},
        None,
        [
            (
                "properties.radius_m",
                "required for a Point: the circle radius in metres (10 to 50000)",
            )
        ],
    ),
    (
        "radius on a Polygon",
        polygon(ZRH),
        100,
        [("properties.radius_m", "not allowed for a Polygon: only a Point has one")],
    ),
    (
        "radius on a MultiPolygon",
        {"type": "MultiPolygon", "coordinates": [[ZRH]]},
        100,
        [("properties.radius_m", "not allowed for a MultiPolygon: only a Point has one")],
    ),
    (
        "LineString",
        {"type": "LineString", "coordinates": [[8.5, 47.3], [8.6, 47.4]]},
        None,
        [
            (
                "geometry.type",
                "unsupported geometry type 'LineString': expected Point "
                "(with properties.radius_m), Polygon or MultiPolygon",
            )
        ],
    ),
    (
        "lowercase type",
        {"type": "polygon", "coordinates": [ZRH]},
        None,
        [
            (
                "geometry.type",
                "unsupported geometry type 'polygon': expected Point "
                "(with properties.radius_m), Polygon or MultiPolygon",
            )
        ],
    ),
    (
        "type missing",
        {"coordinates": [ZRH]},
        None,
        [("geometry.type", "required: Point, Polygon or MultiPolygon")],
    ),
    (
        "type not a string",
        {"type": 7, "coordinates": [ZRH]},
        None,
        [("geometry.type", "must be a string, got number")],
    ),
    (
        "coordinates missing",
        {"type": "Polygon"},
        None,
        [("geometry.coordinates", "required")],
    ),
    (
        "geometry not an object",
        [[ZRH]],
        None,
        [("geometry", "must be a GeoJSON geometry object, got array")],
    ),
    (
        "geometry null",
        None,
        None,
        [("geometry", "must be a GeoJSON geometry object, got null")],
    ),
    (
        "10,001 vertices",
        polygon(_circle_ring(MAX_VERTICES + 1)),
        None,
        [("geometry.coordinates", "10001 positions exceed the limit of 10000 per zone")],
    ),
    (
        "10,001 vertices over two parts",
        {
            "type": "MultiPolygon",
            "coordinates": [[_circle_ring(5000)], [_circle_ring(5001)]],
        },
        None,
        [("geometry.coordinates", "10001 positions exceed the limit of 10000 per zone")],
    ),
    (
        "3,000 km² square",
        polygon(BIG_SQUARE),
        None,
        [("geometry", "area 3000.0 km² exceeds the limit of 2500 km²")],
    ),
    (
        "2,500.1 km² rectangle",
        polygon(rectangle_of_area(47.0, 8.0, 0.5, 2_500.1e6)),
        None,
        [("geometry", "area 2500.1 km² exceeds the limit of 2500 km²")],
    ),
    (
        "polar cap above 80° is far too big",
        polygon(closed((-180, 80), (180, 80), (180, 90), (-180, 90))),
        None,
        [("geometry", "area 3908570.8 km² exceeds the limit of 2500 km²")],
    ),
    (
        "deeply nested garbage",
        polygon([[[[[[[8.5]]]]]], [[["x"]], [[1]]], [[[[]]]], []], _nested(500)),
        None,
        [
            ("geometry.coordinates[0][0]", f"{BAD_LENGTH}1"),
            ("geometry.coordinates[0][1]", "longitude must be a number, got array"),
            ("geometry.coordinates[0][1]", "latitude must be a number, got array"),
            ("geometry.coordinates[0][2]", f"{BAD_LENGTH}1"),
            ("geometry.coordinates[0][3]", f"{BAD_LENGTH}0"),
            ("geometry.coordinates[1][0]", f"{BAD_LENGTH}1"),
            ("geometry.coordinates[1]", "linear ring needs at least 4 positions, got 1"),
        ],
    ),
    (
        "garbage 500 levels deep as the coordinates",
        {"type": "MultiPolygon", "coordinates": _nested(500)},
        None,
        [
            ("geometry.coordinates[0][0][0]", f"{BAD_LENGTH}1"),
            ("geometry.coordinates[0][0]", "linear ring needs at least 4 positions, got 1"),
        ],
    ),
    (
        "rings are not arrays",
        polygon("ring", {"a": 1}),
        None,
        [
            ("geometry.coordinates[0]", "linear ring must be an array of positions, got string"),
            ("geometry.coordinates[1]", "linear ring must be an array of positions, got object"),
        ],
    ),
    (
        "coordinates a string",
        {"type": "Polygon", "coordinates": "8.5 47.3"},
        None,
        [("geometry.coordinates", "polygon must be an array of linear rings, got string")],
    ),
    (
        "empty polygon",
        polygon(),
        None,
        [("geometry.coordinates", "polygon needs at least one linear ring (the exterior)")],
    ),
    (
        "empty multipolygon",
        {"type": "MultiPolygon", "coordinates": []},
        None,
        [("geometry.coordinates", "MultiPolygon needs at least one polygon")],
    ),
    (
        "multipolygon coordinates not an array",
        {"type": "MultiPolygon", "coordinates": 3},
        None,
        [("geometry.coordinates", "MultiPolygon must be an array of polygons, got number")],
    ),
    (
        "multipolygon position path",
        {
            "type": "MultiPolygon",
            "coordinates": [
                [ZRH],
                [
                    [
                        [7.4, 46.9],
                        [7.5, 46.9],
                        [7.5, 47.0],
                        [7.4, 47.0],
                        [7.4, 46.95],
                        ["x", 46.9],
                        [7.4, 46.9],
                    ]
                ],
            ],
        },
        None,
        [("geometry.coordinates[1][0][5]", "longitude must be a number, got string")],
    ),
    (
        "multipolygon part invalid",
        {"type": "MultiPolygon", "coordinates": [[ZRH], [BOWTIE]]},
        None,
        [("geometry.coordinates[1]", "invalid polygon: Self-intersection[8.505 47.305]")],
    ),
    (
        "multipolygon parts overlap",
        {
            "type": "MultiPolygon",
            "coordinates": [
                [closed((8.5, 47.3), (8.51, 47.3), (8.51, 47.31), (8.5, 47.31))],
                [closed((8.505, 47.305), (8.515, 47.305), (8.515, 47.315), (8.505, 47.315))],
            ],
        },
        None,
        [
            (
                "geometry.coordinates",
                "invalid MultiPolygon (parts must not overlap or share an edge): "
                "Self-intersection[8.505 47.31]",
            )
        ],
    ),
    (
        "several problems at once",
        polygon(
            [[181, 47.3], [8.6, -91], [False, None], [8.5, 47.3]],
            [[8.5, 47.3], [8.6, 47.3], [8.5, 47.3]],
        ),
        50,
        [
            ("properties.radius_m", "not allowed for a Polygon: only a Point has one"),
            ("geometry.coordinates[0][0]", "longitude 181 is outside [-180, 180]"),
            ("geometry.coordinates[0][1]", "latitude -91 is outside [-90, 90]"),
            ("geometry.coordinates[0][2]", "longitude must be a number, got boolean"),
            ("geometry.coordinates[0][2]", "latitude must be a number, got null"),
            ("geometry.coordinates[1]", "linear ring needs at least 4 positions, got 3"),
        ],
    ),
    (
        "point: bad position and bad radius together",
        {"type": "Point", "coordinates": [200, 47.3]},
        0,
        [
            ("properties.radius_m", "must be between 10 and 50000 metres, got 0"),
            ("geometry.coordinates", "longitude 200 is outside [-180, 180]"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("geometry", "radius_m", "expected"),
    [pytest.param(g, r, e, id=name) for name, g, r, e in INVALID],
)
def test_invalid_geometry_reports_exact_errors(
    geometry: object, radius_m: object | None, expected: list[tuple[str, str]]
) -> None:
    assert errors_of(geometry, radius_m) == [FieldError(f, m) for f, m in expected]


def test_geometry_error_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match=r"^properties\.radius_m: must be between"):
        shape_from_geojson({"type": "Point", "coordinates": [8.5, 47.3]}, 9)


def test_error_list_is_capped() -> None:
    ring = [["x", "y"]] * 500
    errors = errors_of(polygon(ring))
    assert len(errors) == MAX_REPORTED_ERRORS + 1
    # Two errors per position: 1000 found, 100 reported.
    assert errors[-1] == FieldError(
        "geometry", f"{2 * 500 - MAX_REPORTED_ERRORS} further errors not shown"
    )


# --- antimeridian and poles ---------------------------------------------------------------------

# 0.4° x 0.2° around Fiji, written the naive way across the antimeridian.
FIJI_NAIVE = closed((179.8, -17.2), (-179.8, -17.2), (-179.8, -17.0), (179.8, -17.0))
FIJI_SHIFTED = shapely.box(-0.2, -17.2, 0.2, -17.0)


def test_naive_antimeridian_polygon_is_split_into_a_multipolygon() -> None:
    shape = shape_from_geojson(polygon(FIJI_NAIVE), None)
    assert isinstance(shape, shapely.MultiPolygon)
    parts = sorted(shape.geoms, key=lambda p: p.bounds[0])
    assert [p.bounds for p in parts] == [
        (-180.0, -17.2, -179.8, -17.0),
        (179.8, -17.2, 180.0, -17.0),
    ]
    assert parts[0].equals(shapely.box(-180, -17.2, -179.8, -17.0))
    assert parts[1].equals(shapely.box(179.8, -17.2, 180, -17.0))
    assert area_m2(shape) == pytest.approx(area_m2(FIJI_SHIFTED), rel=1e-9)


def test_naive_antimeridian_polygon_with_hole() -> None:
    hole = closed((-179.9, -17.15), (179.9, -17.15), (179.9, -17.05), (-179.9, -17.05))
    shape = shape_from_geojson(polygon(FIJI_NAIVE, hole), None)
    assert isinstance(shape, shapely.MultiPolygon)
    assert [len(p.interiors) for p in shape.geoms] == [0, 0]  # the hole is cut in two as well
    shifted = shapely.Polygon(
        FIJI_SHIFTED.exterior, [shapely.box(-0.1, -17.15, 0.1, -17.05).exterior]
    )
    assert area_m2(shape) == pytest.approx(area_m2(shifted), rel=1e-9)
    assert not shape.contains(shapely.Point(179.95, -17.1))
    assert shape.contains(shapely.Point(179.85, -17.1))
    assert shape.contains(shapely.Point(-179.85, -17.1))


def test_naive_antimeridian_part_in_a_multipolygon() -> None:
    other = closed((178.0, -18.0), (178.1, -18.0), (178.1, -17.9), (178.0, -17.9))
    shape = shape_from_geojson(
        {"type": "MultiPolygon", "coordinates": [[FIJI_NAIVE], [other]]}, None
    )
    assert isinstance(shape, shapely.MultiPolygon)
    assert len(shape.geoms) == 3
    assert all(-180 <= x <= 180 for x, _ in shapely.get_coordinates(shape))


def test_rfc7946_split_multipolygon_is_kept() -> None:
    east = closed((179.8, -17.2), (180, -17.2), (180, -17.0), (179.8, -17.0))
    west = closed((-180, -17.2), (-179.8, -17.2), (-179.8, -17.0), (-180, -17.0))
    shape = shape_from_geojson({"type": "MultiPolygon", "coordinates": [[east], [west]]}, None)
    assert isinstance(shape, shapely.MultiPolygon)
    assert shape.equals(shapely.MultiPolygon([shapely.Polygon(east), shapely.Polygon(west)]))
    assert area_m2(shape) == pytest.approx(area_m2(FIJI_SHIFTED), rel=1e-9)


def test_vertices_at_minus_180_are_legal() -> None:
    ring = closed((-180, 10), (-179.9, 10), (-179.9, 10.1), (-180, 10.1))
    shape = shape_from_geojson(polygon(ring), None)
    assert isinstance(shape, shapely.Polygon)
    assert shape.bounds == (-180.0, 10.0, -179.9, 10.1)


def test_polar_cap_is_a_plain_planar_polygon() -> None:
    cap = closed((-180, 89.75), (180, 89.75), (180, 90), (-180, 90))
    shape = shape_from_geojson(polygon(cap), None)
    assert isinstance(shape, shapely.Polygon)
    assert shape.equals_exact(shapely.Polygon(cap), 0.0)
    assert shape.contains(shapely.Point(0, 89.9))
    # Edges follow the parallel (planar lon/lat), not the geodesic: a plain geodesic ring gives 0.
    assert area_m2(shape) == pytest.approx(polar_cap_m2(89.75), rel=1e-5)


def test_area_follows_planar_edges_far_from_the_pole() -> None:
    cap = shapely.Polygon(closed((-180, 80), (180, 80), (180, 90), (-180, 90)))
    assert area_m2(cap) == pytest.approx(polar_cap_m2(80.0), rel=1e-5)


# --- area ----------------------------------------------------------------------------------------


def test_area_limit_is_inclusive_of_just_under_2500_km2() -> None:
    shape = shape_from_geojson(polygon(rectangle_of_area(47.0, 8.0, 0.5, 2_499.9e6)), None)
    assert area_m2(shape) == pytest.approx(2_499.9e6, rel=1e-6)


def test_area_of_a_1km_square_near_zurich() -> None:
    shape = shape_from_geojson(polygon(square_m(47.37, 8.54, 1000)), None)
    assert area_m2(shape) == pytest.approx(1e6, rel=0.01)


@pytest.mark.parametrize("radius_m", [10.0, 100.0, 50_000.0])
def test_circle_area(radius_m: float) -> None:
    assert area_m2(Circle(lat=47.37, lon=8.54, radius_m=radius_m)) == pytest.approx(
        math.pi * radius_m**2, rel=0.001
    )


def test_multipolygon_area_is_the_sum_of_its_parts() -> None:
    a, b = square_m(47.37, 8.54, 1000), square_m(46.95, 7.44, 2000)
    shape = shape_from_geojson({"type": "MultiPolygon", "coordinates": [[a], [b]]}, None)
    assert area_m2(shape) == pytest.approx(1e6 + 4e6, rel=0.01)


# --- time zone and representative point --------------------------------------------------------


def test_default_timezone() -> None:
    assert default_timezone(47.37, 8.54) == "Europe/Zurich"
    assert default_timezone(40.7128, -74.0060) == "America/New_York"
    assert default_timezone(-17.1, 179.9) == "Pacific/Fiji"


def test_default_timezone_at_sea_is_an_etc_zone() -> None:
    assert default_timezone(40.0, -30.0) == "Etc/GMT+2"


@pytest.mark.parametrize(("lat", "lon"), [(91.0, 0.0), (0.0, -180.5), (math.nan, 0.0)])
def test_default_timezone_rejects_invalid_positions(lat: float, lon: float) -> None:
    with pytest.raises(ValueError, match="not a valid position"):
        default_timezone(lat, lon)


def test_representative_point() -> None:
    assert representative_point(Circle(lat=47.3717, lon=8.5392, radius_m=80.0)) == (
        47.3717,
        8.5392,
    )
    shape = shape_from_geojson(polygon(ZRH, ZRH_HOLE), None)
    lat, lon = representative_point(shape)
    assert shape.contains(shapely.Point(lon, lat))


# --- round trip ----------------------------------------------------------------------------------

ROUND_TRIP: list[tuple[str, dict[str, object], float | None]] = [
    ("circle", {"type": "Point", "coordinates": [8.5392, 47.3717]}, 80.0),
    ("polygon", polygon(ZRH), None),
    ("clockwise polygon", polygon(ZRH[::-1]), None),
    ("polygon with hole", polygon(ZRH, ZRH_HOLE), None),
    (
        "multipolygon",
        {"type": "MultiPolygon", "coordinates": [[ZRH], [square_m(46.9, 7.4, 300)]]},
        None,
    ),
    ("antimeridian", polygon(FIJI_NAIVE), None),
    ("polar cap", polygon(closed((-180, 89.75), (180, 89.75), (180, 90), (-180, 90))), None),
]


@pytest.mark.parametrize(
    ("geometry", "radius_m"), [pytest.param(g, r, id=name) for name, g, r in ROUND_TRIP]
)
def test_round_trip(geometry: dict[str, object], radius_m: float | None) -> None:
    shape = shape_from_geojson(geometry, radius_m)
    stored = orjson.loads(orjson.dumps(shape_to_geojson(shape)))
    again = shape_from_geojson(stored, radius_m)
    assert type(again) is type(shape)
    if isinstance(shape, Circle):
        assert again == shape
    else:
        assert again.equals_exact(shape, 0.0)
    assert shape_to_geojson(again) == stored


def test_shape_to_geojson_closes_rings() -> None:
    stored = shape_to_geojson(shape_from_geojson(polygon(ZRH, ZRH_HOLE), None))
    assert stored["type"] == "Polygon"
    rings = stored["coordinates"]
    assert isinstance(rings, list)
    assert len(rings) == 2
    for ring in rings:
        assert len(ring) == 5
        assert ring[0] == ring[-1]
    assert shape_to_geojson(Circle(lat=1.0, lon=2.0, radius_m=30.0)) == {
        "type": "Point",
        "coordinates": [2.0, 1.0],
    }


# --- example zone files --------------------------------------------------------------------------


def _check_feature(feature: dict[str, object]) -> ZoneShape:
    assert feature["type"] == "Feature"
    assert isinstance(feature["id"], str)
    assert FEATURE_ID.match(feature["id"]), feature["id"]
    props = feature["properties"]
    assert isinstance(props, dict)
    assert isinstance(props["name"], str)
    assert props["name"]
    assert isinstance(props["store_id"], str)
    assert props["store_id"]
    assert isinstance(props["timezone"], str)
    assert isinstance(props["dwell_s"], int)
    assert props["dwell_s"] > 0
    hours = props["opening_hours"]
    assert isinstance(hours, dict)
    assert set(hours) <= DAYS
    for intervals in hours.values():
        for start, end in intervals:
            assert TIME.match(start), start
            assert TIME.match(end), end
            assert start < end
    shape = shape_from_geojson(feature["geometry"], props.get("radius_m"))
    assert isinstance(shape, Circle) == ("radius_m" in props)
    assert default_timezone(*representative_point(shape)) == props["timezone"], feature["id"]
    return shape


def _example_files() -> list[Path]:
    return sorted(ZONES_DIR.glob("*.geojson"))


def test_example_zone_files_exist() -> None:
    assert "switzerland.geojson" in [p.name for p in _example_files()]


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.name)
def test_every_example_zone_is_valid(path: Path) -> None:
    collection = orjson.loads(path.read_bytes())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    ids = [f["id"] for f in features]
    assert len(ids) == len(set(ids))
    shapes = [_check_feature(f) for f in features]
    assert all(area_m2(s) <= 200_000 for s in shapes)


def test_switzerland_example_contents() -> None:
    features = orjson.loads((ZONES_DIR / "switzerland.geojson").read_bytes())["features"]
    kinds = [f["geometry"]["type"] for f in features]
    assert kinds.count("Point") >= 30
    assert kinds.count("Polygon") == 4
    by_id = {f["id"]: f for f in features}
    bahnhofstrasse = by_id["zrh-bahnhofstrasse"]
    assert bahnhofstrasse["geometry"]["coordinates"] == [8.5392, 47.3717]
    assert all(
        40 <= f["properties"]["radius_m"] <= 150 for f in features if "radius_m" in f["properties"]
    )
    assert {f["id"].split("-")[0] for f in features} == {"zrh", "brn", "bsl"}


def test_generator_is_deterministic_and_valid(tmp_path: Path) -> None:
    def run(out: Path, seed: int) -> bytes:
        subprocess.run(
            [
                sys.executable,
                str(ZONES_DIR / "generate.py"),
                "--circles",
                "300",
                "--polygons",
                "60",
                "--seed",
                str(seed),
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()

    first = run(tmp_path / "a.geojson", 7)
    assert run(tmp_path / "b.geojson", 7) == first
    assert run(tmp_path / "c.geojson", 8) != first
    features = orjson.loads(first)["features"]
    assert [f["geometry"]["type"] for f in features] == ["Point"] * 300 + ["Polygon"] * 60
    assert len({f["id"] for f in features}) == 360
    for feature in features:
        _check_feature(feature)
