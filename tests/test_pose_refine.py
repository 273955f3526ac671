"""Pose refinement by silhouette coherence: poses off by a drone's error are pulled back, and the ground's
grid stays independent of the views' order and repeats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxlink import camera
from voxlink.models.implicit import iou
from voxlink.models.pose_refine import PoseRefineConfig, partner_views, refine_poses, rotation_angle_deg
from voxlink.models.projection import max_filter2d, perturb_poses, project, silhouette_hull, voxel_centres


def _chair_points(n: int = 40000, seed: int = 0) -> torch.Tensor:
    """Points filling an asymmetric chair-like union of boxes inside the unit cube, float32 [n, 3] metres."""
    boxes = torch.tensor([[[-0.30, -0.05, -0.25], [0.30, 0.03, 0.25]],    # seat
                          [[-0.30, 0.03, 0.17], [0.30, 0.42, 0.25]],      # back
                          [[-0.30, -0.45, -0.25], [-0.22, -0.05, -0.17]],  # legs
                          [[0.22, -0.45, -0.25], [0.30, -0.05, -0.17]],
                          [[-0.30, -0.45, 0.17], [-0.22, -0.05, 0.25]],
                          [[0.22, -0.45, 0.17], [0.30, -0.05, 0.25]],
                          [[0.30, -0.05, -0.25], [0.45, 0.10, -0.10]]])    # an arm on one side only
    g = torch.Generator().manual_seed(seed)
    vol = (boxes[:, 1] - boxes[:, 0]).prod(1)
    which = torch.multinomial(vol / vol.sum(), n, replacement=True, generator=g)
    lo, hi = boxes[which, 0], boxes[which, 1]
    return lo + (hi - lo) * torch.rand(n, 3, generator=g)


def _silhouettes(pts: torch.Tensor, K: torch.Tensor, pose: torch.Tensor, size: int = 128) -> torch.Tensor:
    """Binary silhouettes float32 [V, size, size] of a point-filled object (points splatted, then closed)."""
    uv, z = project(pts, K, pose)
    out = torch.zeros(len(pose), size * size)
    u, v = uv[..., 0].round().long(), uv[..., 1].round().long()
    ok = (u >= 0) & (u < size) & (v >= 0) & (v < size) & (z > 0)
    for i in range(len(pose)):
        out[i, v[i][ok[i]] * size + u[i][ok[i]]] = 1.0
    return max_filter2d(out.view(-1, 1, size, size), 3)[:, 0]


def _scene(n_views: int = 5, seed: int = 0):
    pts = _chair_points()
    pose = torch.tensor(camera.orbit_poses(n_views, np.random.default_rng(seed)), dtype=torch.float32)
    K = torch.tensor(camera.intrinsics(), dtype=torch.float32).expand(n_views, 3, 3)
    centres = voxel_centres(32)
    # the object's occupancy: a voxel holding any of its points
    idx = ((pts + 0.5) * 32).long().clamp(0, 31)
    occ = torch.zeros(32, 32, 32)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = 1.0
    assert len(centres) == occ.numel()
    return pts, pose, K, occ


def test_silhouette_coherence_pulls_noisy_poses_back():
    """Poses each off by 2 degrees and 2 cm (a drone's GPS / IMU): refined on the silhouettes alone, they
    are closer to the truth, the silhouettes agree better, and the visual hull placed with them is closer
    to the object than the hull placed with the poses as reported."""
    pts, pose, K, occ = _scene()
    masks = _silhouettes(pts, K, pose)
    noisy = perturb_poses(pose, 2.0, 0.02, torch.Generator().manual_seed(1), exact=True)
    fixed, info = refine_poses(masks, K, noisy)
    assert info["loss_after"] < 0.5 * info["loss_before"], info
    before = float(rotation_angle_deg(noisy, pose).mean())
    after = float(rotation_angle_deg(fixed, pose).mean())
    assert after < 0.7 * before, (before, after)
    hull = lambda p: float(iou(silhouette_hull(masks, K, p)[None], occ[None], 0.5)[0])  # noqa: E731
    assert hull(fixed) > hull(noisy) + 0.05, (hull(noisy), hull(fixed), hull(pose))
    assert len(info["rotation_deg"]) == 5 and all(0.0 <= a < 6.0 for a in info["rotation_deg"])


def test_poses_that_agree_stay_where_they_are():
    """Exact poses: the refinement moves them by a fraction of a degree at most (no drift of the frame)."""
    pts, pose, K, _ = _scene(seed=2)
    fixed, info = refine_poses(_silhouettes(pts, K, pose), K, pose)
    assert float(rotation_angle_deg(fixed, pose).max()) < 0.6, info["rotation_deg"]
    assert float((fixed[:, :3, 3] - pose[:, :3, 3]).norm(dim=1).max()) < 0.03


def test_one_view_is_left_alone_and_bad_shapes_are_refused():
    pose = torch.tensor(camera.orbit_poses(1, np.random.default_rng(0)), dtype=torch.float32)
    K = torch.tensor(camera.intrinsics(), dtype=torch.float32)[None]
    masks = torch.rand(1, 128, 128)
    fixed, info = refine_poses(masks, K, pose)
    assert torch.equal(fixed, pose) and info["loss_before"] is None
    with pytest.raises(ValueError, match="same V"):
        refine_poses(torch.rand(2, 128, 128), K.expand(3, 3, 3), pose.expand(3, 4, 4))


def test_partners_are_the_best_conditioned_views_and_capped():
    pose = torch.tensor(camera.orbit_poses(12, np.random.default_rng(3)), dtype=torch.float32)
    parts = partner_views(pose, 4)
    assert all(len(p) == 4 and i not in p for i, p in enumerate(parts))
    axes = pose[:, :3, 2]
    for i, p in enumerate(parts):
        cos = (axes @ axes[i]).abs()
        rest = [j for j in range(12) if j != i and j not in p]
        assert float(cos[p].max()) <= float(cos[rest].min()) + 1e-6
    assert partner_views(pose[:4], 4) == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]


def test_refinement_cost_follows_the_config():
    """Fewer iterations cost less; PoseRefineConfig is the one place the settings live."""
    pts, pose, K, _ = _scene(n_views=3, seed=4)
    masks = _silhouettes(pts, K, pose)
    _, quick = refine_poses(masks, K, pose, PoseRefineConfig(iterations=3, rays=16, samples=16))
    _, full = refine_poses(masks, K, pose, PoseRefineConfig(iterations=30))
    assert quick["ms"] < full["ms"]


def test_ground_refines_poses_whatever_the_order_and_repeats(tmp_path):
    """With ``refine_poses`` the ground makes each grid from the object's distinct views at corrected
    poses: the same views in another order, some sent twice under new sequence numbers, give the same
    grid; ``session.json`` says what was corrected; without it the grid is the running state's."""
    from ground.station import GroundConfig, GroundStation
    from voxlink.models.binarizer import pack_bits
    from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
    from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
    from voxlink.weights import save_model

    torch.manual_seed(0)
    m = FusionModel(FUSION_CONFIGS["fusion-spatial-tiny"]).eval()
    path = save_model(m, tmp_path / "fusion.safetensors", meta={"family": "fusion"})
    bits, K = m.cfg.code_bits, camera.intrinsics(m.cfg.image_size)
    rng = np.random.default_rng(0)
    views = [(pack_bits(np.where(rng.random(bits) > 0.5, 1.0, -1.0)), camera.circle_pose(i, 5)) for i in range(5)]
    info = encode_info(StreamInfo(stream=1, seq=0, fingerprint=bytes.hex(m.fingerprint()), code_bits=bits, K=K,
                                  model="tiny", epoch_unix=1e9))

    def grid(order, refine=True):
        st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / f"o{len(order)}{refine}{order[0]}"),
                                        record=False, refine_poses=refine))
        msgs = [info] + [encode_code(CodeMessage(stream=1, object_id=3, seq=seq, t_ms=seq, n_bits=bits,
                                                 fingerprint=fingerprint32(m.fingerprint()), payload=views[v][0],
                                                 pose=views[v][1])) for seq, v in enumerate(order)]
        st.handle_many([(b, 1e9, "link") for b in msgs])
        s = st.sessions[(1, 3)]
        return st.occupancy(s), st.summary(s), st

    ref, summ, st = grid([0, 1, 2, 3, 4])
    assert summ["pose_refinement"]["views"] == 5 and st.stats["pose_refinements"] == 1
    for order in ([4, 2, 0, 3, 1], [1, 1, 0, 4, 2, 3, 3]):
        g, s2, _ = grid(order)
        assert np.allclose(g, ref, atol=1e-5) and s2["pose_refinement"]["views"] == 5
    plain, summ_plain, _ = grid([0, 1, 2, 3, 4], refine=False)
    assert summ_plain["pose_refinement"] is None


