"""Deterministic procedural generator of ShapeNet-like 3D objects.

Every object is assembled from parametric primitive parts (boxes, beams,
cylinders, cones / solids of revolution, capsules, ellipsoids, tori and small
convex hulls).  Parts are simply concatenated (they may overlap; no boolean
union is performed) into a single :class:`trimesh.Trimesh` whose
``visual.face_colors`` carry one plausible RGBA colour per part.

Conventions
-----------
* Frame: +Y is up, the *front* of the object faces +Z (a chair's seat front,
  a car's or an airplane's nose, a display's screen ...).  The returned mesh is
  centred in X and Z and rests on ``y = 0``.  Absolute size is arbitrary
  (roughly metres, an airplane is about one unit long); callers are expected
  to re-normalise, but proportions are realistic.
* Every part is at least ``_MIN_THICK`` (2.5 %) of the object's estimated
  longest side thick, so that it survives a 32^3 voxelisation.
* Determinism: the only randomness is ``np.random.default_rng`` seeded with
  ``[seed, crc32(category)]``.  The same ``(category, seed)`` yields
  bit-identical vertices, faces and colours in any process.

Public API: :data:`CATEGORIES`, :data:`GENERATOR_VERSION`,
:func:`make_object`, :func:`random_category`.
"""

from __future__ import annotations

import logging
import zlib
from typing import Callable, Sequence

import numpy as np
import trimesh
from trimesh import creation as _tc
from trimesh import transformations as _tf

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "procedural-1"

_MIN_THICK = 0.025  # minimal part thickness relative to the longest side
_MAX_FACES = 5000
_SECTIONS = 16

# --------------------------------------------------------------------------
# colour palettes (RGB base colours; a small per-object jitter is added)
# --------------------------------------------------------------------------
_WOOD = ((150, 111, 51), (193, 154, 107), (101, 67, 33), (222, 184, 135),
         (133, 94, 66), (164, 116, 73), (87, 56, 36), (205, 170, 125))
_FABRIC = ((120, 30, 40), (40, 60, 110), (90, 90, 95), (60, 100, 70),
           (200, 190, 170), (150, 110, 80), (45, 45, 50), (180, 90, 40),
           (100, 120, 140), (130, 140, 120), (170, 160, 150))
_LEATHER = ((60, 35, 25), (110, 60, 35), (25, 25, 25), (150, 100, 70),
            (200, 190, 175), (120, 25, 25))
_METAL = ((190, 190, 195), (150, 150, 155), (100, 100, 105), (200, 180, 120),
          (60, 60, 65))
_PLASTIC = ((30, 30, 32), (235, 235, 230), (200, 200, 205), (60, 60, 65),
            (180, 40, 40), (40, 80, 160))
_DARK = ((25, 25, 28), (40, 40, 45), (15, 15, 18))
_GLASS = ((40, 55, 70), (30, 40, 50), (60, 80, 95))
_SCREEN = ((12, 14, 20), (20, 24, 32), (8, 8, 10))
_PAINT = ((170, 20, 25), (20, 50, 140), (200, 200, 205), (235, 235, 235),
          (20, 20, 22), (30, 90, 50), (230, 190, 20), (220, 110, 20),
          (110, 110, 115), (90, 20, 30), (70, 130, 180))
_FURN_PAINT = ((240, 240, 235), (30, 30, 32), (120, 130, 140), (60, 80, 110),
               (180, 170, 150), (90, 110, 90))
_TYRE = ((25, 25, 25), (35, 35, 35))
_SHADE = ((240, 230, 200), (235, 235, 235), (200, 60, 40), (40, 80, 60),
          (220, 200, 150), (30, 30, 30), (180, 180, 185))
_CERAMIC = ((230, 225, 215), (40, 70, 120), (150, 60, 40), (90, 120, 100),
            (30, 30, 30), (200, 170, 120))
_HULL = ((240, 240, 240), (20, 40, 90), (170, 30, 30), (30, 30, 35),
         (230, 230, 220), (40, 90, 60))
_SAIL = ((245, 245, 240), (240, 235, 215), (200, 60, 50), (230, 230, 235))
_NAVY = ((120, 125, 130), (140, 145, 150), (100, 105, 110))
_FUNNEL = ((200, 30, 30), (20, 20, 20), (230, 180, 30), (30, 60, 130))
_CONTAINER = ((180, 40, 30), (30, 80, 150), (40, 120, 60), (220, 150, 30),
              (120, 120, 120), (150, 60, 120), (200, 200, 200), (30, 130, 140))
_AIRCRAFT = ((230, 232, 235), (200, 205, 210), (245, 245, 245),
             (180, 185, 190))
_MILITARY = ((120, 125, 130), (90, 100, 90), (100, 105, 95), (70, 75, 80))
_ACCENT = ((200, 30, 30), (20, 50, 140), (230, 160, 20), (30, 110, 60),
           (90, 40, 120))
_LIGHT = ((255, 240, 190), (250, 250, 245))
_RED_LIGHT = ((200, 20, 20), (170, 15, 15))
_BEDDING = ((245, 245, 245), (220, 230, 240), (200, 180, 160),
            (150, 170, 200), (180, 120, 130), (120, 140, 110))
_BOOK = ((150, 30, 30), (30, 60, 120), (40, 100, 50), (200, 170, 60),
         (230, 230, 220), (30, 30, 30), (120, 70, 40), (90, 50, 110),
         (200, 100, 40), (60, 130, 150))
_STONE = ((150, 150, 145), (180, 175, 165), (110, 110, 110))


def _color(rng: np.random.Generator, family: Sequence[Sequence[int]],
           jitter: int = 12) -> np.ndarray:
    """Pick a base colour from ``family`` and jitter it; returns uint8 RGBA."""
    base = np.asarray(family[int(rng.integers(len(family)))], dtype=np.int64)
    var = rng.integers(-jitter, jitter + 1, size=3)
    rgb = np.clip(base + var, 0, 255)
    return np.array([rgb[0], rgb[1], rgb[2], 255], dtype=np.uint8)


def _shade(col: np.ndarray, factor: float) -> np.ndarray:
    """Lighter (>1) or darker (<1) variant of an RGBA colour."""
    rgb = np.clip(np.round(col[:3].astype(np.float64) * factor), 0, 255)
    return np.array([rgb[0], rgb[1], rgb[2], 255], dtype=np.uint8)


# --------------------------------------------------------------------------
# small RNG helpers
# --------------------------------------------------------------------------
def _uniform(rng: np.random.Generator) -> Callable[[float, float], float]:
    """Return ``u(a, b)`` drawing a python float uniformly from [a, b)."""
    return lambda a, b: float(rng.uniform(a, b))


def _pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    """Choose one element of ``options`` (optionally with weights ``p``)."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    w = np.asarray(p, dtype=np.float64)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


# --------------------------------------------------------------------------
# geometry helpers (all return closed meshes with outward normals)
# --------------------------------------------------------------------------
def _xf(center=(0.0, 0.0, 0.0), rx: float = 0.0, ry: float = 0.0,
        rz: float = 0.0) -> np.ndarray:
    """4x4 transform: rotate about Z, then X, then Y, then translate."""
    m = np.eye(4)
    if rz:
        m = _tf.rotation_matrix(rz, [0, 0, 1]) @ m
    if rx:
        m = _tf.rotation_matrix(rx, [1, 0, 0]) @ m
    if ry:
        m = _tf.rotation_matrix(ry, [0, 1, 0]) @ m
    m[:3, 3] = np.asarray(center, dtype=np.float64)
    return m


def _segment_frame(p0, p1) -> tuple[np.ndarray, float]:
    """Transform mapping local +Z onto segment p0->p1 (centred), and length."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    length = float(np.linalg.norm(d))
    if length <= 1e-9:
        raise ValueError("degenerate segment")
    zax = d / length
    up = np.array([0.0, 1.0, 0.0]) if abs(zax[1]) < 0.95 else np.array([0.0, 0.0, 1.0])
    xax = np.cross(up, zax)
    xax /= np.linalg.norm(xax)
    yax = np.cross(zax, xax)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = xax, yax, zax
    m[:3, 3] = (p0 + p1) / 2.0
    return m, length


def _box(size, center=(0.0, 0.0, 0.0), rx=0.0, ry=0.0, rz=0.0) -> trimesh.Trimesh:
    """Axis-aligned box of extents ``size`` (optionally rotated about its centre)."""
    return _tc.box(extents=np.asarray(size, dtype=np.float64),
                   transform=_xf(center, rx, ry, rz))


def _beam(p0, p1, w: float, h: float) -> trimesh.Trimesh:
    """Rectangular bar from p0 to p1; ``w`` horizontal width, ``h`` height."""
    m, length = _segment_frame(p0, p1)
    return _tc.box(extents=(w, h, length), transform=m)


def _cyl(p0, p1, r: float, sections: int = _SECTIONS) -> trimesh.Trimesh:
    """Cylinder of radius ``r`` between points p0 and p1."""
    return _tc.cylinder(radius=r, segment=np.array([p0, p1], dtype=np.float64),
                        sections=sections)


def _capsule(p0, p1, r: float, count: int = 8) -> trimesh.Trimesh:
    """Capsule (cylinder with hemispherical ends) between p0 and p1."""
    m, length = _segment_frame(p0, p1)
    mesh = _tc.capsule(height=length, radius=r, count=[count, count])
    mesh.apply_transform(m)
    return mesh


def _sphere(r: float, center, subdiv: int = 1) -> trimesh.Trimesh:
    """Icosphere of radius ``r``."""
    mesh = _tc.icosphere(subdivisions=subdiv, radius=r)
    mesh.apply_translation(np.asarray(center, dtype=np.float64))
    return mesh


def _ellipsoid(radii, center, subdiv: int = 2, rx=0.0, ry=0.0, rz=0.0) -> trimesh.Trimesh:
    """Ellipsoid with semi-axes ``radii`` (scaled icosphere)."""
    mesh = _tc.icosphere(subdivisions=subdiv, radius=1.0)
    mesh.apply_transform(np.diag([radii[0], radii[1], radii[2], 1.0]))
    mesh.apply_transform(_xf(center, rx, ry, rz))
    return mesh


def _torus(major: float, minor: float, center, rx=0.0, ry=0.0,
           sections: int = 20) -> trimesh.Trimesh:
    """Torus (ring lies in the XY plane before rotation ``rx``/``ry``)."""
    return _tc.torus(major_radius=major, minor_radius=minor,
                     major_sections=sections, minor_sections=8,
                     transform=_xf(center, rx, ry))


def _hull(points) -> trimesh.Trimesh:
    """Closed convex hull of a point set (outward normals)."""
    return trimesh.convex.convex_hull(np.asarray(points, dtype=np.float64))


def _slab(corners, thickness: float, normal) -> trimesh.Trimesh:
    """Convex planar polygon ``corners`` extruded by ``thickness`` along ``normal``."""
    c = np.asarray(corners, dtype=np.float64)
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n) * (thickness / 2.0)
    return _hull(np.vstack([c + n, c - n]))


def _lathe(profile, sections: int = _SECTIONS, axis: str = "y",
           transform: np.ndarray | None = None) -> trimesh.Trimesh:
    """Closed solid of revolution.

    ``profile`` is a sequence of ``(radius, height)`` pairs ordered along the
    axis; open ends are capped automatically.  ``axis`` is ``"y"`` or ``"z"``
    (height measured along that axis, before ``transform``).
    """
    prof = [(float(r), float(h)) for r, h in profile]
    if prof[0][0] > 1e-9:
        prof.insert(0, (0.0, prof[0][1]))
    if prof[-1][0] > 1e-9:
        prof.append((0.0, prof[-1][1]))
    ang = np.arange(sections) * (2.0 * np.pi / sections)
    ca, sa = np.cos(ang), np.sin(ang)
    verts = [np.array([[0.0, prof[0][1], 0.0]])]
    starts = []
    nv = 1
    for r, h in prof[1:-1]:
        r = max(r, 1e-4)
        starts.append(nv)
        verts.append(np.column_stack([r * ca, np.full(sections, h), r * sa]))
        nv += sections
    top = nv
    verts.append(np.array([[0.0, prof[-1][1], 0.0]]))
    k = np.arange(sections)
    k1 = (k + 1) % sections
    faces = [np.column_stack([np.zeros(sections, dtype=np.int64), starts[0] + k1, starts[0] + k])]
    for a, b in zip(starts[:-1], starts[1:]):
        faces.append(np.column_stack([a + k, a + k1, b + k1]))
        faces.append(np.column_stack([a + k, b + k1, b + k]))
    faces.append(np.column_stack([np.full(sections, top), starts[-1] + k, starts[-1] + k1]))
    mesh = trimesh.Trimesh(vertices=np.vstack(verts), faces=np.vstack(faces), process=False)
    if mesh.volume < 0:
        mesh.invert()
    if axis == "z":
        mesh.apply_transform(_tf.rotation_matrix(np.pi / 2.0, [1, 0, 0]))
    if transform is not None:
        mesh.apply_transform(transform)
    return mesh


def _rounded_slab(w: float, h: float, d: float, r: float, center=(0.0, 0.0, 0.0),
                  segs: int = 4) -> trimesh.Trimesh:
    """Box ``w x h x d`` whose four edges parallel to Z are rounded (radius r)."""
    r = min(r, w / 2.0 * 0.99, h / 2.0 * 0.99)
    pts = []
    for cx, cy, a0 in ((w / 2 - r, h / 2 - r, 0.0), (-w / 2 + r, h / 2 - r, 0.5 * np.pi),
                       (-w / 2 + r, -h / 2 + r, np.pi), (w / 2 - r, -h / 2 + r, 1.5 * np.pi)):
        for a in a0 + np.linspace(0.0, 0.5 * np.pi, segs + 1):
            for z in (-d / 2.0, d / 2.0):
                pts.append((cx + r * np.cos(a), cy + r * np.sin(a), z))
    mesh = _hull(pts)
    mesh.apply_translation(np.asarray(center, dtype=np.float64))
    return mesh


def _front_box(w: float, h: float, x: float, y: float, z_face: float,
               protrude: float, depth: float) -> trimesh.Trimesh:
    """Plate on a +Z facing surface at ``z_face`` sticking out by ``protrude``."""
    return _box((w, h, depth), (x, y, z_face + protrude - depth / 2.0))


def _rotate_parts(meshes: Sequence[trimesh.Trimesh], angle: float, axis, point) -> None:
    """Rotate meshes in place by ``angle`` about ``axis`` through ``point``."""
    m = _tf.rotation_matrix(angle, axis, point)
    for mesh in meshes:
        mesh.apply_transform(m)


class _Parts:
    """Accumulates (mesh, colour) parts and builds the final coloured mesh."""

    def __init__(self) -> None:
        self.meshes: list[trimesh.Trimesh] = []
        self.colors: list[np.ndarray] = []

    def add(self, mesh: trimesh.Trimesh, color: np.ndarray) -> trimesh.Trimesh:
        if len(mesh.faces) == 0:
            raise ValueError("empty part")
        self.meshes.append(mesh)
        self.colors.append(np.repeat(np.asarray(color, dtype=np.uint8)[None, :],
                                     len(mesh.faces), axis=0))
        return mesh

    def build(self, name: str) -> trimesh.Trimesh:
        merged = trimesh.util.concatenate(self.meshes)
        verts = np.asarray(merged.vertices, dtype=np.float64)
        lo, hi = verts.min(axis=0), verts.max(axis=0)
        verts = verts - np.array([(lo[0] + hi[0]) / 2.0, lo[1], (lo[2] + hi[2]) / 2.0])
        colors = np.concatenate(self.colors, axis=0)
        mesh = trimesh.Trimesh(vertices=verts, faces=np.asarray(merged.faces, dtype=np.int64),
                               face_colors=colors, process=False)
        if len(mesh.faces) > _MAX_FACES:
            logger.warning("%s: %d faces exceeds budget %d", name, len(mesh.faces), _MAX_FACES)
        logger.debug("%s: %d parts, %d faces", name, len(self.meshes), len(mesh.faces))
        return mesh


