"""The pose-aware fusion model: geometry, order invariance, model files, training, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from voxlink import camera
from voxlink.data.dataset import MultiViewDataset, yaw_matrix
from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
from voxlink.models.implicit import iou
from voxlink.models.projection import max_filter2d, project, silhouette_hull, voxel_centres


def _views(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pose = torch.tensor(camera.orbit_poses(n, rng), dtype=torch.float32)
    K = torch.tensor(camera.intrinsics(), dtype=torch.float32).expand(n, 3, 3)
    return pose, K


def _tiny(seed: int = 0, name: str = "fusion-tiny", pooling: str = "minmax", tight: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(dataclasses.replace(FUSION_CONFIGS[name], pooling=pooling, tight_footprint=tight)).eval()


def _fused(model: FusionModel, n: int, seed: int = 0) -> torch.Tensor:
    """The state [1, C, R, R, R] of ``n`` random images fused view by view at random orbit poses."""
    pose, K = _views(n, seed=seed)
    codes = model.encode(torch.rand(n, 3, 128, 128))
    with torch.no_grad():
        s = model.init_state(1)
        for v in range(n):
            s = model.step(codes[v:v + 1], s, pose=pose[v:v + 1], K=K[v:v + 1])
    return s


def _grid(model: FusionModel, codes: torch.Tensor, pose: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The occupancy [1, R, R, R] of the given views' codes fused one by one."""
    with torch.no_grad():
        s = model.init_state(1)
        for v in range(len(codes)):
            s = model.step(codes[v:v + 1], s, pose=pose[v:v + 1], K=K[v:v + 1])
        return model.occupancy(s)


LAYOUTS = pytest.mark.parametrize("name", ["fusion-tiny", "fusion-spatial-tiny"])
POOLINGS = pytest.mark.parametrize("pooling", ["minmax", "minmax+mean"])
#: without and with the tight hull (``tight_footprint``)
TIGHT = pytest.mark.parametrize("tight", [0, 3])


def test_projection_matches_the_numpy_camera_convention():
    pose, K = _views(3)
    pts = torch.rand(50, 3) - 0.5
    uv, z = project(pts, K, pose)
    for i in range(3):
        uv_np, z_np = camera.project(pts.double().numpy(), K[i].double().numpy(), pose[i].double().numpy())
        assert np.allclose(uv[i].numpy(), uv_np, atol=1e-3) and np.allclose(z[i].numpy(), z_np, atol=1e-5)


def test_hull_of_true_silhouettes_contains_the_object(small_dataset):
    """Renderer, poses, intrinsics and the grid agree: the visual hull of the true masks, read over a
    voxel's footprint, holds (nearly) every occupied voxel, and is far from the whole grid."""
    ds = MultiViewDataset(small_dataset, "all", 8, train=False, with_depth=True, heading="random")
    for i in range(0, len(ds), 4):
        it = ds[i]
        hull = silhouette_hull(it["depth"] > 0, it["K"].expand(8, 3, 3), it["pose_grid"], footprint=5)
        occ = it["occupancy"] > 0.5
        recall = float((hull.bool() & occ).sum() / occ.sum())
        assert recall > 0.95, (i, recall)
        assert float(iou(hull[None], it["occupancy"][None], 0.5)[0]) > 0.3


@TIGHT
@POOLINGS
@LAYOUTS
def test_same_views_in_any_order_or_repeated_give_the_same_grid(name, pooling, tight):
    model = _tiny(name=name, pooling=pooling, tight=tight)
    pose, K = _views(5, seed=1)
    codes = model.encode(torch.rand(5, 3, 128, 128))

    def grid(order):
        s = model.init_state(1)
        for v in order:
            s = model.step(codes[v:v + 1], s, pose=pose[v:v + 1], K=K[v:v + 1])
        return model.occupancy(s)

    ref = grid([0, 1, 2, 3, 4])
    for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [0, 0, 1, 2, 2, 3, 4, 4, 4]):
        assert torch.allclose(grid(order), ref, atol=1e-5)
    assert not torch.allclose(grid([0, 1]), ref, atol=1e-5)  # views do count