def test_eval_refines_poses_per_view_count(small_dataset):
    """``voxlink eval --refine-poses``: one view is left as it is (the same score as without refinement,
    through the all-at-once fusion), more views are refined and timed; a model without poses refuses."""
    import dataclasses

    from voxlink.evaluate import evaluate
    from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
    from voxlink.models.implicit import ImplicitModel
    from voxlink.models.config import get_config

    torch.manual_seed(0)
    model = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"])).eval()
    quick = PoseRefineConfig(iterations=6, rays=16, samples=24)
    plain = evaluate(model, small_dataset, split="all", views=3, max_objects=2, pose_noise=(2.0, 0.02))
    ref = evaluate(model, small_dataset, split="all", views=3, max_objects=2, pose_noise=(2.0, 0.02), refine_poses=quick)
    assert ref["miou"]["1"] == plain["miou"]["1"]
    pr = ref["pose_refinement"]
    assert pr["ms"]["1"] == 0.0 and pr["ms"]["3"] > 0.0 and pr["config"]["iterations"] == 6
    assert "poses refined" not in str(plain) and "pose_refinement" not in plain
    with pytest.raises(ValueError, match="pose-aware"):
        evaluate(ImplicitModel(get_config("tiny")), small_dataset, split="all", views=2, max_objects=1,
                 refine_poses=quick)
