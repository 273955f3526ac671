"""The sequential and direct models streamed (Golts & Schechner Secs. III-A, III-B): the drone sends each
view's N_small iterations (N chosen per view), the ground steps the object's 3D-LSTM with them and keeps
each view's decoded image."""

from __future__ import annotations

import dataclasses
import json
import time

import cv2
import numpy as np
import pytest
import torch

from ground.archive import read_members
from voxlink import camera
from voxlink.models.binarizer import pack_bits
from voxlink.models.config import get_config
from voxlink.models.joint import JointConfig, JointModel
from voxlink.models.rnn_compress import COMPRESSION_CONFIGS
from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
from voxlink.weights import save_model


@pytest.fixture(scope="module", params=["sequential", "direct", "direct+code-encoder"])
def joint_file(request, tmp_path_factory):
    """A saved tiny sequential or direct model (the last with a code encoder, :class:`CodeEncoder`)."""
    torch.manual_seed(0)
    kind = request.param.split("+")[0]
    recon = dataclasses.replace(get_config("tiny"), name=f"{kind}-tiny", code_bits=64, binarize=False,
                                frame="object")
    m = JointModel(JointConfig(kind=kind, compression=COMPRESSION_CONFIGS["tiny"], recon=recon,
                               code_encoder=(8, 8) if "code-encoder" in request.param else ())).eval()
    return save_model(m, tmp_path_factory.mktemp("m") / f"{kind}.safetensors"), m


def _view(m, image, seq, n, stream=3, obj=1):
    code = m.encode(image, n)[0]
    return encode_code(CodeMessage(stream=stream, object_id=obj, seq=seq, t_ms=seq, fingerprint=fingerprint32(m.fingerprint()),
                                   n_bits=len(code), payload=pack_bits(code),
                                   pose=camera.orbit_poses(1, np.random.default_rng(seq))[0])), code


def test_model_file_says_bits_per_iteration_and_iterations(joint_file):
    from voxlink.modelfile import read_model_info, require_reconstruction_model
    from voxlink.weights import load_model

    path, m = joint_file
    info = require_reconstruction_model(path)
    assert info.family == m.cfg.kind and info.code_bits == 1024 and info.max_iterations == 8
    assert info.frame == "object" and info.name == f"{m.cfg.kind}-tiny"
    loaded, _, _ = load_model(path)
    assert loaded.fingerprint() == m.fingerprint() == bytes.fromhex(read_model_info(path).fingerprint_hex)
    assert loaded.cfg.code_encoder == m.cfg.code_encoder  # a code encoder comes back with its weights


