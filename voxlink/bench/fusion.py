"""``voxlink bench fusion``: what each training speed-up of the fusion model gives, side by side in one
run, and the ground's decode time per view of the fusion model against the paper's implicit model.

Training step (8 objects x 5 views, forward + backward + Adam, synthetic tensors so that only the
network is timed; data loading is timed separately on a real dataset when one is given):

The network is the shipped ``fusion-k1024``'s (config ``fusion-cpu``: spatial code).

* ``baseline``: the first design: a 3D refiner whose full-resolution convolution reads 14 channels
  (6 evidence channels + 8 features), float32, NCHW;
* ``+ 8-channel refiner input``: the evidence padded to 8 channels (oneDNN's blocked 3D convolution);
* ``+ channels_last``: the 2D encoder and view decoder in channels-last memory format;
* ``+ folded upsampling convolutions``: each "2x nearest upsample + 3x3 conv" of the view decoder as
  one stride-2 transposed convolution (:class:`voxlink.models.decoder.NearestUpConv2d`; the same
  function; the rows above compute the two steps);
* ``+ bf16 autocast``: bfloat16 autocast on the CPU (slower on a CPU without AVX-512 BF16);
* ``+ per-channel pooling, channels_last_3d refiner`` (2026-12-07): each evidence channel pooled over
  the views as it is made (no stacked [B, V, E, R^3] tensor; the minimum or the maximum, not both), the
  rounding before the sums with a gradient that costs nothing, and the 3D refiner and its input in
  channels-last-3D layout in training (:meth:`voxlink.models.fusion.FusionModel.to_channels_last`); the
  rows above pool as the code did before it (:func:`_stacked_pooling`);
* ``shipped design``: the shipped ``fusion-k1024``'s config as its model file records it (what it
  added since: an 11-pixel footprint at stage 3, mean pooling beside min / max and a 13-channel
  refiner input at stage 4, a tight 5-pixel hull beside the wide one and a 14-channel refiner input at
  stage 7), float32 and with bf16 autocast (with and without the pooling and layout change above):
  what a training step of the shipped model costs.

Ground decode (one object, one view at a time, PyTorch on the CPU): fuse one code (3D-LSTM step or
projective evidence + min/max), decode its depth map, and decode the occupancy grid after it (the
worst case: a viewer refreshing after every view).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from voxlink import camera


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _batch(b: int, v: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.rand(b, v, 3, 128, 128)
    K = torch.tensor(camera.intrinsics(), dtype=torch.float32).expand(b, v, 3, 3)
    pose = torch.tensor(np.stack([camera.orbit_poses(v, rng) for _ in range(b)]), dtype=torch.float32)
    target = (torch.rand(b, 32, 32, 32) > 0.8).float()
    depth = torch.rand(b, v, 128, 128) * 2
    return images, K, pose, target, depth


def _stacked_pooling(model_cls):
    """``model_cls`` with the pooling in training as it was before per-channel pooling (2026-12-07): every
    view's evidence stacked into one [B, V, E, R^3] tensor, its minimum and its maximum over the views
    both taken and one picked per channel; with mean pooling, the sources gathered by index and rounded
    with ``x + (q - x).detach()``. The same values."""
    from voxlink.models.fusion import _MEAN_QUANTUM

    class _Stacked(model_cls):
        def _pool_views(self, chans, keys=None):
            """[B, C, R, R, R] from E channels [B, V, R^3], as the earlier code pooled them (training)."""
            ev = torch.stack(chans, 2)
            c, r = self.pooled_channels, self.cfg.resolution
            parts = [torch.where(self.pool_min.view(1, -1, 1), ev[:, :, :c].amin(1), ev[:, :, :c].amax(1))]
            if self.mean_pooling:
                x = ev[:, :, list(self._mean_sources)]
                q = torch.round(x * _MEAN_QUANTUM) * (1.0 / _MEAN_QUANTUM)
                ledger = torch.zeros(len(ev), 1, r ** 3)
                ledger[:, 0, 0] = float(ev.shape[1])
                parts += [(x + (q - x).detach()).sum(1), ledger]
            return torch.cat(parts, 1).view(len(ev), -1, r, r, r)

    return _Stacked


def _baseline_model(cfg):
    """The fusion model with the first refiner design (14 channels read at full resolution) and the
    first design's pooling (:func:`_stacked_pooling`)."""
    from voxlink.models.fusion import EVIDENCE, FusionModel, Refiner3D

    class _Unpadded(_stacked_pooling(FusionModel)):
        def __init__(self, c):
            super().__init__(c)
            self.refiner = Refiner3D(len(EVIDENCE) + 1, c.refiner_channels)

        def logits(self, state):
            """Refiner logits [B, 2, R, R, R] from the state [B, 5, R, R, R] and the height (6 channels)."""
            return self.refiner(torch.cat([state, self.height.expand(len(state), -1, -1, -1, -1)], 1))

    return _Unpadded(cfg)


