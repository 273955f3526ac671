"""``voxlink data show``: a contact sheet of a dataset (RGB views, depth, mask, the voxel grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxlink import camera
from voxlink.data.store import DatasetStore


def voxel_mesh(occupancy: np.ndarray, grid_to_world: np.ndarray | None = None, color=(90, 150, 220, 255)):
    """A box mesh of the occupied voxels (for display), placed in the object frame.

    Args:
        occupancy: bool [R, R, R] indexed ``[x, y, z]``.
        grid_to_world: float [4, 4] voxel index -> object frame; default the unit-cube grid.

    Returns:
        ``trimesh.Trimesh`` with face colours, or ``None`` for an empty grid.
    """
    import trimesh

    from voxlink.data.voxelize import grid_to_world as g2w

    occ = np.asarray(occupancy, bool)
    if not occ.any():
        return None
    T = g2w(occ.shape[0]) if grid_to_world is None else np.asarray(grid_to_world, np.float64)
    boxes = trimesh.voxel.VoxelGrid(trimesh.voxel.encoding.DenseEncoding(occ), transform=T).as_boxes()
    boxes.visual.face_colors = color
    return boxes


def render_occupancy(occupancy: np.ndarray, size: int = 128, renderer=None, azimuth_deg: float = 35.0) -> np.ndarray:
    """Render an occupancy grid as shaded boxes from a fixed 3/4 view.

    Returns:
        uint8 [size, size, 3] RGB (white background; blank for an empty grid).
    """
    from voxlink.data.render import Renderer

    mesh = voxel_mesh(occupancy)
    if mesh is None:
        return np.full((size, size, 3), 255, np.uint8)
    r = renderer or Renderer(size)
    az, el = np.radians(azimuth_deg), np.radians(30.0)
    eye = 2.0 * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    pose = camera.look_at(eye, np.zeros(3))[None]
    rgb, _ = r.render([mesh], camera.intrinsics(size, 50.0), pose, np.full((1, 3), 255, np.uint8))
    return rgb[0]


def contact_sheet(root: str | Path, out: str | Path, n_objects: int = 6, n_views: int = 3, seed: int = 0) -> Path:
    """Write a PNG contact sheet: per object, ``n_views`` RGB views, depth and mask of the first, and the grid.

    Args:
        root: dataset folder.
        out: PNG path.
        n_objects: rows (objects spread over the dataset, at most its size).
        n_views: RGB views per row.

    Returns:
        the written path.

    Raises:
        voxlink.data.store.DatasetError: not a dataset.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxlink.data.render import Renderer

    store = DatasetStore(root)
    n = min(n_objects, len(store))
    rows = np.unique(np.linspace(0, len(store) - 1, n).round().astype(int))
    cols = n_views + 3
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    renderer = Renderer(int(store.manifest["image_size"]))
    for r, i in enumerate(rows):
        o = store.objects[i]
        rgb, depth, occ = store.read(i, "rgb"), store.read(i, "depth"), store.read(i, "occupancy")
        ids = np.linspace(0, len(rgb) - 1, n_views).round().astype(int)
        panels = [(rgb[v], None, f"view {v}") for v in ids]
        d = np.where(depth[ids[0]] > 0, depth[ids[0]], np.nan)
        panels += [(d, "viridis", "depth (m)"), (depth[ids[0]] > 0, "gray", "mask"),
                   (render_occupancy(occ, renderer=renderer), None, f"{occ.sum()} voxels")]
        for c, (img, cmap, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
        axes[r, 0].set_ylabel(f"{o['category']}\n{o['name'][:18]}\n[{o['split']}]", fontsize=7)
    renderer.close()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