def test_ground_applies_variable_rate_views_and_writes_their_images(tmp_path, joint_file):
    from ground.station import GroundConfig, GroundStation

    path, m = joint_file
    st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "out")))
    assert st.iterative and st.code_bits == 1024 and st.max_iterations == 8
    st.handle(encode_info(StreamInfo(stream=3, seq=0, fingerprint=bytes.hex(m.fingerprint()), code_bits=1024,
                                     K=camera.intrinsics(), model=m.cfg.recon.name, epoch_unix=time.time())))
    torch.manual_seed(1)
    images = torch.rand(3, 1, 3, 128, 128)
    iters = [1, 3, 2]  # variable rate: each view its own N
    codes = []
    for seq, (img, n) in enumerate(zip(images, iters)):
        buf, code = _view(m, img, seq, n)
        assert st.handle(buf) is not None
        codes.append(code)
    # not a whole number of iterations, or more than N_max: counted, nothing applied
    bad = encode_code(CodeMessage(stream=3, object_id=1, seq=9, t_ms=9, fingerprint=fingerprint32(m.fingerprint()),
                                  n_bits=1536, payload=b"\x00" * 192))
    too_many = encode_code(CodeMessage(stream=3, object_id=1, seq=10, t_ms=10, fingerprint=fingerprint32(m.fingerprint()),
                                       n_bits=9 * 1024, payload=b"\x00" * 1152))
    assert st.handle(bad) is None and st.handle(too_many) is None and st.rejected["wrong_code_length"] == 2
    s = st.sessions[(3, 1)]
    assert s.views == 3
    # the ground's grid is the model's 3D-LSTM stepped through the same codes, view by view
    with torch.no_grad():
        state = m.init_state(1)
        for c in codes:
            state = m.step(c[None], state)
        expect = m.occupancy(state)[0].numpy()
    np.testing.assert_allclose(st.occupancy(s), expect, atol=1e-5)
    # the viewer's state carries the latest decoded view and the stream's ratio as received
    import base64

    from ground.viewer import ViewerServer

    viewer = ViewerServer(st, "127.0.0.1", 0)
    try:
        state = viewer.state()
    finally:
        viewer.httpd.server_close()
    (obj,) = state["objects"]
    png = cv2.imdecode(np.frombuffer(base64.b64decode(obj["image_png"].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (128, 128, 3) and np.array_equal(png[:, :, ::-1], s.last_image)
    assert state["streams"][0]["ratio"] == pytest.approx(128 * 128 * 24 / 2048)
    summary = st.finalise((3, 1))
    d = tmp_path / "out" / "s3_o1" / "snap-000"
    pngs = read_members(d / "images.tar")
    assert len(pngs) == 3
    with torch.no_grad():
        want = m.compressor.decode(codes[1].view(1, -1, 1024))[0, -1].permute(1, 2, 0).numpy() * 255
    got = cv2.imdecode(np.frombuffer(pngs[sorted(pngs)[1]], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32)
    assert np.abs(got - want).max() <= 1.0, "the written image is the view decoded from its 3 iterations"
    js = json.loads((d / "session.json").read_text())
    assert js["views"] == 3 and js["code_bits_per_view"] == pytest.approx(2048)
    assert js["compression_ratio"] == pytest.approx(128 * 128 * 24 / 2048) == summary["compression_ratio"]
    assert read_members(d / "depth.tar") == {}, "these models make no depth maps"


def test_edge_variable_rate_stops_each_view_at_its_psnr_target(joint_file):
    from voxlink.backends import BackendUnavailable, OnnxBackend, TorchBackend, probe

    path, m = joint_file
    flat = torch.full((1, 3, 128, 128), 0.5)
    busy = torch.rand(1, 3, 128, 128)
    x = torch.cat([flat, busy]).numpy()
    with torch.no_grad():
        full = m.compressor(torch.from_numpy(x), 8)
    err = (full["recon"].clamp(0, 1) - torch.from_numpy(x)[:, None]).square().flatten(2).mean(2)
    psnr = 10 * torch.log10(1 / err)  # [2 views, 8 iterations]
    target = float(psnr[0, 0]) - 0.01  # the flat view reaches it at once; the noise never does
    assert float(psnr[1].max()) < target
    b = TorchBackend(str(path), iterations=8, psnr_db=target)
    codes = b.encode_views(x)
    assert [len(c) // 1024 for c in codes] == [1, 8]
    # the first N iterations of a variable-rate code are the fixed-rate code of N iterations
    with torch.no_grad():
        want = [m.encode(flat, 1)[0].numpy(), m.encode(busy, 8)[0].numpy()]
    np.testing.assert_array_equal(codes[0], want[0])
    np.testing.assert_array_equal(codes[1], want[1])
    fixed = TorchBackend(str(path), iterations=3)
    assert [len(c) for c in fixed.encode_views(x)] == [3072, 3072]
    with pytest.raises(ValueError, match="iterations"):
        TorchBackend(str(path), iterations=9)
    with pytest.raises(BackendUnavailable, match="PyTorch only"):
        OnnxBackend.for_model(str(path))
    assert probe("auto", model=str(path), iterations=2).name.startswith("torch")


def test_edge_cli_streams_a_variable_rate_object_that_the_ground_rebuilds(tmp_path, joint_file):
    """``voxlink edge --model FILE --iterations 4 --psnr DB`` over loopback ZeroMQ (PUSH), every message fed to a
    ground: each view carries 1..4 iterations, every view applied, every image written."""
    import subprocess
    import sys

    import zmq

    from ground.station import GroundConfig, GroundStation
    from voxlink.data.meshes import ASSET_MESHES, find_meshes
    from voxlink.net import free_port
    from voxlink.protocol import decode

    path, m = joint_file
    mesh = find_meshes([ASSET_MESHES])[0]
    port, n = free_port(), 6
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "voxlink.cli", "edge", "--source", f"orbit:{mesh}", "--connect",
                             f"tcp://127.0.0.1:{port}", "--socket", "push", "--log-dir", str(tmp_path / "log"),
                             "--model", str(path), "--backend", "torch", "--iterations", "4", "--psnr", "14",
                             "--max-frames", str(n), "--stream-id", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "out")))
    bufs, deadline = [], time.time() + 180
    try:
        while time.time() < deadline and sum(isinstance(decode(b), CodeMessage) for b in bufs) < n:
            if pull.poll(1000):
                bufs.append(pull.recv())
            elif proc.poll() is not None and not pull.poll(500):
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        pull.close()
    assert proc.returncode == 0, err[-2000:]
    views = [decode(b) for b in bufs if isinstance(decode(b), CodeMessage)]
    assert len(views) == n and all(v.n_bits % 1024 == 0 and 1 <= v.n_bits // 1024 <= 4 for v in views)
    for b in bufs:
        st.handle(b)
    s = st.sessions[(5, 0)]
    assert s.views == n and not st.rejected
    summary = st.finalise((5, 0))
    assert summary["code_bits_per_view"] == pytest.approx(np.mean([v.n_bits for v in views]))
    assert len(read_members(tmp_path / "out" / "s5_o0" / "snap-000" / "images.tar")) == n


def test_an_error_in_one_rate_group_steps_no_object_twice(tmp_path, joint_file, monkeypatch):
    """A batch of a variable-rate stream is one model call per number of iterations: where the second call
    fails, the first group's objects (already stepped) are not stepped again, and the failed group's views
    are fused one by one: every grid equals that of a ground where nothing failed."""
    from ground.station import GroundConfig, GroundStation

    path, m = joint_file
    torch.manual_seed(2)
    images = torch.rand(4, 1, 3, 128, 128)
    msgs = [(_view(m, img, seq, n=1 + seq % 2, obj=seq)[0], time.time(), "link") for seq, img in enumerate(images)]
    grounds = []
    for name in ("clean", "faulty"):
        st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / name), record=False))
        st.handle(encode_info(StreamInfo(stream=3, seq=0, fingerprint=bytes.hex(m.fingerprint()), code_bits=1024,
                                         K=camera.intrinsics(), model=m.cfg.recon.name, epoch_unix=time.time())))
        grounds.append(st)
    clean, st = grounds
    clean.handle_many(msgs)
    step, calls = st.net.step_decoded, []

    def second_call_fails(codes, state):
        calls.append(len(codes))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return step(codes, state)

    monkeypatch.setattr(st.net, "step_decoded", second_call_fails)
    assert all(r is not None for r in st.handle_many(msgs))
    assert calls == [2, 2, 1, 1] and not st.rejected, "the failed group's two views fused again, alone"
    for obj in range(4):
        np.testing.assert_allclose(st.occupancy(st.sessions[(3, obj)]), clean.occupancy(clean.sessions[(3, obj)]),
                                   atol=1e-6)
    # an error after an object's state was replaced (keeping the view's image) must not step it again
    again = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "again"), record=False))
    again.handle(encode_info(StreamInfo(stream=3, seq=0, fingerprint=bytes.hex(m.fingerprint()), code_bits=1024,
                                        K=camera.intrinsics(), model=m.cfg.recon.name, epoch_unix=time.time())))

    class Flaky(dict):
        failed = False

        def __setitem__(self, k, v):
            if not Flaky.failed:
                Flaky.failed = True
                raise MemoryError("no room for the decoded image")
            super().__setitem__(k, v)

        def popitem(self, last=True):
            return super().popitem()

    again._decoded = Flaky()
    again.handle_many(msgs)
    for obj in range(4):
        np.testing.assert_allclose(again.occupancy(again.sessions[(3, obj)]),
                                   clean.occupancy(clean.sessions[(3, obj)]), atol=1e-6)