@TIGHT
@POOLINGS
def test_batched_inference_gives_the_grid_of_training_path(pooling, tight):
    """The ground's chunked, in-place inference path fuses the same state as the autograd path, for a
    batch that is not a multiple of the chunk sizes; the fast footprint maximum is max pooling's."""
    model = _tiny(pooling=pooling, tight=tight)
    model.inference_precision = "float32"  # as the autograd path (bfloat16 inference: its own tests)
    pose, K = _views(19, seed=3)
    codes = model.encode(torch.rand(19, 3, 128, 128))
    state = model.init_state(19)
    with torch.no_grad():
        fast = model.step_decoded(codes, state, pose, K)
    with torch.enable_grad():
        ref = model.step_decoded(codes, state, pose, K)
    # with mean pooling a view's evidence is rounded to 1/4096 before it is summed: where the two paths'
    # evidence differs in the last bit at a rounding boundary, a sum differs by 1/4096
    tol = 1e-5 if pooling == "minmax" else 2.5e-4
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b.detach(), atol=tol)
    # the ground's form: each object's own state, pooled in place
    own = [state[i:i + 1].clone() for i in range(19)]
    with torch.no_grad():
        out, _, _ = model.step_decoded(codes, own, pose, K)
    assert out is own and torch.allclose(torch.cat(own), ref[0].detach(), atol=tol)
    x = torch.rand(3, 2, 20, 17)
    for size in (1, 3, 5, 7, 9, 11, 13, 17):
        ref_max = torch.nn.functional.max_pool2d(x, size, stride=1, padding=size // 2)
        assert torch.equal(max_filter2d(x, size), ref_max), size
    with pytest.raises(ValueError):
        max_filter2d(x, 4)


def test_evidence_turns_with_the_world():
    """Yawing every camera by 90 degrees about gravity turns the fused evidence with it (the grid is
    placed by the poses, not by the object's heading)."""
    model = _tiny()
    pose, K = _views(3, seed=2)
    codes = model.encode(torch.rand(3, 3, 128, 128))
    turned = torch.tensor(yaw_matrix(math.pi / 2), dtype=torch.float32) @ pose
    s0, s1 = model.init_state(1), model.init_state(1)
    for v in range(3):
        s0 = model.step(codes[v:v + 1], s0, pose=pose[v:v + 1], K=K[v:v + 1])
        s1 = model.step(codes[v:v + 1], s1, pose=turned[v:v + 1], K=K[v:v + 1])
    # a point p of the original world is at R p in the turned one: R_y(90) maps (x, z) -> (z, -x)
    # so voxel [i, j, k] of the original grid is voxel [k, j, R-1-i] of the turned one
    expect = torch.flip(s0, dims=[2]).transpose(2, 4)
    assert torch.allclose(s1, expect, atol=1e-4)


def test_a_view_without_pose_is_refused():
    model = _tiny()
    codes = model.encode(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="pose"):
        model.step(codes, model.init_state(1))


@LAYOUTS
def test_fusion_model_file_round_trip(tmp_path, name):
    from voxlink.weights import load_model, save_model

    model = _tiny(name=name)
    path = save_model(model, tmp_path / "m.safetensors", meta={"x": 1}, half=True)
    loaded, meta, _ = load_model(path)
    assert isinstance(loaded, FusionModel) and loaded.fingerprint() == model.fingerprint() and meta["x"] == 1
    assert loaded.cfg.code_layout == model.cfg.code_layout
    x = torch.rand(2, 3, 128, 128)
    assert loaded.compress(x) == model.compress(x)
    assert len(model.compress(x)[0]) == model.cfg.code_bits // 8


def test_pose_noise_has_the_asked_magnitude():
    from voxlink.train_fusion import perturb_poses

    pose, _ = _views(64, seed=3)
    noisy = perturb_poses(pose, 2.0, 0.02, torch.Generator().manual_seed(0), exact=True)
    R_rel = noisy[:, :3, :3] @ pose[:, :3, :3].transpose(1, 2)
    angle = torch.rad2deg(torch.acos(((R_rel.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    assert torch.allclose(angle, torch.full_like(angle, 2.0), atol=0.05)
    shift = (noisy[:, :3, 3] - pose[:, :3, 3]).norm(dim=1)
    assert torch.allclose(shift, torch.full_like(shift, 0.02), atol=1e-5)
    # training noise with a floor: every view off by at least half the maximum, none by more
    noisy = perturb_poses(pose, 2.0, 0.02, torch.Generator().manual_seed(1), floor=0.5)
    R_rel = noisy[:, :3, :3] @ pose[:, :3, :3].transpose(1, 2)
    angle = torch.rad2deg(torch.acos(((R_rel.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    shift = (noisy[:, :3, 3] - pose[:, :3, 3]).norm(dim=1)
    assert angle.min() > 0.95 and angle.max() < 2.05 and angle.std() > 0.1
    assert shift.min() > 0.0099 and shift.max() < 0.0201
    with pytest.raises(ValueError, match="floor"):
        perturb_poses(pose, 2.0, 0.02, floor=1.5)


def test_tiny_fusion_model_trains_and_evaluates(small_dataset, tmp_path):
    from voxlink.evaluate import evaluate
    from voxlink.train import TrainConfig
    from voxlink.train_fusion import train_fusion
    from voxlink.weights import load_model

    tcfg = TrainConfig(data=str(small_dataset), steps=3, batch_size=2, min_views=2, max_views=3, heading="random",
                       backgrounds="textured", pose_noise_deg=2.0, pose_noise_m=0.02, val_every=2, val_objects=2,
                       channels_last=True)
    path = train_fusion(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"]), tcfg, tmp_path / "run",
                        progress=False)
    model, meta, extra = load_model(path)
    assert meta["family"] == "fusion" and meta["steps"] == 3 and "mean_grid" in extra
    lines = [line for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if "val_miou5" in line]
    assert lines, "validation was logged"
    r = evaluate(model, small_dataset, split="all", views=3, max_objects=3)
    assert r["heading"] == "random" and r["family"] == "fusion" and r["bytes_per_view"] == 16
    assert set(r["hull_true_miou"]) == {"1", "2", "3"} and 0.0 <= r["silhouette_iou"] <= 1.0
    # the hull of the true masks is a strong geometric baseline on these objects
    assert r["hull_true_miou"]["3"] > 0.3


def test_distilled_view_decoder_keeps_the_teachers_codes_and_refiner(small_dataset, tmp_path):
    """A distilled model (a smaller view decoder trained on the teacher's silhouettes and depth) sends the
    same codes bit for bit as its teacher (a drone's codes stay valid) and keeps its 3D refiner; only the
    view decoder changes, and its loss falls."""
    import json

    from voxlink.train import TrainConfig
    from voxlink.train_fusion import train_fusion
    from voxlink.weights import load_model, save_model

    teacher = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"]))
    # half precision, as the shipped models (and as train_fusion saves the student)
    save_model(teacher, tmp_path / "teacher.safetensors", meta={"family": "fusion"}, half=True)
    student_cfg = dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"], name="tiny-lite", view_channels=(8, 8, 4))
    tcfg = TrainConfig(data=str(small_dataset), steps=30, batch_size=2, min_views=4, max_views=4, lr=3e-3,
                       heading="random", backgrounds="textured", val_every=30, val_objects=2, channels_last=True,
                       distill_from=str(tmp_path / "teacher.safetensors"))
    path = train_fusion(student_cfg, tcfg, tmp_path / "run", progress=False)
    student = load_model(path)[0].eval()
    teacher = load_model(tmp_path / "teacher.safetensors")[0].eval()
    images = torch.rand(6, 3, 128, 128)
    assert torch.equal(student.encode(images), teacher.encode(images))
    ts, ss = teacher.state_dict(), student.state_dict()
    changed = [k for k, v in ts.items() if not k.startswith("depth.") and not torch.equal(ss[k], v)]
    assert not changed
    assert student.depth.net[0].out_channels == 8 and teacher.depth.net[0].out_channels == 16
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss_depth"] < log[0]["loss_depth"] and "mask_agree" in log[-1]
    with pytest.raises(ValueError, match="not a fusion model"):
        train_fusion(dataclasses.replace(student_cfg, code_bits=64 * 4), tcfg, tmp_path / "bad", progress=False)
    # distilling again (a teacher whose E_K changed): warm_start gives the student's view decoder a start
    # from the earlier student, the teacher still gives E_K and the refiner
    again = train_fusion(student_cfg, dataclasses.replace(tcfg, steps=0, warm_start=str(path)), tmp_path / "again",
                         progress=False)
    again = load_model(again)[0].eval()
    sa = again.state_dict()
    assert all(torch.equal(sa[k], ss[k]) for k in ss if k.startswith("depth."))
    assert all(torch.equal(sa[k], ts[k]) for k in ts if not k.startswith("depth."))


def test_ground_fuses_posed_views_and_names_views_without_pose(tmp_path):
    """At the ground a pose-aware model fuses views by their poses; a view without a pose is counted
    and named in session.json, not fused; the same views in another order give the same grid."""
    import json
    import time

    from ground.station import GroundConfig, GroundStation
    from voxlink.models.binarizer import pack_bits
    from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
    from voxlink.weights import save_model

    model = _tiny()
    path = save_model(model, tmp_path / "fusion-tiny.safetensors")
    pose, K = _views(6, seed=4)
    codes = [pack_bits(c) for c in model.encode(torch.rand(6, 3, 128, 128))]
    fp = model.fingerprint()

    def run(order, out, poseless=(), precision="auto"):
        st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(out), refiner_precision=precision))
        st.handle(encode_info(StreamInfo(stream=1, seq=0, fingerprint=bytes.hex(fp), code_bits=64,
                                         K=camera.intrinsics(), model="fusion-tiny", epoch_unix=time.time())))
        for v in order:
            st.handle(encode_code(CodeMessage(stream=1, object_id=3, seq=v, t_ms=v, fingerprint=fingerprint32(fp),
                                              n_bits=64, payload=codes[v],
                                              pose=None if v in poseless else pose[v].double().numpy())))
        return st

    a = run([0, 1, 2, 3, 4, 5], tmp_path / "a")
    b = run([5, 3, 1, 0, 2, 4], tmp_path / "b")
    ga, gb = a.occupancy(a.sessions[(1, 3)]), b.occupancy(b.sessions[(1, 3)])
    assert np.allclose(ga, gb, atol=1e-5)
    c = run([0, 1, 2, 3, 4, 5], tmp_path / "c", poseless={2, 4})
    s = c.sessions[(1, 3)]
    assert s.no_pose == [2, 4] and c.stats["views_without_pose"] == 2
    summary = c.snapshot((1, 3), reason="test")
    c.collect_fused_depth(wait=True)
    assert summary["views_without_pose"] == [2, 4] and summary["views_fused"] == 4
    on_disk = json.loads((Path(summary["folder"]) / "session.json").read_text())
    assert on_disk["views_without_pose"] == [2, 4]
    assert not np.allclose(c.occupancy(s), ga, atol=1e-5)  # two views fewer were fused
    # depth maps from the snapshot's grid: every view with a pose, under the names of depth.tar, on the
    # same silhouettes; an error making them is counted and leaves the snapshot whole without them
    from ground.archive import read_members

    folder = Path(summary["folder"])
    dec, fused = read_members(folder / "depth.tar"), read_members(folder / "depth_fused.tar")
    lines = [json.loads(x) for x in (folder / "views.jsonl").read_text().splitlines()]
    posed = {f"{x['u']:010d}.png" for x in lines if x["pose"] is not None}
    assert set(fused) == posed & set(dec) and len(fused) == 4 == c.stats["fused_depth_views"]
    assert c.stats["fused_depth_skipped"] == len(set(dec) - posed)
    assert c.status()["fused_depth"] == {"views": 4, "skipped": len(set(dec) - posed),
                                         "ms": round(c.stats["fused_depth_ms"], 1), "writing": 0,
                                         "views_waiting": 0, "dropped": 0, "cancelled": 0}  # ground.json
    for name in fused:
        a, b = (cv2.imdecode(np.frombuffer(x[name], np.uint8), cv2.IMREAD_UNCHANGED) for x in (dec, fused))
        assert ((a > 0) == (b > 0)).all()

    def broken(*a, **k):
        raise RuntimeError("no memory")

    c.model.fused_depth = broken
    errors = c.stats["output_errors"]
    again = Path(c.snapshot((1, 3), reason="test")["folder"])
    c.collect_fused_depth(wait=True)
    assert again != folder and (again / "occupancy.npz").is_file() and (again / "depth.tar").is_file()
    assert not (again / "depth_fused.tar").exists() and not list(again.glob("*.part"))
    assert c.stats["output_errors"] == errors + 1
    # the refiner's arithmetic is the operator's choice (--precision), said in ground.json
    d = run([0, 1, 2, 3, 4, 5], tmp_path / "d", precision="float32")
    assert d.status()["refiner_precision"] == "float32"
    assert np.abs(d.occupancy(d.sessions[(1, 3)]) - ga).max() < 0.02
    with pytest.raises(ValueError, match="refiner_precision"):
        run([0], tmp_path / "e", precision="fp8")


def test_ground_decodes_each_fused_view_once_even_with_equal_codes(tmp_path):
    """A fusion view's depth map comes from the decode done for fusing; equal codes in one batch (two
    drones hovering at the same view, say) must not evict each other from that cache."""
    import time

    from ground.station import GroundConfig, GroundStation
    from voxlink.models.binarizer import pack_bits
    from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
    from voxlink.weights import save_model

    model = _tiny()
    path = save_model(model, tmp_path / "fusion-tiny.safetensors")
    pose, _ = _views(1, seed=6)
    code = pack_bits(model.encode(torch.rand(1, 3, 128, 128))[0])
    fp = model.fingerprint()
    st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "g"), record=False))
    st.handle(encode_info(StreamInfo(stream=1, seq=0, fingerprint=bytes.hex(fp), code_bits=64,
                                     K=camera.intrinsics(), model="fusion-tiny", epoch_unix=time.time())))
    calls = []
    decode = st.net.decode_depth
    st.net.decode_depth = lambda c: (calls.append(len(c)), decode(c))[1]
    msgs = [(encode_code(CodeMessage(stream=1, object_id=v, seq=v, t_ms=v, fingerprint=fingerprint32(fp), n_bits=64,
                                     payload=code, pose=pose[0].double().numpy())), time.time(), "link") for v in range(6)]
    assert all(r is not None for r in st.handle_many(msgs))
    n_fuse = len(calls)  # the fusing call itself
    assert st.process_depths() == 6 and len(calls) == n_fuse, "a depth map was decoded a second time"
    depths = [st.sessions[(1, v)].last_depth for v in range(6)]
    assert all(np.array_equal(d, depths[0]) for d in depths)


@pytest.mark.parametrize("pipelined", [False, True])
def test_an_error_placing_a_batch_of_views_loses_none_of_them(tmp_path, pipelined, monkeypatch):
    """Where the batched placing of several objects' views fails part-way (here after the first object's
    view was pooled), every view is placed again on its own (pipelined: on the fuser thread, behind the
    batches already handed to it): the grids equal those of a ground where nothing failed (re-placing a view already
    pooled changes nothing), and the one view that fails even alone is named (``views_not_fused``)."""
    import threading
    import time

    from ground.station import GroundConfig, GroundStation
    from voxlink.models.binarizer import pack_bits
    from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
    from voxlink.weights import save_model

    model = _tiny(pooling="minmax+mean")
    path = save_model(model, tmp_path / "fusion-tiny.safetensors")
    pose, _ = _views(8, seed=5)
    codes = [pack_bits(c) for c in model.encode(torch.rand(8, 3, 128, 128))]
    fp = model.fingerprint()

    def msg(v, obj):
        return (encode_code(CodeMessage(stream=1, object_id=obj, seq=v, t_ms=v, fingerprint=fingerprint32(fp),
                                        n_bits=64, payload=codes[v], pose=pose[v].double().numpy())), time.time(), "link")

    def ground(out, views):
        st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(out), record=False))
        st.handle(encode_info(StreamInfo(stream=1, seq=0, fingerprint=bytes.hex(fp), code_bits=64,
                                         K=camera.intrinsics(), model="fusion-tiny", epoch_unix=time.time())))
        return st, [msg(v, v // 2) for k in range(2) for v in views if v % 2 == k]

    clean, msgs = ground(tmp_path / "clean", range(8))
    clean.handle_many(msgs)
    without, msgs_without = ground(tmp_path / "without", [0, 1, 2, 3, 4, 6, 7])
    without.handle_many(msgs_without)
    st, _ = ground(tmp_path / "faulty", range(8))
    st._pipelined = pipelined
    place = st.net.place
    poison = pose[5]  # object 2's second view

    threads = []

    def fragile(states, depth, mask_prob, K, pose_, *a, **k):
        threads.append(threading.current_thread() is threading.main_thread())
        if len(states) > 1:
            place(states[:1], depth[:1], mask_prob[:1], K[:1], pose_[:1])
            raise RuntimeError("out of memory")
        if torch.allclose(pose_[0], poison):
            raise RuntimeError("a bug this view triggers")
        return place(states, depth, mask_prob, K, pose_, *a, **k)

    monkeypatch.setattr(st.net, "place", fragile)
    assert all(r is not None for r in st.handle_many(msgs))
    st.settle()
    assert st.rejected["internal_error"] == 1 and st.stats["views"] == 8
    # (a view decoded alone and in a batch of four differ in float rounding, which the bfloat16 refiner
    # can carry to a few 1e-4; a view pooled twice would change its object's votes by far more)
    for obj in (0, 1, 3):
        np.testing.assert_allclose(st.occupancy(st.sessions[(1, obj)]), clean.occupancy(clean.sessions[(1, obj)]),
                                   atol=2e-3)
    np.testing.assert_allclose(st.occupancy(st.sessions[(1, 2)]), without.occupancy(without.sessions[(1, 2)]),
                               atol=2e-3)
    summary = st.snapshot((1, 2), reason="test")
    assert summary["views_not_fused"] == [5] and summary["views_fused"] == 1 and summary["views"] == 2
    assert summary["distinct_views"] == 1 and st.summary(st.sessions[(1, 0)])["distinct_views"] == 2
    if pipelined:  # the retries too run on the fuser thread: never two threads pooling into one state
        assert threads and not any(threads)


@POOLINGS
@LAYOUTS
def test_onnx_fusion_ground_decoder_matches_pytorch(tmp_path, name, pooling):
    """The ground's ONNX Runtime backend for the pose-aware model fuses and refines as PyTorch does in float32 (the
    refiner graph reading the mean pooling's votes and view count too), and a second start reuses the
    exported graphs (same weights) instead of exporting them again."""
    from export.ground_onnx import OnnxFusionGroundDecoder, export_ground
    from voxlink.backends import BackendUnavailable

    pytest.importorskip("onnxruntime")
    model = _tiny(name=name, pooling=pooling)
    model.inference_precision = "float32"  # the graphs are float32 (bfloat16 inference: its own test)
    folder = export_ground(model, tmp_path / "onnx")
    dec = OnnxFusionGroundDecoder(folder, model)
    pose, K = _views(5, seed=2)
    codes = model.encode(torch.rand(5, 3, 128, 128))
    st_t, st_o = model.init_state(1), dec.init_state(1)
    with torch.no_grad():
        for i in range(5):
            st_t = model.step(codes[i:i + 1], st_t, pose[i:i + 1], K[i:i + 1])
            st_o = dec.step(codes[i:i + 1], st_o, pose[i:i + 1], K[i:i + 1])
        # (a mean pooling's sum may round to the next 1/4096 where the two decoders differ in the last bit)
        torch.testing.assert_close(st_o, st_t, atol=1e-4 if pooling == "minmax" else 2.5e-4, rtol=1e-4)
        torch.testing.assert_close(dec.occupancy(st_o), model.occupancy(st_t), atol=1e-4, rtol=1e-4)
        if pooling != "minmax":
            assert model.distinct_views(st_o) == [5]
    mtime = (folder / "depth.onnx").stat().st_mtime_ns
    assert export_ground(model, folder) == folder and (folder / "depth.onnx").stat().st_mtime_ns == mtime
    with pytest.raises(BackendUnavailable, match="other weights"):
        OnnxFusionGroundDecoder(folder, _tiny(seed=1, name=name, pooling=pooling))


def test_refiner_only_fine_tune_keeps_every_code_and_the_view_decoder(small_dataset, tmp_path):
    """``trainable = "refiner"`` (how the shipped model's wider footprint was fine-tuned): the codes a
    drone sends stay the same bit for bit, the view decoder too, BatchNorm statistics included; only the
    3D refiner changes. An unknown part is refused."""
    from voxlink.train import TrainConfig
    from voxlink.train_fusion import train_fusion
    from voxlink.weights import load_model, save_model

    start = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"]))
    save_model(start, tmp_path / "start.safetensors", meta={"family": "fusion"}, half=True)
    cfg = dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"], footprint=9)
    tcfg = TrainConfig(data=str(small_dataset), steps=4, batch_size=2, min_views=2, max_views=3, lr=3e-3,
                       heading="random", val_every=4, val_objects=2, warm_start=str(tmp_path / "start.safetensors"),
                       trainable="refiner")
    tuned = load_model(train_fusion(cfg, tcfg, tmp_path / "run", progress=False))[0].eval()
    start = load_model(tmp_path / "start.safetensors")[0].eval()
    images = torch.rand(6, 3, 128, 128)
    assert torch.equal(tuned.encode(images), start.encode(images))
    a, b = start.state_dict(), tuned.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("refiner."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("refiner."))
    assert tuned.cfg.footprint == 9 and tuned.fingerprint() != start.fingerprint()
    with pytest.raises(ValueError, match="trainable"):
        train_fusion(cfg, dataclasses.replace(tcfg, trainable="refiner,decoder"), tmp_path / "bad", progress=False)


def test_view_decoder_on_cached_codes_keeps_codes_and_refiner_and_learns(small_dataset, tmp_path):
    """``cached_codes`` (how a view decoder trains on the codes drones already send): every training view
    is encoded once, E_K and the 3D refiner stay the same tensors (the same codes bit for bit), the view
    decoder's silhouette loss falls on the cached views, and without ``trainable = "depth"`` it is refused."""
    from voxlink.train import TrainConfig
    from voxlink.train_fusion import encode_training_views, train_fusion, view_losses
    from voxlink.weights import load_model, save_model

    cfg = dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"])
    start = FusionModel(cfg)
    save_model(start, tmp_path / "start.safetensors", meta={"family": "fusion"}, half=True)
    start = load_model(tmp_path / "start.safetensors")[0].eval()
    tcfg = TrainConfig(data=str(small_dataset), steps=30, batch_size=16, lr=3e-3, val_every=30, val_objects=2,
                       warm_start=str(tmp_path / "start.safetensors"), trainable="depth", cached_codes=True, mask_weight=3.0)
    np.random.seed(0)
    codes, depth = encode_training_views(start, small_dataset, tcfg)
    train = MultiViewDataset(small_dataset, "train", 1)
    n_views = len(train) * train.n_views  # one code per view of every training object
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 1} and len(depth) == n_views
    tuned = load_model(train_fusion(cfg, tcfg, tmp_path / "run", progress=False))[0].eval()
    images = torch.rand(6, 3, 128, 128)
    assert torch.equal(tuned.encode(images), start.encode(images))
    a, b = start.state_dict(), tuned.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("depth."))
    with torch.no_grad():
        before = view_losses(*start.depth(codes.float()), depth.float())[0]
        after = view_losses(*tuned.depth(codes.float()), depth.float())[0]
    assert after < before
    with pytest.raises(ValueError, match="cached_codes"):
        train_fusion(cfg, dataclasses.replace(tcfg, trainable="depth,refiner"), tmp_path / "bad", progress=False)


def test_footprint_widens_the_hull_and_keeps_earlier_fingerprints():
    """The footprint (pixels) a voxel's hull test reads: a wider one carves less (what makes the fusion
    tolerant of pose error), an even one is refused, and models made before the field existed (footprint
    5) keep their fingerprint, so the drones that send it stay valid."""
    import hashlib

    from voxlink.models.fusion import FusionConfig

    with pytest.raises(ValueError, match="odd"):
        FusionConfig(footprint=4)
    model = _tiny(name="fusion-spatial-tiny")
    pose, K = _views(3, seed=1)
    depth = torch.full((3, 128, 128), 2.0)
    mask = torch.zeros(3, 128, 128)
    mask[:, 54:74, 54:74] = 1.0
    hull = {}
    for fp in (5, 11):
        model.cfg.footprint = fp
        hull[fp] = model.evidence(depth, mask, K, pose)[:, 0].amin(0)
    assert (hull[11] >= hull[5]).all() and hull[11].sum() > hull[5].sum()
    # the fingerprint of a footprint-5 model hashes the config as it was before the field existed
    model.cfg.footprint = 5
    old = {k: v for k, v in model.cfg.to_dict().items() if k not in ("footprint", "pooling", "refiner_full_res_input",
                                                                   "tight_footprint")}
    h = hashlib.sha256(("fusion:" + repr(sorted(old.items()))).encode())
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    assert model.fingerprint() == h.digest()[:8]
    model.cfg.footprint = 11
    assert model.fingerprint() != h.digest()[:8]


def test_warm_start_copies_whole_layers_only(tmp_path):
    """Warm-starting a model whose view decoder has other widths copies E_K and the refiner, and none
    of the view decoder: not even its last bias, whose shape (2) both decoders share (a graft of two
    models' layers would decode neither's silhouettes)."""
    from voxlink.train_fusion import warm_start
    from voxlink.weights import save_model

    src = _tiny(seed=1, name="fusion-spatial-tiny")
    save_model(src, tmp_path / "src.safetensors", meta={"family": "fusion"})
    dst = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"], view_channels=(8, 8, 4)))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    copied = warm_start(dst, str(tmp_path / "src.safetensors"))
    assert copied and not [k for k in copied if k.startswith("depth.")]
    after, s = dst.state_dict(), src.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("depth."))
    assert all(torch.equal(after[k], s[k]) for k in after if k.startswith(("encoder.", "refiner.")))


@POOLINGS
def test_fusing_all_views_at_once_equals_fusing_them_one_by_one(pooling):
    """``fuse_all`` (the state made anew, as after pose refinement) is the state of :meth:`step` view by
    view; with mean pooling a view given twice to ``fuse_all`` counts once, as in :meth:`step`."""
    model = _tiny(name="fusion-spatial-tiny", pooling=pooling)
    model.inference_precision = "float32"  # as step's autograd path (bfloat16 inference: its own tests)
    pose, K = _views(4, seed=5)
    codes = model.encode(torch.rand(4, 3, 128, 128))
    s = model.init_state(1)
    for v in range(4):
        s = model.step(codes[v:v + 1], s, pose=pose[v:v + 1], K=K[v:v + 1])
    with torch.no_grad():
        depth, mask = model.decode_depth(codes)
        twice = [0, 1, 2, 3, 1, 3]
        for all_at_once in (model.fuse_all(depth, mask, K, pose), model.fuse_all(depth[twice], mask[twice], K[twice], pose[twice])):
            # the views' evidence computed in one batch can differ in the last bit from one at a time;
            # with mean pooling, a sum can then round to the next 1/4096
            assert torch.allclose(all_at_once, s, atol=1e-6 if pooling == "minmax" else 2.5e-4)
            assert torch.allclose(model.occupancy(all_at_once), model.occupancy(s), atol=1e-4)


@TIGHT
@POOLINGS
def test_training_pools_the_grounds_state_with_the_earlier_gradients(pooling, tight):
    """The training forward (each evidence channel pooled as it is made, the refiner in channels-last-3D
    layout) gives the grid that fusing the views one by one gives, and the gradients of the stacked
    pooling it replaced (``voxlink bench fusion``'s earlier rows time that code): a faster training step
    of the same function."""
    import copy

    from voxlink.bench.fusion import _stacked_pooling

    model = _tiny(name="fusion-spatial-tiny", pooling=pooling, tight=tight)
    model.inference_precision = "float32"  # as the autograd path (bfloat16 inference: its own tests)
    fast = copy.deepcopy(model).to_channels_last()
    old = _stacked_pooling(FusionModel)(model.cfg).eval()
    old.load_state_dict(model.state_dict())
    pose, K = _views(4, seed=2)
    images = torch.rand(1, 4, 3, 128, 128)
    s = model.init_state(1)
    codes = model.encode(images[0])
    for v in range(4):
        s = model.step(codes[v:v + 1], s, pose=pose[v:v + 1], K=K[v:v + 1])
    grads = []
    for m in (fast, old):
        x = images.clone().requires_grad_()
        logits = m(x, K[None], pose[None])["logits"]
        # views batched and one at a time can differ in the last bit; with mean pooling a sum then
        # rounds to the next 1/4096
        assert torch.allclose(logits, model.logits(s), atol=1e-5 if pooling == "minmax" else 2e-3)
        (logits[:, 1] - logits[:, 0]).square().mean().backward()
        grads.append([x.grad] + [p.grad for p in m.parameters()])
    assert all(g is not None for g in grads[0])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-7), (a - b).abs().max()


