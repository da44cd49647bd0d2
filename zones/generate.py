"""Generate a large synthetic zone set for load tests: one GeoJSON FeatureCollection of circles
(Point + radius_m) and small star-shaped polygons, clustered around real city centres.

    python zones/generate.py --circles 100000 --polygons 5000 --seed 1 --out /tmp/big.geojson

Deterministic for a given seed (same arguments -> byte-identical file). Stdlib + numpy only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Iterator
from typing import TextIO

import numpy as np

# slug, name, lat, lon, IANA zone, weight (roughly population), spread (1 sigma, km; clipped at
# 3 sigma, kept small for border cities so every zone stays inside its time zone)
CITIES: list[tuple[str, str, float, float, str, float, float]] = [
    ("zrh", "Zürich", 47.3769, 8.5417, "Europe/Zurich", 4.2, 3.0),
    ("gva", "Genève", 46.2044, 6.1432, "Europe/Zurich", 2.0, 1.0),
    ("bsl", "Basel", 47.5596, 7.5886, "Europe/Zurich", 1.7, 0.6),
    ("brn", "Bern", 46.9480, 7.4474, "Europe/Zurich", 1.4, 2.0),
    ("lsn", "Lausanne", 46.5197, 6.6323, "Europe/Zurich", 1.4, 2.0),
    ("lug", "Lugano", 46.0037, 8.9511, "Europe/Zurich", 0.6, 0.5),
    ("muc", "München", 48.1374, 11.5755, "Europe/Berlin", 6.0, 5.0),
    ("ber", "Berlin", 52.5200, 13.4050, "Europe/Berlin", 9.0, 8.0),
    ("vie", "Wien", 48.2082, 16.3738, "Europe/Vienna", 6.0, 5.0),
    ("mil", "Milano", 45.4642, 9.1900, "Europe/Rome", 7.0, 5.0),
    ("par", "Paris", 48.8566, 2.3522, "Europe/Paris", 12.0, 7.0),
    ("lon", "London", 51.5072, -0.1276, "Europe/London", 14.0, 9.0),
    ("nyc", "New York", 40.7128, -74.0060, "America/New_York", 16.0, 9.0),
    ("sao", "São Paulo", -23.5505, -46.6333, "America/Sao_Paulo", 12.0, 9.0),
    ("tyo", "Tokyo", 35.6762, 139.6503, "Asia/Tokyo", 20.0, 10.0),
    ("syd", "Sydney", -33.8688, 151.2093, "Australia/Sydney", 5.0, 8.0),
    ("akl", "Auckland", -36.8485, 174.7633, "Pacific/Auckland", 1.6, 5.0),
]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
OPENING_HOURS: list[dict[str, list[list[str]]]] = [
    {**{d: [["09:00", "20:00"]] for d in _DAYS[:5]}, "sat": [["09:00", "18:00"]]},
    {**{d: [["08:00", "19:00"]] for d in _DAYS[:5]}, "sat": [["08:00", "17:00"]]},
    {
        **{d: [["09:00", "12:30"], ["13:30", "18:30"]] for d in _DAYS[1:5]},
        "sat": [["09:30", "17:00"]],
    },
    {d: [["07:00", "22:00"]] for d in _DAYS},
]
DWELL_S = (120, 180, 300, 600)

_M_PER_DEG_LAT = 111_320.0
_COORD_DECIMALS = 6  # ~0.1 m, far below any zone's size


def _offsets_deg(
    rng: np.random.Generator, lat: np.ndarray, spread_km: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Clip at 3 sigma so no zone lands absurdly far from its city.
    north_m = np.clip(rng.standard_normal(lat.size), -3, 3) * spread_km * 1000.0
    east_m = np.clip(rng.standard_normal(lat.size), -3, 3) * spread_km * 1000.0
    dlat = north_m / _M_PER_DEG_LAT
    dlon = east_m / (_M_PER_DEG_LAT * np.cos(np.radians(lat)))
    return dlat, dlon


def _centres(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weights = np.array([c[5] for c in CITIES])
    city = rng.choice(len(CITIES), size=count, p=weights / weights.sum())
    lat0 = np.array([c[2] for c in CITIES])[city]
    lon0 = np.array([c[3] for c in CITIES])[city]
    spread = np.array([c[6] for c in CITIES])[city]
    dlat, dlon = _offsets_deg(rng, lat0, spread)
    return city, lat0 + dlat, lon0 + dlon


def _properties(rng: np.random.Generator, city: int, name: str, store_id: str) -> dict[str, object]:
    return {
        "name": name,
        "store_id": store_id,
        "timezone": CITIES[city][4],
        "dwell_s": int(DWELL_S[rng.integers(len(DWELL_S))]),
        "opening_hours": OPENING_HOURS[rng.integers(len(OPENING_HOURS))],
    }


def _circles(rng: np.random.Generator, count: int) -> Iterator[dict[str, object]]:
    city, lat, lon = _centres(rng, count)
    # Mostly shop-sized circles, a few large ones (malls, campuses).
    radius_m = np.where(
        rng.random(count) < 0.95, rng.integers(40, 151, count), rng.integers(150, 1001, count)
    )
    for i in range(count):
        c = int(city[i])
        properties = _properties(rng, c, f"Synthetic store {i + 1} {CITIES[c][1]}", f"S{i + 1:07d}")
        properties["radius_m"] = int(radius_m[i])
        yield {
            "type": "Feature",
            "id": f"syn-{CITIES[c][0]}-c{i + 1:07d}",
            "geometry": {
                "type": "Point",
                "coordinates": [
                    round(float(lon[i]), _COORD_DECIMALS),
                    round(float(lat[i]), _COORD_DECIMALS),
                ],
            },
            "properties": properties,
        }


def _polygon_ring(rng: np.random.Generator, lat: float, lon: float) -> list[list[float]]:
    # Vertices sorted by angle around the centre, gaps < 180 degrees: always a simple polygon.
    n = int(rng.integers(6, 13))
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2.0 * math.pi / n)
    radius_m = rng.uniform(60.0, 400.0) * rng.uniform(0.7, 1.0, n)
    m_per_deg_lon = _M_PER_DEG_LAT * math.cos(math.radians(lat))
    ring = [
        [
            round(lon + float(r * math.cos(a)) / m_per_deg_lon, _COORD_DECIMALS),
            round(lat + float(r * math.sin(a)) / _M_PER_DEG_LAT, _COORD_DECIMALS),
        ]
        for a, r in zip(angles, radius_m, strict=True)
    ]
    return [*ring, ring[0]]


def _polygons(rng: np.random.Generator, count: int) -> Iterator[dict[str, object]]:
    city, lat, lon = _centres(rng, count)
    for i in range(count):
        c = int(city[i])
        properties = _properties(rng, c, f"Synthetic mall {i + 1} {CITIES[c][1]}", f"M{i + 1:07d}")
        yield {
            "type": "Feature",
            "id": f"syn-{CITIES[c][0]}-p{i + 1:07d}",
            "geometry": {
                "type": "Polygon",
                "coordinates": [_polygon_ring(rng, float(lat[i]), float(lon[i]))],
            },
            "properties": properties,
        }


def write_zones(out: TextIO, circles: int, polygons: int, seed: int) -> int:
    """Write the FeatureCollection, one Feature per line; returns the number of Features."""
    rng = np.random.default_rng(seed)
    out.write('{"type":"FeatureCollection","features":[\n')
    written = 0
    for feature in itertools.chain(_circles(rng, circles), _polygons(rng, polygons)):
        if written:
            out.write(",\n")
        out.write(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
        written += 1
    out.write("\n]}\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circles", type=int, default=1000, help="number of Point zones")
    parser.add_argument("--polygons", type=int, default=100, help="number of Polygon zones")
    parser.add_argument("--seed", type=int, default=1, help="random seed (deterministic output)")
    parser.add_argument("--out", default="-", help="output file, '-' for stdout (default)")
    args = parser.parse_args(argv)
    if args.circles < 0 or args.polygons < 0:
        parser.error("--circles and --polygons must be >= 0")
    if args.out == "-":
        count = write_zones(sys.stdout, args.circles, args.polygons, args.seed)
    else:
        with open(args.out, "w", encoding="utf-8") as out:
            count = write_zones(out, args.circles, args.polygons, args.seed)
        print(f"wrote {count} zones to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
