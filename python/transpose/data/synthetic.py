"""Built-in procedural scenes: an indoor room and an outdoor terrain seen from a drone.

Everything is rendered on the CPU with vectorized numpy by analytic ray casting, so the ground truth
is exact: every pixel's ray is intersected with the scene's primitives (the room box, oriented boxes,
spheres, capped vertical cylinders, a heightfield terrain), and the nearest hit gives the depth, the
3D scene coordinate and the world-frame normal of what the pixel sees.

Appearance comes from procedural textures that are a function of the surface point (per-face UV in
metres), so every view of one surface point sees the same albedo. Each surface has its own pattern
(planks, bricks, tiles, plaster, wallpaper, marble, posters, facades, fields) modulated by
low-frequency colour noise, so that every place in the scene looks different: scene-coordinate
regression needs distinctive texture to learn from.

Two looks of the same scene:

- ``sim``: the clean albedo, as a simulator renders it.
- ``real``: lighting (a point light or the sun, ambient term, cast shadows), aerial haze outdoors,
  per-frame exposure and white balance, vignetting, lens blur and sensor noise.

A scene folder (see :mod:`transpose.data.layout`) gets the sections ``train_sim``, ``test_sim``,
``train_real`` (every 10th training view, for contrastive sim/real pairs) and ``test_real``. A real
frame has the key of the sim frame it is near (its pose is that sim pose moved by a few centimetres /
degrees), so ``train_sim/frame-000010`` and ``train_real/frame-000010`` are a pair. Each frame has
``rgb/`` (uint8 PNG), ``poses/`` (4x4 camera-to-world), ``calibration/`` (one focal length, principal
point at the image centre), ``depth/`` (metres: uint16 mm PNG indoors; float32 ``.npy`` outdoors,
where depths exceed the 65.5 m a uint16 mm PNG can hold), ``init/`` (the exact scene coordinate seen
at each cell centre pixel ``(8j + 4, 8i + 4)``, float32 ``(3, H/8, W/8)``, zeros for sky) and
``normal/`` (world-frame unit normals at the same cells, zeros for sky).

Pixel convention: the ray of pixel column ``x`` and row ``y`` goes through the image point ``(x, y)``
(as :func:`transpose.geometry.backproject_depth` assumes), so ``init`` is the full-resolution
coordinate map sampled at ``[4::8, 4::8]``. Ray directions are scaled to camera depth 1, so the ray
parameter of a hit *is* its camera depth.

Python API: :func:`render_scene` writes a scene folder; :func:`build_scene`, :func:`trajectory` and
:func:`render_view` render single views. Command line: ``python datasets/setup_synthetic.py --out
datasets [--kind indoor|outdoor|all] [--tiny] [--force]``.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import geometry, io
from . import layout

PathLike = Union[str, "os.PathLike[str]"]

KINDS = ("indoor", "outdoor")
SECTIONS = ("train_sim", "test_sim", "train_real", "test_real")
#: Focal length in pixels at 640 pixels width (a 63 x 49 degree field of view, as 7-Scenes); scaled with the width.
FOCAL_AT_640 = 525.0
#: One real training frame for every ``REAL_TRAIN_EVERY`` sim training frames.
REAL_TRAIN_EVERY = 10
#: The default scene: 1200 sim frames (900 train, 300 test) at 320x240. More views rather than more
#: pixels: networks here train at 160x120, and a render costs 0.05 s at 320x240 against 0.17 s at
#: 640x480 (2 processes). Measured with the demo's recipe (20 minutes, one core, the same 300 test_sim
#: frames): 225 training frames 50.7 % within 5 cm / 5 deg, 900 frames 57.0 %, 1800 frames 53.3 %;
#: the same 3600 frames rendered at 160x120 (aliased) 44.9 %.
DEFAULT_FRAMES = 1200
DEFAULT_WIDTH, DEFAULT_HEIGHT = 320, 240
_HIT_EPS = 1e-6


# =========================================================================== noise and textures

def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _hash01(n: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random float32 in [0, 1) for each integer of ``n`` (any shape)."""
    x = np.asarray(n).astype(np.int64).astype(np.uint32)
    x = x * np.uint32(2654435761) ^ np.uint32(salt & 0xFFFFFFFF)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x2C1B3C6D)
    x ^= x >> np.uint32(12)
    x *= np.uint32(0x297A2D39)
    x ^= x >> np.uint32(15)
    return (x >> np.uint32(8)).astype(np.float32) / np.float32(1 << 24)


def value_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, u_len: float, v_len: float,
                cell: float) -> np.ndarray:
    """Smooth value noise on a grid: ``(len(v), len(u))`` float32 in [0, 1].

    A random lattice with spacing ``cell`` metres over ``[0, u_len] x [0, v_len]`` interpolated with
    smoothstep weights; the lattice depends only on the extents and ``cell``, not on how densely
    ``u`` and ``v`` sample it, so one scene rendered at two texel sizes shows the same pattern.
    """
    nu, nv = int(u_len / cell) + 2, int(v_len / cell) + 2
    lattice = rng.random((nv, nu), dtype=np.float32)
    xu = np.clip(u / cell, 0, nu - 1 - 1e-6)
    iu = np.floor(xu).astype(np.int64)
    fu = _smoothstep(xu - iu).astype(np.float32)
    xv = np.clip(v / cell, 0, nv - 1 - 1e-6)
    iv = np.floor(xv).astype(np.int64)
    fv = _smoothstep(xv - iv).astype(np.float32)[:, None]
    rows = lattice[:, iu] * (1 - fu) + lattice[:, iu + 1] * fu  # (nv, len(u)): separable interpolation
    return rows[iv] * (1 - fv) + rows[iv + 1] * fv


