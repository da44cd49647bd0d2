"""Zone index: covers circle and polygon zones with H3 cells and answers "which zones contain
this point" exactly. Pure data structure (H3 + shapely + numpy + numba); no I/O, no asyncio, no
Redis.

Layout. Every zone version gets a *slot*; its cover is a set of (cell, code) pairs where
code = slot << 2 | is_polygon << 1 | is_boundary. Bulk data lives in one int64 array: an
open-addressing hash table per H3 resolution (interleaved key/value slots), fronted by a small
table from res-7 ancestors to the levels present under them. Incremental puts go to an
open-addressing overlay that is merged into fresh tables when it grows. Removing or replacing
a zone only makes its slot not live; dead entries go at the next merge. Lookups run compiled
(index_kernels.py: the point's cell, the probes, the exact tests); covers use its numpy port of
H3's point-to-cell mapping. Cells are H3 ints throughout.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import shapely
from h3.api import basic_int as h3i
from h3.api import memview_int as h3m

from geoservice import index_kernels as _k
from geoservice.index_kernels import (
    CIRCLE_COLS,
    EMPTY,
    FILTER_CLEAR,
    FILTER_RES,
    FILTER_SET,
    HASH_MULT,
    OV_COUNT,
    OV_RES_BITS,
    PCLEAR,
    PSET,
    PV_LEN,
    RES_SHIFT,
    TAB_FILTER_OFF,
    TAB_FILTER_SHIFT,
    TAB_HEADER,
    TAB_LEVEL_COLS,
    TAB_MULTI_OFF,
    TAB_N_FINE,
    TAB_N_LEVELS,
    latlng_to_cells,
    unit,
)
from geoservice.index_kernels import _grid as _grid

__all__ = [
    "MAX_CELLS_PER_ZONE",
    "R_EARTH_M",
    "Circle",
    "Cover",
    "ZoneIndex",
    "ZoneShape",
    "ZoneTooLargeError",
    "cover",
    "estimate_cell_count",
    "latlng_to_cells",
    "load_compiled_lookups",
]

R_EARTH_M = 6_371_008.8

# A zone whose candidate cell count (estimate_cell_count) exceeds this is refused before
# covering. Resolutions are chosen per zone from its size, so a circle needs at most 91
# candidates and a polygon a few hundred; what trips the cap is e.g. a MultiPolygon of a
# thousand small parts spread over a country. 20,000 cells cost ~0.6 MB in the tables and
# ~50 ms to cover.
MAX_CELLS_PER_ZONE = 20_000


@dataclass(frozen=True, slots=True)
class Circle:
    lat: float
    lon: float
    radius_m: float  # 10 .. 50_000


ZoneShape: TypeAlias = Circle | shapely.Polygon | shapely.MultiPolygon


class ZoneTooLargeError(ValueError):
    """The zone's cover would exceed the per-zone cell cap (see MAX_CELLS_PER_ZONE)."""


I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Cover:
    """H3 cover of one zone: cells (int64, mixed resolutions) and whether each is a boundary
    cell (needs the exact test) or an interior cell (every point of it is inside)."""

    cells: I64
    boundary: Bool


# --- H3 geometry constants -------------------------------------------------------------------

# H3 lays hexagons out in the gnomonic plane of each icosahedron face, where the distance
# between neighbouring centres at res 0 is RES0_U_GNOMONIC and shrinks by sqrt(7) per level.
# A hexagon's circumradius is 1/sqrt(3) of that spacing, and gnomonic projection never shrinks
# distances, so this bounds the angle from a cell centre to any point of the cell. Checked
# against cell_to_boundary for every cell at res 0-3 and near all pentagons at res 6-15
# (max ratio 0.99999); the 1e-6 slack absorbs rounding.
_RES0_U_GNOMONIC = 0.38196601125010500003
_RHO_RAD = [_RES0_U_GNOMONIC / math.sqrt(3) / math.sqrt(7) ** r * (1 + 1e-6) for r in range(16)]
# H3 is not geometrically nested: a point's cell at a fine resolution can have, as its
# ancestor at a coarser one, a neighbour of the coarse cell the point lies in. Lookups go
# through ancestors, so each cell is classified by the region of all its descendants, which
# reaches at most 1.04 rho from the centre (measured over 7^4..7^5 descendants, random cells
# and pentagons, res 0-11) plus 0.02 rho for deeper levels; 1.15 leaves slack.
_DESC_FACTOR = 1.15
_REACH_RAD = [_DESC_FACTOR * r for r in _RHO_RAD]
# Cells j grid steps apart have centres >= 0.95 * j * rho apart (measured at res 2-14, also
# around pentagons); 0.85 leaves slack, so a disk of k = ceil(reach / (0.85 rho)) holds every
# cell whose centre is within `reach`.
_STEP_FRACTION = 0.85
# Angular slack for floating point in classification (1e-10 rad ~ 0.6 mm).
_EPS_RAD = 1e-10
_EPS_DEG = 1e-9
# A circle's cover uses the coarsest resolution with radius >= _CIRCLE_RHO_RATIO * rho, so
# radius/rho is in [1, 2.65): ~5-20 cells out of a 37-91 cell candidate disk.
_CIRCLE_RHO_RATIO = 1.0
# Polygons: coarsest resolution with (diameter of the bounding box) >= this * rho.
_POLY_RHO_RATIO = 2.0


def _res_for_reach(reach_rad: float, ratio: float) -> int:
    """Coarsest resolution whose rho is <= reach/ratio (clamped to 0..15)."""
    if reach_rad <= 0:
        return 15
    target = reach_rad / ratio
    r = math.ceil(2 * math.log(_RHO_RAD[0] / target) / math.log(7) - 1e-12)
    return min(15, max(0, r))


def _disk_size(k: int) -> int:
    return 3 * k * k + 3 * k + 1


def _k_for(reach_rad: float, res: int) -> int:
    return max(1, math.ceil((reach_rad + _REACH_RAD[res]) / (_STEP_FRACTION * _RHO_RAD[res])))


def _chord_thresh(radius_m: F64) -> F64:
    """Squared chord length of the circle radius: |p - c|^2 <= this  <=>  haversine <= r."""
    out: F64 = np.square(2.0 * np.sin(np.asarray(radius_m) / (2.0 * R_EARTH_M)))
    return out


def _angle_between(ax: F64, ay: F64, az: F64, bx: F64, by: F64, bz: F64) -> F64:
    # chord-based angle: accurate for small angles, unlike acos(dot)
    chord = np.sqrt(np.square(ax - bx) + np.square(ay - by) + np.square(az - bz))
    out: F64 = 2.0 * np.arcsin(np.minimum(1.0, chord / 2.0))
    return out


def _centres(cells: I64) -> tuple[F64, F64]:
    n = len(cells)
    lat = np.empty(n)
    lon = np.empty(n)
    ctl = h3i.cell_to_latlng
    for i, c in enumerate(cells.tolist()):
        lat[i], lon[i] = ctl(c)
    return lat, lon


# --- circles ---------------------------------------------------------------------------------


def _circle_plan(radius_m: float) -> tuple[int, int]:
    res, ks = _circle_res_k(np.array([radius_m / R_EARTH_M]))
    return int(res[0]), int(ks[0])


