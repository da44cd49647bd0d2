"""Zone geometry: untrusted GeoJSON -> validated Circle / shapely shape, and back.

Also owns a zone's geodesic area and its default IANA time zone. No I/O beyond time zone data.

Antimeridian rule. Containment downstream is planar in lon/lat, so the returned shape alone
defines "inside", and every longitude in it lies in [-180, 180]:
  * RFC 7946 split form (a MultiPolygon whose parts end at lon 180 and start at -180) is kept.
  * A polygon (or MultiPolygon part) whose ring has consecutive vertices more than 180 degrees
    of longitude apart is read as crossing the antimeridian the naive way (179.9 -> -179.9).
    Its negative longitudes are shifted by +360 (all rings of that polygon), the unwrapped polygon
    is validated, then cut at lon 180; the part beyond 180 is shifted back by -360. A Polygon that
    really straddles the line therefore comes back as a two-part MultiPolygon.
  * An edge from exactly -180 to exactly 180 (or back) is not a crossing: it is the planar edge of
    a polar cap such as [[-180,80],[180,80],[180,90],[-180,90],[-180,80]], accepted as is.
  * A small polygon that encircles a pole in the naive form cannot be expressed in planar lon/lat;
    it unwraps into something degenerate and is rejected as invalid (use the polar cap form).
"""

from __future__ import annotations

import atexit
import itertools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn, TypeAlias

import numpy as np
import shapely
from shapely.geometry.polygon import orient
from shapely.validation import explain_validity

from geoservice.index import Circle

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from pyproj import Geod
    from timezonefinder import TimezoneFinder

ZoneShape: TypeAlias = Circle | shapely.Polygon | shapely.MultiPolygon

MIN_RADIUS_M: Final = 10.0
MAX_RADIUS_M: Final = 50_000.0
MAX_VERTICES: Final = 10_000
MAX_AREA_M2: Final = 2_500_000_000.0  # 2,500 km²

EARTH_MEAN_RADIUS_M: Final = 6_371_008.8
# A ring's geodesic area is ambiguous (it splits the globe in two); a zone is always the smaller.
_WGS84_SURFACE_M2: Final = 510_065_621_724_088.0

# Bounds the error list a hostile body can make us build and send back.
MAX_REPORTED_ERRORS: Final = 100

# Densify before the geodesic area so edges follow the planar (lon/lat straight) semantics that
# containment uses: a polar cap's 360-degree edge along a parallel would otherwise be a zero-length
# geodesic. The cap on added points keeps a long, thin zone from costing unbounded work.
_AREA_SEGMENT_DEG: Final = 0.1
_AREA_MAX_ADDED_POINTS: Final = 20_000

_Position: TypeAlias = tuple[float, float]


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str  # relative to the Feature, e.g. "geometry.coordinates[0][3]", "properties.radius_m"
    message: str


class GeometryError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []
        self.dropped = 0

    def add(self, field: str, message: str) -> None:
        if len(self.items) < MAX_REPORTED_ERRORS:
            self.items.append(FieldError(field, message))
        else:
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_(self) -> NoReturn:
        items = list(self.items)
        if self.dropped:
            items.append(FieldError("geometry", f"{self.dropped} further errors not shown"))
        raise GeometryError(items)


