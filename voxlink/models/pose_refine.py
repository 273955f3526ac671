"""Pose refinement at the ground by silhouette coherence: correct the poses a drone sends before fusing.

A drone knows each view's pose only roughly (GPS / IMU: about 2 degrees and 2 cm). Turned by 2 degrees
about its centre, a camera at 2 m with voxlink's intrinsics (f = 137 px at 128 x 128) sees the object
about 5 pixels away from where the pose says, and a visual hull placed with such poses carves away
whole parts.

The silhouettes decoded from the codes agree with each other only where the poses are right. This
module finds small corrections of every view's pose that make them agree, by **silhouette coherence**
(Hernandez, Schmitt & Cipolla, "Silhouette coherence for camera calibration under circular motion",
IEEE TPAMI 2007): the visual hull of the other views, seen from view ``i``, must cover view ``i``'s
silhouette. For every pixel ``p`` of view ``i``, the rendered hull is the maximum over samples ``x``
along ``p``'s ray (inside the unit cube) of ``prod_{j != i} s_j(pi_j(x))`` (a view that does not see
``x`` does not carve it, as in the fusion model), and the loss is the share of the silhouette that it
leaves uncovered:

    L = 1/V sum_i  sum_p s_i(p) (1 - max_x prod_{j != i} s_j(pi_j(x)))  /  sum_p s_i(p)
        + w / V sum_i (|omega_i|^2 / sigma_rot^2 + |delta_i|^2 / sigma_t^2)

where view ``i``'s pose is turned by ``exp([omega_i]_x)`` about its camera centre and shifted by
``delta_i`` (the noise model of :func:`voxlink.models.projection.perturb_poses`), and the second term is
the Gaussian prior of the reported poses. It is minimised with Adam, coarse to fine (silhouettes blurred
by 4, 2 and 1 pixels, so that a 5-pixel error is inside the basin). Silhouettes cannot see a motion of
the whole scene (a rotation, shift or scale of all cameras together), so the refined poses are finally
moved, all together, by the similarity that takes their camera centres back onto the reported ones
(Umeyama, IEEE TPAMI 1991): the reported poses' average frame is kept, and only their disagreement is
corrected.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from voxlink.models.projection import project_normalized


@dataclass(frozen=True)
class PoseRefineConfig:
    """Settings of :func:`refine_poses`.

    Attributes:
        iterations: Adam steps in all (split evenly over the ``blur_px`` stages).
        blur_px: Gaussian blur (sigma, pixels) of the silhouettes in each coarse-to-fine stage.
        rays: the rays of a view are a ``rays x rays`` grid of pixel centres over the image.
        samples: samples along a ray, between where it enters and leaves the unit cube.
        prior_deg, prior_m: standard deviations of the reported poses' error (radians as degrees, metres).
        prior_weight: ``w``, the weight of the prior against the coherence term.
        lr: Adam's learning rate (radians and metres per step).
        min_views: fewer views than this are left as they are (one view has nothing to agree with).
        max_others: each view's silhouette is checked against the hull of at most this many other views,
            those whose optical axes are closest to perpendicular to its own (the best-conditioned pairs;
            ties to the earlier view), so that the cost grows with the views, not with their square.
    """

    iterations: int = 60
    blur_px: tuple[float, ...] = (4.0, 2.0, 1.0)
    rays: int = 32
    samples: int = 64
    prior_deg: float = 2.0
    prior_m: float = 0.02
    prior_weight: float = 0.01
    lr: float = 0.003
    min_views: int = 2
    max_others: int = 4


def _skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices float [N, 3, 3] of vectors [N, 3]."""
    z = torch.zeros_like(w[:, 0])
    return torch.stack([torch.stack([z, -w[:, 2], w[:, 1]], 1), torch.stack([w[:, 2], z, -w[:, 0]], 1),
                        torch.stack([-w[:, 1], w[:, 0], z], 1)], 1)


