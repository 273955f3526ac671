"""Read and write ``.binvox`` occupancy grids (Patrick Min's format, as used by ShapeNet and 3D-R2N2).

Format: an ASCII header (``#binvox 1``, ``dim D D D``, ``translate tx ty tz``, ``scale s``,
``data``) then run-length pairs of bytes ``(value, count)`` with ``count`` in 1..255, over the
voxels in x-z-y order (x slowest... as binvox stores it: index = x * D*D + z * D + y).
voxlink grids are indexed ``[x, y, z]`` in memory; this module converts.

Runtime core: NumPy only (no PyTorch, no libigl, nothing of :mod:`voxlink.data`), so the ground
station writes its snapshots' ``.binvox`` without the lab. ``voxlink.data.binvox`` re-exports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxlink.camera import GRID_EXTENT, VOXEL_MIN


class BinvoxError(ValueError):
    """The file is not a valid binvox file; the message says why."""


def write_binvox(path: str | Path, occupancy: np.ndarray, translate: tuple[float, float, float] = (VOXEL_MIN,) * 3,
                 scale: float = GRID_EXTENT) -> None:
    """Write a cubic occupancy grid as ``.binvox``.

    Args:
        path: output file.
        occupancy: bool (or 0/1) [D, D, D] indexed ``[x, y, z]``.
        translate: grid's lower corner in metres.
        scale: grid's edge length in metres.

    Raises:
        ValueError: the grid is not cubic 3D.
    """
    occ = np.asarray(occupancy).astype(bool)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        raise ValueError(f"binvox needs a cubic 3D grid, got shape {occ.shape}")
    d = occ.shape[0]
    flat = occ.transpose(0, 2, 1).reshape(-1)  # binvox order: x, z, y (y fastest)
    out = bytearray()
    i, n = 0, flat.size
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [n]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        val = int(flat[a])
        run = int(b - a)
        while run > 0:
            c = min(run, 255)
            out += bytes((val, c))
            run -= c
        i = b
    header = (f"#binvox 1\ndim {d} {d} {d}\ntranslate {translate[0]:.6f} {translate[1]:.6f} {translate[2]:.6f}\n"
              f"scale {scale:.6f}\ndata\n").encode("ascii")
    Path(path).write_bytes(header + bytes(out))


def read_binvox(path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Read a ``.binvox`` file.

    Returns:
        ``(occupancy, translate, scale)``: bool [D, D, D] indexed ``[x, y, z]``, float64 [3] lower
        corner in metres, and the grid's edge length in metres.

    Raises:
        FileNotFoundError: no such file.
        BinvoxError: bad header, wrong run lengths, or truncated data.
    """
    raw = Path(path).read_bytes()
    pos = raw.find(b"data\n")
    if not raw.startswith(b"#binvox") or pos < 0:
        raise BinvoxError(f"{path}: not a binvox file (missing '#binvox' or 'data' line)")
    dims = translate = scale = None
    for line in raw[:pos].decode("ascii", "replace").splitlines()[1:]:
        k, *v = line.split()
        if k == "dim":
            dims = tuple(int(x) for x in v)
        elif k == "translate":
            translate = np.array([float(x) for x in v])
        elif k == "scale":
            scale = float(v[0])
    if dims is None or len(dims) != 3:
        raise BinvoxError(f"{path}: missing or bad 'dim' line")
    data = np.frombuffer(raw[pos + 5:], dtype=np.uint8)
    if data.size % 2:
        raise BinvoxError(f"{path}: odd number of run-length bytes (truncated)")
    vals, counts = data[0::2], data[1::2].astype(np.int64)
    n = int(np.prod(dims))
    if counts.sum() != n:
        raise BinvoxError(f"{path}: run lengths cover {counts.sum()} voxels, expected {n}")
    flat = np.repeat(vals.astype(bool), counts)
    occ = flat.reshape(dims[0], dims[2], dims[1]).transpose(0, 2, 1)
    return occ, (translate if translate is not None else np.zeros(3)), (scale if scale is not None else 1.0)
