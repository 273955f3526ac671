"""The paper's comparison: N_small, the sequential and direct models, JPEG 2000, ``voxlink bench``."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voxlink.bench.profiles import RATIOS, get_profile, implicit_bits
from voxlink.data.store import manifest_hash
from voxlink.models.joint import JointConfig, JointModel
from voxlink.models.rnn_compress import COMPRESSION_CONFIGS, CompressionConfig, RNNCompressor


# -- N_small ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["paper", "cpu", "quick", "tiny"])
def test_nsmall_bits_per_iteration_and_ratio(name):
    """m = (H/16)(W/16) 16 = 1024 bits per iteration at 128 x 128, and N iterations give 384/N : 1."""
    cfg = COMPRESSION_CONFIGS[name]
    assert cfg.bits_per_iteration == 1024
    model = RNNCompressor(cfg)
    for n in range(1, cfg.max_iterations + 1):
        assert model.compression_ratio(n) == pytest.approx(384.0 / n)


def test_nsmall_codes_are_exactly_n_m_bits_and_round_trip():
    torch.manual_seed(0)
    model = RNNCompressor(COMPRESSION_CONFIGS["tiny"]).eval()
    images = torch.rand(2, 3, 128, 128)
    for n in (1, 3):
        codes = model.encode(images, n)
        assert codes.shape == (2, n, 1024)
        assert set(codes.unique().tolist()) <= {-1.0, 1.0}
        payloads = model.compress(images, n)
        assert [len(p) for p in payloads] == [n * 128, n * 128]
        back = model.decompress(payloads)
        assert torch.equal(back, codes)
        # the ground decodes viewable images from the bytes alone, identical to the edge's reconstruction
        assert torch.allclose(model.decode(back), model(images, n)["recon"].clamp(0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="whole number"):
        model.decompress([b"\x00" * 100])
    with pytest.raises(ValueError, match="iterations"):
        model.encode(images, 9)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode(torch.rand(1, 3, 40, 40), 1)
    # fully convolutional: a 32 x 32 patch (what the codec trains on) codes to 16 bits per 16 x 16 block
    assert model.encode(torch.rand(1, 3, 32, 32), 2).shape == (1, 2, 64)
    with pytest.raises(ValueError, match="multiples of 4"):
        CompressionConfig(dec_channels=(30, 32, 16, 16))


def test_nsmall_additive_reconstruction_improves_with_iterations(small_dataset):
    """A small N_small trained for seconds (Eq. 14 trains every iteration): training lowers the L1 error
    at every iteration, and the last iteration's reconstruction is clearly better than the first's.

    Trained at a fixed N = 4 (Toderici's protocol), on 32 x 32 views so that it takes seconds. Whether
    each of the 4 iterations improves on the one before depends on the CPU's kernels at this budget (one
    thread gives the same trajectory on one machine, not across AVX2 and AVX-512), so that is checked on
    the shipped codec (:func:`test_shipped_codec_improves_with_every_iteration`).
    """
    import torch.nn.functional as F

    from voxlink.data.store import DatasetStore
    from voxlink.preprocess import to_input

    st = DatasetStore(small_dataset)
    imgs = torch.cat([to_input(st.read(i, "rgb")[:4]) for i in range(8)])
    imgs = F.interpolate(imgs, size=32, mode="area")  # 32 x 32 keeps this test to seconds
    torch.manual_seed(0)
    model = RNNCompressor(dataclasses.replace(COMPRESSION_CONFIGS["quick"], image_size=32, max_iterations=4))

    def errors():
        """L1 error of the reconstruction after each of the 4 iterations, over all the views."""
        model.eval()
        with torch.no_grad():
            recon = model(imgs, 4)["recon"]
        model.train()
        return [float((recon[:, t] - imgs).abs().mean()) for t in range(4)]
    before = errors()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same arithmetic, so the same trajectory, on any machine
    for _ in range(TRAIN_STEPS):
        idx = rng.choice(len(imgs), 8, replace=False)
        loss = model(imgs[idx], 4)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    l1 = errors()
    assert all(a < b for a, b in zip(l1, before)), (l1, before)
    assert l1[-1] < 0.9 * l1[0], l1


def test_shipped_codec_improves_with_every_iteration(small_dataset):
    """The shipped ``nsmall-k1024`` on rendered 128 x 128 views: each added iteration (128 bytes more a
    view) lowers the L1 error, and 8 iterations give at least 24 dB PSNR (issue 13's 96:1 target is at
    4 iterations on the real views; ``voxlink bench codec``)."""
    from voxlink.bench.accuracy import pretrained_codec
    from voxlink.data.store import DatasetStore
    from voxlink.preprocess import to_input

    st = DatasetStore(small_dataset)
    imgs = torch.cat([to_input(st.read(i, "rgb")[:2]) for i in range(0, 19, 3)])
    codec = pretrained_codec("nsmall-k1024")
    with torch.no_grad():
        recon = codec(imgs, 8)["recon"].clamp(0, 1)
    l1 = [float((recon[:, t] - imgs).abs().mean()) for t in range(8)]
    assert all(b < a for a, b in zip(l1, l1[1:])), l1
    mse = float(((recon[:, -1] - imgs) ** 2).mean())
    assert 10 * np.log10(1.0 / mse) >= 24.0, (l1, mse)


TRAIN_STEPS = 600


# -- sequential and direct --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sequential", "direct", "direct+code-encoder"])
def test_joint_models_split_edge_and_ground(kind):
    """The ground's half (codes -> grid and images) gives exactly the training forward's output."""
    prof = get_profile("tiny")
    torch.manual_seed(0)
    ce = (8, 8) if "code-encoder" in kind else ()
    kind = kind.split("+")[0]
    model = JointModel(JointConfig(kind, prof.compression, dataclasses.replace(prof.recon, binarize=False),
                                   code_encoder=ce)).eval()
    images = torch.rand(1, 3, 3, 128, 128)
    with torch.no_grad():
        out = model(images, 2)
        assert out["codes"].shape == (1, 3, 2, 1024)
        assert out["logits"].shape == (1, 2, 32, 32, 32)
        logits, decoded = model.reconstruct_from_codes(out["codes"])
    assert torch.allclose(logits, out["logits"], atol=1e-5)
    assert decoded.shape == (1, 3, 3, 128, 128) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    assert model.compression_ratio(2) == pytest.approx(192.0)
    loss = model.loss(model.train()(images, 1), torch.zeros(1, 32, 32, 32))
    loss.backward()  # Eq. 16 trains N_small and the 3D part jointly
    assert model.compressor.encoder.conv.weight.grad is not None
    assert model.recon.lstm.gate_h.weight.grad is not None
    if ce:
        assert model.code_encoder.net[0].weight.grad is not None


def test_code_encoder_is_for_the_direct_model_only():
    prof = get_profile("tiny")
    with pytest.raises(ValueError, match="code_encoder"):
        JointConfig("sequential", prof.compression, dataclasses.replace(prof.recon, binarize=False), code_encoder=(8, 8))
    with pytest.raises(ValueError, match="code_encoder"):
        JointConfig("direct", prof.compression, dataclasses.replace(prof.recon, binarize=False), code_encoder=(8,))
    with pytest.raises(ValueError, match="multiples of 8"):
        JointConfig("direct", prof.compression, dataclasses.replace(prof.recon, binarize=False), code_encoder=(8, 12))


def test_implicit_bits_for_the_papers_ratios():
    assert [implicit_bits(r) for r in RATIOS] == [8192, 4096, 2048, 1024, 819, 393]


# -- JPEG 2000 --------------------------------------------------------------------------------------
def _view(small_dataset) -> np.ndarray:
    from voxlink.data.store import DatasetStore

    return DatasetStore(small_dataset).read(0, "rgb")[0]


def test_jpeg2000_meets_each_reachable_ratio_and_flags_the_rest(small_dataset, tmp_path):
    import glymur

    from voxlink.jpeg2000 import encode_at_ratio, main_header_length

    img = _view(small_dataset)
    for target in (12, 48, 96, 192):
        f = tmp_path / f"r{target}.j2k"
        r = encode_at_ratio(img, target, keep=f)
        assert r.reachable
        assert r.bytes == f.stat().st_size  # the reported bytes are the codestream file's size
        assert r.bytes <= img.size / target  # never larger than the target allows
        assert r.ratio == pytest.approx(img.size / r.bytes)
        assert r.bytes_no_header == r.bytes - main_header_length(f.read_bytes())
        decoded = glymur.Jp2k(str(f))[:]
        assert np.array_equal(decoded, r.image)
    hi = encode_at_ratio(img, 1000, keep=tmp_path / "r1000.j2k")
    assert not hi.reachable  # OpenJPEG's floor is about 140 bytes at 128 x 128 (its comment left out)
    assert hi.ratio < 1000 and hi.bytes == (tmp_path / "r1000.j2k").stat().st_size
    # quality falls with the ratio
    err = [np.abs(encode_at_ratio(img, t).image.astype(float) - img).mean() for t in (12, 96)]
    assert err[0] < err[1]


def test_jpeg2000_is_not_charged_for_openjpegs_comment(small_dataset):
    """OpenJPEG writes a comment ("Created by OpenJPEG version ...", 39 bytes) that no decoder needs: the
    baseline's codestreams leave it out and decode to the same image, so JPEG 2000 gets every byte of its
    budget for the image (30 % of it at 384:1 otherwise)."""
    import glymur

    from voxlink.jpeg2000 import encode_at_ratio, strip_comments

    img = _view(small_dataset)
    r = encode_at_ratio(img, 96)
    assert b"\xff\x64" not in r.codestream[:r.bytes - r.bytes_no_header]
    assert r.bytes >= 0.95 * img.size / 96, "the bytes the comment left free are spent on the image"
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.j2k")
        glymur.Jp2k(path, data=img, cratios=[50.0], irreversible=True)
        raw = open(path, "rb").read()
        assert b"\xff\x64" in raw  # OpenJPEG's own codestream has it
        stripped = strip_comments(raw)
        assert len(raw) - len(stripped) > 20
        open(path, "wb").write(stripped)
        with_comment = os.path.join(d, "b.j2k")
        open(with_comment, "wb").write(raw)
        assert np.array_equal(glymur.Jp2k(path)[:], glymur.Jp2k(with_comment)[:])


def test_jpeg2000_rejects_bad_input():
    from voxlink.jpeg2000 import Jpeg2000Error, encode, main_header_length

    with pytest.raises(ValueError, match="uint8"):
        encode(np.zeros((8, 8), np.float32), 10)
    with pytest.raises(ValueError, match="ratio"):
        encode(np.zeros((16, 16, 3), np.uint8), 0.5)
    with pytest.raises(Jpeg2000Error, match="SOC"):
        main_header_length(b"not a codestream")


# -- voxlink bench ----------------------------------------------------------------------------------
def test_bench_accuracy_tiny_writes_every_method_and_ratio(small_dataset, tmp_path):
    from voxlink.cli import app

    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(small_dataset), "--profile", "tiny",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    for f in ("accuracy.csv", "accuracy.png", "accuracy.md"):
        assert (out / f).stat().st_size > 0
    rows = list(csv.DictReader((out / "accuracy.csv").open()))
    keys = [(r["method"], r["target_ratio"]) for r in rows]
    for m in ("implicit", "sequential", "direct", "jpeg2000"):
        assert [float(t) for mm, t in keys if mm == m] == list(RATIOS)
    assert [m for m, _ in keys].count("uncompressed") == 1 and [m for m, _ in keys].count("mean-grid") == 1
    assert [m for m, _ in keys].count("pose-aware") == 1
    assert len(rows) == 4 * len(RATIOS) + 3
    manifest = manifest_hash(small_dataset)
    for r in rows:
        assert r["data_manifest"] == manifest and r["git_commit"]
        if r["method"] != "mean-grid":
            assert Path(r["model_file"]).is_file()
        if r["miou"]:
            assert 0.0 <= float(r["miou"]) <= 1.0
    by = {(r["method"], float(r["target_ratio"]) if r["target_ratio"] else None): r for r in rows}
    # N_small cannot go past 384:1; OpenJPEG cannot reach 384:1 at 128 x 128
    assert by[("sequential", 480.0)]["reachable"] == "False" and by[("sequential", 480.0)]["miou"] == ""
    assert by[("sequential", 384.0)]["iterations"] == "1" and by[("sequential", 48.0)]["iterations"] == "8"
    assert by[("jpeg2000", 1000.0)]["reachable"] == "False" and float(by[("jpeg2000", 1000.0)]["ratio"]) < 1000
    assert by[("jpeg2000", 48.0)]["reachable"] == "True"
    assert int(by[("implicit", 1000.0)]["code_bits"]) == 393
    assert float(by[("uncompressed", 12.0)]["ratio"]) == pytest.approx(12.0)
    assert "not reachable" in (out / "accuracy.md").read_text()
    # the sequential and direct models can be streamed: voxlink model files of their families
    from voxlink.modelfile import require_reconstruction_model

    for m in ("sequential", "direct"):
        info = require_reconstruction_model(out / "streaming" / f"{m}-tiny.safetensors")
        assert info.family == m and info.code_bits == 1024 and info.max_iterations == 8
    # a second run reuses the trained models
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    res = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(small_dataset), "--profile", "tiny",
                                   "--out", str(out), "--methods", "implicit,direct"])
    assert res.exit_code == 0, res.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes


def test_bench_accuracy_steps_trains_for_that_budget_and_names_it(small_dataset, tmp_path):
    """``--steps`` trains every model for that many steps, says so in the profile's name and record, and
    never reuses a model trained for another count."""
    import json

    from voxlink.cli import app

    args = ["bench", "accuracy", "--data", str(small_dataset), "--profile", "tiny", "--out", str(tmp_path),
            "--methods", "direct,mean-grid"]
    res = CliRunner().invoke(app, args + ["--steps", "3"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "accuracy.json").read_text())["info"]
    assert info["profile"]["steps"] == 3 and info["profile"]["name"] == "tiny-3"
    assert "tiny-3 profile" in (tmp_path / "accuracy.md").read_text()
    model = tmp_path / "models" / "direct.safetensors"
    before = model.stat().st_mtime_ns
    res = CliRunner().invoke(app, args)  # the profile's own 2 steps: the 3-step model is not reused
    assert res.exit_code == 0, res.output
    assert model.stat().st_mtime_ns != before
    assert json.loads((tmp_path / "accuracy.json").read_text())["info"]["profile"]["steps"] == get_profile("tiny").steps
    res = CliRunner().invoke(app, args + ["--steps", "0"])
    assert res.exit_code == 2


def test_bench_accuracy_rejects_unknown_profile_and_method(small_dataset, tmp_path):
    from voxlink.cli import app

    res = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(small_dataset), "--profile", "huge",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown profile" in res.output
    res = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(small_dataset), "--profile", "tiny",
                                   "--out", str(tmp_path), "--methods", "implicit,magic"])
    assert res.exit_code == 2 and "unknown methods" in res.output


def test_bench_speed_times_every_block_and_says_why_a_backend_cannot_run(tmp_path):
    from voxlink.bench.speed import BLOCK_NAMES, run

    rows = run(tmp_path, size="tiny", min_seconds=0.0, min_reps=2)
    backends = {r["backend"] for r in rows}
    assert {"torch-cpu", "onnxruntime-cpu", "tensorrt"} <= backends
    assert {r["block"] for r in rows} == set(BLOCK_NAMES)
    for r in rows:
        assert (r["median_ms"] != "") != bool(r["note"]), r  # a time, or the reason there is none
    cpu = {r["block"]: r for r in rows if r["backend"] == "torch-cpu"}
    assert all(r["median_ms"] > 0 for r in cpu.values())
    assert cpu["sequential"]["ratio_to_sequential"] == 1.0
    assert len(list(csv.DictReader((tmp_path / "speed.csv").open()))) == len(rows)
    assert "sequential model" in (tmp_path / "speed.md").read_text()
    if not torch.cuda.is_available():
        assert next(r for r in rows if r["backend"] == "torch-cuda")["note"] == "no CUDA GPU"


# -- the model contract -----------------------------------------------------------------------------
def test_every_3d_family_reconstructs_from_the_bytes_it_compresses_to():
    """The registry's 3D families keep one contract: compress (views -> one bytes per view) and
    reconstruct (those bytes -> the grid), the same grid as the forward pass over the same views."""
    from voxlink.jpeg2000 import Jpeg2000Baseline
    from voxlink.models import registry
    from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
    from voxlink import camera
    from voxlink.models import ImplicitModel, get_config
    from voxlink.models.joint import Reconstructor3D

    assert set(registry.FAMILIES) == {"implicit", "fusion", "codec", "sequential", "direct", "jpeg2000"}
    with pytest.raises(ValueError, match="unknown model family"):
        registry.family("mpeg")
    prof = get_profile("tiny")
    torch.manual_seed(0)
    images = torch.rand(3, 3, 128, 128)
    K = torch.tensor(camera.intrinsics(), dtype=torch.float32).expand(3, 3, 3)
    pose = torch.tensor(np.stack(camera.orbit_poses(3, np.random.default_rng(0))), dtype=torch.float32)
    for name in ("implicit", "fusion", "sequential", "direct", "jpeg2000"):
        fam = registry.family(name)
        assert fam.reconstructs and fam.description
        if name == "implicit":
            m = ImplicitModel(get_config("tiny")).eval()
            payloads, ref = m.compress(images), torch.softmax(m(images[None])["logits"], 1)[:, 1]
        elif name == "fusion":
            m = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"])).eval()
            m.inference_precision = "float32"  # as the forward pass (bfloat16 inference: tests/test_fusion.py)
            payloads = m.compress(images)
            ref = torch.softmax(m(images[None], K[None], pose[None])["logits"], 1)[:, 1]
        elif name in ("sequential", "direct"):
            m = JointModel(JointConfig(name, prof.compression, dataclasses.replace(prof.recon, binarize=False))).eval()
            payloads = m.compress(images, 2)
            assert all(len(p) == 2 * prof.compression.bits_per_iteration // 8 for p in payloads)
            ref = torch.softmax(m(images[None], 2)["logits"], 1)[:, 1]
        else:
            recon = Reconstructor3D(dataclasses.replace(prof.recon, binarize=False)).eval()
            m = Jpeg2000Baseline(recon, ratio=48.0)
            payloads = m.compress(images)
            assert all(len(p) <= 128 * 128 * 3 / 48 for p in payloads)
            with torch.no_grad():
                ref = torch.softmax(recon(m.decompress(payloads)[None]), 1)[:, 1]
        with torch.no_grad():
            got = m.reconstruct(payloads, K=K, pose=pose)
        assert got.shape == (1, 32, 32, 32) and torch.allclose(got, ref.detach(), atol=1e-5), name


def test_sequential_and_direct_start_from_the_shipped_codec(small_dataset):
    """Started from ``nsmall-k1024``: its widths and weights, frozen through stage 1 (the 3D part learns
    on its cached output), refined jointly after; the cache's images are the codec's own decoding."""
    import dataclasses

    from voxlink.bench.accuracy import build, codec_cache, pretrained_codec, train_method
    from voxlink.data.dataset import MultiViewDataset

    codec = pretrained_codec("nsmall-k1024")
    prof = dataclasses.replace(get_profile("tiny"), codec="nsmall-k1024", codec_pool=2, steps=2, joint_steps=1,
                               joint_batch=1, max_views=2, comp_lr=1e-4)
    ds = MultiViewDataset(small_dataset, "train", 2, train=False)
    cache = codec_cache(codec, ds, 2, progress=False, bfloat16=False)
    assert cache["codes"].shape == (2, 2, 8, 1024) and cache["images"].shape == (2, 2, 8, 3, 128, 128)
    with torch.no_grad():
        img = codec.decode(cache["codes"][0, :, :3])[:, -1]  # the ground's decoding of 3 iterations
    assert ((img * 255).round() - cache["images"][0, :, 2].float()).abs().max() <= 1
    # in bfloat16 (``codec_cache_bf16``): the same images to within a few grey levels
    fast = codec_cache(codec, ds, 2, progress=False, bfloat16=True)
    assert fast["codes"].dtype == torch.float32 and fast["images"].dtype == torch.uint8
    err = (fast["images"].float() - cache["images"].float()).abs()
    assert err.mean() < 1.0, float(err.mean())
    for method in ("sequential", "direct"):
        model = build(method, prof)
        assert model.cfg.compression == codec.cfg
        before = {k: v.clone() for k, v in model.compressor.state_dict().items()}
        assert all(torch.equal(before[k], v) for k, v in codec.state_dict().items())
        secs, losses = train_method(method, model, prof, small_dataset, progress=False)
        assert set(losses) >= {"loss_3d", "joint_loss_3d", "joint_loss_comp"}
        assert all(np.isfinite(x) for x in losses.values())
        # the joint stage (Eq. 16) moved N_small, a little
        moved = [float((v - before[k]).abs().max()) for k, v in model.compressor.state_dict().items()
                 if v.is_floating_point()]
        assert 0 < max(moved) < 0.05


def _stage_one_view_sequences(small_dataset, monkeypatch, shuffle: bool) -> list[tuple[int, ...]]:
    """Train a tiny sequential model from the codec (2 pool objects x 3 cached views, 1..2 views a step)
    and return, for every object of every stage-one batch, which cached views it held, in order; every
    input must be one of the cached views."""
    import dataclasses

    from voxlink.bench import accuracy
    from voxlink.bench.accuracy import build, train_method

    accuracy._CODEC_CACHES.clear()
    prof = dataclasses.replace(get_profile("tiny"), codec="nsmall-k1024", codec_pool=2, codec_views=3, steps=24,
                               joint_steps=0, batch_size=2, max_views=2, train_iterations=(1,),
                               codec_shuffle_views=shuffle)
    model = build("sequential", prof)
    seen: list[torch.Tensor] = []
    orig = type(model.recon).forward
    monkeypatch.setattr(type(model.recon), "forward",
                        lambda self, x, *a, **k: (seen.append(x.detach().clone()), orig(self, x, *a, **k))[1])
    train_method("sequential", model, prof, small_dataset, progress=False)
    (cache,) = accuracy._CODEC_CACHES.values()
    assert cache["images"].shape[:2] == (2, 3)
    ref = cache["images"][:, :, 0].float() / 255.0  # [objects, views, 3, H, W] after one iteration
    sequences = []
    for x in seen:
        for obj in x:  # [v, 3, H, W]
            ids = []
            for view in obj:
                d = (ref - view).abs().flatten(2).amax(-1)  # [objects, views]
                assert float(d.min()) == 0.0  # every input is a cached view
                ids.append(int(d.flatten().argmin()) % 3)
            sequences.append(tuple(ids))
    return sequences


def test_stage_one_draws_any_cached_views_in_any_order(small_dataset, monkeypatch):
    """With ``codec_views`` = 3, ``max_views`` = 2 and ``codec_shuffle_views``, stage one's batches hold
    views 0, 1 and 2 of the cached objects (not only the first ones), in both orders."""
    sequences = _stage_one_view_sequences(small_dataset, monkeypatch, shuffle=True)
    assert {i for s in sequences for i in s} == {0, 1, 2}
    assert any(len(s) == 2 and s[0] > s[1] for s in sequences), sequences


def test_stage_one_keeps_the_cached_view_order_by_default(small_dataset, monkeypatch):
    """The quick profile's default (its published runs): stage one reads an object's first v cached
    views, in the cached order."""
    assert get_profile("quick").codec_shuffle_views is False and get_profile("quick").codec_pool == 480
    sequences = _stage_one_view_sequences(small_dataset, monkeypatch, shuffle=False)
    assert sequences and all(s == tuple(range(len(s))) for s in sequences), sequences


def test_joint_stage_can_keep_batchnorm_frozen(small_dataset, monkeypatch):
    """With ``joint_freeze_bn`` the sequential model's E^3D BatchNorm runs on its running statistics
    (eval mode) through the joint stage, and on batch statistics otherwise; stage 1 trains it either way."""
    import dataclasses

    import voxlink.train as vt
    from voxlink.bench.accuracy import build, train_method

    for freeze in (False, True):
        prof = dataclasses.replace(get_profile("tiny"), codec="nsmall-k1024", codec_pool=2, steps=2, joint_steps=2,
                                   joint_batch=1, max_views=2, comp_lr=1e-4, joint_freeze_bn=freeze)
        model = build("sequential", prof)
        modes: list = []  # True / False: a BatchNorm call in train / eval mode; "loop": a training stage starts
        bns = vt.batchnorm_layers(model.recon)
        assert bns
        for bn in bns:
            bn.register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
        orig = vt.run_loop
        monkeypatch.setattr(vt, "run_loop", lambda *a, **k: (modes.append("loop"), orig(*a, **k))[1])
        train_method("sequential", model, prof, small_dataset, progress=False)
        monkeypatch.setattr(vt, "run_loop", orig)
        starts = [i for i, m in enumerate(modes) if m == "loop"]
        assert len(starts) == 2  # stage 1, then the joint stage
        assert all(m is True for m in modes[starts[0] + 1:starts[1]])
        assert modes[starts[1] + 1] is (not freeze), (freeze, modes[starts[1]:starts[1] + 4])


def test_draw_iterations_keeps_to_the_profile_set():
    """A profile's ``train_iterations`` is the set of N a training step can draw (each of them drawn),
    capped at the codec's N_max; None draws every N in 1..N_max; a set with no N in range is an error."""
    import dataclasses

    import numpy as np

    from voxlink.bench.accuracy import _draw_iterations

    rng = np.random.default_rng(0)
    quick = get_profile("quick")
    assert quick.train_iterations == (1, 2, 4, 8)
    assert {_draw_iterations(rng, quick, 8) for _ in range(400)} == {1, 2, 4, 8}
    assert {_draw_iterations(rng, quick, 3) for _ in range(200)} == {1, 2}
    free = dataclasses.replace(quick, train_iterations=None)
    assert {_draw_iterations(rng, free, 8) for _ in range(800)} == set(range(1, 9))
    with pytest.raises(ValueError, match="train_iterations"):
        _draw_iterations(rng, dataclasses.replace(quick, train_iterations=(16,)), 8)


