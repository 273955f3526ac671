"""Edge: ONNX export parity, the daemon over loopback ZeroMQ, its local log, signals, bad input,
and TensorRT (skipped with a reason where TensorRT or a GPU is absent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from edge.daemon import CodeLog
from voxlink.protocol import CodeMessage, StreamInfo, decode, fingerprint32
from voxlink.weights import DEFAULT_MODEL, load_model, shipped_models

# the shipped default: what the edge runs when no --model is given
MODEL = DEFAULT_MODEL if DEFAULT_MODEL in shipped_models() else None
needs_model = pytest.mark.skipif(MODEL is None, reason=f"no shipped {DEFAULT_MODEL} weights")


from voxlink.net import free_port  # noqa: E402


@needs_model
def test_onnx_runtime_and_pytorch_give_the_same_bits(tmp_path):
    from export.onnx_export import export_onnx, onnx_parity
    from voxlink.cli import _parity_views

    model, _, _ = load_model(MODEL)
    path = export_onnx(model, tmp_path / "enc.onnx")
    views = _parity_views(None)  # 4 real meshes + 4 procedural objects, 4 views each
    rep = onnx_parity(model, path, views)
    assert rep["views"] == 32
    # sign() can only flip where a pre-activation is within float rounding of zero
    assert rep["mismatched_bits"] <= 1, rep


def _run_edge(tmp_path, mesh, port, extra=(), socket_kind="pub"):
    cmd = [sys.executable, "-m", "voxlink.cli", "edge", "--source", f"orbit:{mesh}", "--connect", f"tcp://127.0.0.1:{port}",
           "--socket", socket_kind, "--log-dir", str(tmp_path / "log"), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_model
def test_loopback_edge_streams_every_view(tmp_path, real_mesh_files):
    mesh = real_mesh_files[0]
    port = free_port()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(f"tcp://127.0.0.1:{port}")
    n = 12
    proc = _run_edge(tmp_path, mesh, port, ["--max-frames", str(n), "--object-id", "42", "--stream-id", "3"])
    model, _, _ = load_model(MODEL)
    codes, infos = [], []
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(codes) < n:
            if sub.poll(1000):
                m = decode(sub.recv())  # checks magic, version, CRC and length
                (codes if isinstance(m, CodeMessage) else infos).append(m)
            elif proc.poll() is not None and not sub.poll(500):
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert proc.returncode == 0, err
    assert len(codes) == n, f"received {len(codes)} of {n} views; edge log:\n{err[-2000:]}"
    assert [c.seq for c in codes] == list(range(n)), "sequence numbers run without gaps"
    assert all(c.n_bits == 1024 and len(c.payload) == 128 for c in codes)
    assert all(c.fingerprint == fingerprint32(model.fingerprint()) for c in codes)
    assert all(c.stream == 3 and c.object_id == 42 and c.pose is not None for c in codes)
    assert infos and isinstance(infos[0], StreamInfo) and infos[0].fingerprint == bytes.hex(model.fingerprint())
    from voxlink.protocol import run_tag

    assert all(c.run == run_tag(infos[0].epoch_unix) for c in codes), "every view says which edge run made it"
    # the local log kept every code that was sent
    logged = [decode(b) for b in CodeLog.read(tmp_path / "log" / "codes.log")]
    assert [m.seq for m in logged if isinstance(m, CodeMessage)] == list(range(n))
    assert "frames/s" in err or "edge stopped" in err


@needs_model
def test_edge_exits_cleanly_on_sigterm(tmp_path, real_mesh_files):
    port = free_port()
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    proc = _run_edge(tmp_path, real_mesh_files[0], port, ["--max-frames", "100000"], socket_kind="push")
    try:
        assert pull.poll(120_000), "no message from the edge"
        got = 0
        while got < 3 and pull.poll(30_000):
            pull.recv()
            got += 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        pull.close()
    assert proc.returncode == 0, err
    assert "edge stopped" in err and "Traceback" not in err


def test_code_log_rotates_and_keeps_records(tmp_path):
    log = CodeLog(tmp_path, max_bytes=1000, backups=2)
    msgs = [bytes([i]) * 150 for i in range(20)]
    for m in msgs:
        log.append(m)
    log.close()
    kept = CodeLog.read(tmp_path / "codes.log.2") + CodeLog.read(tmp_path / "codes.log.1") + CodeLog.read(tmp_path / "codes.log")
    assert kept == msgs[-len(kept):] and len(kept) >= 12
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())


def test_bad_source_and_backend_give_clear_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "edge", "--source", str(tmp_path / "nothing.mp4"),
                        "--connect", "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "error" in r.stderr.lower()
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "edge", "--source", "orbit:x.obj", "--backend", "tensorrt",
                        "--connect", "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "tensorrt" in r.stderr.lower() and "Traceback" not in r.stderr


def test_view_intrinsics_follow_crop_and_resize():
    from edge.sources import view_intrinsics
    from voxlink import camera
    from voxlink.preprocess import capture_to_view

    # a 480 x 640 frame; a point projected in the frame lands at the same place in the 128 view
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    Kv = view_intrinsics(K, 480, 640)
    T = np.eye(4)
    p = np.array([[0.1, -0.05, 2.0]])
    uv, _ = camera.project(p, K, T)
    uvv, _ = camera.project(p, Kv, T)
    s = 128 / 480
    assert np.allclose(uvv[0], ((uv[0] - [80, 0]) + 0.5) * s - 0.5)
    img = np.zeros((480, 640, 3), np.uint8)
    assert capture_to_view(img).shape == (128, 128, 3)


def _has_tensorrt_and_gpu() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'voxlink[trt]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.trt
@pytest.mark.skipif(_has_tensorrt_and_gpu() is not None, reason=str(_has_tensorrt_and_gpu()))
@needs_model
def test_tensorrt_engine_matches_pytorch(tmp_path):
    from export.onnx_export import export_onnx
    from export.trt import TrtRunner, build_engine
    from voxlink.cli import _parity_views

    model, _, _ = load_model(MODEL)
    onnx_path = export_onnx(model, tmp_path / "enc.onnx")
    meta = build_engine(onnx_path, tmp_path / "enc.engine")
    assert meta["code_bits"] == 1024 and meta["fingerprint"] == bytes.hex(model.fingerprint())
    views = _parity_views(None)
    got = TrtRunner(tmp_path / "enc.engine").run(views.numpy())
    ref = model.encode(views).detach().numpy()
    assert (got != ref).sum() <= 0.001 * ref.size


def test_trt_export_without_tensorrt_is_a_clear_error(tmp_path):
    if _has_tensorrt_and_gpu() is None:
        pytest.skip("TensorRT and a GPU are present: the error path does not apply")
    onnx_file = tmp_path / "x.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    r = subprocess.run([sys.executable, "-m", "voxlink.cli", "export", "trt", str(onnx_file), "--out",
                        str(tmp_path / "x.engine")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and ("TensorRT" in r.stderr or "CUDA" in r.stderr) and "Traceback" not in r.stderr


def test_curve_encrypted_socket_from_config(tmp_path):
    """CURVE keys from the config (zmq.auth certificates): the ground decrypts what the edge sends."""
    import zmq.auth

    from edge.daemon import EdgeConfig, make_socket

    if not zmq.has("curve"):
        pytest.skip("libzmq built without CURVE")
    srv_pub, srv_sec = zmq.auth.create_certificates(tmp_path, "ground")
    cli_pub, cli_sec = zmq.auth.create_certificates(tmp_path, "drone")
    server_public, server_secret = zmq.auth.load_certificate(srv_sec)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.curve_secretkey, pull.curve_publickey, pull.curve_server = server_secret, server_public, True
    port = free_port()
    pull.bind(f"tcp://127.0.0.1:{port}")
    cfg = EdgeConfig(connect=[f"tcp://127.0.0.1:{port}"], socket="push", curve_server_key=server_public.decode(),
                     curve_secret_file=str(cli_sec))
    push = make_socket(ctx, cfg)
    push.send(b"hello over CURVE")
    assert pull.poll(5000) and pull.recv() == b"hello over CURVE"
    push.close(0)
    pull.close(0)
    ctx.term()
