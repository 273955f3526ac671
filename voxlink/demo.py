"""``voxlink demo``: edge and ground on loopback, on real meshes, scored against the truth.

A program on top of the drone (:mod:`edge`), the ground station (:mod:`ground`) and the lab (the
renderer and voxelizer of :mod:`voxlink.data`, to score), as the command line is.

A ground station (PULL, bound on a free loopback port) runs in a thread; for each mesh an edge daemon
flies a simulated drone orbit (``orbit:MESH``), encodes every view with the shipped model and sends
its codes. Per object the table gives views, bytes sent, compression ratio, IoU of the occupancy grid
against the mesh's true occupancy (in the grid's own frame), depth AbsRel of the decoded depth maps
and of the depth maps from the fused grid against rendered truth (true mask pixels), the Chamfer
distance of the fused point cloud against points sampled on the true surface (both directions,
object units), and the end-to-end latency from capture to updated grid (p50 / p99).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from voxlink import camera
from voxlink.net import free_port

log = logging.getLogger("voxlink.demo")


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b plus b->a (metres).

    Shape:
        a [N, 3], b [M, 3] float -> float (inf if either is empty).
    """
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return float("inf")
    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def iou_in_grid_frame(prob: np.ndarray, grid_to_world: np.ndarray, true_occ: np.ndarray, tau: float = 0.4) -> float:
    """IoU (Eq. 17) of a predicted grid placed by ``grid_to_world`` against an object-frame true grid.

    Each predicted voxel centre is mapped into the object frame and looks up the true voxel there.
    """
    from voxlink.data.voxelize import points_to_voxels

    R = prob.shape[0]
    idx = np.argwhere(np.ones((R, R, R), bool)).astype(np.float64)
    world = idx @ grid_to_world[:3, :3].T + grid_to_world[:3, 3]
    t = points_to_voxels(world, true_occ.shape[0])
    ok = np.all((t >= 0) & (t < true_occ.shape[0]), axis=1)
    truth = np.zeros(len(idx), bool)
    truth[ok] = true_occ[tuple(t[ok].T)]
    pred = prob.reshape(-1) > tau
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 1.0


def run_demo(meshes: list[Path], views: int = 24, model: str | None = None, out: str | Path = "out/demo",
             fps: float = 10.0) -> list[dict]:
    """Stream a drone orbit of each mesh through edge -> ground on loopback and score the results.

    Returns:
        one row per object: name, views, bytes, ratio, iou, depth_absrel (each view's decoded depth),
        depth_absrel_fused (the views' depth from the object's grid, as ``depth_fused.tar``; NaN for a model
        without it), chamfer, latency p50/p99 (ms), folder; the ground's files are under ``out``.
    """
    from edge.daemon import EdgeConfig, EdgeDaemon
    from ground.station import GroundConfig, GroundStation
    from voxlink.data.meshes import load_mesh
    from voxlink.data.render import Renderer
    from voxlink.data.voxelize import voxelize

    out = Path(out)
    port = free_port()
    ground = GroundStation(GroundConfig(bind=[f"tcp://127.0.0.1:{port}"], model=model, out=str(out / "ground"),
                                        idle_timeout_s=3600, socket="pull", metrics_interval_s=30, record=False))
    keep: dict = {}
    per_view: dict = {}  # key -> (raw depth maps, poses, silhouettes): the station keeps no per-view arrays

    def listen(s, seq, raw_depth, pose):
        """Keep each decoded depth map (float32 [H, W], metres), its pose [4, 4] and its decoded silhouette
        (bool [H, W], where the station's masked depth map is > 0) for the demo's scores."""
        keep[(s.stream, s.object_id)] = s
        depths, poses, masks = per_view.setdefault((s.stream, s.object_id), ([], [], []))
        depths.append(raw_depth)
        poses.append(pose)
        masks.append(None if s.last_depth is None else s.last_depth > 0)

    ground.depth_listeners.append(listen)
    gt = threading.Thread(target=ground.run, daemon=True, name="ground")
    gt.start()
    time.sleep(0.3)
    rows = []
    renderer = Renderer(128)
    K = camera.intrinsics(128)
    for oid, path in enumerate(meshes):
        try:
            lm = load_mesh(path)
        except (OSError, ValueError) as e:
            log.error("skipped %s: %s", path, e)
            continue
        cfg = EdgeConfig(source=f"orbit:{path}", connect=[f"tcp://127.0.0.1:{port}"], socket="push", model=model,
                         backend="torch", object_id=oid, stream_id=1, max_frames=views, orbit_views=views,
                         log_dir=str(out / "edge-log"), fps=fps, metrics_interval_s=60)
        EdgeDaemon(cfg).run()
        deadline = time.time() + 60
        while time.time() < deadline:
            s = keep.get((1, oid))
            if s is not None and len(per_view[(1, oid)][0]) >= views:  # every view fused and its depth decoded
                break
            time.sleep(0.05)
        s = keep.get((1, oid))
        if s is None:
            log.error("no views of %s reached the ground", lm.name)
            continue
        with ground.lock:
            true_occ = voxelize(lm.mesh)
            iou = iou_in_grid_frame(ground.occupancy(s), s.grid_to_world, true_occ)
            raw_depths, view_poses, masks = per_view[(1, oid)]
            posed = [j for j, p in enumerate(view_poses) if p is not None]
            poses = np.stack([view_poses[j] for j in posed])
            _, true_depth = renderer.render(lm.parts, K, poses, np.zeros((len(poses), 3), np.uint8))
            pred = np.stack([raw_depths[j] for j in posed])  # as voxlink eval: decoded depth on true mask pixels
            m = true_depth > 0
            absrel = float(np.mean(np.abs(pred[m] - true_depth[m]) / true_depth[m])) if m.any() else float("nan")
            absrel_fused = float("nan")
            if hasattr(ground.model, "fused_depth") and m.any() and all(masks[j] is not None for j in posed):
                import torch

                from voxlink.models.fusion import view_geometry

                pose_t, K_t = view_geometry(poses, np.repeat(K[None], len(poses), 0))
                fd = ground.model.fused_depth(torch.from_numpy(ground.occupancy(s).astype(np.float32)),
                                              torch.from_numpy(pred.astype(np.float32)),
                                              torch.from_numpy(np.stack([masks[j] for j in posed])).float(),
                                              K_t, pose_t).numpy()
                absrel_fused = float(np.mean(np.abs(fd[m] - true_depth[m]) / true_depth[m]))
            from voxlink.data.voxelize import surface_points

            surface = surface_points(lm.mesh, 1.0 / 128)
            cd = chamfer(ground.fused_points(s), np.asarray(surface))
            summary = ground.finalise((1, oid))
        rows.append({"object": lm.name, "category": lm.category, "views": summary["views"], "bytes": summary["bytes"],
                     "ratio": summary["compression_ratio"], "iou": iou, "depth_absrel": absrel,
                     "depth_absrel_fused": absrel_fused, "chamfer": cd,
                     "latency_p50_ms": summary["latency_ms"]["p50"], "latency_p99_ms": summary["latency_ms"]["p99"],
                     "missing_views": summary["missing_views"], "folder": summary["folder"]})
    renderer.close()
    ground.stop.set()
    gt.join(timeout=10)
    return rows
