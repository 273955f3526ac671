"""Runtime core: bit packing owned by the protocol, model-file metadata without PyTorch, the shipped
ONNX encoder graphs (found by model name, fingerprint checked, cached export), and the import graph of
edge/ and ground/ (no PyTorch on the drone, nothing of the lab on either side)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ground.archive import read_members
from voxlink import protocol
from voxlink.modelfile import ModelFileError, encoder_onnx_beside, read_model_info, shipped_models

ROOT = Path(__file__).resolve().parents[1]
MODEL = "implicit-k1024" if "implicit-k1024" in shipped_models() else None
needs_model = pytest.mark.skipif(MODEL is None, reason="no shipped implicit-k1024 weights")

#: Put first in a child process's script: makes ``import torch`` (and ``onnx``) fail, as on a drone without them.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "onnx"):
                raise ImportError(f"{name} is blocked in this test (a drone without PyTorch)")
    sys.meta_path.insert(0, _NoTorch())
""")

#: Modules neither edge/ nor ground/ may import (the lab, and plotting).
LAB = ("voxlink.data", "voxlink.train", "voxlink.train_fusion", "voxlink.bench", "voxlink.evaluate", "matplotlib")


def _run_py(code: str, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter from the repository root; it prints one JSON line last."""
    env = dict(os.environ, PYOPENGL_PLATFORM="osmesa")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- bit packing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 7, 8, 9, 819, 1024])
def test_protocol_packing_is_the_binarizer_packing_bit_for_bit(k):
    import torch

    from voxlink.models.binarizer import pack_bits as torch_pack
    from voxlink.models.binarizer import unpack_bits as torch_unpack

    rng = np.random.default_rng(k)
    for _ in range(5):
        code = np.where(rng.random(k) < 0.5, 1.0, -1.0).astype(np.float32)
        data = protocol.pack_bits(code)
        assert len(data) == (k + 7) // 8
        assert data == torch_pack(torch.from_numpy(code)) == torch_pack(code)
        back = protocol.unpack_bits(data, k)
        assert back.dtype == np.float32 and back.shape == (k,)
        assert np.array_equal(back, code) and np.array_equal(torch_unpack(data, k).numpy(), code)
    # MSB first, +1 -> 1, zero padding in the last byte
    assert protocol.pack_bits(np.array([1, -1, -1, -1, -1, -1, -1, 1, 1])) == bytes([0b10000001, 0b10000000])
    with pytest.raises(ValueError):
        protocol.pack_bits(np.ones((2, 8)))
    with pytest.raises(ValueError):
        protocol.unpack_bits(b"\0" * 3, 8)


def test_numpy_preprocessing_is_the_torch_preprocessing_bit_for_bit():
    from voxlink.preprocess import to_input, to_input_array

    v = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    v[0, 0, :256 // 3 * 3 // 3] = np.arange(256 // 3 * 3 // 3)[:, None]  # many distinct values
    a = to_input_array(v)
    assert a.dtype == np.float32 and a.shape == (3, 3, 128, 128) and a.flags.c_contiguous
    assert np.array_equal(a.view(np.uint32), to_input(v).numpy().view(np.uint32))
    with pytest.raises(ValueError):
        to_input_array(np.zeros((4, 4, 2), np.uint8))


# -- model-file metadata -----------------------------------------------------------------------------
@needs_model
def test_model_metadata_without_torch_matches_the_loaded_model():
    from voxlink.weights import load_model

    info = read_model_info(MODEL)
    model, meta, _ = load_model(MODEL)
    assert info.fingerprint == model.fingerprint() and info.code_bits == model.cfg.code_bits == 1024
    assert info.name == model.cfg.name and info.frame == model.cfg.frame and info.family == "implicit"
    assert info.meta == meta and info.config == model.cfg.to_dict()
    got = _run_py(BLOCK_TORCH + textwrap.dedent(f"""
        import json, sys
        from voxlink.modelfile import read_model_info
        i = read_model_info({MODEL!r})
        print(json.dumps([i.fingerprint_hex, i.code_bits, i.name, 'torch' in sys.modules]))
    """))
    assert got == [info.fingerprint_hex, 1024, info.name, False]
    with pytest.raises(ModelFileError, match="makes 1024-bit codes"):
        read_model_info(MODEL, code_bits=819)


def test_model_metadata_errors(tmp_path):
    from safetensors.numpy import save_file

    with pytest.raises(ModelFileError, match="no model file"):
        read_model_info(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        read_model_info(bad)
    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a voxlink model"):
        read_model_info(other)
    nok = tmp_path / "nok.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(nok), metadata={"voxlink.format": "voxlink-model-1",
                                                                 "voxlink.config": json.dumps({"name": "x"})})
    with pytest.raises(ModelFileError, match="code_bits"):
        read_model_info(nok)
    fam = tmp_path / "fam.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(fam), metadata={
        "voxlink.format": "voxlink-model-1", "voxlink.family": "fusion", "voxlink.fingerprint": "00112233445566aa",
        "voxlink.config": json.dumps({"name": "fusion-x", "code_bits": 512})})
    i = read_model_info(fam)
    assert (i.family, i.code_bits, i.frame, i.fingerprint) == ("fusion", 512, "pose", bytes.fromhex("00112233445566aa"))


# -- shipped ONNX graphs -----------------------------------------------------------------------------
def _drone_models() -> list[str]:
    """The shipped models a drone streams with (the image codec has no edge encoder graph)."""
    from voxlink.modelfile import RECONSTRUCTION_FAMILIES

    return [n for n in shipped_models() if read_model_info(n).family in RECONSTRUCTION_FAMILIES]


@pytest.mark.parametrize("name", _drone_models())
def test_every_shipped_model_ships_its_current_encoder_graph(name):
    """A torch-free drone can only run a shipped model whose graph ships too: rerun
    ``scripts/export_shipped_onnx.py`` when a shipped model changes or lands."""
    import onnx

    from voxlink.backends import OnnxBackend

    info = read_model_info(name)
    path = encoder_onnx_beside(info.path)
    assert path.is_file(), f"{path.name} missing: run scripts/export_shipped_onnx.py {name}"
    b = OnnxBackend(path, ("CPUExecutionProvider",))
    assert b.fingerprint == info.fingerprint and b.code_bits == info.code_bits, \
        f"{path.name} is stale: run scripts/export_shipped_onnx.py {name}"
    assert b.model_name == info.name
    assert path.stat().st_size < 8e6
    m = onnx.load(str(path))
    # float32 weights (float16 would not give the PyTorch model's bits)
    assert {t.data_type for t in m.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}


@needs_model
def test_shipped_graph_gives_pytorchs_bits_on_rendered_views():
    from export.onnx_export import onnx_parity
    from voxlink.cli import _parity_views
    from voxlink.weights import load_model

    model, _, _ = load_model(MODEL)
    rep = onnx_parity(model, encoder_onnx_beside(read_model_info(MODEL).path), _parity_views(None))
    assert rep["views"] == 32 and rep["mismatched_bits"] <= 1, rep


@needs_model
def test_onnx_for_model_skips_a_stale_graph_and_exports_once_into_the_cache(tmp_path, monkeypatch, caplog):
    from voxlink.backends import BackendUnavailable, OnnxBackend, onnx_cache_dir, probe

    monkeypatch.setenv("VOXLINK_CACHE", str(tmp_path / "cache"))
    src = read_model_info(MODEL).path
    model_file = tmp_path / "mine.safetensors"
    shutil.copy(src, model_file)
    # a graph of another model beside it: must not be used
    stale = encoder_onnx_beside(model_file)
    from export.onnx_export import export_onnx
    from voxlink.weights import load_model

    other, _, _ = load_model(MODEL)
    import torch

    with torch.no_grad():
        other.encoder.fc.bias.add_(0.01)
    export_onnx(other, stale)
    assert OnnxBackend(stale).fingerprint != read_model_info(model_file).fingerprint
    with pytest.raises(BackendUnavailable, match="stale"):
        OnnxBackend.for_model(model_file, export=False)
    b = OnnxBackend.for_model(model_file)  # torch here: exported once into the cache
    cached = onnx_cache_dir() / f"mine-{read_model_info(model_file).fingerprint_hex}.onnx"
    assert b.path == cached and cached.is_file() and b.fingerprint == read_model_info(model_file).fingerprint
    mtime = cached.stat().st_mtime_ns
    b2 = probe("onnxruntime", model=str(model_file))
    assert b2.path == cached and cached.stat().st_mtime_ns == mtime, "the cached graph is reused, not re-exported"
    x = np.random.default_rng(1).random((2, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        ref = load_model(model_file)[0].encode(torch.from_numpy(x)).numpy()
    assert np.array_equal(b2.encode(x), ref)


# -- import graph --------------------------------------------------------------------------------------
@needs_model
def test_edge_runs_without_torch_and_imports_nothing_of_the_lab(tmp_path):
    """edge/ imports and starts (CLI help, daemon on a video with onnxruntime and auto) with PyTorch blocked,
    and loads nothing of voxlink.data / train / bench / evaluate / models, nor matplotlib."""
    from edge.bench import make_video

    video = make_video(tmp_path / "v.avi", n=4)
    got = _run_py(BLOCK_TORCH + textwrap.dedent(f"""
        import json, sys, contextlib, io
        import edge.daemon, edge.sources
        from voxlink.cli import main
        sys.argv = ["voxlink", "edge", "--help"]
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
            except SystemExit:
                pass
        from edge.daemon import EdgeConfig, EdgeDaemon
        names = []
        for kind in ("onnxruntime", "auto"):
            d = EdgeDaemon(EdgeConfig(source={str(video)!r}, backend=kind, log_dir={str(tmp_path / "log")!r} + kind,
                                      connect=["tcp://127.0.0.1:9"], info_interval_s=60))
            d.run()
            names.append([d.backend.name, d.stats["codes_sent"]])
        print(json.dumps({{"names": names, "modules": sorted(sys.modules)}}))
    """))
    assert got["names"] == [["onnxruntime[CPUExecutionProvider]", 4]] * 2
    bad = [m for m in got["modules"] if m.split(".")[0] in ("torch", "onnx", "matplotlib")
           or m.startswith(LAB + ("voxlink.models", "voxlink.weights", "export"))]
    assert not bad, f"the edge imported {bad}"


def test_programs_name_nothing_of_the_lab_even_lazily():
    """Every import statement in edge/ and ground/, also those inside functions (which a run that never
    calls them would not load), names nothing of the lab; the one exception is the ``orbit:`` drone
    simulator in edge/sources.py, which renders with the lab's renderer when it is used."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found = []
    for f in sorted([*(root / "edge").glob("*.py"), *(root / "ground").glob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [(f.relative_to(root).as_posix(), n) for n in names if n.startswith(LAB)]
    assert found, "the check sees the simulator's import"  # the check itself works
    assert {f for f, _ in found} == {"edge/sources.py"}, f"programs import the lab: {found}"
    assert {n for _, n in found} <= {"voxlink.data.meshes", "voxlink.data.render"}


def test_ground_imports_nothing_of_the_lab():
    got = _run_py(textwrap.dedent("""
        import json, sys, contextlib, io
        import ground.station, ground.record, ground.viewer, ground.delivery
        from voxlink.cli import main
        for cmd in (["ground", "--help"], ["edge", "--help"]):
            sys.argv = ["voxlink", *cmd]
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main()
                except SystemExit:
                    pass
        print(json.dumps(sorted(sys.modules)))
    """))
    bad = [m for m in got if m.startswith(LAB)]
    assert not bad, f"the ground imported {bad}"
    assert "ground.station" in got and "torch" in got  # the ground may use PyTorch


@needs_model
def test_ground_station_starts_without_the_lab(tmp_path):
    got = _run_py(textwrap.dedent(f"""
        import json, sys
        from ground.station import GroundConfig, GroundStation
        g = GroundStation(GroundConfig(bind=[], connect=[], out={str(tmp_path / "out")!r}, backend="torch"))
        print(json.dumps([g.code_bits, sorted(sys.modules)]))
    """))
    assert got[0] == 1024
    bad = [m for m in got[1] if m.startswith(LAB)]
    assert not bad, f"the ground station imported {bad} at start"


def test_ground_writes_a_snapshot_without_the_lab(tmp_path):
    """A snapshot (occupancy .npz and .binvox, depth PNGs, points, mesh, session.json) is written with
    nothing of voxlink.data (its libigl voxelizer), train, bench, evaluate or matplotlib loaded; the
    .binvox comes from the runtime core (voxlink.binvox) and reads back equal to the .npz grid."""
    got = _run_py(textwrap.dedent(f"""
        import json, sys, time
        import numpy as np, torch
        from ground.station import GroundConfig, GroundStation
        from voxlink import camera
        from voxlink.models import ImplicitModel, get_config
        from voxlink.models.binarizer import pack_bits
        from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
        from voxlink.weights import save_model
        torch.manual_seed(0)
        m = ImplicitModel(get_config("tiny")).eval()
        path = save_model(m, {str(tmp_path / "tiny.safetensors")!r})
        st = GroundStation(GroundConfig(bind=[], model=str(path), out={str(tmp_path / "out")!r}))
        st.handle(encode_info(StreamInfo(stream=2, seq=0, fingerprint=m.fingerprint().hex(), code_bits=64,
                                         K=camera.intrinsics(), model="tiny", epoch_unix=time.time())))
        with torch.no_grad():
            codes = m.encode(torch.rand(3, 3, 128, 128))
        poses = camera.orbit_poses(3, np.random.default_rng(0))
        for i in range(3):
            st.handle(encode_code(CodeMessage(stream=2, object_id=1, seq=i, t_ms=i * 100,
                                              fingerprint=fingerprint32(m.fingerprint()), n_bits=64,
                                              payload=pack_bits(codes[i]), pose=poses[i])))
        summary = st.finalise((2, 1))
        print(json.dumps({{"folder": summary["folder"], "modules": sorted(sys.modules)}}))
    """))
    bad = [m for m in got["modules"] if m.startswith(LAB) or m.split(".")[0] == "igl"]
    assert not bad, f"writing a ground snapshot imported {bad}"
    assert "voxlink.binvox" in got["modules"]
    from voxlink.binvox import read_binvox

    snap = Path(got["folder"])
    occ, translate, scale = read_binvox(snap / "occupancy.binvox")
    grid = np.load(snap / "occupancy.npz")["occupancy"]
    assert (occ == (grid > 0.4)).all() and np.allclose(translate, -0.5) and scale == 1.0
    assert len(read_members(snap / "depth.tar")) == 3