def fbm(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, u_len: float, v_len: float, cell: float,
        octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Multi-octave value noise ``(len(v), len(u))`` in [0, 1]: cells ``cell, cell/2, ...``, amplitudes ``gain**k``."""
    total = np.zeros((len(v), len(u)), np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        total += amp * value_noise(rng, u, v, u_len, v_len, cell / 2 ** k)
        norm += amp
        amp *= gain
    return total / norm


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    """Blend colours ``a -> b`` by weights ``t (...)`` -> ``(..., 3)``."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _random_colour(rng: np.random.Generator, sat: Tuple[float, float] = (0.25, 0.7),
                   val: Tuple[float, float] = (0.35, 0.85), hue: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A random RGB colour from hue/saturation/value ranges (hue in turns: 0 red, 1/3 green, 2/3 blue)."""
    h, s, v = rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


@dataclass
class Texture:
    """An albedo image ``(h, w, 3)`` float32 in [0, 1] laid on a surface with ``texel`` metres per pixel.

    Texel ``(r, c)`` covers ``u in [c, c + 1) * texel``, ``v in [r, r + 1) * texel``; ``wrap_u`` makes
    the u axis periodic (sphere and cylinder sides).
    """
    image: np.ndarray
    texel: float
    wrap_u: bool = False
    texel_v: Optional[float] = None  # when rows and columns differ (periodic textures)

    def sample(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Bilinear albedo at surface coordinates ``u, v`` ``(N,)`` metres -> ``(N, 3)`` float32."""
        h, w, _ = self.image.shape
        x = u / self.texel - 0.5
        y = np.clip(v / (self.texel_v or self.texel) - 0.5, 0.0, h - 1.0)
        if self.wrap_u:
            x0 = np.floor(x)
            fx = (x - x0).astype(np.float32)
            x0 = x0.astype(np.int64) % w
            x1 = (x0 + 1) % w
        else:
            x = np.clip(x, 0.0, w - 1.0)
            x0 = np.floor(x)
            fx = (x - x0).astype(np.float32)
            x0 = x0.astype(np.int64)
            x1 = np.minimum(x0 + 1, w - 1)
        y0 = np.floor(y)
        fy = (y - y0).astype(np.float32)[:, None]
        y0 = y0.astype(np.int64)
        y1 = np.minimum(y0 + 1, h - 1)
        flat = self.image.reshape(-1, 3)
        fx = fx[:, None]
        top = flat[y0 * w + x0] * (1 - fx) + flat[y0 * w + x1] * fx
        bottom = flat[y1 * w + x0] * (1 - fx) + flat[y1 * w + x1] * fx
        return top * (1 - fy) + bottom * fy


def _grid(u_len: float, v_len: float, texel: float) -> Tuple[np.ndarray, np.ndarray]:
    """Texel centres (metres) along u ``(W,)`` and v ``(H,)`` covering ``u_len x v_len``."""
    nu = max(2, int(math.ceil(u_len / texel)))
    nv = max(2, int(math.ceil(v_len / texel)))
    return (np.arange(nu) + 0.5) * texel, (np.arange(nv) + 0.5) * texel


def _pattern(rng: np.random.Generator, style: str, u: np.ndarray, v: np.ndarray, u_len: float,
             v_len: float) -> np.ndarray:
    """Base pattern ``(len(v), len(u), 3)`` of one surface style (u horizontal, v vertical / second axis)."""
    salt = int(rng.integers(1 << 31))
    U, V = u[None, :], v[:, None]
    if style == "planks":
        width = rng.uniform(0.12, 0.2)
        length = rng.uniform(0.9, 1.6)
        row = np.floor(V / width).astype(np.int64)
        stagger = _hash01(row, salt) * length
        uu = U + stagger
        col = np.floor(uu / length).astype(np.int64)
        tint = _hash01(row * 7919 + col, salt + 1)
        warp = fbm(rng, u, v, u_len, v_len, 0.3, 3)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (np.mod(V, width) * 40.0 + warp * 6.0))
        light, dark = _random_colour(rng, (0.4, 0.6), (0.6, 0.8), (0.04, 0.12)), _random_colour(rng, (0.5, 0.7), (0.25, 0.4), (0.02, 0.1))
        img = _mix(dark, light, 0.6 * tint + 0.4 * grain)
        gap = (np.mod(V, width) < 0.006) | (np.mod(uu, length) < 0.006)
        img[gap] *= 0.35
    elif style == "bricks":
        bh, bw = rng.uniform(0.065, 0.085), rng.uniform(0.2, 0.26)
        row = np.floor(V / bh).astype(np.int64)
        uu = U + (row % 2) * bw * 0.5
        col = np.floor(uu / bw).astype(np.int64)
        tint = _hash01(row * 7919 + col, salt)
        base = _random_colour(rng, (0.5, 0.7), (0.45, 0.65), (-0.02, 0.08))
        other = _random_colour(rng, (0.3, 0.6), (0.3, 0.5), (0.0, 0.12))
        img = _mix(base, other, tint) * (0.8 + 0.4 * fbm(rng, u, v, u_len, v_len, 0.05, 3))[..., None]
        mortar = (np.mod(V, bh) < 0.01) | (np.mod(uu, bw) < 0.01)
        img[mortar] = np.array([0.78, 0.76, 0.72], np.float32)
    elif style == "tiles":
        size = rng.uniform(0.2, 0.4)
        iu, iv = np.floor(U / size).astype(np.int64), np.floor(V / size).astype(np.int64)
        palette = np.stack([_random_colour(rng) for _ in range(4)])
        pick = (_hash01(iu * 7919 + iv, salt) * 4).astype(np.int64)
        shade = 0.75 + 0.25 * _hash01(iu * 104729 + iv, salt + 3)
        img = palette[pick] * shade[..., None]
        grout = (np.mod(U, size) < 0.008) | (np.mod(V, size) < 0.008)
        img[np.broadcast_to(grout, img.shape[:2])] = np.array([0.85, 0.85, 0.82], np.float32)
    elif style == "wallpaper":
        sw = rng.uniform(0.05, 0.12)
        stripe = np.floor(U / sw).astype(np.int64)
        a, b = _random_colour(rng, (0.2, 0.5), (0.6, 0.9)), _random_colour(rng, (0.3, 0.7), (0.4, 0.7))
        motif = 0.5 + 0.5 * np.sin(U * rng.uniform(20, 40)) * np.sin(V * rng.uniform(20, 40))
        img = _mix(a, b, 0.5 * (stripe % 2) + 0.5 * motif * (stripe % 3 == 0))
    elif style == "marble":
        turb = fbm(rng, u, v, u_len, v_len, 0.25, 5)
        veins = np.abs(np.sin((U * rng.uniform(3, 8) + V * rng.uniform(3, 8)) + 12.0 * turb)) ** 0.4
        img = _mix(_random_colour(rng, (0.3, 0.6), (0.2, 0.4)), _random_colour(rng, (0.05, 0.2), (0.8, 0.95)), veins)
    elif style == "art":  # a poster / painting: colourful, high contrast, no two alike
        img = np.stack([fbm(rng, u, v, u_len, v_len, rng.uniform(0.1, 0.3), 4) for _ in range(3)], -1)
        img = np.clip((img - 0.5) * 2.8 + 0.5, 0, 1)
        for _ in range(int(rng.integers(3, 7))):
            cu, cv, r = rng.uniform(0, u_len), rng.uniform(0, v_len), rng.uniform(0.04, 0.18) * min(u_len, v_len) * 2
            img[(U - cu) ** 2 + (V - cv) ** 2 < r * r] = _random_colour(rng, (0.6, 1.0), (0.5, 1.0))
    elif style == "facade":  # building wall: a grid of windows, each with its own tint
        wu, wv = rng.uniform(2.5, 4.0), rng.uniform(3.0, 3.6)
        iu, iv = np.floor(U / wu).astype(np.int64), np.floor(V / wv).astype(np.int64)
        fu, fv = np.mod(U, wu) / wu, np.mod(V, wv) / wv
        wall = _random_colour(rng, (0.05, 0.35), (0.5, 0.85))
        img = np.broadcast_to(wall, (len(v), len(u), 3)) * (0.85 + 0.3 * fbm(rng, u, v, u_len, v_len, 2.0, 3))[..., None]
        window = (fu > 0.25) & (fu < 0.75) & (fv > 0.3) & (fv < 0.8) & (V > 1.0)
        glass = _mix(np.array([0.1, 0.15, 0.22]), np.array([0.45, 0.55, 0.65]), _hash01(iu * 7919 + iv, salt))
        img = np.where(window[..., None], glass, img)
    elif style == "roof":
        tile = rng.uniform(0.3, 0.6)
        rows = np.floor(V / tile).astype(np.int64)
        base = _random_colour(rng, (0.3, 0.7), (0.3, 0.6))
        img = base * (0.75 + 0.25 * _hash01(rows * 31 + np.floor(U / (2 * tile)).astype(np.int64), salt))[..., None]
        img = img * (0.85 + 0.3 * fbm(rng, u, v, u_len, v_len, 3.0, 3))[..., None]
    else:  # "plaster": painted wall / ceiling
        base = _random_colour(rng, (0.05, 0.4), (0.6, 0.9))
        img = base * (0.8 + 0.4 * fbm(rng, u, v, u_len, v_len, 0.4, 5))[..., None]
    return np.broadcast_to(img, (len(v), len(u), 3)).astype(np.float32)


def make_texture(rng: np.random.Generator, style: str, u_len: float, v_len: float, texel: float, *,
                 wrap_u: bool = False, posters: int = 0, colour_cell: float = 0.8,
                 detail_cell: float = 0.03) -> Texture:
    """A surface texture of ``style`` over ``u_len x v_len`` metres, unique everywhere.

    The base pattern is modulated by per-channel low-frequency colour noise (cell ``colour_cell``
    metres) and fine detail noise, and ``posters`` framed paintings are laid on top, so that two
    places of one surface never look alike.
    """
    u, v = _grid(u_len, v_len, texel)
    if wrap_u:  # a periodic u axis needs a whole number of texels around
        u = (np.arange(len(u)) + 0.5) * (u_len / len(u))
        texel_u = u_len / len(u)
    img = _pattern(rng, style, u, v, u_len, v_len).copy()
    # brightness varies more than hue, so surfaces keep their style's colours
    bright = fbm(rng, u, v, u_len, v_len, colour_cell, 3)
    colour = np.stack([fbm(rng, u, v, u_len, v_len, colour_cell * 1.5, 2) for _ in range(3)], -1)
    img *= 0.7 + 0.6 * bright[..., None] + 0.35 * (colour - 0.5)
    img *= (0.88 + 0.24 * fbm(rng, u, v, u_len, v_len, detail_cell, 2))[..., None]
    for _ in range(posters):
        pw, ph = rng.uniform(0.4, 1.1), rng.uniform(0.35, 0.9)
        if pw + 0.2 > u_len or ph + 0.2 > v_len:
            continue
        u0 = rng.uniform(0.1, u_len - pw - 0.1)
        v0 = rng.uniform(max(0.1, min(0.9, v_len - ph - 0.1)), max(0.1, v_len - ph - 0.1))
        cu = (u >= u0 - 0.03) & (u < u0 + pw + 0.03)
        cv = (v >= v0 - 0.03) & (v < v0 + ph + 0.03)
        if cu.sum() < 2 or cv.sum() < 2:
            continue
        pu, pv = u[cu] - u0, v[cv] - v0
        art = _pattern(rng, "art", pu, pv, pw, ph)
        inside = ((pu >= 0) & (pu < pw))[None, :] & ((pv >= 0) & (pv < ph))[:, None]
        frame = _random_colour(rng, (0.0, 0.5), (0.05, 0.4))
        img[np.ix_(cv, cu)] = np.where(inside[..., None], art, frame)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return Texture(img, texel_u, wrap_u, texel) if wrap_u else Texture(img, texel)