# ==========================================================================
# furniture
# ==========================================================================
def _make_chair(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    seat_w, seat_d, seat_h = u(0.40, 0.56), u(0.38, 0.52), u(0.40, 0.50)
    back_h, tilt = u(0.30, 0.62), np.radians(u(0.0, 16.0))
    base = _pick(rng, ("legs", "pedestal", "sled"), (0.55, 0.25, 0.20))
    back_style = _pick(rng, ("panel", "slats", "bars"))
    has_arms = rng.random() < (0.6 if base == "pedestal" else 0.3)
    L = max(seat_h + 0.1 + back_h, seat_w + 0.25, seat_d + 0.3)
    t = _MIN_THICK * L
    seat_t = max(u(0.03, 0.09), t)
    if base == "pedestal":
        frame = _color(rng, _DARK + _METAL)
        cushion = _color(rng, _FABRIC + _LEATHER)
    elif base == "sled":
        frame = _color(rng, _METAL)
        cushion = _color(rng, _PLASTIC + _FABRIC + _WOOD)
    else:
        frame = _color(rng, _WOOD) if rng.random() < 0.7 else _color(rng, _METAL + _DARK)
        cushion = frame if rng.random() < 0.4 else _color(rng, _FABRIC + _LEATHER)
    y_top = seat_h + seat_t
    if rng.random() < 0.3:
        P.add(_rounded_slab(seat_w, seat_d, seat_t, seat_w * 0.12, (0, 0, 0)), cushion) \
            .apply_transform(_xf((0, seat_h + seat_t / 2, 0), rx=np.pi / 2))
    else:
        P.add(_box((seat_w, seat_t, seat_d), (0, seat_h + seat_t / 2, 0)), cushion)

    if base == "legs":
        leg = max(u(0.03, 0.055), t)
        round_legs = rng.random() < 0.4
        splay = u(0.01, 0.05) if rng.random() < 0.35 else 0.0
        xi = seat_w / 2 - leg / 2 - u(0.0, 0.03)
        zi = seat_d / 2 - leg / 2 - u(0.0, 0.03)
        for sx in (-1, 1):
            for sz in (-1, 1):
                top = (sx * xi, seat_h + 0.005, sz * zi)
                bot = (sx * (xi + splay), 0.0, sz * (zi + splay))
                P.add(_cyl(bot, top, leg / 2) if round_legs else _beam(bot, top, leg, leg), frame)
        if rng.random() < 0.4:
            s = max(leg * 0.7, t)
            y = u(0.1, 0.3) * seat_h
            f = 1.0 - y / seat_h
            xs, zs = xi + splay * f, zi + splay * f
            for sx in (-1, 1):
                P.add(_beam((sx * xs, y, -zs), (sx * xs, y, zs), s, s), frame)
            P.add(_beam((-xs, y, zs), (xs, y, zs), s, s), frame)
            if rng.random() < 0.5:
                P.add(_beam((-xs, y, -zs), (xs, y, -zs), s, s), frame)
    elif base == "pedestal":
        col_r = max(u(0.022, 0.035), t * 0.55)
        P.add(_cyl((0, 0.06, 0), (0, seat_h + 0.005, 0), col_r), frame)
        P.add(_box((seat_w * 0.4, max(0.05, t), seat_d * 0.4), (0, seat_h - 0.025, 0)), frame)
        n = int(_pick(rng, (4, 5, 5)))
        R = u(0.26, 0.34)
        arm_h, arm_w = max(0.035, t), max(0.04, t)
        off = u(0.0, 2 * np.pi / n)
        caster = _color(rng, _DARK)
        cr = max(0.028, t * 0.55)
        for k in range(n):
            th = off + 2 * np.pi * k / n
            end = (R * np.cos(th), cr + arm_h / 2, R * np.sin(th))
            P.add(_beam((0, 0.07, 0), end, arm_w, arm_h), frame)
            P.add(_sphere(cr, (end[0], cr, end[2])), caster)
    else:  # sled
        tube = max(u(0.012, 0.02), t * 0.55)
        xs = seat_w / 2 - tube
        zf, zb = seat_d / 2 - 0.04, -seat_d / 2 + 0.04
        for sx in (-1, 1):
            x = sx * xs
            P.add(_cyl((x, tube, zf + 0.03), (x, seat_h + 0.005, zf), tube), frame)
            P.add(_cyl((x, tube, zb - 0.03), (x, seat_h + 0.005, zb), tube), frame)
            P.add(_cyl((x, tube, zb - 0.06), (x, tube, zf + 0.06), tube), frame)

    # backrest, built upright then tilted about the rear seat edge
    back_t = max(u(0.025, 0.07), t)
    zb0 = -seat_d / 2 + back_t / 2
    bw = seat_w * u(0.85, 1.0)
    post = max(u(0.03, 0.05), t)
    y1 = y_top + back_h
    back_parts: list[tuple[trimesh.Trimesh, np.ndarray]] = []
    if back_style == "panel":
        gap = u(0.1, 0.35) * back_h if rng.random() < 0.4 else 0.0
        if gap > 0:
            for sx in (-1, 1):
                back_parts.append((_box((post, back_h, max(back_t * 0.7, t)),
                                        (sx * (bw / 2 - post / 2), y_top + back_h / 2, zb0)), frame))
        back_parts.append((_box((bw, back_h - gap, back_t),
                                (0, y1 - (back_h - gap) / 2, zb0)), cushion))
    else:
        for sx in (-1, 1):
            back_parts.append((_box((post, back_h, back_t),
                                    (sx * (bw / 2 - post / 2), y_top + back_h / 2, zb0)), frame))
        inner = bw - 2 * post
        if back_style == "slats":
            rail = max(u(0.05, 0.1), t)
            back_parts.append((_box((inner + 0.01, rail, back_t), (0, y1 - rail / 2, zb0)), frame))
            n = int(rng.integers(3, 7))
            sw = min(max(u(0.02, 0.04), t), inner / (n + 1))
            sw = max(sw, t)
            n = max(1, min(n, int(inner / (sw * 1.6))))
            slat_t = max(back_t * 0.6, t)
            hs = back_h - rail + 0.01
            for i in range(n):
                x = -inner / 2 + inner * (i + 0.5) / n
                back_parts.append((_box((sw, hs, slat_t), (x, y_top + hs / 2, zb0)), frame))
        else:  # horizontal bars
            n = int(rng.integers(2, 5))
            bh = max(u(0.03, 0.07), t)
            for i in range(n):
                y = y1 - bh / 2 - i * (back_h * 0.7 - bh) / max(n - 1, 1)
                back_parts.append((_box((inner + 0.01, bh, max(back_t * 0.7, t)), (0, y, zb0)), frame))
    _rotate_parts([m for m, _ in back_parts], -tilt, [1, 0, 0], (0, y_top, -seat_d / 2))
    for m, c in back_parts:
        P.add(m, c)

    if has_arms:
        arm_w, arm_t = max(u(0.04, 0.08), t), max(u(0.025, 0.05), t)
        arm_y = y_top + u(0.18, 0.26)
        arm_len = seat_d * u(0.75, 1.0)
        sup = max(0.03, t)
        z_sup = (-seat_d / 2 + arm_len - sup) if base != "pedestal" else 0.0
        arm_col = cushion if rng.random() < 0.4 else frame
        for sx in (-1, 1):
            x = sx * (seat_w / 2 + arm_w / 2 - 0.01)
            P.add(_box((arm_w, arm_t, arm_len), (x, arm_y, -seat_d / 2 + arm_len / 2)), arm_col)
            hh = arm_y - seat_h
            P.add(_box((sup, hh, sup), (x, seat_h + hh / 2, z_sup)), frame)
    return P


def _make_table(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("dining", "coffee", "desk", "side", "bar"), (0.35, 0.2, 0.2, 0.15, 0.1))
    if kind == "dining":
        W, D, H = u(1.2, 2.2), u(0.75, 1.0), u(0.72, 0.78)
    elif kind == "coffee":
        W, D, H = u(0.8, 1.4), u(0.45, 0.8), u(0.35, 0.48)
    elif kind == "desk":
        W, D, H = u(1.0, 1.8), u(0.55, 0.8), u(0.72, 0.76)
    elif kind == "side":
        W, H = u(0.4, 0.65), u(0.5, 0.7)
        D = W * u(0.8, 1.0)
    else:
        W, D, H = u(0.6, 1.2), u(0.6, 0.8), u(1.0, 1.1)
    round_top = kind != "desk" and rng.random() < (0.6 if kind == "bar" else 0.3)
    if round_top:
        W = min(W, u(0.9, 1.4)) if kind == "dining" else W
        D = W
    bases = ["legs"]
    probs = [0.55]
    if round_top or W <= 1.5 or kind in ("side", "bar"):
        bases.append("pedestal")
        probs.append(0.25)
    if not round_top and kind in ("dining", "desk", "coffee"):
        bases.append("trestle")
        probs.append(0.2)
    if kind == "desk":
        bases.append("desk_cabinet")
        probs.append(0.3)
    base = _pick(rng, bases, probs)
    L = max(W, D, H)
    t = _MIN_THICK * L
    top_t = max(u(0.025, 0.06), t)
    wood = _color(rng, _WOOD + _FURN_PAINT)
    glass_top = kind == "coffee" and rng.random() < 0.2
    top_col = _color(rng, _GLASS) if glass_top else wood
    leg_col = wood if rng.random() < 0.6 else _color(rng, _METAL + _DARK)
    yb = H - top_t
    if round_top:
        P.add(_cyl((0, yb, 0), (0, H, 0), W / 2, sections=32), top_col)
    else:
        P.add(_box((W, top_t, D), (0, H - top_t / 2, 0)), top_col)

    if base == "legs":
        leg = max(u(0.035, 0.08), t)
        style = _pick(rng, ("square", "round", "tapered"))
        if style == "tapered":
            leg = max(leg, t / 0.6)
        if round_top:
            rr = W / 2 * u(0.5, 0.7)
            pos = [(rr * np.cos(a), rr * np.sin(a)) for a in (np.pi / 4 + k * np.pi / 2 for k in range(4))]
        else:
            inset = u(0.02, 0.1)
            xl, zl = W / 2 - inset - leg / 2, D / 2 - inset - leg / 2
            pos = [(sx * xl, sz * zl) for sx in (-1, 1) for sz in (-1, 1)]
        for x, z in pos:
            if style == "square":
                P.add(_box((leg, yb + 0.005, leg), (x, (yb + 0.005) / 2, z)), leg_col)
            elif style == "round":
                P.add(_cyl((x, 0, z), (x, yb + 0.005, z), leg / 2), leg_col)
            else:
                P.add(_lathe([(leg * 0.3, 0.0), (leg / 2, yb + 0.005)],
                             transform=_xf((x, 0, z))), leg_col)
        if not round_top and rng.random() < (0.6 if kind in ("dining", "desk") else 0.3):
            ap_h, ap_t = max(u(0.06, 0.12), t), max(0.02, t)
            y = yb - ap_h / 2 + 0.002
            for sz in (-1, 1):
                P.add(_box((2 * xl, ap_h, ap_t), (0, y, sz * (zl - leg / 2 + ap_t / 2))), leg_col)
            for sx in (-1, 1):
                P.add(_box((ap_t, ap_h, 2 * zl), (sx * (xl - leg / 2 + ap_t / 2), y, 0)), leg_col)
        if rng.random() < (0.4 if kind in ("coffee", "side") else 0.15):
            sh_t = max(0.02, t)
            y = u(0.12, 0.3) * H
            if round_top:
                P.add(_cyl((0, y, 0), (0, y + sh_t, 0), rr + leg / 2, sections=24), wood)
            else:
                P.add(_box((2 * xl + leg, sh_t, 2 * zl + leg), (0, y, 0)), wood)
    elif base == "pedestal":
        col_r = max(u(0.035, 0.08) * min(1.0, W / 0.9), t * 0.55)
        foot_t = max(u(0.03, 0.05), t)
        centres = [0.0]
        if not round_top and W > 1.1:
            centres = [-W * 0.28, W * 0.28]
        foot_style = _pick(rng, ("disc", "cross", "square"))
        fr = max(u(0.22, 0.36) * min(W, 1.2), 0.18)
        if len(centres) > 1 and foot_style != "cross":
            fr = min(fr, D * 0.42)
        for cx in centres:
            if rng.random() < 0.5:
                P.add(_cyl((cx, foot_t * 0.5, 0), (cx, yb + 0.005, 0), col_r), leg_col)
            else:
                P.add(_lathe([(col_r * 1.6, foot_t), (col_r, foot_t + 0.15 * yb),
                              (col_r * 0.8, 0.6 * yb), (col_r * 1.3, yb + 0.005)],
                             transform=_xf((cx, 0, 0))), leg_col)
            if foot_style == "disc":
                P.add(_cyl((cx, 0, 0), (cx, foot_t, 0), fr, sections=24), leg_col)
            elif foot_style == "square":
                P.add(_box((fr * 1.6, foot_t, min(fr * 1.6, D * 0.9)), (cx, foot_t / 2, 0)), leg_col)
            else:
                fw = max(0.05, t)
                for k in range(4):
                    a = np.pi / 4 + k * np.pi / 2
                    P.add(_beam((cx, foot_t / 2 + 0.01, 0),
                                (cx + fr * np.cos(a), foot_t / 2, fr * np.sin(a)), fw, foot_t), leg_col)
        if len(centres) > 1:
            s = max(0.04, t)
            P.add(_beam((centres[0], yb * 0.35, 0), (centres[1], yb * 0.35, 0), s, s), leg_col)
    elif base == "trestle":
        pt = max(u(0.04, 0.08), t)
        inset = u(0.05, 0.2) * W / 2 + pt
        foot_h = max(0.05, t)
        pd = D * u(0.3, 0.6)
        for sx in (-1, 1):
            x = sx * (W / 2 - inset)
            P.add(_box((pt, yb - foot_h + 0.01, pd), (x, foot_h + (yb - foot_h) / 2, 0)), leg_col)
            P.add(_box((pt * 1.4, foot_h, D * 0.8), (x, foot_h / 2, 0)), leg_col)
            P.add(_box((pt * 1.2, max(0.04, t), D * 0.8), (x, yb - max(0.04, t) / 2, 0)), leg_col)
        s = max(0.05, t)
        P.add(_box((W - 2 * inset, s, max(0.04, t)), (0, u(0.25, 0.5) * H, 0)), leg_col)
    else:  # desk with drawer cabinet
        side = _pick(rng, (-1, 1))
        cw = min(u(0.35, 0.5), W * 0.4)
        cx = side * (W / 2 - cw / 2 - 0.01)
        cd = D * 0.9
        P.add(_box((cw, yb, cd), (cx, yb / 2, 0)), leg_col)
        n = int(rng.integers(2, 5))
        dh = (yb - 0.06) / n
        handle = _color(rng, _METAL)
        zf = cd / 2
        ft = max(0.02, t)
        for i in range(n):
            y = 0.06 + dh * (i + 0.5)
            P.add(_front_box(cw - 0.03, dh - 0.012, cx, y, zf, 0.012, ft), wood)
            P.add(_box((min(0.12, cw * 0.4), ft, ft), (cx, y + dh * 0.2, zf + 0.012 + ft / 2 - 0.003)), handle)
        ox = -side * (W / 2 - 0.05)
        if rng.random() < 0.5:
            pt = max(0.04, t)
            P.add(_box((pt, yb, cd), (ox, yb / 2, 0)), leg_col)
        else:
            leg = max(0.05, t)
            for sz in (-1, 1):
                P.add(_box((leg, yb, leg), (ox, yb / 2, sz * (D / 2 - 0.06))), leg_col)
        if rng.random() < 0.5:
            mp = max(0.02, t)
            P.add(_box((W - cw - 0.1, yb * 0.4, mp), (-side * cw / 2, yb * 0.78, -D / 2 + 0.08)), leg_col)
    return P


def _make_sofa(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    n = int(rng.integers(1, 5))
    unit = u(0.55, 0.72)
    Ws = n * unit
    arm_style = _pick(rng, ("none", "thin", "thick", "rolled"), (0.1, 0.35, 0.35, 0.2))
    arm_w = {"none": 0.0, "thin": u(0.08, 0.14), "thick": u(0.18, 0.3), "rolled": u(0.14, 0.22)}[arm_style]
    D = u(0.8, 1.0)
    chaise = n >= 2 and rng.random() < 0.25
    ch_len = u(0.5, 0.8) if chaise else 0.0
    L = max(Ws + 2 * arm_w, D + ch_len, 0.95)
    t = _MIN_THICK * L
    if arm_style == "thin":
        arm_w = max(arm_w, t)
    W = Ws + 2 * arm_w
    feet = _pick(rng, ("legs", "plinth"), (0.65, 0.35))
    leg_h = max(u(0.06, 0.18) if feet == "legs" else u(0.03, 0.06), t)
    frame_h, cush_t = u(0.15, 0.28), u(0.1, 0.2)
    seat_top = leg_h + frame_h + cush_t
    H = max(u(0.72, 0.95), seat_top + 0.28)
    back_t = u(0.15, 0.25)
    arm_h = min(seat_top + u(0.1, 0.25), H - 0.05)
    back_cush = rng.random() < 0.65
    bc_t = u(0.12, 0.2) if back_cush else 0.0
    uph = _color(rng, _FABRIC + _LEATHER)
    cush = _shade(uph, u(0.92, 1.12))
    leg_col = _color(rng, _WOOD + _METAL + _DARK)
    zb = -D / 2
    base_d = D - back_t
    P.add(_box((Ws, frame_h, base_d), (0, leg_h + frame_h / 2, zb + back_t + base_d / 2)), uph)
    back_top = H - (u(0.04, 0.15) if back_cush else 0.0)
    P.add(_box((Ws, back_top - leg_h, back_t), (0, (back_top + leg_h) / 2, zb + back_t / 2)), uph)
    if arm_style != "none":
        for sx in (-1, 1):
            x = sx * (Ws / 2 + arm_w / 2)
            P.add(_box((arm_w, arm_h - leg_h, D), (x, (arm_h + leg_h) / 2, 0)), uph)
            if arm_style == "rolled":
                r = arm_w / 2 * 1.2
                P.add(_cyl((x + sx * r * 0.15, arm_h - r * 0.3, zb), (x + sx * r * 0.15, arm_h - r * 0.3, D / 2 + 0.01),
                           r, sections=20), uph)
    y_c = leg_h + frame_h + cush_t / 2
    z0 = zb + back_t + bc_t * 0.8
    for i in range(n):
        x = -Ws / 2 + unit * (i + 0.5)
        P.add(_box((unit - 0.015, cush_t, D / 2 + 0.02 - z0), (x, y_c, (z0 + D / 2 + 0.02) / 2)), cush)
        if back_cush:
            bh = H - seat_top - 0.02
            P.add(_box((unit - 0.015, bh, bc_t), (x, seat_top + bh / 2, zb + back_t + bc_t / 2 - 0.01),
                       rx=-np.radians(u(4.0, 12.0))), cush)
    leg_pos = []
    if chaise:
        sx = _pick(rng, (-1, 1))
        cw = min(unit * u(1.0, 1.25), Ws)
        xc = sx * (Ws / 2 - cw / 2)
        zc = D / 2 + ch_len / 2
        P.add(_box((cw, frame_h, ch_len + 0.02), (xc, leg_h + frame_h / 2, zc - 0.01)), uph)
        P.add(_box((cw - 0.015, cush_t, ch_len), (xc, y_c, zc + 0.02)), cush)
        if arm_style != "none":
            x = sx * (Ws / 2 + arm_w / 2)
            P.add(_box((arm_w, arm_h - leg_h, ch_len), (x, (arm_h + leg_h) / 2, zc)), uph)
        leg_pos.append((xc - cw / 2 + 0.06, D / 2 + ch_len - 0.06))
        leg_pos.append((xc + cw / 2 - 0.06, D / 2 + ch_len - 0.06))
    if feet == "legs":
        leg = max(u(0.035, 0.07), t)
        xs = [-W / 2 + leg, W / 2 - leg]
        if n >= 3:
            xs.append(0.0)
        leg_pos += [(x, z) for x in xs for z in (-D / 2 + leg, D / 2 - leg)]
        cone = rng.random() < 0.5
        for x, z in leg_pos:
            if cone:
                P.add(_lathe([(leg * 0.35, 0.0), (leg * 0.6, leg_h + 0.01)], transform=_xf((x, 0, z))), leg_col)
            else:
                P.add(_box((leg, leg_h + 0.01, leg), (x, (leg_h + 0.01) / 2, z)), leg_col)
    else:
        P.add(_box((W - 0.06, leg_h + 0.01, D - 0.06), (0, (leg_h + 0.01) / 2, 0)), leg_col)
        if chaise:
            P.add(_box((cw - 0.06, leg_h + 0.01, ch_len), (xc, (leg_h + 0.01) / 2, zc - 0.04)), leg_col)
    return P


def _shade_profile(style: str, r_small: float, r_big: float, h: float) -> list[tuple[float, float]]:
    """Lamp shade profile (radius, height) with the big opening at height 0."""
    if style == "dome":
        a = np.linspace(0.0, np.pi / 2, 6)
        return [(max(r_big * np.cos(x), r_small * 0.5), h * np.sin(x)) for x in a]
    if style == "cylinder":
        return [(r_big, 0.0), (r_big, h)]
    return [(r_big, 0.0), (r_small, h)]


def _make_lamp(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("floor", "desk", "table"), (0.35, 0.35, 0.3))
    metal = _color(rng, _METAL + _DARK)
    shade_c = _color(rng, _SHADE)
    bulb = _color(rng, _LIGHT)
    if kind == "floor":
        H = u(1.4, 1.9)
        style = _pick(rng, ("straight", "arc", "torchiere"), (0.5, 0.25, 0.25))
        reach = u(0.6, 1.0) if style == "arc" else 0.0
        t = _MIN_THICK * max(H, reach * 1.4 + 0.5)
        base_t = max(u(0.02, 0.05), t)
        br = u(0.13, 0.22) + (0.08 if style == "arc" else 0.0)
        if rng.random() < 0.65:
            P.add(_cyl((0, 0, 0), (0, base_t, 0), br, sections=24), metal)
        else:
            P.add(_box((br * 1.7, base_t, br * 1.7), (0, base_t / 2, 0)), metal)
        pr = max(u(0.01, 0.02), t * 0.55)
        if style == "straight":
            sh = u(0.25, 0.4)
            rb = u(0.16, 0.25)
            pst = _pick(rng, ("cone", "cylinder", "cone"))
            P.add(_cyl((0, base_t * 0.5, 0), (0, H - sh * 0.5, 0), pr), metal)
            P.add(_lathe(_shade_profile(pst, rb * u(0.5, 0.8), rb, sh), sections=20,
                         transform=_xf((0, H - sh, 0))), shade_c)
        elif style == "torchiere":
            bh = u(0.12, 0.2)
            rb = u(0.16, 0.24)
            P.add(_cyl((0, base_t * 0.5, 0), (0, H - bh + 0.01, 0), pr), metal)
            P.add(_lathe([(pr * 1.5, H - bh), (rb * 0.7, H - bh * 0.3), (rb, H)], sections=20), shade_c)
        else:  # arc
            ya = H * u(0.4, 0.6)
            pts = [(0.0, base_t * 0.5, 0.0), (0.0, ya, 0.0)]
            for phi in np.linspace(0.0, np.pi * 0.62, 6)[1:]:
                pts.append((0.0, ya + (H - ya) * np.sin(phi), reach * (1 - np.cos(phi))))
            for a, b in zip(pts[:-1], pts[1:]):
                P.add(_cyl(a, b, pr, sections=12), metal)
            tip = np.asarray(pts[-1])
            sh, rb = u(0.14, 0.22), u(0.15, 0.24)
            P.add(_lathe(_shade_profile(_pick(rng, ("dome", "cone")), pr * 2, rb, sh), sections=20,
                         transform=_xf(tip + (0, -sh * 1.2, 0))), shade_c)
    elif kind == "desk":
        base_r = u(0.07, 0.11)
        l1, l2 = u(0.2, 0.35), u(0.2, 0.35)
        a1 = np.radians(u(0.0, 30.0))
        b = np.radians(u(-20.0, 30.0))
        c = np.radians(u(10.0, 50.0))
        sh_len = u(0.1, 0.16)
        t = _MIN_THICK * max(l1 + l2 * 0.5 + 0.1, l2 + 0.15)
        base_t = max(u(0.02, 0.04), t)
        if rng.random() < 0.6:
            P.add(_cyl((0, 0, 0), (0, base_t, 0), base_r, sections=24), metal)
        else:
            P.add(_box((base_r * 1.8, base_t, base_r * 1.6), (0, base_t / 2, 0)), metal)
        pr = max(0.009, t * 0.55)
        p0 = np.array([0.0, base_t, -base_r * 0.3])
        p1 = p0 + l1 * np.array([0.0, np.cos(a1), -np.sin(a1)])
        p2 = p1 + l2 * np.array([0.0, np.sin(b), np.cos(b)])
        P.add(_cyl(p0 - (0, base_t * 0.5, 0), p1, pr, sections=12), metal)
        P.add(_cyl(p1, p2, pr, sections=12), metal)
        P.add(_sphere(pr * 1.8, p1), metal)
        rn, rw = u(0.025, 0.045), u(0.06, 0.1)
        rw = max(rw, rn * 1.4)
        prof = _shade_profile(_pick(rng, ("cone", "dome", "cylinder")), rn, rw, sh_len)
        shade = _lathe([(r, -sh_len + h) for r, h in prof], sections=20)
        # the shade axis points down and forward (+Z), opening at the bottom
        shade.apply_transform(_tf.rotation_matrix(-c, [1, 0, 0]))
        shade.apply_translation(p2 + np.array([0.0, 0.0, 0.0]))
        P.add(shade, shade_c)
        if p2[1] - sh_len < base_t:
            P.meshes[-1].apply_translation((0, base_t - (p2[1] - sh_len) + 0.02, 0))
    else:  # table lamp
        H = u(0.45, 0.75)
        t = _MIN_THICK * H
        body_c = _color(rng, _CERAMIC + _METAL)
        body_style = _pick(rng, ("vase", "column", "jar"))
        sh = u(0.18, 0.3)
        rb = u(0.14, 0.24)
        y_sh = H - sh
        if body_style == "column":
            base_t = max(0.03, t)
            P.add(_cyl((0, 0, 0), (0, base_t, 0), u(0.07, 0.11), sections=24), body_c)
            P.add(_cyl((0, base_t * 0.5, 0), (0, y_sh + sh * 0.4, 0), max(0.012, t * 0.55)), metal)
        else:
            bh = (y_sh - 0.02) * u(0.6, 0.9)
            rmax = u(0.06, 0.13)
            if body_style == "vase":
                prof = [(rmax * 0.6, 0.0), (rmax, bh * 0.35), (rmax * 0.8, bh * 0.75), (rmax * 0.35, bh)]
            else:
                prof = [(rmax * 0.7, 0.0), (rmax, bh * 0.2), (rmax, bh * 0.7), (rmax * 0.6, bh * 0.95),
                        (rmax * 0.4, bh)]
            P.add(_lathe(prof, sections=20), body_c)
            P.add(_cyl((0, bh - 0.01, 0), (0, y_sh + sh * 0.4, 0), max(0.01, t * 0.55)), metal)
        pst = _pick(rng, ("cone", "cylinder"))
        P.add(_lathe(_shade_profile(pst, rb * u(0.55, 0.85), rb, sh), sections=20,
                     transform=_xf((0, y_sh, 0))), shade_c)
        if rng.random() < 0.3:
            P.add(_sphere(max(0.03, t), (0, y_sh + sh + max(0.03, t) * 0.6, 0)), bulb)
    return P


def _make_cabinet(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("wardrobe", "sideboard", "dresser", "nightstand", "filing", "open"),
                 (0.2, 0.2, 0.2, 0.15, 0.1, 0.15))
    if kind == "wardrobe":
        W, H, D = u(0.8, 1.6), u(1.7, 2.2), u(0.5, 0.65)
    elif kind == "sideboard":
        W, H, D = u(1.2, 2.0), u(0.6, 0.9), u(0.4, 0.5)
    elif kind == "dresser":
        W, H, D = u(0.8, 1.5), u(0.8, 1.3), u(0.42, 0.55)
    elif kind == "nightstand":
        W, H, D = u(0.4, 0.6), u(0.45, 0.7), u(0.35, 0.45)
    elif kind == "filing":
        W, H, D = u(0.38, 0.5), u(0.7, 1.4), u(0.55, 0.7)
    else:
        W, H, D = u(0.6, 1.4), u(0.8, 1.9), u(0.3, 0.45)
    support = "none" if kind == "filing" else _pick(rng, ("legs", "plinth", "none"), (0.4, 0.35, 0.25))
    base_h = {"legs": u(0.08, 0.25) if kind != "wardrobe" else u(0.05, 0.12),
              "plinth": u(0.05, 0.1), "none": 0.0}[support]
    L = max(W, H + base_h, D)
    t = _MIN_THICK * L
    body = _color(rng, _METAL if kind == "filing" else _WOOD + _FURN_PAINT)
    front = body if rng.random() < 0.7 else _color(rng, _WOOD + _FURN_PAINT)
    handle_c = _color(rng, _METAL + _DARK)
    y0 = base_h
    zf = D / 2
    ft = max(0.03, t)
    prot = 0.015

    def drawer(cx, cy, cw, ch):
        P.add(_front_box(cw - 0.008, ch - 0.008, cx, cy, zf, prot, ft), front)
        hw = min(0.16, cw * 0.4)
        hs = max(0.015, t)
        P.add(_box((max(hw, hs), hs, hs), (cx, cy + ch * 0.15, zf + prot + hs / 2 - 0.003)), handle_c)

    def door(cx, cy, cw, ch, hx):
        P.add(_front_box(cw - 0.008, ch - 0.008, cx, cy, zf, prot, ft), front)
        hs = max(0.015, t)
        P.add(_box((hs, max(min(0.2, ch * 0.3), hs), hs), (hx, cy, zf + prot + hs / 2 - 0.003)), handle_c)

    if kind == "open":
        pt = max(u(0.018, 0.03), t)
        for sx in (-1, 1):
            P.add(_box((pt, H, D), (sx * (W / 2 - pt / 2), y0 + H / 2, 0)), body)
        for y in (y0 + pt / 2, y0 + H - pt / 2):
            P.add(_box((W, pt, D), (0, y, 0)), body)
        P.add(_box((W, H, pt), (0, y0 + H / 2, -D / 2 + pt / 2)), body)
        ns = max(1, int(H / u(0.3, 0.4)) - 1)
        for i in range(ns):
            y = y0 + pt + (H - 2 * pt) * (i + 1) / (ns + 1)
            P.add(_box((W - 2 * pt + 0.004, pt, D - pt), (0, y, pt / 2)), body)
        if rng.random() < 0.35:
            glass = _color(rng, _GLASS)
            for sx in (-1, 1):
                P.add(_box((W / 2 - pt - 0.005, H - 2 * pt, ft), (sx * W / 4, y0 + H / 2, D / 2 + ft / 2)), glass)
    else:
        P.add(_box((W, H, D), (0, y0 + H / 2, 0)), body)
        m = 0.02
        x0, x1, yy0, yy1 = -W / 2 + m, W / 2 - m, y0 + m, y0 + H - m
        fw, fh = x1 - x0, yy1 - yy0
        if kind == "wardrobe":
            if rng.random() < 0.4:
                dh = fh * u(0.15, 0.25)
                nd = int(rng.integers(1, 3))
                for i in range(nd):
                    drawer(x0 + fw * (i + 0.5) / nd, yy0 + dh / 2, fw / nd, dh)
                yy0 += dh
                fh = yy1 - yy0
            nd = int(_pick(rng, (2, 3) if W > 1.2 else (1, 2)))
            for i in range(nd):
                cx = x0 + fw * (i + 0.5) / nd
                hx = cx + (fw / nd) * 0.38 * (1 if (i < nd / 2 and nd > 1) else -1)
                door(cx, yy0 + fh / 2, fw / nd, fh, hx)
        elif kind == "sideboard":
            nc = int(rng.integers(2, 5))
            top_row = rng.random() < 0.5
            if top_row:
                dh = fh * u(0.2, 0.3)
                for i in range(nc):
                    drawer(x0 + fw * (i + 0.5) / nc, yy1 - dh / 2, fw / nc, dh)
                yy1 -= dh
                fh = yy1 - yy0
            for i in range(nc):
                cx = x0 + fw * (i + 0.5) / nc
                if not top_row and rng.random() < 0.3:
                    nd = int(rng.integers(2, 4))
                    for j in range(nd):
                        drawer(cx, yy0 + fh * (j + 0.5) / nd, fw / nc, fh / nd)
                else:
                    door(cx, yy0 + fh / 2, fw / nc, fh, cx + fw / nc * 0.35 * (1 if i % 2 == 0 else -1))
        elif kind == "dresser":
            rows = int(rng.integers(3, 6))
            cols = 2 if (W > 1.0 and rng.random() < 0.6) else 1
            for r in range(rows):
                cc = cols if not (r == rows - 1 and rng.random() < 0.4) else cols + 1
                for c in range(cc):
                    drawer(x0 + fw * (c + 0.5) / cc, yy0 + fh * (r + 0.5) / rows, fw / cc, fh / rows)
        elif kind == "nightstand":
            nd = int(rng.integers(1, 4))
            if rng.random() < 0.35:
                dh = fh * 0.3
                drawer(0.0, yy1 - dh / 2, fw, dh)
                door(0.0, yy0 + (fh - dh) / 2, fw, fh - dh, fw * 0.35)
            else:
                for j in range(nd):
                    drawer(0.0, yy0 + fh * (j + 0.5) / nd, fw, fh / nd)
        else:  # filing
            nd = int(rng.integers(2, 5))
            for j in range(nd):
                drawer(0.0, yy0 + fh * (j + 0.5) / nd, fw, fh / nd)
    if kind not in ("wardrobe", "filing") and rng.random() < 0.5:
        oh = u(0.01, 0.04)
        tt = max(u(0.02, 0.04), t)
        P.add(_box((W + 2 * oh, tt, D + oh), (0, y0 + H + tt / 2 - 0.002, oh / 2)), front)
    if support == "legs":
        leg = max(u(0.03, 0.05), t)
        tapered = rng.random() < 0.5
        leg_c = _pick(rng, (body, handle_c))
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (W / 2 - leg), sz * (D / 2 - leg)
                if tapered:
                    P.add(_lathe([(leg * 0.3, 0.0), (leg / 2, base_h + 0.01)], sections=12,
                                 transform=_xf((x, 0, z))), leg_c)
                else:
                    P.add(_box((leg, base_h + 0.01, leg), (x, (base_h + 0.01) / 2, z)), leg_c)
    elif support == "plinth":
        P.add(_box((W - 0.04, base_h + 0.01, D - 0.05), (0, (base_h + 0.01) / 2, -0.01)), _shade(body, 0.8))
    return P


def _make_bench(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("park", "backless", "block", "gym"), (0.4, 0.25, 0.15, 0.2))
    if kind in ("park", "backless"):
        Lg, seat_h, sd = u(1.2, 2.0), u(0.42, 0.48), u(0.38, 0.55)
        has_back = kind == "park"
        back_h = u(0.3, 0.5) if has_back else 0.0
        t = _MIN_THICK * max(Lg, seat_h + back_h)
        wood = _color(rng, _WOOD + _FURN_PAINT[:3])
        frame = _color(rng, _METAL + _DARK) if rng.random() < 0.6 else wood
        ns = int(rng.integers(3, 7))
        st = max(u(0.025, 0.045), t)
        gap = u(0.005, 0.02)
        sw = max((sd - gap * (ns - 1)) / ns, t)
        if rng.random() < 0.2:
            P.add(_box((Lg, st, sd), (0, seat_h - st / 2, 0)), wood)
        else:
            for i in range(ns):
                z = -sd / 2 + sw / 2 + i * (sd - sw) / max(ns - 1, 1)
                P.add(_box((Lg, st, sw), (0, seat_h - st / 2, z)), wood)
        ft = max(u(0.04, 0.07), t)
        inset = u(0.06, 0.2)
        xs = [-(Lg / 2 - inset), Lg / 2 - inset] + ([0.0] if Lg > 1.6 else [])
        fstyle = _pick(rng, ("posts", "slab", "A"))
        ys = seat_h - st
        for x in xs:
            if fstyle == "posts":
                for sz in (-1, 1):
                    P.add(_box((ft, ys + 0.005, ft), (x, (ys + 0.005) / 2, sz * (sd / 2 - ft / 2))), frame)
                P.add(_box((ft, ft, sd), (x, ys - ft / 2, 0)), frame)
            elif fstyle == "slab":
                P.add(_box((ft, ys + 0.005, sd * 0.85), (x, (ys + 0.005) / 2, 0)), frame)
            else:
                for sz in (-1, 1):
                    P.add(_beam((x, 0, sz * sd * 0.55), (x, ys + 0.005, sz * sd * 0.1), ft, ft), frame)
                P.add(_box((ft, ft, sd), (x, ys - ft / 2, 0)), frame)
        if has_back:
            tilt = np.radians(u(8.0, 18.0))
            nb = int(rng.integers(2, 5))
            bsw = max((back_h * 0.8) / nb - 0.015, t)
            bparts = []
            zb = -sd / 2 + st / 2
            for i in range(nb):
                y = seat_h + back_h - bsw / 2 - i * (back_h * 0.8 - bsw) / max(nb - 1, 1)
                bparts.append((_box((Lg, bsw, st), (0, y, zb)), wood))
            for x in xs:
                bparts.append((_box((ft, back_h + ys * 0.3, ft), (x, seat_h + back_h / 2 - ys * 0.15, zb - st / 2 - ft / 2 + 0.005)),
                               frame))
            _rotate_parts([m for m, _ in bparts], -tilt, [1, 0, 0], (0, seat_h, -sd / 2))
            for m, c in bparts:
                P.add(m, c)
            if rng.random() < 0.4:
                ay = seat_h + u(0.18, 0.25)
                for x in xs[:2]:
                    P.add(_box((ft, ft, sd * 0.85), (x, ay, -sd * 0.05)), frame)
                    P.add(_box((ft, ay - ys, ft), (x, (ay + ys) / 2, sd * 0.35)), frame)
    elif kind == "block":
        Lg, seat_h, sd = u(1.2, 2.4), u(0.4, 0.48), u(0.35, 0.5)
        t = _MIN_THICK * Lg
        stone = _color(rng, _STONE + _WOOD[:2])
        if rng.random() < 0.5:
            P.add(_box((Lg, seat_h, sd), (0, seat_h / 2, 0)), stone)
        else:
            slab_t = max(u(0.06, 0.12), t)
            top = _color(rng, _WOOD + _STONE)
            P.add(_box((Lg, slab_t, sd), (0, seat_h - slab_t / 2, 0)), top)
            bw = u(0.12, 0.3)
            nsup = 3 if Lg > 1.9 else 2
            for i in range(nsup):
                x = -Lg / 2 + u(0.1, 0.25) + bw / 2 if i == 0 else (
                    Lg / 2 - u(0.1, 0.25) - bw / 2 if i == 1 else 0.0)
                P.add(_box((bw, seat_h - slab_t + 0.01, sd * u(0.7, 1.0)), (x, (seat_h - slab_t) / 2, 0)), stone)
    else:  # gym bench
        Lg, seat_h, sd = u(1.0, 1.3), u(0.42, 0.48), u(0.25, 0.32)
        t = _MIN_THICK * Lg
        pad = _color(rng, _LEATHER + _PLASTIC[:1])
        metal = _color(rng, _METAL + _DARK)
        pt = u(0.06, 0.1)
        P.add(_box((Lg, pt, sd), (0, seat_h - pt / 2, 0)), pad)
        bt = max(0.05, t)
        P.add(_box((Lg * 0.9, bt, bt), (0, seat_h - pt - bt / 2, 0)), metal)
        for sx in (-1, 1):
            x = sx * Lg * u(0.33, 0.42)
            P.add(_box((bt, seat_h - pt, bt), (x, (seat_h - pt) / 2, 0)), metal)
            P.add(_box((bt, bt, sd * u(1.2, 1.6)), (x, bt / 2, 0)), metal)
    return P


def _make_display(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("monitor", "tv", "crt"), (0.5, 0.3, 0.2))
    frame = _color(rng, _DARK + _PLASTIC[:3])
    screen = _color(rng, _SCREEN, jitter=6)
    if kind == "crt":
        W = u(0.35, 0.5)
        Hs = W * u(0.75, 0.85)
        Dp = W * u(0.8, 1.1)
        t = _MIN_THICK * max(W, Dp)
        foot_h = u(0.02, 0.06)
        yc = foot_h + Hs / 2
        fd = max(0.06, t)
        P.add(_box((W, Hs, fd), (0, yc, 0)), frame)
        back = [(sx * W * 0.47, yc + sy * Hs * 0.47, -fd / 2) for sx in (-1, 1) for sy in (-1, 1)]
        back += [(sx * W * 0.28, yc - Hs * 0.1 + sy * Hs * 0.3, -Dp) for sx in (-1, 1) for sy in (-1, 1)]
        P.add(_hull(back), frame)
        bz = W * u(0.05, 0.09)
        P.add(_front_box(W - 2 * bz, Hs - 2 * bz, 0, yc, fd / 2, 0.004, t), screen)
        P.add(_box((W * 0.6, max(foot_h + 0.02, t), Dp * 0.6), (0, (foot_h + 0.02) / 2, -Dp * 0.35)), frame)
        return P
    aspect = _pick(rng, (16 / 9, 16 / 10, 4 / 3, 21 / 9), (0.5, 0.2, 0.15, 0.15)) if kind == "monitor" else 16 / 9
    W = u(0.45, 0.8) if kind == "monitor" else u(0.9, 1.6)
    Hs = W / aspect
    t = _MIN_THICK * W
    depth = max(u(0.02, 0.06), t)
    bezel = W * u(0.01, 0.04)
    stand = _pick(rng, ("neck_foot",) if kind == "monitor" else ("neck_foot", "two_feet", "pedestal"))
    foot_t = max(u(0.015, 0.03), t)
    if stand == "two_feet":
        y0 = u(0.04, 0.12)
    else:
        y0 = u(0.05, 0.2) if kind == "monitor" else u(0.04, 0.1)
    yc = y0 + Hs / 2
    panel = [_box((W, Hs, depth), (0, yc, 0)),
             _front_box(W - 2 * bezel, Hs - 2 * bezel, 0, yc, depth / 2, 0.002, t)]
    bulge = rng.random() < 0.5
    if bulge:
        bd = max(u(0.02, 0.06), t)
        panel.append(_box((W * u(0.4, 0.7), Hs * u(0.4, 0.7), bd), (0, yc - Hs * 0.05, -depth / 2 - bd / 2 + 0.002)))
    tilt = np.radians(u(0.0, 8.0)) if kind == "monitor" else 0.0
    _rotate_parts(panel, -tilt, [1, 0, 0], (0, yc, 0))
    P.add(panel[0], frame)
    P.add(panel[1], screen)
    if bulge:
        P.add(panel[2], frame)
    z_back = -depth / 2 - (bd if bulge else 0.0)
    if stand in ("neck_foot", "pedestal"):
        nw, nd = max(u(0.04, 0.09), t), max(u(0.02, 0.04), t)
        nz = z_back - nd / 2 + 0.005
        P.add(_box((nw, yc - foot_t * 0.5, nd), (0, foot_t * 0.5 + (yc - foot_t * 0.5) / 2, nz)), frame)
        if stand == "pedestal":
            P.add(_box((W * u(0.3, 0.6), max(foot_t * 1.5, t), u(0.18, 0.3)), (0, max(foot_t * 1.5, t) / 2, nz + 0.02)),
                  frame)
        elif rng.random() < 0.5:
            fd = u(0.15, 0.25)
            P.add(_box((W * u(0.3, 0.5), foot_t, fd), (0, foot_t / 2, nz + fd * 0.15)), frame)
        else:
            P.add(_cyl((0, 0, nz + 0.03), (0, foot_t, nz + 0.03), u(0.1, 0.15), sections=24), frame)
    else:
        fx = W * u(0.3, 0.45)
        fw = max(0.04, t)
        fl = u(0.15, 0.25)
        for sx in (-1, 1):
            P.add(_box((fw, y0 + Hs * 0.15, fw), (sx * fx, (y0 + Hs * 0.15) / 2, z_back + 0.005)), frame)
            P.add(_box((fw, fw, fl), (sx * fx, fw / 2, z_back + 0.01)), frame)
    return P


def _make_bed(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("legs", "platform", "fourposter", "bunk"), (0.35, 0.3, 0.15, 0.2))
    W = u(0.9, 1.1) if kind == "bunk" else u(0.9, 2.0)
    Lb = u(1.95, 2.2)
    post_h = u(1.8, 2.2) if kind in ("fourposter", "bunk") else 0.0
    t = _MIN_THICK * max(W, Lb + 0.1, post_h)
    wood = _color(rng, _WOOD + _FURN_PAINT + _METAL[:2])
    sheet = _color(rng, _BEDDING)
    blanket = _color(rng, _BEDDING + _FABRIC)
    mt = u(0.15, 0.28)
    hb_t = max(u(0.04, 0.1), t)
    head_h = u(0.9, 1.4)
    head_c = wood if rng.random() < 0.6 else _color(rng, _FABRIC + _LEATHER)

    def level(y_base: float, width: float, pillows: bool = True) -> float:
        P.add(_box((width - 0.04, mt, Lb - 0.04), (0, y_base + mt / 2, 0)), sheet)
        ytop = y_base + mt
        if pillows:
            npl = 1 if width < 1.3 else 2
            pw = (width - 0.1) / npl
            for i in range(npl):
                x = -width / 2 + 0.05 + pw * (i + 0.5)
                P.add(_ellipsoid((pw * 0.45, max(0.06, t * 0.55), u(0.18, 0.24)), (x, ytop + 0.04, -Lb / 2 + 0.3)), sheet)
        if rng.random() < 0.6:
            bl = Lb * u(0.5, 0.72)
            bt = max(0.03, t)
            P.add(_box((width + 0.02, mt * 0.6 + bt, bl), (0, ytop + bt - (mt * 0.6 + bt) / 2, Lb / 2 - bl / 2 + 0.01)),
                  blanket)
        return ytop

    if kind == "bunk":
        post = max(0.06, t)
        fh = max(0.1, t)
        ys = [u(0.15, 0.3), 0.0]
        ys[1] = ys[0] + u(0.9, 1.1)
        for y in ys:
            P.add(_box((W, fh, Lb), (0, y - fh / 2, 0)), wood)
            level(y, W)
        for sx in (-1, 1):
            for sz in (-1, 1):
                P.add(_box((post, post_h, post), (sx * (W / 2 + post / 2), post_h / 2, sz * (Lb / 2 + post / 2))), wood)
        for sz in (-1, 1):
            for y in (ys[0] + 0.3, post_h - 0.1):
                P.add(_box((W, max(0.1, t), post), (0, y, sz * (Lb / 2 + post / 2))), wood)
        rail_y = ys[1] + mt + 0.12
        P.add(_box((max(post * 0.8, t), max(0.08, t), Lb * 0.65), (-(W / 2 + post / 2), rail_y, -Lb * 0.15)), wood)
        lx = W / 2 + post
        rz = (Lb / 2 - 0.1, Lb / 2 - 0.5)
        for z in rz:
            P.add(_box((max(post * 0.8, t), ys[1] + 0.1, max(post * 0.8, t)), (lx, (ys[1] + 0.1) / 2, z)), wood)
        for i in range(4):
            y = 0.25 + (ys[1] - 0.25) * i / 3.5
            P.add(_box((max(post * 0.7, t), max(post * 0.7, t), 0.4), (lx, y, (rz[0] + rz[1]) / 2)), wood)
        return P

    if kind == "platform":
        bh = u(0.2, 0.35)
        P.add(_box((W + 0.04, bh, Lb + 0.02), (0, bh / 2, 0)), wood)
        ytop = level(bh, W)
    else:
        leg_h = u(0.08, 0.25)
        fh = u(0.12, 0.25)
        leg = max(u(0.05, 0.08), t)
        P.add(_box((W + 0.04, fh, Lb + 0.02), (0, leg_h + fh / 2, 0)), wood)
        if kind == "legs":
            for sx in (-1, 1):
                for sz in (-1, 1):
                    P.add(_box((leg, leg_h + 0.01, leg), (sx * (W / 2 - leg / 2), (leg_h + 0.01) / 2,
                                                          sz * (Lb / 2 - leg / 2))), wood)
        ytop = level(leg_h + fh, W)
    head_h = max(head_h, ytop + 0.3)
    P.add(_box((W + 0.06, head_h, hb_t), (0, head_h / 2, -Lb / 2 - hb_t / 2 + 0.01)), head_c)
    if kind == "fourposter":
        post = max(0.07, t)
        for sx in (-1, 1):
            for sz in (-1, 1):
                P.add(_box((post, post_h, post), (sx * (W / 2 + post / 2), post_h / 2, sz * (Lb / 2 + post / 2))), wood)
        r = max(0.06, t)
        for sx in (-1, 1):
            P.add(_box((r, r, Lb + 2 * post), (sx * (W / 2 + post / 2), post_h - r / 2, 0)), wood)
        for sz in (-1, 1):
            P.add(_box((W + 2 * post, r, r), (0, post_h - r / 2, sz * (Lb / 2 + post / 2))), wood)
    if kind == "fourposter" or rng.random() < 0.35:
        fh2 = u(0.4, 0.65)
        P.add(_box((W + 0.06, fh2, hb_t), (0, fh2 / 2, Lb / 2 + hb_t / 2 - 0.01)), wood)
    return P


def _make_stool(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    bar = rng.random() < 0.5
    H = u(0.62, 0.8) if bar else u(0.4, 0.5)
    kind = _pick(rng, ("legs", "pedestal"), (0.7, 0.3))
    round_seat = rng.random() < 0.65
    sr = u(0.15, 0.22)
    t = _MIN_THICK * max(H, 2 * sr + 0.1)
    seat_t = max(u(0.03, 0.06), t)
    wood = _color(rng, _WOOD + _METAL + _PLASTIC[:3])
    frame = wood if rng.random() < 0.5 else _color(rng, _METAL + _DARK)
    ys = H - seat_t
    if round_seat:
        P.add(_cyl((0, ys, 0), (0, H, 0), sr, sections=24), wood)
    else:
        P.add(_box((sr * 1.8, seat_t, sr * 1.8), (0, H - seat_t / 2, 0)), wood)
    if rng.random() < 0.35:
        cush = _color(rng, _FABRIC + _LEATHER)
        ct = max(u(0.03, 0.06), t)
        if round_seat:
            P.add(_cyl((0, H - 0.005, 0), (0, H + ct, 0), sr * 0.95, sections=24), cush)
        else:
            P.add(_box((sr * 1.7, ct, sr * 1.7), (0, H + ct / 2 - 0.005, 0)), cush)
    if kind == "legs":
        n = int(_pick(rng, (3, 4, 4)))
        lr = max(u(0.012, 0.025), t * 0.55)
        rt = sr * 0.7
        rb = rt + u(0.02, 0.1) * (H / 0.6)
        off = np.pi / 4 if n == 4 else np.pi / 2
        tops, bots = [], []
        for k in range(n):
            a = off + 2 * np.pi * k / n
            tops.append(np.array([rt * np.cos(a), ys + 0.005, rt * np.sin(a)]))
            bots.append(np.array([rb * np.cos(a), 0.0, rb * np.sin(a)]))
            P.add(_cyl(bots[-1], tops[-1], lr), frame)
        yr = H * u(0.25, 0.38)
        f = yr / (ys + 0.005)
        rr = rb + (rt - rb) * f
        if bar and rng.random() < 0.6:
            P.add(_torus(rr, max(0.01, t * 0.55), (0, yr, 0), rx=np.pi / 2), frame)
        elif rng.random() < 0.6:
            s = max(0.02, t)
            for k in range(n):
                p0 = bots[k] + (tops[k] - bots[k]) * f
                p1 = bots[(k + 1) % n] + (tops[(k + 1) % n] - bots[(k + 1) % n]) * f
                P.add(_beam(p0, p1, s, s), frame)
    else:
        cr = max(u(0.02, 0.035), t * 0.55)
        P.add(_cyl((0, 0.01, 0), (0, ys + 0.005, 0), cr), frame)
        br = u(0.17, 0.25)
        bt = max(0.025, t)
        if rng.random() < 0.5:
            P.add(_cyl((0, 0, 0), (0, bt, 0), br, sections=24), frame)
        else:
            P.add(_lathe([(br, 0.0), (br, bt * 0.5), (cr * 1.5, bt * 2.5)], sections=24), frame)
        if bar:
            yr = H * u(0.3, 0.4)
            rr = u(0.14, 0.2)
            P.add(_torus(rr, max(0.01, t * 0.55), (0, yr, 0), rx=np.pi / 2), frame)
            for k in range(3):
                a = 2 * np.pi * k / 3
                P.add(_cyl((0, yr, 0), (rr * np.cos(a), yr, rr * np.sin(a)), max(0.008, t * 0.55), sections=10), frame)
    return P


def _make_bookshelf(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    W, H, D = u(0.6, 1.8), u(0.8, 2.2), u(0.25, 0.4)
    kind = _pick(rng, ("standard", "cube", "frame", "lower_doors"), (0.4, 0.2, 0.2, 0.2))
    L = max(W, H)
    t = _MIN_THICK * L
    pt = max(u(0.015, 0.035), t)
    wood = _color(rng, _WOOD + _FURN_PAINT)
    metal = _color(rng, _METAL + _DARK)
    plinth = u(0.04, 0.1) if (kind != "frame" and rng.random() < 0.5) else 0.0
    spacing = u(0.28, 0.4)
    ns = max(2, int(round((H - plinth) / spacing)))
    shelf_y = [plinth + pt / 2 + (H - plinth - pt) * i / ns for i in range(ns + 1)]
    if kind == "frame":
        post = max(0.03, t)
        for sx in (-1, 1):
            for sz in (-1, 1):
                P.add(_box((post, H, post), (sx * (W / 2 - post / 2), H / 2, sz * (D / 2 - post / 2))), metal)
        for y in shelf_y[:]:
            y = max(y, 0.1) if y == shelf_y[0] else y
            P.add(_box((W, pt, D), (0, min(y, H - pt / 2), 0)), wood)
        if rng.random() < 0.5:
            b = max(0.012, t * 0.55)
            P.add(_cyl((-W / 2 + post / 2, H * 0.2, -D / 2 + post / 2), (W / 2 - post / 2, H * 0.8, -D / 2 + post / 2),
                       b, sections=8), metal)
        x_in = [(-W / 2 + post, W / 2 - post)]
        back = False
    else:
        for sx in (-1, 1):
            P.add(_box((pt, H, D), (sx * (W / 2 - pt / 2), H / 2, 0)), wood)
        for y in shelf_y:
            P.add(_box((W - 2 * pt + 0.004, pt, D - 0.01), (0, y, 0.005)), wood)
        if plinth > 0:
            P.add(_box((W - 2 * pt, plinth, pt), (0, plinth / 2, D / 2 - pt / 2 - 0.01)), wood)
        back = rng.random() < 0.7 or kind == "cube"
        if back:
            P.add(_box((W, H - plinth, pt), (0, plinth + (H - plinth) / 2, -D / 2 + pt / 2)), _shade(wood, 0.85))
        x_in = [(-W / 2 + pt, W / 2 - pt)]
        if kind == "cube":
            nc = max(2, int(round(W / ((H - plinth) / ns))))
            cw = (W - 2 * pt) / nc
            for i in range(1, nc):
                x = -W / 2 + pt + cw * i
                P.add(_box((pt, H - plinth - pt, D - 0.01), (x, plinth + (H - plinth) / 2, 0.005)), wood)
            x_in = [(-W / 2 + pt + cw * i + pt / 2, -W / 2 + pt + cw * (i + 1) - pt / 2) for i in range(nc)]
    door_rows = 0
    if kind == "lower_doors":
        door_rows = 1 if ns < 5 else 2
        y0, y1 = shelf_y[0] + pt / 2, shelf_y[door_rows] - pt / 2
        handle = _color(rng, _METAL)
        ft = max(0.02, t)
        for sx in (-1, 1):
            P.add(_front_box(W / 2 - pt - 0.006, y1 - y0, sx * W / 4 - sx * pt / 2 + sx * 0.0, (y0 + y1) / 2,
                             D / 2, 0.012, ft), wood)
            P.add(_box((ft, max(0.1, ft), ft), (sx * 0.06, (y0 + y1) / 2, D / 2 + 0.012 + ft / 2 - 0.002)), handle)
    if rng.random() < 0.65:
        nbooks = 0
        bd_max = D - (pt if back else 0.0) - 0.02
        for row in range(door_rows, ns):
            yb = shelf_y[row] + pt / 2
            hmax = shelf_y[row + 1] - shelf_y[row] - pt
            if kind == "frame" and row == 0:
                yb = max(shelf_y[0], 0.1) + pt / 2
            for xa, xb in x_in:
                if rng.random() < 0.25:
                    continue
                x = xa + 0.005
                fill = xa + (xb - xa) * u(0.4, 1.0)
                while x < fill - 0.03 and nbooks < 140:
                    bw = max(u(0.025, 0.06), t)
                    if x + bw > xb:
                        break
                    bh = hmax * u(0.6, 0.92)
                    bd = bd_max * u(0.7, 0.95)
                    P.add(_box((bw, bh, bd), (x + bw / 2, yb + bh / 2, D / 2 - 0.01 - bd / 2)), _color(rng, _BOOK, 10))
                    x += bw + (0.002 if rng.random() < 0.8 else u(0.01, 0.05))
                    nbooks += 1
    return P


# ==========================================================================
# electronics / misc
# ==========================================================================
def _make_loudspeaker(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("tower", "bookshelf", "sub", "center", "pa"), (0.3, 0.3, 0.15, 0.1, 0.15))
    if kind == "tower":
        W, H, D = u(0.18, 0.3), u(0.8, 1.1), u(0.25, 0.35)
    elif kind == "bookshelf":
        W, H, D = u(0.15, 0.25), u(0.25, 0.4), u(0.2, 0.3)
    elif kind == "sub":
        W = u(0.3, 0.45)
        H, D = W * u(0.95, 1.1), W * u(0.9, 1.1)
    elif kind == "center":
        W, H, D = u(0.45, 0.6), u(0.15, 0.22), u(0.2, 0.3)
    else:
        W, H, D = u(0.35, 0.5), u(0.55, 0.75), u(0.3, 0.4)
    stand = kind == "bookshelf" and rng.random() < 0.3
    stand_h = u(0.5, 0.7) if stand else 0.0
    feet = "none" if stand else _pick(rng, ("spikes", "pads", "none", "plinth"))
    foot_h = {"spikes": u(0.03, 0.05), "pads": u(0.01, 0.02), "none": 0.0, "plinth": u(0.02, 0.04)}[feet]
    L = max(W, H + stand_h + foot_h, D)
    t = _MIN_THICK * L
    if feet == "pads":
        foot_h = max(foot_h, t)
    cab = _color(rng, _WOOD + _DARK + ((235, 235, 235),))
    ring = _color(rng, _DARK)
    cone = _color(rng, ((60, 60, 65), (150, 150, 155), (20, 20, 22), (200, 180, 120)))
    y0 = stand_h + foot_h
    yc = y0 + H / 2
    if kind == "pa":
        pts = [(sx * W / 2, yc + sy * H / 2, D / 2) for sx in (-1, 1) for sy in (-1, 1)]
        pts += [(sx * W * 0.32, yc + sy * H / 2, -D / 2) for sx in (-1, 1) for sy in (-1, 1)]
        P.add(_hull(pts), cab)
    else:
        P.add(_box((W, H, D), (0, yc, 0)), cab)
    zf = D / 2
    if rng.random() < 0.25:
        P.add(_front_box(W * 0.96, H * 0.96, 0, yc, zf, 0.01, max(t, 0.02)), _color(rng, _DARK + _FABRIC[:3]))
    else:
        drivers = []  # (x, y, r)
        if kind == "tower":
            rt = W * u(0.1, 0.14)
            drivers.append((0.0, y0 + H - W * 0.3, rt))
            nw = int(rng.integers(1, 4))
            rw = W * u(0.32, 0.4)
            for i in range(nw):
                drivers.append((0.0, y0 + H - W * 0.3 - rt - rw - 0.02 - i * (2 * rw + 0.02), rw))
        elif kind == "bookshelf":
            rt = W * u(0.1, 0.15)
            rw = min(W * u(0.33, 0.4), (H - 4 * rt) / 2 * 0.9)
            drivers.append((0.0, y0 + H * 0.82, rt))
            drivers.append((0.0, y0 + H * 0.82 - rt - rw - 0.015, rw))
        elif kind == "sub":
            drivers.append((0.0, yc, W * u(0.36, 0.42)))
        elif kind == "center":
            rw = H * u(0.3, 0.38)
            drivers += [(-W * 0.3, yc, rw), (W * 0.3, yc, rw), (0.0, yc, H * 0.15)]
        else:
            rw = W * u(0.38, 0.44)
            drivers.append((0.0, y0 + rw + W * 0.08, rw))
            hw, hh = W * 0.6, H * 0.2
            P.add(_front_box(hw, hh, 0, y0 + H - hh / 2 - W * 0.08, zf, 0.01, max(t, 0.03)), ring)
        for x, y, r in drivers:
            r = max(r, t)
            P.add(_cyl((x, y, zf - max(t, 0.01)), (x, y, zf + 0.006), r, sections=20), ring)
            cr = max(r * 0.55, t * 0.55)
            P.add(_cyl((x, y, zf - max(t, 0.01)), (x, y, zf + 0.01), cr, sections=20), cone)
        if kind in ("tower", "bookshelf", "sub") and rng.random() < 0.5:
            pr = max(W * 0.06, t * 0.55)
            P.add(_cyl((W * 0.2, y0 + pr * 2.5, zf - max(t, 0.01)), (W * 0.2, y0 + pr * 2.5, zf + 0.004), pr), ring)
    if feet in ("spikes", "pads"):
        fr = max(0.015, t * 0.55)
        for sx in (-1, 1):
            for sz in (-1, 1):
                # the PA cabinet is trapezoidal: its back is narrower
                x = sx * (W * (0.32 if (kind == "pa" and sz < 0) else 0.5) - fr * 1.5)
                z = sz * (D / 2 - fr * 1.5)
                if feet == "spikes":
                    P.add(_lathe([(fr * 0.2, 0.0), (fr, foot_h + 0.005)], sections=12,
                                 transform=_xf((x, stand_h, z))), ring)
                else:
                    P.add(_cyl((x, stand_h, z), (x, stand_h + foot_h + 0.005, z), fr, sections=12), ring)
    elif feet == "plinth":
        pt = max(foot_h, t)
        pw = W * (0.8 if kind == "pa" else 1.1)
        P.add(_box((pw, pt, D * 1.1), (0, stand_h + foot_h - pt / 2 + 0.003, 0)), ring)
    if stand:
        metal = _color(rng, _DARK + _METAL)
        pt = max(0.02, t)
        P.add(_box((W * 1.1, pt, D * 1.05), (0, stand_h - pt / 2, 0)), metal)
        P.add(_box((W * 1.6, pt, D * 1.5), (0, pt / 2, 0)), metal)
        pr = max(0.025, t / 2)
        P.add(_box((pr * 2, stand_h, pr * 2), (0, stand_h / 2, 0)), metal)
    return P


def _make_telephone(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("smartphone", "candybar", "flip", "desk"), (0.45, 0.2, 0.15, 0.2))
    body = _color(rng, _DARK + _PLASTIC + _METAL)
    screen = _color(rng, _SCREEN, 6)
    keys = _color(rng, _DARK + ((200, 200, 205),))

    def keypad(x0, x1, y0, y1, z_face, t, rows=4, cols=3):
        kw = max((x1 - x0) / cols * 0.72, t)
        kh = max((y1 - y0) / rows * 0.6, t)
        for r in range(rows):
            for c in range(cols):
                P.add(_front_box(kw, kh, x0 + (x1 - x0) * (c + 0.5) / cols, y1 - (y1 - y0) * (r + 0.5) / rows,
                                 z_face, 0.0012, t), keys)

    if kind == "smartphone":
        H = u(0.13, 0.17)
        W = H * u(0.45, 0.52)
        t = _MIN_THICK * H
        T = max(u(0.007, 0.011), t * 1.6)
        P.add(_rounded_slab(W, H, T, W * u(0.05, 0.15), (0, H / 2, 0)), body)
        bz = W * u(0.02, 0.07)
        P.add(_front_box(W - 2 * bz, H - 2 * bz - H * u(0.0, 0.06), 0, H / 2, T / 2, 0.0005, t), screen)
        cw = max(W * u(0.15, 0.4), t)
        P.add(_box((cw, cw * u(0.6, 1.0) if cw * 0.6 > t else t, t), (-W / 2 + cw / 2 + W * 0.08, H - cw / 2 - W * 0.08,
                                                                      -T / 2 - t / 2 + 0.0012)), _shade(body, 0.8))
        P.add(_box((t, H * 0.12, t), (W / 2 + t / 2 - 0.0012, H * 0.68, 0)), _shade(body, 0.85))
    elif kind == "candybar":
        H = u(0.1, 0.13)
        W = H * u(0.4, 0.48)
        t = _MIN_THICK * H
        T = max(u(0.013, 0.02), t)
        P.add(_rounded_slab(W, H, T, W * u(0.1, 0.25), (0, H / 2, 0)), body)
        P.add(_front_box(W * 0.78, H * 0.32, 0, H * 0.75, T / 2, 0.0008, t), screen)
        P.add(_cyl((0, H * 0.5, T / 2 - t), (0, H * 0.5, T / 2 + 0.0015), max(W * 0.12, t), sections=16), keys)
        keypad(-W * 0.38, W * 0.38, H * 0.06, H * 0.42, T / 2, t)
    elif kind == "flip":
        Hl = u(0.085, 0.1)
        W = u(0.045, 0.052)
        Tl = u(0.01, 0.014)
        Hu = Hl * u(0.9, 1.0)
        t = _MIN_THICK * (Hl + Hu)
        Tl = max(Tl, t)
        P.add(_rounded_slab(W, Hl, Tl, W * 0.15, (0, Hl / 2, 0)), body)
        keypad(-W * 0.36, W * 0.36, Hl * 0.08, Hl * 0.7, Tl / 2, t)
        hr = Tl / 2 * 1.1
        P.add(_cyl((-W / 2, Hl, 0), (W / 2, Hl, 0), hr, sections=12), _shade(body, 0.8))
        up = [_rounded_slab(W, Hu, Tl * 0.9, W * 0.15, (0, Hl + Hu / 2 + 0.002, 0)),
              _front_box(W * 0.8, Hu * 0.6, 0, Hl + Hu * 0.55, Tl * 0.45, 0.0008, t)]
        _rotate_parts(up, -np.radians(u(10.0, 30.0)), [1, 0, 0], (0, Hl, 0))
        P.add(up[0], body)
        P.add(up[1], screen)
    else:  # desk phone
        W, Dd = u(0.18, 0.24), u(0.18, 0.24)
        hf, hb = u(0.03, 0.05), u(0.07, 0.1)
        t = _MIN_THICK * max(W, Dd)
        pts = [(sx * W / 2, 0.0, sz * Dd / 2) for sx in (-1, 1) for sz in (-1, 1)]
        pts += [(sx * W / 2, hf, Dd / 2) for sx in (-1, 1)] + [(sx * W / 2, hb, -Dd / 2) for sx in (-1, 1)]
        P.add(_hull(pts), body)
        alpha = np.arctan2(hb - hf, Dd)
        hl = W * u(0.85, 1.0)
        zh = -Dd * u(0.15, 0.3)
        yh = hf + (Dd / 2 - zh) * np.tan(alpha) + 0.02
        hc = _shade(body, 1.1)
        P.add(_beam((-hl / 2 + 0.03, yh + 0.01, zh), (hl / 2 - 0.03, yh + 0.01, zh), max(0.03, t), max(0.025, t)), hc)
        for sx in (-1, 1):
            P.add(_box((0.05, max(0.035, t), 0.055), (sx * (hl / 2 - 0.025), yh, zh)), hc)
        kp = []
        kw = max(0.018, t)
        for r in range(4):
            for c in range(3):
                z = Dd / 2 - 0.02 - 0.022 * (r + 0.5) - 0.01
                x = -W * 0.15 + 0.026 * (c - 1) + W * 0.12
                y = hf + (Dd / 2 - z) * np.tan(alpha)
                kp.append(_box((kw, max(0.01, t), kw), (x, y, z), rx=alpha))
        for m in kp:
            P.add(m, keys)
        zs = Dd / 2 - 0.05
        P.add(_box((W * 0.25, max(0.01, t), 0.04), (-W * 0.3, hf + (Dd / 2 - zs) * np.tan(alpha), zs), rx=alpha), screen)
    return P


def _make_rifle(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("hunting", "assault", "sniper", "shotgun"))
    L = u(1.1, 1.35) if kind == "sniper" else u(0.9, 1.2)
    t = _MIN_THICK * L
    wood = _color(rng, _WOOD)
    polymer = _color(rng, _DARK + ((90, 85, 60), (70, 75, 60)))
    metal = _color(rng, _DARK + _METAL[2:])
    stock_c = wood if kind in ("hunting", "shotgun") or rng.random() < 0.2 else polymer
    z_butt = -L / 2
    stock_len = u(0.28, 0.36) * L
    rl = u(0.16, 0.24) * L
    z0 = z_butt + stock_len
    z1 = z0 + rl
    zm = L / 2
    rw = max(u(0.035, 0.05), t)
    rh = u(0.06, 0.1)
    P.add(_box((rw, rh, rl), (0, -rh * 0.25, (z0 + z1) / 2)), metal)
    br = max(u(0.009, 0.014), t * 0.55)
    if kind == "shotgun":
        if rng.random() < 0.5:
            for sx in (-1, 1):
                P.add(_cyl((sx * br, 0, z1 - 0.01), (sx * br, 0, zm), br), metal)
        else:
            for y in (0.0, -2 * br):
                P.add(_cyl((0, y, z1 - 0.01), (0, y, zm), br), metal)
    else:
        P.add(_cyl((0, 0, z1 - 0.01), (0, 0, zm), br), metal)
    # stock
    sw = max(u(0.035, 0.045), t)
    drop = u(0.02, 0.07) if kind in ("hunting", "shotgun") else u(-0.01, 0.02)
    butt_h = u(0.12, 0.16)
    ytop0 = rh * 0.2
    ybot0 = -rh * 0.75
    if kind in ("hunting", "shotgun"):
        ybot0 = -rh * 0.75 - u(0.03, 0.06)
    pts = []
    for z, yt, yb in ((z0 + 0.01, ytop0, ybot0), (z_butt, ytop0 - drop, ytop0 - drop - butt_h)):
        for y in (yt, yb):
            for sx in (-1, 1):
                pts.append((sx * sw / 2, y, z))
    if kind == "assault" and rng.random() < 0.5:
        # skeleton stock: upper bar + butt plate
        P.add(_beam((0, ytop0 - 0.01, z0 + 0.01), (0, ytop0 - 0.01 - drop, z_butt + 0.02), sw * 0.8, max(0.03, t)),
              stock_c)
        P.add(_box((sw, butt_h, max(0.03, t)), (0, ytop0 - drop - butt_h / 2, z_butt + max(0.03, t) / 2)), stock_c)
        P.add(_beam((0, ybot0 + 0.01, z0 - 0.01), (0, ytop0 - drop - butt_h + 0.02, z_butt + 0.02), sw * 0.8,
                    max(0.025, t)), stock_c)
    else:
        P.add(_hull(pts), stock_c)
    if kind in ("assault", "sniper"):
        gz = z0 + u(0.03, 0.06)
        gl = u(0.09, 0.12)
        P.add(_beam((0, -rh * 0.5, gz), (0, -rh * 0.5 - gl, gz - gl * 0.4), max(0.03, t), max(0.04, t)), polymer)
    # trigger guard
    P.add(_box((max(0.012, t), max(0.012, t), 0.06), (0, -rh * 0.75 - 0.03, z0 + rl * 0.15)), metal)
    if kind == "assault":
        mz = z0 + rl * 0.65
        ml = u(0.12, 0.2)
        P.add(_beam((0, -rh * 0.5, mz), (0, -rh * 0.5 - ml, mz + ml * u(0.1, 0.4)), max(0.025, t), max(0.05, t)),
              polymer if rng.random() < 0.6 else metal)
    elif kind in ("sniper", "hunting") and rng.random() < 0.5:
        P.add(_box((max(0.025, t), 0.05, 0.07), (0, -rh * 0.75 - 0.02, z0 + rl * 0.6)), metal)
    # fore-end / handguard
    fl = u(0.22, 0.35) * L
    if kind in ("hunting", "shotgun", "sniper"):
        fh = u(0.035, 0.05)
        P.add(_box((sw * 0.9, fh, fl), (0, -br - fh / 2 + 0.012, z1 + fl / 2 - 0.01)), stock_c)
    else:
        hr = max(u(0.02, 0.028), br * 1.5)
        P.add(_cyl((0, 0, z1 - 0.01), (0, 0, z1 + fl), hr, sections=12), polymer)
    has_scope = rng.random() < (0.8 if kind in ("hunting", "sniper") else 0.25 if kind == "assault" else 0.0)
    if has_scope:
        sr = max(u(0.012, 0.018), t * 0.55)
        sy = rh * 0.25 + u(0.035, 0.055)
        s0, s1 = z0 - u(0.0, 0.05), z1 + u(0.04, 0.1)
        P.add(_cyl((0, sy, s0), (0, sy, s1), sr), metal)
        bell = max(sr * u(1.4, 1.8), t)
        P.add(_lathe([(sr, 0.0), (bell, 0.06), (bell, 0.08)], axis="z", transform=_xf((0, sy, s1 - 0.01))), metal)
        P.add(_lathe([(bell * 0.85, 0.0), (bell * 0.85, 0.04), (sr, 0.06)], axis="z",
                     transform=_xf((0, sy, s0 - 0.04))), metal)
        for z in (z0 + rl * 0.2, z0 + rl * 0.8):
            P.add(_box((max(0.015, t), sy - rh * 0.2, max(0.015, t)), (0, (sy + rh * 0.2) / 2, z)), metal)
    elif kind == "assault":
        P.add(_box((max(rw * 0.5, t), max(0.035, t), rl * 0.6), (0, rh * 0.25 + 0.015, (z0 + z1) / 2)), metal)
        P.add(_box((t, max(0.04, t), t), (0, 0.03, z1 + fl + 0.02)), metal)
    if kind == "sniper" and rng.random() < 0.7:
        bz = z1 + fl * 0.8
        for sx in (-1, 1):
            P.add(_beam((0, -0.03, bz), (sx * 0.06, -0.22, bz + 0.08), max(0.015, t), max(0.015, t)), metal)
    if kind != "shotgun" and rng.random() < 0.5:
        P.add(_cyl((0, 0, zm - 0.05), (0, 0, zm + 0.01), max(br * 1.5, t), sections=12), metal)
    return P


# ==========================================================================
# vehicles
# ==========================================================================
def _make_car(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("sedan", "hatchback", "suv", "pickup", "sports"), (0.3, 0.2, 0.2, 0.15, 0.15))
    spec = {  # L, W, H, clearance, belt, cabin base (z0,z1)/L, roof (z0,z1)/L, wheel radius
        "sedan": ((4.3, 5.1), (1.75, 1.9), (1.38, 1.5), (0.13, 0.17), (0.78, 0.88), (-0.30, 0.20), (-0.17, 0.0),
                  (0.3, 0.35)),
        "hatchback": ((3.7, 4.3), (1.68, 1.8), (1.42, 1.55), (0.13, 0.16), (0.8, 0.9), (-0.47, 0.17),
                      (-0.42, -0.02), (0.29, 0.33)),
        "suv": ((4.3, 5.0), (1.85, 2.0), (1.65, 1.9), (0.19, 0.25), (0.95, 1.1), (-0.47, 0.15), (-0.45, 0.0),
                (0.36, 0.42)),
        "pickup": ((5.0, 5.6), (1.85, 2.0), (1.75, 1.9), (0.2, 0.26), (1.0, 1.1), (-0.08, 0.17), (-0.07, 0.05),
                   (0.37, 0.42)),
        "sports": ((4.2, 4.6), (1.85, 1.95), (1.12, 1.25), (0.1, 0.12), (0.65, 0.72), (-0.22, 0.12),
                   (-0.12, -0.03), (0.32, 0.35)),
    }[kind]
    L, W, H, clr, belt = (u(*spec[i]) for i in range(5))
    j = lambda: u(-0.02, 0.02) * L  # noqa: E731
    cz0, cz1 = spec[5][0] * L + j(), spec[5][1] * L + j()
    rz0, rz1 = spec[6][0] * L + j(), spec[6][1] * L + j()
    rz0, rz1 = max(rz0, cz0 + 0.02), min(rz1, cz1 - 0.3)
    R = u(*spec[7])
    t = _MIN_THICK * L
    w = W / 2
    paint = _color(rng, _PAINT)
    glass = _color(rng, _GLASS)
    tyre = _color(rng, _TYRE, 4)
    hub = _color(rng, _METAL)
    hood_drop = u(0.06, 0.18)
    ym = clr + 0.45 * (belt - clr)
    body = []
    for sx in (-1, 1):
        body += [(sx * (w - 0.06), clr, -L / 2 + 0.2), (sx * (w - 0.06), clr, L / 2 - 0.25),
                 (sx * w, ym, -L / 2), (sx * w, ym, L / 2),
                 (sx * (w - 0.03), belt, -L / 2 + 0.08), (sx * (w - 0.03), belt, L / 2 - u(0.3, 0.5)),
                 (sx * (w - 0.08), belt - hood_drop, L / 2 - 0.05)]
    P.add(_hull(body), paint)
    tumble = u(0.12, 0.22)

    def cabin_pts(f: float, grow: float = 0.0):
        y = belt - 0.01 + f * (H - belt + 0.01)
        za = cz0 + f * (rz0 - cz0) - grow
        zb = cz1 + f * (rz1 - cz1) + grow
        xw = (w - 0.06) + f * (tumble - 0.06) * -1 + grow
        return [(sx * xw, y, z) for sx in (-1, 1) for z in (za, zb)]

    P.add(_hull(cabin_pts(0.0) + cabin_pts(1.0)), paint)
    P.add(_hull(cabin_pts(0.08, 0.012) + cabin_pts(0.82, 0.012)), glass)
    # wheels
    ww = u(0.2, 0.28)
    wb = L * u(0.56, 0.62)
    shift = L * u(-0.02, 0.03)
    if kind == "pickup":
        shift -= L * 0.04
    xw = w - ww / 2 + 0.02
    for zc in (shift + wb / 2, shift - wb / 2):
        for sx in (-1, 1):
            x = sx * xw
            P.add(_cyl((x - ww / 2, R, zc), (x + ww / 2, R, zc), R, sections=20), tyre)
            P.add(_cyl((x - ww / 2 - 0.012, R, zc), (x + ww / 2 + 0.012, R, zc), R * u(0.5, 0.65), sections=16), hub)
    # lights
    lw, lh, ld = u(0.25, 0.35), max(u(0.08, 0.12), t), max(0.12, t)
    ly = (ym + belt - hood_drop) / 2
    head = _color(rng, _LIGHT, 4)
    tail = _color(rng, _RED_LIGHT, 4)
    for sx in (-1, 1):
        P.add(_box((lw, lh, ld), (sx * (w - lw / 2 - 0.08), ly, L / 2 - ld / 2 + 0.01)), head)
        P.add(_box((lw, lh, ld), (sx * (w - lw / 2 - 0.06), (ym + belt) / 2, -L / 2 + ld / 2 + 0.02)), tail)
    if kind == "pickup":
        bt = max(0.06, t)
        bh = u(0.2, 0.3)
        zb0, zb1 = -L / 2 + 0.05, cz0 + 0.02
        for sx in (-1, 1):
            P.add(_box((bt, bh, zb1 - zb0), (sx * (w - 0.03 - bt / 2), belt - 0.02 + bh / 2, (zb0 + zb1) / 2)), paint)
        P.add(_box((W - 0.06, bh, bt), (0, belt - 0.02 + bh / 2, zb0 + bt / 2)), paint)
    if kind == "suv" and rng.random() < 0.3:
        sy = clr + (belt - clr) * 0.6
        P.add(_cyl((0, sy, -L / 2 + 0.02), (0, sy, -L / 2 - ww + 0.02), R * 0.9, sections=20), tyre)
    if kind in ("suv", "hatchback") and rng.random() < 0.3:
        rr = max(0.04, t)
        for sx in (-1, 1):
            P.add(_box((rr, rr, rz1 - rz0), (sx * (w - tumble - 0.05), H + rr / 2 - 0.01, (rz0 + rz1) / 2)), hub)
    if kind == "sports" and rng.random() < 0.5:
        st = max(0.04, t)
        P.add(_box((W * 0.8, st, 0.25), (0, belt + 0.15, -L / 2 + 0.2)), paint)
        for sx in (-1, 1):
            P.add(_box((st, 0.16, max(0.08, t)), (sx * W * 0.3, belt + 0.07, -L / 2 + 0.22)), paint)
    return P


def _wing_half(side: int, root_le: float, cr: float, ct: float, half_span: float, sweep: float,
               y_root: float, rise: float, thick: float, x_root: float = 0.0) -> trimesh.Trimesh:
    """One wing half as a convex slab (root at x=x_root, tip at x=side*half_span)."""
    pts = []
    for x, zle, c, y in ((side * x_root, root_le, cr, y_root),
                         (side * half_span, root_le - sweep, ct, y_root + rise)):
        for z in (zle, zle - c):
            for dy in (-thick / 2, thick / 2):
                pts.append((x, y + dy, z))
        # rounded leading edge / thicker mid chord
        pts.append((x, y + thick * 0.6, zle - c * 0.3))
        pts.append((x, y - thick * 0.6, zle - c * 0.3))
    return _hull(pts)


def _fin(z_root: float, cr: float, ct: float, height: float, sweep: float, y0: float, thick: float,
         x: float = 0.0, cant: float = 0.0) -> trimesh.Trimesh:
    """Vertical tail fin (leading edge at larger z)."""
    corners = [(0.0, y0, z_root), (0.0, y0, z_root - cr), (0.0, y0 + height, z_root - sweep - ct),
               (0.0, y0 + height, z_root - sweep)]
    m = _slab(corners, thick, (1, 0, 0))
    if cant:
        m.apply_transform(_tf.rotation_matrix(cant, [0, 0, 1], (0, y0, 0)))
    m.apply_translation((x, 0, 0))
    return m


def _make_airplane(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("airliner", "fighter", "prop", "bizjet"), (0.35, 0.25, 0.25, 0.15))
    body = _color(rng, _MILITARY if kind == "fighter" else _AIRCRAFT)
    wing_c = body if rng.random() < 0.6 else _shade(body, 0.9)
    accent = _color(rng, _ACCENT) if (kind != "fighter" and rng.random() < 0.5) else body
    eng = _color(rng, _METAL)
    glass = _color(rng, _GLASS)
    rot_z = _tf.rotation_matrix(np.pi / 2, [1, 0, 0])  # lathe Y axis -> +Z (nose)

    if kind == "airliner":
        R, S = u(0.04, 0.06), u(0.85, 1.1)
        t = _MIN_THICK * max(1.0, S)
        prof = [(0.0, -0.5), (R * 0.3, -0.49), (R * 0.65, -0.42), (R, -0.28), (R, 0.36), (R * 0.85, 0.43),
                (R * 0.55, 0.475), (R * 0.2, 0.497), (0.0, 0.5)]
        P.add(_lathe(prof, sections=16, transform=rot_z), body)
        cr, ct = u(0.17, 0.23), 0.0
        ct = cr * u(0.25, 0.4)
        sweep = np.tan(np.radians(u(20.0, 35.0))) * S / 2
        root_le = u(0.05, 0.12)
        yw = -R * 0.5
        rise = np.tan(np.radians(u(3.0, 7.0))) * S / 2
        th = max(u(0.02, 0.03), t)
        for sx in (-1, 1):
            P.add(_wing_half(sx, root_le, cr, ct, S / 2, sweep, yw, rise, th), wing_c)
        n_eng = 4 if rng.random() < 0.25 else 2
        er = max(u(0.022, 0.032), t * 0.55)
        el = u(0.1, 0.15)
        fx = [0.32] if n_eng == 2 else [0.26, 0.55]
        for f in fx:
            for sx in (-1, 1):
                x = sx * f * S / 2
                zle = root_le - sweep * f
                yw_x = yw + rise * f
                ye = yw_x - th / 2 - er * 1.2
                ze0 = zle - el * 0.5
                P.add(_lathe([(er * 0.85, 0.0), (er, el * 0.2), (er, el * 0.7), (er * 0.6, el)], sections=16,
                             transform=_xf((x, ye, ze0 + el)) @ _tf.rotation_matrix(-np.pi / 2, [1, 0, 0])), eng)
                P.add(_box((max(0.01, t), er * 1.4, el * 0.6), (x, (ye + yw_x) / 2, ze0 + el * 0.3 + 0.01)), wing_c)
        fh, fcr = u(0.13, 0.18), u(0.12, 0.17)
        t_tail = rng.random() < 0.2
        P.add(_fin(-0.5 + fcr + 0.03, fcr, fcr * 0.5, fh, fcr * 0.7, R * 0.5, max(0.015, t)), accent)
        hs = S * u(0.3, 0.38)
        hy = R * 0.5 + fh - 0.01 if t_tail else R * 0.2
        hz = -0.5 + fcr * (0.6 if not t_tail else 0.1) + 0.05 + (fcr * 0.7 if t_tail else 0.0)
        for sx in (-1, 1):
            P.add(_wing_half(sx, hz, fcr * 0.8, fcr * 0.4, hs / 2, hs / 2 * 0.5, hy, 0.01, max(0.012, t)), wing_c)
    elif kind == "fighter":
        R, S = u(0.045, 0.065), u(0.55, 0.8)
        t = _MIN_THICK * 1.0
        prof = [(R * 0.7, -0.5), (R, -0.38), (R, 0.12), (R * 0.65, 0.3), (R * 0.2, 0.46), (0.0, 0.5)]
        P.add(_lathe(prof, sections=16, transform=rot_z), body)
        delta = rng.random() < 0.5
        th = max(0.022, t)
        if delta:
            root_le, cr = u(0.05, 0.15), 0.0
            cr = root_le + 0.44
            ct = u(0.04, 0.08)
            sweep = cr - ct
        else:
            root_le, cr = u(-0.05, 0.05), u(0.28, 0.36)
            ct = cr * u(0.25, 0.4)
            sweep = np.tan(np.radians(u(30.0, 45.0))) * S / 2
        for sx in (-1, 1):
            P.add(_wing_half(sx, root_le, cr, ct, S / 2, sweep, -R * 0.2, -0.005, th), wing_c)
        fh = u(0.13, 0.2)
        fcr = u(0.14, 0.2)
        if rng.random() < 0.5:
            for sx in (-1, 1):
                P.add(_fin(-0.48 + fcr, fcr, fcr * 0.4, fh, fcr * 0.7, R * 0.6, th, x=sx * R * 0.8,
                           cant=-sx * np.radians(u(10.0, 25.0))), body)
        else:
            P.add(_fin(-0.48 + fcr, fcr, fcr * 0.4, fh, fcr * 0.7, R * 0.6, th), body)
        if not delta or rng.random() < 0.3:
            hs = S * u(0.45, 0.6)
            for sx in (-1, 1):
                P.add(_wing_half(sx, -0.36, 0.13, 0.05, hs / 2, 0.08, -R * 0.1, -0.005, th), wing_c)
        P.add(_ellipsoid((R * 0.6, R * 0.6, u(0.07, 0.1)), (0, R * 0.75, u(0.18, 0.26))), glass)
        if rng.random() < 0.7:
            for sx in (-1, 1):
                P.add(_box((R * 0.6, R * 1.0, 0.25), (sx * R * 1.05, -R * 0.1, 0.02)), body)
        P.add(_cyl((0, 0, -0.52), (0, 0, -0.48), R * 0.6), eng)
    else:
        prop = kind == "prop"
        if prop:
            R, S = u(0.055, 0.075), u(1.1, 1.45)
            prof = [(R * 0.15, -0.5), (R * 0.5, -0.3), (R, 0.0), (R, 0.3), (R * 0.8, 0.45), (R * 0.55, 0.5)]
        else:
            R, S = u(0.045, 0.06), u(0.8, 0.95)
            prof = [(R * 0.2, -0.5), (R * 0.7, -0.38), (R, -0.25), (R, 0.3), (R * 0.75, 0.42), (R * 0.3, 0.49),
                    (0.0, 0.5)]
        t = _MIN_THICK * max(1.0, S)
        P.add(_lathe(prof, sections=16, transform=rot_z), body)
        th = max(0.022, t)
        high = prop and rng.random() < 0.5
        yw = R * 0.85 if high else -R * 0.6
        if prop:
            cr = u(0.13, 0.18)
            ct = cr * u(0.7, 1.0)
            root_le, sweep = u(0.2, 0.3), u(0.0, 0.03)
            rise = 0.01 if high else np.tan(np.radians(u(3.0, 6.0))) * S / 2
        else:
            cr, root_le = u(0.16, 0.2), u(0.0, 0.08)
            ct = cr * u(0.3, 0.45)
            sweep = np.tan(np.radians(u(20.0, 32.0))) * S / 2
            rise = np.tan(np.radians(u(2.0, 5.0))) * S / 2
        for sx in (-1, 1):
            P.add(_wing_half(sx, root_le, cr, ct, S / 2, sweep, yw, rise, th), wing_c)
        fh, fcr = u(0.13, 0.2), u(0.12, 0.18)
        P.add(_fin(-0.5 + fcr + 0.02, fcr, fcr * 0.5, fh, fcr * 0.6, R * 0.2, th), accent)
        hs = S * u(0.3, 0.4)
        hy = R * 0.2 if prop else R * 0.2 + fh - 0.01
        hz = -0.5 + fcr * 0.8 + (fcr * 0.55 if not prop else 0.0)
        for sx in (-1, 1):
            P.add(_wing_half(sx, hz, fcr * 0.8, fcr * 0.5, hs / 2, 0.02, hy, 0.0, th), wing_c)
        dark = _color(rng, _DARK)
        if prop:
            two_eng = rng.random() < 0.3
            blade_c = dark
            nb = int(rng.integers(2, 5))
            bl = u(0.09, 0.14)
            hubs = [(sx * S * 0.2, yw - R * 0.4) for sx in (-1, 1)] if two_eng else [(0.0, 0.0)]
            for hx, hy2 in hubs:
                if two_eng:
                    er = max(R * 0.5, t)
                    P.add(_lathe([(er * 0.6, 0.0), (er, 0.05), (er, 0.22), (er * 0.5, 0.3)], sections=12,
                                 transform=_xf((hx, hy2, root_le + 0.08)) @ _tf.rotation_matrix(-np.pi / 2, [1, 0, 0])),
                          eng)
                    zp = root_le + 0.08 + 0.01
                else:
                    zp = 0.5
                sp_r = max(R * 0.45, t)
                P.add(_lathe([(sp_r, 0.0), (0.0, 0.06)], sections=12, transform=_xf((hx, hy2, zp)) @ rot_z), dark)
                off = u(0.0, np.pi)
                for k in range(nb):
                    a = off + 2 * np.pi * k / nb
                    c = (hx + np.cos(a) * bl * 0.55, hy2 + np.sin(a) * bl * 0.55, zp + 0.015)
                    P.add(_box((bl, max(0.03, t), t), c, rz=a), blade_c)
            if rng.random() < 0.4:
                P.add(_ellipsoid((R * 0.7, R * 0.5, 0.09), (0, R * 0.7, root_le - cr * 0.2 + 0.06)), glass)
            if rng.random() < 0.7:
                wr = max(0.03, t * 0.55)
                for sx in (-1, 1):
                    wx = sx * max(0.1, R * 1.5)
                    ww2 = max(wr * 0.6, t / 2)
                    P.add(_cyl((wx - ww2, -R - 0.09, root_le - cr * 0.4), (wx + ww2, -R - 0.09, root_le - cr * 0.4),
                               wr, sections=12), dark)
                    P.add(_beam((sx * R * 0.5, -R * 0.6, root_le - cr * 0.4), (wx, -R - 0.09, root_le - cr * 0.4),
                                max(0.015, t), max(0.015, t)), body)
                P.add(_cyl((-max(wr * 0.4, t / 2), -R - 0.06, 0.4), (max(wr * 0.4, t / 2), -R - 0.06, 0.4), wr * 0.8,
                           sections=12), dark)
                P.add(_box((t, 0.07, t), (0, -R - 0.03, 0.4)), body)
            if high and rng.random() < 0.7:
                for sx in (-1, 1):
                    P.add(_beam((sx * R * 0.7, -R * 0.5, root_le - cr * 0.4), (sx * S * 0.28, yw - th / 2, root_le - cr * 0.4),
                                max(0.015, t), max(0.015, t)), body)
        else:
            er = max(u(0.025, 0.032), t * 0.55)
            el = u(0.12, 0.16)
            for sx in (-1, 1):
                x = sx * (R + er + 0.012)
                P.add(_lathe([(er * 0.85, 0.0), (er, el * 0.2), (er, el * 0.7), (er * 0.6, el)], sections=16,
                             transform=_xf((x, R * 0.35, -0.2)) @ _tf.rotation_matrix(-np.pi / 2, [1, 0, 0])), eng)
                P.add(_box((er + 0.02, max(0.012, t), el * 0.5), (sx * (R + er * 0.4), R * 0.35, -0.2 - el * 0.5)), body)
    return P


def _boat_hull(L: float, B: float, D: float, stern_w: float, bow_rake: float, bottom_w: float,
               deadrise: float, sheer: float, canoe: bool = False) -> tuple[trimesh.Trimesh, list]:
    """Convex boat hull: deck at y=D (pointed bow at +Z), keel at y=0.

    Returns the hull mesh and the deck outline points (for deck plates)."""
    zmb = -0.1 * L if not canoe else 0.0
    deck = []
    for f in (0.0, 0.35, 0.65, 0.85, 0.95):
        z = zmb + (L / 2 - zmb) * f
        hw = B / 2 * np.sqrt(max(1 - f * f, 0.0))
        deck += [(-hw, D + sheer * f * f, z), (hw, D + sheer * f * f, z)]
    deck.append((0.0, D + sheer, L / 2))
    if canoe:
        for f in (0.35, 0.65, 0.85, 0.95):
            z = -(L / 2) * f
            hw = B / 2 * np.sqrt(max(1 - f * f, 0.0))
            deck += [(-hw, D + sheer * f * f, z), (hw, D + sheer * f * f, z)]
        deck.append((0.0, D + sheer, -L / 2))
    else:
        deck += [(-B / 2 * stern_w, D, -L / 2), (B / 2 * stern_w, D, -L / 2)]
    bottom = []
    zk0 = -L / 2 + (0.05 * L if not canoe else bow_rake)
    zk1 = L / 2 - bow_rake
    bw = B / 2 * bottom_w
    for z in (zk0, zmb, zmb + (zk1 - zmb) * 0.6):
        for sx in (-1, 1):
            bottom.append((sx * bw * (0.6 if z == zk0 and canoe else 1.0), deadrise, z))
    bottom += [(0.0, 0.0, zk0), (0.0, 0.0, zk1)]
    mid = []
    for z in (-L / 2 + 0.02 * L, zmb):
        if canoe and z < zmb:
            continue
        for sx in (-1, 1):
            mid.append((sx * B / 2 * (stern_w if z < zmb else 1.0) * 0.95, D * 0.45, z))
    return _hull(deck + bottom + mid), deck


def _make_watercraft(rng: np.random.Generator) -> _Parts:
    u = _uniform(rng)
    P = _Parts()
    kind = _pick(rng, ("sailboat", "motorboat", "ship", "cargo", "canoe"), (0.3, 0.25, 0.2, 0.15, 0.1))
    L = 1.0
    hull_c = _color(rng, _HULL)
    deck_c = _color(rng, _WOOD[:4] + ((235, 235, 230),))
    white = _color(rng, ((240, 240, 240), (230, 230, 225)), 6)
    glass = _color(rng, _GLASS)
    if kind == "sailboat":
        B, D = u(0.28, 0.36), u(0.09, 0.13)
        mast_h = u(1.1, 1.5)
        kd = u(0.12, 0.25)
        t = _MIN_THICK * max(L, mast_h + D + kd)
        hull, deck = _boat_hull(L, B, D, u(0.5, 0.8), u(0.12, 0.25), u(0.2, 0.4), D * 0.15, D * u(0.1, 0.3))
        P.add(hull, hull_c)
        P.add(_slab([(0, 0.02, 0.08), (0, 0.02, -0.18), (0, -kd, -0.14), (0, -kd, -0.02)], max(0.03, t), (1, 0, 0)),
              hull_c)
        P.add(_slab([(0, 0.02, -0.4), (0, 0.02, -0.46), (0, -kd * 0.5, -0.47), (0, -kd * 0.5, -0.43)], max(0.02, t),
                    (1, 0, 0)), hull_c)
        zm = u(0.05, 0.15)
        if rng.random() < 0.7:
            cl = u(0.25, 0.35)
            ch = max(u(0.04, 0.07), t)
            P.add(_box((B * 0.5, ch, cl), (0, D + ch / 2 - 0.005, zm - cl / 2 - 0.02)), white)
        mr = max(0.008, t * 0.55)
        P.add(_cyl((0, D - 0.01, zm), (0, D + mast_h, zm), mr, sections=12), white)
        yb = D + u(0.08, 0.14)
        boom = u(0.35, 0.5)
        P.add(_cyl((0, yb, zm), (0, yb, zm - boom), mr, sections=12), white)
        sail = _color(rng, _SAIL, 6)
        st = max(0.012, t)
        P.add(_slab([(0, yb + 0.01, zm - mr - st / 2), (0, D + mast_h * 0.97, zm - mr - st / 2),
                     (0, yb + 0.01, zm - boom + 0.02)], st, (1, 0, 0)), sail)
        if rng.random() < 0.7:
            P.add(_slab([(0, D + mast_h * u(0.7, 0.9), zm + mr + 0.005), (0, D + 0.04, L / 2 - 0.05),
                         (0, D + 0.06, zm + 0.04)], st, (1, 0, 0)), sail)
    elif kind == "motorboat":
        B, D = u(0.33, 0.42), u(0.13, 0.18)
        t = _MIN_THICK * L
        hull, deck = _boat_hull(L, B, D, u(0.8, 0.95), u(0.2, 0.32), u(0.15, 0.3), D * 0.25, D * u(0.2, 0.4))
        P.add(hull, hull_c)
        style = _pick(rng, ("cabin", "console"))
        if style == "cabin":
            cl, ch = u(0.3, 0.45), u(0.08, 0.14)
            zc = u(-0.15, 0.05)
            P.add(_box((B * 0.7, ch, cl), (0, D + ch / 2 - 0.01, zc)), white)
            pts = [(sx * B * 0.34, D + ch - 0.01, zc + cl / 2 - 0.01) for sx in (-1, 1)]
            pts += [(sx * B * 0.3, D + ch + u(0.05, 0.09), zc + cl / 2 - 0.09) for sx in (-1, 1)]
            pts += [(sx * B * 0.3, D + ch - 0.01, zc + cl / 2 - 0.12) for sx in (-1, 1)]
            P.add(_hull(pts), glass)
            if rng.random() < 0.5:
                P.add(_box((B * 0.6, max(0.02, t), cl * 0.5), (0, D + ch + 0.01, zc - cl * 0.2)), white)
        else:
            cz = u(-0.1, 0.05)
            P.add(_box((B * 0.3, u(0.08, 0.12), 0.12), (0, D + 0.04, cz)), white)
            P.add(_slab([(-B * 0.2, D + 0.1, cz + 0.05), (B * 0.2, D + 0.1, cz + 0.05), (B * 0.2, D + 0.17, cz + 0.02),
                         (-B * 0.2, D + 0.17, cz + 0.02)], max(0.012, t), (0, 0.5, 1)), glass)
        if rng.random() < 0.5:
            mc = _color(rng, _DARK + ((235, 235, 235),))
            P.add(_box((0.07, 0.09, 0.08), (0, D + 0.04, -L / 2 - 0.03)), mc)
            P.add(_box((0.03, D + 0.02, 0.04), (0, D * 0.45, -L / 2 - 0.04)), mc)
    elif kind == "canoe":
        B, D = u(0.14, 0.2), u(0.06, 0.09)
        rowboat = rng.random() < 0.4
        if rowboat:
            B = u(0.33, 0.42)
            D = u(0.12, 0.16)
        t = _MIN_THICK * L
        hull, deck = _boat_hull(L, B, D, u(0.5, 0.7), u(0.08, 0.15), u(0.3, 0.5), D * 0.1, D * u(0.2, 0.5),
                                canoe=not rowboat)
        P.add(hull, hull_c)
        # gunwale (rim) along the deck edge and seats
        rim = max(0.015, t)
        P.add(_box((B * 0.6, rim, rim * 2), (0, D + rim / 2, 0.2)), deck_c)
        P.add(_box((B * 0.75, rim, rim * 2), (0, D + rim / 2, -0.15)), deck_c)
        if rowboat and rng.random() < 0.6:
            for sx in (-1, 1):
                P.add(_beam((sx * B * 0.45, D + rim, -0.05), (sx * B * 0.9, D - 0.05, 0.3), rim, rim), deck_c)
    else:
        B = u(0.13, 0.18) if kind == "ship" else u(0.14, 0.17)
        D = u(0.08, 0.12) if kind == "ship" else u(0.08, 0.1)
        t = _MIN_THICK * L
        warship = kind == "ship" and rng.random() < 0.35
        if warship:
            hull_c = _color(rng, _NAVY, 6)
            white = _shade(hull_c, 1.1)
        hull, deck = _boat_hull(L, B, D, u(0.6, 0.85), u(0.05, 0.12), u(0.5, 0.8), 0.0, D * u(0.1, 0.3))
        P.add(hull, hull_c)
        dp = np.asarray(deck)
        dp[:, 0] *= 0.96
        dp[:, 2] *= 0.97
        dt = max(0.01, t)
        P.add(_hull(np.vstack([dp + (0, 0.004, 0), dp - (0, dt, 0)])), deck_c if not warship else _shade(hull_c, 0.85))
        if kind == "cargo":
            bh, bl = u(0.12, 0.18), u(0.08, 0.12)
            zb = -L / 2 + 0.06 + bl / 2
            P.add(_box((B * 0.85, bh, bl), (0, D + bh / 2, zb)), white)
            P.add(_box((B * 1.05, max(0.015, t), bl * 0.6), (0, D + bh - 0.01, zb + bl * 0.1)), white)
            P.add(_cyl((0, D + bh - 0.02, zb - bl / 2 + 0.01), (0, D + bh + 0.05, zb - bl / 2 - 0.005),
                       max(0.015, t * 0.55), sections=12), _color(rng, _FUNNEL))
            nb = int(rng.integers(4, 9))
            nr = int(rng.integers(3, 6))
            z0, z1 = zb + bl / 2 + 0.02, L / 2 - 0.15
            bay = (z1 - z0) / nb
            row = B * 0.85 / nr
            ch = u(0.025, 0.035)
            for i in range(nb):
                for j in range(nr):
                    layers = int(rng.integers(1, 5))
                    if rng.random() < 0.1:
                        continue
                    h = ch * layers
                    P.add(_box((row * 0.95, h, bay * 0.92),
                               (-B * 0.425 + row * (j + 0.5), D + h / 2 - 0.002, z0 + bay * (i + 0.5))),
                          _color(rng, _CONTAINER, 10))
        else:
            n_lv = int(rng.integers(2, 5))
            zc = u(-0.2, 0.05) if not warship else u(-0.05, 0.1)
            ll = u(0.3, 0.5) if not warship else u(0.18, 0.26)
            lh = u(0.03, 0.045)
            y = D - 0.003
            for i in range(n_lv):
                lw = B * (0.8 - 0.1 * i)
                P.add(_box((lw, max(lh, t), ll), (0, y + lh / 2, zc)), white)
                y += lh
                ll *= u(0.6, 0.85)
                zc += ll * u(0.0, 0.25)
            P.add(_box((B * 0.85, max(0.015, t), max(0.03, t)), (0, y - lh * 0.4, zc + ll * 0.5)), glass)
            nf = int(rng.integers(1, 3))
            fc = _color(rng, _FUNNEL) if not warship else _shade(hull_c, 0.7)
            fr = max(u(0.018, 0.03), t * 0.55)
            for k in range(nf):
                fz = zc - 0.08 - k * 0.09
                P.add(_cyl((0, D + lh, fz), (0, y + u(0.04, 0.07), fz - 0.015), fr, sections=16), fc)
            mz = zc + 0.05
            mr = max(0.006, t * 0.55)
            P.add(_cyl((0, y - 0.01, mz), (0, y + u(0.08, 0.14), mz), mr, sections=10), white)
            if warship:
                for tz in (0.28, -0.33) if rng.random() < 0.6 else (0.28,):
                    tr = max(B * 0.25, t)
                    P.add(_cyl((0, D - 0.002, tz), (0, D + max(0.025, t), tz), tr, sections=16), white)
                    d = 1 if tz > 0 else -1
                    P.add(_cyl((0, D + 0.015, tz), (0, D + 0.02, tz + d * u(0.08, 0.12)), max(0.006, t * 0.55),
                               sections=8), white)
            elif rng.random() < 0.5:
                # lifeboats along the superstructure sides
                lc = _color(rng, ((230, 120, 20), (240, 240, 240)), 6)
                for sx in (-1, 1):
                    for k in range(2):
                        P.add(_capsule((sx * B * 0.42, D + 0.05, zc - 0.05 + k * 0.09),
                                       (sx * B * 0.42, D + 0.05, zc + 0.01 + k * 0.09), max(0.012, t * 0.55), 4), lc)
    return P


# ==========================================================================
# public API
# ==========================================================================
_GENERATORS: dict[str, Callable[[np.random.Generator], _Parts]] = {
    "chair": _make_chair,
    "table": _make_table,
    "sofa": _make_sofa,
    "lamp": _make_lamp,
    "cabinet": _make_cabinet,
    "bench": _make_bench,
    "display": _make_display,
    "car": _make_car,
    "airplane": _make_airplane,
    "watercraft": _make_watercraft,
    "loudspeaker": _make_loudspeaker,
    "rifle": _make_rifle,
    "telephone": _make_telephone,
    "bed": _make_bed,
    "stool": _make_stool,
    "bookshelf": _make_bookshelf,
}

CATEGORIES: tuple[str, ...] = tuple(_GENERATORS)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return seed


def make_object(category: str, seed: int) -> trimesh.Trimesh:
    """Generate one procedural ShapeNet-like object.

    Args:
        category: one of :data:`CATEGORIES` (e.g. ``"chair"``, ``"car"``).
        seed: non-negative integer; together with ``category`` it fully
            determines the result (bit-identical across processes).

    Returns:
        A single :class:`trimesh.Trimesh` made of concatenated (possibly
        overlapping) closed primitive parts.  ``vertices`` are float64 in
        arbitrary units (roughly metres; an airplane is ~1 unit long), +Y up,
        the object's front facing +Z, centred in X/Z and resting on y=0.
        ``visual.face_colors`` is a uint8 RGBA array of shape ``[F, 4]``
        (alpha 255), one colour per part.  Fewer than 5000 faces.

    Raises:
        ValueError: unknown ``category`` or negative ``seed``.
        TypeError: ``seed`` is not an integer.
    """
    gen = _GENERATORS.get(category) if isinstance(category, str) else None
    if gen is None:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    seed = _check_seed(seed)
    rng = np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])
    return gen(rng).build(f"{category}/{seed}")


def random_category(seed: int) -> str:
    """Deterministically choose a category from :data:`CATEGORIES`.

    Args:
        seed: non-negative integer.

    Returns:
        One element of :data:`CATEGORIES` (uniform over categories).

    Raises:
        ValueError: negative ``seed``.
        TypeError: ``seed`` is not an integer.
    """
    seed = _check_seed(seed)
    rng = np.random.default_rng([seed, 0x5CA7])
    return CATEGORIES[int(rng.integers(len(CATEGORIES)))]
