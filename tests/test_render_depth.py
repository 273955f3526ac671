"""Depth maps ray-cast from an occupancy grid (voxlink.models.projection.render_depth)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxlink import camera
from voxlink.models.projection import project, render_depth, voxel_centres

R = 32
S = 1.0 / R  # voxel side, metres


def _box(lo: int, hi: int) -> torch.Tensor:
    """A box of voxels [lo, hi) on every axis, float32 [R, R, R] in {0, 1}."""
    g = torch.zeros(R, R, R)
    g[lo:hi, lo:hi, lo:hi] = 1.0
    return g


def _front_camera(distance: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """An OpenCV camera on -z looking along +z at the origin: K [1, 3, 3], pose [1, 4, 4]."""
    T = torch.eye(4)
    T[2, 3] = -distance
    return torch.tensor(camera.intrinsics(128, 50.0), dtype=torch.float32)[None], T[None]


def test_front_face_depth_is_the_level_set_of_the_trilinear_grid():
    # the box's front face lies at voxel boundary z = -0.5 + 8 S; trilinear p = tau = 0.4 lies 0.1 voxel
    # before it (between the last empty and the first full voxel centres), so the depth is known exactly
    K, T = _front_camera()
    d = render_depth(_box(8, 24), K, T, 128, 128, tau=0.4)
    face = -0.5 + 8 * S
    want = 2.0 + face - 0.1 * S
    centre = d[0, 60:68, 60:68]
    assert torch.allclose(centre, torch.full_like(centre, want), atol=2e-4)
    # a ray that misses the box sees nothing: 0
    assert float(d[0, 0, 0]) == 0.0
    # tau moves the surface: a higher level lies further in
    d6 = render_depth(_box(8, 24), K, T, 128, 128, tau=0.6)
    assert float(d6[0, 64, 64]) == pytest.approx(2.0 + face + 0.1 * S, abs=2e-4)


def test_silhouette_of_the_depth_map_matches_the_projected_box():
    # pixels with depth are those whose ray meets the box: compare with the projection of points
    # sampled on the box's front face, for a turned camera (any pose, not only axis-aligned)
    K = torch.tensor(camera.intrinsics(96, 50.0), dtype=torch.float32)[None]
    T = torch.tensor(camera.look_at(np.array([1.2, 0.9, -1.5]), np.zeros(3)), dtype=torch.float32)[None]
    occ = _box(10, 22)
    d = render_depth(occ, K, T, 96, 96)
    # the depth of every rendered pixel, back-projected, lands on the box's surface (within a voxel)
    pts = torch.tensor(camera.backproject(d[0].numpy(), K[0].numpy(), T[0].numpy()), dtype=torch.float32)
    assert len(pts) > 500
    lo, hi = -0.5 + 10 * S, -0.5 + 22 * S
    outside = torch.clamp(lo - pts, min=0) + torch.clamp(pts - hi, min=0)
    assert float(outside.norm(dim=1).max()) < 0.5 * S
    # and every occupied voxel centre on the box's visible side projects onto a rendered pixel
    c = voxel_centres(R)[occ.flatten() > 0.5]
    uv, z = project(c, K, T)
    ui, vi = uv[0].round().long(), uv[0, :, 1].round().long()
    ui = ui[:, 0]
    ok = (ui >= 0) & (ui < 96) & (vi >= 0) & (vi < 96)
    assert bool(ok.all())
    assert bool((d[0, vi, ui] > 0).all())
    assert bool((d[0, vi, ui] <= z[0] + 1e-4).all())  # the first surface, never behind a voxel centre


def test_empty_grid_and_bad_shapes():
    K, T = _front_camera()
    assert float(render_depth(torch.zeros(R, R, R), K, T, 32, 32).abs().max()) == 0.0
    with pytest.raises(ValueError, match="cube"):
        render_depth(torch.zeros(R, R, R - 1), K, T, 32, 32)
    with pytest.raises(ValueError, match="K"):
        render_depth(torch.zeros(R, R, R), K[0], T, 32, 32)


def test_rays_limit_the_pixels_cast():
    K, T = _front_camera()
    full = render_depth(_box(8, 24), K, T, 64, 64)
    only = torch.zeros(1, 64, 64, dtype=torch.bool)
    only[0, 20:40, 30:34] = True
    part = render_depth(_box(8, 24), K, T, 64, 64, rays=only)
    assert torch.equal(part[only], full[only])
    assert float(part[~only].abs().max()) == 0.0
    with pytest.raises(ValueError, match="rays"):
        render_depth(_box(8, 24), K, T, 64, 64, rays=only[0])


@pytest.mark.parametrize("p_max,step", [(0.9, 0.5), (0.45, 0.1)])
def test_a_plate_one_voxel_thin_is_found_where_the_step_allows(p_max, step):
    # a one-voxel plate (layer z = 12) at p_max: trilinear p exceeds tau = 0.4 within (1 - tau / p_max)
    # voxels of its centre plane, so the first crossing lies that far in front of it; a step below that
    # window never steps over it (the docstring's bound)
    g = torch.zeros(R, R, R)
    g[8:24, 8:24, 12] = p_max
    K, T = _front_camera()
    d = render_depth(g, K, T, 128, 128, step=step)
    centre = -0.5 + 12.5 * S
    want = 2.0 + centre - (1 - 0.4 / p_max) * S
    patch = d[0, 56:72, 56:72]
    assert torch.allclose(patch, torch.full_like(patch, want), atol=3e-4)
    with pytest.raises(ValueError, match="step"):
        render_depth(g, K, T, 8, 8, step=0)
