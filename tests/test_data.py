"""The data pipeline: geometry consistency, determinism, real meshes, storage and bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from voxlink import camera
from voxlink.data import procedural
from voxlink.data.binvox import BinvoxError, read_binvox, write_binvox
from voxlink.data.dataset import MultiViewDataset, rotate_grid_y, yaw_matrix
from voxlink.data.make import MakeConfig, make_dataset, make_object, plan_jobs, Job
from voxlink.data.meshes import MeshLoadError, load_mesh
from voxlink.data.store import DatasetError, DatasetStore
from voxlink.data.voxelize import grid_to_world, points_to_voxels, voxel_centers, voxelize

# Real meshes chosen for trouble: multi-part, textured, non-watertight, thin parts, a Z-long truck.
HARD_MESHES = ["oakChair", "L_shaped_sofa", "wardrobeWithSlidingDoors", "dustbin", "umbrella", "lamp2", "peterbilt"]


def _geometry_scores(rgb, depth, poses, K, occ):
    """(share of mask pixels landing on occupied-or-border voxels, worst share of voxels inside a view's mask)."""
    border = ndimage.binary_dilation(occ, iterations=1)
    hit, total = 0, 0
    for d, T in zip(depth, poses):
        pts = camera.backproject(d, K, T)
        idx = points_to_voxels(pts)
        ok = np.all((idx >= 0) & (idx < occ.shape[0]), axis=1)
        hit += int(border[tuple(idx[ok].T)].sum())
        total += len(pts)
    centres = voxel_centers(occ.shape[0])[occ]
    worst = 1.0
    # dilate each mask by about a voxel's footprint in pixels (voxel 1/32 at ~2 m, f ~ 137 px: ~2 px)
    for d, T in zip(depth, poses):
        mask = ndimage.binary_dilation(d > 0, iterations=3)
        uv, z = camera.project(centres, K, T)
        u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
        inside = (u >= 0) & (u < mask.shape[1]) & (v >= 0) & (v < mask.shape[0]) & (z > 0)
        good = np.zeros(len(centres), bool)
        good[inside] = mask[v[inside], u[inside]]
        # voxels projecting outside the image cannot be checked against this view
        worst = min(worst, good[inside].mean() if inside.any() else 1.0)
    return hit / max(total, 1), worst


@pytest.mark.parametrize("category", procedural.CATEGORIES)
def test_procedural_geometry_consistent(category):
    cfg = MakeConfig(views=6, seed=11)
    res = make_object(Job(index=3, kind="procedural", category=category, shape_seed=5), cfg)
    a = res["arrays"]
    K = camera.intrinsics(cfg.size, cfg.fov_deg)
    on_voxels, in_masks = _geometry_scores(a["rgb"], a["depth"], a["pose"].astype(np.float64), K, a["occupancy"])
    assert on_voxels >= 0.98, f"{category}: only {on_voxels:.3f} of depth pixels land on occupied voxels"
    assert in_masks >= 0.97, f"{category}: only {in_masks:.3f} of occupied voxels inside a view's mask"


@pytest.mark.parametrize("name", HARD_MESHES)
def test_real_mesh_geometry_consistent(name, mesh_root):
    path = next(mesh_root.rglob(f"{name}.obj"), None)
    if path is None:
        pytest.skip(f"{name} is not among the meshes at {mesh_root}")
    cfg = MakeConfig(views=6, seed=5)
    res = make_object(Job(index=0, kind="mesh", path=str(path)), cfg)
    a = res["arrays"]
    K = camera.intrinsics(cfg.size, cfg.fov_deg)
    on_voxels, in_masks = _geometry_scores(a["rgb"], a["depth"], a["pose"].astype(np.float64), K, a["occupancy"])
    assert on_voxels >= 0.98, f"{name}: only {on_voxels:.3f} of depth pixels land on occupied voxels"
    assert in_masks >= 0.97, f"{name}: only {in_masks:.3f} of occupied voxels inside a view's mask (over-filled?)"


def test_background_is_exactly_where_depth_is_zero():
    cfg = MakeConfig(views=4, seed=2)
    res = make_object(Job(index=1, kind="procedural", category="chair", shape_seed=9), cfg)
    rgb, depth = res["arrays"]["rgb"], res["arrays"]["depth"]
    bgs = np.random.default_rng([2, 1, 1])  # same stream as make_object: poses first, then backgrounds
    camera.orbit_poses(4, bgs, cfg.orbit)
    bg = bgs.integers(0, 256, size=(4, 3), dtype=np.uint8)
    for v in range(4):
        mask = depth[v] > 0
        assert 0.01 < mask.mean() < 0.9
        assert (rgb[v][~mask] == bg[v]).all(), "every background pixel has the plain background colour"
        assert not (rgb[v][mask] == bg[v]).all(axis=1).all()


def test_intrinsics_and_projection_round_trip():
    K = camera.intrinsics(128, 50.0)
    T = camera.orbit_poses(1, np.random.default_rng(0))[0]
    pts = np.random.default_rng(1).uniform(-0.4, 0.4, size=(50, 3))
    uv, z = camera.project(pts, K, T)
    depth = np.zeros((128, 128))
    # back-project exact sub-pixel positions through the same model
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    back = np.stack([x, y, z], 1) @ T[:3, :3].T + T[:3, 3]
    assert np.allclose(back, pts, atol=1e-9)
    assert depth.shape == (128, 128)
    # OpenCV convention: the object frame's up (+Y) points up in the image (smaller v)
    top, _ = camera.project(np.array([[0, 0.3, 0.0]]), K, T)
    bottom, _ = camera.project(np.array([[0, -0.3, 0.0]]), K, T)
    assert top[0, 1] < bottom[0, 1]


def test_same_seed_gives_byte_identical_data(tmp_path):
    jobs = plan_jobs(4, [], seed=21)
    cfg = MakeConfig(views=3, seed=21, shard_size=2)
    make_dataset(tmp_path / "a", jobs, cfg, workers=1, progress=False)
    make_dataset(tmp_path / "b", jobs, cfg, workers=2, progress=False)

    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_different_seeds_give_different_shapes():
    a = procedural.make_object("table", 1)
    b = procedural.make_object("table", 2)
    assert a.vertices.shape != b.vertices.shape or not np.allclose(a.vertices, b.vertices)
    ja, jb = plan_jobs(3, [], seed=1), plan_jobs(3, [], seed=2)
    assert [j.shape_seed for j in ja] != [j.shape_seed for j in jb]


def test_every_real_mesh_loads_normalises_and_voxelizes(real_mesh_files):
    assert real_mesh_files, "no real meshes found"
    for path in real_mesh_files:
        m = load_mesh(path)
        lo, hi = m.mesh.bounds
        assert np.all(lo >= -0.5 - 1e-6) and np.all(hi <= 0.5 + 1e-6), f"{path} leaves the unit cube"
        assert abs((hi - lo).max() - 1.0) < 1e-6, f"{path}: longest side is not 1"
        assert np.allclose((hi + lo) / 2, 0, atol=1e-6), f"{path} is not centred"
        occ = voxelize(m.mesh)
        assert occ.sum() > 0, f"{path} voxelizes to an empty grid"


def test_z_up_meshes_are_turned_y_up(tmp_path):
    import trimesh

    box = trimesh.creation.box([0.2, 0.4, 1.0])  # tallest along Z, as a Z-up file would have it
    path = tmp_path / "tall.ply"
    box.export(path)
    m = load_mesh(path, up="z")
    ext = m.mesh.bounds[1] - m.mesh.bounds[0]
    assert np.argmax(ext) == 1, "the Z-up tall axis becomes Y"


def test_binvox_round_trip(tmp_path):
    occ = np.random.default_rng(0).random((32, 32, 32)) > 0.8
    write_binvox(tmp_path / "g.binvox", occ)
    back, translate, scale = read_binvox(tmp_path / "g.binvox")
    assert back.dtype == bool and (back == occ).all()
    assert np.allclose(translate, -0.5) and scale == 1.0
    (tmp_path / "bad.binvox").write_bytes(b"#binvox 1\ndim 32 32 32\ndata\n\x01")
    with pytest.raises(BinvoxError):
        read_binvox(tmp_path / "bad.binvox")


def test_store_and_dataset(small_dataset):
    store = DatasetStore(small_dataset)
    man = store.manifest
    assert man["generator_version"] == procedural.GENERATOR_VERSION and man["seed"] == 3
    assert sum(man["splits"].values()) == len(store) == 19
    for split in ("train", "val", "test"):
        ids = {store.objects[i]["id"] for i in store.split(split)}
        assert not ids & {store.objects[i]["id"] for s in ("train", "val", "test") if s != split for i in store.split(s)}
    assert store.read(0, "rgb").shape == (8, 128, 128, 3) and store.read(0, "rgb").dtype == np.uint8
    assert store.read(0, "depth").dtype == np.float32 and store.read(0, "pose").shape == (8, 4, 4)
    assert store.read(0, "occupancy").shape == (32, 32, 32)

    train = MultiViewDataset(small_dataset, "all", max_views=5, train=True)
    it = train[0]
    assert it["images"].shape == (5, 3, 128, 128) and 0 <= it["images"].min() and it["images"].max() <= 1
    ev = MultiViewDataset(small_dataset, "all", max_views=5, train=False, with_depth=True)
    a, b = ev[2], ev[2]
    assert torch.equal(a["images"], b["images"]), "evaluation views are fixed"
    assert torch.equal(a["mask"], a["depth"] > 0)


def test_view_frame_rotates_grid_with_the_first_camera(small_dataset):
    obj = MultiViewDataset(small_dataset, "all", 3, train=False, frame="object")
    view = MultiViewDataset(small_dataset, "all", 3, train=False, frame="view")
    for i in range(4):
        o, v = obj[i], view[i]
        # both grids, placed in the object frame by their grid_to_world, must agree
        occ_o = o["occupancy"].numpy() > 0.5
        pts = (v["grid_to_world"].numpy()[:3, :3] @ np.argwhere(v["occupancy"].numpy() > 0.5).T).T + v["grid_to_world"].numpy()[:3, 3]
        idx = points_to_voxels(pts)
        ok = np.all((idx >= 0) & (idx < 32), axis=1)
        agree = ndimage.binary_dilation(occ_o, iterations=1)[tuple(idx[ok].T)].mean()
        assert agree > 0.95


def test_rotate_grid_y_quarter_turn_matches_yaw_matrix():
    occ = torch.zeros(32, 32, 32)
    occ[28, 16, 16] = 1  # a voxel at +x
    rot = rotate_grid_y(occ, np.pi / 2)
    i, j, k = np.argwhere(rot.numpy() > 0.5)[0]
    p = grid_to_world()[:3, :3] @ np.array([28, 16, 16]) + grid_to_world()[:3, 3]
    q = yaw_matrix(np.pi / 2)[:3, :3] @ p  # where the same point goes under the yaw
    expect = points_to_voxels(q[None])[0]
    assert (abs(np.array([i, j, k]) - expect) <= 1).all()


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00\x01")
    with pytest.raises(MeshLoadError, match="broken.ply"):
        load_mesh(bad)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    with pytest.raises(MeshLoadError, match="empty.obj"):
        load_mesh(empty)
    with pytest.raises(DatasetError, match="manifest"):
        DatasetStore(tmp_path)
    with pytest.raises(ValueError, match="nothing to make"):
        make_dataset(tmp_path / "out", [], MakeConfig())


def test_cli_make_goes_on_past_a_bad_mesh_and_names_it(tmp_path, mesh_root):
    good = next(mesh_root.rglob("*.obj"))
    bad = tmp_path / "corrupt.obj"
    bad.write_text("v 0 0 0\nf 1 1 1\nthis is not obj\n")
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "data", "make", "--out", str(out), "--meshes", str(good),
                        "--meshes", str(bad), "--views", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "corrupt.obj" in r.stderr
    assert json.loads((out / "manifest.json").read_text())["splits"]["test"] == 1
    assert "objects/s" in r.stdout
    # an output path that is a file, and an empty one, are refused with a message
    f = tmp_path / "file"
    f.write_text("x")
    for target in (str(f), ""):
        r = subprocess.run([sys.executable, "-m", "voxlink.cli", "data", "make", "--out", target, "--procedural", "1",
                            "--views", "1"], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "error" in r.stderr.lower() and "Traceback" not in r.stderr


def test_contact_sheet(small_dataset, tmp_path):
    from PIL import Image

    from voxlink.data.sheet import contact_sheet

    out = contact_sheet(small_dataset, tmp_path / "sheet.png", n_objects=3)
    im = np.asarray(Image.open(out))
    assert im.shape[0] > 200 and im.shape[1] > 600 and im.std() > 10


@pytest.mark.parametrize("suffix", [".glb", ".off", ".ply", ".obj"])
def test_mesh_formats_load(tmp_path, suffix):
    import trimesh

    mesh = trimesh.creation.cylinder(radius=0.3, height=2.0, sections=12)
    mesh.visual.face_colors = [200, 30, 30, 255]
    path = tmp_path / f"thing{suffix}"
    mesh.export(path)
    m = load_mesh(path)
    assert len(m.mesh.faces) >= len(mesh.faces) - 2
    assert abs((m.mesh.bounds[1] - m.mesh.bounds[0]).max() - 1.0) < 1e-6
    assert voxelize(m.mesh).sum() > 0


def test_random_heading_turns_the_object_frame_target_only(small_dataset):
    """``heading="random"``: the views stay, the object-frame target turns; the view frame is unchanged."""
    from voxlink.data.dataset import MultiViewDataset

    kw = dict(split="all", max_views=3, train=False)
    for frame in ("view", "object"):
        a = MultiViewDataset(small_dataset, frame=frame, **kw)
        b = MultiViewDataset(small_dataset, frame=frame, heading="random", **kw)
        changed = 0
        for i in range(6):
            x, y = a[i], b[i]
            assert torch.equal(x["images"], y["images"])
            assert x["occupancy"].sum() > 0 and y["occupancy"].sum() > 0
            changed += not torch.equal(x["occupancy"], y["occupancy"])
            if frame == "view":
                assert torch.equal(x["grid_to_world"], y["grid_to_world"])
        assert (changed == 0) if frame == "view" else (changed >= 4), (frame, changed)
    with pytest.raises(ValueError, match="heading"):
        MultiViewDataset(small_dataset, frame="object", heading="north", **kw)


def test_texture_without_uvs_renders_in_base_colour_and_meshes_take_several_paths(tmp_path, mesh_root):
    """A material with a texture map but no texture coordinates (two training meshes are like that) is
    drawn in its base colour instead of ending the dataset; ``--meshes`` takes several paths after one flag."""
    from PIL import Image

    from voxlink.data.store import DatasetStore

    folder = tmp_path / "redbox"
    folder.mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "tex.png")
    (folder / "redbox.mtl").write_text("newmtl red\nKd 0.9 0.05 0.05\nmap_Kd tex.png\n")
    verts = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    faces = [(1, 2, 4), (1, 4, 3), (5, 7, 8), (5, 8, 6), (1, 5, 6), (1, 6, 2), (3, 4, 8), (3, 8, 7), (1, 3, 7),
             (1, 7, 5), (2, 6, 8), (2, 8, 4)]
    (folder / "redbox.obj").write_text("mtllib redbox.mtl\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in verts)
                                       + "usemtl red\n" + "".join(f"f {a} {b} {c}\n" for a, b, c in faces))
    good = next(mesh_root.rglob("*.obj"))
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "data", "make", "--out", str(out), "--meshes",
                        str(folder / "redbox.obj"), str(good), "--views", "2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    store = DatasetStore(out)
    assert len(store.objects) == 2 and not store.manifest["failed"]
    i = [k for k, o in enumerate(store.objects) if o["name"] == "redbox"][0]
    rgb, depth = store.read(i, "rgb"), store.read(i, "depth")
    obj = rgb[depth > 0].astype(float).mean(0)
    assert obj[0] > 1.5 * obj[1] and obj[0] > 1.5 * obj[2], f"drawn in the material's red, got {obj}"


def test_items_of_one_view_are_writable_tensors(small_dataset):
    """An item of a one-view dataset (as the mean grid and BatchNorm recalibration read) holds tensors
    that own their memory: intrinsics a caller may change without touching the dataset's, and no
    PyTorch warning about read-only NumPy arrays."""
    import warnings

    from voxlink.data.dataset import MultiViewDataset

    for views in (1, 3):
        ds = MultiViewDataset(small_dataset, "all", views, train=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            item = ds[0]
        assert item["K_views"].shape == (views, 3, 3)
        item["K_views"][0, 0, 0] += 1.0
        assert float(ds[0]["K_views"][0, 0, 0]) == float(item["K_views"][0, 0, 0]) - 1.0
