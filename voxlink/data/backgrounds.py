"""Procedural backgrounds that are not flat colours, so that a silhouette must be learned, not thresholded.

A drone sees its target against the ground, vegetation, roads and clutter. Views are rendered on a
plain colour (the mask is ``depth > 0``), and training composites them, view by view, over one of:

* ``ground``: a textured ground plane in perspective (tiles, stripes or noise) below a horizon, with a
  sky gradient above it;
* ``noise``: fractal value noise between two random colours (grass, gravel, foliage);
* ``clutter``: noise with random rectangles and ellipses (objects, shadows, road markings);
* ``plain``: a flat random colour (3D-R2N2's training backgrounds), a small share.

Everything is deterministic from the NumPy generator that is passed in.
"""

from __future__ import annotations

import numpy as np

KINDS = ("ground", "noise", "clutter", "plain")
_P = (0.4, 0.25, 0.25, 0.1)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise float32 [size, size] in [0, 1]."""
    import cv2

    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    cells = int(rng.integers(2, 6))
    for _ in range(octaves):
        g = rng.random((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
        cells *= 2
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    h = int(rng.uniform(-0.3, 0.55) * size)  # horizon row (may be above the image: looking down)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    sky_a, sky_b = _colour(rng), _colour(rng)
    t = np.clip(ys / max(size, 1), 0, 1)[..., None]
    img[:] = sky_a * (1 - t) + sky_b * t
    below = ys > h
    dist = 1.0 / np.maximum(ys - h, 1.0)  # perspective: rows near the horizon are far away
    scale = rng.uniform(4.0, 30.0)
    u = (xs - size / 2) * dist * scale / size * 8
    w = dist * scale
    tex = int(rng.integers(3))
    if tex == 0:
        pat = ((np.floor(u) + np.floor(w * 4)) % 2).astype(np.float32)
    elif tex == 1:
        pat = (np.sin(u * rng.uniform(1, 6) + w * rng.uniform(0, 6)) > 0).astype(np.float32)
    else:
        pat = _value_noise(rng, size)
    pat = 0.6 * pat + 0.4 * _value_noise(rng, size)
    ca, cb = _colour(rng), _colour(rng)
    ground = ca * (1 - pat[..., None]) + cb * pat[..., None]
    img = np.where(below[..., None], ground, img)
    return img


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    n = _value_noise(rng, size)[..., None]
    return _colour(rng) * (1 - n) + _colour(rng) * n


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(_noise(rng, size).astype(np.float32))
    for _ in range(int(rng.integers(4, 16))):
        c = tuple(float(x) for x in _colour(rng))
        x0, y0 = (int(v) for v in rng.integers(-size // 4, size, size=2))
        w, h = (int(v) for v in rng.integers(size // 16, size // 2, size=2))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), c, -1)
        else:
            cv2.ellipse(img, (x0, y0), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, c, -1)
    return img


def random_background(rng: np.random.Generator, size: int = 128, kind: str | None = None) -> np.ndarray:
    """One background image.

    Args:
        rng: NumPy generator (the only randomness).
        size: side in pixels.
        kind: one of :data:`KINDS`, or ``None`` to draw one (ground 40 %, noise 25 %, clutter 25 %,
            plain 10 %).

    Returns:
        uint8 [size, size, 3] RGB.

    Raises:
        ValueError: unknown kind.
    """
    if kind is None:
        kind = KINDS[int(rng.choice(len(KINDS), p=_P))]
    if kind == "ground":
        img = _ground(rng, size)
    elif kind == "noise":
        img = _noise(rng, size)
    elif kind == "clutter":
        img = _clutter(rng, size)
    elif kind == "plain":
        img = np.broadcast_to(_colour(rng), (size, size, 3))
    else:
        raise ValueError(f"unknown background kind {kind!r}; choose one of {KINDS}")
    img = img + rng.normal(0, rng.uniform(0, 6), size=img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


class BackgroundBank:
    """A bank of pre-drawn backgrounds, served with random flips and channel orders.

    Drawing a background costs about 8 ms on one core, as much per training batch as the network's
    step; the bank draws ``n`` once and serves each with one of 16 flips and channel orders.

    Args:
        n: backgrounds drawn. size: side in pixels. seed: seed of the bank.
    """

    def __init__(self, n: int = 1024, size: int = 128, seed: int = 0):
        rng = np.random.default_rng([seed, 4242])
        self.images = np.stack([random_background(rng, size) for _ in range(n)])

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One background uint8 [size, size, 3] (a view of the bank: do not modify it)."""
        img = self.images[int(rng.integers(len(self.images)))]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
        return img


_BANKS: dict[int, BackgroundBank] = {}


def composite(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator, bank: bool = True) -> np.ndarray:
    """Put every view's object (where ``mask``) over a random background.

    Args:
        rgb: uint8 [V, H, W, 3]. mask: bool [V, H, W]. rng: NumPy generator.
        bank: draw from a per-process :class:`BackgroundBank` (fast) instead of drawing afresh.

    Shape:
        rgb uint8 [V, H, W, 3], mask bool [V, H, W] -> uint8 [V, H, W, 3].
    """
    size = rgb.shape[1]
    if bank and size not in _BANKS:
        _BANKS[size] = BackgroundBank(size=size)
    out = rgb.copy()
    for i in range(len(rgb)):
        bg = _BANKS[size].sample(rng) if bank else random_background(rng, size)
        out[i] = np.where(mask[i][..., None], rgb[i], bg)
    return out
