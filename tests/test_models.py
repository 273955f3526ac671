"""Models: binarizer, compression ratio, codes, training wiring, shipped weights and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from voxlink.models import ImplicitModel, binarize, compression_ratio, get_config, pack_bits, unpack_bits
from voxlink.models.implicit import CodeError, iou, occupancy_loss
from voxlink.weights import ModelFileError, load_model, save_model


def test_binarizer_outputs_plus_minus_one_with_straight_through_gradient():
    x = torch.linspace(-0.999, 0.999, 1001, requires_grad=True)
    for stochastic in (True, False):
        b = binarize(x, stochastic)
        assert set(b.detach().unique().tolist()) <= {-1.0, 1.0}
        (g,) = torch.autograd.grad((b * torch.arange(1001.0)).sum(), x)
        assert torch.equal(g, torch.arange(1001.0)), "gradient passes straight through (identity)"


def test_binarizer_is_stochastic_in_training_and_sign_at_inference():
    x = torch.full((20000,), 0.5)
    p_plus = (binarize(x, True) > 0).float().mean().item()
    assert abs(p_plus - 0.75) < 0.02, "P(+1) = (1 + x) / 2 (Eq. 13)"
    x = torch.randn(1000).clamp(-1, 1)
    x[0] = 0.0
    a, b = binarize(x, False), binarize(x, False)
    assert torch.equal(a, b) and a[0] == 1.0 and torch.equal(a, torch.where(x >= 0, 1.0, -1.0))


def test_compression_ratio_eq12_and_code_length():
    assert compression_ratio(1024) == 384.0
    assert compression_ratio(819) == pytest.approx(480.1, abs=0.1)
    assert compression_ratio(1024, iterations=4) == 96.0
    cfg = dataclasses.replace(get_config("tiny"), code_bits=72)
    m = ImplicitModel(cfg).eval()
    payloads = m.compress(torch.rand(3, 3, 128, 128))
    assert [len(p) for p in payloads] == [9, 9, 9], "K = 72 bits is exactly 9 bytes per view"
    assert m.decompress(payloads).shape == (3, 72)
    assert m.compression_ratio == pytest.approx(393216 / 72)


def test_pack_unpack_round_trip():
    bits = torch.where(torch.rand(1024) > 0.5, 1.0, -1.0)
    data = pack_bits(bits)
    assert len(data) == 128
    assert torch.equal(unpack_bits(data, 1024), bits)


def test_edge_and_ground_agree_bit_for_bit():
    m = ImplicitModel(get_config("tiny")).eval()
    x = torch.rand(4, 3, 128, 128)
    a = m.compress(x)
    b = m.compress(x.clone())
    assert a == b
    assert torch.equal(m.decompress(a), m.encode(x))


def test_tiny_model_overfits_eight_objects(small_dataset):
    """The training loop and the loss are wired right: 8 objects are memorised to IoU > 0.9."""
    from voxlink.data.dataset import MultiViewDataset

    torch.manual_seed(0)
    ds = MultiViewDataset(small_dataset, "all", 3, train=False)
    items = [ds[i] for i in range(8)]
    x = torch.stack([it["images"] for it in items])
    y = torch.stack([it["occupancy"] for it in items])
    m = ImplicitModel(dataclasses.replace(get_config("tiny"), hidden=16, dec_channels=(16, 16, 16, 8)))
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    best = 0.0
    for step in range(600):
        loss = occupancy_loss(m(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            m.eval()
            with torch.no_grad():
                best = max(best, float(iou(torch.softmax(m(x)["logits"], 1)[:, 1], y).mean()))
            m.train()
            if best > 0.9:
                break
    assert best > 0.9, f"could not overfit 8 objects (best IoU {best:.3f})"


@pytest.mark.parametrize("family", ["implicit", "fusion"])
def test_one_scoring_loop_gives_what_a_forward_pass_gives(small_dataset, family):
    """Training validation and ``voxlink eval`` share one scoring loop (views fused one at a time): its
    IoU after 5 views is the IoU of the model's forward pass over the same 5 views, for both families,
    and validation leaves the model in training mode."""
    from voxlink.data.dataset import MultiViewDataset
    from voxlink.evaluate import evaluate_dataset
    from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
    from voxlink.train import validate
    from voxlink.train_fusion import validate_fusion

    torch.manual_seed(0)
    if family == "implicit":
        m = ImplicitModel(get_config("tiny"))
        ds = MultiViewDataset(small_dataset, "all", 5, train=False)
    else:
        m = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"]))
        ds = MultiViewDataset(small_dataset, "all", 5, train=False, frame="object", with_depth=True, heading="random")
    sc = evaluate_dataset(m, ds, 4, views=5, geometry=family == "fusion")
    with torch.no_grad():
        for i in range(4):
            it = ds[i]
            if family == "implicit":
                logits = m(it["images"][None])["logits"]
            else:
                logits = m(it["images"][None], it["K"].expand(5, 3, 3)[None], it["pose_grid"][None])["logits"]
            assert float(iou(torch.softmax(logits, 1)[:, 1], it["occupancy"][None])[0]) == pytest.approx(sc["iou"][i, 4], abs=1e-4)
    m.train()
    r = validate(m, ds, 4, "cpu") if family == "implicit" else validate_fusion(m, ds, 4)
    assert m.training and r["val_miou5"] == pytest.approx(sc["iou"][:, 4].mean(), abs=1e-6)
    if family == "fusion":
        assert 0.0 <= r["val_silhouette_iou"] <= 1.0 and r["val_decoded_hull_miou5"] == pytest.approx(sc["hull_decoded"][:, 4].mean())
    else:
        assert 1 <= r["val_distinct_predictions"] <= 4 and 0.0 <= r["val_bits_varying"] <= 1.0


def test_implicit_training_validates_checkpoints_and_resumes(small_dataset, tmp_path):
    """``voxlink train`` of an implicit model through the shared loop: it validates, writes a loadable
    model file, and a resumed run goes on from its checkpoint, logging each step once."""
    import json

    from voxlink.train import TrainConfig, train

    mcfg = dataclasses.replace(get_config("tiny"), name="tiny-run")
    tcfg = TrainConfig(data=str(small_dataset), steps=6, batch_size=2, max_views=2, val_every=3, val_objects=2,
                       threads=1)
    path = train(mcfg, tcfg, tmp_path / "run", progress=False)
    model, meta, extra = load_model(path)
    assert meta["steps"] == 6 and "mean_grid" in extra and "loss3d" in meta["final"]
    train(mcfg, dataclasses.replace(tcfg, steps=9), tmp_path / "run", resume=True, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [3, 6, 9] and all("val_miou5" in r for r in recs)
    assert load_model(tmp_path / "run" / "model.safetensors")[1]["steps"] == 9


def test_bad_inputs_give_clear_errors(tmp_path):
    m = ImplicitModel(get_config("tiny")).eval()
    with pytest.raises(ValueError, match="128"):
        m.encode(torch.rand(1, 3, 96, 96))
    with pytest.raises(CodeError, match="64-bit"):
        m.step(torch.ones(1, 65), m.init_state(1))
    with pytest.raises(CodeError):
        m.decompress([b"\x00" * 7])
    path = save_model(m, tmp_path / "tiny.safetensors")
    loaded, _, _ = load_model(path, code_bits=64)
    assert loaded.fingerprint() == m.fingerprint()
    with pytest.raises(ModelFileError, match="makes 64-bit codes"):
        load_model(path, code_bits=1024)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(bad)
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "nope.safetensors")


def test_paper_config_is_full_size():
    cfg = get_config("paper")
    assert cfg.enc_channels == (96, 128, 256, 256, 256, 256) and cfg.code_bits == 1024 and cfg.hidden == 128
    cpu = get_config("cpu")
    assert len(cpu.enc_channels) == len(cfg.enc_channels) and cpu.grid == cfg.grid, "same structure, scaled widths"


@pytest.mark.parametrize("dim", [2, 3])
def test_folded_upsample_conv_is_upsample_then_conv(dim):
    """The decoders' "2x nearest upsample + 3x3(x3) conv" runs as one stride-2 transposed convolution
    with a folded kernel: the same outputs and gradients as the two steps, from the same parameters
    (so weights trained either way load into the other)."""
    from voxlink.models.decoder import NearestUpConv2d, NearestUpConv3d, fold_nearest_upsample

    torch.manual_seed(dim)
    fast = (NearestUpConv2d if dim == 2 else NearestUpConv3d)(6, 5)
    conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(6, 5, 3, padding=1)
    conv.load_state_dict(fast.state_dict())
    x = torch.randn((2, 6) + (7,) * dim, requires_grad=True)
    y_fast = fast(x)
    y_ref = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    assert y_fast.shape == y_ref.shape == (2, 5) + (14,) * dim
    assert torch.allclose(y_fast, y_ref, atol=1e-5)
    g = torch.randn_like(y_ref)
    for a, b in zip(torch.autograd.grad(y_fast, [x, fast.weight], g), torch.autograd.grad(y_ref, [x, conv.weight], g)):
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="3x3"):
        fold_nearest_upsample(torch.zeros(5, 6, 5, 5))


def test_unfolded_upsample_conv_is_the_same_function():
    """``folded = False`` (what ``voxlink bench fusion`` times as the rows before the change) computes
    the two steps and gives the folded form's outputs."""
    from voxlink.models.decoder import NearestUpConv2d, NearestUpConv3d

    for cls, shape in ((NearestUpConv2d, (2, 4, 5, 6)), (NearestUpConv3d, (2, 4, 3, 4, 5))):
        m = cls(4, 3)
        x = torch.randn(shape)
        a = m(x)
        m.folded = False
        assert torch.allclose(m(x), a, atol=1e-5)