def test_sequential_training_runs_n_small_only_at_the_profile_iterations(small_dataset):
    """Past the codec cache (made once at N_max), every N_small call of the sequential model's training
    (joint stage, BatchNorm recalibration) runs one of the profile's ``train_iterations``."""
    import dataclasses

    from voxlink.bench import accuracy
    from voxlink.bench.accuracy import build, train_method

    accuracy._CODEC_CACHES.clear()  # the cache is made here, not reused from another test in this process
    prof = dataclasses.replace(get_profile("tiny"), codec="nsmall-k1024", codec_pool=2, steps=2, joint_steps=6,
                               joint_batch=1, max_views=2, comp_lr=1e-4, joint_freeze_bn=True,
                               train_iterations=(2, 3))
    model = build("sequential", prof)
    calls: list[int] = []
    model.compressor.register_forward_hook(lambda mod, args, out: calls.append(int(args[1])))
    train_method("sequential", model, prof, small_dataset, progress=False)
    nmax = model.cfg.compression.max_iterations
    assert calls[0] == nmax  # the cache of decoded views, all rates at once
    later = calls[1:]
    assert len(later) >= 6 and set(later) <= {2, 3}, later


def _fake_run(folder: Path, seed: int, seq: list[float], jp: list[float], mg: list[float]) -> None:
    """A seed's accuracy.json with per-object IoUs of the sequential model and JPEG 2000 at 96:1 and the
    mean grid (three objects)."""
    import json

    def row(method, target, x, reachable=True):
        return {"method": method, "target_ratio": target, "reachable": reachable, "miou": round(float(np.mean(x)), 4)}
    folder.mkdir(parents=True)
    info = {"data_manifest": "abc", "objects": 3, "git_commit": "0123456789abcdef", "seconds": 60.0,
            "profile": {"name": "quick"}}
    rows = [row("sequential", 96.0, seq), row("jpeg2000", 96.0, jp), row("mean-grid", "", mg)]
    per = {"sequential@96.0": seq, "jpeg2000@96.0": jp, "mean-grid@": mg}
    (folder / "accuracy.json").write_text(json.dumps({"info": info, "rows": rows, "per_object": per}))


