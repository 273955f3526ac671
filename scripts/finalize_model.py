"""Recalibrate a trained model's BatchNorm statistics and write it as a (float16) model file.

    python scripts/finalize_model.py RUN/model.safetensors OUT.safetensors --data data/proc [--half]

Used to make the shipped weights from a training run whose code predates the end-of-training
recalibration in voxlink.train (same procedure: 100 batches of 16 training objects, 5 views each).
"""

import argparse

import torch

from voxlink.data.dataset import MultiViewDataset
from voxlink.train import recalibrate_bn, validate
from voxlink.weights import load_model, save_model


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--data", default="data/proc")
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    m, meta, extra = load_model(a.src)
    if a.name:
        m.cfg.name = a.name
    train = MultiViewDataset(a.data, "train", 5, train=False, frame=m.cfg.frame)
    val = MultiViewDataset(a.data, "val", 5, train=False, frame=m.cfg.frame)
    before = validate(m, val, 64, "cpu")
    recalibrate_bn(m, train, batches=100)
    after = validate(m, val, 64, "cpu")
    meta["bn_recalibrated"] = {"objects": 1600, "views_per_object": 5, "val_before": before, "val_after": after}
    save_model(m, a.dst, meta=meta, extra=extra, half=a.half)
    print(f"{a.dst}: val before {before['val_miou5']:.3f}, after {after['val_miou5']:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
