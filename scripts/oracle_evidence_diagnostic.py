"""What limits fusion-k1024's mIoU: the grid fused from each view's decoded evidence against the same refiner fed
the true silhouettes, the true depth maps, or both (an oracle view decoder: what perfect codes would give), and a
second pass with each view's decoded depth shifted onto the first grid's depth (voxlink.models.projection.render_depth).
Run from the repository root: python scripts/oracle_evidence_diagnostic.py DATA SPLIT OBJECTS VIEWS
(e.g. data/real all 64 5: about 3 minutes on 2 cores; 24 views about 10). Random headings, true poses."""
import sys

import numpy as np
import torch

from voxlink.data.dataset import MultiViewDataset
from voxlink.models.implicit import iou
from voxlink.models.projection import render_depth
from voxlink.weights import load_model

torch.set_num_threads(2)
data, split, n, V = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m, _, _ = load_model("fusion-k1024")
m.eval()
ds = MultiViewDataset(data, split, V, train=False, frame="object", with_depth=True, heading="random")
r = {k: [] for k in ("decoded (the model)", "decoded depth shifted onto the first grid, fused again",
                     "true depth", "true silhouettes", "true depth and silhouettes")}
with torch.no_grad():
    for i in range(min(n, len(ds))):
        it = ds[i]
        codes = m.encode(it["images"])
        K, pose, tgt, true = it["K_views"], it["pose_grid"], it["occupancy"][None], it["depth"]
        d, mk = m.decode_depth(codes)
        score = lambda depth, mask: float(iou(m.occupancy(m.fuse_all(depth, mask, K, pose)), tgt)[0])  # noqa: E731
        p1 = m.occupancy(m.fuse_all(d, mk, K, pose))
        r["decoded (the model)"].append(float(iou(p1, tgt)[0]))
        g = render_depth(p1[0], K, pose, d.shape[1], d.shape[2])
        both = (g > 0) & (mk > 0.5)
        d2 = d.clone()
        for v in range(V):
            if both[v].sum() >= 20:
                d2[v] += (g[v][both[v]] - d[v][both[v]]).median()
        r["decoded depth shifted onto the first grid, fused again"].append(score(d2, mk))
        td = torch.where(true > 0, true, d)
        tm = (true > 0).float()
        r["true depth"].append(score(td, mk))
        r["true silhouettes"].append(score(d, tm))
        r["true depth and silhouettes"].append(score(td, tm))
print(f"{len(r['true depth'])} objects of {data} ({split}), mIoU@{V}:")
for k, v in r.items():
    print(f"  {k:<56} {np.mean(v):.4f}")