def test_seed_summary_pairs_gaps_within_each_seed(tmp_path):
    """Over seeds: mIoU mean and spread per method and ratio, and the gaps to the mean grid and to
    JPEG 2000 as means of per-object differences within a seed, with their smallest value over seeds."""
    from voxlink.bench import seeds as bs

    _fake_run(bs.seed_folder(tmp_path, 0), 0, [0.5, 0.3, 0.4], [0.4, 0.3, 0.2], [0.2, 0.2, 0.2])
    _fake_run(bs.seed_folder(tmp_path, 3), 3, [0.3, 0.3, 0.3], [0.4, 0.4, 0.4], [0.2, 0.1, 0.3])
    s = bs.write(tmp_path, [0, 3])
    seq = next(r for r in s["rows"] if r["method"] == "sequential")
    assert seq["miou"] == [0.4, 0.3] and seq["mean"] == pytest.approx(0.35) and seq["min"] == 0.3
    assert seq["vs_mean_grid"]["per_seed"] == [0.2, 0.1] and seq["vs_mean_grid"]["min"] == pytest.approx(0.1)
    assert seq["vs_jpeg2000"]["per_seed"] == [0.1, -0.1] and seq["vs_jpeg2000"]["mean"] == pytest.approx(0.0)
    md = (tmp_path / "accuracy-seeds.md").read_text()
    assert "+0.000 (min -0.100)" in md and "+0.150 (min +0.100)" in md
    with pytest.raises(FileNotFoundError, match="seed 5"):
        bs.summarize(tmp_path, [0, 5])


