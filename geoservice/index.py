"""Zone index: covers circle and polygon zones with H3 cells and answers "which zones contain
this point" exactly. Pure data structure (H3 + shapely + numpy); no I/O, no asyncio, no Redis.

Layout. Every zone version gets a *slot*; its cover is a set of (cell, code) pairs where
code = slot << 2 | is_polygon << 1 | is_boundary. Bulk data lives in one open-addressing hash
table per H3 resolution (interleaved int64 key/value slots; the scalar path reads them through
memoryviews), fronted by a small map from res-7 ancestors to the levels present under them.
Incremental puts go to a dict overlay that is merged into fresh tables when it grows. Removing
or replacing a zone only clears its slot's alive flag; dead entries go at the next merge.
Batch lookups and bulk covers use a numpy port of H3's point-to-cell mapping (_Grid).
Cells are H3 ints throughout.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import shapely
from h3.api import basic_int as h3i
from h3.api import memview_int as h3m

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

_RES_SHIFT = 52
# resolution of the cached presence filter in front of the finer tables (res 7: ~5 km2)
_FILTER_RES = 7
_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1
# Fibonacci hashing: (cell * K mod 2^64) >> (64 - bits); same formula in numpy and Python.
_HASH_MULT = 0x9E3779B97F4A7C15
_EMPTY = 0  # never a valid H3 cell


def _low_ones(res: int) -> int:
    return (1 << (3 * (15 - res))) - 1


# parent(cell, r) = (cell & _PCLEAR[r]) | _PSET[r] for any cell finer than r.
_PCLEAR = [_M63 & ~((15 << _RES_SHIFT) | _low_ones(r)) for r in range(16)]
_PSET = [(r << _RES_SHIFT) | _low_ones(r) for r in range(16)]
_FILTER_CLEAR = _PCLEAR[_FILTER_RES]
_FILTER_SET = _PSET[_FILTER_RES]


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


def _unit(lat_deg: F64, lon_deg: F64, radians: bool = False) -> tuple[F64, F64, F64]:
    la = lat_deg if radians else np.radians(lat_deg)
    lo = lon_deg if radians else np.radians(lon_deg)
    c = np.cos(la)
    return c * np.cos(lo), c * np.sin(lo), np.sin(la)


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


# --- vectorized H3 (numpy) -------------------------------------------------------------------
#
# h3.latlng_to_cell costs ~0.4 us per call from Python, too slow for batches and for covering
# 10^5..10^6 circles. _Grid reimplements H3's forward mapping for whole arrays: pick the
# icosahedron face (nearest face centre), gnomonic-project onto the face plane, round to the hex
# lattice, then peel off aperture-7 digits two levels at a time with residue lookup tables, and
# finally map (face, res-0 ijk) to base cell and rotation. The face geometry comes from h3 at
# start-up; the (face, ijk) -> base cell/rotation table below was derived by comparing with h3
# on random points (tests/test_index.py re-checks the whole mapping against h3). Points whose
# base cell is a pentagon (6 % of the globe, mostly ocean) or that fall outside the table go
# through h3 itself. Rounding may differ from h3 only for points within ~1e-15 rad of a cell
# edge; covers carry a larger slack (_RHO_RAD), so such a point still finds every zone.

# 20 faces x 27 (i, j, k in 0..2): two hex digits of base cell + 1, one digit of rotation + 1.
_FACE_TABLE = (
    "1111311902211f12143203140000910660b61710000002a20000000500160001020000000000000000310710f0"
    "0b10c11241901840000110260a60610000001320000000500460000920000000000000000811612700a1141234"
    "0f01540000410e61e60210000000720000000500d60000120000000000000001b12b13b01e12c13f4270304000"
    "0d11d62d60e10000001620000000501060000420000000000000002012a13202d13613e43b0424000101176226"
    "1d10000002b20000000500960000d20000000000000003334735403134435863204360002133564b61f6000000"
    "2260000001902660001360000000000000001a32e34001832833c61902660001232463960c60000000b6000000"
    "0f01c60000760000000000000002552352703853723424904a20001551421622950000003d20000000f00a2000"
    "1c20000000000000004153f53b05555324d26206320003052c22b24650000005a20000002701e2000342000000"
    "0000000004c35f36c04235736963b04d60003e35266663660000002d60000003204360002a6000000000000000"
    "3a13c14004b14f45045405d40002612842e43510000004740000001901840002140000000000000002f13d1490"
    "3914545144004e40001c12943842410000002e40000000f01540001240000000000000004815a16204a15c4684"
    "4905940003414645543710000003840000002703040002340000000000000006116916c06316f4744620704000"
    "4d15745f45310000005540000003b04240003f40000000000000005615815406616746546c0714000431444474"
    "5210000005f40000003203140003e40000000000000006036e37605d36d37725406520005035e46b44f3000000"
    "4b60000004004e40003c60000000000000005b55154906b56465967607260004e54553d25e50000006e4000000"
    "4003920005040000000000000006a56856207257567067607a60005955c55a26450000006b40000004904a2000"
    "5140000000000000007857456c07a57967167607760007056f5692755000000724000000620632000684000000"
    "0000000007337737607137937a26c07420006536d46e46730000006660000005405d4000586000000000000000"
)
_SQRT7 = 2.6457513110645905905016157536392604257102
_SQRT3_2 = 0.8660254037844386467637231707529361834714
_AP7_ROT_RADS = 0.333473172251832115336090755351601070065900389
_INV_RES0_U_GNOMONIC = 2.61803398874989588842
# axial (i - k, j - k) offsets of the digits 0..6 (center, K, J, JK, I, IK, IJ)
_UNIT_AXIAL = np.array([(0, 0), (-1, -1), (0, 1), (-1, 0), (1, 0), (0, -1), (1, 1)], np.int64)
_ROT60_CCW = np.array([0, 5, 3, 1, 6, 4, 2, 7], np.int64)
# child axial = D @ parent axial + unit(digit), for a Class III / Class II child resolution
_DOWN_III = np.array([[2, 1], [-1, 3]], np.int64)
_DOWN_II = np.array([[3, -1], [1, 2]], np.int64)


@dataclass(frozen=True, slots=True)
class _Step:
    """Peels `levels` digits at once: key = (a mod m, b mod m) -> digits and offset, then
    parent = adj @ (child - offset) / det (exact)."""

    levels: int
    mod: float
    digits: npt.NDArray[np.int64]  # packed: d_fine << 3*(levels-1) | ... | d_coarse
    off_a: F64
    off_b: F64
    adj: tuple[float, float, float, float]
    det: float


def _make_step(classes: Sequence[int]) -> _Step:
    mats = [_DOWN_III if c == 3 else _DOWN_II for c in classes]
    total = np.eye(2, dtype=np.int64)
    for m in mats:
        total = total @ m
    det = round(float(np.linalg.det(total)))
    adj = (float(total[1, 1]), float(-total[0, 1]), float(-total[1, 0]), float(total[0, 0]))
    mod = 7 ** len(classes)
    digits = np.full(mod * mod, -1, np.int64)
    off_a = np.zeros(mod * mod)
    off_b = np.zeros(mod * mod)
    grid_a, grid_b = np.meshgrid(np.arange(mod), np.arange(mod))
    ga, gb = grid_a.ravel(), grid_b.ravel()
    for combo in np.ndindex(*([7] * len(classes))):
        off = np.zeros(2, np.int64)
        acc = np.eye(2, dtype=np.int64)
        packed = 0
        for lvl, d in enumerate(combo):
            off = off + acc @ _UNIT_AXIAL[d]
            acc = acc @ mats[lvl]
            packed = (packed << 3) | d
        ca = total[0, 0] * ga + total[0, 1] * gb + off[0]
        cb = total[1, 0] * ga + total[1, 1] * gb + off[1]
        key = (ca % mod) * mod + (cb % mod)
        digits[key] = packed
        off_a[key] = off[0]
        off_b[key] = off[1]
    assert (digits >= 0).all()
    return _Step(len(classes), float(mod), digits, off_a, off_b, adj, float(det))


class _Grid:
    def __init__(self) -> None:
        centres: dict[int, list[int]] = {}
        for c in h3i.get_res0_cells():
            faces = h3i.get_icosahedron_faces(c)
            if len(faces) == 1:
                centres.setdefault(faces[0], []).append(c)
        lat = np.zeros(20)
        lon = np.zeros(20)
        az = np.zeros(20)
        for f in range(20):
            pts = [np.radians(h3i.cell_to_latlng(c)) for c in sorted(centres[f])]
            xyz = [_unit(np.array([p[0]]), np.array([p[1]]), radians=True) for p in pts]
            # the face-centre cell is the one nearest to the other three
            dist = [
                sum(sum(float((xyz[i][d] - xyz[j][d])[0]) ** 2 for d in range(3)) for j in range(4))
                for i in range(4)
            ]
            best = int(np.argmin(dist))
            la, lo = pts[best]
            la2, lo2 = pts[next(i for i in range(4) if i != best)]
            az[f] = math.atan2(
                math.cos(la2) * math.sin(lo2 - lo),
                math.cos(la) * math.sin(la2) - math.sin(la) * math.cos(la2) * math.cos(lo2 - lo),
            )
            lat[f], lon[f] = la, lo
        self.fc = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
        north = np.stack([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)], 1)
        east = np.stack([-np.sin(lon), np.cos(lon), np.zeros(20)], 1)
        # hex2d x axis points at azimuth az (H3's faceAxesAzRadsCII[f][0]); y is 90 deg ccw
        e1 = north * np.cos(az)[:, None] + east * np.sin(az)[:, None]
        e2 = north * np.sin(az)[:, None] - east * np.cos(az)[:, None]
        ca, sa = math.cos(_AP7_ROT_RADS), math.sin(_AP7_ROT_RADS)
        # Class III resolutions measure angles AP7_ROT further clockwise
        e1c3 = e1 * ca + e2 * sa
        e2c3 = e2 * ca - e1 * sa
        # one matrix per class: columns = (e1 . p, e2 . p) of every face
        self.proj = {
            0: np.concatenate([e1.T, e2.T], axis=1),
            1: np.concatenate([e1c3.T, e2c3.T], axis=1),
        }
        self.fc_t = np.ascontiguousarray(self.fc.T)
        self.basis = {0: (e1, e2), 1: (e1c3, e2c3)}
        table = "".join(_FACE_TABLE)
        self.base_cell = np.array([int(table[3 * i : 3 * i + 2], 16) - 1 for i in range(540)])
        self.rot = np.array([int(table[3 * i + 2]) - 1 for i in range(540)])
        # steps: key (class of the finer level, levels)
        self.steps = {
            (3, 1): _make_step([3]),
            (2, 1): _make_step([2]),
            (3, 2): _make_step([3, 2]),
            (2, 2): _make_step([2, 3]),
        }
        # rotate a packed pair of digits 0..5 times; index rot * 64 + (d_fine << 3 | d_coarse),
        # value in index order (d_coarse << 3 | d_fine)
        rp = [np.arange(8)]
        for _ in range(5):
            rp.append(_ROT60_CCW[rp[-1]])
        self.rot1 = np.stack(rp).ravel()
        pair = np.arange(64)
        self.rot2 = np.concatenate([(r[pair & 7] << 3) | r[pair >> 3] for r in rp])

    def project(self, lat_deg: F64, lon_deg: F64, res: int) -> tuple[I64, F64, F64]:
        """Face and hex2d coordinates (H3's _geoToHex2d, via tangent-plane basis vectors)."""
        la = np.radians(lat_deg)
        lo = np.radians(lon_deg)
        cl = np.cos(la)
        p = np.empty((len(la), 3))
        p[:, 0] = cl * np.cos(lo)
        p[:, 1] = cl * np.sin(lo)
        p[:, 2] = np.sin(la)
        dots = p @ self.fc_t
        face = np.argmax(dots, axis=1)
        rows = np.arange(len(face))
        f = (_INV_RES0_U_GNOMONIC * _SQRT7**res) / dots[rows, face]
        m = p @ self.proj[res & 1]
        return face, m[rows, face] * f, m[rows, face + 20] * f

    @staticmethod
    def round_axial(x: F64, y: F64) -> tuple[F64, F64]:
        """Nearest lattice point (the hexagon containing the point), as float axial (a, b)."""
        b = y / _SQRT3_2
        q = x - 0.5 * b
        r = b
        s = -q - r
        rq, rr, rs = np.rint(q), np.rint(r), np.rint(s)
        dq, dr, ds = np.abs(rq - q), np.abs(rr - r), np.abs(rs - s)
        fix_q = (dq > dr) & (dq > ds)
        fix_r = ~fix_q & (dr > ds)
        rq = np.where(fix_q, -rr - rs, rq)
        rr = np.where(fix_r, -rq - rs, rr)
        return rq + rr, rr

    def axial_to_cells(self, face: I64, a: F64, b: F64, res: int) -> tuple[I64, Bool]:
        """H3 cells of lattice points (a, b) on `face` at `res`; also which need h3 itself."""
        out = np.zeros(len(a), np.int64)
        packed: list[tuple[int, int, npt.NDArray[np.int64]]] = []
        lvl = res
        while lvl > 0:
            n_lv = 2 if lvl >= 2 else 1
            st = self.steps[(3 if lvl & 1 else 2, n_lv)]
            mod = st.mod
            ka = a - np.floor((a + 0.5) / mod) * mod
            kb = b - np.floor((b + 0.5) / mod) * mod
            key = (ka * mod + kb).astype(np.intp)
            packed.append((lvl, n_lv, st.digits[key]))
            ca = a - st.off_a[key]
            cb = b - st.off_b[key]
            a = np.rint((st.adj[0] * ca + st.adj[1] * cb) / st.det)
            b = np.rint((st.adj[2] * ca + st.adj[3] * cb) / st.det)
            lvl -= n_lv
        i = a.astype(np.int64)
        j = b.astype(np.int64)
        m = np.minimum(np.minimum(i, j), 0)
        i, j, k = i - m, j - m, -m
        ok = (i <= 2) & (j <= 2) & (k <= 2)
        key0 = np.where(ok, face * 27 + i * 9 + j * 3 + k, 0)
        bc = self.base_cell[key0]
        rot = self.rot[key0]
        fallback = ~ok | (rot < 0) | (bc < 0)
        rot = np.maximum(rot, 0)
        out = (np.maximum(bc, 0).astype(np.int64) << 45) | (
            (1 << 59) | (res << 52) | _low_ones(res)
        )
        for lvl, n_lv, d in packed:
            shift = 3 * (15 - lvl)
            if n_lv == 2:
                out |= self.rot2[rot * 64 + d] << shift
            else:
                out |= self.rot1[rot * 8 + d] << shift
        return out, fallback

    def axial_to_unit(self, face: I64, a: F64, b: F64, res: int) -> tuple[F64, F64, F64]:
        """Unit vectors of lattice points (inverse gnomonic of hex2d)."""
        scale = _INV_RES0_U_GNOMONIC * _SQRT7**res
        x = (a - 0.5 * b) / scale
        y = b * _SQRT3_2 / scale
        e1, e2 = self.basis[res & 1]
        v = self.fc[face] + e1[face] * x[:, None] + e2[face] * y[:, None]
        v /= np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
        return v[:, 0], v[:, 1], v[:, 2]

    def cells(self, lat: F64, lon: F64, res: int) -> I64:
        face, x, y = self.project(lat, lon, res)
        a, b = self.round_axial(x, y)
        out, fb = self.axial_to_cells(face, a, b, res)
        if fb.any():
            f = h3i.latlng_to_cell
            idx = np.flatnonzero(fb)
            out[idx] = [
                f(la, lo, res) for la, lo in zip(lat[idx].tolist(), lon[idx].tolist(), strict=True)
            ]
        return out


_GRID: _Grid | None = None


def _grid() -> _Grid:
    global _GRID
    if _GRID is None:
        _GRID = _Grid()
    return _GRID


def latlng_to_cells(lat: F64, lon: F64, res: int) -> I64:
    """H3 cells (int64) of many points at one resolution (vectorized; agrees with
    h3.latlng_to_cell except possibly within ~1e-15 rad of a cell edge)."""
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    return _grid().cells(lat, lon, res)


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
    cx, cy, cz = _unit(lat, lon)
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
    ux, uy, uz = _unit(ulat, ulon)
    cx, cy, cz = _unit(lat, lon)
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
    px, py, pz = _unit(xy[:, 1], xy[:, 0])
    c = _unit(np.array([lat0]), np.array([lon0]))
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


class _AreaMask:
    """Coarse lon/lat raster of where cells of the fine levels (res >= _FILTER_RES) may lie,
    built from their res-_FILTER_RES ancestors. A batch computes H3 cells only for points on
    marked pixels: pings far from every zone cost a few array operations."""

    _MAX_PIXELS = 1 << 21

    def __init__(self, anc: I64) -> None:
        clat, clon = _centres(anc)
        xmin, ymin, xmax, ymax, _ = _cap_boxes(
            clat, clon, np.full(len(anc), _REACH_RAD[_FILTER_RES])
        )
        # boxes running past the antimeridian are marked on both sides
        parts = [(np.maximum(xmin, -180.0), ymin, np.minimum(xmax, 180.0), ymax)]
        west = xmin < -180.0
        east = xmax > 180.0
        parts.append((xmin[west] + 360.0, ymin[west], np.full(west.sum(), 180.0), ymax[west]))
        parts.append((np.full(east.sum(), -180.0), ymin[east], xmax[east] - 360.0, ymax[east]))
        x0, y0, x1, y1 = (np.concatenate([p[i] for p in parts]) for i in range(4))
        self.lon0 = float(x0.min())
        self.lat0 = float(y0.min())
        span_x = float(x1.max()) - self.lon0
        span_y = float(y1.max()) - self.lat0
        self.step = max(0.01, math.sqrt(span_x * span_y / self._MAX_PIXELS), 1e-9)
        self.nx = int(span_x / self.step) + 2
        self.ny = int(span_y / self.step) + 2
        grid = np.zeros((self.ny, self.nx), np.bool_)
        ix0 = np.floor((x0 - self.lon0) / self.step).astype(np.int64)
        ix1 = np.floor((x1 - self.lon0) / self.step).astype(np.int64)
        iy0 = np.floor((y0 - self.lat0) / self.step).astype(np.int64)
        iy1 = np.floor((y1 - self.lat0) / self.step).astype(np.int64)
        for a, b, c, d in zip(iy0.tolist(), iy1.tolist(), ix0.tolist(), ix1.tolist(), strict=True):
            grid[a : b + 1, c : d + 1] = True
        self.grid = grid.ravel()

    def covers(self, lat: F64, lon: F64) -> Bool:
        # the same longitude wrapped into [-180, 180], as the point's H3 cell would see it
        lon_n = np.where((lon < -180.0) | (lon > 180.0), (lon + 180.0) % 360.0 - 180.0, lon)
        out = self._pixels(lat, lon_n)
        edge = np.abs(lon_n) == 180.0
        if edge.any():
            e = np.flatnonzero(edge)
            out[e] |= self._pixels(lat[e], -lon_n[e])
        return out

    def _pixels(self, lat: F64, lon: F64) -> Bool:
        ix = np.floor((lon - self.lon0) / self.step)
        iy = np.floor((lat - self.lat0) / self.step)
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        out = np.zeros(len(lat), np.bool_)
        idx = (iy[inside] * self.nx + ix[inside]).astype(np.intp)
        out[inside] = self.grid[idx]
        return out


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


# --- hash tables -----------------------------------------------------------------------------


class _Level:
    """Open-addressing (linear probing, no wrap-around) table of one resolution: cell -> value,
    stored interleaved as [key, value, key, value, ...] so a probe touches one cache line.
    value >= 0 is a single entry code; value < 0 is -(offset + 1) into the shared multi array
    laid out as [count, code, code, ...]."""

    __slots__ = ("anc", "keys", "pclear", "pset", "res", "shift", "slots", "slots_mv", "vals")

    def __init__(self, res: int, bits: int, slots: I64, anc: I64) -> None:
        self.res = res
        # sorted res-_FILTER_RES ancestors of the keys (empty for coarser levels)
        self.anc = anc
        self.slots = slots
        self.slots_mv = slots.data
        self.keys = slots[0::2]
        self.vals = slots[1::2]
        self.shift = 64 - bits
        self.pclear = _PCLEAR[res]
        self.pset = _PSET[res]


def _excl_cumsum(counts: I64) -> I64:
    out = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _hash_np(cells: I64, shift: int) -> npt.NDArray[np.intp]:
    h = cells.view(np.uint64) * np.uint64(_HASH_MULT)
    return (h >> np.uint64(shift)).astype(np.intp)


def _build_level(res: int, ucells: I64, vals: I64) -> _Level:
    """Linear probing without wrap-around: sorted by home slot, each key lands at
    max(home, previous + 1), i.e. a running maximum; the table gets a tail long enough for
    the last run plus one empty slot that ends every probe sequence."""
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
    anc = (
        np.unique((ucells & _FILTER_CLEAR) | _FILTER_SET)
        if res >= _FILTER_RES
        else np.empty(0, np.int64)
    )
    return _Level(res, bits, slots, anc)


def _probe_np(level: _Level, q: I64) -> tuple[npt.NDArray[np.intp], I64]:
    """Vectorized lookup: (indices into q that hit, their values)."""
    pos = _hash_np(q, level.shift)
    todo = np.arange(len(q))
    hit_i: list[npt.NDArray[np.intp]] = []
    hit_v: list[I64] = []
    keys = level.keys
    qt = q
    while len(todo):
        k = keys[pos]
        found = k == qt
        if found.any():
            hit_i.append(todo[found])
            hit_v.append(level.vals[pos[found]])
        more = ~found & (k != _EMPTY)
        todo = todo[more]
        qt = qt[more]
        pos = pos[more] + 1
    if not hit_i:
        return np.empty(0, np.intp), np.empty(0, np.int64)
    return np.concatenate(hit_i), np.concatenate(hit_v)


_Probe: TypeAlias = tuple[int, int, int, memoryview]


def _probe(lv: _Level) -> _Probe:
    """What the scalar lookup needs per level, ready to unpack in its loop."""
    return (lv.pclear, lv.pset, lv.shift, lv.slots_mv)


@dataclass(frozen=True, slots=True)
class _Tables:
    levels: tuple[_Level, ...]
    multi: I64
    multi_mv: memoryview
    n_entries: int
    # res-_FILTER_RES ancestor -> the levels worth probing under it (the finer levels that
    # have cells there, plus all coarser levels). Small (one entry per ~5 km2 with zones), so
    # it stays in cache while the big tables do not: pings far from any zone stop here, and
    # the others skip levels with nothing nearby.
    filter_map: dict[int, tuple[_Probe, ...]]
    coarse_probes: tuple[_Probe, ...]
    # the same for batches: sorted ancestors and a bitmask over the fine levels per ancestor
    anc_all: I64
    anc_mask: I64
    area: _AreaMask | None

    @staticmethod
    def build(cells: I64, codes: I64) -> _Tables:
        if len(cells) == 0:
            e = np.zeros(1, np.int64)
            return _Tables((), e, e.data, 0, {}, (), e[:0], e[:0], None)
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
        res = (ucells >> _RES_SHIFT) & 15
        levels = []
        for r in np.unique(res).tolist():
            sel = res == r
            levels.append(_build_level(int(r), ucells[sel], vals[sel]))
        # finest first: the probe order does not matter, but keep it deterministic
        levels.sort(key=lambda lv: -lv.res)
        coarse = tuple(_probe(lv) for lv in levels if lv.res < _FILTER_RES)
        fine = [lv for lv in levels if lv.res >= _FILTER_RES]
        fmap: dict[int, tuple[_Probe, ...]] = {}
        anc_all = np.empty(0, np.int64)
        anc_mask = np.empty(0, np.int64)
        if fine:
            anc = np.concatenate([lv.anc for lv in fine])
            bit = np.concatenate(
                [np.full(len(lv.anc), 1 << j, np.int64) for j, lv in enumerate(fine)]
            )
            order = np.argsort(anc, kind="stable")
            anc, bit = anc[order], bit[order]
            starts = np.flatnonzero(np.r_[True, anc[1:] != anc[:-1]])
            masks = np.bitwise_or.reduceat(bit, starts)
            by_mask = {
                m: tuple(_probe(lv) for j, lv in enumerate(fine) if m >> j & 1) + coarse
                for m in np.unique(masks).tolist()
            }
            fmap = dict(
                zip(anc[starts].tolist(), (by_mask[m] for m in masks.tolist()), strict=True)
            )
            anc_all, anc_mask = anc[starts], masks
        area = _AreaMask(anc_all) if len(anc_all) else None
        return _Tables(
            tuple(levels), multi, multi.data, len(cells), fmap, coarse, anc_all, anc_mask, area
        )

    def pairs(self) -> tuple[I64, I64]:
        """All (cell, code) pairs, for merging."""
        cs: list[I64] = []
        vs: list[I64] = []
        for lv in self.levels:
            used = lv.keys != _EMPTY
            k = lv.keys[used]
            v = lv.vals[used]
            single = v >= 0
            cs.append(k[single])
            vs.append(v[single])
            mk = k[~single]
            off = -v[~single] - 1
            cnt = self.multi[off]
            rep = np.repeat(np.arange(len(off)), cnt)
            within = np.arange(len(rep)) - np.repeat(_excl_cumsum(cnt), cnt)
            cs.append(mk[rep])
            vs.append(self.multi[off[rep] + 1 + within])
        if not cs:
            e = np.empty(0, np.int64)
            return e, e.copy()
        return np.concatenate(cs), np.concatenate(vs)


def _expand(
    tables: _Tables, idx: npt.NDArray[np.intp], vals: I64
) -> tuple[npt.NDArray[np.intp], I64]:
    single = vals >= 0
    if single.all():
        return idx, vals
    off = -vals[~single] - 1
    cnt = tables.multi[off]
    rep = np.repeat(np.arange(len(off)), cnt)
    within = np.arange(len(rep)) - np.repeat(_excl_cumsum(cnt), cnt)
    mi = idx[~single][rep]
    mv = tables.multi[off[rep] + 1 + within]
    return np.concatenate([idx[single], mi]), np.concatenate([vals[single], mv])


_latlng_to_cell = h3i.latlng_to_cell
# shapely's per-point predicate without the ufunc machinery (~0.1 us instead of ~2.5 us)
_contains_xy: Callable[[Any, float, float], bool] = getattr(
    shapely.lib, "contains_xy_scalar", shapely.contains_xy
)


def _release_freed_memory() -> None:
    """A bulk build allocates large temporaries; glibc keeps freed heap pages (its mmap
    threshold adapts upwards after big frees), so hand them back to the OS."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


# --- the index -------------------------------------------------------------------------------

_CIRCLE_COLS = 4  # x, y, z of the centre unit vector, squared chord of the radius


class ZoneIndex:
    """Zones of one tenant.

    Threading: not thread-safe; call everything from one thread (the event loop). Every
    method is synchronous, and a put computes the whole cover before it touches any visible
    state, so a lookup sees the old or the new zone, never a partial cover, and a failed put
    (ZoneTooLargeError, invalid circle) changes nothing.

    Costs (country workload, 105k zones, 2-core EPYC): put_many ~25 us per zone; put ~0.2 ms;
    remove ~2 us. Puts and removes accumulate in an overlay; when it passes 1/32 of the table
    entries (or dead entries pass 1/4), the next put/remove rebuilds the tables, which blocks
    for ~0.8 s per 1.4M entries. Bulk changes are cheaper through put_many. The first batch
    lookup after a change re-tables the overlay (~10 ms at 40k entries). Memory: ~1 KB per
    zone (tables ~25 B per cell entry, zone ids, prepared polygons)."""

    def __init__(self, max_cells_per_zone: int = MAX_CELLS_PER_ZONE) -> None:
        self.max_cells_per_zone = max_cells_per_zone
        self._zone_slot: dict[str, int] = {}
        self._slot_zone: list[str] = []
        # zone id and prepared polygon per slot as object arrays, for the batch path
        self._slot_zone_np = np.empty(16, dtype=object)
        self._alive = np.zeros(16, np.uint8)
        self._alive_mv = self._alive.data
        self._circ = np.zeros(16 * _CIRCLE_COLS, np.float64)
        self._circ_mv = self._circ.data
        self._polys: dict[int, shapely.Polygon | shapely.MultiPolygon] = {}
        self._poly_np = np.empty(16, dtype=object)
        self._tables = _Tables.build(np.empty(0, np.int64), np.empty(0, np.int64))
        self._dead_entries = 0
        self._overlay: dict[int, tuple[int, ...]] = {}
        self._ov_res_count = [0] * 16
        self._ov_tables: _Tables | None = None
        self._slot_n = np.zeros(16, np.int32)  # entries per slot, to count dead ones
        self._plan: tuple[
            int,
            tuple[_Probe, ...],
            dict[int, tuple[_Probe, ...]],
            memoryview,
            dict[int, tuple[int, ...]],
            tuple[int, ...],
        ] = (-1, (), {}, self._tables.multi_mv, self._overlay, ())
        self._replan()

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
        items = list(items)
        if not items:
            return
        # last write wins for repeated ids within the batch
        dedup: dict[str, ZoneShape] = {}
        for zid, shape in items:
            dedup.pop(zid, None)
            dedup[zid] = shape
        ids = list(dedup)
        shapes = list(dedup.values())
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
            for c in circles:
                _check_circle(c)
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
        self._commit_bulk(ids, shapes, covers, circ_idx, owner, cells, boundary)
        del owner, cells, boundary, covers
        _release_freed_memory()

    def remove(self, zone_id: str) -> None:
        slot = self._zone_slot.pop(zone_id, None)
        if slot is None:
            return
        self._alive[slot] = 0
        self._retire(slot)
        self._maybe_merge()

    def lookup(self, lat: float, lon: float) -> list[str]:
        """Ids of the zones containing the point (any order)."""
        # one read of the plan: tables, overlay and resolutions that belong together
        max_res, coarse_probes, filt, multi, ov, ov_res = self._plan
        if max_res < 0:
            return []
        q = _latlng_to_cell(lat, lon, max_res)
        probes = filt.get((q & _FILTER_CLEAR) | _FILTER_SET, coarse_probes)
        cand: list[int] = []
        for pclear, pset, shift, table in probes:
            p = (q & pclear) | pset
            i = (((p * _HASH_MULT) & _M64) >> shift) << 1
            k = table[i]
            while k != p:
                if not k:
                    break
                i += 2
                k = table[i]
            else:
                v = table[i + 1]
                if v >= 0:
                    cand.append(v)
                else:
                    o = -v - 1
                    cand.extend(multi[o + 1 : o + 1 + multi[o]])
        if ov_res:
            for r in ov_res:
                got = ov.get((q & _PCLEAR[r]) | _PSET[r])
                if got:
                    cand.extend(got)
        if not cand:
            return []
        out: list[str] = []
        circ = self._circ_mv
        alive = self._alive_mv
        names = self._slot_zone
        la = math.radians(lat)
        lo = math.radians(lon)
        cl = math.cos(la)
        px, py, pz = cl * math.cos(lo), cl * math.sin(lo), math.sin(la)
        # entries of removed or replaced zones stay in the tables until the next merge
        check_alive = self._dead_entries > 0
        for code in cand:
            slot = code >> 2
            if check_alive and not alive[slot]:
                continue
            if code & 1:
                if code & 2:
                    if not _contains_xy(self._polys[slot], lon, lat):
                        continue
                else:
                    # code & -4 == slot * _CIRCLE_COLS: the circle's row in _circ
                    b = code & -4
                    dx = px - circ[b]
                    dy = py - circ[b + 1]
                    dz = pz - circ[b + 2]
                    if dx * dx + dy * dy + dz * dz > circ[b + 3]:
                        continue
            out.append(names[slot])
        return out

    def lookup_many(self, lats: npt.ArrayLike, lons: npt.ArrayLike) -> list[list[str]]:
        """Batch form of lookup: one list of zone ids per point."""
        lat = np.ascontiguousarray(lats, dtype=np.float64).ravel()
        lon = np.ascontiguousarray(lons, dtype=np.float64).ravel()
        n = len(lat)
        if len(lon) != n:
            raise ValueError("lats and lons differ in length")
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
            raise ValueError("coordinates must be finite")
        max_res, _, _, _, _, ov_res = self._plan
        # n fresh lists would trigger a cyclic-GC pass every 700 allocations, each walking the
        # young objects; lists of str cannot form cycles, so collection waits until the end
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if n == 0 or (not self._tables.levels and not ov_res):
                return [[] for _ in range(n)]
            pts, names = self._hits(lat, lon, max_res)
            if not names:
                return [[] for _ in range(n)]
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

    def _hits(self, lat: F64, lon: F64, max_res: int) -> tuple[npt.NDArray[np.intp], list[str]]:
        """(point index, zone id) of every containing zone, sorted by point index."""
        all_tables = self._all_tables()
        sel: npt.NDArray[np.intp] | None = None
        if all(not t.coarse_probes for t in all_tables):
            # only points near some fine-level cell need their H3 cell
            near = np.zeros(len(lat), np.bool_)
            for t in all_tables:
                if t.area is not None:
                    near |= t.area.covers(lat, lon)
            sel = np.flatnonzero(near)
            lat, lon = lat[sel], lon[sel]
        q = latlng_to_cells(lat, lon, max_res)
        pts_l: list[npt.NDArray[np.intp]] = []
        codes_l: list[I64] = []
        for tables in all_tables:
            mask = np.zeros(len(q), np.int64)
            if len(tables.anc_all):
                anc = (q & np.int64(_FILTER_CLEAR)) | np.int64(_FILTER_SET)
                pos = np.minimum(np.searchsorted(tables.anc_all, anc), len(tables.anc_all) - 1)
                mask = np.where(tables.anc_all[pos] == anc, tables.anc_mask[pos], 0)
            j = 0
            for lv in tables.levels:
                if lv.res >= _FILTER_RES:
                    fine_idx = np.flatnonzero(mask & (1 << j))
                    j += 1
                    p = (q[fine_idx] & np.int64(lv.pclear)) | np.int64(lv.pset)
                    hi, hv = _probe_np(lv, p)
                    hi = fine_idx[hi]
                else:
                    p = (q & np.int64(lv.pclear)) | np.int64(lv.pset)
                    hi, hv = _probe_np(lv, p)
                if len(hi):
                    hi, hv = _expand(tables, hi, hv)
                    pts_l.append(hi)
                    codes_l.append(hv)
        if not pts_l:
            return np.empty(0, np.intp), []
        pts = np.concatenate(pts_l)
        codes = np.concatenate(codes_l)
        slots = codes >> 2
        if self._dead_entries:
            ok = self._alive[slots].astype(np.bool_)
        else:
            ok = np.ones(len(slots), np.bool_)
        bnd = (codes & 1).astype(np.bool_) & ok
        circ_b = bnd & ((codes & 2) == 0)
        if circ_b.any():
            ci = np.flatnonzero(circ_b)
            sp = pts[ci]
            # unit vectors once per point, then gathered per candidate
            la = np.radians(lat)
            lo = np.radians(lon)
            cl = np.cos(la)
            px, py, pz = cl * np.cos(lo), cl * np.sin(lo), np.sin(la)
            cc = self._circ.reshape(-1, _CIRCLE_COLS)[slots[ci]]
            d2 = (
                np.square(px[sp] - cc[:, 0])
                + np.square(py[sp] - cc[:, 1])
                + np.square(pz[sp] - cc[:, 2])
            )
            ok[ci] = d2 <= cc[:, 3]
        poly_b = bnd & ((codes & 2) != 0)
        if poly_b.any():
            pi = np.flatnonzero(poly_b)
            sp = pts[pi]
            geoms = self._poly_array()[slots[pi]]
            ok[pi] = shapely.contains_xy(geoms, lon[sp], lat[sp])
        pts = pts[ok]
        order = np.argsort(pts, kind="stable")
        names: list[str] = self._zone_array()[slots[ok][order]].tolist()
        pts = pts[order]
        return (pts if sel is None else sel[pts]), names

    # -- internals --

    def _all_tables(self) -> list[_Tables]:
        ts = [self._tables]
        if self._overlay:
            if self._ov_tables is None:
                cells = np.fromiter((c for c, v in self._overlay.items() for _ in v), np.int64)
                codes = np.fromiter((x for v in self._overlay.values() for x in v), np.int64)
                self._ov_tables = _Tables.build(cells, codes)
            ts.append(self._ov_tables)
        return ts

    def _zone_array(self) -> npt.NDArray[np.object_]:
        return self._slot_zone_np

    def _poly_array(self) -> npt.NDArray[np.object_]:
        return self._poly_np

    def _replan(self) -> None:
        ov_res = tuple(r for r in range(15, -1, -1) if self._ov_res_count[r])
        res_all = [lv.res for lv in self._tables.levels] + list(ov_res)
        self._plan = (
            max(res_all) if res_all else -1,
            self._tables.coarse_probes,
            self._tables.filter_map,
            self._tables.multi_mv,
            self._overlay,
            ov_res,
        )

    def _grow(self, need_slots: int) -> None:
        cap = len(self._alive)
        if need_slots <= cap:
            return
        new_cap = max(need_slots, 2 * cap)
        alive = np.zeros(new_cap, np.uint8)
        alive[:cap] = self._alive
        circ = np.zeros(new_cap * _CIRCLE_COLS, np.float64)
        circ[: len(self._circ)] = self._circ
        slot_n = np.zeros(new_cap, np.int32)
        slot_n[:cap] = self._slot_n
        self._slot_n = slot_n
        names = np.empty(new_cap, dtype=object)
        names[:cap] = self._slot_zone_np
        self._slot_zone_np = names
        polys = np.empty(new_cap, dtype=object)
        polys[:cap] = self._poly_np
        self._poly_np = polys
        # swap views after the new arrays are complete
        self._circ, self._circ_mv = circ, circ.data
        self._alive, self._alive_mv = alive, alive.data

    def _new_slots(self, ids: list[str], shapes: list[ZoneShape]) -> int:
        first = len(self._slot_zone)
        self._grow(first + len(ids))
        circ = self._circ.reshape(-1, _CIRCLE_COLS)
        ci = [j for j, s in enumerate(shapes) if isinstance(s, Circle)]
        if ci:
            cs = [shapes[j] for j in ci]
            x, y, z = _unit(np.array([c.lat for c in cs]), np.array([c.lon for c in cs]))
            rows = np.array(ci) + first
            circ[rows, 0] = x
            circ[rows, 1] = y
            circ[rows, 2] = z
            circ[rows, 3] = _chord_thresh(np.array([c.radius_m for c in cs]))
        for j, s in enumerate(shapes):
            if not isinstance(s, Circle):
                shapely.prepare(s)
                self._polys[first + j] = s
                self._poly_np[first + j] = s
        self._slot_zone_np[first : first + len(ids)] = ids
        self._slot_zone.extend(ids)
        return first

    def _retire(self, slot: int) -> None:
        self._dead_entries += int(self._slot_n[slot])
        self._slot_n[slot] = 0
        self._polys.pop(slot, None)
        self._poly_np[slot] = None

    def _switch(self, ids: list[str], first: int) -> None:
        for j, zid in enumerate(ids):
            slot = first + j
            self._alive[slot] = 1
            old = self._zone_slot.get(zid)
            self._zone_slot[zid] = slot
            if old is not None:
                self._alive[old] = 0
                self._retire(old)

    def _commit(self, entries: list[tuple[str, ZoneShape, I64, Bool]]) -> None:
        ids = [e[0] for e in entries]
        first = self._new_slots(ids, [e[1] for e in entries])
        ov = self._overlay
        for j, (_, shape, cells, boundary) in enumerate(entries):
            slot = first + j
            base = (slot << 2) | (0 if isinstance(shape, Circle) else 2)
            for c, b in zip(cells.tolist(), boundary.tolist(), strict=True):
                ov[c] = (*ov.get(c, ()), base | int(b))
                self._ov_res_count[(c >> _RES_SHIFT) & 15] += 1
            self._slot_n[slot] = len(cells)
        self._ov_tables = None
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
        if n_new < self._tables.n_entries // 8:
            # small batch into a big index: go through the overlay
            first2 = self._new_slots(ids, shapes)
            assert first2 == first
            ov = self._overlay
            for c, k in zip(new_cells.tolist(), new_codes.tolist(), strict=True):
                ov[c] = (*ov.get(c, ()), k)
                self._ov_res_count[(c >> _RES_SHIFT) & 15] += 1
            self._ov_tables = None
        else:
            self._new_slots(ids, shapes)
            self._merge(extra=(new_cells, new_codes), switching=(ids, first))
        self._slot_n[first : first + len(ids)] = per_slot
        self._replan()
        self._switch(ids, first)
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        base = self._tables.n_entries
        ov = sum(self._ov_res_count)
        # the overlay costs ~150 B per entry as Python objects and is re-tabled for the first
        # batch after each change, so it stays small; dead entries only cost table space
        if ov > max(10_000, base // 32) or self._dead_entries > max(50_000, base // 4):
            self._merge()

    def _merge(
        self,
        extra: tuple[I64, I64] | None = None,
        switching: tuple[list[str], int] | None = None,
    ) -> None:
        """Rebuild the tables from the live base entries, the overlay and `extra`."""
        cells, codes = self._tables.pairs()
        parts_c = [cells]
        parts_k = [codes]
        if self._overlay:
            parts_c.append(np.fromiter((c for c, v in self._overlay.items() for _ in v), np.int64))
            parts_k.append(np.fromiter((x for v in self._overlay.values() for x in v), np.int64))
        keep_alive = self._alive.copy()
        if switching is not None:
            # the new slots are not alive yet, but their entries must survive the merge, and
            # the slots they replace may be dropped already
            ids, first = switching
            keep_alive[first : first + len(ids)] = 1
            for zid in ids:
                old = self._zone_slot.get(zid)
                if old is not None:
                    keep_alive[old] = 0
                    self._slot_n[old] = 0
        if extra is not None:
            parts_c.append(extra[0])
            parts_k.append(extra[1])
        cells = np.concatenate(parts_c)
        codes = np.concatenate(parts_k)
        live = keep_alive[codes >> 2].astype(np.bool_)
        tables = _Tables.build(cells[live], codes[live])
        # one assignment each: lookups read self._plan, which still points at the old levels
        self._tables = tables
        self._overlay = {}
        self._ov_res_count = [0] * 16
        self._ov_tables = None
        self._dead_entries = 0
        self._replan()