def _circle_res_k(reach: F64) -> tuple[I64, I64]:
    target = reach / _CIRCLE_RHO_RATIO
    res = np.ceil(2 * np.log(_RHO_RAD[0] / target) / math.log(7) - 1e-12)
    res = np.clip(res, 0, 15).astype(np.int64)
    rho = np.array(_RHO_RAD)[res]
    ext = np.array(_REACH_RAD)[res]
    ks = np.maximum(1, np.ceil((reach + ext) / (_STEP_FRACTION * rho))).astype(np.int64)
    return res, ks


def _classify_circle_cells(d: F64, ext: F64, reach: F64) -> tuple[Bool, Bool]:
    keep = d - ext <= reach + _EPS_RAD
    interior = d + ext < reach - _EPS_RAD
    return keep, interior


# axial unit directions I, IJ, J, JK, K, IK
_DIRS = np.array([(1, 0), (1, 1), (0, 1), (-1, 0), (-1, -1), (0, -1)], np.float64)
_CHUNK = 1024


def _disk_offsets(k: int) -> tuple[F64, F64]:
    mesh_a, mesh_b = np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1))
    a, b = mesh_a.ravel(), mesh_b.ravel()
    sel = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.abs(a - b)) <= k
    return a[sel].astype(np.float64), b[sel].astype(np.float64)


def _cover_circles(lat: F64, lon: F64, radius_m: F64) -> tuple[I64, I64, Bool]:
    """Vectorized cover of many circles: returns (owner index, cell, is_boundary).

    Candidates are the hex-lattice points within k steps of the centre on the centre's
    icosahedron face, with exact centres from the inverse gnomonic projection. Circles whose
    disk would leave the face, or that touch a pentagon base cell, go through h3 instead."""
    n = len(lat)
    if n == 0:
        e = np.empty(0, np.int64)
        return e, e.copy(), np.empty(0, np.bool_)
    reach = radius_m / R_EARTH_M
    res, ks = _circle_res_k(reach)
    cx, cy, cz = unit(lat, lon)
    grid = _grid()
    slow = np.zeros(n, np.bool_)
    out_o: list[I64] = []
    out_c: list[I64] = []
    out_b: list[Bool] = []
    group_key = res * 1024 + ks
    for g in np.unique(group_key).tolist():
        r, k = g // 1024, g % 1024
        members = np.flatnonzero(group_key == g)
        da, db = _disk_offsets(k)
        m = len(da)
        ext = _REACH_RAD[r]
        for s in range(0, len(members), _CHUNK):
            idx = members[s : s + _CHUNK]
            face, x, y = grid.project(lat[idx], lon[idx], r)
            a0, b0 = grid.round_axial(x, y)
            # the disk one ring further out must stay on this face (its hull is the hexagon
            # spanned by these six corners, and faces are convex in their gnomonic plane)
            off_face = np.zeros(len(idx), np.bool_)
            for dir_a, dir_b in _DIRS * (k + 1):
                vx, vy, vz = grid.axial_to_unit(face, a0 + dir_a, b0 + dir_b, r)
                near = np.argmax(np.stack([vx, vy, vz], 1) @ grid.fc.T, axis=1)
                off_face |= near != face
            fa = np.repeat(face, m)
            aa = (a0[:, None] + da).ravel()
            bb = (b0[:, None] + db).ravel()
            own = np.repeat(idx, m)
            ux, uy, uz = grid.axial_to_unit(fa, aa, bb, r)
            d = _angle_between(ux, uy, uz, cx[own], cy[own], cz[own])
            keep, interior = _classify_circle_cells(d, np.full(len(d), ext), reach[own])
            cells, fb = grid.axial_to_cells(fa[keep], aa[keep], bb[keep], r)
            bad_local = off_face.copy()
            np.logical_or.at(bad_local, np.searchsorted(idx, own[keep][fb]), True)
            slow[idx[bad_local]] = True
            good = ~bad_local[np.searchsorted(idx, own[keep])]
            out_o.append(own[keep][good])
            out_c.append(cells[good])
            out_b.append(~interior[keep][good])
    if slow.any():
        sl = np.flatnonzero(slow)
        o, c, b = _cover_circles_h3(lat[sl], lon[sl], reach[sl], res[sl], ks[sl])
        out_o.append(sl[o])
        out_c.append(c)
        out_b.append(b)
    return _compact_interiors(np.concatenate(out_o), np.concatenate(out_c), np.concatenate(out_b))


def _cover_circles_h3(lat: F64, lon: F64, reach: F64, res: I64, ks: I64) -> tuple[I64, I64, Bool]:
    """Same cover through h3.grid_disk and cell centres (near face edges and pentagons)."""
    n = len(lat)
    l2c = h3i.latlng_to_cell
    disk = h3m.grid_disk
    parts: list[npt.NDArray[np.uint64]] = []
    lens = np.empty(n, np.int64)
    for i, (la, lo, r, k) in enumerate(
        zip(lat.tolist(), lon.tolist(), res.tolist(), ks.tolist(), strict=True)
    ):
        d = np.asarray(disk(l2c(la, lo, r), k))
        parts.append(d)
        lens[i] = len(d)
    cells = np.concatenate(parts).view(np.int64)
    owner = np.repeat(np.arange(n, dtype=np.int64), lens)
    uniq, inv = np.unique(cells, return_inverse=True)
    ulat, ulon = _centres(uniq)
    ux, uy, uz = unit(ulat, ulon)
    cx, cy, cz = unit(lat, lon)
    d = _angle_between(ux[inv], uy[inv], uz[inv], cx[owner], cy[owner], cz[owner])
    ext = np.array(_REACH_RAD)[res]
    keep, interior = _classify_circle_cells(d, ext[owner], reach[owner])
    return owner[keep], cells[keep], ~interior[keep]


def _compact_interiors(owner: I64, cells: I64, boundary: Bool) -> tuple[I64, I64, Bool]:
    """Replace each owner's interior cells by their h3.compact_cells form where it helps."""
    inner_owner = owner[~boundary]
    if len(inner_owner) == 0:
        return owner, cells, boundary
    counts = np.bincount(inner_owner)
    big = np.flatnonzero(counts >= 7)
    if len(big) == 0:
        return owner, cells, boundary
    sel = np.isin(owner, big) & ~boundary
    keep_o, keep_c, keep_b = owner[~sel], cells[~sel], boundary[~sel]
    so, sc = owner[sel], cells[sel]
    order = np.argsort(so, kind="stable")
    so, sc = so[order], sc[order]
    starts = np.flatnonzero(np.r_[True, so[1:] != so[:-1]])
    ends = np.r_[starts[1:], len(so)]
    new_o: list[I64] = [keep_o]
    new_c: list[I64] = [keep_c]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        comp = np.asarray(h3m.compact_cells(sc[s:e].view(np.uint64))).view(np.int64)
        new_o.append(np.full(len(comp), so[s], np.int64))
        new_c.append(comp)
    o = np.concatenate(new_o)
    c = np.concatenate(new_c)
    b = np.concatenate([keep_b, np.zeros(len(c) - len(keep_b), np.bool_)])
    return o, c, b


# --- polygons --------------------------------------------------------------------------------


def _parts(shape: shapely.Polygon | shapely.MultiPolygon) -> list[shapely.Polygon]:
    if isinstance(shape, shapely.MultiPolygon):
        return [p for p in shape.geoms if not p.is_empty]
    return [shape] if not shape.is_empty else []


