"""Solid occupancy grids from triangle meshes, correct for non-watertight, multi-part meshes.

The grid covers the unit cube ``[-0.5, 0.5]^3`` of the voxlink object frame with ``R^3`` voxels
(``R = 32`` by default), indexed ``[x, y, z]``; voxel ``(i, j, k)`` has its centre at
``voxel_min + (i + 0.5) * voxel_size`` with ``voxel_min = -0.5`` and ``voxel_size = 1 / R``.

A voxel is occupied if any of:

1. the surface passes through it (every triangle is sampled on a barycentric lattice at most half a
   voxel apart, and each point marks its voxel);
2. its centre is inside the surface by the generalised winding number, ``|w| > 0.5`` (Jacobson
   et al. 2013, libigl's fast winding number): robust to holes, open parts and parts that overlap,
   and indifferent to double-sided sheets, whose two sides cancel;
3. it is enclosed by occupied voxels (a 6-connected flood fill from outside the grid,
   ``scipy.ndimage.binary_fill_holes``), which closes interiors a shell leaves unmarked.

A ray-parity inside test is deliberately not used: it over-fills double-sided and open meshes.
"""

from __future__ import annotations

import igl
import numpy as np
import trimesh
from scipy import ndimage

# The grid's geometry lives in the runtime core (voxlink.camera); these names stay importable here.
from voxlink.camera import GRID_EXTENT, VOXEL_MIN, grid_to_world, voxel_size  # noqa: F401
from voxlink.camera import GRID_RESOLUTION as RESOLUTION


def voxel_centers(resolution: int = RESOLUTION) -> np.ndarray:
    """Centres of all voxels.

    Shape:
        returns float64 [R, R, R, 3], indexed ``[x, y, z]``, metres in the object frame.
    """
    g = VOXEL_MIN + (np.arange(resolution) + 0.5) * voxel_size(resolution)
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1)


def points_to_voxels(points: np.ndarray, resolution: int = RESOLUTION) -> np.ndarray:
    """Voxel index of each point (floor); points beyond the grid get indices outside ``0..R-1``.

    Shape:
        points: [N, 3] float (metres) -> int64 [N, 3] indices ``[x, y, z]`` (may lie outside ``0..R-1``).
    """
    t = (np.asarray(points, np.float64) - VOXEL_MIN) / voxel_size(resolution)
    # the grid is closed on its upper faces: a point on them (a normalised object's top, give or
    # take the depth buffer's rounding, a hundredth of a voxel)
    # belongs to the last voxel, not outside
    t = np.where((t >= resolution) & (t <= resolution + 1e-2), resolution - 0.5, t)
    return np.floor(t).astype(np.int64)


def _lattice(n: int) -> np.ndarray:
    """Barycentric weights float64 [(n+1)(n+2)/2, 3] of a triangular lattice with n steps per edge."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    a, b = i[keep] / n, j[keep] / n
    return np.stack([1.0 - a - b, a, b], axis=1)


def surface_points(mesh: trimesh.Trimesh, spacing: float) -> np.ndarray:
    """Deterministic points on every triangle, no two neighbours further apart than ``spacing``.

    Each triangle gets a barycentric lattice with ``ceil(longest edge / spacing)`` steps per edge.

    Shape:
        returns float64 [N, 3] (metres).
    """
    tri = np.asarray(mesh.vertices, np.float64)[np.asarray(mesh.faces, np.int64)]
    edge = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
    steps = np.maximum(1, np.ceil(edge / spacing)).astype(np.int64)
    pts = []
    for n in np.unique(steps):
        pts.append(np.einsum("lk,tkd->tld", _lattice(int(n)), tri[steps == n]).reshape(-1, 3))
    return np.concatenate(pts)


def surface_voxels(mesh: trimesh.Trimesh, resolution: int = RESOLUTION) -> np.ndarray:
    """Voxels that the surface passes through (lattice points at most half a voxel apart).

    Args:
        mesh: triangle mesh in the object frame.
        resolution: grid size R.

    Returns:
        bool [R, R, R] indexed ``[x, y, z]``.
    """
    idx = points_to_voxels(surface_points(mesh, voxel_size(resolution) / 2.0), resolution)
    keep = np.all((idx >= 0) & (idx < resolution), axis=1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[tuple(idx[keep].T)] = True
    return grid


def voxelize(mesh: trimesh.Trimesh, resolution: int = RESOLUTION) -> np.ndarray:
    """Solid occupancy grid of a mesh in the voxlink object frame (surface, winding number, fill).

    Args:
        mesh: triangle mesh (any number of parts, watertight or not), vertices in metres in the
            object frame (normally inside the unit cube).
        resolution: grid size R.

    Returns:
        bool [R, R, R], indexed ``[x, y, z]``; see the module docstring for the grid geometry.

    Raises:
        ValueError: the mesh has no triangles.
    """
    if len(mesh.faces) == 0:
        raise ValueError("cannot voxelize a mesh with no triangles")
    surf = surface_voxels(mesh, resolution)
    centres = voxel_centers(resolution).reshape(-1, 3)
    w = igl.fast_winding_number(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64), centres)
    inside = (np.abs(w) > 0.5).reshape((resolution,) * 3)
    return ndimage.binary_fill_holes(surf | inside)
