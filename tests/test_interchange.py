"""The interchange format: `data make --format npz` equals the sharded dataset item for item, a user's
capture imports with the right intrinsics, poses and depth, and `voxlink eval` reads a folder of files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voxlink import camera
from voxlink.data.dataset import MultiViewDataset
from voxlink.data.interchange import InterchangeError, write_object
from voxlink.data.make import MakeConfig, make_dataset, plan_jobs
from voxlink.data.store import DatasetError, DatasetStore, manifest_hash

ROOT = Path(__file__).resolve().parents[1]
MESH = ROOT / "voxlink" / "assets" / "meshes" / "table" / "table.obj"


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """The same 4 procedural objects + 1 real mesh (seed 7, 6 views) as a sharded dataset and as npz files."""
    root = tmp_path_factory.mktemp("fmt")
    jobs = plan_jobs(4, [MESH], seed=7)
    cfg = MakeConfig(views=6, seed=7, shard_size=2, mesh_split="auto")
    for fmt in ("sharded", "npz"):
        st = make_dataset(root / fmt, jobs, cfg, progress=False, fmt=fmt)
        assert st["objects"] == 5 and not st["failed"]
    return root / "sharded", root / "npz"


def test_npz_files_hold_the_documented_members(both_formats):
    _, npz = both_formats
    files = sorted(npz.glob("*.npz"))
    assert [f.stem.split("_")[0] for f in files] == [f"{i:06d}" for i in range(5)] and files[-1].stem == "000004_table"
    assert [str(np.load(f)["id"]) for f in files] == [f"proc-{i:06d}" for i in range(4)] + ["mesh-000004"]
    z = np.load(files[0])  # plain NumPy reads it, without pickle
    assert z["rgb"].dtype == np.uint8 and z["rgb"].shape == (6, 128, 128, 3)
    assert z["depth"].dtype == np.float32 and z["depth"].shape == (6, 128, 128)
    assert z["mask"].dtype == bool and np.array_equal(z["mask"], z["depth"] > 0)
    assert z["K"].dtype == np.float32 and z["K"].shape == (6, 3, 3)
    assert np.allclose(z["K"][3], camera.intrinsics(128, 50.0))
    assert z["pose"].dtype == np.float32 and z["pose"].shape == (6, 4, 4)
    assert z["occupancy"].dtype == bool and z["occupancy"].shape == (32, 32, 32) and z["occupancy"].any()
    assert np.allclose(z["voxel_min"], -0.5) and float(z["voxel_size"]) == pytest.approx(1 / 32)
    assert str(z["category"]) == "chair" and str(z["source"]).startswith("procedural:") and str(z["split"]) in ("train", "val", "test")
    assert str(np.load(files[-1])["source"]).startswith("mesh:") and str(z["format"]) == "voxlink-npz-1"


def test_npz_folder_reads_as_the_sharded_dataset(both_formats):
    sharded, npz = both_formats
    a, b = DatasetStore(sharded), DatasetStore(npz)
    assert b.kind == "npz" and len(a) == len(b) == 5
    for key in ("id", "name", "category", "split", "source"):
        assert [o[key] for o in a.objects] == [o[key] for o in b.objects], key
    for s in ("train", "val", "test", "all"):
        assert a.split(s) == b.split(s)
    assert b.manifest["views"] == 6 and b.manifest["grid"]["resolution"] == 32 and np.allclose(a.K, b.K)
    assert np.array_equal(a.read_K(2), b.read_K(2)) and b.read_K(2).shape == (6, 3, 3)
    for kw in ({"train": False, "with_depth": True}, {"train": False, "frame": "view"},
               {"train": False, "heading": "random", "with_depth": True}):
        da, db = MultiViewDataset(sharded, "all", 4, **kw), MultiViewDataset(npz, "all", 4, **kw)
        for i in range(len(da)):
            x, y = da[i], db[i]
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], (kw, i, k)
    torch.manual_seed(0)
    np.random.seed(0)
    it = MultiViewDataset(npz, "all", 3, train=True, with_depth=True)[1]
    assert it["images"].shape == (3, 3, 128, 128) and it["K"].shape == (3, 3) and it["K_views"].shape == (3, 3, 3)
    # the hash names the content: stable across a copy (new file times), changed by an edit
    h = manifest_hash(npz)
    assert len(h) == 16 and h == manifest_hash(npz)
    import shutil

    copy = npz.parent / "copy"
    shutil.copytree(npz, copy)
    assert manifest_hash(copy) == h
    first = sorted(copy.glob("*.npz"))[0]
    z = dict(np.load(first))
    z["split"] = "val"
    write_object(first, z)
    assert manifest_hash(copy) != h and DatasetStore(copy).objects[0]["split"] == "val"
    second = sorted(copy.glob("*.npz"))[1]
    assert DatasetStore(second).objects[0]["id"] == "proc-000001", "one file is a dataset too"


def test_bad_object_files_are_named(tmp_path, both_formats):
    _, npz = both_formats
    z = dict(np.load(sorted(npz.glob("*.npz"))[0]))
    with pytest.raises(InterchangeError, match="voxel_min"):
        write_object(tmp_path / "x.npz", {**z, "voxel_min": np.zeros(3, np.float32)})
    with pytest.raises(InterchangeError, match="depth must be float32"):
        write_object(tmp_path / "x.npz", {**z, "depth": z["depth"].astype(np.float64)})
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "obj.npz", **{k: v for k, v in z.items() if k != "pose"})
    with pytest.raises(DatasetError, match=r"obj.npz: missing member\(s\) pose"):
        DatasetStore(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no manifest.json and no .npz"):
        DatasetStore(tmp_path / "empty")


# -- import of a user's capture ---------------------------------------------------------------------
def _write_capture(folder: Path, n: int = 5) -> dict:
    """Render ``n`` views of a shipped mesh, then express everything in a 'world' frame that is the
    object frame moved by a known similarity W (scale 2.5, shift) into a Z-up world; write the
    images as 200x160 PNGs (a square render padded left and right), poses JSON, K.json, 16-bit depth
    PNGs in millimetres, and the mesh in the world frame."""
    import cv2
    import trimesh

    from voxlink.data.meshes import load_mesh
    from voxlink.data.render import Renderer

    lm = load_mesh(MESH)
    poses = camera.orbit_poses(n, np.random.default_rng(3))
    K160 = camera.intrinsics(160, 50.0)
    r = Renderer(160)
    try:
        rgb, depth = r.render(lm.parts, K160, poses, np.full((n, 3), 90, np.uint8))
    finally:
        r.close()
    s = 2.5
    yup_to_zup = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)  # inverse of normalization's Z-up turn
    W = np.eye(4)
    W[:3, :3] = s * yup_to_zup
    W[:3, 3] = [4.0, -2.0, 1.5]
    (folder / "img").mkdir(parents=True)
    (folder / "depth").mkdir()
    entries = []
    for i in range(n):
        frame = np.zeros((160, 200, 3), np.uint8)
        frame[:, 20:180] = rgb[i][:, :, ::-1]
        cv2.imwrite(str(folder / "img" / f"v{i:02d}.png"), frame)
        d = np.zeros((160, 200), np.uint16)
        d[:, 20:180] = np.round(depth[i] * s * 1000).astype(np.uint16)
        cv2.imwrite(str(folder / "depth" / f"v{i:02d}.png"), d)
        T = np.eye(4)
        T[:3, :3] = W[:3, :3] / s @ poses[i][:3, :3]
        T[:3, 3] = W[:3, :3] @ poses[i][:3, 3] + W[:3, 3]
        entries.append({"image": f"v{i:02d}", "pose": T.tolist()})
    (folder / "poses.json").write_text(json.dumps(entries))
    K_capture = K160.copy()
    K_capture[0, 2] += 20
    (folder / "K.json").write_text(json.dumps({"K": K_capture.tolist(), "width": 200, "height": 160}))
    world = lm.mesh.copy()
    world.apply_transform(W)
    world.export(folder / "table_world.ply")
    return {"poses": poses, "depth": depth, "rgb": rgb, "K160": K160, "K_capture": K_capture, "mesh": lm.mesh}


def test_import_a_capture_recovers_intrinsics_poses_depth_and_grid(tmp_path):
    from scipy import ndimage

    from voxlink.data.voxelize import points_to_voxels, voxelize
    from voxlink.preprocess import view_intrinsics

    truth = _write_capture(tmp_path / "cap")
    out = tmp_path / "table.npz"
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "data", "import", "--images", str(tmp_path / "cap" / "img"),
                        "--poses", str(tmp_path / "cap" / "poses.json"), "--intrinsics", str(tmp_path / "cap" / "K.json"),
                        "--depth", str(tmp_path / "cap" / "depth"), "--mesh", str(tmp_path / "cap" / "table_world.ply"),
                        "--up", "z", "--category", "table", "--split", "test", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    z = np.load(out)
    # K: crop 200x160 -> 160x160 (cx - 20), resize 160 -> 128 (x 0.8, pixel centres kept)
    K = z["K"][0].astype(np.float64)
    f160 = truth["K160"][0, 0]
    assert K[0, 0] == pytest.approx(f160 * 0.8, rel=1e-6) and K[1, 1] == pytest.approx(f160 * 0.8, rel=1e-6)
    assert K[0, 2] == pytest.approx((79.5 + 0.5) * 0.8 - 0.5, abs=1e-4) == pytest.approx(63.5, abs=1e-4)
    assert np.allclose(K, camera.intrinsics(128, 50.0), atol=1e-4)
    assert np.allclose(view_intrinsics(truth["K_capture"], 160, 200, 128), K, atol=1e-5)
    # poses: the world similarity and the Z-up turn are undone by the mesh's normalisation
    assert z["pose"].shape == (5, 4, 4) and np.allclose(z["pose"], truth["poses"], atol=2e-4)
    # depth: back in object units, within the PNG's millimetre step
    want = np.stack([__import__("cv2").resize(d, (128, 128), interpolation=0) for d in truth["depth"]])
    valid = (want > 0) & (z["depth"] > 0)
    assert valid.sum() > 0.9 * (want > 0).sum()
    assert np.abs(z["depth"][valid] - want[valid]).max() < 0.6e-3 / 2.5 + 1e-5
    assert np.array_equal(z["mask"], z["depth"] > 0)
    # the grid: the mesh voxelized after the same normalisation; depth pixels land on it
    assert bool(z["has_occupancy"]) and str(z["category"]) == "table"
    occ = z["occupancy"]
    assert (occ != voxelize(truth["mesh"])).sum() <= 0.02 * occ.sum()
    border = ndimage.binary_dilation(occ, iterations=1)
    pts = np.concatenate([camera.backproject(z["depth"][i], K, z["pose"][i].astype(np.float64)) for i in range(5)])
    idx = points_to_voxels(pts)
    ok = np.all((idx >= 0) & (idx < 32), axis=1)
    assert border[tuple(idx[ok].T)].mean() > 0.98 and ok.mean() > 0.97
    assert np.abs(pts[~ok]).max() < 0.5 + 1 / 64, "points outside the grid lie on its faces (a normalised object touches them)"
    # and it is a dataset of one test object
    ds = MultiViewDataset(out, "test", 3, train=False, with_depth=True)
    assert len(ds) == 1 and ds[0]["images"].shape == (3, 3, 128, 128)


def test_import_without_a_mesh_has_unknown_occupancy_and_text_poses(tmp_path):
    import cv2

    truth = _write_capture(tmp_path / "cap", n=3)
    lines = ["# name then the camera-to-world matrix row by row"]
    for e in json.loads((tmp_path / "cap" / "poses.json").read_text()):
        lines.append(" ".join([e["image"] + ".png"] + [f"{x:.9g}" for x in np.ravel(e["pose"])]))
    (tmp_path / "cap" / "poses.txt").write_text("\n".join(lines) + "\n")
    cv2.imwrite(str(tmp_path / "cap" / "img" / "extra.png"), np.zeros((160, 200, 3), np.uint8))  # no pose: skipped
    from voxlink.data.capture import import_capture

    res = import_capture(tmp_path / "cap" / "img", tmp_path / "cap" / "poses.txt", tmp_path / "o.npz",
                         intrinsics=tmp_path / "cap" / "K.json", depth=tmp_path / "cap" / "depth", up="z")
    assert res["views"] == 3 and res["skipped_images"] == ["extra.png"] and not res["has_occupancy"]
    z = np.load(tmp_path / "o.npz")
    assert not z["occupancy"].any() and not bool(z["has_occupancy"])
    # normalised from the depth: the seen points fill the unit cube, cameras about 2 object units away
    pts = np.concatenate([camera.backproject(z["depth"][i], z["K"][i], z["pose"][i]) for i in range(3)])
    lo, hi = np.percentile(pts, [0.5, 99.5], axis=0)
    assert (hi - lo).max() == pytest.approx(1.0, abs=1e-3) and np.allclose((hi + lo) / 2, 0, atol=1e-3)
    assert 1.2 < np.linalg.norm(z["pose"][0][:3, 3]) < 3.5
    with pytest.raises(ValueError, match="none with an occupancy grid"):
        MultiViewDataset(tmp_path / "o.npz", "all", 3, train=False)
    # errors name what is wrong
    from voxlink.data.capture import CaptureError

    (tmp_path / "p.json").write_text(json.dumps([{"image": "nope", "pose": np.eye(4).tolist()}]))
    with pytest.raises(CaptureError, match="'nope': no such image"):
        import_capture(tmp_path / "cap" / "img", tmp_path / "p.json", tmp_path / "x.npz", intrinsics=tmp_path / "cap" / "K.json")
    (tmp_path / "p.json").write_text(json.dumps([{"image": "v00", "pose": (2 * np.eye(4)).tolist()}]))
    with pytest.raises(CaptureError, match="not a rigid motion"):
        import_capture(tmp_path / "cap" / "img", tmp_path / "p.json", tmp_path / "x.npz", intrinsics=tmp_path / "cap" / "K.json")
    (tmp_path / "p.json").write_text(json.dumps([{"image": "v00", "pose": np.eye(4).tolist()}]))
    with pytest.raises(CaptureError, match="no intrinsics"):
        import_capture(tmp_path / "cap" / "img", tmp_path / "p.json", tmp_path / "x.npz")


# -- eval on a folder of files ----------------------------------------------------------------------
def test_voxlink_eval_runs_on_an_npz_folder(tmp_path, both_formats):
    from voxlink.models import ImplicitModel, get_config
    from voxlink.weights import save_model

    sharded, npz = both_formats
    torch.manual_seed(0)
    path = save_model(ImplicitModel(get_config("tiny")).eval(), tmp_path / "tiny.safetensors")
    reports = {}
    for name, data in (("npz", npz), ("sharded", sharded)):
        out = tmp_path / f"{name}.json"
        r = subprocess.run([sys.executable, "-m", "voxlink.cli", "eval", str(path), "--data", str(data), "--split", "all",
                            "--views", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "mIoU" in r.stdout
        reports[name] = json.loads(out.read_text())
    a, b = reports["npz"], reports["sharded"]
    assert a["objects"] == 5 and a["data_manifest"] == manifest_hash(npz)
    assert a["miou"] == b["miou"] and a["depth"] == b["depth"] and a["per_object"] == b["per_object"]