def _poly_size_rad(shape: shapely.Polygon | shapely.MultiPolygon) -> float:
    minx, miny, maxx, maxy = shape.bounds
    mid = math.radians(min(89.0, max(abs(miny), abs(maxy)) if miny * maxy > 0 else 0.0))
    # the lon span shrinks towards the poles; use the latitude nearest the equator (widest)
    w = math.radians(maxx - minx) * math.cos(mid)
    hgt = math.radians(maxy - miny)
    return max(w, hgt, 1e-9)


def _part_reach(part: shapely.Polygon, lat0: float, lon0: float, res: int) -> float:
    """Upper bound on the angle from (lat0, lon0) to any point of the part."""
    step_deg = max(math.degrees(_RHO_RAD[res]) / 4.0, 1e-7)
    ring = shapely.segmentize(part.exterior, step_deg)
    xy = shapely.get_coordinates(ring)
    px, py, pz = unit(xy[:, 1], xy[:, 0])
    c = unit(np.array([lat0]), np.array([lon0]))
    d = _angle_between(px, py, pz, c[0], c[1], c[2])
    # the maximum of the distance over a region lies on its boundary (unless the region holds
    # the antipode, caught by the caller via reach > pi/2); sub-segments add at most their length
    return float(d.max()) + math.radians(step_deg) * math.sqrt(2.0)


def _poly_plan(shape: shapely.Polygon | shapely.MultiPolygon) -> tuple[int, list[tuple[int, int]]]:
    """Resolution and, per part, (seed cell, k) of the candidate disk (k = -1: all cells)."""
    res = _res_for_reach(_poly_size_rad(shape), _POLY_RHO_RATIO)
    plan: list[tuple[int, int]] = []
    for part in _parts(shape):
        rp = part.representative_point()
        seed = h3i.latlng_to_cell(rp.y, rp.x, res)
        slat, slon = h3i.cell_to_latlng(seed)
        reach = _part_reach(part, slat, slon, res)
        if reach > math.pi / 2:
            plan.append((seed, -1))
        else:
            plan.append((seed, _k_for(reach, res)))
    if len(plan) > 1 and all(k >= 0 for _, k in plan):
        # many parts close together: one disk around the middle may be smaller than the sum
        minx, miny, maxx, maxy = shape.bounds
        seed = h3i.latlng_to_cell((miny + maxy) / 2, (minx + maxx) / 2, res)
        slat, slon = h3i.cell_to_latlng(seed)
        reach = max(_part_reach(p, slat, slon, res) for p in _parts(shape))
        if reach <= math.pi / 2:
            k = _k_for(reach, res)
            if _disk_size(k) < sum(_disk_size(kk) for _, kk in plan):
                plan = [(seed, k)]
    return res, plan


def _plan_count(res: int, plan: Sequence[tuple[int, int]]) -> int:
    total_cells = int(h3i.get_num_cells(res))
    n = sum(total_cells if k < 0 else _disk_size(k) for _, k in plan)
    return min(n, total_cells)


def _classify_cells(
    shape: shapely.Polygon | shapely.MultiPolygon, cells: I64, res: int
) -> tuple[Bool, Bool]:
    """(candidate, interior) per cell, conservatively, against planar lon/lat containment."""
    clat, clon = _centres(cells)
    geoms = np.empty(len(cells), dtype=object)
    geoms[:] = [shape] * len(cells)
    return _classify_boxes(geoms, clat, clon, np.full(len(cells), _REACH_RAD[res]))


def _cover_polygon(
    shape: shapely.Polygon | shapely.MultiPolygon, max_cells: int
) -> tuple[I64, Bool]:
    res, plan = _poly_plan(shape)
    est = _plan_count(res, plan)
    if est > max_cells:
        raise ZoneTooLargeError(f"zone needs ~{est} cells at res {res}, cap is {max_cells}")
    if any(k < 0 for _, k in plan) or est >= h3i.get_num_cells(res):
        cand_cells = np.asarray(h3m.uncompact_cells(np.asarray(h3m.get_res0_cells()), res)).view(
            np.int64
        )
    else:
        cand_cells = np.unique(
            np.concatenate([np.asarray(h3m.grid_disk(s, k)) for s, k in plan]).view(np.int64)
        )
    shapely.prepare(shape)
    cand, interior = _classify_cells(shape, cand_cells, res)
    cells = cand_cells[cand]
    boundary = ~interior[cand]
    owner = np.zeros(len(cells), np.int64)
    _, cells, boundary = _compact_interiors(owner, cells, boundary)
    return cells, boundary


def _cap_boxes(clat: F64, clon: F64, reach_rad: F64) -> tuple[F64, F64, F64, F64, Bool]:
    """Lon/lat boxes holding the spherical caps of `reach_rad` around the centres (all
    longitudes where a cap reaches a pole; longitudes may run past +-180)."""
    rho = reach_rad + _EPS_RAD
    rho_deg = np.degrees(rho)
    ymin = clat - rho_deg - _EPS_DEG
    ymax = clat + rho_deg + _EPS_DEG
    polar = (ymax >= 90.0) | (ymin <= -90.0)
    cosl = np.cos(np.radians(clat))
    ratio = np.where(polar, 1.0, np.sin(rho) / np.maximum(cosl, 1e-300))
    dlon = np.degrees(np.arcsin(np.minimum(1.0, ratio))) + _EPS_DEG
    xmin = np.where(polar, -180.0, clon - dlon)
    xmax = np.where(polar, 180.0, clon + dlon)
    return xmin, np.maximum(ymin, -90.0), xmax, np.minimum(ymax, 90.0), polar


def _classify_boxes(
    geoms: npt.NDArray[np.object_], clat: F64, clon: F64, reach_rad: F64
) -> tuple[Bool, Bool]:
    """(candidate, interior) for many (polygon, cell) pairs, conservatively, against planar
    lon/lat containment. A cell and its descendants lie in the spherical cap of `reach_rad`
    around the cell centre, and the cap lies in a lon/lat box (all longitudes if it reaches a
    pole): candidate if the box meets the polygon, interior if the box is inside it."""
    xmin, ymin, xmax, ymax, polar = _cap_boxes(clat, clon, reach_rad)
    boxes = shapely.box(xmin, ymin, xmax, ymax)
    cand = shapely.intersects(geoms, boxes)
    # boxes poking past the antimeridian also stand for their copy on the other side
    for sel, shift in ((xmin < -180.0, 360.0), (xmax > 180.0, -360.0)):
        if sel.any():
            cand[sel] |= shapely.intersects(
                geoms[sel], shapely.box(xmin[sel] + shift, ymin[sel], xmax[sel] + shift, ymax[sel])
            )
    # a cell touching +-180 may be probed with the other sign of the same meridian, which the
    # planar test sees elsewhere: such cells and polar ones are never interior
    near_am = (xmin <= -180.0 + 1e-7) | (xmax >= 180.0 - 1e-7)
    interior = cand & ~polar & ~near_am
    if interior.any():
        interior[interior] = shapely.contains_properly(geoms[interior], boxes[interior])
    return cand, interior


