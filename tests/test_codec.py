"""The N_small image codec as a model family of its own: model files, patch training, the codec CLI and
``voxlink bench codec``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voxlink.models.rnn_compress import COMPRESSION_CONFIGS, RNNCompressor


def _tiny_codec(tmp_path, seed=0):
    from voxlink.weights import save_model

    torch.manual_seed(seed)
    model = RNNCompressor(dataclasses.replace(COMPRESSION_CONFIGS["tiny"], name="nsmall-test"))
    return model, save_model(model, tmp_path / "codec.safetensors", meta={"steps": 0})


def test_codec_model_file_round_trip():
    """A codec file says its family and m, and loads with the same fingerprint."""
    import tempfile
    from pathlib import Path

    from voxlink.weights import load_model, read_model_info

    with tempfile.TemporaryDirectory() as d:
        model, path = _tiny_codec(Path(d))
        info = read_model_info(path)
        assert info.family == "codec" and info.code_bits == 1024
        loaded, _, _ = load_model(path)
        assert loaded.fingerprint() == model.fingerprint() and loaded.family == "codec"


@pytest.mark.parametrize("kind", ["codec", "sequential"])
def test_codec_cli_codes_n_x_128_bytes_and_decodes_a_png(tmp_path, kind):
    """With a codec file, or the N_small inside a sequential model file: N x 128 bytes a view, decoded to a
    viewable PNG; a payload that is not whole iterations and a reconstruction model are refused with a reason."""
    from PIL import Image

    from voxlink.cli import app

    if kind == "codec":
        path = _tiny_codec(tmp_path)[1]
    else:
        from voxlink.bench.accuracy import build, save_bench_model
        from voxlink.bench.profiles import get_profile

        model = build("sequential", get_profile("tiny"))
        path = tmp_path / "sequential.safetensors"
        save_bench_model(model, path, {"method": "sequential", "config": model.cfg.to_dict()})
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 120, 3), dtype=np.uint8)).save(tmp_path / "v.png")
    run = CliRunner().invoke
    r = run(app, ["codec", "compress", "--model", str(path), str(tmp_path / "v.png"), "-n", "2", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "v.vxc").stat().st_size == 2 * 128
    r = run(app, ["codec", "decompress", "--model", str(path), str(tmp_path / "c" / "v.vxc"), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "d" / "v.png").size == (128, 128)
    (tmp_path / "bad.vxc").write_bytes(b"\x01" * 77)
    r = run(app, ["codec", "decompress", "--model", str(path), str(tmp_path / "bad.vxc")])
    assert r.exit_code == 2 and "whole number" in r.output
    r = run(app, ["codec", "compress", "--model", "fusion-k1024", str(tmp_path / "v.png")])
    assert r.exit_code == 2 and "N_small" in r.output


def test_train_codec_on_patches_writes_a_model_and_resumes(small_dataset, tmp_path):
    """Patch training writes a loadable codec with its log; --resume goes on from the checkpoint's step."""
    from voxlink.models.rnn_compress import CompressionConfig
    from voxlink.train import TrainConfig
    from voxlink.train_codec import train_codec
    from voxlink.weights import load_model

    ccfg = dataclasses.replace(COMPRESSION_CONFIGS["tiny"], name="nsmall-t", max_iterations=3)
    tcfg = TrainConfig(data=str(small_dataset), steps=20, batch_size=4, patch_size=32, bank_views=24, lr=1e-3,
                       val_every=10, val_objects=2, threads=1)
    path = train_codec(ccfg, tcfg, tmp_path / "run")
    model, meta, _ = load_model(path)
    assert isinstance(model.cfg, CompressionConfig) and meta["steps"] == 20
    assert len(meta["val"]["psnr"]) == 3 and all(np.isfinite(meta["val"]["psnr"]))
    path = train_codec(ccfg, dataclasses.replace(tcfg, steps=30), tmp_path / "run", resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]  # validation records only at this size; no step trained twice
    assert load_model(path)[1]["steps"] == 30
    with pytest.raises(ValueError, match="patch_size"):
        train_codec(ccfg, dataclasses.replace(tcfg, patch_size=24), tmp_path / "bad")


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A run killed after its last checkpoint logged steps past it; resuming from the checkpoint drops
    those lines (the resumed run logs them again), and a torn last line, so each step is logged once."""
    from voxlink.train import open_train_log

    lines = [json.dumps({"step": k, "loss": 1.0 / k}) for k in range(10, 80, 10)]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 8')
    with open_train_log(tmp_path, 40) as f:
        f.write(json.dumps({"step": 50, "loss": 0.5}) + "\n")
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50]


def test_bench_codec_spends_equal_bytes(small_dataset, tmp_path):
    """N_small spends exactly N x 128 bytes a view; JPEG 2000 never more than its budget where it says
    reachable (headers counted, or not, per column); every file is written."""
    from voxlink.bench.codec import run

    _, path = _tiny_codec(tmp_path)
    text = run(tmp_path / "out", model=str(path), data=small_dataset, views_per_object=1, max_iterations=2)
    rows = json.loads((tmp_path / "out" / "codec.json").read_text())["rows"]
    assert {(r["method"], r["iterations"]) for r in rows} == {
        (m, n) for m in ("nsmall", "jpeg2000", "jpeg2000-no-header") for n in (1, 2)}
    for r in rows:
        if r["method"] == "nsmall":
            assert r["bytes"] == 128 * r["iterations"] and r["ratio"] == pytest.approx(384 / r["iterations"])
        elif r["reachable"]:
            key = "bytes" if r["method"] == "jpeg2000" else "bytes_no_header"
            assert r[key] <= r["budget_bytes"]
    assert not next(r for r in rows if r["method"] == "jpeg2000" and r["iterations"] == 1)["reachable"]  # floor ~140 B
    assert "| 2 | 256 | 192:1 |" in text
    for f in ("codec.csv", "codec.md", "codec.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_the_drone_and_the_ground_refuse_the_image_codec_with_a_reason(tmp_path):
    """An N_small file handed to the edge or the ground is named for what it is, not a shape error."""
    from ground.station import GroundConfig, GroundStation
    from voxlink.backends import probe
    from voxlink.modelfile import ModelFileError

    _, path = _tiny_codec(tmp_path)
    with pytest.raises(ModelFileError, match="image codec"):
        probe("torch", model=str(path))
    with pytest.raises(ModelFileError, match="image codec"):
        GroundStation(GroundConfig(model=str(path), out=str(tmp_path / "g"), bind=[]))