def test_bench_accuracy_runs_each_seed_and_sums_them_up(small_dataset, tmp_path):
    from voxlink.cli import app

    res = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(small_dataset), "--profile", "tiny",
                                   "--out", str(tmp_path), "--methods", "direct,mean-grid", "--seeds", "0,1"])
    assert res.exit_code == 0, res.output
    for s in (0, 1):
        assert (tmp_path / f"seed-{s}" / "accuracy.csv").is_file()
        assert (tmp_path / f"seed-{s}" / "models" / "direct.safetensors").is_file()
    assert "over 2 seeds" in (tmp_path / "accuracy-seeds.md").read_text()
    res = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(small_dataset), "--profile", "tiny",
                                   "--out", str(tmp_path), "--seeds", "0,x"])
    assert res.exit_code == 2 and "--seeds" in res.output


def test_bench_fusion_times_the_ground_per_view_for_each_model_and_refiner_precision():
    """``voxlink bench fusion``'s ground rows: one per model, a pose-aware model's timed with its refiner
    as the ground runs it and, where that is bfloat16, in float32 too (labelled so); the total is the sum
    of the view decode, the fusing and the grid decode."""
    from voxlink.bench.fusion import ground_decode_times
    from voxlink.models.fusion import native_bf16

    rows = ground_decode_times(["implicit-k1024", "fusion-k1024"], views=2, repeats=1)
    fusion = [r for r in rows if r["model"] == "fusion-k1024"]
    assert [r["model"] for r in rows][0] == "implicit-k1024" and rows[0]["precision"] == "float32"
    assert [r["precision"] for r in fusion] == (["bfloat16", "float32"] if native_bf16() else ["float32"])
    for r in rows:
        assert min(r["depth_ms"], r["fuse_ms"], r["occupancy_ms"]) > 0
        assert r["total_ms"] == pytest.approx(r["depth_ms"] + r["fuse_ms"] + r["occupancy_ms"], abs=0.02)


