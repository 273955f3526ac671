"""Silhouette hulls on the 64 real evaluation meshes (data/real, random headings), of the true masks and of the
masks fusion-k1024 decodes from its codes, at 5 and 24 views, with voxel footprints of 1, 3 and 5 pixels.
Run from the repository root: python scripts/hull_footprint_diagnostic.py (about 3 minutes on 2 cores)."""
import torch, numpy as np
from voxlink.data.dataset import MultiViewDataset
from voxlink.models.projection import silhouette_hull
from voxlink.models.implicit import iou
from voxlink.weights import load_model
torch.set_num_threads(2)
m, _, _ = load_model("fusion-k1024"); m.eval()
V = 24
ds = MultiViewDataset('data/real', 'all', V, train=False, frame='object', with_depth=True, heading='random')
res = {(w, fp): {5: [], 24: []} for w in ("true", "dec") for fp in (1, 3, 5)}
with torch.no_grad():
    for i in range(len(ds)):
        it = ds[i]
        codes = m.encode(it["images"])
        _, mask = m.decode_depth(codes)
        masks = {"true": it['depth'] > 0, "dec": mask > 0.5}
        K = it['K_views']; P = it['pose_grid']; tgt = it['occupancy'][None]
        for (w, fp), r in res.items():
            for n in (5, 24):
                ids = np.round(np.arange(n) * V / n).astype(int) if n < V else np.arange(V)
                h = silhouette_hull(masks[w][ids], K[ids], P[ids], footprint=fp)
                r[n].append(float(iou(h[None], tgt, 0.5)[0]))
for k, r in res.items():
    print(k, {n: round(float(np.mean(x)), 3) for n, x in r.items()})
