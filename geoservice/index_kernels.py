"""Inner loops of the zone index: a numpy port of H3's point-to-cell mapping (for batches
and bulk covers) and, compiled with numba, the whole lookup of a point (its cell, the table
probes, the exact circle test). No I/O, no asyncio; index.py owns the data and the API.

The compiled functions read the H3 face geometry and digit tables as frozen module globals,
so they live in this file with the code that builds them: numba's on-disk cache is keyed by
this file, and editing either invalidates it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from h3.api import basic_int as h3i
from numba.core import cgutils, types
from numba.extending import intrinsic
from numba.np.numpy_support import carray

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

# --- cell ids and table layout ---------------------------------------------------------------

RES_SHIFT = 52
# resolution of the presence filter in front of the finer tables (res 7: ~5 km2)
FILTER_RES = 7
M63 = (1 << 63) - 1
# Fibonacci hashing: (cell * K mod 2^64) >> (64 - bits)
HASH_MULT = 0x9E3779B97F4A7C15
EMPTY = 0  # never a valid H3 cell


def low_ones(res: int) -> int:
    return (1 << (3 * (15 - res))) - 1


# parent(cell, r) = (cell & PCLEAR[r]) | PSET[r] for any cell finer than r.
PCLEAR = [M63 & ~((15 << RES_SHIFT) | low_ones(r)) for r in range(16)]
PSET = [(r << RES_SHIFT) | low_ones(r) for r in range(16)]
FILTER_CLEAR = PCLEAR[FILTER_RES]
FILTER_SET = PSET[FILTER_RES]

# Main tables, one int64 array ("tab"): a header, then per level 4 ints (offset of its
# interleaved [key, value, ...] slots, hash shift, pclear, pset), the fine levels (res >=
# FILTER_RES, a bit each in the filter's masks) first; then the slots of every level, of the
# filter table (res-FILTER_RES ancestor -> bitmask of the fine levels with cells under it) and
# the multi array ([count, code, code, ...] for cells of several zones; value -(offset + 1)).
TAB_N_LEVELS = 0
TAB_N_FINE = 1
TAB_FILTER_OFF = 2
TAB_FILTER_SHIFT = 3
TAB_MULTI_OFF = 4
TAB_HEADER = 8
TAB_LEVEL_COLS = 4
# Overlay ("ov"): an open-addressing multimap with wrap-around, one (cell, code) pair per
# entry, several pairs per cell allowed; header: hash shift, capacity - 1, bitmask of the
# resolutions present, entry count; pairs from OV_HEADER on.
OV_SHIFT = 0
OV_MASK = 1
OV_RES_BITS = 2
OV_COUNT = 3
OV_SCRATCH = 7  # written by lookups, read by nobody (see _point)
OV_HEADER = 8
# Per-slot float64 rows ("circ"): unit vector of a circle's centre and its squared chord
# radius; for a polygon, the offset of its record in "pv" and 0. Column 3 is negative while
# the slot is not live (see index.py).
CIRCLE_COLS = 4
# Polygon records in one float64 array ("pv"): bounds (minx, miny, maxx, maxy), ring count,
# record length, then per ring its vertex count and the closed ring's x, y pairs (lon, lat).
PV_RINGS = 4
PV_LEN = 5
PV_HEADER = 6


def unit(lat_deg: F64, lon_deg: F64, radians: bool = False) -> tuple[F64, F64, F64]:
    la = lat_deg if radians else np.radians(lat_deg)
    lo = lon_deg if radians else np.radians(lon_deg)
    c = np.cos(la)
    return c * np.cos(lo), c * np.sin(lo), np.sin(la)


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
            xyz = [unit(np.array([p[0]]), np.array([p[1]]), radians=True) for p in pts]
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
        out = (np.maximum(bc, 0).astype(np.int64) << 45) | ((1 << 59) | (res << 52) | low_ones(res))
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


# --- compiled lookups (numba) ----------------------------------------------------------------
#
# A lookup from Python pays numba's dispatch plus the kernel itself, so the single-point
# kernel takes few arrays: the tables, the overlay, the per-slot rows, the polygon records and
# an output buffer of slots.

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    try:
        out = cast(_F, numba.njit(cache=True)(fn))
    except RuntimeError:
        # no writable cache directory (read-only install and no NUMBA_CACHE_DIR): compile per
        # process instead
        warnings.warn(
            "numba cannot cache the zone index kernels; set NUMBA_CACHE_DIR to a writable "
            "directory to avoid compiling them in every process",
            RuntimeWarning,
            stacklevel=2,
        )
        out = cast(_F, numba.njit(fn))
    return out


def _kernel_constants() -> dict[str, Any]:
    g = _grid()
    step_keys = [(3, 1), (2, 1), (3, 2), (2, 2)]
    size = max(len(g.steps[k].digits) for k in step_keys)
    dig = np.zeros((4, size), np.int64)
    off = np.zeros((4, 2, size), np.int64)
    par = np.zeros((4, 4), np.int64)
    for i, k in enumerate(step_keys):
        st = g.steps[k]
        n = len(st.digits)
        dig[i, :n] = st.digits
        off[i, 0, :n] = st.off_a
        off[i, 1, :n] = st.off_b
        par[i] = st.adj
        # _cell divides by literal 7 and 49
        assert st.det == st.mod == (49 if k[1] == 2 else 7)
    e1 = np.stack([g.basis[0][0], g.basis[1][0]])
    e2 = np.stack([g.basis[0][1], g.basis[1][1]])
    return {
        "fc": np.ascontiguousarray(g.fc),
        "e1": np.ascontiguousarray(e1),
        "e2": np.ascontiguousarray(e2),
        "scale": np.array([_INV_RES0_U_GNOMONIC * _SQRT7**r for r in range(16)]),
        "dig": dig,
        "off": off,
        "par": par,
        "base_cell": g.base_cell.astype(np.int64),
        "rot": g.rot.astype(np.int64),
        "rot1": g.rot1[:48].astype(np.int64),
    }


_K = _kernel_constants()
_K_FC: F64 = _K["fc"]
_K_E1: F64 = _K["e1"]
_K_E2: F64 = _K["e2"]
_K_SCALE: F64 = _K["scale"]
_K_DIG: I64 = _K["dig"]
_K_OFF: I64 = _K["off"]
_K_PAR: I64 = _K["par"]
_K_BASE_CELL: I64 = _K["base_cell"]
_K_ROT: I64 = _K["rot"]
_K_ROT1: I64 = _K["rot1"]
_K_PCLEAR = np.array(PCLEAR, np.int64)
_K_PSET = np.array(PSET, np.int64)
_K_HASH_MULT = np.uint64(HASH_MULT)
_DEG = math.pi / 180.0


@_jit
def _cell(lat: float, lon: float, res: int) -> tuple[int, float, float, float]:
    """H3 cell of a point (as _Grid.cells; -1 where _Grid falls back to h3, and for
    non-finite input, which h3 refuses) and its unit vector."""
    la = lat * _DEG
    lo = lon * _DEG
    cl = math.cos(la)
    px = cl * math.cos(lo)
    py = cl * math.sin(lo)
    pz = math.sin(la)
    if not (math.isfinite(px) and math.isfinite(py) and math.isfinite(pz)):
        return -1, px, py, pz
    face = 0
    best = -2.0
    for f in range(20):
        d = px * _K_FC[f, 0] + py * _K_FC[f, 1] + pz * _K_FC[f, 2]
        if d > best:
            best = d
            face = f
    cls = res & 1
    s = _K_SCALE[res] / best
    x = (px * _K_E1[cls, face, 0] + py * _K_E1[cls, face, 1] + pz * _K_E1[cls, face, 2]) * s
    y = (px * _K_E2[cls, face, 0] + py * _K_E2[cls, face, 1] + pz * _K_E2[cls, face, 2]) * s
    # nearest lattice point, as _Grid.round_axial
    bb = y / _SQRT3_2
    q = x - 0.5 * bb
    r = bb
    t = -q - r
    rq = np.rint(q)
    rr = np.rint(r)
    rt = np.rint(t)
    dq = abs(rq - q)
    dr = abs(rr - r)
    dt = abs(rt - t)
    if dq > dr and dq > dt:
        rq = -rr - rt
    elif dr > dt:
        rr = -rq - rt
    a = int(rq + rr)
    b = int(rr)
    # digits two levels at a time, as _Grid.axial_to_cells but in integers (the moduli and
    # divisors are 7 and 49, literal so that they compile to multiplications), unrotated
    raw = 0
    lvl = res
    while lvl > 0:
        shift = 3 * (15 - lvl)
        if lvl >= 2:
            st = 2 if lvl & 1 else 3
            key = (a % 49) * 49 + b % 49
            d = _K_DIG[st, key]
            raw |= ((d >> 3) << shift) | ((d & 7) << (shift + 3))
            ca = a - _K_OFF[st, 0, key]
            cb = b - _K_OFF[st, 1, key]
            a = (_K_PAR[st, 0] * ca + _K_PAR[st, 1] * cb) // 49
            b = (_K_PAR[st, 2] * ca + _K_PAR[st, 3] * cb) // 49
            lvl -= 2
        else:
            st = 0 if lvl & 1 else 1
            key = (a % 7) * 7 + b % 7
            raw |= _K_DIG[st, key] << shift
            ca = a - _K_OFF[st, 0, key]
            cb = b - _K_OFF[st, 1, key]
            a = (_K_PAR[st, 0] * ca + _K_PAR[st, 1] * cb) // 7
            b = (_K_PAR[st, 2] * ca + _K_PAR[st, 3] * cb) // 7
            lvl -= 1
    i = a
    j = b
    m = min(i, j, 0)
    i -= m
    j -= m
    k = -m
    if i > 2 or j > 2 or k > 2:
        return -1, px, py, pz
    key0 = face * 27 + i * 9 + j * 3 + k
    bc = _K_BASE_CELL[key0]
    rot = _K_ROT[key0]
    if bc < 0 or rot < 0:
        return -1, px, py, pz
    out = (bc << 45) | (1 << 59) | (res << 52) | ((1 << (3 * (15 - res))) - 1)
    for lv in range(1, res + 1):
        sh = 3 * (15 - lv)
        out |= _K_ROT1[rot * 8 + ((raw >> sh) & 7)] << sh
    return out, px, py, pz


@_jit
def _home(p: int, shift: int) -> np.int64:
    return np.int64((np.uint64(p) * _K_HASH_MULT) >> np.uint64(shift))


@_jit
def _in_polygon(pv: F64, o: int, x: float, y: float) -> bool:
    """Planar point-in-polygon of the record at o, as shapely's contains_xy: the interior
    only (a point on an edge is not contained); even-odd over every ring of every part, which
    is the interior for valid (Multi)Polygons."""
    if x <= pv[o] or y <= pv[o + 1] or x >= pv[o + 2] or y >= pv[o + 3]:
        return False
    inside = False
    i = o + PV_HEADER
    for _ in range(int(pv[o + PV_RINGS])):
        nv = int(pv[i])
        i += 1
        x1 = pv[i]
        y1 = pv[i + 1]
        for v in range(1, nv):
            x2 = pv[i + 2 * v]
            y2 = pv[i + 2 * v + 1]
            if (y1 <= y <= y2) or (y2 <= y <= y1):
                cross = (x2 - x1) * (y - y1) - (x - x1) * (y2 - y1)
                if cross == 0.0 and min(x1, x2) <= x <= max(x1, x2):
                    return False
                # the rightward ray from the point crosses this edge
                if (y1 > y) != (y2 > y) and (cross > 0.0) == (y2 > y1):
                    inside = not inside
            x1 = x2
            y1 = y2
        i += 2 * nv
    return inside


@_jit
def _in_circle(circ: F64, slot: int, px: float, py: float, pz: float) -> bool:
    """The point is within the slot's circle. A slot that is not live has a negative
    threshold, which no squared distance passes."""
    b = slot * CIRCLE_COLS
    dx = px - circ[b]
    dy = py - circ[b + 1]
    dz = pz - circ[b + 2]
    return bool(dx * dx + dy * dy + dz * dz <= circ[b + 3])


@_jit
def _contains(
    code: int, circ: F64, pv: F64, lat: float, lon: float, px: float, py: float, pz: float
) -> bool:
    """Exact test of one candidate: its slot is live and the point is in its zone."""
    if code & 3 == 1:
        return _in_circle(circ, code >> 2, px, py, pz)
    b = (code >> 2) * CIRCLE_COLS
    if circ[b + 3] < 0.0:
        return False
    if code & 3 == 3:
        return _in_polygon(pv, int(circ[b]), lon, lat)
    return True


@_jit
def _emit(
    code: int,
    circ: F64,
    pv: F64,
    lat: float,
    lon: float,
    px: float,
    py: float,
    pz: float,
    out: I64,
    n: int,
) -> int:
    """Writes the candidate's slot at n if it passes the exact test (and out has room);
    returns the new count."""
    if not _contains(code, circ, pv, lat, lon, px, py, pz):
        return n
    if n < out.shape[0]:
        out[n] = code >> 2
    return n + 1


@_jit
def _probe_level(
    tab: I64,
    lv: int,
    q: int,
    circ: F64,
    pv: F64,
    lat: float,
    lon: float,
    px: float,
    py: float,
    pz: float,
    out: I64,
    n: int,
) -> int:
    h = TAB_HEADER + TAB_LEVEL_COLS * lv
    p = (q & tab[h + 2]) | tab[h + 3]
    i = tab[h] + 2 * _home(p, tab[h + 1])
    while True:
        k = tab[i]
        if k == p:
            v = tab[i + 1]
            if v >= 0:
                return _emit(v, circ, pv, lat, lon, px, py, pz, out, n)
            o = tab[TAB_MULTI_OFF] - v - 1
            for t in range(tab[o]):
                n = _emit(tab[o + 1 + t], circ, pv, lat, lon, px, py, pz, out, n)
            return n
        if k == EMPTY:
            return n
        i += 2


@_jit
def _point(
    q: int,
    tab: I64,
    ov: I64,
    circ: F64,
    pv: F64,
    lat: float,
    lon: float,
    px: float,
    py: float,
    pz: float,
    out: I64,
    n: int,
) -> int:
    """Every live zone containing the point (lat, lon; unit vector px, py, pz) of cell q (at
    the plan's finest resolution)."""
    n_levels = tab[TAB_N_LEVELS]
    n_fine = tab[TAB_N_FINE]
    if n_fine:
        anc = (q & FILTER_CLEAR) | FILTER_SET
        i = tab[TAB_FILTER_OFF] + 2 * _home(anc, tab[TAB_FILTER_SHIFT])
        mask = 0
        while True:
            k = tab[i]
            if k == anc:
                mask = tab[i + 1]
                break
            if k == EMPTY:
                break
            i += 2
        # touch each probed level's home slot before resolving any, so that their cache
        # misses overlap instead of following one another; the store keeps the loads
        touch = 0
        m = mask
        lv = 0
        while m:
            if m & 1:
                h = TAB_HEADER + TAB_LEVEL_COLS * lv
                touch ^= tab[tab[h] + 2 * _home((q & tab[h + 2]) | tab[h + 3], tab[h + 1])]
            m >>= 1
            lv += 1
        ov[OV_SCRATCH] = touch
        lv = 0
        while mask:
            if mask & 1:
                n = _probe_level(tab, lv, q, circ, pv, lat, lon, px, py, pz, out, n)
            mask >>= 1
            lv += 1
    for lv in range(n_fine, n_levels):
        n = _probe_level(tab, lv, q, circ, pv, lat, lon, px, py, pz, out, n)
    res_bits = ov[OV_RES_BITS]
    if res_bits:
        shift = ov[OV_SHIFT]
        cap_mask = ov[OV_MASK]
        for r in range(15, -1, -1):
            if res_bits >> r & 1:
                p = (q & _K_PCLEAR[r]) | _K_PSET[r]
                i = _home(p, shift)
                while True:
                    k = ov[OV_HEADER + 2 * i]
                    if k == EMPTY:
                        break
                    if k == p:
                        n = _emit(ov[OV_HEADER + 2 * i + 1], circ, pv, lat, lon, px, py, pz, out, n)
                    i = (i + 1) & cap_mask
    return n


def _voidptr_typing(typingctx: Any, addr: Any) -> Any:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


# an int64 address as a pointer, for carray
_voidptr: Any = intrinsic(_voidptr_typing)


# The single lookup gets its arrays and the finest resolution as one int64 array of (address,
# length) pairs and the resolution, in this order, and that array by its address: numba
# unboxes every array argument (~100 ns each, against ~10 ns for an int), and a lookup is
# ~1 us. The caller keeps the arrays alive for as long as it uses the addresses.
PLAN_TAB = 0
PLAN_OV = 2
PLAN_CIRC = 4
PLAN_PV = 6
PLAN_OUT = 8
PLAN_RES = 10
PLAN_LEN = 11


def plan_array(res: int, tab: I64, ov: I64, circ: F64, pv: F64, out: I64) -> I64:
    """The plan that lookup_point reads; pass it as plan.ctypes.data."""
    arrays = (tab, ov, circ, pv, out)
    if not all(a.flags.c_contiguous and a.ndim == 1 for a in arrays):
        raise ValueError("the compiled lookup needs one-dimensional C-contiguous arrays")
    return np.array([x for a in arrays for x in (a.ctypes.data, len(a))] + [res], np.int64)


@_jit
def lookup_point(lat: float, lon: float, q: int, plan_address: int) -> int:
    """Slots of the zones containing (lat, lon) into the plan's out array; returns their
    count (which may exceed its length: call again with a bigger one), or -1 if the point's
    cell must come from h3 (pass it as q, else 0)."""
    plan = carray(_voidptr(plan_address), PLAN_LEN, np.int64)
    tab = carray(_voidptr(plan[PLAN_TAB]), plan[PLAN_TAB + 1], np.int64)
    ov = carray(_voidptr(plan[PLAN_OV]), plan[PLAN_OV + 1], np.int64)
    circ = carray(_voidptr(plan[PLAN_CIRC]), plan[PLAN_CIRC + 1], np.float64)
    pv = carray(_voidptr(plan[PLAN_PV]), plan[PLAN_PV + 1], np.float64)
    out = carray(_voidptr(plan[PLAN_OUT]), plan[PLAN_OUT + 1], np.int64)
    if q == 0:
        q, px, py, pz = _cell(lat, lon, plan[PLAN_RES])
        if q < 0:
            return -1
    else:
        la = lat * _DEG
        lo = lon * _DEG
        cl = math.cos(la)
        px = cl * math.cos(lo)
        py = cl * math.sin(lo)
        pz = math.sin(la)
    return _point(q, tab, ov, circ, pv, lat, lon, px, py, pz, out, 0)


@_jit
def _grow(a: I64, need: int) -> I64:
    if need <= a.shape[0]:
        return a
    out = np.empty(max(need, 2 * a.shape[0]), np.int64)
    out[: a.shape[0]] = a
    return out


@_jit
def lookup_points(
    lat: F64, lon: F64, qs: I64, res: int, tab: I64, ov: I64, circ: F64, pv: F64
) -> tuple[I64, I64, I64]:
    """Batch form: (point index, slot) of every hit, in point order, and the indices of the
    points whose cells must come from h3 (then call again with their cells in qs; qs empty:
    compute every cell). Runs level by level over all points rather than point by point: the
    probes of different points do not depend on each other, so their cache misses overlap."""
    n_pts = lat.shape[0]
    q = np.zeros(n_pts, np.int64)
    unit_xyz = np.empty((n_pts, 3), np.float64)
    fallback = np.empty(n_pts, np.int64)
    n_fb = 0
    for j in range(n_pts):
        if qs.shape[0]:
            c = qs[j]
            la = lat[j] * _DEG
            lo = lon[j] * _DEG
            cl = math.cos(la)
            px = cl * math.cos(lo)
            py = cl * math.sin(lo)
            pz = math.sin(la)
        else:
            c, px, py, pz = _cell(lat[j], lon[j], res)
            if c < 0:
                fallback[n_fb] = j
                n_fb += 1
                continue
        q[j] = c
        unit_xyz[j, 0] = px
        unit_xyz[j, 1] = py
        unit_xyz[j, 2] = pz
    # which fine levels to probe per point (coarse ones: all)
    n_levels = tab[TAB_N_LEVELS]
    n_fine = tab[TAB_N_FINE]
    mask = np.zeros(n_pts, np.int64)
    if n_fine:
        f_off = tab[TAB_FILTER_OFF]
        f_shift = tab[TAB_FILTER_SHIFT]
        for j in range(n_pts):
            if q[j] == EMPTY:
                continue
            anc = (q[j] & FILTER_CLEAR) | FILTER_SET
            i = f_off + 2 * _home(anc, f_shift)
            while True:
                k = tab[i]
                if k == anc:
                    mask[j] = tab[i + 1]
                    break
                if k == EMPTY:
                    break
                i += 2
    # candidates: (point, table value: a code, or -(multi offset + 1))
    cand_pt = np.empty(max(16, 2 * n_pts), np.int64)
    cand_v = np.empty(max(16, 2 * n_pts), np.int64)
    n_c = 0
    for lv in range(n_levels):
        h = TAB_HEADER + TAB_LEVEL_COLS * lv
        off = tab[h]
        shift = tab[h + 1]
        pclear = tab[h + 2]
        pset = tab[h + 3]
        bit = 1 << lv if lv < n_fine else 0
        for j in range(n_pts):
            if q[j] == EMPTY or (bit and not mask[j] & bit):
                continue
            p = (q[j] & pclear) | pset
            i = off + 2 * _home(p, shift)
            while True:
                k = tab[i]
                if k == p:
                    if n_c == cand_pt.shape[0]:
                        cand_pt = _grow(cand_pt, n_c + 1)
                        cand_v = _grow(cand_v, n_c + 1)
                    cand_pt[n_c] = j
                    cand_v[n_c] = tab[i + 1]
                    n_c += 1
                    break
                if k == EMPTY:
                    break
                i += 2
    res_bits = ov[OV_RES_BITS]
    if res_bits:
        shift = ov[OV_SHIFT]
        cap_mask = ov[OV_MASK]
        for r in range(15, -1, -1):
            if not res_bits >> r & 1:
                continue
            for j in range(n_pts):
                if q[j] == EMPTY:
                    continue
                p = (q[j] & _K_PCLEAR[r]) | _K_PSET[r]
                i = _home(p, shift)
                while True:
                    k = ov[OV_HEADER + 2 * i]
                    if k == EMPTY:
                        break
                    if k == p:
                        if n_c == cand_pt.shape[0]:
                            cand_pt = _grow(cand_pt, n_c + 1)
                            cand_v = _grow(cand_v, n_c + 1)
                        cand_pt[n_c] = j
                        cand_v[n_c] = ov[OV_HEADER + 2 * i + 1]
                        n_c += 1
                    i = (i + 1) & cap_mask
    # exact tests, then the hits grouped by point (counting sort)
    hit_pt = np.empty(max(16, n_c), np.int64)
    hit_slot = np.empty(max(16, n_c), np.int64)
    n_h = 0
    m_off = tab[TAB_MULTI_OFF]
    for c in range(n_c):
        j = cand_pt[c]
        v = cand_v[c]
        if v >= 0:
            first = 0
            count = 1
        else:
            first = m_off - v
            count = tab[first - 1]
        if n_h + count > hit_pt.shape[0]:
            hit_pt = _grow(hit_pt, n_h + count)
            hit_slot = _grow(hit_slot, n_h + count)
        la = lat[j]
        lo = lon[j]
        px = unit_xyz[j, 0]
        py = unit_xyz[j, 1]
        pz = unit_xyz[j, 2]
        for t in range(count):
            code = v if v >= 0 else tab[first + t]
            # written unconditionally and kept by advancing n_h: whether a candidate passes
            # is a coin flip that a branch would mispredict
            hit_pt[n_h] = j
            hit_slot[n_h] = code >> 2
            if code & 3 == 1:
                # a circle's boundary cell, by far the most common candidate: tested here,
                # where the compiler inlines it (it does not inline _contains)
                n_h += _in_circle(circ, code >> 2, px, py, pz)
            else:
                n_h += _contains(code, circ, pv, la, lo, px, py, pz)
    start = np.zeros(n_pts + 1, np.int64)
    for t in range(n_h):
        start[hit_pt[t] + 1] += 1
    for j in range(n_pts):
        start[j + 1] += start[j]
    pts = np.empty(n_h, np.int64)
    slots = np.empty(n_h, np.int64)
    for t in range(n_h):
        j = hit_pt[t]
        pos = start[j]
        start[j] = pos + 1
        pts[pos] = j
        slots[pos] = hit_slot[t]
    return pts, slots, fallback[:n_fb]


@_jit
def overlay_insert(ov: I64, cells: I64, codes: I64) -> None:
    """Adds (cell, code) pairs; the caller keeps the load under 1/2."""
    shift = ov[OV_SHIFT]
    cap_mask = ov[OV_MASK]
    for j in range(cells.shape[0]):
        c = cells[j]
        i = _home(c, shift)
        while ov[OV_HEADER + 2 * i] != EMPTY:
            i = (i + 1) & cap_mask
        ov[OV_HEADER + 2 * i] = c
        ov[OV_HEADER + 2 * i + 1] = codes[j]
        ov[OV_RES_BITS] |= 1 << ((c >> RES_SHIFT) & 15)
    ov[OV_COUNT] += cells.shape[0]


def new_overlay(n_entries: int) -> I64:
    """An empty overlay with room for n_entries at load <= 1/2."""
    bits = max(4, (2 * n_entries).bit_length())
    ov = np.zeros(OV_HEADER + 2 * (1 << bits), np.int64)
    ov[OV_SHIFT] = 64 - bits
    ov[OV_MASK] = (1 << bits) - 1
    return ov


def overlay_pairs(ov: I64) -> tuple[I64, I64]:
    keys = ov[OV_HEADER::2]
    used = keys != EMPTY
    return keys[used], ov[OV_HEADER + 1 :: 2][used]


def warm_up() -> Callable[..., int]:
    """Compiles (or loads from numba's cache) every kernel, so that the first real lookup
    does not pay for it. Returns lookup_point's compiled entry, which skips numba's dispatch
    (the type check of every argument); its callers must pass exactly these types (float,
    float, int, int: the address of an array from plan_array), as it converts but does not
    check them."""
    tab = np.zeros(TAB_HEADER, np.int64)
    ov = new_overlay(0)
    circ = np.zeros(CIRCLE_COLS, np.float64)
    pv = np.zeros(PV_HEADER, np.float64)
    out = np.zeros(4, np.int64)
    plan = plan_array(9, tab, ov, circ, pv, out)
    args = (47.0, 8.0, 0, plan.ctypes.data)
    lookup_point(*args)
    e = np.empty(0, np.int64)
    lookup_points(np.zeros(1), np.zeros(1), e, 9, tab, ov, circ, pv)
    overlay_insert(ov, e, e)
    typeof: Callable[[object], object] = numba.typeof
    dispatcher: Any = lookup_point
    entry: Callable[..., int] = dispatcher.overloads[tuple(typeof(a) for a in args)].entry_point
    return entry