def test_a_bench_model_trained_with_another_learning_rate_is_not_reused(tmp_path):
    """The benchmark reuses a method's trained model only when it was trained the same way: a profile
    whose learning rate, views or JPEG 2000 training ratios changed retrains (files from before these
    were recorded, when they never changed, are still reused)."""
    from voxlink.bench.accuracy import load_bench_model, save_bench_model

    m = torch.nn.Linear(2, 2)
    path = tmp_path / "m.safetensors"
    save_bench_model(m, path, {"method": "implicit", "lr": 5e-4})
    assert load_bench_model(path, m, {"method": "implicit"}, {"lr": 5e-4}) is not None
    assert load_bench_model(path, m, {"method": "implicit"}, {"lr": 1e-3}) is None
    save_bench_model(m, path, {"method": "implicit"})  # an earlier file: lr not recorded
    assert load_bench_model(path, m, {"method": "implicit"}, {"lr": 1e-3}) is not None
    assert load_bench_model(path, m, {"method": "implicit", "jpeg2000_codestream": "without-comment"}) is None


@pytest.mark.skipif("fusion-k1024" not in __import__("voxlink.weights", fromlist=["x"]).shipped_models(),
                    reason="no shipped fusion-k1024 weights")
def test_bench_fusion_times_the_depth_maps_from_the_fused_grid(small_dataset):
    """``voxlink bench fusion --data``: the depth maps from the fused grid timed on real grids, rays on the
    decoded silhouettes (as the ground makes them) and every ray; a model without them is refused."""
    from voxlink.bench.fusion import fused_depth_times

    r = fused_depth_times(small_dataset, objects=1, views=2, repeats=1)
    assert r["objects"] == 1 and r["views"] == 2 and r["ms_per_view"] > 0 and r["ms_per_view_all_rays"] > 0
    with pytest.raises(ValueError, match="not a pose-aware"):
        fused_depth_times(small_dataset, model="implicit-k1024", objects=1, views=2, repeats=1)