def _cover_polygons(
    shapes: Sequence[shapely.Polygon | shapely.MultiPolygon], max_cells: int
) -> tuple[I64, I64, Bool]:
    """Covers of many polygons: candidate disks on the face lattice (as for circles), boxes
    classified with one vectorized shapely call. Zones whose disks leave their face, touch a
    pentagon or need every cell of a resolution take the per-zone path."""
    jobs: list[tuple[int, int, int, int]] = []  # owner, res, seed, k
    slow: list[int] = []
    for i, shape in enumerate(shapes):
        res, plan = _poly_plan(shape)
        est = _plan_count(res, plan)
        if est > max_cells:
            raise ZoneTooLargeError(f"zone needs ~{est} cells at res {res}, cap is {max_cells}")
        if any(k < 0 for _, k in plan) or est >= h3i.get_num_cells(res):
            slow.append(i)
        else:
            jobs.extend((i, res, seed, k) for seed, k in plan)
    grid = _grid()
    out_o: list[I64] = []
    out_c: list[I64] = []
    out_lat: list[F64] = []
    out_lon: list[F64] = []
    out_reach: list[F64] = []
    bad = np.zeros(len(shapes), np.bool_)
    job_arr = np.array(jobs, np.int64).reshape(-1, 4)
    group_key = job_arr[:, 1] * 1024 + job_arr[:, 3]
    for g in np.unique(group_key).tolist():
        r, k = g // 1024, g % 1024
        sel = job_arr[group_key == g]
        seeds = sel[:, 2]
        centre = np.array([h3i.cell_to_latlng(int(c)) for c in seeds.tolist()]).reshape(-1, 2)
        face, x, y = grid.project(centre[:, 0], centre[:, 1], r)
        a0, b0 = grid.round_axial(x, y)
        off_face = np.zeros(len(sel), np.bool_)
        for dir_a, dir_b in _DIRS * (k + 1):
            vx, vy, vz = grid.axial_to_unit(face, a0 + dir_a, b0 + dir_b, r)
            off_face |= np.argmax(np.stack([vx, vy, vz], 1) @ grid.fc.T, axis=1) != face
        da, db = _disk_offsets(k)
        m = len(da)
        fa = np.repeat(face, m)
        aa = (a0[:, None] + da).ravel()
        bb = (b0[:, None] + db).ravel()
        own = np.repeat(sel[:, 0], m)
        cells, fb = grid.axial_to_cells(fa, aa, bb, r)
        bad[sel[off_face, 0]] = True
        bad[own[fb]] = True
        ux, uy, uz = grid.axial_to_unit(fa, aa, bb, r)
        out_o.append(own)
        out_c.append(cells)
        out_lat.append(np.degrees(np.arcsin(np.clip(uz, -1.0, 1.0))))
        out_lon.append(np.degrees(np.arctan2(uy, ux)))
        out_reach.append(np.full(len(own), _REACH_RAD[r]))
    owner = np.concatenate(out_o) if out_o else np.empty(0, np.int64)
    cells = np.concatenate(out_c) if out_c else np.empty(0, np.int64)
    boundary = np.empty(0, np.bool_)
    if len(owner):
        clat = np.concatenate(out_lat)
        clon = np.concatenate(out_lon)
        reach = np.concatenate(out_reach)
        keep = ~bad[owner]
        # parts of one zone may share cells
        key = np.stack([owner[keep], cells[keep]], 1)
        _, first = np.unique(key, axis=0, return_index=True)
        idx = np.flatnonzero(keep)[first]
        owner, cells = owner[idx], cells[idx]
        geoms = np.empty(len(shapes), dtype=object)
        geoms[:] = list(shapes)
        cand, interior = _classify_boxes(geoms[owner], clat[idx], clon[idx], reach[idx])
        owner, cells, boundary = owner[cand], cells[cand], ~interior[cand]
    slow.extend(np.flatnonzero(bad).tolist())
    o_l, c_l, b_l = [owner], [cells], [boundary]
    for i in slow:
        c, b = _cover_polygon(shapes[i], max_cells)
        o_l.append(np.full(len(c), i, np.int64))
        c_l.append(c)
        b_l.append(b)
    return _compact_interiors(np.concatenate(o_l), np.concatenate(c_l), np.concatenate(b_l))


def estimate_cell_count(shape: ZoneShape) -> int:
    """Cheap upper estimate of the candidate cells a cover will evaluate (the final cover is
    smaller). Used to refuse zones before covering them."""
    if isinstance(shape, Circle):
        _, k = _circle_plan(shape.radius_m)
        return _disk_size(k)
    res, plan = _poly_plan(shape)
    return _plan_count(res, plan)


def _check_circle(c: Circle) -> None:
    if not (
        math.isfinite(c.lat)
        and math.isfinite(c.lon)
        and -90.0 <= c.lat <= 90.0
        and 0.0 < c.radius_m < math.pi * R_EARTH_M
    ):
        raise ValueError(f"invalid circle {c}")


def cover(shape: ZoneShape, max_cells: int = MAX_CELLS_PER_ZONE) -> Cover:
    """Pure cover function (picklable inputs/outputs; safe to run in a worker pool)."""
    if isinstance(shape, Circle):
        _check_circle(shape)
        est = estimate_cell_count(shape)
        if est > max_cells:
            raise ZoneTooLargeError(f"circle needs ~{est} cells, cap is {max_cells}")
        # one circle: h3's own grid_disk is cheaper than setting up the vectorized lattice
        reach = np.array([shape.radius_m / R_EARTH_M])
        res, ks = _circle_res_k(reach)
        owner, cells, boundary = _cover_circles_h3(
            np.array([float(shape.lat)]), np.array([float(shape.lon)]), reach, res, ks
        )
        _, cells, boundary = _compact_interiors(owner, cells, boundary)
        return Cover(cells, boundary)
    cells, boundary = _cover_polygon(shape, max_cells)
    return Cover(cells, boundary)


def _spatial_order(ids: list[str], shapes: list[ZoneShape]) -> tuple[list[str], list[ZoneShape]]:
    """Zones sorted by the H3 cell (res 9) of their centre: slots are numbered in this order,
    so the rows of zones near each other are near each other in memory, and a lookup's
    candidates share cache lines."""
    lat = np.empty(len(shapes))
    lon = np.empty(len(shapes))
    for i, s in enumerate(shapes):
        if isinstance(s, Circle):
            lat[i], lon[i] = s.lat, s.lon
        else:
            minx, miny, maxx, maxy = s.bounds
            lat[i], lon[i] = (miny + maxy) / 2, (minx + maxx) / 2
    order = np.argsort(latlng_to_cells(lat, lon, 9), kind="stable").tolist()
    return [ids[i] for i in order], [shapes[i] for i in order]


def _poly_record(shape: shapely.Polygon | shapely.MultiPolygon) -> F64:
    """The polygon as the compiled point-in-polygon test reads it (index_kernels, PV_*)."""
    rings: list[F64] = []
    for part in _parts(shape):
        rings.append(shapely.get_coordinates(part.exterior))
        rings.extend(shapely.get_coordinates(r) for r in part.interiors)
    minx, miny, maxx, maxy = shape.bounds
    out: list[F64] = [np.array([minx, miny, maxx, maxy, len(rings), 0.0], np.float64)]
    for r in rings:
        out.append(np.array([len(r)], np.float64))
        out.append(r.ravel())
    rec = np.concatenate(out)
    rec[PV_LEN] = len(rec)
    return rec


# --- hash tables -----------------------------------------------------------------------------


def _excl_cumsum(counts: I64) -> I64:
    out = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _hash_np(cells: I64, shift: int) -> npt.NDArray[np.intp]:
    h = cells.view(np.uint64) * np.uint64(HASH_MULT)
    return (h >> np.uint64(shift)).astype(np.intp)


