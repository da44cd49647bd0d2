"""The simulated city of the end-to-end load tests: the workload (a) zones as GeoJSON imports, and
devices walking between nearby zones producing GPS fixes. No I/O here; drivers do the sending."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from geoservice.index import Circle
from loadtest.bench_index import make_country

WORKLOAD_A_CIRCLES = 100_000
WORKLOAD_A_POLYGONS = 5_000
MAX_FEATURES_PER_IMPORT = 10_000

M_PER_DEG_LAT = 111_195.0  # mean Earth radius; plenty for simulated walking
# Neighbour grid: ~2.2 km x ~2.3 km cells at lat 47, so a 3 x 3 block covers the 1.5 km radius.
GRID_DEG_LAT = 0.02
GRID_DEG_LON = 0.03
NEXT_ZONE_WITHIN_M = 1_500.0


def split_zone_count(zones: int) -> tuple[int, int]:
    """Circles and polygons for `zones` in total, keeping workload (a)'s 100,000 : 5,000 mix."""
    total = WORKLOAD_A_CIRCLES + WORKLOAD_A_POLYGONS
    polygons = round(zones * WORKLOAD_A_POLYGONS / total)
    return zones - polygons, polygons


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    accuracy_m: float
    ts_ms: int

    def wire(self) -> dict[str, Any]:
        return {"lat": self.lat, "lon": self.lon, "accuracy_m": self.accuracy_m, "ts": self.ts_ms}


@dataclass(slots=True)
class Device:
    """One walker. Positions are advanced lazily, when a fix is asked for."""

    device_id: str
    lat: float
    lon: float
    speed_mps: float
    target: int  # zone index being walked to
    goal_lat: float
    goal_lon: float
    at_s: float  # simulated time of (lat, lon), epoch seconds
    linger_until_s: float = 0.0
    heading_noise: float = 0.0  # radians off the straight line; wanders, so paths are not rulers
    consented: bool = False  # the service has acknowledged a request carrying consent