def correct_poses(pose: torch.Tensor, omega: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Poses turned about their camera centres by ``exp([omega]_x)`` and shifted by ``delta``.

    Args:
        pose: float32 [V, 4, 4] camera-to-world. omega: float32 [V, 3] rotation vectors, radians (world
            axes). delta: float32 [V, 3] shifts of the camera centres, metres (world axes).

    Returns:
        float32 [V, 4, 4]: rotation ``exp([omega]_x) R``, centre ``t + delta`` (differentiable).
    """
    R = torch.matrix_exp(_skew(omega)) @ pose[:, :3, :3]
    top = torch.cat([R, pose[:, :3, 3:] + delta[:, :, None]], 2)
    return torch.cat([top, pose[:, 3:]], 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur float [V, H, W] -> [V, H, W] (``sigma`` pixels; borders replicated)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    y = torch.nn.functional.pad(x[:, None], (r, r, 0, 0), mode="replicate")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = torch.nn.functional.pad(y, (0, 0, r, r), mode="replicate")
    return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def trace_set(sil: torch.Tensor, K: torch.Tensor, n: int, floor: float | None = None) -> tuple:
    """The rays :func:`coherence_loss` traces, made once per silhouette blur (they do not depend on the
    poses): every view's ``n x n`` grid of pixel centres.

    Args:
        sil: float32 [V, H, W] silhouettes. K: float32 [V, 3, 3] intrinsics, pixels. n: rays a side.
        floor: trace only the rays whose pixel's silhouette value is above this (the others add nothing
            to the loss); None: all of them.

    Returns:
        ``(target float32 [V, n*n], directions float32 [V, n*n, 3], index)``: the silhouette at every
        ray's pixel, the rays' directions in each camera's frame (z = 1), and per view the long tensor
        of the rays to trace.
    """
    v, h, w = sil.shape
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * (w / n) - 0.5
    r = (torch.arange(n, dtype=torch.float32) + 0.5) * (h / n) - 0.5
    vv, uu = torch.meshgrid(r, c, indexing="ij")
    uu, vv = uu.flatten(), vv.flatten()
    x = (uu[None] - K[:, 0, 2, None]) / K[:, 0, 0, None]
    y = (vv[None] - K[:, 1, 2, None]) / K[:, 1, 1, None]
    grid = torch.stack([(uu + 0.5) / w * 2 - 1, (vv + 0.5) / h * 2 - 1], -1)
    target = torch.nn.functional.grid_sample(sil[:, None], grid[None, None].expand(v, -1, -1, -1),
                                             align_corners=False)[:, 0, 0]
    index = [torch.arange(n * n) if floor is None else torch.nonzero(t > floor).flatten() for t in target]
    return target, torch.stack([x, y, torch.ones_like(x)], -1), index


def partner_views(pose: torch.Tensor, max_others: int) -> list[list[int]]:
    """For every view, the other views its silhouette is checked against (:attr:`PoseRefineConfig.max_others`).

    Args:
        pose: float [V, 4, 4] camera-to-world. max_others: at most this many partners a view.

    Returns:
        V lists of view indices: all the others when ``V - 1 <= max_others``, else the ``max_others``
        whose optical axes have the smallest ``|cos|`` to the view's own (stable: ties to lower indices).
    """
    v = len(pose)
    if v - 1 <= max_others:
        return [[j for j in range(v) if j != i] for i in range(v)]
    axes = pose[:, :3, 2].double()
    cos = (axes @ axes.T).abs()
    out = []
    for i in range(v):
        others = sorted((j for j in range(v) if j != i), key=lambda j: (round(float(cos[i, j]), 6), j))
        out.append(sorted(others[:max_others]))
    return out


def coherence_loss(sil: torch.Tensor, K: torch.Tensor, pose: torch.Tensor, cfg: PoseRefineConfig = PoseRefineConfig(),
                   rays: tuple | None = None, partners: list[list[int]] | None = None) -> torch.Tensor:
    """The silhouette coherence term of :func:`refine_poses` (differentiable in ``pose``).

    Args:
        sil: float32 [V, H, W] silhouette probabilities (blurred or not). K: float32 [V, 3, 3] intrinsics,
            pixels. pose: float32 [V, 4, 4] camera-to-world, metres (the grid's unit cube in its frame).
        cfg: ray grid, samples and ``max_others``. rays: :func:`trace_set` of ``sil`` (:func:`refine_poses`
            makes it once per blur and traces only rays on or near a silhouette); None: every ray.
        partners: each view's partner views (:func:`partner_views`); None: from ``pose``.

    Returns:
        float32 scalar in [0, 1]: the mean over views of the share of the silhouette that the other
        views' hull leaves uncovered (0: every silhouette covered).

    Raises:
        ValueError: fewer than two views.
    """
    v, h, w = sil.shape
    if v < 2:
        raise ValueError("silhouette coherence needs at least two views")
    target, dirs, index = rays if rays is not None else trace_set(sil, K, cfg.rays)
    total = sil.new_zeros(())
    if partners is None:
        partners = partner_views(pose.detach(), cfg.max_others)
    for i in range(v):
        idx = index[i]
        if len(idx) == 0:
            continue
        ti = target[i, idx]
        R, c = pose[i, :3, :3], pose[i, :3, 3]
        d = dirs[i, idx] @ R.T  # world directions (not unit: z = 1 in the camera)
        # where each ray enters and leaves the unit cube (slab method); rays that miss get an empty span
        inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t0, t1 = (-0.5 - c) * inv, (0.5 - c) * inv
        t_near = torch.minimum(t0, t1).amax(1).clamp(min=1e-3)
        t_far = torch.maximum(t0, t1).amin(1)
        hit = (t_far > t_near).to(sil.dtype)
        s = torch.linspace(0.0, 1.0, cfg.samples, dtype=sil.dtype)
        ts = t_near[:, None] + (t_far - t_near).clamp(min=0)[:, None] * s[None]  # [P, S]
        pts = c + d[:, None, :] * ts[..., None]
        others = partners[i]
        g, _, seen = project_normalized(pts.reshape(-1, 3), K[others], pose[others], h, w)
        val = torch.nn.functional.grid_sample(sil[others][:, None], g[:, None], align_corners=False)[:, 0, 0]
        val = torch.where(seen, val, torch.ones_like(val))
        hull = val.prod(0).view(len(idx), cfg.samples).amax(1) * hit
        total = total + (ti * (1 - hull)).sum() / target[i].sum().clamp(min=1e-6)
    return total / v


def refine_poses(masks: torch.Tensor, K: torch.Tensor, pose: torch.Tensor,
                 cfg: PoseRefineConfig = PoseRefineConfig()) -> tuple[torch.Tensor, dict]:
    """Poses corrected so that the views' silhouettes agree (silhouette coherence, Hernandez et al. 2007).

    The result depends on the views and their order only through floating-point summation; callers
    that need the same grid for any order of the same views (the ground) pass them in a canonical order.

    Args:
        masks: float32 [V, H, W] silhouette probabilities (decoded from the codes).
        K: float32 [V, 3, 3] (or one [3, 3]) intrinsics, pixels. pose: float32 [V, 4, 4] camera-to-world, metres, as reported.
        cfg: :class:`PoseRefineConfig`.

    Returns:
        ``(pose float32 [V, 4, 4], info)``: the corrected poses (the reported ones when fewer than
        ``cfg.min_views`` views, or where the corrected ones agree worse: ``kept_reported``), and ``info``
        {``loss_before``, ``loss_after`` (coherence at the finest blur), ``kept_reported``,
        ``rotation_deg`` [V] and ``shift_m`` [V] (the corrections, after the gauge fix), ``ms``}.

    Raises:
        ValueError: shapes that do not match.
    """
    t_start = time.perf_counter()
    masks, K, pose = masks.float(), K.float().expand(len(pose), 3, 3), pose.float()
    v = len(pose)
    if masks.dim() != 3 or len(masks) != v or pose.shape[1:] != (4, 4):
        raise ValueError(f"masks [V, H, W] and poses [V, 4, 4] of the same V, got {tuple(masks.shape)} and {tuple(pose.shape)}")
    if v < max(2, cfg.min_views):
        return pose.clone(), {"loss_before": None, "loss_after": None, "kept_reported": True, "rotation_deg": [0.0] * v,
                              "shift_m": [0.0] * v, "ms": 0.0}
    partners = partner_views(pose, cfg.max_others)  # from the reported poses, fixed while refining
    omega = torch.zeros(v, 3, requires_grad=True)
    delta = torch.zeros(v, 3, requires_grad=True)
    opt = torch.optim.Adam([omega, delta], lr=cfg.lr)
    s_rot, s_t = math.radians(cfg.prior_deg), cfg.prior_m
    stages = len(cfg.blur_px)
    with torch.enable_grad():
        for k, sigma in enumerate(cfg.blur_px):
            sil = gaussian_blur(masks, sigma)
            # trace only the rays whose pixel is (nearly) on a blurred silhouette: the others add nothing
            rays = trace_set(sil, K, cfg.rays, floor=1e-3)
            n = cfg.iterations // stages + (cfg.iterations % stages if k == stages - 1 else 0)
            for _ in range(n):
                opt.zero_grad()
                coh = coherence_loss(sil, K, correct_poses(pose, omega, delta), cfg, rays, partners)
                prior = cfg.prior_weight * ((omega / s_rot).square().sum() + (delta / s_t).square().sum()) / v
                (coh + prior).backward()
                opt.step()
        with torch.no_grad():
            sil = gaussian_blur(masks, cfg.blur_px[-1]) if cfg.blur_px else masks
            loss_before = float(coherence_loss(sil, K, pose, cfg, partners=partners))
            refined = _keep_frame(correct_poses(pose, omega, delta), pose)
            loss_after = float(coherence_loss(sil, K, refined, cfg, partners=partners))
    # never worse than the poses as sent, by the measure itself (or not finite): keep those
    kept = not (math.isfinite(loss_after) and loss_after <= loss_before)
    if kept:
        refined, loss_after = pose.clone(), loss_before
    info = {"loss_before": loss_before, "loss_after": loss_after, "kept_reported": kept,
            "rotation_deg": [round(float(x), 4) for x in rotation_angle_deg(refined, pose)],
            "shift_m": [round(float(x), 5) for x in (refined[:, :3, 3] - pose[:, :3, 3]).norm(dim=1)],
            "ms": (time.perf_counter() - t_start) * 1000.0}
    return refined.detach(), info


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees float32 [V] of the rotation between poses ``a`` and ``b`` (float [V, 4, 4] each)."""
    R = a[:, :3, :3].double().transpose(1, 2) @ b[:, :3, :3].double()
    cos = ((R.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).float()


def _anchors(pose: torch.Tensor) -> torch.Tensor:
    """Two points a camera carries, float64 [2V, 3]: its centre, and the point of its optical axis as
    far ahead as the centre is from the origin (about where it looks)."""
    c = pose[:, :3, 3].double()
    ahead = c + pose[:, :3, 2].double() * c.norm(dim=1, keepdim=True)
    return torch.cat([c, ahead])


def _keep_frame(refined: torch.Tensor, reported: torch.Tensor) -> torch.Tensor:
    """Refined poses moved all together by the similarity (rotation, scale, shift; Umeyama 1991) that
    best takes the points they carry (:func:`_anchors`) onto the reported poses' ones: the part of the
    correction that silhouettes cannot see is taken back. float32 [V, 4, 4] -> [V, 4, 4]."""
    a, b = _anchors(refined.detach()), _anchors(reported)
    ma, mb = a.mean(0), b.mean(0)
    A, B = a - ma, b - mb
    U, S, Vt = torch.linalg.svd(B.T @ A / len(a))
    D = torch.eye(3, dtype=torch.float64)
    D[2, 2] = torch.sign(torch.det(U @ Vt))
    R = U @ D @ Vt
    var = (A * A).sum(1).mean()
    scale = (S * D.diagonal()).sum() / var if var > 1e-12 else torch.tensor(1.0, dtype=torch.float64)
    out = refined.detach().double().clone()
    out[:, :3, :3] = R @ out[:, :3, :3]
    out[:, :3, 3] = scale * (out[:, :3, 3] - ma) @ R.T + mb
    return out.float()