def _level_slots(ucells: I64, vals: I64) -> tuple[int, I64]:
    """One open-addressing table, interleaved [key, value, key, value, ...] so a probe touches
    one cache line: (bits, slots). Linear probing without wrap-around: sorted by home slot,
    each key lands at max(home, previous + 1), i.e. a running maximum; the table gets a tail
    long enough for the last run plus one empty slot that ends every probe sequence."""
    n = len(ucells)
    bits = max(4, int(2 * n).bit_length())
    home = _hash_np(ucells, 64 - bits)
    order = np.argsort(home, kind="stable")
    ar = np.arange(n)
    pos = np.maximum.accumulate(home[order] - ar) + ar if n else ar
    length = max(1 << bits, int(pos[-1]) + 1 if n else 0) + 1
    slots = np.zeros(2 * length, np.int64)
    slots[2 * pos] = ucells[order]
    slots[2 * pos + 1] = vals[order]
    return bits, slots


@dataclass(frozen=True, slots=True)
class _Tables:
    """The merged entries in one int64 array laid out for the compiled lookup (index_kernels,
    TAB_*): one table per H3 resolution, value >= 0 a single entry code, value < 0 an offset
    into the multi array. In front of the fine levels (res >= FILTER_RES), a table of their
    res-FILTER_RES ancestors says which fine levels have cells there: small (one entry per
    ~5 km2 with zones), so it stays in cache while the big tables do not, pings far from any
    zone stop there, and the others skip levels with nothing nearby."""

    tab: I64
    levels: tuple[tuple[int, int], ...]  # (offset, length) of each level's slots in tab
    n_entries: int
    max_res: int

    @staticmethod
    def build(cells: I64, codes: I64) -> _Tables:
        if len(cells) == 0:
            return _Tables(np.zeros(TAB_HEADER, np.int64), (), 0, -1)
        order = np.lexsort((codes, cells))
        cells, codes = cells[order], codes[order]
        starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
        counts = np.diff(np.r_[starts, len(cells)])
        ucells = cells[starts]
        vals = codes[starts].copy()
        multi_sel = counts > 1
        mstarts = starts[multi_sel]
        mcounts = counts[multi_sel]
        # multi layout: [count, codes...] per multi cell
        moff = _excl_cumsum(mcounts + 1)
        multi = np.zeros(int((mcounts + 1).sum()) + 1, np.int64)
        multi[moff] = mcounts
        if len(mstarts):
            rep = np.repeat(np.arange(len(mstarts)), mcounts)
            within = np.arange(len(rep)) - np.repeat(_excl_cumsum(mcounts), mcounts)
            multi[moff[rep] + 1 + within] = codes[mstarts[rep] + within]
        vals[multi_sel] = -(moff + 1)
        del cells, codes
        res = (ucells >> RES_SHIFT) & 15
        # finest first, so the fine levels (one filter bit each) come first
        built: list[tuple[int, int, I64]] = []
        ancs: list[I64] = []
        for r in sorted(np.unique(res).tolist(), reverse=True):
            sel = res == r
            keys = ucells[sel]
            bits, slots = _level_slots(keys, vals[sel])
            built.append((r, bits, slots))
            if r >= FILTER_RES:
                ancs.append(np.unique((keys & FILTER_CLEAR) | FILTER_SET))
        f_bits, f_slots = 0, np.empty(0, np.int64)
        if ancs:
            anc = np.concatenate(ancs)
            bit = np.concatenate([np.full(len(a), 1 << j, np.int64) for j, a in enumerate(ancs)])
            order = np.argsort(anc, kind="stable")
            anc, bit = anc[order], bit[order]
            first = np.flatnonzero(np.r_[True, anc[1:] != anc[:-1]])
            f_bits, f_slots = _level_slots(anc[first], np.bitwise_or.reduceat(bit, first))
        pos = TAB_HEADER + TAB_LEVEL_COLS * len(built)
        offsets = []
        for _, _, slots in built:
            offsets.append(pos)
            pos += len(slots)
        f_off = pos
        m_off = f_off + len(f_slots)
        tab = np.zeros(m_off + len(multi), np.int64)
        tab[TAB_N_LEVELS] = len(built)
        tab[TAB_N_FINE] = len(ancs)
        tab[TAB_FILTER_OFF] = f_off
        tab[TAB_FILTER_SHIFT] = 64 - f_bits
        tab[TAB_MULTI_OFF] = m_off
        for j, ((r, bits, slots), off) in enumerate(zip(built, offsets, strict=True)):
            h = TAB_HEADER + TAB_LEVEL_COLS * j
            tab[h : h + TAB_LEVEL_COLS] = (off, 64 - bits, PCLEAR[r], PSET[r])
            tab[off : off + len(slots)] = slots
        tab[f_off:m_off] = f_slots
        tab[m_off:] = multi
        levels = tuple((off, len(b[2])) for off, b in zip(offsets, built, strict=True))
        return _Tables(tab, levels, int(counts.sum()), built[0][0])

    def pairs(self) -> tuple[I64, I64]:
        """All (cell, code) pairs, for merging."""
        cs: list[I64] = []
        vs: list[I64] = []
        multi = self.tab[int(self.tab[TAB_MULTI_OFF]) :]
        for off, length in self.levels:
            slots = self.tab[off : off + length]
            k, v = slots[0::2], slots[1::2]
            used = k != EMPTY
            k, v = k[used], v[used]
            single = v >= 0
            cs.append(k[single])
            vs.append(v[single])
            mk = k[~single]
            moff = -v[~single] - 1
            cnt = multi[moff]
            rep = np.repeat(np.arange(len(moff)), cnt)
            within = np.arange(len(rep)) - np.repeat(_excl_cumsum(cnt), cnt)
            cs.append(mk[rep])
            vs.append(multi[moff[rep] + 1 + within])
        if not cs:
            e = np.empty(0, np.int64)
            return e, e.copy()
        return np.concatenate(cs), np.concatenate(vs)


_latlng_to_cell = h3i.latlng_to_cell
_NO_CELLS = np.empty(0, np.int64)


def _release_freed_memory() -> None:
    """A bulk build allocates large temporaries; glibc keeps freed heap pages (its mmap
    threshold adapts upwards after big frees), so hand them back to the OS."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


_lookup_point: Callable[..., int] | None = None


def _warm_up() -> Callable[..., int]:
    global _lookup_point
    if _lookup_point is None:
        _lookup_point = _k.warm_up()
    return _lookup_point


def load_compiled_lookups() -> None:
    """Load the compiled lookups now (from numba's cache: ~0.3-0.5 s once per process, seconds
    on a slow host; compiled when the cache is cold), instead of in the first ZoneIndex(),
    which the service would otherwise build inside the first zone write's request."""
    _warm_up()


# --- the index -------------------------------------------------------------------------------

# max_res, tables, overlay, slot rows, polygon records, output buffer, and for the single
# lookup the array of their addresses (index_kernels.plan_array) and that array's address
_Plan: TypeAlias = tuple[int, I64, I64, F64, F64, I64, I64, int]


class PreparedZones(NamedTuple):
    """A bulk put's zones in spatial order and their covers (ZoneIndex.prepare_many)."""

    ids: list[str]
    shapes: list[ZoneShape]
    covers: list[tuple[I64, Bool] | None]  # per polygon, None for circles
    circ_idx: list[int]
    owner: I64  # the circles': position in circ_idx, cell, on the boundary
    cells: I64
    boundary: Bool