def test_mean_pooling_counts_distinct_views_and_outvotes_one_wrong_silhouette():
    """With ``pooling = "minmax+mean"`` the state counts the distinct views (a repeat, the same pose and
    intrinsics, is not summed again), and a voxel that one view of five wrongly leaves out of its
    silhouette is carved by the minimum but keeps a vote of 4/5 in the mean."""
    from voxlink.models.fusion import EVIDENCE, MEAN_EVIDENCE

    model = _tiny(name="fusion-spatial-tiny", pooling="minmax+mean")
    assert model.init_state(1).shape[1] == model.state_channels == len(EVIDENCE) + len(MEAN_EVIDENCE) + 1
    pose, K = _views(5, seed=3)
    depth = torch.full((5, 128, 128), 2.0)
    mask = torch.ones(5, 128, 128)
    mask[2] = 0.0  # one view whose silhouette lost the object
    with torch.no_grad():
        s = model.init_state(1)
        for v in (0, 1, 2, 2, 3, 4, 0):
            s = model.place(s, depth[v:v + 1], mask[v:v + 1], K[v:v + 1], pose[v:v + 1])
    assert model.distinct_views(s) == [5]
    centre = (0, slice(None), 16, 16, 16)
    hull, hull_sum = float(s[centre][0]), float(s[centre][len(EVIDENCE)])
    assert hull == 0.0 and abs(hull_sum / 5 - 0.8) < 1e-6
    assert _tiny(name="fusion-spatial-tiny").distinct_views(torch.zeros(1, 5, 32, 32, 32)) is None