# =========================================================================== primitives

def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class Primitive:
    """A surface that rays can hit. ``intersect`` gives the ray parameter of the first hit (inf = miss)
    for rays ``o + t d``; ``shade`` gives unit normals and albedo at hit points."""

    #: May block light (shadow rays test these).
    casts_shadow = True

    def bounding_sphere(self) -> Optional[Tuple[np.ndarray, float]]:
        """``(centre (3,), radius)`` enclosing the primitive, or None when it can fill the whole view."""
        return None

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """First hit ``t (...)`` of rays from ``o (3,)`` (or ``(..., 3)``) along ``d (..., 3)``; inf = miss."""
        raise NotImplementedError

    def shade(self, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        """Unit normals ``(N, 3)`` and albedo ``(N, 3)`` at surface points ``p (N, 3)``."""
        raise NotImplementedError


#: For an axis-aligned face normal to axis a, the (u, v) axes (z, the vertical, last so rows run up walls).
_FACE_UV_AXES = ((1, 2), (0, 2), (0, 1))


def _box_faces(p_local: np.ndarray, half: np.ndarray, textures: Sequence[Texture]) -> Tuple[np.ndarray, np.ndarray]:
    """Face, local normal and albedo of points on an axis-aligned box ``[-half, half]`` (local frame)."""
    rel = np.abs(p_local) / half
    axis = np.where(rel[:, 1] > rel[:, 0], 1, 0)
    axis = np.where(rel[:, 2] > np.maximum(rel[:, 0], rel[:, 1]), 2, axis)
    side = (np.take_along_axis(p_local, axis[:, None], 1)[:, 0] > 0).astype(np.int64)
    face = 2 * axis + side
    normal = np.zeros_like(p_local)
    normal[np.arange(len(p_local)), axis] = np.where(side == 1, 1.0, -1.0)
    albedo = np.empty((len(p_local), 3), np.float32)
    for f in range(6):
        idx = np.flatnonzero(face == f)
        if idx.size:
            a, b = _FACE_UV_AXES[f // 2]
            albedo[idx] = textures[f].sample(p_local[idx, a] + half[a], p_local[idx, b] + half[b])
    return normal, albedo


class Room(Primitive):
    """The inside of an axis-aligned box ``[lo, hi]``: faces -x, +x, -y, +y walls, floor, ceiling."""
    casts_shadow = False

    def __init__(self, lo: Sequence[float], hi: Sequence[float], textures: Sequence[Texture]):
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        self.centre, self.half = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        self.textures = list(textures)

    def intersect(self, o, d):
        best = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):  # per axis: reductions over a trailing axis of 3 are slow in numpy
                da = d[..., a]
                t = np.where(da > 0, self.hi[a] - o[..., a], self.lo[a] - o[..., a]) / da
                t[np.isnan(t)] = np.inf
                best = t if best is None else np.minimum(best, t)
        return best

    def shade(self, p):
        normal, albedo = _box_faces(p - self.centre, self.half, self.textures)
        return -normal, albedo  # seen from inside: normals point into the room


class Box(Primitive):
    """A solid box of half sizes ``half`` centred at ``centre``, turned by ``yaw`` radians about z."""

    def __init__(self, centre: Sequence[float], half: Sequence[float], yaw: float, textures: Sequence[Texture]):
        self.centre, self.half = np.asarray(centre, float), np.asarray(half, float)
        self.R = _rot_z(yaw)
        self.textures = list(textures)

    def bounding_sphere(self):
        return self.centre, float(np.linalg.norm(self.half))

    def intersect(self, o, d):
        o_l = (o - self.centre) @ self.R
        d_l = d @ self.R
        t_near = t_far = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):  # slabs, one axis at a time
                inv = 1.0 / d_l[..., a]
                t1 = (-self.half[a] - o_l[..., a]) * inv
                t2 = (self.half[a] - o_l[..., a]) * inv
                lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
                t_near = lo if t_near is None else np.maximum(t_near, lo)
                t_far = hi if t_far is None else np.minimum(t_far, hi)
        hit = (t_near <= t_far) & (t_near > _HIT_EPS)
        return np.where(hit, t_near, np.inf)

    def shade(self, p):
        normal, albedo = _box_faces((p - self.centre) @ self.R, self.half, self.textures)
        return normal @ self.R.T, albedo


class Sphere(Primitive):
    """A sphere; its texture wraps around the longitude (u = longitude x radius, v = colatitude x radius)."""

    def __init__(self, centre: Sequence[float], radius: float, texture: Texture):
        self.centre, self.radius, self.texture = np.asarray(centre, float), float(radius), texture

    def bounding_sphere(self):
        return self.centre, self.radius

    def intersect(self, o, d):
        oc = o - self.centre
        a = np.einsum("...i,...i->...", d, d)
        b = np.einsum("...i,...i->...", d, oc) if oc.ndim > 1 else d @ oc
        c = (np.einsum("...i,...i->...", oc, oc) if oc.ndim > 1 else oc @ oc) - self.radius ** 2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > _HIT_EPS), t, np.inf)

    def shade(self, p):
        n = (p - self.centre) / self.radius
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        u = (np.arctan2(n[:, 1], n[:, 0]) + np.pi) * self.radius
        v = np.arccos(np.clip(n[:, 2], -1.0, 1.0)) * self.radius
        return n, self.texture.sample(u, v)


class Cylinder(Primitive):
    """A vertical capped cylinder: axis through ``base`` (x, y, z0), ``radius``, ``height``.

    Textures: side (u wraps around), top cap, bottom cap.
    """

    def __init__(self, base: Sequence[float], radius: float, height: float, textures: Sequence[Texture]):
        self.base, self.radius, self.height = np.asarray(base, float), float(radius), float(height)
        self.textures = list(textures)

    def bounding_sphere(self):
        centre = self.base + np.array([0.0, 0.0, self.height / 2])
        return centre, math.hypot(self.radius, self.height / 2)

    def intersect(self, o, d):
        oc = o - self.base
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        ox, oy, oz = oc[..., 0], oc[..., 1], oc[..., 2]
        a = dx * dx + dy * dy
        b = dx * ox + dy * oy
        c = ox * ox + oy * oy - self.radius ** 2
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            z_side = oz + t_side * dz
            side_ok = (disc >= 0) & (t_side > _HIT_EPS) & (z_side >= 0) & (z_side <= self.height)
            best = np.where(side_ok, t_side, np.inf)
            for z_cap in (self.height, 0.0):
                t_cap = (z_cap - oz) / dz
                px, py = ox + t_cap * dx, oy + t_cap * dy
                cap_ok = (t_cap > _HIT_EPS) & (px * px + py * py <= self.radius ** 2)
                best = np.where(cap_ok & (t_cap < best), t_cap, best)
        return best

    def shade(self, p):
        q = p - self.base
        radial = np.hypot(q[:, 0], q[:, 1])
        dist = np.stack([np.abs(radial - self.radius), np.abs(q[:, 2] - self.height), np.abs(q[:, 2])], 1)
        face = np.argmin(dist, axis=1)
        n = np.zeros_like(q)
        albedo = np.empty((len(q), 3), np.float32)
        side = np.flatnonzero(face == 0)
        r = np.maximum(radial[side], 1e-12)
        n[side, 0], n[side, 1] = q[side, 0] / r, q[side, 1] / r
        albedo[side] = self.textures[0].sample((np.arctan2(q[side, 1], q[side, 0]) + np.pi) * self.radius,
                                               q[side, 2])
        for f, nz in ((1, 1.0), (2, -1.0)):
            idx = np.flatnonzero(face == f)
            n[idx, 2] = nz
            albedo[idx] = self.textures[f].sample(q[idx, 0] + self.radius, q[idx, 1] + self.radius)
        return n, albedo


