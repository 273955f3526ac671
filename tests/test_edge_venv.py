"""The drone installs without PyTorch: ``pip install ".[edge]"`` into a fresh virtual environment, then
``voxlink edge --backend onnxruntime`` streams a lossless video's codes to a ZeroMQ subscriber here, and
the codes are the PyTorch encoder's bits for the same frames.

Slow, but in the default run: measured 32 s on the 2-core dev machine (23 s for the venv and the install,
with the pip cache that ``scripts/setup.sh`` leaves warm). It needs pip to reach an index;
``VOXLINK_TEST_EDGE_VENV=0`` skips it (offline machines). ``VOXLINK_EDGE_VENV=PATH`` builds the
environment there and keeps it, e.g. for ``voxlink bench edge --python PATH/bin/python``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENABLED = os.environ.get("VOXLINK_TEST_EDGE_VENV", "1") != "0"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENABLED, reason="VOXLINK_TEST_EDGE_VENV=0: skipping the fresh-venv install of "
                                           "voxlink[edge] (needs pip to reach an index)"),
]


def _copy_source(dst: Path) -> Path:
    """The installable part of this checkout (no build outputs, runs, data or the venv)."""
    dst.mkdir(parents=True)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, dst / f)
    for d in ("voxlink", "edge", "ground", "export"):
        shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _edge_venv(tmp_path: Path) -> Path:
    """A fresh venv with ``voxlink[edge]`` of this checkout installed (no torch); its directory."""
    where = os.environ.get("VOXLINK_EDGE_VENV")
    env_dir = Path(where) if where else tmp_path / "edge-venv"
    py = env_dir / "bin" / "python"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    src = _copy_source(tmp_path / "src")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    # the wheel is built here (this environment's setuptools), in the copy, so the checkout stays clean
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("voxlink-*.whl")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{wheel}[edge]"],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return env_dir


def test_edge_extra_installs_without_torch_and_streams_pytorchs_bits(tmp_path):
    import cv2
    import torch
    import zmq

    from voxlink.preprocess import capture_to_view, to_input
    from voxlink.protocol import CodeMessage, StreamInfo, decode, fingerprint32, unpack_bits
    from voxlink.weights import load_model

    t0 = time.perf_counter()
    env_dir = _edge_venv(tmp_path)
    py = env_dir / "bin" / "python"
    install_s = time.perf_counter() - t0
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    for heavy in ("torch", "libigl", "scikit-image", "matplotlib", "trimesh", "pyrender", "glymur", "scipy"):
        assert f"\n{heavy}==" not in "\n" + freeze, f"{heavy} got installed with the edge extra:\n{freeze}"
    for needed in ("numpy", "opencv-python-headless", "pyzmq", "onnxruntime", "safetensors"):
        assert f"\n{needed}==" in "\n" + freeze, f"{needed} missing from the edge install:\n{freeze}"

    # a short lossless video of real rendered views (the shipped meshes), 160 x 120: centre crop + resize
    from voxlink.data.make import Job, MakeConfig, make_object

    job = Job(index=0, kind="mesh", path=str(sorted((ROOT / "voxlink/assets/meshes").glob("*/*.obj"))[0]))
    rgb = make_object(job, MakeConfig(views=8, seed=11))["arrays"]["rgb"]  # uint8 [8, 128, 128, 3]
    video = tmp_path / "flight.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (160, 128))
    assert w.isOpened()
    frames = []
    for v in rgb:
        f = np.zeros((128, 160, 3), np.uint8)
        f[:, 16:144] = v[:, :, ::-1]
        f[:, :16] = 200  # borders the centre crop removes
        frames.append(f)
        w.write(f)
    w.release()

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    cmd = [str(env_dir / "bin" / "voxlink"), "edge", "--source", str(video), "--backend", "onnxruntime",
           "--connect", f"tcp://127.0.0.1:{port}", "--log-dir", str(tmp_path / "log"), "--stream-id", "7",
           "--fps", "5"]  # paced: the subscriber is surely joined before the codes that count
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    codes, infos = [], []
    try:
        deadline = time.time() + 120
        # until the edge has exited and nothing is pending: its first stream info can be sent before the
        # subscription arrives (a PUB socket drops it), its last one goes out as it stops
        while time.time() < deadline:
            if sub.poll(500):
                m = decode(sub.recv())
                (codes if isinstance(m, CodeMessage) else infos).append(m)
            elif proc.poll() is not None and not sub.poll(500):
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert proc.returncode == 0, err[-3000:]
    assert "onnxruntime[" in err, err[-2000:]

    model, _, _ = load_model(None)  # the shipped default, which the edge runs without --model
    with torch.no_grad():
        ref = model.encode(to_input(np.stack([capture_to_view(f) for f in frames]))).numpy()
    # a PUB socket drops what it sends before the subscription arrives: every view is in the code log,
    # and every view that crossed the link is the PyTorch encoder's bits
    assert len(codes) >= len(frames) - 1, f"received {len(codes)} of {len(frames)} views:\n{err[-2000:]}"
    for c in codes:
        assert c.stream == 7 and c.n_bits == 1024 and c.fingerprint == fingerprint32(model.fingerprint())
        assert np.array_equal(unpack_bits(c.payload, 1024), ref[c.seq]), f"view {c.seq}: codes differ from PyTorch's"
    assert infos and isinstance(infos[0], StreamInfo) and infos[0].fingerprint == bytes.hex(model.fingerprint())
    assert infos[0].extra.get("backend", "").startswith("onnxruntime")
    print(f"edge venv: installed in {install_s:.0f} s; {len(codes)} views streamed bit-identical to PyTorch")
