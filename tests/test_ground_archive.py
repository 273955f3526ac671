"""The ground's per-object image archives and its point back-projection."""

from __future__ import annotations

import errno
import io
import tarfile

import numpy as np
import pytest

from ground import archive
from voxlink import camera


def test_archive_members_round_trip_and_a_snapshot_copy_is_complete_and_frozen(tmp_path):
    work = str(tmp_path / "work" / "depth.tar")  # its folder is made on the first member
    pngs = {f"{u:010d}.png": bytes([u]) * (100 + 300 * u) for u in range(3)}
    for name, data in pngs.items():
        archive.append(work, name, data)
    snap = tmp_path / "snap.tar"
    archive.finish_copy(work, snap)
    assert archive.read_members(snap) == pngs
    with tarfile.open(snap) as t:  # a standard archive: what `tar xf` reads
        assert t.getnames() == list(pngs) and all(m.mode == 0o644 and m.isfile() for m in t)
    archive.append(work, "0000000003.png", b"later")
    assert archive.read_members(snap) == pngs, "a later view changed a finished snapshot"
    assert list(archive.read_members(work)) == [*pngs, "0000000003.png"], "the work archive reads without its end marker"
    empty = tmp_path / "empty.tar"
    archive.finish_copy(tmp_path / "none.tar", empty)
    assert archive.read_members(empty) == {}, "no view yet: a valid empty archive"


def test_a_failed_append_cuts_the_archive_back_and_the_next_one_is_kept(tmp_path, monkeypatch):
    path = str(tmp_path / "depth.tar")
    archive.append(path, "0000000000.png", b"a" * 700)
    real_open = open

    class HalfWrite(io.FileIO):
        def write(self, b):
            super().write(bytes(b)[:600])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive, "open", lambda p, mode="r": HalfWrite(p, "a") if mode == "ab" else real_open(p, mode),
                        raising=False)
    with pytest.raises(OSError):
        archive.append(path, "0000000001.png", b"b" * 700)
    monkeypatch.undo()
    archive.append(path, "0000000002.png", b"c" * 5)
    assert archive.read_members(path) == {"0000000000.png": b"a" * 700, "0000000002.png": b"c" * 5}


def test_backproject_gives_each_valid_pixels_pinhole_point():
    rng = np.random.default_rng(0)
    d = np.where(rng.random((128, 128)) > 0.6, 1.5 + rng.random((128, 128)), 0.0).astype(np.float32)
    d[3, 4], d[5, 6] = np.nan, np.inf  # never points
    K, pose = camera.intrinsics(128), camera.circle_pose(5, 24)
    got = camera.backproject(d, K, pose)
    v, u = np.nonzero(np.isfinite(d) & (d > 0))
    z = d[v, u].astype(np.float64)
    want = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1) @ pose[:3, :3].T + pose[:3, 3]
    assert got.dtype == np.float64 and got.shape == want.shape
    assert np.abs(got - want).max() < 2e-6, "points differ by more than float32 rounding (metres)"
    assert len(camera.backproject(np.zeros((128, 128), np.float32), K, pose)) == 0


def _fusion_stream(tmp_path, n: int = 60):
    """A tiny fusion model file and ``n`` view messages of three drones (after their stream infos), the
    views interleaved so that each object comes in consecutive batches."""
    import torch

    from voxlink.models.binarizer import pack_bits
    from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
    from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
    from voxlink.weights import save_model

    torch.manual_seed(0)
    m = FusionModel(FUSION_CONFIGS["fusion-spatial-tiny"]).eval()
    path = save_model(m, tmp_path / "fusion.safetensors", meta={"family": "fusion"})
    bits = m.cfg.code_bits
    rng = np.random.default_rng(0)
    K = camera.intrinsics(m.cfg.image_size)
    msgs = [encode_info(StreamInfo(stream=s, seq=0, fingerprint=bytes.hex(m.fingerprint()), code_bits=bits, K=K,
                                   model="tiny", epoch_unix=1e9)) for s in range(3)]
    for i in range(n):
        msgs.append(encode_code(CodeMessage(stream=i % 3, object_id=7, seq=i // 3, t_ms=i,
                                            fingerprint=fingerprint32(m.fingerprint()), n_bits=bits,
                                            payload=pack_bits(np.where(rng.random(bits) > 0.5, 1.0, -1.0)),
                                            pose=camera.circle_pose(i, n))))
    return path, msgs


def test_pipelined_serving_gives_what_one_step_at_a_time_gives(tmp_path):
    """The serving loop's pipeline (views placed in the fuser thread while the next batch is decoded,
    depth maps made in the depth thread) reconstructs exactly what the station gives one step at a time:
    the same fused states, depth archives, clouds and counts."""
    import torch

    from ground.station import GroundConfig, GroundStation

    path, msgs = _fusion_stream(tmp_path)
    got = {}
    for pipelined in (False, True):
        st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / f"out{pipelined}"), batch=8,
                                        record=False))
        st._pipelined = pipelined
        for j in range(0, len(msgs), 10):
            st.handle_many([(b, 1e9, "link") for b in msgs[j:j + 10]])
            st.process_depths(budget=10)
        if pipelined:
            assert st._placing or st._inflight, "nothing was left in flight: the pipeline was not used"
        snaps = [st.snapshot((s, 7)) for s in range(3)]
        got[pipelined] = (st, [archive.read_members(f"{x['folder']}/depth.tar") for x in snaps],
                          [st.fused_points(st.sessions[(s, 7)]) for s in range(3)])
    (a, tars_a, pts_a), (b, tars_b, pts_b) = got[False], got[True]
    assert a.stats["views"] == b.stats["views"] == 60 and a.stats["depth_maps"] == b.stats["depth_maps"] == 60
    for key in a.sessions:
        assert torch.equal(a.sessions[key].state, b.sessions[key].state), f"object {key} fused differently"
    assert tars_a == tars_b and all(len(t) == 20 for t in tars_a)
    assert all(np.array_equal(x, y) for x, y in zip(pts_a, pts_b))


def test_a_quiet_link_leaves_nothing_in_flight(tmp_path):
    """Serving pipelined, the last views' depth maps are made and applied (record, listeners, the
    viewer's latest depth map) once the link goes quiet, without anyone asking for a result."""
    import threading
    import time

    from ground.station import GroundConfig, GroundStation

    path, msgs = _fusion_stream(tmp_path)
    st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "out"), record=False))
    seen = []
    st.depth_listeners.append(lambda s, seq, depth, pose: seen.append((s.stream, seq)))
    t = threading.Thread(target=st.run, kwargs={"duration_s": 120}, daemon=True)
    t.start()
    try:
        for b in msgs:
            st.q.put((b, time.time(), "link"))
        deadline = time.time() + 60
        while time.time() < deadline and len(seen) < 60:
            time.sleep(0.05)
        assert len(seen) == 60 and st.stats["depth_maps"] == 60, f"{len(seen)} of 60 depth maps applied"
        assert sorted(seen) == sorted((i % 3, i // 3) for i in range(60))
    finally:
        st.stop.set()
        t.join(timeout=60)
    assert not t.is_alive()
