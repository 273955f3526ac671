"""Depth maps from the fused grid against each view's decoded depth: the variants docs/history/fusion-k1024.md's "Depth from
the fused grid" compares (stage 6, 5 views, random headings), and the silhouette of the grid against the decoded
one. Pick on validation: python scripts/fused_depth_variants.py data/train val 24 [STEP] (about 5 minutes on 2
cores; STEP: render_depth's march step in voxels, 0.5);
the card's real-mesh figures come from `voxlink eval` (docs/reports/fusion-k1024-*-depth-fused.json)."""
import sys

import torch

from voxlink.data.dataset import MultiViewDataset
from voxlink.models.projection import render_depth
from voxlink.weights import load_model

torch.set_num_threads(2)
data, split, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
step = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5  # render_depth's march step, voxels
V = 5
m, _, _ = load_model("fusion-k1024")
m.eval()
ds = MultiViewDataset(data, split, V, train=False, frame="object", with_depth=True, heading="random")
err = {}
sil = {}


def add(key, pred, true, mask):
    """Accumulate AbsRel of pred against true (metres) over mask's pixels."""
    a = err.setdefault(key, [0.0, 0])
    a[0] += float(((pred[mask] - true[mask]).abs() / true[mask]).sum())
    a[1] += int(mask.sum())


def add_sil(key, pm, tm):
    """Accumulate a silhouette's IoU against the true one."""
    a = sil.setdefault(key, [0.0, 0])
    a[0] += float((pm & tm).sum() / (pm | tm).sum().clamp(min=1))
    a[1] += 1


with torch.no_grad():
    for i in range(min(n, len(ds))):
        it = ds[i]
        codes = m.encode(it["images"])
        K, pose, true = it["K_views"], it["pose_grid"], it["depth"]
        depth, mask = m.decode_depth(codes)
        st = m.init_state(1)
        for v in range(V):
            st = m.step(codes[v:v + 1], st, pose=pose[v:v + 1], K=K[v:v + 1])
        prob = m.occupancy(st)[0]
        g = {tau: render_depth(prob, K, pose, 128, 128, tau=tau, step=step) for tau in (0.3, 0.4, 0.5, 0.6)}
        for v in range(V):
            tm, gv, dv = true[v] > 0, g[0.4][v], depth[v]
            both = (gv > 0) & (mask[v] > 0.5)
            shifted = dv + ((gv[both] - dv[both]).median() if both.sum() >= 20 else 0.0)
            add("decoded", dv, true[v], tm)
            add("decoded, shifted onto the grid", shifted, true[v], tm)
            add("grid, else decoded", torch.where(gv > 0, gv, dv), true[v], tm)
            add("grid, else decoded shifted (used)", torch.where(gv > 0, gv, shifted), true[v], tm)
            add("mean of grid and decoded where the grid is hit", torch.where(gv > 0, 0.5 * (gv + dv), dv), true[v], tm)
            add("grid only within 15 cm of decoded", torch.where((gv > 0) & ((gv - dv).abs() < 0.15), gv, dv),
                true[v], tm)
            for tau in (0.3, 0.5, 0.6):
                add(f"grid at p = {tau}, else decoded", torch.where(g[tau][v] > 0, g[tau][v], dv), true[v], tm)
            add_sil("decoded", mask[v] > 0.5, tm)
            add_sil("grid", gv > 0, tm)
            add_sil("union", (mask[v] > 0.5) | (gv > 0), tm)
print(f"{min(n, len(ds))} objects of {data} ({split}), {V} views; depth AbsRel on the true silhouette:")
for k, (a, c) in err.items():
    print(f"  {k:<48} {a / max(c, 1):.4f}")
print("silhouette IoU:")
for k, (a, c) in sil.items():
    print(f"  {k:<48} {a / max(c, 1):.4f}")