class Heightfield(Primitive):
    """Terrain ``z = h(x, y)``: bilinear interpolation of a height grid, hit by Lipschitz-safe ray
    marching followed by Newton refinement; texture laid over (x, y)."""
    casts_shadow = False

    def __init__(self, heights: np.ndarray, origin: Tuple[float, float], spacing: float, texture: Texture):
        self.h = np.asarray(heights, np.float64)
        self.x0, self.y0 = origin
        self.g = float(spacing)
        ny, nx = self.h.shape
        self.x1, self.y1 = self.x0 + (nx - 1) * self.g, self.y0 + (ny - 1) * self.g
        self.h_max, self.h_min = float(self.h.max()), float(self.h.min())
        # slope bound of the bilinear surface along a horizontal unit direction: in a cell dh/dx lies
        # between the slopes of its two x edges and dh/dy between those of its two y edges
        dx = np.abs(np.diff(self.h, axis=1))
        dy = np.abs(np.diff(self.h, axis=0))
        sx = np.maximum(dx[:-1], dx[1:])
        sy = np.maximum(dy[:, :-1], dy[:, 1:])
        self.lipschitz = float(np.hypot(sx, sy).max()) / self.g * 1.001
        self.texture = texture

    def height(self, x: np.ndarray, y: np.ndarray, grad: bool = False):
        """Heights ``(N,)`` at ``x, y`` (clamped to the grid), and with ``grad`` also ``dh/dx, dh/dy``."""
        ny, nx = self.h.shape
        gx = np.clip((x - self.x0) / self.g, 0.0, nx - 1 - 1e-9)
        gy = np.clip((y - self.y0) / self.g, 0.0, ny - 1 - 1e-9)
        ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
        fx, fy = gx - ix, gy - iy
        flat = self.h.reshape(-1)
        k = iy * nx + ix
        h00, h01, h10, h11 = flat[k], flat[k + 1], flat[k + nx], flat[k + nx + 1]
        top = h00 + (h01 - h00) * fx
        bottom = h10 + (h11 - h10) * fx
        z = top + (bottom - top) * fy
        if not grad:
            return z
        dzdx = ((h01 - h00) * (1 - fy) + (h11 - h10) * fy) / self.g
        dzdy = (bottom - top) / self.g
        return z, dzdx, dzdy

    def intersect(self, o, d, max_steps: int = 400, tol: float = 0.02):
        shape = d.shape[:-1]
        dd = d.reshape(-1, 3)
        oo = np.broadcast_to(o, d.shape).reshape(-1, 3)
        t_out = np.full(len(dd), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_entry = np.where(oo[:, 2] > self.h_max, (self.h_max - oo[:, 2]) / dd[:, 2], 0.0)
        # from above the highest point only falling rays can hit
        idx = np.flatnonzero((dd[:, 2] < 0) | (oo[:, 2] <= self.h_max))
        horiz = np.hypot(dd[idx, 0], dd[idx, 1])
        denom = self.lipschitz * horiz - dd[idx, 2]
        keep = denom > 0  # a ray rising faster than any slope never meets the terrain
        idx, denom = idx[keep], denom[keep]
        ox, oy, oz = oo[idx, 0], oo[idx, 1], oo[idx, 2]
        dx, dy, dz = dd[idx, 0], dd[idx, 1], dd[idx, 2]
        t = t_entry[idx]
        for _ in range(max_steps):
            if idx.size == 0:
                break
            px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
            inside = (px >= self.x0) & (px <= self.x1) & (py >= self.y0) & (py <= self.y1)
            gap = pz - self.height(px, py)
            done = inside & (gap < tol)
            if done.any():  # Newton steps on f(t) = z(t) - h(x(t), y(t)) from just above the surface
                td = t[done]
                for _ in range(4):
                    qx, qy = ox[done] + td * dx[done], oy[done] + td * dy[done]
                    z, hx, hy = self.height(qx, qy, grad=True)
                    slope = dz[done] - hx * dx[done] - hy * dy[done]
                    f = oz[done] + td * dz[done] - z
                    step = np.where(slope < -1e-9, f / np.minimum(slope, -1e-9), 0.0)
                    td = td - np.clip(step, -4 * tol / denom[done], 4 * tol / denom[done])
                t_out[idx[done]] = td
            # alive: inside the grid, not done, and not above the highest point on the way up
            alive = inside & ~done & ~((pz > self.h_max) & (dz >= 0))
            idx, t, denom, gap = idx[alive], t[alive], denom[alive], gap[alive]
            ox, oy, oz, dx, dy, dz = ox[alive], oy[alive], oz[alive], dx[alive], dy[alive], dz[alive]
            t = t + np.maximum(gap, tol) / denom
        return t_out.reshape(shape)

    def shade(self, p):
        _, hx, hy = self.height(p[:, 0], p[:, 1], grad=True)
        n = np.stack([-hx, -hy, np.ones_like(hx)], 1)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return n, self.texture.sample(p[:, 0] - self.x0, p[:, 1] - self.y0)


# =========================================================================== scenes

@dataclass
class Scene:
    """Primitives plus what the ``real`` look needs (light, sky, haze)."""
    kind: str
    primitives: List[Primitive]
    light_pos: Optional[np.ndarray] = None  # point light (indoor)
    sun_dir: Optional[np.ndarray] = None  # unit direction towards the sun (outdoor)
    sky: Tuple[Tuple[float, float, float], Tuple[float, float, float]] = ((0.55, 0.7, 0.9), (0.85, 0.9, 0.95))
    haze: float = 0.0  # extinction per metre of the real look's aerial perspective
    info: Dict = field(default_factory=dict)


def _texel_for(width: int, base: float) -> float:
    """Texel size that resolves what a ``width``-pixel camera can see (coarser for tiny renders)."""
    return float(min(base * 4, max(base, base * 640.0 / width)))


ROOM_LO = (-3.0, -2.5, 0.0)
ROOM_HI = (3.0, 2.5, 3.0)


def build_indoor_scene(seed: int = 0, width: int = 640) -> Scene:
    """A 6 x 5 x 3 m room (origin at the floor centre, z up) with textured walls and objects near the walls."""
    rng = np.random.default_rng([seed, 101])
    texel = _texel_for(width, 0.005)
    lo, hi = np.array(ROOM_LO), np.array(ROOM_HI)
    size = hi - lo
    wall_styles = list(rng.permutation(["bricks", "wallpaper", "plaster", "tiles"]))
    room_tex = []
    for f in range(4):  # -x, +x, -y, +y walls: (u, v) = (y or x, z)
        u_len = size[1] if f < 2 else size[0]
        room_tex.append(make_texture(rng, wall_styles[f], u_len, size[2], texel,
                                     posters=int(rng.integers(1, 4))))
    room_tex.append(make_texture(rng, "planks", size[0], size[1], texel))  # floor
    room_tex.append(make_texture(rng, "plaster", size[0], size[1], texel, posters=2))  # ceiling
    prims: List[Primitive] = [Room(lo, hi, room_tex)]

    # Objects stand in a band along the walls, clear of the camera paths (|x| < 1.35, |y| < 0.95).
    footprints: List[Tuple[float, float, float]] = []

    def place(radius: float) -> Tuple[float, float]:
        for _ in range(500):
            side = int(rng.integers(4))
            along = (lo[1], hi[1]) if side < 2 else (lo[0], hi[0])
            band = (1.8 + radius, hi[0] - radius - 0.02) if side < 2 else (1.45 + radius, hi[1] - radius - 0.02)
            if band[0] > band[1]:
                continue
            across = (1 if side % 2 else -1) * rng.uniform(*band)
            other = rng.uniform(along[0] + radius + 0.02, along[1] - radius - 0.02)
            x, y = (across, other) if side < 2 else (other, across)
            if (abs(x) - radius >= 1.8 or abs(y) - radius >= 1.45) and \
                    all(math.hypot(x - fx, y - fy) > radius + fr + 0.05 for fx, fy, fr in footprints):
                footprints.append((x, y, radius))
                return x, y
        raise RuntimeError("could not place an object in the room")  # pragma: no cover

    obj_styles = ["planks", "marble", "tiles", "plaster", "wallpaper", "bricks", "art"]
    for k in range(4):  # boxes: cabinets, crates, a shelf
        half = np.array([rng.uniform(0.2, 0.4), rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.9)])
        radius = float(np.hypot(half[0], half[1]))
        x, y = place(radius)
        yaw = rng.uniform(-0.6, 0.6)
        texs = []
        for f in range(6):
            a, b = _FACE_UV_AXES[f // 2]
            texs.append(make_texture(rng, obj_styles[(k + f) % len(obj_styles)], 2 * half[a], 2 * half[b],
                                     texel, colour_cell=0.3))
        prims.append(Box((x, y, half[2]), half, yaw, texs))
    for k in range(2):  # spheres resting on the floor
        r = rng.uniform(0.2, 0.35)
        x, y = place(r)
        prims.append(Sphere((x, y, r), r, make_texture(rng, ["marble", "art"][k], 2 * np.pi * r, np.pi * r,
                                                        texel, wrap_u=True, colour_cell=0.2)))
    for k in range(2):  # barrels / a column
        r, h = rng.uniform(0.15, 0.3), rng.uniform(0.6, 1.6) if k == 0 else hi[2]
        x, y = place(r)
        texs = [make_texture(rng, ["wallpaper", "bricks"][k], 2 * np.pi * r, h, texel, wrap_u=True, colour_cell=0.3),
                make_texture(rng, "marble", 2 * r, 2 * r, texel, colour_cell=0.2),
                make_texture(rng, "plaster", 2 * r, 2 * r, texel, colour_cell=0.2)]
        prims.append(Cylinder((x, y, 0.0), r, h, texs))
    light = np.array([rng.uniform(-1.5, 1.5), rng.uniform(-1.2, 1.2), 2.8])
    return Scene("indoor", prims, light_pos=light, info={"room_lo": ROOM_LO, "room_hi": ROOM_HI})


TERRAIN_HALF = 300.0  # the terrain grid spans +-300 m; buildings and cameras stay within +-150 m


def build_outdoor_scene(seed: int = 0, width: int = 640) -> Scene:
    """Hilly terrain (~300 m wide core, z up, metres) with fields, roads, forest patches and buildings."""
    rng = np.random.default_rng([seed, 202])
    spacing = 1.0
    n = int(2 * TERRAIN_HALF / spacing) + 1
    axis = np.arange(n) * spacing
    span = 2 * TERRAIN_HALF
    hills = fbm(rng, axis, axis, span, span, 160.0, 4, gain=0.35)
    heights = ((hills - hills.mean()) * 70.0).astype(np.float32)
    X, Y = np.meshgrid(axis - TERRAIN_HALF, axis - TERRAIN_HALF)
    village = np.exp(-(X ** 2 + Y ** 2) / (2 * 70.0 ** 2))  # flatten the village in the middle
    heights = heights * (1 - 0.8 * village)

    texel = _texel_for(width, 0.3)
    u, v = _grid(span, span, texel)
    U, V = u[None, :] - TERRAIN_HALF, v[:, None] - TERRAIN_HALF
    hgt = _interp_grid(heights, u, v, spacing)
    h_norm = (hgt - heights.min()) / (np.ptp(heights) + 1e-9)
    grass, rock = np.array([0.33, 0.5, 0.2], np.float32), np.array([0.5, 0.45, 0.38], np.float32)
    img = _mix(grass, rock, np.clip((h_norm - 0.55) * 2.5, 0, 1))
    # patchwork fields: rotated parcels with crop colours and furrows of their own direction
    ang = rng.uniform(0, np.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    warp = (fbm(rng, u, v, span, span, 40.0, 2) - 0.5) * 30.0
    pu, pv = ca * U + sa * V + warp, -sa * U + ca * V
    psize = rng.uniform(35, 55)
    iu, iv = np.floor(pu / psize).astype(np.int64), np.floor(pv / (psize * 0.7)).astype(np.int64)
    pid = iu * 7919 + iv
    salt = int(rng.integers(1 << 31))
    crops = np.array([[0.75, 0.68, 0.35], [0.45, 0.6, 0.25], [0.5, 0.38, 0.25], [0.62, 0.7, 0.3],
                      [0.35, 0.45, 0.2], [0.8, 0.75, 0.5]], np.float32)
    crop = crops[(_hash01(pid, salt) * len(crops)).astype(np.int64)]
    furrow_dir = _hash01(pid, salt + 1) * np.pi
    furrows = 0.85 + 0.15 * np.sin((np.cos(furrow_dir) * U + np.sin(furrow_dir) * V) * 2.0)
    is_field = (_hash01(pid, salt + 2) < 0.7) & (h_norm < 0.6)
    img = np.where(is_field[..., None], crop * furrows[..., None], img)
    forest = fbm(rng, u, v, span, span, 30.0, 4)
    img = np.where((forest > 0.62)[..., None], _mix(np.array([0.12, 0.25, 0.1]), np.array([0.2, 0.35, 0.15]),
                                                    fbm(rng, u, v, span, span, 2.0, 2)), img)
    # roads: a few smooth curves
    for k in range(3):
        a0, amp, freq, ph = rng.uniform(0, np.pi), rng.uniform(10, 40), rng.uniform(0.005, 0.02), rng.uniform(0, 6.3)
        c0, s0 = math.cos(a0), math.sin(a0)
        along, across = c0 * U + s0 * V, -s0 * U + c0 * V
        road = np.abs(across - amp * np.sin(along * freq + ph)) < 3.0
        img = np.where(road[..., None], np.array([0.42, 0.41, 0.4], np.float32), img)
    colour = np.stack([fbm(rng, u, v, span, span, 25.0, 3) for _ in range(3)], -1)
    img = img * (0.75 + 0.5 * colour) * (0.85 + 0.3 * fbm(rng, u, v, span, span, 1.0, 3))[..., None]
    terrain = Heightfield(heights, (-TERRAIN_HALF, -TERRAIN_HALF), spacing,
                          Texture(np.clip(img, 0, 1).astype(np.float32), texel))
    prims: List[Primitive] = [terrain]

    btexel = _texel_for(width, 0.15)
    footprints: List[Tuple[float, float, float]] = []
    for k in range(18):
        for _ in range(200):
            r_pos, a_pos = 110 * math.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            x, y = r_pos * math.cos(a_pos), r_pos * math.sin(a_pos)
            half = np.array([rng.uniform(4, 12), rng.uniform(4, 9), rng.uniform(3, 12)])
            rad = float(np.hypot(half[0], half[1]))
            if all(math.hypot(x - fx, y - fy) > rad + fr + 4 for fx, fy, fr in footprints):
                break
        footprints.append((x, y, rad))
        # from 1 m under the lowest ground of the footprint to `height` above the ground at its centre
        ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ground = terrain.height(np.append(x + rad * np.cos(ring), x), np.append(y + rad * np.sin(ring), y))
        z_bottom, z_top = float(ground.min()) - 1.0, float(ground[-1]) + 2 * half[2]
        half[2] = (z_top - z_bottom) / 2
        zc = (z_top + z_bottom) / 2
        texs = []
        for f in range(6):
            a, b = _FACE_UV_AXES[f // 2]
            style = "roof" if f == 5 else "facade"
            texs.append(make_texture(rng, style, 2 * half[a], 2 * half[b], btexel, colour_cell=6.0, detail_cell=0.3))
        prims.append(Box((x, y, zc), half, rng.uniform(0, np.pi), texs))
    sun = np.array([math.cos(0.8) * math.cos(0.6), math.sin(0.8) * math.cos(0.6), math.sin(0.6)])
    return Scene("outdoor", prims, sun_dir=sun, haze=0.0025, info={"terrain_half": TERRAIN_HALF})


def _interp_grid(grid: np.ndarray, u: np.ndarray, v: np.ndarray, spacing: float) -> np.ndarray:
    """Bilinear resampling of ``grid`` (spacing metres, origin 0) at the grid of ``u (W,) x v (H,)`` -> ``(H, W)``."""
    ny, nx = grid.shape
    gu = np.clip(u / spacing, 0, nx - 1 - 1e-9)
    gv = np.clip(v / spacing, 0, ny - 1 - 1e-9)
    iu, iv = np.floor(gu).astype(np.int64), np.floor(gv).astype(np.int64)
    fu, fv = (gu - iu).astype(np.float32), (gv - iv).astype(np.float32)[:, None]
    rows = grid[:, iu] * (1 - fu) + grid[:, iu + 1] * fu
    return (rows[iv] * (1 - fv) + rows[iv + 1] * fv).astype(np.float32)


def build_scene(kind: str = "indoor", seed: int = 0, width: int = 640) -> Scene:
    """The procedural scene ``kind`` (``indoor`` or ``outdoor``) for ``seed``; textures sized for ``width``."""
    if kind == "indoor":
        return build_indoor_scene(seed, width)
    if kind == "outdoor":
        return build_outdoor_scene(seed, width)
    raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got '{kind}'")


# =========================================================================== cameras

def look_at(eye: Sequence[float], target: Sequence[float], roll_deg: float = 0.0,
            up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 camera-to-world pose of an OpenCV camera at ``eye`` looking at ``target`` (world z up),
    then rolled by ``roll_deg`` about its viewing axis."""
    eye, target, up = (np.asarray(a, float) for a in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd], axis=1)
    R = R @ geometry.rvec_to_rotmat([0.0, 0.0, math.radians(roll_deg)])
    return geometry.make_pose(R, eye)


def _direction(yaw: float, pitch: float) -> np.ndarray:
    return np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])


def trajectory(kind: str, path: str, n: int, seed: int = 0, scene: Optional[Scene] = None) -> np.ndarray:
    """Smooth camera path ``(n, 4, 4)`` camera-to-world.

    ``path`` is ``train`` or ``test``: different loops (radius, height, phase, direction) whose views
    overlap. Indoor: loops inside the free middle of the room looking out at the walls and objects,
    pitch -25..+10 degrees, roll within 4 degrees. Outdoor: a drone 35-80 m above the ground looking
    obliquely down at the village (``scene`` supplies the terrain height).
    """
    if path not in ("train", "test"):
        raise ValueError(f"path: expected 'train' or 'test', got '{path}'")
    rng = np.random.default_rng([seed, 303, 0 if path == "train" else 1])
    phase = rng.uniform(0, 2 * np.pi)
    s = np.arange(n) / max(n, 1)
    poses = np.empty((n, 4, 4))
    if kind == "indoor":
        for k, sk in enumerate(s):
            if path == "train":  # two loops, the first low, the second high
                th = phase + 4 * np.pi * sk
                a, b = 1.2 + 0.15 * math.sin(3 * th), 0.85 + 0.1 * math.cos(2 * th)
                z = 1.25 + 0.45 * sk * 2 if sk < 0.5 else 1.7 - 0.2 * (sk - 0.5)
                yaw = th + 0.5 + 1.3 * math.sin(2 * np.pi * 5 * sk)  # from the wall ahead to across the room
                pitch = math.radians(-8 + 14 * math.sin(2 * np.pi * 3 * sk + 1.0))
            else:  # one smaller loop the other way round, at a middle height
                th = phase - 2 * np.pi * sk
                a, b = 0.8 + 0.15 * math.cos(2 * th), 0.6 + 0.1 * math.sin(3 * th)
                z = 1.45 + 0.15 * math.sin(4 * th)
                yaw = th - 0.4 - 1.1 * math.sin(2 * np.pi * 4 * sk)
                pitch = math.radians(-10 + 12 * math.sin(2 * np.pi * 2 * sk))
            eye = np.array([a * math.cos(th), b * math.sin(th), z])
            roll = 3.0 * math.sin(2 * np.pi * 7 * sk + phase)
            poses[k] = look_at(eye, eye + _direction(yaw, pitch), roll)
        return poses
    if kind == "outdoor":
        if scene is None:
            raise ValueError("trajectory: the outdoor path needs the scene (for the terrain height)")
        terrain = next(p for p in scene.primitives if isinstance(p, Heightfield))
        for k, sk in enumerate(s):
            if path == "train":
                th = phase + 2 * np.pi * sk
                radius, alt = 105 + 15 * math.sin(3 * th), 55 + 20 * math.sin(2 * th)
                look = 1.0
            else:
                th = phase - 2 * np.pi * sk
                radius, alt = 80 + 10 * math.cos(2 * th), 45 + 10 * math.sin(3 * th)
                look = 1.15
            eye = np.array([radius * math.cos(th), radius * math.sin(th), 0.0])
            eye[2] = float(terrain.height(eye[:1], eye[1:2])[0]) + alt
            # look inwards and down at ~40-50 degrees, swinging sideways along the path
            swing = 0.5 * alt * math.sin(2 * np.pi * 3 * sk)
            inward = -np.array([math.cos(th), math.sin(th)])
            tgt = eye[:2] + alt * look * inward + swing * np.array([-math.sin(th), math.cos(th)])
            target = np.array([tgt[0], tgt[1], float(terrain.height(tgt[:1], tgt[1:2])[0])])
            poses[k] = look_at(eye, target, 2.0 * math.sin(2 * np.pi * 5 * sk))
        return poses
    raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got '{kind}'")


def jitter_pose(T_c2w: np.ndarray, rng: np.random.Generator, shift: float, angle_deg: float) -> np.ndarray:
    """A pose near ``T_c2w``: centre moved by ~``shift`` metres, turned by ~``angle_deg`` degrees."""
    R = T_c2w[:3, :3] @ geometry.rvec_to_rotmat(rng.normal(size=3) * math.radians(angle_deg) / math.sqrt(3))
    t = T_c2w[:3, 3] + rng.normal(size=3) * shift / math.sqrt(3)
    return geometry.make_pose(R, t)


def intrinsics(width: int, height: int) -> np.ndarray:
    """3x3 K of the synthetic camera: focal ``525 * width / 640``, principal point at the centre."""
    return geometry.intrinsics_from_focal(FOCAL_AT_640 * width / 640.0, width, height)


# =========================================================================== rendering

def _screen_rect(centre: np.ndarray, radius: float, T_c2w: np.ndarray, K: np.ndarray, width: int,
                 height: int) -> Optional[Tuple[int, int, int, int]]:
    """Pixel rectangle ``(x0, x1, y0, y1)`` that contains the projection of a sphere (None = off screen)."""
    c = (centre - T_c2w[:3, 3]) @ T_c2w[:3, :3]
    if c[2] - radius < 1e-2:  # reaches behind the camera: test every pixel
        return (0, width, 0, height) if c[2] + radius > 0 else None
    corners = c + radius * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    u = K[0, 0] * corners[:, 0] / corners[:, 2] + K[0, 2]
    v = K[1, 1] * corners[:, 1] / corners[:, 2] + K[1, 2]
    x0, x1 = max(0, int(np.floor(u.min())) - 1), min(width, int(np.ceil(u.max())) + 2)
    y0, y1 = max(0, int(np.floor(v.min())) - 1), min(height, int(np.ceil(v.max())) + 2)
    return (x0, x1, y0, y1) if x0 < x1 and y0 < y1 else None


def cast(scene: Scene, T_c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> Dict[str, np.ndarray]:
    """Exact geometry and albedo of one view.

    Returns a dict of ``depth (H, W)`` float64 metres (0 = nothing hit), ``points (H, W, 3)`` world
    coordinates (0 = nothing hit), ``normals (H, W, 3)`` world unit normals (0 = nothing hit),
    ``albedo (H, W, 3)`` float32 in [0, 1] (sky colour where nothing is hit), ``hit (H, W)`` bool and
    ``ray (H, W, 3)`` the world ray directions scaled to camera depth 1.
    """
    K = geometry.check_intrinsics(K, "K")
    T_c2w = geometry.check_rigid(T_c2w, "T_c2w")
    xs = (np.arange(width) - K[0, 2]) / K[0, 0]
    ys = (np.arange(height) - K[1, 2]) / K[1, 1]
    d_cam = np.empty((height, width, 3))
    d_cam[..., 0] = xs[None, :]
    d_cam[..., 1] = ys[:, None]
    d_cam[..., 2] = 1.0
    R, o = T_c2w[:3, :3], T_c2w[:3, 3]
    d = d_cam @ R.T
    t_best = np.full((height, width), np.inf)
    owner = np.full((height, width), -1, np.int16)
    for k, prim in enumerate(scene.primitives):
        bound = prim.bounding_sphere()
        rect = (0, width, 0, height) if bound is None else _screen_rect(bound[0], bound[1], T_c2w, K, width, height)
        if rect is None:
            continue
        x0, x1, y0, y1 = rect
        t = prim.intersect(o, d[y0:y1, x0:x1])
        block = t_best[y0:y1, x0:x1]
        closer = t < block
        block[closer] = t[closer]
        owner[y0:y1, x0:x1][closer] = k
    hit = owner >= 0
    points = np.zeros((height, width, 3))
    normals = np.zeros((height, width, 3))
    albedo = np.empty((height, width, 3), np.float32)
    flat_owner = owner.reshape(-1)
    flat_t = t_best.reshape(-1)
    flat_d = d.reshape(-1, 3)
    for k, prim in enumerate(scene.primitives):
        idx = np.flatnonzero(flat_owner == k)
        if idx.size == 0:
            continue
        p = o + flat_t[idx, None] * flat_d[idx]
        n, a = prim.shade(p)
        points.reshape(-1, 3)[idx] = p
        normals.reshape(-1, 3)[idx] = n
        albedo.reshape(-1, 3)[idx] = a
    if not hit.all():
        up = np.clip(-d_cam[..., 1] / np.linalg.norm(d_cam, axis=-1) + 0.5, 0, 1)  # lighter towards the horizon
        sky = _mix(scene.sky[1], scene.sky[0], up.astype(np.float32))
        albedo[~hit] = sky[~hit]
    depth = np.where(hit, t_best, 0.0)
    return {"depth": depth, "points": points, "normals": normals, "albedo": albedo, "hit": hit, "ray": d}


def _shadowed(scene: Scene, p: np.ndarray, to_light: np.ndarray, max_t: np.ndarray) -> np.ndarray:
    """True where the segment from points ``p (N, 3)`` along ``to_light (N, 3)`` meets an occluder before ``max_t (N,)``."""
    blocked = np.zeros(len(p), bool)
    for prim in scene.primitives:
        if not prim.casts_shadow:
            continue
        centre, radius = prim.bounding_sphere()
        # only rays that pass the bounding sphere ahead of their start can be blocked (unit directions)
        w = centre - p
        along = np.einsum("ij,ij->i", w, to_light)
        near = (along > -radius) & (np.einsum("ij,ij->i", w, w) - along ** 2 < radius ** 2)
        idx = np.flatnonzero(near & ~blocked)
        if idx.size:
            blocked[idx] |= prim.intersect(p[idx], to_light[idx]) < max_t[idx]
    return blocked


def apply_real_look(scene: Scene, geo: Dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The ``real`` look of a cast view: lighting with cast shadows, haze, exposure, white balance,
    vignetting, blur and sensor noise -> uint8 ``(H, W, 3)``. ``rng`` draws this frame's camera effects."""
    from scipy.ndimage import gaussian_filter

    albedo, hit, normals, points = geo["albedo"], geo["hit"], geo["normals"], geo["points"]
    H, W = hit.shape
    light = np.ones((H, W), np.float32)
    idx = np.flatnonzero(hit.reshape(-1))
    p = points.reshape(-1, 3)[idx]
    n = normals.reshape(-1, 3)[idx]
    p_off = p + 1e-4 * n * (1.0 if scene.kind == "indoor" else 100.0)  # leave the surface before casting
    if scene.light_pos is not None:
        to_l = scene.light_pos - p_off
        dist = np.linalg.norm(to_l, axis=1)
        l_dir = to_l / dist[:, None]
        lambert = np.clip(np.einsum("ij,ij->i", n, l_dir), 0, None)
        shadow = _shadowed(scene, p_off, l_dir, dist)
        direct = lambert * np.where(shadow, 0.0, 1.0) * 6.0 / (1.0 + dist ** 2)
        fill = 0.25 + 0.15 * n[:, 2]  # light bounced from the ceiling and walls
        lit = 0.35 * fill + direct
    else:
        sun = scene.sun_dir
        lambert = np.clip(n @ sun, 0, None)
        shadow = _shadowed(scene, p_off, np.broadcast_to(sun, p.shape).copy(), np.full(len(p), np.inf))
        lit = 0.25 + 0.15 * n[:, 2] + 0.9 * lambert * np.where(shadow, 0.0, 1.0)
    light.reshape(-1)[idx] = lit
    img = albedo * light[..., None]
    if scene.haze > 0:
        fog = np.exp(-scene.haze * geo["depth"])[..., None].astype(np.float32)
        haze_colour = np.asarray(scene.sky[1], np.float32)
        img = np.where(hit[..., None], img * fog + haze_colour * (1 - fog), img)
    # camera: exposure and white balance per frame, vignetting, lens blur, sensor noise, tone curve
    exposure = rng.uniform(0.7, 1.35)
    white = np.array([rng.uniform(0.85, 1.15), 1.0, rng.uniform(0.8, 1.15)], np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
    vignette = 1.0 - rng.uniform(0.15, 0.35) * r2 / 2
    img = img * (exposure * white)[None, None, :] * vignette[..., None]
    sigma = rng.uniform(0.5, 1.2) * W / 640.0
    img = gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")
    img = np.clip(img, 0, None)
    shot = rng.standard_normal(img.shape, dtype=np.float32) * np.sqrt(img * 0.0004 + 0.00005)
    img = img + shot
    img = 1.0 - np.exp(-1.6 * np.clip(img, 0, None))  # soft highlight roll-off of a camera response
    img = img / (1.0 - math.exp(-1.6))
    tint = np.array([rng.uniform(-0.02, 0.03), rng.uniform(-0.01, 0.02), rng.uniform(-0.03, 0.02)], np.float32)
    return np.clip(np.round((img + tint) * 255.0), 0, 255).astype(np.uint8)


def render_view(scene: Scene, T_c2w: np.ndarray, K: np.ndarray, width: int, height: int, look: str = "sim",
                rng: Optional[np.random.Generator] = None) -> Dict[str, np.ndarray]:
    """Render one view: :func:`cast` plus ``rgb`` uint8 ``(H, W, 3)`` in the ``sim`` or ``real`` look."""
    geo = cast(scene, T_c2w, K, width, height)
    if look == "sim":
        geo["rgb"] = np.clip(np.round(geo["albedo"] * 255.0), 0, 255).astype(np.uint8)
    elif look == "real":
        geo["rgb"] = apply_real_look(scene, geo, rng if rng is not None else np.random.default_rng(0))
    else:
        raise ValueError(f"look: expected 'sim' or 'real', got '{look}'")
    return geo


def cells(array: np.ndarray, stride: int = 8) -> np.ndarray:
    """Per-pixel map ``(H, W, C)`` sampled at the cell centres -> ``(C, H/stride, W/stride)`` float32."""
    half = stride // 2
    return np.ascontiguousarray(np.moveaxis(array[half::stride, half::stride], -1, 0)).astype(np.float32)


# =========================================================================== scene folders

def frame_counts(frames: int) -> Dict[str, int]:
    """Frames per section for ``frames`` sim frames: 3/4 train, 1/4 test, a real frame for every 10th
    train frame and for every test frame."""
    if frames < 2:
        raise ValueError(f"frames: need at least 2 (one train, one test), got {frames}")
    n_test = max(1, frames // 4)
    n_train = frames - n_test
    return {"train_sim": n_train, "test_sim": n_test,
            "train_real": len(range(0, n_train, REAL_TRAIN_EVERY)), "test_real": n_test}


def _frame_jobs(kind: str, frames: int, seed: int, scene: Scene) -> List[Tuple[str, str, np.ndarray, int]]:
    """(section, key, pose, index) of every frame of a scene, in writing order."""
    counts = frame_counts(frames)
    poses = {"train": trajectory(kind, "train", counts["train_sim"], seed, scene),
             "test": trajectory(kind, "test", counts["test_sim"], seed, scene)}
    shift, angle = (0.05, 2.0) if kind == "indoor" else (2.0, 1.5)
    jobs = []
    for path in ("train", "test"):
        for k, T in enumerate(poses[path]):
            jobs.append((f"{path}_sim", f"frame-{k:06d}", T, k))
        rng = np.random.default_rng([seed, 404, 0 if path == "train" else 1])
        step = REAL_TRAIN_EVERY if path == "train" else 1
        for k in range(0, len(poses[path]), step):
            jobs.append((f"{path}_real", f"frame-{k:06d}", jitter_pose(poses[path][k], rng, shift, angle), k))
    return jobs


def _render_job(scene: Scene, job, kind: str, width: int, height: int, seed: int, out: Path) -> None:
    section, key, T, k = job
    K = intrinsics(width, height)
    look = "real" if section.endswith("_real") else "sim"
    rng = np.random.default_rng([seed, 505, SECTIONS.index(section), k])
    view = render_view(scene, T, K, width, height, look, rng)
    # outdoor depths exceed the 65.5 m of a uint16 mm PNG: float32 metres there
    layout.write_frame(out, section, key, rgb=view["rgb"], pose=T, K=float(K[0, 0]), depth=view["depth"],
                       init=cells(view["points"]), normal=cells(view["normals"]),
                       depth_ext=".png" if kind == "indoor" else ".npy")


_WORKER_STATE: Optional[tuple] = None  # (scene, kind, width, height, seed, out) inherited by forked workers


def _render_in_worker(job) -> str:
    scene, kind, width, height, seed, out = _WORKER_STATE
    _render_job(scene, job, kind, width, height, seed, out)
    return job[1]


def _render_all(scene: Scene, jobs: list, kind: str, width: int, height: int, seed: int, out: Path,
                workers: int, progress: bool) -> None:
    """Render ``jobs`` into ``out``, in ``workers`` forked processes when more than one (same bytes either way:
    every frame draws from its own seeded generator)."""
    global _WORKER_STATE
    from tqdm import tqdm

    import multiprocessing

    bar = tqdm(total=len(jobs), desc=f"synthetic_{kind}", unit="frame", disable=not progress, file=sys.stderr)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        _WORKER_STATE = (scene, kind, width, height, seed, out)
        try:  # fork: the workers inherit the scene's textures instead of rebuilding them
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_in_worker, jobs, chunksize=2):
                    bar.update()
        finally:
            _WORKER_STATE = None
    else:
        for job in jobs:
            _render_job(scene, job, kind, width, height, seed, out)
            bar.update()
    bar.close()


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or value < 16 or value % 8:
            raise ValueError(f"{name}: must be a multiple of 8 and at least 16 (cells are 8x8 pixels), got {value}")


def _remove_stale_partials(out: Path) -> None:
    """Delete temporary folders of ``out`` left by renders that were killed (their process is gone)."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 1)[1]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass  # not ours to judge: leave it


def default_workers() -> int:
    """Rendering processes by default: 2, or 1 on a single core."""
    return min(2, os.cpu_count() or 1)


def render_scene(out_dir: PathLike, kind: str = "indoor", frames: int = DEFAULT_FRAMES, width: int = DEFAULT_WIDTH,
                 height: int = DEFAULT_HEIGHT, seed: int = 0, force: bool = False, progress: bool = True,
                 workers: int = 1) -> Path:
    """Render a procedural scene folder at ``out_dir`` (sections train_sim, test_sim, train_real, test_real).

    The frames go to a temporary folder beside ``out_dir`` that is renamed at the end, so a partial
    output never looks complete. An existing ``out_dir`` is replaced only with ``force``. ``frames``
    sim frames are split 3:1 into train and test (see :func:`frame_counts`); ``workers > 1`` renders
    in that many forked processes (same bytes as one).

    Returns:
        ``out_dir`` as a Path.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got '{kind}'")
    _check_size(width, height)
    out = Path(out_dir)
    if out.exists() and not force:
        state = "a complete scene" if layout.is_complete(out) else "a folder that is not a complete scene"
        raise FileExistsError(f"{out} already holds {state}; pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    start = time.perf_counter()
    scene = build_scene(kind, seed, width)
    build_s = time.perf_counter() - start
    jobs = _frame_jobs(kind, frames, seed, scene)
    try:
        start = time.perf_counter()
        _render_all(scene, jobs, kind, width, height, seed, tmp, workers, progress)
        render_s = time.perf_counter() - start
        info = {"generator": "transpose.data.synthetic", "kind": kind, "seed": seed, "width": width,
                "height": height, "frames": frame_counts(frames), "focal": FOCAL_AT_640 * width / 640.0,
                "workers": workers, "scene_build_s": round(build_s, 2),
                "render_s_per_frame": round(render_s / len(jobs), 4)}
        layout.mark_complete(tmp, info)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# =========================================================================== figure

def make_sim_vs_real_figure(path: PathLike, width: int = 640, height: int = 480, seed: int = 0,
                            outdoor: bool = True) -> Path:
    """Save the README figure: one indoor view in the sim and real looks side by side (and an outdoor pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for kind in ("indoor", "outdoor") if outdoor else ("indoor",):
        scene = build_scene(kind, seed, width)
        K = intrinsics(width, height)
        # show the test view (of 16) in which the most primitives are visible, found at 1/8 size
        poses = trajectory(kind, "test", 16, seed, scene)
        k_small = intrinsics(width // 8, height // 8)
        seen = [len(np.unique(np.round(cast(scene, T, k_small, width // 8, height // 8)["normals"], 2), axis=0))
                for T in poses]
        T = poses[int(np.argmax(seen))]
        sim = render_view(scene, T, K, width, height, "sim")["rgb"]
        real = render_view(scene, T, K, width, height, "real", np.random.default_rng(seed))["rgb"]
        rows.append((kind, sim, real))
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.9 * len(rows)), squeeze=False)
    for r, (kind, sim, real) in enumerate(rows):
        for c, (img, look) in enumerate(((sim, "sim"), (real, "real"))):
            axes[r, c].imshow(img)
            axes[r, c].set_title(f"{kind}: {look}")
            axes[r, c].axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)
    return path


# =========================================================================== command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="setup_synthetic.py",
        description="Render the built-in procedural scenes (indoor room, outdoor drone flight) as scene folders "
                    "with sections train_sim, test_sim, train_real, test_real.")
    p.add_argument("--out", default="datasets", help="folder that receives synthetic_<kind>/ (default: datasets)")
    p.add_argument("--kind", default="indoor", choices=KINDS + ("all",), help="scene to render (default: indoor)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"sim frames (3/4 train, 1/4 test; default {DEFAULT_FRAMES}, 20 with --tiny)")
    p.add_argument("--width", type=int, default=None,
                   help=f"image width, multiple of 8 (default {DEFAULT_WIDTH}, 160 with --tiny)")
    p.add_argument("--height", type=int, default=None,
                   help=f"image height, multiple of 8 (default {DEFAULT_HEIGHT}, 120 with --tiny)")
    p.add_argument("--seed", type=int, default=0, help="scene and trajectory seed (default 0)")
    p.add_argument("--tiny", action="store_true", help="160x120, 20 frames: for tests and quick demos")
    p.add_argument("--force", action="store_true", help="replace an existing scene folder")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="rendering processes (default: 2, or 1 on a single core)")
    p.add_argument("--figure", default=None, metavar="PNG", help="also save the sim-vs-real figure to this file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    frames = args.frames if args.frames is not None else (20 if args.tiny else DEFAULT_FRAMES)
    width = args.width if args.width is not None else (160 if args.tiny else DEFAULT_WIDTH)
    height = args.height if args.height is not None else (120 if args.tiny else DEFAULT_HEIGHT)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    try:
        _check_size(width, height)
        frame_counts(frames)
        for kind in kinds:
            out = Path(args.out) / f"synthetic_{kind}"
            start = time.perf_counter()
            render_scene(out, kind, frames, width, height, args.seed, force=args.force, workers=args.workers)
            print(f"wrote {out} ({kind}, {frames} sim frames at {width}x{height}) in {time.perf_counter() - start:.1f} s")
        if args.figure:
            print(f"wrote {make_sim_vs_real_figure(args.figure, seed=args.seed)}")
    except (ValueError, FileExistsError, OSError) as exc:
        sys.exit(f"setup_synthetic.py: error: {exc}")


if __name__ == "__main__":  # pragma: no cover
    main()