@dataclass
class City:
    """Workload (a) zones (from loadtest.bench_index.make_country) plus a walking model."""

    ids: list[str]
    features: list[dict[str, Any]]
    centre_lat: np.ndarray  # a point inside each zone (circle centre, star polygon's centre)
    centre_lon: np.ndarray
    reach_m: np.ndarray  # circle radius, or the radius of a circle with the polygon's area
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    grid: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    @classmethod
    def workload_a(
        cls,
        zones: int = WORKLOAD_A_CIRCLES + WORKLOAD_A_POLYGONS,
        *,
        seed: int = 1,
        dwell_s: int | None = None,
    ) -> City:
        """The fixed-seed workload (a), scaled to `zones` with the same circle : polygon mix.
        dwell_s, when given, goes into every zone (the service default is 300 s)."""
        circles, polygons = split_zone_count(zones)
        w = make_country(seed, circles, polygons)
        features = [
            feature(zone_id, shape, dwell_s) for zone_id, shape in zip(w.ids, w.shapes, strict=True)
        ]
        city = cls(
            ids=list(w.ids),
            features=features,
            centre_lat=np.asarray(w.near_lat, dtype=np.float64),
            centre_lon=np.asarray(w.near_lon, dtype=np.float64),
            reach_m=np.asarray(w.near_r_m, dtype=np.float64),
            rng=random.Random(seed),
        )
        city._build_grid()
        return city

    def __len__(self) -> int:
        return len(self.ids)

    def imports(self, per_request: int = MAX_FEATURES_PER_IMPORT) -> Iterator[dict[str, Any]]:
        """Bodies for POST /v1/zones/import, each within the service's per-request limit."""
        for start in range(0, len(self.features), per_request):
            yield {
                "type": "FeatureCollection",
                "features": self.features[start : start + per_request],
            }

    # -- devices ---------------------------------------------------------------------------

    def spawn(self, device_id: str, now_s: float) -> Device:
        """A device near a random zone (zones are clustered, so devices are too): about a third
        start inside it and linger, the rest start 10-250 m outside its edge and walk in."""
        rng = self.rng
        zone = rng.randrange(len(self.ids))
        lat0, lon0, reach = self._centre(zone)
        speed = rng.uniform(1.0, 2.0)
        if rng.random() < 0.3:
            lat, lon = _offset(
                lat0, lon0, rng.uniform(0.0, 0.5) * reach, rng.uniform(0, 2 * math.pi)
            )
            device = Device(device_id, lat, lon, speed, zone, lat, lon, now_s)
            device.linger_until_s = now_s + rng.uniform(0.0, 180.0)
            return device
        distance = reach + rng.uniform(10.0, 250.0)
        lat, lon = _offset(lat0, lon0, distance, rng.uniform(0, 2 * math.pi))
        goal_lat, goal_lon = self._goal(zone)
        return Device(device_id, lat, lon, speed, zone, goal_lat, goal_lon, now_s)

    def fix(self, device: Device, now_s: float) -> Fix:
        """Walk the device to `now_s` and report a GPS fix with realistic noise."""
        self.advance(device, now_s)
        rng = self.rng
        accuracy = round(rng.uniform(4.0, 25.0), 1)
        # Phone fixes scatter around the true position by about half the stated accuracy.
        lat, lon = _offset(
            device.lat, device.lon, abs(rng.gauss(0.0, accuracy / 2)), rng.uniform(0, 2 * math.pi)
        )
        return Fix(round(lat, 7), round(lon, 7), accuracy, int(now_s * 1000))

    def fixes(self, device: Device, now_s: float, count: int, interval_s: float) -> list[Fix]:
        """`count` fixes `interval_s` apart ending at `now_s`: what a buffering SDK sends."""
        return [self.fix(device, now_s - (count - 1 - i) * interval_s) for i in range(count)]

    def advance(self, device: Device, now_s: float) -> None:
        dt = now_s - device.at_s
        if dt <= 0:
            return
        rng = self.rng
        t = device.at_s
        while t < now_s:
            if device.linger_until_s > t:
                t = min(now_s, device.linger_until_s)  # standing in the shop
                continue
            north, east = _delta_m(device.lat, device.lon, device.goal_lat, device.goal_lon)
            remaining = math.hypot(north, east)
            step_s = min(now_s - t, 5.0)  # re-aim at least every 5 s of walking
            step_m = device.speed_mps * step_s
            if remaining <= step_m:
                # Arrived: browse a while (exponential, mean 90 s), then head for a zone nearby.
                t += remaining / device.speed_mps
                device.lat, device.lon = device.goal_lat, device.goal_lon
                device.linger_until_s = t + min(600.0, rng.expovariate(1 / 90))
                device.target = self._next_zone(device.target, device.lat, device.lon)
                device.goal_lat, device.goal_lon = self._goal(device.target)
                continue
            device.heading_noise = max(
                -0.8, min(0.8, 0.8 * device.heading_noise + rng.gauss(0.0, 0.2))
            )
            bearing = math.atan2(east, north) + device.heading_noise
            device.lat, device.lon = _offset(device.lat, device.lon, step_m, bearing)
            t += step_s
        device.at_s = now_s

    # -- zone geometry helpers -------------------------------------------------------------

    def _centre(self, zone: int) -> tuple[float, float, float]:
        return float(self.centre_lat[zone]), float(self.centre_lon[zone]), float(self.reach_m[zone])

    def _goal(self, zone: int) -> tuple[float, float]:
        """A point well inside the zone: polygons are star-shaped around their centre."""
        lat, lon, reach = self._centre(zone)
        return _offset(
            lat, lon, self.rng.uniform(0.0, 0.4) * reach, self.rng.uniform(0, 2 * math.pi)
        )

    def _build_grid(self) -> None:
        cells_lat = np.floor(self.centre_lat / GRID_DEG_LAT).astype(np.int64)
        cells_lon = np.floor(self.centre_lon / GRID_DEG_LON).astype(np.int64)
        for zone, key in enumerate(zip(cells_lat.tolist(), cells_lon.tolist(), strict=True)):
            self.grid.setdefault(key, []).append(zone)

    def _next_zone(self, current: int, lat: float, lon: float) -> int:
        """A random other zone whose centre is within 1.5 km, else the nearest other one found
        in the surrounding grid cells, else any zone (an isolated zone: a trip across town)."""
        i, j = math.floor(lat / GRID_DEG_LAT), math.floor(lon / GRID_DEG_LON)
        near: list[int] = []
        best, best_m = -1, math.inf
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for zone in self.grid.get((i + di, j + dj), ()):
                    if zone == current:
                        continue
                    north, east = _delta_m(lat, lon, *self._centre(zone)[:2])
                    distance = math.hypot(north, east)
                    if distance <= NEXT_ZONE_WITHIN_M:
                        near.append(zone)
                    if distance < best_m:
                        best, best_m = zone, distance
        if near:
            return self.rng.choice(near)
        return best if best >= 0 else self.rng.randrange(len(self.ids))


def feature(zone_id: str, shape: object, dwell_s: int | None = None) -> dict[str, Any]:
    """The zone as a GeoJSON Feature for `POST /v1/zones/import`."""
    properties: dict[str, Any] = {"name": f"Zone {zone_id}"}
    if dwell_s is not None:
        properties["dwell_s"] = dwell_s
    if isinstance(shape, Circle):
        properties["radius_m"] = round(shape.radius_m, 1)
        geometry: dict[str, Any] = {
            "type": "Point",
            "coordinates": [round(shape.lon, 7), round(shape.lat, 7)],
        }
    elif isinstance(shape, shapely.Polygon):
        # Full precision: rounding could fold two close vertices of a spiky star onto each other.
        ring = [[x, y] for x, y in shape.exterior.coords]
        geometry = {"type": "Polygon", "coordinates": [ring]}
    else:
        raise TypeError(f"unexpected zone shape {type(shape).__name__}")
    return {"type": "Feature", "id": zone_id, "geometry": geometry, "properties": properties}


def _offset(lat: float, lon: float, distance_m: float, bearing: float) -> tuple[float, float]:
    """Move `distance_m` along `bearing` (radians from north), flat-earth: fine below a few km."""
    dlat = distance_m * math.cos(bearing) / M_PER_DEG_LAT
    dlon = distance_m * math.sin(bearing) / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def _delta_m(lat: float, lon: float, to_lat: float, to_lon: float) -> tuple[float, float]:
    """(north, east) metres from one point to another, flat-earth."""
    north = (to_lat - lat) * M_PER_DEG_LAT
    east = (to_lon - lon) * M_PER_DEG_LAT * math.cos(math.radians(lat))
    return north, east
