"""Reference answers the tests compare with: exact great-circle geometry on the index's sphere
and brute-force containment over every zone (haversine for circles, shapely for polygons)."""

from __future__ import annotations

import math

import shapely

from geoservice.index import R_EARTH_M, Circle, ZoneShape


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_EARTH_M * math.asin(math.sqrt(min(1.0, a)))


def brute(zones: dict[str, ZoneShape], lat: float, lon: float) -> set[str]:
    out = set()
    for zid, s in zones.items():
        if isinstance(s, Circle):
            if haversine_m(lat, lon, s.lat, s.lon) <= s.radius_m:
                out.add(zid)
        elif s.contains(shapely.Point(lon, lat)):
            out.add(zid)
    return out


def destination(lat: float, lon: float, dist_m: float, bearing: float) -> tuple[float, float]:
    """Great-circle destination point (exact on the sphere)."""
    d = dist_m / R_EARTH_M
    p1, l1 = math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(bearing))
    l2 = l1 + math.atan2(
        math.sin(bearing) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    lon2 = (math.degrees(l2) + 540.0) % 360.0 - 180.0
    return math.degrees(p2), lon2
