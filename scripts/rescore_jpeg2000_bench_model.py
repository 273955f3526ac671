"""Rescore the published seed-0 JPEG 2000 + 3D-R2N2 bench model (runs/bench-q3/seed-0, trained on codestreams
with OpenJPEG's comment) with today's encoder (comment left out, the bytes it freed spent), on the bench's
100 test objects and views of data/proc. Run from the repository root: python scripts/rescore_jpeg2000_bench_model.py"""
import time, numpy as np, torch
from concurrent.futures import ThreadPoolExecutor
from voxlink.bench.accuracy import open_bench_model, _to_uint8, _from_uint8
from voxlink.data.dataset import MultiViewDataset
from voxlink.evaluate import evaluate_dataset
from voxlink.jpeg2000 import encode_at_ratio
torch.set_num_threads(1)
model, meta = open_bench_model('runs/bench-q3/seed-0/models/jpeg2000.safetensors')
ds = MultiViewDataset('data/proc', 'test', 5, train=False, frame='object', seed=0)
pool = ThreadPoolExecutor(2)
for ratio in (192.0, 96.0, 48.0, 1000.0):
    sizes, reach = [], []
    t0 = time.time()
    def rec(images):
        """Occupancy float32 [1, R, R, R] from views float32 [V, 3, H, W] in [0, 1], each through JPEG 2000."""
        res = list(pool.map(lambda im: encode_at_ratio(im, ratio), _to_uint8(images.cpu())))
        sizes.extend(r.bytes for r in res); reach.extend(r.reachable for r in res)
        return torch.softmax(model(_from_uint8(np.stack([r.image for r in res]))[None]), 1)[:, 1]
    sc = evaluate_dataset(model, ds, 100, views=5, reconstruct=rec)
    print(f'{ratio:g}:1: mIoU@5 {np.nanmean(sc["iou"][:, -1]):.4f}, mean bytes {np.mean(sizes):.1f}, '
          f'reachable {np.mean(reach):.2f}, {time.time() - t0:.0f} s', flush=True)
