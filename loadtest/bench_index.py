"""Benchmark of geoservice.index.ZoneIndex against brute force, shapely STRtree and Redis
GEOSEARCH. Run as `python -m loadtest.bench_index`; writes loadtest/results/index.json.
"""

from __future__ import annotations

import os

# one core: keep OpenBLAS from spreading the small projection matmuls over threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import ctypes
import gc
import json
import math
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import shapely

from geoservice.index import R_EARTH_M, Circle, ZoneIndex, ZoneShape

RESULTS = Path(__file__).resolve().parent / "results" / "index.json"
M_PER_DEG = math.pi * R_EARTH_M / 180.0


@dataclass
class Workload:
    name: str
    ids: list[str]
    shapes: list[ZoneShape]
    # circles, as arrays, for vectorized brute force
    c_idx: np.ndarray  # indices into ids
    c_lat: np.ndarray
    c_lon: np.ndarray
    c_rad: np.ndarray
    box: tuple[float, float, float, float]  # lon0, lat0, lon1, lat1
    near_lat: np.ndarray  # a point "near" each zone is drawn from centre + up to 1.5 radii
    near_lon: np.ndarray
    near_r_m: np.ndarray


def _offset(
    lat: np.ndarray, lon: np.ndarray, dist_m: np.ndarray, bearing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # small-distance flat offsets are fine for generating data
    dlat = dist_m * np.cos(bearing) / M_PER_DEG
    dlon = dist_m * np.sin(bearing) / (M_PER_DEG * np.cos(np.radians(lat)))
    return lat + dlat, lon + dlon


def _star_polygon(
    rng: np.random.Generator, lat: float, lon: float, area_m2: float
) -> shapely.Polygon:
    n = int(rng.integers(8, 65))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rel = rng.uniform(0.5, 1.0, n)
    # scale the radii so the polygon has the requested area
    poly_unit = shapely.Polygon(np.c_[rel * np.cos(ang), rel * np.sin(ang)])
    scale = math.sqrt(area_m2 / max(poly_unit.area, 1e-9))
    dy = scale * rel * np.sin(ang) / M_PER_DEG
    dx = scale * rel * np.cos(ang) / (M_PER_DEG * math.cos(math.radians(lat)))
    poly = shapely.Polygon(np.c_[lon + dx, lat + dy])
    if not poly.is_valid:
        poly = shapely.convex_hull(poly)
    return poly


def make_country(seed: int, n_circles: int, n_polys: int) -> Workload:
    """Zones clustered around 200 city centres in a 1,000 x 1,000 km box around (47, 8)."""
    rng = np.random.default_rng(seed)
    lat0, lon0 = 47.0, 8.0
    half_lat = 500_000 / M_PER_DEG
    half_lon = 500_000 / (M_PER_DEG * math.cos(math.radians(lat0)))
    box = (lon0 - half_lon, lat0 - half_lat, lon0 + half_lon, lat0 + half_lat)
    city_lat = rng.uniform(box[1] + 0.3, box[3] - 0.3, 200)
    city_lon = rng.uniform(box[0] + 0.4, box[2] - 0.4, 200)
    city_sigma_m = rng.uniform(2_000, 12_000, 200)

    def around(n: int) -> tuple[np.ndarray, np.ndarray]:
        c = rng.integers(0, 200, n)
        d = np.abs(rng.normal(0, 1, n)) * city_sigma_m[c]
        return _offset(city_lat[c], city_lon[c], d, rng.uniform(0, 2 * np.pi, n))

    lat, lon = around(n_circles)
    rad = rng.uniform(50, 500, n_circles)
    plat, plon = around(n_polys)
    areas = np.exp(rng.uniform(math.log(0.01e6), math.log(2e6), n_polys))
    shapes: list[ZoneShape] = [
        Circle(float(a), float(b), float(r)) for a, b, r in zip(lat, lon, rad, strict=True)
    ]
    for a, b, ar in zip(plat, plon, areas, strict=True):
        shapes.append(_star_polygon(rng, float(a), float(b), float(ar)))
    ids = [f"c{i}" for i in range(n_circles)] + [f"p{i}" for i in range(n_polys)]
    poly_r = np.sqrt(areas / math.pi)
    return Workload(
        "country",
        ids,
        shapes,
        np.arange(n_circles),
        lat,
        lon,
        rad,
        box,
        np.r_[lat, plat],
        np.r_[lon, plon],
        np.r_[rad, poly_r],
    )


def make_dense(seed: int, n_circles: int) -> Workload:
    """Circles uniform in a 50 x 50 km box."""
    rng = np.random.default_rng(seed)
    lat0, lon0 = 47.37, 8.54
    half_lat = 25_000 / M_PER_DEG
    half_lon = 25_000 / (M_PER_DEG * math.cos(math.radians(lat0)))
    box = (lon0 - half_lon, lat0 - half_lat, lon0 + half_lon, lat0 + half_lat)
    lat = rng.uniform(box[1], box[3], n_circles)
    lon = rng.uniform(box[0], box[2], n_circles)
    rad = rng.uniform(50, 500, n_circles)
    shapes: list[ZoneShape] = [
        Circle(float(a), float(b), float(r)) for a, b, r in zip(lat, lon, rad, strict=True)
    ]
    ids = [f"c{i}" for i in range(n_circles)]
    return Workload("dense", ids, shapes, np.arange(n_circles), lat, lon, rad, box, lat, lon, rad)


def make_points(w: Workload, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half within 1.5 radii of a random zone, half uniform in the box, shuffled."""
    rng = np.random.default_rng(seed)
    n_near = n // 2
    z = rng.integers(0, len(w.near_lat), n_near)
    d = w.near_r_m[z] * 1.5 * np.sqrt(rng.uniform(0, 1, n_near))
    nlat, nlon = _offset(w.near_lat[z], w.near_lon[z], d, rng.uniform(0, 2 * np.pi, n_near))
    ulat = rng.uniform(w.box[1], w.box[3], n - n_near)
    ulon = rng.uniform(w.box[0], w.box[2], n - n_near)
    perm = rng.permutation(n)
    return np.r_[nlat, ulat][perm], np.r_[nlon, ulon][perm]


# --- reference answers: shapely STRtree candidates + exact test ------------------------------


class StrtreeRef:
    """Zones as shapely geometries in an STRtree; circles as their lon/lat bounding boxes,
    then haversine; polygons by contains_xy. This is the exact brute-force reference."""

    def __init__(self, w: Workload) -> None:
        self.ids = np.array(w.ids, dtype=object)
        n = len(w.shapes)
        self.is_circle = np.zeros(n, bool)
        self.is_circle[w.c_idx] = True
        self.lat = np.zeros(n)
        self.lon = np.zeros(n)
        self.rad = np.zeros(n)
        self.lat[w.c_idx] = w.c_lat
        self.lon[w.c_idx] = w.c_lon
        self.rad[w.c_idx] = w.c_rad
        geoms = np.empty(n, dtype=object)
        dlat = w.c_rad / M_PER_DEG * 1.001 + 1e-9
        dlon = dlat / np.cos(np.radians(np.abs(w.c_lat) + dlat))
        geoms[w.c_idx] = shapely.box(w.c_lon - dlon, w.c_lat - dlat, w.c_lon + dlon, w.c_lat + dlat)
        for i, s in enumerate(w.shapes):
            if not isinstance(s, Circle):
                shapely.prepare(s)
                geoms[i] = s
        self.geoms = geoms
        self.tree = shapely.STRtree(geoms)

    def _exact(
        self, pt: np.ndarray, zi: np.ndarray, lat: np.ndarray, lon: np.ndarray
    ) -> np.ndarray:
        ok = np.zeros(len(zi), bool)
        c = self.is_circle[zi]
        if c.any():
            p = pt[c]
            z = zi[c]
            ok[c] = haversine_m(lat[p], lon[p], self.lat[z], self.lon[z]) <= self.rad[z]
        if (~c).any():
            p = pt[~c]
            z = zi[~c]
            ok[~c] = shapely.contains_xy(self.geoms[z], lon[p], lat[p])
        return ok

    def bulk(self, lat: np.ndarray, lon: np.ndarray) -> list[list[str]]:
        pts = shapely.points(lon, lat)
        pi, zi = self.tree.query(pts)
        ok = self._exact(pi, zi, lat, lon)
        out: list[list[str]] = [[] for _ in range(len(lat))]
        for p, name in zip(pi[ok].tolist(), self.ids[zi[ok]].tolist(), strict=True):
            out[p].append(name)
        return out

    def single(self, lat: float, lon: float) -> list[str]:
        zi = self.tree.query(shapely.Point(lon, lat))
        out = []
        for z in zi.tolist():
            if self.is_circle[z]:
                if haversine_scalar(lat, lon, self.lat[z], self.lon[z]) <= self.rad[z]:
                    out.append(self.ids[z])
            elif shapely.contains_xy(self.geoms[z], lon, lat):
                out.append(self.ids[z])
        return out


def haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * R_EARTH_M * np.arcsin(np.sqrt(np.minimum(1.0, a)))


def haversine_scalar(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_EARTH_M * math.asin(math.sqrt(min(1.0, a)))


# --- Redis GEOSEARCH -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def geosearch_rounds(
    w: Workload,
    lat: np.ndarray,
    lon: np.ndarray,
    n_queries: int,
    ours: Callable[[], int],
    repeats: int,
) -> list[tuple[float, float]] | None:
    """Per round, (queries/s of GEOSEARCH BYRADIUS (max radius) + exact haversine filter,
    pipelined; points/s of `ours` on the same points): interleaved, as the STRtree rounds, so
    that both sides are timed the same number of times under about the same machine load."""
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server not found: skipping GEOSEARCH", file=sys.stderr)
        return None
    import redis

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            r = redis.Redis(host="127.0.0.1", port=port)
            for _ in range(100):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            ids = [w.ids[i] for i in w.c_idx]
            rad = dict(zip(ids, w.c_rad.tolist(), strict=True))
            pos = {
                k: (a, b) for k, a, b in zip(ids, w.c_lat.tolist(), w.c_lon.tolist(), strict=True)
            }
            for s in range(0, len(ids), 10_000):
                args: list[Any] = []
                for k in ids[s : s + 10_000]:
                    args += [pos[k][1], pos[k][0], k]
                r.execute_command("GEOADD", "z", *args)
            max_r = float(w.c_rad.max())
            q_lat = lat[:n_queries].tolist()
            q_lon = lon[:n_queries].tolist()

            def geosearch() -> int:
                for s in range(0, n_queries, 1000):
                    pipe = r.pipeline(transaction=False)
                    for a, b in zip(q_lat[s : s + 1000], q_lon[s : s + 1000], strict=True):
                        pipe.execute_command(
                            "GEOSEARCH", "z", "FROMLONLAT", b, a, "BYRADIUS", max_r, "m"
                        )
                    res = pipe.execute()
                    for a, b, got in zip(
                        q_lat[s : s + 1000], q_lon[s : s + 1000], res, strict=True
                    ):
                        _ = [
                            m
                            for m in (x.decode() for x in got)
                            if haversine_scalar(a, b, pos[m][0], pos[m][1]) <= rad[m]
                        ]
                return n_queries

            rounds = [(timed(geosearch)[0], timed(ours)[0]) for _ in range(repeats)]
            r.close()
            return rounds
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- timing ----------------------------------------------------------------------------------


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """(wall-clock rate, CPU-time rate) of one run. On a shared machine the wall clock also
    counts time the process waited for a core; CPU time is what one core spent."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def rss_mb() -> float:
    """RSS after a GC and after glibc returned freed heap pages (so that the garbage of an
    earlier workload does not count against, or for, the next index)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    return float(psutil.Process().memory_info().rss) / 2**20


def run_workload(w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    lat, lon = make_points(w, args.points, seed=7)
    print(f"[{w.name}] {len(w.ids):,} zones, {len(lat):,} points", flush=True)

    # build (fresh index; RSS growth measured after a gc)
    gc.collect()
    rss0 = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    idx = ZoneIndex()
    idx.put_many(zip(w.ids, w.shapes, strict=True))
    build_s = time.perf_counter() - t0
    build_cpu_s = time.process_time() - c0
    index_rss = rss_mb() - rss0
    print(
        f"  build {build_s:.2f} s (CPU {build_cpu_s:.2f} s), index RSS +{index_rss:.0f} MB",
        flush=True,
    )

    ref = StrtreeRef(w)
    ns = min(args.sample, len(lat))
    want = ref.bulk(lat[:ns], lon[:ns])
    got_b = idx.lookup_many(lat[:ns], lon[:ns])
    lookup = idx.lookup
    mism = 0
    hits = 0
    total_hits = 0
    for i in range(ns):
        exp = set(want[i])
        hits += bool(exp)
        total_hits += len(exp)
        if set(got_b[i]) != exp or set(lookup(float(lat[i]), float(lon[i]))) != exp:
            mism += 1
    print(f"  mismatches {mism} of {ns:,} (points inside >= 1 zone: {hits:,})", flush=True)

    n_single = min(args.single_points, len(lat))
    ls, lo_ = lat[:n_single].tolist(), lon[:n_single].tolist()

    def ours_single() -> int:
        for a, b in zip(ls, lo_, strict=True):
            lookup(a, b)
        return n_single

    bs = args.batch_size

    def ours_batch() -> int:
        for s in range(0, len(lat), bs):
            idx.lookup_many(lat[s : s + bs], lon[s : s + bs])
        return len(lat)

    n_tree_single = min(args.tree_points, len(lat))
    ts, to = lat[:n_tree_single].tolist(), lon[:n_tree_single].tolist()

    def tree_single() -> int:
        for a, b in zip(ts, to, strict=True):
            ref.single(a, b)
        return n_tree_single

    n_tree_bulk = min(args.tree_points * 5, len(lat))

    def tree_bulk() -> int:
        for s in range(0, n_tree_bulk, bs):
            ref.bulk(lat[s : min(s + bs, n_tree_bulk)], lon[s : min(s + bs, n_tree_bulk)])
        return n_tree_bulk

    # interleaved rounds: on a shared machine the load shifts between measurements, so each
    # round times all four, and the ratios are medians of per-round ratios
    rounds: list[tuple[tuple[float, float], ...]] = []
    for _ in range(args.repeats):
        rounds.append((timed(ours_single), timed(tree_single), timed(ours_batch), timed(tree_bulk)))

    def med(i: int, clock: int) -> float:
        return statistics.median(r[i][clock] for r in rounds)

    def med_ratio(i: int, j: int, clock: int) -> float:
        return statistics.median(r[i][clock] / r[j][clock] for r in rounds)

    single, t_single, batch, t_bulk = med(0, 0), med(1, 0), med(2, 0), med(3, 0)
    ratio_single, ratio_bulk = med_ratio(0, 1, 0), med_ratio(2, 3, 0)
    print(f"  ours single {single:,.0f}/s, batch {batch:,.0f}/s (batches of {bs:,})", flush=True)
    print(f"  STRtree single {t_single:,.0f}/s, bulk {t_bulk:,.0f}/s", flush=True)
    print(
        f"  by CPU time: ours single {med(0, 1):,.0f}/s, batch {med(2, 1):,.0f}/s;"
        f" STRtree single {med(1, 1):,.0f}/s, bulk {med(3, 1):,.0f}/s",
        flush=True,
    )
    ng = args.geosearch_queries

    def ours_geo_points() -> int:
        for s in range(0, ng, bs):
            idx.lookup_many(lat[s : min(s + bs, ng)], lon[s : min(s + bs, ng)])
        return ng

    geo_rounds = (
        None
        if args.no_redis
        else geosearch_rounds(w, lat, lon, ng, ours_geo_points, args.geosearch_repeats)
    )
    geo = geo_ratio = None
    if geo_rounds:
        geo = statistics.median(g for g, _ in geo_rounds)
        geo_ratio = statistics.median(o / g for g, o in geo_rounds)
        print(f"  GEOSEARCH {geo:,.0f}/s (ours {geo_ratio:.1f}x)", flush=True)
    return {
        "zones": len(w.ids),
        "points": len(lat),
        "mismatches": mism,
        "mismatch_sample": ns,
        "sample_points_in_a_zone": hits,
        "sample_mean_zones_per_point": round(total_hits / max(ns, 1), 2),
        "build_s": round(build_s, 3),
        "build_cpu_s": round(build_cpu_s, 3),
        "index_rss_mb": round(index_rss, 1),
        "lookups_per_s_single": round(single),
        "lookups_per_s_batch": round(batch),
        "batch_size": bs,
        "strtree_per_s_single": round(t_single),
        "strtree_per_s_bulk": round(t_bulk),
        "geosearch_per_s": round(geo) if geo else None,
        "ratio_vs_strtree_single": round(ratio_single, 2),
        "ratio_vs_strtree_batch": round(ratio_bulk, 2),
        "ratio_vs_geosearch": round(geo_ratio, 1) if geo_ratio else None,
        "geosearch_rounds_per_s": (
            [[round(g), round(o)] for g, o in geo_rounds] if geo_rounds else None
        ),
        "cpu_time": {
            "lookups_per_s_single": round(med(0, 1)),
            "lookups_per_s_batch": round(med(2, 1)),
            "strtree_per_s_single": round(med(1, 1)),
            "strtree_per_s_bulk": round(med(3, 1)),
            "ratio_vs_strtree_single": round(med_ratio(0, 1, 1), 2),
            "ratio_vs_strtree_batch": round(med_ratio(2, 3, 1), 2),
        },
        "repeats": args.repeats,
        "rounds_wall_per_s": [[round(x[0]) for x in r] for r in rounds],
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
    }


def kernel_warm_up() -> dict[str, Any]:
    """The first ZoneIndex of a process loads the compiled lookups (numba; compiles them if
    its cache is cold): a one-time cost per process, timed here and kept out of the figures of
    the indexes built after it."""
    rss0 = rss_mb()
    t0 = time.perf_counter()
    ZoneIndex()
    out = {"s": round(time.perf_counter() - t0, 3), "rss_mb": round(rss_mb() - rss0, 1)}
    print(f"[kernels] first ZoneIndex() of the process: {out['s']} s, RSS +{out['rss_mb']} MB")
    return out


def million_build(seed: int) -> dict[str, Any]:
    w = make_dense(seed, 1_000_000)
    w_shapes = zip(w.ids, w.shapes, strict=True)
    gc.collect()
    rss0 = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    idx = ZoneIndex()
    idx.put_many(w_shapes)
    dt = time.perf_counter() - t0
    out = {
        "zones": len(idx),
        "build_s": round(dt, 2),
        "build_cpu_s": round(time.process_time() - c0, 2),
        "index_rss_mb": round(rss_mb() - rss0, 1),
    }
    print(f"[million] {out}", flush=True)
    return out


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "shapely": shapely.__version__,
        "h3": __import__("h3").__version__,
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--zones", type=int, default=100_000, help="circles per workload")
    ap.add_argument("--polygons", type=int, default=5_000, help="polygons in 'country'")
    ap.add_argument("--workloads", default="country,dense")
    ap.add_argument("--sample", type=int, default=100_000, help="points checked vs brute force")
    ap.add_argument("--single-points", type=int, default=200_000)
    ap.add_argument("--tree-points", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--geosearch-queries", type=int, default=20_000)
    ap.add_argument(
        "--geosearch-repeats", type=int, default=3, help="rounds of GEOSEARCH, then ours"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--million", action="store_true", help="also time a 1,000,000-circle build")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.points = min(args.points, 100_000)
        args.sample = min(args.sample, 20_000)
        args.single_points = min(args.single_points, 50_000)
        args.tree_points = min(args.tree_points, 5_000)
        args.geosearch_queries = min(args.geosearch_queries, 5_000)
        args.geosearch_repeats = 1
        args.repeats = 1

    results: dict[str, Any] = {}
    warm_up = kernel_warm_up()
    for name in args.workloads.split(","):
        if name == "country":
            w = make_country(args.seed, args.zones, args.polygons)
        elif name == "dense":
            w = make_dense(args.seed + 1, args.zones)
        else:
            raise SystemExit(f"unknown workload {name!r}")
        results[name] = run_workload(w, args)
        del w
        gc.collect()
    run_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    doc: dict[str, Any] = {
        "workloads": results,
        "kernel_warm_up": warm_up,
        "machine": machine(),
        "args": run_args,
    }
    if args.million:
        doc["million_build"] = million_build(args.seed + 2)

    cols = [
        ("mismatches", "mismatch"),
        ("build_s", "build s"),
        ("index_rss_mb", "RSS MB"),
        ("lookups_per_s_single", "single/s"),
        ("lookups_per_s_batch", "batch/s"),
        ("ratio_vs_strtree_single", "x STR 1"),
        ("ratio_vs_strtree_batch", "x STR bulk"),
        ("ratio_vs_geosearch", "x GEOSEARCH"),
    ]
    print()
    print(f"{'workload':<10}" + "".join(f"{h:>13}" for _, h in cols))
    for name, r in results.items():
        print(f"{name:<10}" + "".join(f"{r[k]!s:>13}" for k, _ in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