def test_a_refiner_widened_for_mean_pooling_starts_as_the_model_it_came_from(tmp_path):
    """Warm-starting a mean-pooling model from a min/max one: the refiner's layers that read the new
    inputs get the old weights and zeros for the new channels, so the grid is the old model's."""
    from voxlink.train_fusion import warm_start
    from voxlink.weights import save_model

    src = _tiny(seed=1, name="fusion-spatial-tiny")
    save_model(src, tmp_path / "src.safetensors", meta={"family": "fusion"})
    dst = _tiny(seed=2, name="fusion-spatial-tiny", pooling="minmax+mean")
    assert len(warm_start(dst, str(tmp_path / "src.safetensors"))) == len(dst.state_dict())
    pose, K = _views(4, seed=6)
    codes = src.encode(torch.rand(4, 3, 128, 128))
    assert torch.allclose(_grid(src, codes, pose, K), _grid(dst, codes, pose, K), atol=1e-5)
    assert torch.count_nonzero(dst.refiner.enc1[0][0].weight[:, 8:]) == 0  # the new inputs' weights


def test_tight_hull_carves_within_the_wide_one_and_a_warm_start_keeps_the_grid(tmp_path):
    """``tight_footprint``: the state gains one min-pooled channel, the hull read over the narrower
    footprint: never outside the wide hull, narrower round a thin silhouette, the wide one itself at the
    same width; a refiner warm-started from a model without it has zero weights for the new input (read
    last) and gives that model's grid (within 1e-5)."""
    from voxlink.models.fusion import EVIDENCE, MEAN_EVIDENCE, FusionConfig
    from voxlink.train_fusion import warm_start
    from voxlink.weights import save_model

    src = _tiny(seed=1, name="fusion-spatial-tiny", pooling="minmax+mean")
    dst = _tiny(seed=2, name="fusion-spatial-tiny", pooling="minmax+mean", tight=3)
    assert dst.state_channels == src.state_channels + 1 == len(EVIDENCE) + 1 + len(MEAN_EVIDENCE) + 1
    pose, K = _views(4, seed=5)
    depth = torch.full((4, 128, 128), 2.0)
    mask = torch.zeros(4, 128, 128)
    mask[:, 62:66, 40:90] = 1.0  # a thin bar across every view
    with torch.no_grad():
        s = dst.fuse_all(depth, mask, K, pose)
        ref = src.fuse_all(depth, mask, K, pose)
    hull, tight = s[0, 0], s[0, len(EVIDENCE)]
    assert bool((tight <= hull).all()) and float(tight.sum()) < 0.8 * float(hull.sum())
    # the other channels are the model's without the tight hull
    assert torch.equal(s[:, :len(EVIDENCE)], ref[:, :len(EVIDENCE)])
    assert torch.equal(s[:, len(EVIDENCE) + 1:], ref[:, len(EVIDENCE):])
    same = _tiny(name="fusion-spatial-tiny", pooling="minmax+mean", tight=dst.cfg.footprint)
    with torch.no_grad():
        s_same = same.fuse_all(depth, mask, K, pose)
    assert torch.equal(s_same[0, len(EVIDENCE)], s_same[0, 0])

    save_model(src, tmp_path / "src.safetensors", meta={"family": "fusion"})
    assert len(warm_start(dst, str(tmp_path / "src.safetensors"))) == len(dst.state_dict())
    assert torch.count_nonzero(dst.refiner.enc1[0][0].weight[:, -1]) == 0
    codes = src.encode(torch.rand(4, 3, 128, 128))
    dst.inference_precision = src.inference_precision = "float32"
    assert torch.allclose(_grid(src, codes, pose, K), _grid(dst, codes, pose, K), atol=1e-5)
    for bad in (4, -1, 7):  # even, negative, wider than the footprint (5)
        with pytest.raises(ValueError, match="tight_footprint"):
            FusionConfig(tight_footprint=bad)


