"""``voxlink eval``: mIoU by number of views and by category, depth metrics, and the compression
actually produced, beside the trivial mean-grid baseline.

IoU is Golts & Schechner Eq. 17 at tau = 0.4; views are fused in order, so one pass over 5 views
scores 1..5 views. Each model is scored in its own reconstruction frame. Depth metrics are over the
true mask's pixels: AbsRel = mean(|d - d*| / d*), RMSE = sqrt(mean((d - d*)^2)) in metres, and
delta1 = share of pixels with max(d / d*, d* / d) < 1.25.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from voxlink.data.dataset import MultiViewDataset
from voxlink.data.store import manifest_hash
from voxlink.models.binarizer import pack_bits
from voxlink.models.implicit import iou

#: the dataset splits `voxlink eval` scores (``all``: every object, whatever its split)
SPLITS = ("train", "val", "test", "all")


class DepthErrors:
    """Running depth metrics over the true mask's pixels (Eigen et al. 2014's AbsRel, RMSE, delta1)."""

    def __init__(self):
        self.abs = self.sq = self.delta = 0.0
        self.n = 0

    def add(self, pred: torch.Tensor, true: torch.Tensor) -> None:
        """Add views: ``pred``, ``true`` float [N, H, W] z-depth in metres; pixels with ``true > 0`` count."""
        m = true > 0
        if m.any():
            d, t = pred[m].double(), true[m].double()
            self.abs += float(((d - t).abs() / t).sum())
            self.sq += float(((d - t) ** 2).sum())
            self.delta += float((torch.maximum(d / t, t / d.clamp(min=1e-6)) < 1.25).sum())
            self.n += int(m.sum())

    def result(self) -> dict:
        """``{absrel, rmse (metres), delta1}`` over every pixel added (0 where none was)."""
        n = max(self.n, 1)
        return {"absrel": self.abs / n, "rmse": math.sqrt(self.sq / n), "delta1": self.delta / n}


@torch.no_grad()
def evaluate_dataset(model, ds: MultiViewDataset, n: int | None = None, views: int = 5, geometry: bool = True,
                     pose_noise: tuple[float, float] = (0.0, 0.0), seed: int = 0,
                     baseline: tuple[torch.Tensor, float] | None = None, device="cpu", progress: bool = False,
                     reconstruct=None, refine_poses=None) -> dict:
    """The one scoring loop: ``voxlink eval`` (:func:`evaluate`), the validation passes of training
    (:func:`voxlink.train.validate`, :func:`voxlink.train_fusion.validate_fusion`) and ``voxlink bench
    accuracy`` (:func:`voxlink.bench.accuracy.score`) call it.

    Per object, the model encodes the views (eval mode: ``sign``, what the drone sends) and fuses them
    one at a time (``init_state`` / ``step`` / ``occupancy``), so that one pass scores 1..``views`` views.

    Args:
        model: an implicit or a fusion model (eval mode is set here and left on).
        ds: the dataset, in the model's reconstruction frame (its heading, views and split are the caller's).
        n: objects (the first ``n``; None: all). views: views fused per object.
        geometry: also the silhouette hulls of the true and of the decoded masks (Laurentini 1994), the
            decoded silhouette IoU and the depth metrics (AbsRel, RMSE in metres, delta1) of the decoded
            depth maps on the true masks' pixels; for fusion models also of the fused views' depth maps
            from the grid of all of them (:meth:`~voxlink.models.fusion.FusionModel.fused_depth`, at the
            poses the views were fused with).
        pose_noise: ``(degrees, metres)``: every view's pose given to the model and the hulls is off by
            exactly this rotation and shift, in random directions (seeded by ``seed``).
        baseline: ``(mean_grid [R, R, R], threshold)``: the trivial baseline on the same objects.
        device: where the model runs. progress: a progress bar.
        reconstruct: for a method that is not a bit-code model fused view by view (the benchmark's JPEG
            2000 + 3D-R2N2, the sequential and direct models): a callable from the first ``views`` views
            (float32 [V, 3, H, W] on ``device``) to occupancy probabilities float [1, R, R, R]; then only
            the IoU after ``views`` views is scored (the other columns of ``iou`` are NaN), ``geometry``
            and the code statistics do not apply, and ``model`` may be None.
        refine_poses: a :class:`voxlink.models.pose_refine.PoseRefineConfig` (pose-aware models only):
            after ``v`` views, the ``v`` poses are first corrected by silhouette coherence on the masks
            decoded from the codes (:func:`voxlink.models.pose_refine.refine_poses`), and the grid is
            fused anew from the ``v`` views at the corrected poses (as the ground does with
            ``--refine-poses``); the hull baselines keep the poses as given. None: poses as given.

    Returns:
        ``iou`` float64 [n, views] (Eq. 17, tau = 0.4, after 1..views views), ``hull_true`` and
        ``hull_decoded`` float64 [n, views] (tau = 0.5; with ``geometry``; a voxel's centre tested, the
        classic hull), ``hull_true_voxel`` float64 [n, views] (the true masks' hull with each voxel read over
        its projected footprint, 3 pixels: the target grid marks every voxel the surface passes through, so
        the centre test drops thin parts the target keeps), ``silhouette_iou`` (mean over
        views), ``depth`` {absrel, rmse, delta1}, ``depth_fused`` {..} (fusion models), ``baseline`` float64 [n] (with ``baseline``),
        ``categories`` [n], ``objects`` [{id, name, category}], ``payload_bytes`` (mean bytes of a
        view's packed code; None for an uncompressed model), ``distinct_predictions`` (distinct
        thresholded grids after ``views`` views: 1 means the model ignores its input), ``bits_varying``
        (share of code bits whose value differs across the objects' first views); with ``refine_poses``,
        ``pose_refinement`` {``ms`` float64 [n, views] (0 for one view), ``rotation_deg`` and ``shift_m``
        (mean correction a view got, after ``views`` views) float64 [n]}.
    """
    from tqdm import tqdm

    from voxlink.models.pose_refine import refine_poses as refine
    from voxlink.models.projection import perturb_poses, silhouette_hull

    if model is not None:
        model.eval()
    if reconstruct is not None:
        geometry = False
    n = len(ds) if n is None else min(n, len(ds))
    gen = torch.Generator().manual_seed(seed)
    ious, hull_t, hull_d = np.zeros((n, views)), np.zeros((n, views)), np.zeros((n, views))
    hull_tv = np.zeros((n, views))
    base = np.zeros(n)
    cats, objects, preds, first_codes, payload_bytes = [], [], set(), [], []
    dec_depth, fused_depth = DepthErrors(), DepthErrors()
    if refine_poses is not None and not getattr(model, "needs_pose", False):
        raise ValueError("pose refinement applies to pose-aware models only")
    ref_ms, ref_rot, ref_shift = np.zeros((n, views)), np.zeros(n), np.zeros(n)
    sil_inter, sil_n = 0.0, 0
    for i in tqdm(range(n), desc="eval", unit="obj", disable=None if progress else True):
        it = ds[i]
        imgs = it["images"].to(device)
        target = it["occupancy"][None].to(device)
        if reconstruct is not None:
            ious[i, :] = np.nan
            prob = reconstruct(imgs[:views])
            ious[i, views - 1] = float(iou(prob, target)[0])
        else:
            codes = model.encode(imgs)
            first_codes.append(codes[0].cpu())
            if model.cfg.binarize:  # the packed code's size, from the code just made (no second encode)
                payload_bytes.append(len(pack_bits(codes[0])))
            v_n = min(views, len(codes))
            K = it["K_views"][:v_n].to(device)  # each view's own intrinsics (imported captures differ)
            pose = it["pose_grid"][:v_n]
            if pose_noise[0] or pose_noise[1]:
                pose = perturb_poses(pose, pose_noise[0], pose_noise[1], gen, exact=True)
            pose = pose.to(device)
            state = model.init_state(1, device=device)
            if refine_poses is not None:
                depth_all, mask_all = model.decode_depth(codes[:v_n])
            fused_pose = pose  # the poses the views were fused with (refined, with refine_poses)
            for v in range(v_n):
                if refine_poses is None:
                    state = model.step(codes[v:v + 1], state, pose=pose[v:v + 1], K=K[v:v + 1])
                else:  # every pose of the first v views corrected, and the v views fused anew
                    fixed, info = refine(mask_all[:v + 1].cpu(), K[:v + 1].cpu(), pose[:v + 1].cpu(), refine_poses)
                    fused_pose = fixed.to(device)
                    state = model.fuse_all(depth_all[:v + 1], mask_all[:v + 1], K[:v + 1], fused_pose)
                    ref_ms[i, v] = info["ms"]
                    ref_rot[i], ref_shift[i] = np.mean(info["rotation_deg"]), np.mean(info["shift_m"])
                prob = model.occupancy(state)
                ious[i, v] = float(iou(prob, target)[0])
        preds.add((prob > 0.4).flatten().cpu().numpy().tobytes())
        if geometry:
            depth, mask = model.decode_depth(codes)
            depth, mask, K, pose, tgt = depth.cpu(), mask.cpu(), K.cpu(), pose.cpu(), target.cpu()
            true_mask = it["depth"][:v_n] > 0
            h_true = h_dec = h_tv = None  # the hull of the first v views is the running minimum of one-view hulls
            for v in range(v_n):
                one_tv = silhouette_hull(true_mask[v:v + 1], K[v:v + 1], pose[v:v + 1], footprint=3)
                h_tv = one_tv if h_tv is None else torch.minimum(h_tv, one_tv)
                hull_tv[i, v] = float(iou(h_tv[None], tgt, 0.5)[0])
                one_t = silhouette_hull(true_mask[v:v + 1], K[v:v + 1], pose[v:v + 1])
                one_d = silhouette_hull(mask[v:v + 1], K[v:v + 1], pose[v:v + 1])
                h_true = one_t if h_true is None else torch.minimum(h_true, one_t)
                h_dec = one_d if h_dec is None else torch.minimum(h_dec, one_d)
                hull_t[i, v] = float(iou(h_true[None], tgt, 0.5)[0])
                hull_d[i, v] = float(iou(h_dec[None], tgt, 0.5)[0])
            pm = mask[:v_n] > 0.5
            sil_inter += float(((pm & true_mask).sum((1, 2)) / (pm | true_mask).sum((1, 2)).clamp(min=1)).sum())
            sil_n += v_n
            true = it["depth"]
            dec_depth.add(depth, true)
            if hasattr(model, "fused_depth"):  # each fused view's depth from the grid of all v_n views
                fd = model.fused_depth(prob[0].cpu(), depth[:v_n], mask[:v_n], K, fused_pose.cpu())
                fused_depth.add(fd, true[:v_n])
        if baseline is not None:
            base[i] = float(iou(baseline[0][None].to(device), target, baseline[1])[0])
        cat = ds.category(i)
        cats.append(cat)
        obj = ds.store.objects[ds.indices[i]]
        objects.append({"id": obj["id"], "name": obj["name"], "category": cat})
    c = torch.stack(first_codes) if first_codes else None
    out = {"iou": ious, "categories": cats, "objects": objects, "distinct_predictions": len(preds),
           "bits_varying": float(((c > 0).float().mean(0) % 1 != 0).float().mean()) if c is not None else None,
           "payload_bytes": float(np.mean(payload_bytes)) if payload_bytes else None}
    if geometry:
        out.update({"hull_true": hull_t, "hull_true_voxel": hull_tv, "hull_decoded": hull_d, "silhouette_iou": sil_inter / max(sil_n, 1),
                    "depth": dec_depth.result()})
        if fused_depth.n:
            out["depth_fused"] = fused_depth.result()
    if baseline is not None:
        out["baseline"] = base
    if refine_poses is not None:
        out["pose_refinement"] = {"ms": ref_ms, "rotation_deg": ref_rot, "shift_m": ref_shift}
    return out


def evaluate(model, data: str | Path, split: str = "test", views: int = 5,
             baseline: tuple[torch.Tensor, float] | None = None, max_objects: int | None = None,
             progress: bool = False, heading: str | None = None, pose_noise: tuple[float, float] = (0.0, 0.0),
             seed: int = 0, refine_poses=None) -> dict:
    """Score a model on a dataset split, beside the trivial and the geometric baselines (``voxlink eval``).

    Args:
        model: an implicit model (:class:`~voxlink.models.implicit.ImplicitModel`) or a pose-aware
            fusion model (:class:`~voxlink.models.fusion.FusionModel`); eval mode is set here.
        data: dataset folder.
        split: ``train``, ``val``, ``test`` or ``all``; a split with no objects falls back to ``all``
            (a dataset made only from meshes is all ``test`` anyway).
        views: views fused per object (scores for 1..views are reported).
        baseline: ``(mean_grid [R, R, R], threshold)`` of the trivial baseline, scored on the same objects.
        max_objects: cap on the number of objects.
        progress: show a progress bar.
        heading: ``canonical`` or ``random`` (a seeded yaw per object; see :mod:`voxlink.data.dataset`);
            ``None``: ``random`` for pose-aware models (what a drone meets), ``canonical`` otherwise.
        pose_noise: ``(degrees, metres)``: every view's pose given to the model (and to the hulls) is
            off by exactly this rotation and shift, in random directions (seeded), as a drone knows it.
        seed: seed of the pose noise.
        refine_poses: a :class:`voxlink.models.pose_refine.PoseRefineConfig`: correct the poses by
            silhouette coherence before fusing (pose-aware models; see :func:`evaluate_dataset`).

    Returns:
        the report dict (from :func:`evaluate_dataset`'s scores): ``miou`` {"1": .., ..}, ``miou_std``
        {..}, ``miou_by_category`` {cat: miou@views}, ``hull_true_miou`` and ``hull_decoded_miou``
        {"1": ..}: the silhouette hull (tau = 0.5) of the true masks and of the masks decoded from the
        codes, on the same views and poses (voxel centres tested), ``hull_true_voxel_footprint_miou`` the
        true masks' hull with each voxel's projected footprint; ``silhouette_iou`` of the decoded masks; ``depth`` {absrel,
        rmse, delta1} of each view's decoded depth and, for fusion models, ``depth_fused`` {..} of the fused views'
        depth maps from the grid of all of them (:meth:`~voxlink.models.fusion.FusionModel.fused_depth`), ``compression_ratio``, ``bits_per_view``, ``bytes_per_view``, ``objects``,
        ``frame``, ``baseline_miou``, ``per_object`` [{id, category, iou}], ``data_manifest``,
        ``refiner_precision`` (the arithmetic of the model's 3D refiner or occupancy decoder); with
        ``refine_poses``, ``pose_refinement`` {``config``, ``ms`` {"2": mean ms per object, ..},
        ``rotation_deg``, ``shift_m`` (mean correction per view after ``views`` views)}.

    Raises:
        ValueError: unknown ``heading``; ``refine_poses`` for a model that does not use poses.
    """
    pose_aware = bool(getattr(model, "needs_pose", False))
    heading = heading or ("random" if pose_aware else "canonical")
    if heading not in ("canonical", "random"):
        raise ValueError(f"heading must be canonical or random, got {heading!r}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    frame = "object" if pose_aware else model.cfg.frame
    # an empty split is an error, never silently every object (a typo would score training objects)
    ds = MultiViewDataset(data, split, views, train=False, frame=frame, with_depth=True, heading=heading)
    short = [ds.store.objects[j]["id"] for j in ds.indices if ds.store.n_views(j) < views]
    if short:
        raise ValueError(f"{len(short)} object(s) of {data} have fewer than the {views} views asked for "
                         f"({', '.join(short[:5])}{' ...' if len(short) > 5 else ''}): ask for fewer (--views)")
    sc = evaluate_dataset(model, ds, max_objects, views, geometry=True, pose_noise=pose_noise, seed=seed,
                          baseline=baseline, progress=progress, refine_poses=refine_poses)
    ious = sc["iou"]
    by_cat = defaultdict(list)
    for c, x in zip(sc["categories"], ious[:, views - 1]):
        by_cat[c].append(x)
    bits = model.cfg.code_bits * (1 if model.cfg.binarize else 32)
    per_views = lambda a: {str(v + 1): round(float(a[:, v].mean()), 4) for v in range(views)}  # noqa: E731
    report = {
        "model": model.cfg.name, "family": getattr(model, "family", "implicit"), "frame": model.cfg.frame,
        "heading": heading, "pose_noise": {"deg": pose_noise[0], "m": pose_noise[1]},
        "split": split, "objects": len(ious), "views": views,
        "miou": per_views(ious),
        "miou_std": {str(v + 1): round(float(ious[:, v].std()), 4) for v in range(views)},
        "miou_by_category": {c: round(float(np.mean(x)), 4) for c, x in sorted(by_cat.items())},
        "objects_by_category": {c: len(x) for c, x in sorted(by_cat.items())},
        "hull_true_miou": per_views(sc["hull_true"]),
        "hull_true_voxel_footprint_miou": per_views(sc["hull_true_voxel"]),
        "hull_decoded_miou": per_views(sc["hull_decoded"]),
        "silhouette_iou": round(sc["silhouette_iou"], 4),
        "depth": {k: round(x, 4) for k, x in sc["depth"].items()},
        **({"depth_fused": {k: round(x, 4) for k, x in sc["depth_fused"].items()}}
           if "depth_fused" in sc else {}),
        "compression_ratio": round(model.compression_ratio, 2),
        "bits_per_view": bits,
        "bytes_per_view": int(sc["payload_bytes"]) if sc["payload_bytes"] is not None else bits // 8,
        "data_manifest": manifest_hash(data),
        "refiner_precision": model.refiner_precision() if hasattr(model, "refiner_precision") else "float32",
        "per_object": [{**o, "iou": [round(float(x), 4) for x in row]} for o, row in zip(sc["objects"], ious)],
    }
    if baseline is not None:
        report["baseline_miou"] = round(float(sc["baseline"].mean()), 4)
        report["baseline_threshold"] = baseline[1]
    if refine_poses is not None:
        pr = sc["pose_refinement"]
        report["pose_refinement"] = {"config": dataclasses.asdict(refine_poses),
                                     "ms": {str(v + 1): round(float(pr["ms"][:, v].mean()), 1) for v in range(views)},
                                     "rotation_deg": round(float(pr["rotation_deg"].mean()), 3),
                                     "shift_m": round(float(pr["shift_m"].mean()), 4)}
    return report


def format_report(r: dict) -> str:
    """The report as a plain-text table (what ``voxlink eval`` prints)."""
    lines = [f"model {r['model']} (frame: {r['frame']}, heading: {r.get('heading', 'canonical')}) on {r['objects']} objects ({r['split']})",
             f"compression {r['compression_ratio']}:1, {r['bits_per_view']} bits = {r['bytes_per_view']} bytes per view",
             "views                 " + "  ".join(f"{k:>6}" for k in r["miou"]),
             "mIoU                  " + "  ".join(f"{v:6.3f}" for v in r["miou"].values())]
    if "hull_true_miou" in r:
        lines.append("hull of true masks    " + "  ".join(f"{v:6.3f}" for v in r["hull_true_miou"].values()))
    if "hull_true_voxel_footprint_miou" in r:
        lines.append("  voxel footprint     " + "  ".join(f"{v:6.3f}" for v in r["hull_true_voxel_footprint_miou"].values()))
        lines.append("hull of decoded masks " + "  ".join(f"{v:6.3f}" for v in r["hull_decoded_miou"].values()))
        lines.append(f"decoded silhouette IoU {r['silhouette_iou']:.3f}")
    noise = r.get("pose_noise") or {}
    if noise.get("deg") or noise.get("m"):
        lines.append(f"pose noise: {noise['deg']} degrees, {noise['m']} m per view")
    if "pose_refinement" in r:
        pr = r["pose_refinement"]
        lines.append(f"poses refined by silhouette coherence: mean correction {pr['rotation_deg']:.2f} degrees, "
                     f"{pr['shift_m'] * 100:.1f} cm per view; {pr['ms'][str(r['views'])]:.0f} ms an object at "
                     f"{r['views']} views")
    if "baseline_miou" in r:
        lines.append(f"trivial baseline (mean training grid, threshold {r['baseline_threshold']:.2f}): "
                     f"mIoU {r['baseline_miou']:.3f}")
    lines.append(f"depth: AbsRel {r['depth']['absrel']:.3f}  RMSE {r['depth']['rmse']:.3f} m  "
                 f"delta<1.25 {r['depth']['delta1']:.3f}  (each view's decoded depth)")
    if "depth_fused" in r:
        f = r["depth_fused"]
        lines.append(f"depth: AbsRel {f['absrel']:.3f}  RMSE {f['rmse']:.3f} m  delta<1.25 {f['delta1']:.3f}  "
                     f"(from the grid of the {r['views']} fused views)")
    lines.append(f"mIoU@{r['views']} by category:")
    for c, v in r["miou_by_category"].items():
        lines.append(f"  {c:<12} {v:.3f}  ({r['objects_by_category'][c]})")
    return "\n".join(lines)
