"""A diagnostic: BatchNorm statistics of the sequential model's E^3D recomputed per N_small rate, against
the shared recomputation the benchmark does (N drawn from the profile's rates), on the same trained
weights, scored on the same objects at each N (a paired comparison, free of training noise).

    python scripts/sequential_bn_per_rate.py runs/bench-X/models/sequential.safetensors data/proc val 100

Prints, per N in 1, 2, 4, 8, the mIoU@5 as trained, after the shared recomputation, after the per-rate
one, and their paired difference (± one standard error over objects); writes the means as JSON to
a fifth argument, a JSON path (optional). Results: docs/results.md ("BatchNorm per rate").
"""
import copy
import dataclasses
import json
import sys

import numpy as np
import torch

from voxlink.bench.accuracy import _recalibrate_sequential, open_bench_model, score
from voxlink.bench.profiles import get_profile
from voxlink.data.dataset import MultiViewDataset


def main() -> None:
    """Command-line entry point (arguments: MODEL DATA SPLIT N_OBJECTS [JSON])."""
    torch.set_num_threads(2)
    path, data, split, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    prof = get_profile("quick")
    base, _ = open_bench_model(path)
    ds = MultiViewDataset(data, split, prof.max_views, train=False, frame=prof.frame)

    def recalibrated(p):
        """A copy of the model with its BatchNorm recomputed at the N that profile ``p`` draws (10 batches)."""
        m = copy.deepcopy(base)
        _recalibrate_sequential(m, p, data, prof.batch_size, 10, np.random.default_rng(0), 0, "cpu")
        return m.eval()

    res = {}
    with torch.no_grad():
        shared = recalibrated(prof)  # the same statistics for every N: made once
        for N in (1, 2, 4, 8):
            per_rate = recalibrated(dataclasses.replace(prof, train_iterations=(N,)))
            row = {name: score("sequential", m, ds, n, iterations=N)["iou"]
                   for name, m in (("as_trained", base), ("shared_recal", shared), ("per_rate", per_rate))}
            d = row["per_rate"] - row["shared_recal"]
            print(f"N={N}: as trained {row['as_trained'].mean():.4f}, shared recal {row['shared_recal'].mean():.4f}, "
                  f"per-rate {row['per_rate'].mean():.4f}, per-rate - shared {d.mean():+.4f} +- {d.std(ddof=1)/np.sqrt(len(d)):.4f}", flush=True)
            res[N] = {k: float(v.mean()) for k, v in row.items()}
    if len(sys.argv) > 5:
        with open(sys.argv[5], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