def _train_step(model, bf16: bool, batch):
    """One training step of ``model`` (forward, the three losses, backward, Adam), as a function."""
    from voxlink.train_fusion import fusion_losses

    images, K, pose, target, depth = batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        """One training step of the timed setting."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(images, K, pose)
        ls = fusion_losses(out, target, depth)
        loss = ls["loss3d"] + ls["loss_mask"] + ls["loss_depth"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_step_times(repeats: int = 5, threads: int = 1) -> list[dict]:
    """Seconds per training step of the fusion model, one row per cumulative change: the median of
    ``repeats`` steps, the settings in turn within every repeat (after one round of warm-up).

    Returns:
        rows ``{"setting", "step_s", "speedup"}`` (speed-up against the first row); the bfloat16 row has
        ``step_s`` and ``speedup`` None and a ``note`` where the CPU has no bfloat16 instructions.
    """
    from voxlink.modelfile import read_model_info
    from voxlink.models.fusion import FUSION_CONFIGS, FusionConfig, FusionModel, native_bf16

    torch.set_num_threads(threads)
    cfg = dataclasses.replace(FUSION_CONFIGS["fusion-cpu"])  # the shipped fusion-k1024's network, first design
    images, K, pose, target, depth = _batch(8, 5)
    rows = []
    shipped = FusionConfig.from_dict(read_model_info("fusion-k1024").config)  # metadata only, no weights
    tight = f", tight footprint {shipped.tight_footprint}" if shipped.tight_footprint else ""
    design = f"shipped design (footprint {shipped.footprint}{tight}, {shipped.pooling} pooling)"
    # (name, padded refiner input, channels_last 2D, folded, bf16, per-channel pooling + channels_last_3d
    # refiner, config); the rows before the last change keep the first design's stacked pooling
    settings = [("baseline (float32, NCHW, 14-channel refiner input)", False, False, False, False, False, cfg),
                ("+ 8-channel refiner input", True, False, False, False, False, cfg),
                ("+ channels_last", True, True, False, False, False, cfg),
                ("+ folded upsampling convolutions", True, True, True, False, False, cfg),
                ("+ bf16 autocast", True, True, True, True, False, cfg),
                ("+ per-channel pooling, channels_last_3d refiner", True, True, True, True, True, cfg),
                (f"{design}, float32", True, True, True, False, True, shipped),
                (f"{design}, bf16 autocast, before the last change", True, True, True, True, False, shipped),
                (f"{design}, bf16 autocast", True, True, True, True, True, shipped)]
    steps: dict[str, object] = {}  # setting -> one training step of it
    for name, padded, cl, folded, bf16, pooled, mcfg in settings:
        if bf16 and not native_bf16():
            continue
        torch.manual_seed(0)
        if not padded:
            model = _baseline_model(mcfg)
        elif not pooled:
            model = _stacked_pooling(FusionModel)(mcfg)
        else:
            model = FusionModel(mcfg)
        for mod in model.modules():
            if hasattr(mod, "folded"):
                mod.folded = folded
        if cl and pooled:
            model.to_channels_last()
        elif cl:
            model.encoder.to(memory_format=torch.channels_last)
            model.depth.to(memory_format=torch.channels_last)
        steps[name] = _train_step(model, bf16, (images, K, pose, target, depth))
    # the settings in turn within every repeat, so that a drift of the machine's speed (up to 50 % within
    # an hour on this project's host) hits all of them alike
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(repeats + 1):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    for name, *_ in settings:
        if name in times:
            rows.append({"setting": name, "step_s": round(float(np.median(times[name])), 3)})
        else:
            # emulated, bfloat16 is 25x slower than float32 (measured on an AVX2 host: 39.6 s a step):
            # four minutes of timing that says nothing
            rows.append({"setting": name, "step_s": None, "note": "not timed: this CPU has no bfloat16 instructions"})
    for r in rows:
        r["speedup"] = round(rows[0]["step_s"] / r["step_s"], 2) if r["step_s"] else None
    return rows


def data_times(data: str | Path, batches: int = 5) -> list[dict]:
    """Seconds to load one training batch (8 objects x 8 views) with each background mode."""
    from voxlink.data.dataset import MultiViewDataset

    rows = []
    for name, bg, bank in (("textured, drawn per view", "textured", False), ("textured, from the bank", "textured", True),
                           ("plain colours", "plain", True)):
        ds = MultiViewDataset(data, "train", 8, train=True, frame="object", with_depth=True, heading="random",
                              backgrounds=bg)
        import voxlink.data.backgrounds as B

        orig = B.composite
        if not bank:
            B.composite = lambda rgb, mask, rng, bank=True: orig(rgb, mask, rng, bank=False)  # noqa: E731
        try:
            t = _median_time(lambda: [ds[i] for i in range(8)], batches)
        finally:
            B.composite = orig
        rows.append({"setting": name, "batch_s": round(t, 3)})
    return rows


@torch.no_grad()
def fused_depth_times(data: str | Path, model: str = "fusion-k1024", objects: int = 4, views: int = 5,
                      repeats: int = 3) -> dict:
    """Milliseconds per view to make the depth maps from the fused grid
    (:meth:`~voxlink.models.fusion.FusionModel.fused_depth`, rays on the decoded silhouettes, as the
    ground's ``depth_fused.tar`` and the viewer make them), on the first ``objects`` validation objects
    of a dataset (random headings, true poses; real grids: the time depends on the occupied space the
    rays cross), ``views`` views each, with their ``views``-view grid.

    Returns:
        ``{"model", "objects", "views", "ms_per_view", "ms_per_view_all_rays"}`` (medians over repeats).

    Raises:
        ValueError: a model that is not pose-aware, or a dataset without validation objects.
    """
    from voxlink.data.dataset import MultiViewDataset
    from voxlink.weights import load_model

    m, _, _ = load_model(model)
    if not hasattr(m, "fused_depth"):
        raise ValueError(f"{model} is not a pose-aware fusion model: it makes no depth maps from a fused grid")
    m.eval()
    ds = MultiViewDataset(data, "val", views, train=False, frame="object", with_depth=True, heading="random")
    if len(ds) == 0:
        raise ValueError(f"{data} has no validation objects")
    cases = []
    for i in range(min(objects, len(ds))):
        it = ds[i]
        d, mk = m.decode_depth(m.encode(it["images"]))
        occ = m.occupancy(m.fuse_all(d, mk, it["K_views"], it["pose_grid"]))[0]
        cases.append((occ, d, mk, it["K_views"], it["pose_grid"]))
    n = sum(len(c[1]) for c in cases)
    on_sil = _median_time(lambda: [m.fused_depth(o, d, mk, K, P, rays=mk > 0.5) for o, d, mk, K, P in cases], repeats)
    full = _median_time(lambda: [m.fused_depth(o, d, mk, K, P) for o, d, mk, K, P in cases], repeats)
    return {"model": model, "objects": len(cases), "views": views, "ms_per_view": round(1e3 * on_sil / n, 2),
            "ms_per_view_all_rays": round(1e3 * full / n, 2)}


@torch.no_grad()
def ground_decode_times(models: list[str], views: int = 24, repeats: int = 7) -> list[dict]:
    """Milliseconds per view at the ground for each model (PyTorch, CPU, one object), as the ground
    station spends them: ``depth`` the view's depth map (and, for a pose-aware model, its silhouette)
    decoded from its code, ``fuse`` the view merged into the object's state (the 3D-LSTM step of the
    implicit model; for a pose-aware model the decoded view placed with its pose, the view decoder not
    counted twice), ``occupancy`` the grid decoded from the state after every view (the worst case: the
    station decodes it only when asked). A pose-aware model is timed with its refiner and view decoder
    as the ground runs them (:meth:`~voxlink.models.fusion.FusionModel.refiner_precision`) and, where that
    is bfloat16, in float32 as well.

    Returns:
        rows ``{"model", "family", "precision", "fuse_ms", "depth_ms", "occupancy_ms", "total_ms"}`` per view.
    """
    from voxlink.weights import load_model

    rng = np.random.default_rng(0)
    pose = torch.tensor(camera.orbit_poses(views, rng), dtype=torch.float32)
    Kmat = torch.tensor(camera.intrinsics(), dtype=torch.float32)[None]
    runs = []  # (name, model, inference_precision to set or None, codes, the arithmetic it gives)
    for name in models:
        model, _, _ = load_model(name)
        if getattr(model, "family", "implicit") not in ("implicit", "fusion"):
            raise ValueError(f"{name} is a {model.family} model: the ground decode benchmark compares implicit "
                             f"and fusion models")
        codes = model.encode(torch.rand(views, 3, 128, 128))
        if hasattr(model, "place"):
            runs += [(name, model, "auto", codes, model.refiner_precision())]
            if runs[-1][-1] == "bfloat16":
                runs += [(name, model, "float32", codes, "float32")]
        else:
            runs += [(name, model, None, codes, "float32")]
    acc = [{"fuse": [], "depth": [], "occupancy": []} for _ in runs]
    for _ in range(repeats):  # the models in turn within every repeat: a drift of the machine's speed hits all
        for (name, model, precision, codes, _), a in zip(runs, acc):
            pose_aware = precision is not None
            if pose_aware:
                model.inference_precision = precision
            state = model.init_state(1)
            for v in range(views):
                code = codes[v:v + 1]
                t0 = time.perf_counter()
                d, m = model.decode_depth(code)
                t1 = time.perf_counter()
                if pose_aware:
                    state = model.place(state, d, m, Kmat, pose[v:v + 1], out=state)
                else:
                    state = model.step(code, state)
                t2 = time.perf_counter()
                model.occupancy(state)
                t3 = time.perf_counter()
                a["depth"].append(t1 - t0)
                a["fuse"].append(t2 - t1)
                a["occupancy"].append(t3 - t2)
    rows = []
    for (name, model, _, _, arithmetic), a in zip(runs, acc):
        r = {"model": name, "family": getattr(model, "family", "implicit"), "precision": arithmetic,
             **{f"{k}_ms": round(1e3 * float(np.median(x)), 2) for k, x in a.items()}}
        r["total_ms"] = round(r["fuse_ms"] + r["depth_ms"] + r["occupancy_ms"], 2)
        rows.append(r)
    return rows


def run(out: str | Path, data: str | Path | None = None, models: list[str] | None = None, threads: int = 1) -> str:
    """Run the measurements (training step; with ``data`` batch loading and the depth maps from the fused
    grid; the ground's decode) and write ``fusion-speed.md`` (and ``.json``) into ``out``.

    Returns:
        the Markdown text.
    """
    import json
    import os

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = train_step_times(threads=threads)
    loads = data_times(data) if data else []
    dec = ground_decode_times(models or ["implicit-k1024", "fusion-k1024"])
    fused = fused_depth_times(data) if data else None
    lines = [f"# Fusion model speed ({os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} thread(s))", "",
             "## Training step (8 objects x 5 views, forward + backward + Adam)", "",
             "| setting | s / step | speed-up |", "|---|---|---|"]
    lines += [f"| {r['setting']} | {r['step_s']:.3f} | {r['speedup']:.2f}x |" if r["step_s"] else
              f"| {r['setting']} | {r['note']} | |" for r in steps]
    if loads:
        lines += ["", "## Loading one training batch (8 objects x 8 views, one core)", "", "| backgrounds | s / batch |",
                  "|---|---|"]
        lines += [f"| {r['setting']} | {r['batch_s']:.3f} |" for r in loads]
    lines += ["", "## Ground decode per view (PyTorch CPU, one object; occupancy decoded after every view)", "",
              "| model | family | refiner / decoder | depth ms | fuse ms | occupancy ms | total ms |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['family']} | {r['precision']} | {r['depth_ms']} | {r['fuse_ms']} | "
              f"{r['occupancy_ms']} | {r['total_ms']} |" for r in dec]
    if fused:
        lines += ["", f"## Depth maps from the fused grid ({fused['model']}, {fused['objects']} validation objects x "
                  f"{fused['views']} views, their grid; made at snapshots and for the viewer, not per view received)", "",
                  "| rays | ms / view |", "|---|---|",
                  f"| on the decoded silhouette (the ground) | {fused['ms_per_view']} |",
                  f"| every pixel | {fused['ms_per_view_all_rays']} |"]
    text = "\n".join(lines) + "\n"
    (out / "fusion-speed.md").write_text(text)
    (out / "fusion-speed.json").write_text(json.dumps({"train_step": steps, "data": loads, "ground_decode": dec,
                                                       "fused_depth": fused}, indent=1))
    return text