# From this many table entries (~15,000 zones), a merge the owner asked to defer
# (ZoneIndex.defer_merges) is left to it to run beside the event loop: ~0.5 s of work per
# million entries, during which no request of the worker would be answered.
DEFERRED_MERGE_MIN_ENTRIES = 200_000


@dataclass(frozen=True, slots=True)
class MergeJob:
    """A rebuild of an index's tables from a snapshot of its entries, to run in another
    thread (`build`, which touches nothing of the index: the tables it reads are never
    changed in place, the overlay and the liveness are copies) and to install on the
    index's own thread (`ZoneIndex.finish_merge`)."""

    base: _Tables
    overlay_cells: I64
    overlay_codes: I64
    keep_alive: Bool
    dead_entries: int

    def build(self) -> _Tables:
        cells, codes = self.base.pairs()
        cells = np.concatenate([cells, self.overlay_cells])
        codes = np.concatenate([codes, self.overlay_codes])
        live = self.keep_alive[codes >> 2]
        return _Tables.build(cells[live], codes[live])


class ZoneIndex:
    """Zones of one tenant.

    Threading: not thread-safe; call everything from one thread (the event loop), except
    `prepare_many` and `MergeJob.build`, which read nothing the index changes and may run in
    another thread meanwhile. Every method is synchronous, and a put computes the whole cover
    before it touches any visible state, so a lookup sees the old or the new zone, never a
    partial cover, and a failed put (ZoneTooLargeError, invalid circle) changes nothing.

    Liveness: column 3 of a slot's row in _circ (the squared chord radius of a circle, 0 for
    a polygon) is negative while the slot is not live: -1 - value from its creation until
    _switch makes it live, -inf once removed or replaced. The compiled lookup skips entries
    of slots that are not live; they leave the tables at the next merge.

    Costs (country workload, 105k zones, 2-core EPYC): put_many ~25 us per zone; put ~0.2 ms;
    remove ~2 us. Puts and removes accumulate in an overlay; when it passes 1/32 of the table
    entries (or dead entries pass 1/4), the next put/remove rebuilds the tables, which blocks
    for ~0.8 s per 1.4M entries. Bulk changes are cheaper through put_many. Memory: ~1 KB per
    zone (tables ~25 B per cell entry, zone ids, prepared polygons). The first index of a
    process loads the compiled lookups from numba's cache (~0.3 s; ~4 s to compile them when
    the cache is cold).

    Deferred merges: with `defer_merges` set, a merge of an index of at least
    DEFERRED_MERGE_MIN_ENTRIES entries is not run by the put or remove that calls for it; it
    sets `merge_wanted`, and the owner takes a `start_merge()` job, runs its `build()` in a
    thread and hands the tables to `finish_merge()`. Meanwhile lookups use the old tables and
    the overlay, which keeps taking the changes; finish_merge carries over what the overlay
    took after the snapshot. A merge run here (a bulk put) supersedes a job in flight."""

    # floats of removed polygons' records tolerated before the records are rewritten
    PV_SLACK = 1 << 17

    def __init__(self, max_cells_per_zone: int = MAX_CELLS_PER_ZONE) -> None:
        self._lookup_point = _warm_up()
        self.max_cells_per_zone = max_cells_per_zone
        self._zone_slot: dict[str, int] = {}
        self._slot_zone: list[str] = []
        # zone id and prepared polygon per slot as object arrays, for the batch path
        self._slot_zone_np = np.empty(16, dtype=object)
        self._circ = np.zeros(16 * CIRCLE_COLS, np.float64)
        self._polys: dict[int, shapely.Polygon | shapely.MultiPolygon] = {}
        # polygon records (index_kernels, PV_*), appended; compacted by merges
        self._pv = np.zeros(1024, np.float64)
        self._pv_len = 0
        self._pv_dead = 0
        self._tables = _Tables.build(np.empty(0, np.int64), np.empty(0, np.int64))
        self._dead_entries = 0
        self._ov = _k.new_overlay(0)
        self._slot_n = np.zeros(16, np.int32)  # entries per slot, to count dead ones
        self._out = np.zeros(64, np.int64)
        self._out_mv = self._out.data
        self._plan: _Plan
        self._replan()
        self.defer_merges = False
        self.merge_wanted = False
        self._merging: MergeJob | None = None
        # overlay entries added since the snapshot of the merge in flight
        self._added_while_merging: list[tuple[I64, I64]] = []

    # -- public API --

    def __len__(self) -> int:
        return len(self._zone_slot)

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._zone_slot

    def put(self, zone_id: str, shape: ZoneShape) -> None:
        """Add or replace one zone (cover computed first; ZoneTooLargeError leaves no trace)."""
        cov = cover(shape, self.max_cells_per_zone)
        self._commit([(zone_id, shape, cov.cells, cov.boundary)])

    def put_many(self, items: Iterable[tuple[str, ZoneShape]]) -> None:
        """Bulk add/replace. Circles are covered in one vectorized pass; if any zone is too
        large, ZoneTooLargeError is raised and nothing is applied."""
        self.commit(self.prepare_many(items))

    def prepare_many(self, items: Iterable[tuple[str, ZoneShape]]) -> PreparedZones:
        """The covers of a bulk put, computed without touching the index: safe to run in
        another thread while the index serves lookups and changes; `commit` applies them."""
        items = list(items)
        if not items:
            nothing = np.empty(0, np.int64)
            return PreparedZones([], [], [], [], nothing, nothing, np.empty(0, np.bool_))
        # last write wins for repeated ids within the batch
        dedup: dict[str, ZoneShape] = {}
        for zid, shape in items:
            dedup.pop(zid, None)
            dedup[zid] = shape
        for shape in dedup.values():
            if isinstance(shape, Circle):
                _check_circle(shape)
        ids, shapes = _spatial_order(list(dedup), list(dedup.values()))
        circ_idx = [i for i, s in enumerate(shapes) if isinstance(s, Circle)]
        covers: list[tuple[I64, Bool] | None] = [None] * len(shapes)
        poly_idx = [i for i, s in enumerate(shapes) if not isinstance(s, Circle)]
        if poly_idx:
            polys = [shapes[i] for i in poly_idx]
            for s in polys:
                shapely.prepare(s)
            p_owner, p_cells, p_bnd = _cover_polygons(polys, self.max_cells_per_zone)
            order = np.argsort(p_owner, kind="stable")
            p_owner, p_cells, p_bnd = p_owner[order], p_cells[order], p_bnd[order]
            bounds = np.searchsorted(p_owner, np.arange(len(polys) + 1)).tolist()
            for j, i in enumerate(poly_idx):
                covers[i] = (p_cells[bounds[j] : bounds[j + 1]], p_bnd[bounds[j] : bounds[j + 1]])
        if circ_idx:
            circles = [shapes[i] for i in circ_idx]
            lat = np.array([c.lat for c in circles])
            lon = np.array([c.lon for c in circles])
            rad = np.array([c.radius_m for c in circles])
            if self.max_cells_per_zone < _disk_size(5):
                for c in circles:
                    est = estimate_cell_count(c)
                    if est > self.max_cells_per_zone:
                        raise ZoneTooLargeError(
                            f"circle needs ~{est} cells, cap is {self.max_cells_per_zone}"
                        )
            owner, cells, boundary = _cover_circles(lat, lon, rad)
        else:
            owner = np.empty(0, np.int64)
            cells = np.empty(0, np.int64)
            boundary = np.empty(0, np.bool_)
        return PreparedZones(ids, shapes, covers, circ_idx, owner, cells, boundary)

    def commit(self, prepared: PreparedZones) -> None:
        """Applies a prepared bulk put (from this index's prepare_many, at any time since)."""
        if not prepared.ids:
            return
        self._commit_bulk(*prepared)
        _release_freed_memory()

    def remove(self, zone_id: str) -> None:
        slot = self._zone_slot.pop(zone_id, None)
        if slot is None:
            return
        self._retire(slot)
        self._maybe_merge()

    def lookup(self, lat: float, lon: float) -> list[str]:
        """Ids of the zones containing the point (any order)."""
        # one read of the plan: tables, overlay and slot rows that belong together
        plan = self._plan
        n = self._lookup_point(lat, lon, 0, plan[7])
        if not n:
            return []
        if n == 1:  # the usual answer inside a zone: no slice, no map
            return [self._slot_zone[self._out_mv[0]]]
        if n < 0 or n > len(plan[5]):
            n = self._lookup_again(lat, lon, n)
        # no comprehension: before Python 3.12 it costs a function call
        return list(map(self._slot_zone.__getitem__, self._out_mv[:n]))

    def lookup_many(self, lats: npt.ArrayLike, lons: npt.ArrayLike) -> list[list[str]]:
        """Batch form of lookup: one list of zone ids per point."""
        lat = np.ascontiguousarray(lats, dtype=np.float64).ravel()
        lon = np.ascontiguousarray(lons, dtype=np.float64).ravel()
        n = len(lat)
        if len(lon) != n:
            raise ValueError("lats and lons differ in length")
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
            raise ValueError("coordinates must be finite")
        plan = self._plan
        # n fresh lists would trigger a cyclic-GC pass every 700 allocations, each walking the
        # young objects; lists of str cannot form cycles, so collection waits until the end
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if n == 0:
                return []
            pts, slots = self._hits(lat, lon, plan)
            if not len(pts):
                return [[] for _ in range(n)]
            names: list[str] = self._slot_zone_np[slots].tolist()
            # hits sorted by point: each hit point's answer is one slice of the name list
            out: list[list[str]] = [[] for _ in itertools.repeat(None, n)]
            first = np.flatnonzero(np.r_[True, pts[1:] != pts[:-1]])
            ends = np.r_[first[1:], len(pts)]
            for i, a, b in zip(pts[first].tolist(), first.tolist(), ends.tolist(), strict=True):
                out[i] = names[a:b]
            return out
        finally:
            if gc_was_enabled:
                gc.enable()

    def start_merge(self) -> MergeJob | None:
        """The deferred merge to build, if one is wanted and none is in flight."""
        if not self.merge_wanted or self._merging is not None:
            return None
        ov_cells, ov_codes = _k.overlay_pairs(self._ov)
        job = MergeJob(self._tables, ov_cells, ov_codes, self._live(), self._dead_entries)
        self._merging = job
        self._added_while_merging = []
        self.merge_wanted = False
        return job

    def finish_merge(self, job: MergeJob, tables: _Tables | None) -> bool:
        """Installs the job's tables (None: its build failed, the next change asks again);
        False when a later merge superseded the job."""
        if job is not self._merging:
            return False
        added, self._added_while_merging = self._added_while_merging, []
        self._merging = None
        if tables is None:
            self.merge_wanted = True
            return False
        ov = _k.new_overlay(sum(len(cells) for cells, _ in added))
        for cells, codes in added:
            _k.overlay_insert(ov, cells, codes)
        # one assignment each: lookups read self._plan, which still points at the old tables
        self._tables = tables
        self._ov = ov
        # the entries of slots retired since the snapshot are still in the new tables
        self._dead_entries -= job.dead_entries
        if self._pv_compact_due():
            self._pv_compact()
        self._replan()
        self._maybe_merge()
        return True

    # -- internals --

    def _lookup_again(self, lat: float, lon: float, n: int) -> int:
        """The compiled lookup once more: with the cell from h3 (pentagons, points outside
        the numpy grid's table; h3 raises for non-finite input), or with a bigger buffer."""
        q = 0
        if n < 0:
            q = _latlng_to_cell(lat, lon, self._plan[0])
            n = self._lookup_point(lat, lon, q, self._plan[7])
        if n > len(self._out):
            self._out = np.zeros(2 * n, np.int64)
            self._out_mv = self._out.data
            self._replan()
            n = self._lookup_point(lat, lon, q, self._plan[7])
        return int(n)

    def _hits(self, lat: F64, lon: F64, plan: _Plan) -> tuple[I64, I64]:
        """(point index, slot) of every containing zone, sorted by point index."""
        max_res, tab, ov, circ, pv, _, _, _ = plan
        pts, slots, fb = _k.lookup_points(lat, lon, _NO_CELLS, max_res, tab, ov, circ, pv)
        if len(fb):
            f = _latlng_to_cell
            qs = np.array(
                [f(a, b, max_res) for a, b in zip(lat[fb].tolist(), lon[fb].tolist(), strict=True)],
                np.int64,
            )
            p2, s2, _ = _k.lookup_points(lat[fb], lon[fb], qs, max_res, tab, ov, circ, pv)
            pts = np.concatenate([pts, fb[p2]])
            slots = np.concatenate([slots, s2])
            order = np.argsort(pts, kind="stable")
            pts, slots = pts[order], slots[order]
        return pts, slots

    def _replan(self) -> None:
        res_bits = int(self._ov[OV_RES_BITS])
        # an empty index still has a valid resolution: its tables hold no level to probe
        max_res = max(self._tables.max_res, res_bits.bit_length() - 1, 0)
        arrays = (self._tables.tab, self._ov, self._circ, self._pv, self._out)
        plan = _k.plan_array(max_res, *arrays)
        self._plan = (max_res, *arrays, plan, plan.ctypes.data)

    def _live(self) -> Bool:
        out: Bool = self._circ[3::CIRCLE_COLS] >= 0.0
        return out

    def _grow(self, need_slots: int) -> None:
        cap = len(self._slot_n)
        if need_slots <= cap:
            return
        new_cap = max(need_slots, 2 * cap)
        circ = np.zeros(new_cap * CIRCLE_COLS, np.float64)
        circ[: len(self._circ)] = self._circ
        slot_n = np.zeros(new_cap, np.int32)
        slot_n[:cap] = self._slot_n
        self._slot_n = slot_n
        names = np.empty(new_cap, dtype=object)
        names[:cap] = self._slot_zone_np
        self._slot_zone_np = names
        # lookups read the rows through the plan, which the caller refreshes
        self._circ = circ

    def _new_slots(self, ids: list[str], shapes: list[ZoneShape]) -> int:
        first = len(self._slot_zone)
        self._grow(first + len(ids))
        circ = self._circ.reshape(-1, CIRCLE_COLS)
        # not live until _switch: column 3 holds -1 - value
        circ[first : first + len(ids), 3] = -1.0
        ci = [j for j, s in enumerate(shapes) if isinstance(s, Circle)]
        if ci:
            cs = [shapes[j] for j in ci]
            x, y, z = unit(np.array([c.lat for c in cs]), np.array([c.lon for c in cs]))
            rows = np.array(ci) + first
            circ[rows, 0] = x
            circ[rows, 1] = y
            circ[rows, 2] = z
            circ[rows, 3] = -1.0 - _chord_thresh(np.array([c.radius_m for c in cs]))
        for j, s in enumerate(shapes):
            if not isinstance(s, Circle):
                self._polys[first + j] = s
                circ[first + j, 0] = self._pv_append(_poly_record(s))
        # fresh copies of the ids, allocated in slot order: a lookup returns the ids of zones
        # near each other, and their objects (touched to count references) then share cache
        # lines instead of lying wherever the caller allocated them
        ids = [zid.encode().decode() for zid in ids]
        self._slot_zone_np[first : first + len(ids)] = ids
        self._slot_zone.extend(ids)
        return first

    def _retire(self, slot: int) -> None:
        self._circ[slot * CIRCLE_COLS + 3] = -math.inf
        self._dead_entries += int(self._slot_n[slot])
        self._slot_n[slot] = 0
        shape = self._polys.pop(slot, None)
        if shape is not None:
            self._pv_dead += int(self._pv[int(self._circ[slot * CIRCLE_COLS]) + PV_LEN])

    def _pv_append(self, rec: F64) -> int:
        """Appends a polygon record; returns its offset. A bigger arena is a new array, which
        lookups see through the plan once the caller refreshes it."""
        off = self._pv_len
        if off + len(rec) > len(self._pv):
            pv = np.zeros(max(2 * len(self._pv), off + len(rec)), np.float64)
            pv[:off] = self._pv[:off]
            self._pv = pv
        self._pv[off : off + len(rec)] = rec
        self._pv_len = off + len(rec)
        return off

    def _pv_compact_due(self) -> bool:
        """Removed polygons' records take more than the slack and half of the arena."""
        return self._pv_dead > max(self.PV_SLACK, self._pv_len // 2)

    def _pv_compact(self) -> None:
        """Rewrites the arena with the live polygons only (after many were removed)."""
        self._pv = np.zeros(max(1024, self._pv_len - self._pv_dead), np.float64)
        self._pv_len = 0
        self._pv_dead = 0
        for slot, shape in self._polys.items():
            self._circ[slot * CIRCLE_COLS] = self._pv_append(_poly_record(shape))

    def _switch(self, ids: list[str], first: int) -> None:
        col = self._circ[3::CIRCLE_COLS]
        col[first : first + len(ids)] = -1.0 - col[first : first + len(ids)]
        for j, zid in enumerate(ids):
            old = self._zone_slot.get(zid)
            self._zone_slot[self._slot_zone[first + j]] = first + j
            if old is not None:
                self._retire(old)

    def _overlay_add(self, cells: I64, codes: I64) -> None:
        ov = self._ov
        need = int(ov[OV_COUNT]) + len(cells)
        if 2 * need > len(ov) // 2:
            old_cells, old_codes = _k.overlay_pairs(ov)
            ov = _k.new_overlay(2 * need)
            _k.overlay_insert(ov, old_cells, old_codes)
        cells = np.ascontiguousarray(cells)
        codes = np.ascontiguousarray(codes)
        _k.overlay_insert(ov, cells, codes)
        self._ov = ov
        if self._merging is not None:
            self._added_while_merging.append((cells, codes))

    def _commit(self, entries: list[tuple[str, ZoneShape, I64, Bool]]) -> None:
        ids = [e[0] for e in entries]
        first = self._new_slots(ids, [e[1] for e in entries])
        parts_c: list[I64] = []
        parts_k: list[I64] = []
        for j, (_, shape, cells, boundary) in enumerate(entries):
            slot = first + j
            base = (slot << 2) | (0 if isinstance(shape, Circle) else 2)
            parts_c.append(cells.astype(np.int64))
            parts_k.append(base | boundary.astype(np.int64))
            self._slot_n[slot] = len(cells)
        self._overlay_add(np.concatenate(parts_c), np.concatenate(parts_k))
        self._replan()
        self._switch(ids, first)
        self._maybe_merge()

    def _commit_bulk(
        self,
        ids: list[str],
        shapes: list[ZoneShape],
        covers: list[tuple[I64, Bool] | None],
        circ_idx: list[int],
        owner: I64,
        cells: I64,
        boundary: Bool,
    ) -> None:
        n_new = len(cells) + sum(len(c[0]) for c in covers if c is not None)
        first = len(self._slot_zone)
        circ_slot = np.array(circ_idx, np.int64) + first
        parts_c = [cells]
        parts_k = [(circ_slot[owner] << 2) | boundary.astype(np.int64)]
        for j, cv in enumerate(covers):
            if cv is not None:
                parts_c.append(cv[0])
                parts_k.append(((first + j) << 2) | 2 | cv[1].astype(np.int64))
        new_cells = np.concatenate(parts_c)
        new_codes = np.concatenate(parts_k)
        per_slot = np.bincount((new_codes >> 2) - first, minlength=len(ids))
        base = self._tables.n_entries
        if n_new < base // 8 or (self.defer_merges and base >= DEFERRED_MERGE_MIN_ENTRIES):
            # small batch into a big index, or a merge to leave to the owner: the overlay
            first2 = self._new_slots(ids, shapes)
            assert first2 == first
            self._overlay_add(new_cells, new_codes)
        else:
            self._new_slots(ids, shapes)
            self._merge(extra=(new_cells, new_codes), switching=(ids, first))
        self._slot_n[first : first + len(ids)] = per_slot
        self._replan()
        self._switch(ids, first)
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        base = self._tables.n_entries
        ov = int(self._ov[OV_COUNT])
        # the overlay is probed at every resolution it holds and re-hashed as it grows, so it
        # stays small; dead entries only cost table space
        if ov > max(10_000, base // 32) or self._dead_entries > max(50_000, base // 4):
            if self.defer_merges and base >= DEFERRED_MERGE_MIN_ENTRIES:
                self.merge_wanted = True  # unless one is in flight: it may be enough
            else:
                self._merge()
        elif self._pv_compact_due():
            self._pv_compact()
            self._replan()

    def _merge(
        self,
        extra: tuple[I64, I64] | None = None,
        switching: tuple[list[str], int] | None = None,
    ) -> None:
        """Rebuild the tables from the live base entries, the overlay and `extra`."""
        cells, codes = self._tables.pairs()
        ov_cells, ov_codes = _k.overlay_pairs(self._ov)
        parts_c = [cells, ov_cells]
        parts_k = [codes, ov_codes]
        keep_alive = self._live()
        if switching is not None:
            # the new slots are not live yet, but their entries must survive the merge, and
            # the slots they replace may be dropped already
            ids, first = switching
            keep_alive[first : first + len(ids)] = True
            for zid in ids:
                old = self._zone_slot.get(zid)
                if old is not None:
                    keep_alive[old] = False
                    self._slot_n[old] = 0
        if extra is not None:
            parts_c.append(extra[0])
            parts_k.append(extra[1])
        cells = np.concatenate(parts_c)
        codes = np.concatenate(parts_k)
        live = keep_alive[codes >> 2]
        tables = _Tables.build(cells[live], codes[live])
        # one assignment each: lookups read self._plan, which still points at the old tables
        self._tables = tables
        self._ov = _k.new_overlay(0)
        self._dead_entries = 0
        self._merging = None  # this merge holds everything a job in flight would bring
        self._added_while_merging = []
        self.merge_wanted = False
        if self._pv_compact_due():
            self._pv_compact()
        self._replan()
