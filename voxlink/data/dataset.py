"""PyTorch ``Dataset`` over a voxlink dataset folder (lazy, sharded; see :mod:`voxlink.data.store`).

Training (``train=True``) follows 3D-R2N2: each item is a random subset of ``max_views`` views in
random order; the training loop then keeps the first ``V`` of them with ``V`` drawn in 1..5 per
batch. Evaluation (``train=False``) yields a fixed, deterministic set of views per object.

Reconstruction frame (Golts & Schechner predict in ShapeNet's canonical frame):

* ``object``: the occupancy target is the object's own (canonical) grid.
* ``view``: Y up (gravity) and the heading of the first view: the grid is rotated about Y by minus
  the first camera's azimuth, so the model never needs the object's canonical heading.

Heading (``heading="random"``, evaluation only): each object gets a deterministic random yaw about
gravity, as a drone meets it in the field. The views are unchanged (turning the object is turning
the cameras the other way); in the ``object`` frame the target turns with the object, which a model
cannot see from the images, while the ``view`` frame does not change at all.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from voxlink import camera
from voxlink.camera import yaw_matrix  # noqa: F401 - one definition, in the runtime core; importable here too
from voxlink.data.store import DatasetStore
from voxlink.preprocess import to_input

log = logging.getLogger(__name__)

FRAMES = ("object", "view")


def rotate_grid_y(occ: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate an occupancy grid about the Y axis through the grid centre.

    The output voxel at position ``p`` takes the input at ``R_y(-angle) p`` (trilinear, so a
    binary grid should be thresholded at 0.5 afterwards); what leaves the grid is clipped.

    Shape:
        occ: float [..., R, R, R] indexed ``[x, y, z]`` -> same shape.
    """
    shape = occ.shape
    g = occ.reshape(-1, 1, *shape[-3:]).float()
    n = g.shape[0]
    c, s = math.cos(-angle), math.sin(-angle)
    # grid_sample's coords are (x, y, z) = (W, H, D) axes; our tensor's (D, H, W) = (x, y, z),
    # so sampling coordinate order is (z, y, x).
    R = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=torch.float32)  # acts on (z, y, x)
    theta = torch.zeros(n, 3, 4)
    theta[:, :, :3] = R
    grid = torch.nn.functional.affine_grid(theta, g.shape, align_corners=False)
    out = torch.nn.functional.grid_sample(g, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(shape)


class MultiViewDataset(Dataset):
    """Objects of one split with their views and occupancy grid.

    Args:
        root: dataset folder: ``voxlink data make``'s (``manifest.json``), or a folder of interchange
            ``.npz`` object files, or one such file (:mod:`voxlink.data.interchange`). Objects whose file
            says ``has_occupancy = False`` are left out (nothing to learn from or score against).
        split: ``train``, ``val``, ``test`` or ``all``.
        max_views: views per item.
        train: random views and background colour jitter (True) or a fixed set (False).
        frame: ``object`` or ``view`` (module docstring).
        seed: seed of the fixed evaluation views.
        with_depth: also return depth maps and masks.
        heading: ``canonical`` (as authored) or ``random`` (a yaw per object about gravity: seeded in
            evaluation, drawn afresh every time in training; module docstring).
        backgrounds: training backgrounds: ``plain`` (a random flat colour per view, 3D-R2N2) or
            ``textured`` (ground planes, noise and clutter: :mod:`voxlink.data.backgrounds`).

    Items are dicts: ``images`` float32 [V, 3, H, W] in [0, 1]; ``occupancy`` float32 [R, R, R]
    (0/1, in the chosen frame, ``[x, y, z]``); ``grid_to_world`` float32 [4, 4] (maps voxel
    indices to the object frame of the poses); ``pose`` float32 [V, 4, 4] camera-to-object;
    ``pose_grid`` float32 [V, 4, 4] the same cameras in the grid's frame (where the occupancy grid
    is the axis-aligned unit cube: what a pose-aware model is given); ``K`` float32 [3, 3] (the
    object's intrinsics; an interchange object whose views differ: its first returned view's);
    ``K_views`` float32 [V, 3, 3] each returned view's intrinsics;
    ``depth`` float32 [V, H, W] metres and ``mask`` bool [V, H, W] if ``with_depth``; ``index`` int.

    Raises:
        voxlink.data.store.DatasetError: bad folder. ValueError: unknown frame or empty split.
    """

    def __init__(self, root, split: str = "train", max_views: int = 5, train: bool = True, frame: str = "object",
                 seed: int = 0, with_depth: bool = False, heading: str = "canonical", backgrounds: str = "plain"):
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
        if heading not in ("canonical", "random"):
            raise ValueError(f"heading must be canonical or random, got {heading!r}")
        if backgrounds not in ("plain", "textured"):
            raise ValueError(f"backgrounds must be plain or textured, got {backgrounds!r}")
        self.heading, self.backgrounds = heading, backgrounds
        self.store = DatasetStore(root)
        in_split = self.store.split(split)
        # objects without a true grid (captures imported without a mesh) can be neither trained on nor scored
        self.indices = [j for j in in_split if self.store.has_occupancy(j)]
        if not self.indices:
            raise ValueError(f"split {split!r} of {root} holds no objects" if not in_split else
                             f"split {split!r} of {root} holds {len(in_split)} object(s), none with an occupancy grid "
                             "(captures imported without --mesh): nothing to train on or score")
        if len(self.indices) < len(in_split):
            log.info("%s: %d object(s) of split %r have no occupancy grid (imported without a mesh): left out",
                     root, len(in_split) - len(self.indices), split)
        self.max_views, self.train, self.frame, self.seed, self.with_depth = max_views, train, frame, seed, with_depth
        self.n_views = int(self.store.manifest["views"])
        self.resolution = int(self.store.manifest["grid"]["resolution"])

    def __len__(self) -> int:
        return len(self.indices)

    def category(self, i: int) -> str:
        """Category of item ``i``."""
        return self.store.objects[self.indices[i]]["category"]

    def view_ids(self, i: int) -> np.ndarray:
        """The fixed evaluation views of item ``i`` (spread around the orbit, deterministic)."""
        rng = np.random.default_rng([self.seed, self.indices[i]])
        nv = self.store.n_views(self.indices[i])
        k = min(self.max_views, nv)
        start = int(rng.integers(nv))
        return (start + np.round(np.arange(k) * nv / k).astype(int)) % nv

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        if self.train:
            ids = np.random.permutation(self.store.n_views(idx))[: self.max_views]
        else:
            ids = self.view_ids(i)
        rgb = self.store.read(idx, "rgb")[ids]
        depth = self.store.read(idx, "depth")[ids]
        mask = depth > 0 if self.store.kind == "sharded" else self.store.read(idx, "mask")[ids]
        if self.train and self.backgrounds == "textured":
            from voxlink.data.backgrounds import composite

            rgb = composite(rgb, mask, np.random.default_rng(np.random.randint(2**31)))
        elif self.train:  # 3D-R2N2: plain background of a random colour per view
            bg = np.random.randint(0, 256, size=(len(ids), 1, 1, 3), dtype=np.uint8)
            rgb = np.where(mask[..., None], rgb, bg)
        pose = self.store.read(idx, "pose")[ids]
        occ = torch.from_numpy(self.store.read(idx, "occupancy").astype(np.float32))
        g2w = torch.from_numpy(_grid_to_world(self.resolution))
        turn = np.eye(4)  # grid frame -> object frame rotation
        if self.frame == "object" and self.heading == "random":
            psi = (float(np.random.uniform(0, 2 * math.pi)) if self.train
                   else float(np.random.default_rng([self.seed, idx, 7]).uniform(0, 2 * math.pi)))
            occ = (rotate_grid_y(occ, psi) > 0.5).float()
            turn = yaw_matrix(-psi)
        if self.frame == "view":
            az = camera.azimuth_of(pose[0])
            occ = (rotate_grid_y(occ, -az) > 0.5).float()
            turn = yaw_matrix(az)
        g2w = torch.from_numpy(turn.astype(np.float32)) @ g2w
        pose_grid = (np.linalg.inv(turn) @ pose.astype(np.float64)).astype(np.float32)
        if self.store.kind == "sharded":
            # a copy per view (a broadcast of one view is read-only, which torch.from_numpy warns about)
            K_views = np.repeat(self.store.K.astype(np.float32)[None], len(ids), axis=0)
        else:
            K_views = np.ascontiguousarray(self.store.read(idx, "K")[ids], dtype=np.float32)
        item = {"images": to_input(rgb), "occupancy": occ, "grid_to_world": g2w,
                "pose": torch.from_numpy(pose), "pose_grid": torch.from_numpy(pose_grid),
                "K": torch.from_numpy(K_views[0].copy()), "K_views": torch.from_numpy(K_views), "index": idx}
        if self.with_depth:
            item["depth"] = torch.from_numpy(depth)
            item["mask"] = torch.from_numpy(mask)
        return item


def _grid_to_world(resolution: int) -> np.ndarray:
    return camera.grid_to_world(resolution).astype(np.float32)
