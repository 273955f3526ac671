"""The shipped default model ("embedded default"): loads by name and reconstructs held-out objects."""

from __future__ import annotations

import pytest
import torch

from voxlink.weights import WEIGHTS_DIR, load_model, shipped_models

# voxlink/weights/IMPLICIT_MODEL_CARD.md reports mIoU@5 = 0.425 on the procedural test split (244 objects)
# for implicit-k1024, against 0.190 for the mean-grid baseline (IoU spread about 0.2 per object);
# this test re-measures it on 32 held-out procedural objects (a seed the training data never used;
# 0.455 when the card was written) and checks it stays above this bound: the card's figure less
# three standard errors of a 32-object mean.
MIOU5_BOUND = 0.32
# voxlink/weights/MODEL_CARD.md reported mIoU@5 = 0.498 for fusion-k1024 on the procedural test split
# when this bound was set (131 objects, random headings; IoU spread about 0.2 per object; 0.561 since
# stage 4); the test re-measures it on 24 held-out procedural objects and checks it stays above that
# figure less three standard errors of a 24-object mean.
FUSION_MIOU5_BOUND = 0.38


def test_weights_stay_under_budget():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert total < 16 * 2**20, f"shipped weights take {total / 2**20:.1f} MB (budget 16 MB)"


@pytest.mark.skipif("implicit-k1024" not in shipped_models(), reason="no shipped implicit-k1024 weights")
def test_shipped_model_reconstructs_held_out_objects(tmp_path):
    from voxlink.data.make import MakeConfig, make_dataset, plan_jobs
    from voxlink.evaluate import evaluate

    model, meta, extra = load_model("implicit-k1024")
    assert model.cfg.code_bits == 1024 and model.compression_ratio == 384.0
    assert meta["data_manifest"] and meta["git_commit"]
    data = tmp_path / "heldout"
    make_dataset(data, plan_jobs(32, [], seed=987654), MakeConfig(views=8, seed=987654), workers=1, progress=False)
    report = evaluate(model, data, split="all", views=5, baseline=(extra["mean_grid"], float(extra["baseline_threshold"][0])))
    assert report["bytes_per_view"] == 128
    assert report["miou"]["5"] > MIOU5_BOUND, report["miou"]
    assert report["miou"]["5"] > report["baseline_miou"] + 0.05, "beats the mean-grid baseline"
    assert report["miou"]["5"] >= report["miou"]["1"] - 0.02, "more views do not make it worse"
    torch.testing.assert_close(model.decompress(model.compress(torch.rand(2, 3, 128, 128))).abs(),
                               torch.ones(2, 1024))


@pytest.mark.skipif("fusion-k1024" not in shipped_models(), reason="no shipped fusion-k1024 weights")
def test_shipped_fusion_model_reconstructs_held_out_objects_at_any_heading(tmp_path):
    """The shipped default (pose-aware fusion, voxlink/weights/MODEL_CARD.md) on 24 held-out procedural
    objects at random headings: well above the mean grid and the paper's implicit model, more views help,
    and the same views in another order give the same grids."""
    from voxlink.data.make import MakeConfig, make_dataset, plan_jobs
    from voxlink.evaluate import evaluate
    from voxlink.weights import DEFAULT_MODEL

    assert DEFAULT_MODEL == "fusion-k1024"
    model, meta, extra = load_model("fusion-k1024")
    assert model.cfg.code_bits == 1024 and model.compression_ratio == 384.0 and meta["git_commit"]
    data = tmp_path / "heldout"
    make_dataset(data, plan_jobs(24, [], seed=987655), MakeConfig(views=8, seed=987655), workers=1, progress=False)
    base = (extra["mean_grid"], float(extra["baseline_threshold"][0]))
    r = evaluate(model, data, split="all", views=5, baseline=base)
    assert r["heading"] == "random" and r["bytes_per_view"] == 128
    assert r["miou"]["5"] > FUSION_MIOU5_BOUND, r["miou"]
    assert r["miou"]["5"] > r["baseline_miou"] + 0.15, "far above the mean-grid baseline"
    assert r["miou"]["5"] > r["miou"]["1"] + 0.05, "more views help"
    implicit, _, _ = load_model("implicit-k1024")
    ri = evaluate(implicit, data, split="all", views=5, heading="random")
    assert r["miou"]["5"] > ri["miou"]["5"] + 0.05, "the poses help"