def test_pose_noise_share_keeps_the_other_objects_exact():
    """``pose_noise_share``: that share of the objects (drawn per step) gets pose noise, the others keep
    their exact poses; 1 perturbs every object, 0 none; a share outside [0, 1] is refused."""
    from voxlink.train import TrainConfig
    from voxlink.train_fusion import training_poses

    pose = torch.stack([_views(3, seed=i)[0] for i in range(200)])  # [200 objects, 3 views, 4, 4]
    gen = torch.Generator().manual_seed(0)

    def moved(share):
        out = training_poses(pose, TrainConfig(pose_noise_deg=2.0, pose_noise_m=0.02, pose_noise_share=share), gen)
        return (out - pose).abs().amax(dim=(2, 3)) > 1e-6  # [objects, views]

    assert bool(moved(1.0).all()) and not bool(moved(0.0).any())
    half = moved(0.5)
    assert bool((half.all(1) | ~half.any(1)).all())  # an object's views are all noisy or all exact
    assert 0.35 < float(half.all(1).float().mean()) < 0.65
    with pytest.raises(ValueError, match="pose_noise_share"):
        TrainConfig(pose_noise_share=1.5)


def test_views_drawn_log_uniformly_keep_few_views_common():
    """``views_draw = "log"``: every draw lies in min_views..max_views, and a run for up to 24 views still
    trains on 2 views about as often as on 12 to 24 together (each doubling an equal share); uniform
    draws stay what they were (the same calls on the generator); an unknown rule is refused."""
    from voxlink.train_fusion import draw_views

    rng = np.random.default_rng(0)
    v = np.array([draw_views(rng, 2, 24, "log") for _ in range(20000)])
    assert v.min() == 2 and v.max() == 24
    share = lambda a, b: float(((v >= a) & (v <= b)).mean())  # noqa: E731
    assert abs(share(2, 2) - np.log(3 / 2) / np.log(25 / 2)) < 0.01
    assert share(2, 3) > 3 * share(20, 24)
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert [draw_views(a, 2, 12) for _ in range(50)] == [int(b.integers(2, 13)) for _ in range(50)]
    with pytest.raises(ValueError, match="views_draw"):
        draw_views(rng, 2, 24, "square")
    with pytest.raises(ValueError):
        draw_views(rng, 5, 4)