def _kind(value: object) -> str:
    """The JSON type name of a decoded value, for messages (never echo untrusted content)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _fmt(value: int | float) -> str:
    # str() of an int beyond 4300 digits raises in Python 3.11; such input only needs a label.
    if isinstance(value, int) and abs(value) >= 10**15:
        return "a huge integer"
    return repr(value)


def _number(
    value: object, name: str, low: float, high: float, path: str, errors: _Errors
) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.add(path, f"{name} must be a number, got {_kind(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        errors.add(path, f"{name} must be a finite number, got {value}")
        return None
    if not low <= value <= high:
        errors.add(path, f"{name} {_fmt(value)} is outside [{low:g}, {high:g}]")
        return None
    return float(value)


def _position(value: object, path: str, errors: _Errors) -> _Position | None:
    if not isinstance(value, list | tuple):
        errors.add(path, f"position must be an array [lon, lat], got {_kind(value)}")
        return None
    if len(value) not in (2, 3):
        errors.add(path, f"position must have 2 or 3 numbers [lon, lat, alt?], got {len(value)}")
        return None
    lon = _number(value[0], "longitude", -180.0, 180.0, path, errors)
    lat = _number(value[1], "latitude", -90.0, 90.0, path, errors)
    # Altitude is dropped, but it is still untrusted input that must be a real number.
    alt_ok = len(value) == 2 or (
        _number(value[2], "altitude", -math.inf, math.inf, path, errors) is not None
    )
    if lon is None or lat is None or not alt_ok:
        return None
    return (lon, lat)


def _radius(radius_m: object, errors: _Errors) -> float | None:
    path = "properties.radius_m"
    if radius_m is None:
        errors.add(
            path,
            f"required for a Point: the circle radius in metres "
            f"({MIN_RADIUS_M:g} to {MAX_RADIUS_M:g})",
        )
        return None
    if isinstance(radius_m, bool) or not isinstance(radius_m, int | float):
        errors.add(path, f"must be a number of metres, got {_kind(radius_m)}")
        return None
    if isinstance(radius_m, float) and not math.isfinite(radius_m):
        errors.add(path, f"must be a finite number, got {radius_m}")
        return None
    if not MIN_RADIUS_M <= radius_m <= MAX_RADIUS_M:
        errors.add(
            path,
            f"must be between {MIN_RADIUS_M:g} and {MAX_RADIUS_M:g} metres, got {_fmt(radius_m)}",
        )
        return None
    return float(radius_m)


def shape_from_geojson(geometry: object, radius_m: object | None) -> ZoneShape:
    """Validate a decoded GeoJSON geometry (plus the Feature's radius_m) into a zone shape.

    Raises GeometryError listing every problem found, each with its path inside the Feature.
    """
    errors = _Errors()
    if not isinstance(geometry, Mapping):
        errors.add("geometry", f"must be a GeoJSON geometry object, got {_kind(geometry)}")
        errors.raise_()
    geometry_type = geometry.get("type")
    if "coordinates" not in geometry:
        errors.add("geometry.coordinates", "required")
    coordinates = geometry.get("coordinates")

    if geometry_type == "Point":
        radius = _radius(radius_m, errors)
        position = None
        if "coordinates" in geometry:
            position = _position(coordinates, "geometry.coordinates", errors)
        if errors or position is None or radius is None:
            errors.raise_()
        return Circle(lat=position[1], lon=position[0], radius_m=radius)

    if geometry_type in ("Polygon", "MultiPolygon"):
        if radius_m is not None:
            errors.add(
                "properties.radius_m", f"not allowed for a {geometry_type}: only a Point has one"
            )
        if "coordinates" not in geometry:
            errors.raise_()
        return _polygonal(geometry_type == "MultiPolygon", coordinates, errors)

    if "type" not in geometry:
        errors.add("geometry.type", "required: Point, Polygon or MultiPolygon")
    elif not isinstance(geometry_type, str):
        errors.add("geometry.type", f"must be a string, got {_kind(geometry_type)}")
    else:
        shown = geometry_type if len(geometry_type) <= 40 else geometry_type[:40] + "..."
        errors.add(
            "geometry.type",
            f"unsupported geometry type {shown!r}: expected Point (with properties.radius_m), "
            "Polygon or MultiPolygon",
        )
    errors.raise_()


_RawRing: TypeAlias = tuple[str, list[object] | tuple[object, ...]]


def _raw_polygon(value: object, path: str, errors: _Errors) -> list[_RawRing] | None:
    if not isinstance(value, list | tuple):
        errors.add(path, f"polygon must be an array of linear rings, got {_kind(value)}")
        return None
    if not value:
        errors.add(path, "polygon needs at least one linear ring (the exterior)")
        return None
    rings: list[_RawRing] = []
    for i, ring in enumerate(value):
        ring_path = f"{path}[{i}]"
        if isinstance(ring, list | tuple):
            rings.append((ring_path, ring))
        else:
            errors.add(ring_path, f"linear ring must be an array of positions, got {_kind(ring)}")
    return rings


def _ring(path: str, raw: list[object] | tuple[object, ...], errors: _Errors) -> list[_Position]:
    positions = [_position(p, f"{path}[{k}]", errors) for k, p in enumerate(raw)]
    if len(raw) < 4:
        errors.add(path, f"linear ring needs at least 4 positions, got {len(raw)}")
    elif positions[0] is not None and positions[-1] is not None and positions[0] != positions[-1]:
        first, last = positions[0], positions[-1]
        errors.add(
            path,
            f"linear ring is not closed: first position [{first[0]!r}, {first[1]!r}] "
            f"differs from last [{last[0]!r}, {last[1]!r}]",
        )
    return [p for p in positions if p is not None]


def _polygonal(is_multi: bool, coordinates: object, errors: _Errors) -> ZoneShape:
    base = "geometry.coordinates"
    # Structure first, so the vertex limit is enforced before any per-position work.
    raw_polygons: list[tuple[str, list[_RawRing]]] = []
    if not is_multi:
        rings = _raw_polygon(coordinates, base, errors)
        if rings is not None:
            raw_polygons.append((base, rings))
    elif not isinstance(coordinates, list | tuple):
        errors.add(base, f"MultiPolygon must be an array of polygons, got {_kind(coordinates)}")
    elif not coordinates:
        errors.add(base, "MultiPolygon needs at least one polygon")
    else:
        for i, polygon in enumerate(coordinates):
            rings = _raw_polygon(polygon, f"{base}[{i}]", errors)
            if rings is not None:
                raw_polygons.append((f"{base}[{i}]", rings))

    vertex_count = sum(len(raw) for _, rings in raw_polygons for _, raw in rings)
    if vertex_count > MAX_VERTICES:
        errors.add(base, f"{vertex_count} positions exceed the limit of {MAX_VERTICES} per zone")
        errors.raise_()

    parsed = [
        (path, [_ring(ring_path, raw, errors) for ring_path, raw in rings])
        for path, rings in raw_polygons
    ]
    if errors:
        errors.raise_()

    pieces: list[shapely.Polygon] = []
    for path, polygon_rings in parsed:
        crosses = _crosses_antimeridian(polygon_rings)
        if crosses:
            polygon_rings = [[(_unwrap(lon), lat) for lon, lat in r] for r in polygon_rings]
        polygon = shapely.Polygon(polygon_rings[0], polygon_rings[1:])
        if not polygon.is_valid:
            note = " (longitudes unwrapped across the antimeridian)" if crosses else ""
            errors.add(path, f"invalid polygon: {explain_validity(polygon)}{note}")
            continue
        pieces.extend(_split_at_antimeridian(polygon) if crosses else [polygon])
    if errors:
        errors.raise_()

    pieces = [orient(p, sign=1.0) for p in pieces]
    shape: ZoneShape
    if not is_multi and len(pieces) == 1:
        shape = pieces[0]
    else:
        shape = shapely.MultiPolygon(pieces)
        if not shape.is_valid:
            errors.add(
                base,
                "invalid MultiPolygon (parts must not overlap or share an edge): "
                f"{explain_validity(shape)}",
            )
            errors.raise_()

    area = area_m2(shape)
    if area <= 0.0:
        errors.add("geometry", "zone has zero area")
    elif area > MAX_AREA_M2:
        errors.add(
            "geometry",
            f"area {area / 1e6:.1f} km² exceeds the limit of {MAX_AREA_M2 / 1e6:g} km²",
        )
    if errors:
        errors.raise_()
    return shape


def _crosses_antimeridian(rings: list[list[_Position]]) -> bool:
    for ring in rings:
        for (lon_a, _), (lon_b, _) in itertools.pairwise(ring):
            polar_cap_edge = abs(lon_a) == 180.0 and abs(lon_b) == 180.0
            if abs(lon_b - lon_a) > 180.0 and not polar_cap_edge:
                return True
    return False


def _unwrap(lon: float) -> float:
    return lon + 360.0 if lon < 0.0 else lon


def _split_at_antimeridian(unwrapped: shapely.Polygon) -> list[shapely.Polygon]:
    east = shapely.intersection(unwrapped, shapely.box(-180.0, -90.0, 180.0, 90.0))
    beyond = shapely.intersection(unwrapped, shapely.box(180.0, -90.0, 540.0, 90.0))
    west = shapely.transform(beyond, _shift_back)
    return [*_polygons_in(shapely.transform(east, _clamp)), *_polygons_in(west)]


def _shift_back(xy: NDArray[np.float64]) -> NDArray[np.float64]:
    # Rounding to 1e-9 degrees (0.1 mm) undoes the +360/-360 float drift (-179.9 stays -179.9).
    return _clamp(np.column_stack((np.round(xy[:, 0] - 360.0, 9), xy[:, 1])))


def _clamp(xy: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.column_stack((np.clip(xy[:, 0], -180.0, 180.0), xy[:, 1]))


def _polygons_in(geometry: shapely.Geometry) -> list[shapely.Polygon]:
    # An intersection can also yield lines or points where the ring only touches lon 180.
    parts = geometry.geoms if hasattr(geometry, "geoms") else [geometry]
    return [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty and p.area > 0]


_geod_lock = threading.Lock()
_geod_instance: Geod | None = None


def _geod() -> Geod:
    global _geod_instance
    with _geod_lock:
        if _geod_instance is None:
            from pyproj import Geod

            _geod_instance = Geod(ellps="WGS84")
        return _geod_instance


def _ring_area_m2(geod: Geod, ring: shapely.LinearRing) -> float:
    xy = shapely.get_coordinates(ring)
    area, _perimeter = geod.polygon_area_perimeter(xy[:, 0], xy[:, 1])
    area = abs(area)
    return min(area, _WGS84_SURFACE_M2 - area)


def area_m2(shape: ZoneShape) -> float:
    """Geodesic area on WGS84 in m²; a circle is a spherical cap on the mean Earth radius."""
    if isinstance(shape, Circle):
        angle = shape.radius_m / EARTH_MEAN_RADIUS_M
        return 2.0 * math.pi * EARTH_MEAN_RADIUS_M**2 * (1.0 - math.cos(angle))
    geod = _geod()
    polygons = shape.geoms if isinstance(shape, shapely.MultiPolygon) else [shape]
    total_m2 = 0.0
    for polygon in polygons:
        segment_deg = max(_AREA_SEGMENT_DEG, polygon.length / _AREA_MAX_ADDED_POINTS)
        dense = shapely.segmentize(polygon, segment_deg)
        total_m2 += _ring_area_m2(geod, dense.exterior)
        total_m2 -= sum(_ring_area_m2(geod, hole) for hole in dense.interiors)
    return total_m2


def representative_point(shape: ZoneShape) -> tuple[float, float]:
    """(lat, lon) of a point inside the zone, used to pick its default time zone."""
    if isinstance(shape, Circle):
        return (shape.lat, shape.lon)
    point = shapely.point_on_surface(shape)
    return (float(point.y), float(point.x))


def _polygon_coordinates(polygon: shapely.Polygon) -> list[list[list[float]]]:
    rings = [polygon.exterior, *polygon.interiors]
    coordinates: list[list[list[float]]] = [shapely.get_coordinates(r).tolist() for r in rings]
    return coordinates


def shape_to_geojson(shape: ZoneShape) -> dict[str, object]:
    """The stored/returned GeoJSON geometry; a circle's radius travels in properties.radius_m."""
    if isinstance(shape, Circle):
        return {"type": "Point", "coordinates": [shape.lon, shape.lat]}
    if isinstance(shape, shapely.MultiPolygon):
        return {
            "type": "MultiPolygon",
            "coordinates": [_polygon_coordinates(p) for p in shape.geoms],
        }
    if isinstance(shape, shapely.Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coordinates(shape)}
    raise TypeError(f"not a zone shape: {type(shape).__name__}")


_tz_lock = threading.Lock()
_tz_finder: TimezoneFinder | None = None


def default_timezone(lat: float, lon: float) -> str:
    """IANA time zone at (lat, lon); "Etc/GMT±N" from the longitude if the data has none.

    The first call loads the time zone data (about 0.25 s); call it off the event loop.
    """
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"not a valid position: lat={lat!r}, lon={lon!r}")
    global _tz_finder
    # The finder reads its data files lazily and is not documented as thread-safe.
    with _tz_lock:
        if _tz_finder is None:
            from timezonefinder import TimezoneFinder

            _tz_finder = TimezoneFinder()
            # Its data files are memory-mapped: closed at exit, not left to the interpreter's
            # teardown (which warns about every unclosed file).
            atexit.register(_tz_finder.cleanup)
        name: str | None = _tz_finder.timezone_at(lng=lon, lat=lat)
    if name:
        return name
    offset_h = math.floor(lon / 15.0 + 0.5)
    # POSIX sign convention: Etc/GMT-2 is two hours AHEAD of UTC.
    return "UTC" if offset_h == 0 else f"Etc/GMT{-offset_h:+d}"