def test_mesh_share_draws_real_meshes_that_often():
    """``mesh_share``: objects rendered from real meshes are drawn that share of the time (each equally
    within its kind), however few they are; a share outside (0, 1) or a split with one kind only is
    refused rather than silently sampled."""
    import torch

    from voxlink.train_fusion import source_weights

    sources = ["mesh:a.obj"] * 3 + ["procedural:p:chair:%d" % i for i in range(27)]
    w = source_weights(sources, 0.5)
    assert abs(w.sum() - 1.0) < 1e-12 and abs(w[:3].sum() - 0.5) < 1e-12
    assert np.allclose(w[:3], w[0]) and np.allclose(w[3:], w[3])
    draws = list(torch.utils.data.WeightedRandomSampler(torch.from_numpy(w), 20000, replacement=True,
                                                        generator=torch.Generator().manual_seed(0)))
    assert abs(np.mean(np.array(draws) < 3) - 0.5) < 0.02
    with pytest.raises(ValueError, match="mesh_share"):
        source_weights(sources, 1.0)
    with pytest.raises(ValueError, match="both"):
        source_weights(sources[3:], 0.5)


def test_bfloat16_refiner_inference_stays_with_float32_and_follows_the_weights():
    """CPU inference may run the 3D refiner in bfloat16 (``inference_precision``; ``auto`` does where the
    CPU has it natively): the occupancy it gives stays within 0.02 of float32's and the grid at 0.5 keeps
    99 % of its voxels; training (gradients) always runs the float32 refiner itself; the bfloat16 copy is
    remade when a weight changes; the same state gives the same grid every time (order invariance rests
    on it); and an unknown precision is refused."""
    model = _tiny(name="fusion-spatial-tiny", pooling="minmax+mean")
    s = _fused(model, 4, seed=7)
    with torch.no_grad():
        model.inference_precision = "float32"
        p32 = model.occupancy(s)
        model.inference_precision = "bfloat16"
        assert model.refiner_precision() == "bfloat16"
        p16 = model.occupancy(s)
        assert torch.equal(p16, model.occupancy(s))
        assert (p16 - p32).abs().max() < 0.02
        assert ((p16 > 0.5) == (p32 > 0.5)).float().mean() > 0.99
    with torch.enable_grad():
        p_grad = model.occupancy(s)
    assert p_grad.requires_grad and torch.allclose(p_grad.detach(), p32, atol=1e-5)
    with torch.no_grad():
        model.refiner.head.bias.add_(torch.tensor([-3.0, 3.0]))  # every voxel pushed towards occupied
        assert model.occupancy(s).mean() > p16.mean() + 0.2
        model.inference_precision = "float32"
        assert model.refiner_precision("cpu") == "float32"
    model.inference_precision = "half"
    with pytest.raises(ValueError, match="inference_precision"):
        model.refiner_precision()


def test_bfloat16_view_decoding_stays_with_float32_and_training_keeps_float32():
    """Where the refiner runs in bfloat16 (``inference_precision``), the view decoder does too in inference
    (the ground's decode): each view's silhouette probability stays within 0.02 of float32's, its depth
    within 2 cm, both come back as float32 (the offset of 2 m added in float32: bfloat16 alone would round a
    depth near 2 m to steps of 7.8 mm); with ``float32`` the decode is the view decoder's own output; with
    gradients (training) it runs in float32 whatever the setting; the bfloat16 copy is remade when a
    weight changes."""
    model = _tiny(name="fusion-spatial-tiny", pooling="minmax+mean")
    codes = model.encode(torch.rand(20, 3, 128, 128))  # 20: more than one chunk of 16
    with torch.no_grad():
        ref_d, ref_m = model.depth(codes)
        model.inference_precision = "float32"
        d32, m32 = model.decode_views(codes)
        model.inference_precision = "bfloat16"
        d16, m16 = model.decode_views(codes)
    assert torch.allclose(d32, ref_d, atol=1e-5) and torch.allclose(m32, ref_m, atol=1e-5)
    assert d16.dtype == m16.dtype == torch.float32 and d16.shape == d32.shape
    assert (d16 - d32).abs().max() < 0.02 and (torch.sigmoid(m16) - torch.sigmoid(m32)).abs().max() < 0.02
    assert not torch.equal(d16, d32)  # it did run in bfloat16
    with torch.enable_grad():
        dg, mg = model.decode_views(codes)
    assert torch.allclose(dg.detach(), ref_d, atol=1e-5) and torch.allclose(mg.detach(), ref_m, atol=1e-5)
    with torch.no_grad():  # the bfloat16 copy follows the weights
        model.depth.net[-1].bias[0] += 0.5  # every depth 0.5 m further
        assert (model.decode_views(codes)[0] - d16).mean().item() == pytest.approx(0.5, abs=0.01)


def test_a_refiner_that_reads_only_features_at_full_resolution_warm_starts_from_the_full_one(tmp_path):
    """``refiner_full_res_input = "features"``: the 3x3x3 convolution at 32^3 reads the upsampled
    features alone (cheaper), the evidence still reaches the head; warm-started from a refiner that also
    read the evidence there, every tensor is taken (that convolution's weights for the features); an
    unknown value is refused, and the default leaves the model's fingerprint as it was."""
    from voxlink.train_fusion import warm_start
    from voxlink.weights import save_model

    src = _tiny(seed=1, name="fusion-spatial-tiny", pooling="minmax+mean")
    save_model(src, tmp_path / "src.safetensors", meta={"family": "fusion"})
    cfg = dataclasses.replace(src.cfg, refiner_full_res_input="features")
    torch.manual_seed(3)
    dst = FusionModel(cfg).eval()
    c0 = cfg.refiner_channels[0]
    assert dst.refiner.dec0[0].weight.shape[1] == c0 < src.refiner.dec0[0].weight.shape[1]
    assert len(warm_start(dst, str(tmp_path / "src.safetensors"))) == len(dst.state_dict())
    assert torch.equal(dst.refiner.dec0[0].weight, src.refiner.dec0[0].weight[:, :c0])
    assert torch.equal(dst.refiner.head.weight, src.refiner.head.weight)
    with torch.no_grad():
        assert dst.occupancy(_fused(dst, 3, seed=4)).shape == (1, 32, 32, 32)
    same = FusionModel(dataclasses.replace(src.cfg, refiner_full_res_input="features+evidence"))
    same.load_state_dict(src.state_dict())
    assert same.fingerprint() == src.fingerprint()  # the default is left out of the hash
    with pytest.raises(ValueError, match="refiner_full_res_input"):
        dataclasses.replace(src.cfg, refiner_full_res_input="evidence")


def test_eval_refuses_what_it_cannot_score_honestly(small_dataset):
    """A misspelt split is an error (it used to score every object, training objects included), and so is
    asking for more views than an object has (the missing columns used to count as IoU 0)."""
    from voxlink.evaluate import evaluate

    model = _tiny()
    with pytest.raises(ValueError, match="split 'tset'"):
        evaluate(model, small_dataset, split="tset", views=3, max_objects=1)
    with pytest.raises(ValueError, match="fewer than the 9 views"):
        evaluate(model, small_dataset, split="all", views=9, max_objects=1)


def test_eval_of_a_model_it_does_not_score_says_so(small_dataset):
    import subprocess
    import sys

    from voxlink.weights import shipped_models

    if "nsmall-k1024" not in shipped_models():
        pytest.skip("no shipped nsmall-k1024 weights")
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "eval", "nsmall-k1024", "--data", str(small_dataset),
                        "--split", "all"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "codec model" in r.stderr, r.stderr[-2000:]


def _fused_depth_station(tmp_path, n_objects: int = 3, views: int = 8, **cfg):
    """A ground with a tiny fusion model and ``n_objects`` objects of ``views`` posed views each."""
    import time

    from ground.station import GroundConfig, GroundStation
    from voxlink.models.binarizer import pack_bits
    from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
    from voxlink.weights import save_model

    model = _tiny()
    path = save_model(model, tmp_path / "fusion-tiny.safetensors")
    pose, _ = _views(views, seed=3)
    codes = [pack_bits(c) for c in model.encode(torch.rand(views, 3, 128, 128))]
    fp = model.fingerprint()
    st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "out"), record=False, **cfg))
    st.handle(encode_info(StreamInfo(stream=1, seq=0, fingerprint=bytes.hex(fp), code_bits=64,
                                     K=camera.intrinsics(), model="fusion-tiny", epoch_unix=time.time())))
    for obj in range(n_objects):
        for v in range(views):
            st.handle(encode_code(CodeMessage(stream=1, object_id=obj, seq=obj * views + v, t_ms=v,
                                              fingerprint=fingerprint32(fp), n_bits=64, payload=codes[v],
                                              pose=pose[v].double().numpy())))
    return st


def test_fused_depth_backlog_is_bounded_and_a_stopping_ground_does_not_wait_for_it(tmp_path, monkeypatch):
    """depth_fused.tar costs tens of ms a view on its own thread: a ground that falls behind on it drops
    it for further snapshots (counted) rather than growing a backlog, and a stopping ground closes its
    record first and then waits at most FUSED_DEPTH_EXIT_S for it (the rest cancelled, counted, no
    partial file)."""
    import threading
    import time

    import ground.station as gs

    st = _fused_depth_station(tmp_path, views=40)  # 3 batches of 16 views an object
    render = st.model.fused_depth
    started = threading.Event()

    def stuck(*a, **k):  # the first batch takes until the ground stops (as a very slow render would)
        started.set()
        st._fused_stop.wait(timeout=60)
        return render(*a, **k)

    monkeypatch.setattr(st.model, "fused_depth", stuck)
    monkeypatch.setattr(gs, "FUSED_DEPTH_BACKLOG_VIEWS", 60)  # room for one object's 40 views
    monkeypatch.setattr(gs, "FUSED_DEPTH_EXIT_S", 0.2)
    for obj in range(3):
        st.snapshot((1, obj), reason="test")
    assert st.stats["fused_depth_dropped"] == 2 and st.status()["fused_depth"]["views_waiting"] == 40
    assert started.wait(timeout=60)
    t0 = time.monotonic()
    st.run(duration_s=0.1)  # (binds nothing: bind=[]) exits at once; the snapshot's job is cut short
    assert time.monotonic() - t0 < 30
    fd = st.status()["fused_depth"]
    assert fd["cancelled"] == 1 and fd["writing"] == 0 and fd["views_waiting"] == 0
    assert not list((tmp_path / "out").rglob("depth_fused.tar*"))
    assert json.loads((tmp_path / "out" / "ground.json").read_text())["fused_depth"]["cancelled"] == 1
    # what comes after the stop is not cancelled by it
    monkeypatch.setattr(st.model, "fused_depth", render)
    st.snapshot((1, 1), reason="test")
    st.collect_fused_depth(wait=True)
    assert st.status()["fused_depth"]["views"] == 40


def test_fused_depth_uses_each_views_corrected_pose_and_skips_bad_lines(tmp_path, monkeypatch):
    """With refine_poses the grid is fused at corrected poses, so each view is rendered at its own corrected
    pose (two views sent at the same pose, a hovering drone, each at its own); after a refinement that
    failed (the grid fused at the poses as sent) at the poses as sent; a views.jsonl line that is not a
    view (null, a list) is skipped, not fatal."""
    import time

    import voxlink.models.pose_refine as pr
    from ground.archive import read_members
    from voxlink.protocol import CodeMessage, encode_code, fingerprint32

    st = _fused_depth_station(tmp_path, n_objects=1, views=6, refine_poses=True)
    model = st.model
    pose, _ = _views(6, seed=3)
    fp = model.fingerprint()
    hover = bytes([0x5A] * 8)  # another image's 64 bits at view 0's pose
    st.handle(encode_code(CodeMessage(stream=1, object_id=0, seq=6, t_ms=6, fingerprint=fingerprint32(fp),
                                      n_bits=64, payload=hover, pose=pose[0].double().numpy())))
    s = st.sessions[(1, 0)]
    st.occupancy(s)  # the refined grid
    assert len(s.refined_poses) == 7 and len(s.kept_u) == 7
    want = {f"{u:010d}.png": torch.from_numpy(s.refined_poses[k]) for u, k in s.kept_u.items()}
    assert not torch.allclose(want["0000000000.png"], want["0000000006.png"]), "two views, two corrections"
    seen = {}
    orig = model.fused_depth

    def spy(grid, d, mask, K, pose_, **k):
        seen.setdefault("poses", []).append(pose_.clone())
        return orig(grid, d, mask, K, pose_, **k)

    monkeypatch.setattr(model, "fused_depth", spy)
    work = st.out / ".work" / s.name / "views.jsonl"
    with work.open("a") as f:  # (the ground's own file: what a bad disk or an old release may leave)
        f.write("null\n[1, 2]\n")
    folder = Path(st.snapshot((1, 0), reason="test")["folder"])
    st.collect_fused_depth(wait=True)
    names = sorted(read_members(folder / "depth_fused.tar"))
    assert len(names) == 7 and st.stats["output_errors"] == 0
    used = torch.cat(seen["poses"])
    assert all(torch.allclose(u, want[n], atol=1e-6) for u, n in zip(used, names))
    # a refinement that fails: the grid is fused at the poses as sent, and so are the depth maps
    monkeypatch.setattr(pr, "refine_poses", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("diverged")))
    st.handle(encode_code(CodeMessage(stream=1, object_id=0, seq=7, t_ms=7, fingerprint=fingerprint32(fp),
                                      n_bits=64, payload=hover, pose=pose[1].double().numpy())))
    st.occupancy(s)
    assert st.stats["pose_refinement_failed"] == 1 and s.refined_poses is None
    seen.clear()
    st.snapshot((1, 0), reason="test")
    st.collect_fused_depth(wait=True)
    sent = {x["u"]: torch.tensor(x["pose"], dtype=torch.float32)
            for x in map(json.loads, work.read_text().splitlines()) if isinstance(x, dict)}
    used = torch.cat(seen["poses"])
    assert all(torch.allclose(u, sent[k], atol=1e-5) for u, k in zip(used, sorted(sent)))


def test_viewer_shows_the_latest_views_depth_from_the_fused_grid(tmp_path, monkeypatch):
    """The viewer's depth map of a pose-aware model's object is the latest view's depth from the fused
    grid (made only when views came, outside the station's lock), on the decoded silhouette."""
    import threading

    from ground.viewer import ViewerServer, fused_depth_map

    st = _fused_depth_station(tmp_path, n_objects=1, views=4)
    viewer = ViewerServer(st, "127.0.0.1", 0)  # (not started: state() is what the page polls)
    try:
        calls = []
        orig = st.model.fused_depth

        def spy(*a, **k):
            free = []  # whether another thread could take the station's lock now

            def probe():
                got = st.lock.acquire(timeout=0)
                free.append(got)
                if got:
                    st.lock.release()

            t = threading.Thread(target=probe)
            t.start()
            t.join()
            calls.append(not free[0])
            return orig(*a, **k)

        monkeypatch.setattr(st.model, "fused_depth", spy)
        obj = viewer.state()["objects"][0]
        assert obj["depth_source"] == "fused" and obj["depth_png"].startswith("data:image/png;base64,")
        assert calls == [False], "made once, without holding the station's lock"
        assert viewer.state()["objects"][0]["depth_png"] == obj["depth_png"] and len(calls) == 1  # cached
        s = st.sessions[(1, 0)]
        d = fused_depth_map(st.model, st.occupancy(s), s.last_raw_depth, s.last_depth > 0, s.last_pose,
                            camera.intrinsics())
        assert ((d > 0) == (s.last_depth > 0)).all()
    finally:
        viewer.httpd.server_close()


def test_edge_weighted_silhouette_loss_weighs_a_missed_thin_part_more():
    """``mask_edge_weight``: a decoded silhouette that misses a chair's thin leg costs more than one
    wrong on as many pixels inside the seat, where plain BCE counts them the same; 0 is plain BCE."""
    from voxlink.train_fusion import silhouette_edges, view_losses

    true = torch.zeros(1, 64, 64)
    true[0, 10:40, 10:40] = 1.0  # the seat
    true[0, 40:60, 20:22] = 1.0  # a leg, 2 pixels wide, 20 long: 40 pixels
    edges = silhouette_edges(true)
    assert edges[0, 45, 20:22].eq(1).all() and edges[0, 25, 25] == 0  # the leg is all boundary, the seat's inside not
    depth = true * 2.0
    no_leg = torch.where(true > 0, 6.0, -6.0)
    no_leg[0, 40:60, 20:22] = -6.0
    hole = torch.where(true > 0, 6.0, -6.0)
    hole[0, 20:25, 20:28] = -6.0  # 40 pixels wrong inside the seat
    plain = [view_losses(depth, x, depth)[0] for x in (no_leg, hole)]
    assert torch.allclose(plain[0], plain[1])
    assert torch.equal(view_losses(depth, no_leg, depth, 0.0)[0], plain[0])
    leg, seat = (view_losses(depth, x, depth, 4.0)[0] for x in (no_leg, hole))
    assert leg > 3 * seat
