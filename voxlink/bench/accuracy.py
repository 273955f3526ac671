"""``voxlink bench accuracy``: Golts & Schechner's Fig. 8 on voxlink's data.

mIoU (Eq. 17, tau = 0.4, 5 views) against compression ratio (Eq. 12) for:

* ``implicit``: one implicit model (Sec. III-C) per ratio, K = raw bits / ratio;
* ``sequential`` and ``direct`` (Secs. III-A, III-B): one model each for every rate, N_small at
  N = 384 / ratio iterations (ratios 48, 96, 192, 384 are reachable; 480 and 1000 are not);
* ``jpeg2000``: 3D-R2N2 trained on views compressed by OpenJPEG at a random ratio per batch, scored at
  each target ratio on codestreams no larger than the target (:mod:`voxlink.jpeg2000`);
* ``uncompressed``: the implicit network without the binarizer (float32 code, 12:1), the ceiling;
* ``mean-grid``: the trivial baseline (mean training grid at its best validation threshold);
* ``pose-aware``: the shipped pose-aware model (``prof.pose_aware_model``, :mod:`voxlink.models.fusion`)
  scored as it ships, at its one ratio (384:1), not trained here: it had its own data and budget (its
  model card), so its point says what that model reaches on these objects, not what its method reaches
  at this profile's budget.

Every trained model has the profile's widths, steps, batch size, data and seed
(:mod:`voxlink.bench.profiles`). Models are saved in ``OUT/models/`` and reused by later runs when
their profile, configuration and data manifest match. Outputs: ``accuracy.csv`` (one row per method
and target ratio, naming model file, data manifest and git commit), ``accuracy.json`` (plus the
per-object IoUs), ``accuracy.png`` and ``accuracy.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from voxlink.bench.profiles import Profile, implicit_bits
from voxlink.data.dataset import MultiViewDataset
from voxlink.data.store import manifest_hash
from voxlink.models.binarizer import RAW_BITS_128
from voxlink.models.implicit import ImplicitModel, iou, occupancy_loss
from voxlink.models.joint import JointConfig, JointModel, Reconstructor3D

log = logging.getLogger(__name__)

METHODS = ("implicit", "sequential", "direct", "jpeg2000", "uncompressed", "mean-grid", "pose-aware")
CSV_FIELDS = ("method", "target_ratio", "ratio", "reachable", "bits_per_view", "bytes_per_view",
              "bytes_per_view_no_header", "iterations", "code_bits", "miou", "miou_std", "miou_sem", "objects",
              "views", "model_file", "data_manifest", "git_commit", "train_seconds", "profile")


# -- models -----------------------------------------------------------------------------------------
def build(method: str, prof: Profile, code_bits: int | None = None) -> torch.nn.Module:
    """The untrained network of a method under a profile.

    Raises:
        ValueError: unknown method.
    """
    import dataclasses

    r = dataclasses.replace(prof.recon, frame=prof.frame)
    if method == "implicit":
        return ImplicitModel(dataclasses.replace(r, name=f"implicit-k{code_bits}", code_bits=code_bits, binarize=True))
    if method == "uncompressed":
        return ImplicitModel(dataclasses.replace(r, name="uncompressed", code_bits=1024, binarize=False))
    if method in ("sequential", "direct"):
        comp = pretrained_codec(prof.codec).cfg if prof.codec else prof.compression
        model = JointModel(JointConfig(kind=method, compression=comp,
                                       recon=dataclasses.replace(r, name=method, code_bits=1024, binarize=False),
                                       code_encoder=prof.direct_code_encoder if method == "direct" else ()))
        if prof.codec:
            model.compressor.load_state_dict(pretrained_codec(prof.codec).state_dict())
        return model
    if method == "jpeg2000":
        return Reconstructor3D(dataclasses.replace(r, name="jpeg2000", code_bits=1024, binarize=False))
    raise ValueError(f"unknown method {method!r}")


_CODECS: dict = {}
_CODEC_CACHES: dict = {}


def pretrained_codec(name: str):
    """A shipped image codec (:class:`voxlink.models.rnn_compress.RNNCompressor`, eval mode), loaded once.

    Raises:
        voxlink.weights.ModelFileError: no such model, or not an image codec.
    """
    from voxlink.modelfile import ModelFileError
    from voxlink.weights import load_model

    if name not in _CODECS:
        model, _, _ = load_model(name)
        if getattr(model, "family", None) != "codec":
            raise ModelFileError(f"{name} is a {getattr(model, 'family', 'implicit')} model, not an image codec")
        _CODECS[name] = model.float().eval()
    return _CODECS[name]


def save_bench_model(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Weights + ``voxlink.bench`` metadata (method, config, profile, data manifest, commit) as safetensors."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"voxlink.bench": json.dumps(meta)})


def load_bench_model(path: Path, model: torch.nn.Module, expect: dict, if_recorded: dict | None = None) -> dict | None:
    """Load weights into ``model`` if ``path`` was trained with the same ``expect`` keys (and the same
    ``if_recorded`` keys where the file records them: settings that earlier files did not record and that
    never changed while they were made); else ``None``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("voxlink.bench", "{}"))
        differ = [k for k, v in expect.items() if meta.get(k) != v]
        differ += [k for k, v in (if_recorded or {}).items() if k in meta and meta[k] != v]
        if differ:
            log.info("%s was trained differently (%s): retraining", path, differ)
            return None
        model.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        log.warning("cannot reuse %s (%s): retraining", path, e)
        return None
    return meta


def streaming_model_file(model: JointModel, meta: dict, path: Path) -> Path:
    """Write a benchmark's sequential or direct model as a voxlink model file (:mod:`voxlink.weights`), so
    that ``voxlink edge`` and ``voxlink ground`` stream with it (float32 weights; the benchmark's metadata
    under ``bench``).

    Returns:
        ``path``.
    """
    from voxlink.weights import save_model

    return save_model(model, path, meta={"bench": meta, "made_by": "voxlink bench accuracy"})


def open_bench_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild and load a model file written by the benchmark (any method), in eval mode.

    Returns:
        ``(model, meta)``; ``meta["method"]`` names the method.

    Raises:
        ValueError: not a benchmark model file, or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from voxlink.models.config import ModelConfig

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("voxlink.bench", "null"))
        if not meta:
            raise ValueError(f"{path} is not a voxlink benchmark model (no voxlink.bench metadata)")
        method, cfg = meta["method"], meta["config"]
        if method in ("implicit", "uncompressed"):
            model = ImplicitModel(ModelConfig.from_dict(cfg))
        elif method in ("sequential", "direct"):
            model = JointModel(JointConfig.from_dict(cfg))
        elif method == "jpeg2000":
            model = Reconstructor3D(ModelConfig.from_dict(cfg))
        else:
            raise ValueError(f"{path}: unknown method {method!r}")
        model.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, OSError, KeyError, RuntimeError) as e:
        raise ValueError(f"cannot load benchmark model {path}: {e}") from e
    return model.eval(), meta


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [0, 1] -> uint8 [N, H, W, 3]."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _from_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _jpeg_roundtrip(images: torch.Tensor, ratio: float, pool: ThreadPoolExecutor) -> torch.Tensor:
    """Views float [N, 3, H, W] through OpenJPEG at a requested ratio and back (training)."""
    from voxlink.jpeg2000 import encode

    u8 = _to_uint8(images.cpu())
    dec = list(pool.map(lambda im: encode(im, ratio)[1], u8))
    return _from_uint8(np.stack(dec)).to(images.device)


_MEAN_GRIDS: dict = {}


def _mean_grid(data: Path, frame: str) -> torch.Tensor:
    """The mean training grid (cached per dataset and frame): float32 [R, R, R]."""
    from voxlink.train import mean_grid

    key = (str(Path(data).resolve()), manifest_hash(data), frame)
    if key not in _MEAN_GRIDS:
        _MEAN_GRIDS[key] = mean_grid(MultiViewDataset(data, "train", 1, train=False, frame=frame))
    return _MEAN_GRIDS[key]


def _draw_iterations(rng: np.random.Generator, prof: Profile, nmax: int) -> int:
    """One training step's N_small iteration count: uniform over ``prof.train_iterations`` (those above
    ``nmax`` dropped), or over 1..``nmax`` when it is None.

    Raises:
        ValueError: no count of ``prof.train_iterations`` lies in 1..``nmax``.
    """
    if not prof.train_iterations:
        return int(rng.integers(1, nmax + 1))
    allowed = [int(n) for n in prof.train_iterations if 1 <= int(n) <= nmax]
    if not allowed:
        raise ValueError(f"profile {prof.name!r}: train_iterations {prof.train_iterations} has no N in 1..{nmax}")
    return allowed[int(rng.integers(len(allowed)))]


def _joint_losses(model: JointModel, batch: dict, rng: np.random.Generator, prof: Profile,
                  device: str) -> dict[str, torch.Tensor]:
    """Eq. 16 on one batch (``images`` float32 [B, V, 3, H, W] in [0, 1], ``occupancy`` [B, R, R, R]): 1..
    ``prof.max_views`` views and N (:func:`_draw_iterations`) drawn; ``loss`` (total), ``loss_3d`` (Eq. 15),
    ``loss_comp`` (Eq. 14)."""
    v = int(rng.integers(1, prof.max_views + 1))
    n = _draw_iterations(rng, prof, model.cfg.compression.max_iterations)
    images, target = batch["images"][:, :v].to(device), batch["occupancy"].to(device)
    o = model(images, n)
    return {"loss": model.loss(o, target), "loss_3d": occupancy_loss(o["logits"], target), "loss_comp": o["loss_comp"]}


def _recalibrate_sequential(model: JointModel, prof: Profile, data: Path, batch_size: int, batches: int,
                            rng: np.random.Generator, seed: int, device: str) -> None:
    """BatchNorm of the sequential model's E^3D recomputed on N_small's reconstructions at N drawn as in
    training (:func:`_draw_iterations`, :func:`voxlink.train.recalibrate_bn`): it sees decoded images."""
    from voxlink.train import recalibrate_bn

    nmax = model.cfg.compression.max_iterations
    ds = MultiViewDataset(data, "train", prof.max_views, train=False, frame=prof.frame)

    def fwd(imgs):
        """E^3D on N_small reconstructions of views float [N, 3, H, W] at a random N."""
        return model.recon.encoder(model.compressor(imgs, _draw_iterations(rng, prof, nmax))["recon"][:, -1].clamp(0, 1))
    recalibrate_bn(model, ds, batches=max(1, min(batches, len(ds) // max(1, batch_size))), batch_size=batch_size,
                   seed=seed, forward=fwd, device=device)


def train_method(method: str, model: torch.nn.Module, prof: Profile, data: Path, seed: int = 0,
                 progress: bool = True, device: str = "cpu") -> tuple[float, dict]:
    """Train one benchmark model for ``prof.steps`` steps.

    Returns:
        ``(wall-clock seconds, final losses)``: running means (EMA 0.95) of ``loss_3d`` (Eq. 15) and,
        for the sequential and direct models, ``loss_comp`` (Eq. 14).

    The 3D-R2N2 protocol of ``voxlink train``: 1..max_views random views per batch, Adam, random
    plain backgrounds, a per-voxel prior bias from the mean training grid, learning rate x0.2 after
    75 % of the steps, BatchNorm statistics recomputed at the end. Losses: Eq. 15 (implicit,
    uncompressed, jpeg2000) or Eq. 16 (sequential, direct; N drawn per batch by :func:`_draw_iterations`).
    """
    from voxlink.train import TrainConfig, _collate, batches_forever, recalibrate_bn, run_loop

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    if isinstance(model, JointModel) and prof.codec:
        return _train_from_codec(method, model, prof, data, seed, progress, device)
    train_ds = MultiViewDataset(data, "train", prof.max_views, train=True, frame=prof.frame)
    decoder = model.recon.decoder if isinstance(model, JointModel) else model.decoder
    model.to(device)
    decoder.init_prior(_mean_grid(data, prof.frame).to(device))
    bs = max(1, min(prof.batch_size, len(train_ds)))
    loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, shuffle=True, collate_fn=_collate, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    if isinstance(model, JointModel) and prof.comp_lr:
        comp = set(id(q) for q in model.compressor.parameters())
        groups = [{"params": list(model.compressor.parameters()), "base_lr": prof.comp_lr},
                  {"params": [q for q in model.parameters() if id(q) not in comp], "base_lr": prof.lr}]
    else:
        groups = [{"params": list(model.parameters()), "base_lr": prof.lr}]
    opt = torch.optim.Adam([{"params": g["params"], "lr": g["base_lr"]} for g in groups])
    for g, src in zip(opt.param_groups, groups):
        g["base_lr"] = src["base_lr"]
    pool = ThreadPoolExecutor(2) if method == "jpeg2000" else None
    lo, hi = (math.log(r) for r in prof.jpeg_train_ratios)
    t0 = time.time()
    model.train()

    def train_step(batch):
        """One step's losses for :func:`voxlink.train.run_loop`: Eq. 15 (implicit, uncompressed, on
        JPEG 2000 views at a random training ratio) or Eq. 16 (sequential, direct; N by :func:`_draw_iterations`).

        Args:
            batch: the collated batch: ``images`` float32 [B, V, 3, H, W] in [0, 1], ``occupancy`` [B, R, R, R].
        """
        if method in ("sequential", "direct"):
            return _joint_losses(model, batch, rng, prof, device), {}, {}
        v = int(rng.integers(1, prof.max_views + 1))
        images, target = batch["images"][:, :v].to(device), batch["occupancy"].to(device)
        if method in ("implicit", "uncompressed"):
            l3d = occupancy_loss(model(images)["logits"], target)
            return {"loss": l3d, "loss_3d": l3d}, {}, {}
        dec = _jpeg_roundtrip(images.flatten(0, 1), math.exp(rng.uniform(lo, hi)), pool).view_as(images)
        l3d = occupancy_loss(model(dec), target)
        return {"loss": l3d, "loss_3d": l3d}, {}, {}

    # the protocol of voxlink train, through its loop: learning rate x0.2 after 75 % of the steps; no
    # log, checkpoints or validation inside (the benchmark scores the model after)
    tcfg = TrainConfig(steps=prof.steps, lr=prof.lr, lr_decay=0.2, decay_at=0.75, val_every=prof.steps + 1,
                       checkpoint_minutes=float("inf"))
    _, _, ema = run_loop(model, opt, tcfg, None, 0, 0.0, batches_forever(loader), train_step, lambda at: {},
                         lambda at, secs: None, progress=progress)
    ema = {k: x for k, x in ema.items() if k.startswith("loss_")}
    if method in ("implicit", "uncompressed", "jpeg2000"):
        bn_ds = MultiViewDataset(data, "train", prof.max_views, train=False, frame=prof.frame)
        fwd = None
        if method == "jpeg2000":
            def fwd(imgs):  # noqa: E306
                """E^3D on JPEG 2000 views (float [N, 3, H, W]): BatchNorm sees what it saw in training."""
                return model.encoder(_jpeg_roundtrip(imgs, math.exp(rng.uniform(lo, hi)), pool))
        recalibrate_bn(model, bn_ds, batches=max(1, min(10, len(bn_ds) // max(1, bs))), batch_size=bs, seed=seed,
                       forward=fwd, device=device)
    elif method == "sequential":
        _recalibrate_sequential(model, prof, data, bs, 10, rng, seed, device)
    if pool:
        pool.shutdown()
    model.eval()
    return time.time() - t0, {k: round(x, 4) for k, x in ema.items()}


def codec_cache(compressor, ds: MultiViewDataset, objects: int, batch_views: int = 20, progress: bool = True,
                device: str = "cpu", bfloat16: bool = False) -> dict[str, torch.Tensor]:
    """N_small's codes and decoded images of the first ``objects`` items of ``ds``, at every rate, made once.

    One pass of ``max_iterations`` iterations per view gives every rate at once (additive reconstruction:
    the image after N iterations is the running sum of the first N outputs, Eq. 14).

    ``bfloat16`` runs N_small under bfloat16 autocast (the profile's ``codec_cache_bf16``, where the CPU
    has it natively: :func:`voxlink.models.fusion.native_bf16`): 1.7x faster on this project's 2-core
    AVX-512 BF16 host (0.047 against 0.080 s a view), PSNR the same to 0.01 dB at every N; a few bits of
    a code can come out otherwise than in float32. The benchmark's scores always decode in float32.

    Returns:
        ``codes`` float32 [P, V, N_max, m] in {-1, +1}; ``images`` uint8 [P, V, N_max, 3, H, W] (the
        decoded view after 1..N_max iterations); ``occupancy`` float32 [P, R, R, R].
    """
    from tqdm import tqdm

    nmax = compressor.cfg.max_iterations
    p = min(objects, len(ds))
    per = max(1, batch_views // ds.max_views)  # objects a batch: only their float views are held at once
    codes, images, occupancy = [], [], []
    compressor.eval()
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bfloat16):
        for i in tqdm(range(0, p, per), desc="codec cache", unit="batch", disable=not progress):
            items = [ds[j] for j in range(i, min(p, i + per))]
            occupancy += [it["occupancy"] for it in items]
            o = compressor(torch.cat([it["images"] for it in items]).to(device), nmax)
            codes.append(o["codes"].float().cpu())
            images.append((o["recon"].float().clamp(0, 1) * 255).round().byte().cpu())
    v = len(codes[0]) // min(p, per)
    return {"codes": torch.cat(codes).view(p, v, nmax, -1), "images": torch.cat(images).view(p, v, *images[0].shape[1:]),
            "occupancy": torch.stack(occupancy)}


def _train_from_codec(method: str, model: JointModel, prof: Profile, data: Path, seed: int, progress: bool,
                      device: str) -> tuple[float, dict]:
    """The sequential or direct model started from a pre-trained N_small (``prof.codec``, already loaded
    by :func:`build`), in two stages.

    1. The 3D part alone, ``prof.steps`` steps of ``prof.batch_size`` objects, on the frozen codec's
       output (:func:`codec_cache` of ``prof.codec_pool`` training objects, all when None, and
       ``prof.codec_views`` views of each; ``prof.codec_shuffle_views``: drawn in a random order): the sequential model's
       3D-R2N2 on decoded images, the direct model's 3D network on the codes (Eq. 15); 1..max_views views
       and N drawn per batch (:func:`_draw_iterations`).
    2. Everything jointly (Eq. 16), ``prof.joint_steps`` steps of ``prof.joint_batch`` objects, N_small at
       ``prof.comp_lr``, the 3D part at ``prof.lr`` x 0.2; with ``prof.joint_freeze_bn`` the 3D part's
       BatchNorm layers keep their running statistics (eval mode) through this stage.

    This departs from the paper, which trains both from scratch (docs/results.md says why: on 2 CPU cores
    N_small does not learn to compress inside the joint loss's budget).

    Returns:
        ``(seconds, final running-mean losses)`` as :func:`train_method`.
    """
    from voxlink.models.fusion import native_bf16
    from voxlink.train import TrainConfig, _collate, batches_forever, batchnorm_layers, run_loop

    rng = np.random.default_rng(seed)
    t0 = time.time()
    model.to(device)
    model.recon.decoder.init_prior(_mean_grid(data, prof.frame).to(device))
    # the same frozen codec on the same views for both models: made once per run
    cviews = prof.codec_views or prof.max_views
    key = (prof.codec, str(Path(data).resolve()), manifest_hash(data), prof.codec_pool, cviews, prof.frame, seed,
           prof.codec_cache_bf16)
    if key not in _CODEC_CACHES:
        _CODEC_CACHES.clear()
        pool_ds = MultiViewDataset(data, "train", cviews, train=True, frame=prof.frame, seed=seed)
        _CODEC_CACHES[key] = codec_cache(model.compressor, pool_ds, prof.codec_pool or len(pool_ds), progress=progress,
                                         device=device, bfloat16=prof.codec_cache_bf16 and native_bf16())
    cache = _CODEC_CACHES[key]
    p, nmax, cv = len(cache["occupancy"]), model.cfg.compression.max_iterations, cache["codes"].shape[1]
    bs = max(1, min(prof.batch_size, p))
    for q in model.compressor.parameters():
        q.requires_grad_(False)
    params = list(model.recon.parameters()) + (list(model.code_encoder.parameters()) if model.code_encoder else [])
    opt = torch.optim.Adam(params, lr=prof.lr)
    for g in opt.param_groups:
        g["base_lr"] = prof.lr
    model.train()
    model.compressor.eval()

    def batches():
        """Random objects of the cache, forever."""
        while True:
            yield torch.from_numpy(rng.choice(p, bs, replace=p < bs))

    def stage1_step(idx):
        """Eq. 15 on the frozen codec's output: ``idx`` int64 [B] objects of the cache."""
        v, n = int(rng.integers(1, prof.max_views + 1)), _draw_iterations(rng, prof, nmax)
        target = cache["occupancy"][idx].to(device)
        # v of the object's cached views: in a random order, or the first ones
        if prof.codec_shuffle_views:
            pick = torch.from_numpy(np.stack([rng.permutation(cv)[:v] for _ in range(len(idx))]))
        else:
            pick = torch.arange(v).expand(len(idx), v)
        rows = idx[:, None]
        if method == "direct":
            logits = model.recon.fuse(model.code_vectors(cache["codes"][rows, pick, :n].to(device)))
        else:
            logits = model.recon(cache["images"][rows, pick, n - 1].to(device).float() / 255.0)
        l3d = occupancy_loss(logits, target)
        return {"loss": l3d, "loss_3d": l3d}, {}, {}

    tcfg = TrainConfig(steps=prof.steps, lr=prof.lr, lr_decay=0.2, decay_at=0.75, val_every=prof.steps + 1,
                       checkpoint_minutes=float("inf"))
    _, _, ema = run_loop(model, opt, tcfg, None, 0, 0.0, batches(), stage1_step, lambda at: {},
                         lambda at, secs: None, progress=progress)
    for q in model.compressor.parameters():
        q.requires_grad_(True)
    if prof.joint_steps:
        train_ds = MultiViewDataset(data, "train", prof.max_views, train=True, frame=prof.frame)
        jb = max(1, min(prof.joint_batch, len(train_ds)))
        loader = torch.utils.data.DataLoader(train_ds, batch_size=jb, shuffle=True, collate_fn=_collate,
                                             drop_last=True, generator=torch.Generator().manual_seed(seed + 1))
        comp_lr = prof.comp_lr or prof.lr
        opt = torch.optim.Adam([{"params": list(model.compressor.parameters()), "lr": comp_lr},
                                {"params": params, "lr": prof.lr * 0.2}])
        for g, lr in zip(opt.param_groups, (comp_lr, prof.lr * 0.2)):
            g["base_lr"] = lr
        model.train()
        if prof.joint_freeze_bn:
            for bn in batchnorm_layers(model.recon):
                bn.eval()

        def joint_step(batch):
            """Eq. 16 on fresh training views: ``batch`` as :func:`train_method`'s."""
            return _joint_losses(model, batch, rng, prof, device), {}, {}

        tcfg = TrainConfig(steps=prof.joint_steps, lr=prof.lr, lr_decay=1.0, decay_at=1.0,
                           val_every=prof.joint_steps + 1, checkpoint_minutes=float("inf"))
        _, _, ema2 = run_loop(model, opt, tcfg, None, 0, 0.0, batches_forever(loader), joint_step, lambda at: {},
                              lambda at, secs: None, progress=progress)
        ema.update({f"joint_{k}": x for k, x in ema2.items()})
    if method == "sequential":
        _recalibrate_sequential(model, prof, data, bs, 4, rng, seed, device)
    model.eval()
    return time.time() - t0, {k: round(x, 4) for k, x in ema.items() if "loss" in k}


# -- evaluation -------------------------------------------------------------------------------------
@torch.no_grad()
def score(method: str, model, ds: MultiViewDataset, n: int, ratio: float | None = None, iterations: int | None = None,
          jpeg_pool: ThreadPoolExecutor | None = None, device: str = "cpu") -> dict:
    """Per-object IoU@V of one model at one ratio on the first ``n`` objects of ``ds`` (V: the dataset's
    views per object), through :func:`voxlink.evaluate.evaluate_dataset` (the loop ``voxlink eval`` and
    training validation use), each object reconstructed by this method from its V views.

    ``iterations`` is N for the sequential and direct models; ``ratio`` the target of JPEG 2000.

    Returns:
        ``{"iou": float64 [n], "bytes": mean bytes per view, "bytes_no_header", "ratio": achieved
        ratio, "reachable": bool, "iterations", "code_bits"}`` (keys that do not apply are None).
    """
    from voxlink.evaluate import evaluate_dataset
    from voxlink.jpeg2000 import encode_at_ratio

    nbytes, nbytes_nh, reachable, raw = [], [], [True], [0]
    info: dict = {"iterations": None, "code_bits": None, "bytes_no_header": None}

    def reconstruct(images: torch.Tensor) -> torch.Tensor:
        """One object's views [V, 3, H, W] -> occupancy probabilities [1, R, R, R] by this method."""
        if method in ("implicit", "uncompressed"):
            logits = model(images[None])["logits"]
        elif method in ("sequential", "direct"):
            logits = model(images[None], iterations)["logits"]
            info["iterations"] = iterations
        elif method == "jpeg2000":
            raw[0] = images[0].numel()  # bytes of one uint8 view
            res = list(jpeg_pool.map(lambda im: encode_at_ratio(im, ratio, steps=4), _to_uint8(images.cpu())))
            reachable[0] &= all(r.reachable for r in res)
            nbytes.extend(r.bytes for r in res)
            nbytes_nh.extend(r.bytes_no_header for r in res)
            logits = model(_from_uint8(np.stack([r.image for r in res])).to(device)[None])
        else:
            raise ValueError(method)
        return torch.softmax(logits, 1)[:, 1]

    sc = evaluate_dataset(model, ds, n, views=ds.max_views, device=device, reconstruct=reconstruct)
    out = {"iou": sc["iou"][:, -1].astype(np.float64), "reachable": bool(reachable[0]), **info}
    if method == "jpeg2000":
        out["bytes"] = float(np.mean(nbytes))
        out["bytes_no_header"] = float(np.mean(nbytes_nh))
        out["ratio"] = raw[0] / out["bytes"]
    return out


def run(data: str | Path, out: str | Path, prof: Profile, methods: tuple[str, ...] = METHODS, seed: int = 0,
        retrain: bool = False, progress: bool = True, device: str = "cpu") -> list[dict]:
    """Train what is missing, score every method at every ratio, write the CSV, JSON, plot and table.

    Args:
        data: a voxlink dataset with train and test splits (``voxlink data make``).
        out: output folder (``models/`` inside it keeps the trained models).
        prof: the profile.
        methods: subset of :data:`METHODS`.
        seed: seed of training and evaluation.
        retrain: ignore saved models.
        progress: progress bars.
        device: ``cpu`` or ``cuda`` (training and evaluation; OpenJPEG runs on the CPU).

    Returns:
        the CSV rows as dicts.

    Raises:
        voxlink.data.store.DatasetError: bad dataset. ValueError: unknown method, or an empty split.
    """
    from voxlink.train import best_threshold, git_commit

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    data, out = Path(data), Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    if prof.threads:
        torch.set_num_threads(prof.threads)
    manifest, commit = manifest_hash(data), git_commit()
    try:  # never every object instead: the methods are trained on the training split of the same data
        test_ds = MultiViewDataset(data, "test", 5, train=False, frame=prof.frame, seed=seed)
    except ValueError as e:
        raise ValueError(f"{e}: the benchmark scores the test split (voxlink data make --procedural N splits "
                         f"objects into train, val and test)") from None
    n = len(test_ds) if prof.eval_objects is None else min(len(test_ds), prof.eval_objects)
    t_start = time.time()
    rows, per_object = [], {}
    pool = ThreadPoolExecutor(2)

    def add(method, target, res, model_file="", train_s=None, bits=None):
        """Append one CSV row (and its per-object IoUs) from a :func:`score` result."""
        x = res["iou"]
        ratio = res.get("ratio") or target
        row = {"method": method, "target_ratio": target, "ratio": round(ratio, 2) if ratio else "",
               "reachable": res["reachable"], "bits_per_view": bits if bits is not None else "",
               "bytes_per_view": round(res["bytes"], 1) if res.get("bytes") else (bits / 8 if bits else ""),
               "bytes_per_view_no_header": round(res["bytes_no_header"], 1) if res.get("bytes_no_header") else "",
               "iterations": res.get("iterations") or "", "code_bits": res.get("code_bits") or "",
               "miou": round(float(x.mean()), 4) if len(x) else "", "miou_std": round(float(x.std()), 4) if len(x) else "",
               "miou_sem": round(float(x.std() / math.sqrt(len(x))), 4) if len(x) else "", "objects": len(x), "views": 5,
               "model_file": model_file, "data_manifest": manifest, "git_commit": commit,
               "train_seconds": round(train_s, 1) if train_s is not None else "", "profile": prof.name}
        rows.append(row)
        if len(x):
            per_object[f"{method}@{target}"] = [round(float(v), 4) for v in x]
        log.info("%s @ %s:1 -> mIoU %s (%s)", method, target, row["miou"], "reachable" if row["reachable"] else "NOT reachable")

    def get(method, code_bits=None):
        """The trained model of a method: loaded from ``OUT/models`` when it matches, else trained and saved."""
        model = build(method, prof, code_bits)
        name = method if code_bits is None else f"{method}-k{code_bits}"
        path = out / "models" / f"{name}.safetensors"
        expect = {"method": method, "profile": prof.name, "config": model.cfg.to_dict(), "data_manifest": manifest,
                  "steps": prof.steps, "batch_size": prof.batch_size, "seed": seed}
        if isinstance(model, JointModel) and prof.comp_lr:
            expect["comp_lr"] = prof.comp_lr
        if isinstance(model, JointModel) and prof.train_iterations:
            expect["train_iterations"] = list(prof.train_iterations)
        if isinstance(model, JointModel) and prof.codec:
            expect.update(codec=prof.codec, codec_fingerprint=pretrained_codec(prof.codec).fingerprint().hex(),
                          codec_pool=prof.codec_pool, joint_steps=prof.joint_steps, joint_batch=prof.joint_batch,
                          joint_freeze_bn=prof.joint_freeze_bn)
            # recorded where they are not the defaults, so that the models of earlier runs still match
            expect.update({k: getattr(prof, k) for k, default in (("codec_views", None), ("codec_shuffle_views", False),
                                                                  ("codec_cache_bf16", False))
                           if getattr(prof, k) != default})
        if method == "jpeg2000":  # its training views: codestreams without OpenJPEG's comment since 2026-12-07
            expect["jpeg2000_codestream"] = "without-comment"
        later = {"lr": prof.lr, "max_views": prof.max_views}
        if method == "jpeg2000":
            later["jpeg_train_ratios"] = list(prof.jpeg_train_ratios)
        meta = None if retrain else load_bench_model(path, model, expect, later)
        if meta is None:
            log.info("training %s: %d steps of %d objects (%s profile)", name, prof.steps, prof.batch_size, prof.name)
            secs, losses = train_method(method, model, prof, data, seed=seed, progress=progress, device=device)
            log.info("trained %s in %.1f min (final %s) -> %s", name, secs / 60, losses, path)
            meta = {**expect, **later, "train_seconds": round(secs, 1), "git_commit": commit, "final_losses": losses}
            save_bench_model(model, path, meta)
        model.to(device).eval()
        if isinstance(model, JointModel):
            streaming_model_file(model, meta, out / "streaming" / f"{name}-{prof.name}.safetensors")
        return model, str(path), meta.get("train_seconds")

    for method in methods:
        if method == "pose-aware":
            from voxlink.evaluate import evaluate_dataset
            from voxlink.weights import load_model, resolve

            model, _, _ = load_model(prof.pose_aware_model, device=device)
            sc = evaluate_dataset(model, test_ds, n, views=5, geometry=False, device=device)
            add("pose-aware", round(model.compression_ratio, 2),
                {"iou": sc["iou"][:, -1].astype(np.float64), "reachable": True, "ratio": model.compression_ratio,
                 "code_bits": model.cfg.code_bits}, str(resolve(prof.pose_aware_model)), None, bits=model.cfg.code_bits)
            continue
        if method == "mean-grid":
            mg = _mean_grid(data, prof.frame)
            try:
                val = MultiViewDataset(data, "val", 1, train=False, frame=prof.frame)
            except ValueError:
                val = MultiViewDataset(data, "train", 1, train=False, frame=prof.frame)
            thr, _ = best_threshold(mg, torch.stack([val[i]["occupancy"] for i in range(min(len(val), 256))]))
            x = np.array([float(iou(mg[None], test_ds[i]["occupancy"][None], thr)[0]) for i in range(n)])
            add("mean-grid", "", {"iou": x, "reachable": True, "ratio": None}, bits=0)
            rows[-1]["ratio"] = ""
            continue
        if method == "uncompressed":
            model, path, secs = get("uncompressed")
            res = score("uncompressed", model, test_ds, n, device=device)
            res["ratio"] = model.compression_ratio
            add("uncompressed", round(model.compression_ratio, 2), res, path, secs, bits=1024 * 32)
            continue
        if method == "implicit":
            for r in prof.ratios:
                k = implicit_bits(r)
                model, path, secs = get("implicit", k)
                res = score("implicit", model, test_ds, n, device=device)
                res["code_bits"], res["ratio"] = k, model.compression_ratio
                add("implicit", r, res, path, secs, bits=k)
            continue
        model, path, secs = get(method)
        floor = None
        for r in sorted(prof.ratios):
            if method in ("sequential", "direct"):
                m = model.compressor.bits_per_iteration
                n_it = RAW_BITS_128 / (m * r)
                if abs(n_it - round(n_it)) > 1e-6 or not 1 <= round(n_it) <= model.cfg.compression.max_iterations:
                    add(method, r, {"iou": np.array([]), "reachable": False, "ratio": None,
                                    "iterations": None}, path, secs)
                    continue
                res = score(method, model, test_ds, n, iterations=round(n_it), device=device)
                res["ratio"] = model.compression_ratio(round(n_it))
                add(method, r, res, path, secs, bits=m * round(n_it))
            else:
                if not (floor and not floor["reachable"]):  # past OpenJPEG's floor every target encodes the same
                    floor = score(method, model, test_ds, n, ratio=r, jpeg_pool=pool, device=device)
                add(method, r, floor, path, secs, bits=int(round(floor["bytes"] * 8)))
    pool.shutdown()
    _CODEC_CACHES.clear()
    elapsed = time.time() - t_start
    info = {"profile": prof.to_dict(), "data": str(data), "data_manifest": manifest, "git_commit": commit,
            "objects": n, "seconds": round(elapsed, 1), "machine": machine_description()}
    write_outputs(out, rows, per_object, info)
    return rows


def machine_description() -> str:
    """CPU model, core count, torch version and GPU (if any), in words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"


def write_outputs(out: Path, rows: list[dict], per_object: dict, info: dict) -> None:
    """``accuracy.csv``, ``accuracy.json``, ``accuracy.png`` and ``accuracy.md`` in ``out``."""
    with (out / "accuracy.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / "accuracy.json").write_text(json.dumps({"info": info, "rows": rows, "per_object": per_object}, indent=1))
    plot(rows, out / "accuracy.png", title=f"voxlink bench accuracy ({info['profile']['name']} profile, "
                                             f"{info['objects']} test objects, 5 views)")
    (out / "accuracy.md").write_text(markdown_table(rows, info))


LABELS = {"implicit": "implicit (Sec. III-C)", "sequential": "sequential (Sec. III-A)", "direct": "direct (Sec. III-B)",
          "jpeg2000": "3D-R2N2 on JPEG 2000"}
COLOURS = {"implicit": "black", "sequential": "tab:green", "direct": "tab:red", "jpeg2000": "tab:blue",
           "pose-aware": "tab:orange"}  # the first four as Fig. 8


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """mIoU vs compression ratio (log x), one line per method, error bars = 1 s.e.m. over objects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    for method in ("implicit", "sequential", "direct", "jpeg2000"):
        pts = [r for r in rows if r["method"] == method and r["miou"] != ""]
        ok = [r for r in pts if r["reachable"]]
        if ok:
            ok.sort(key=lambda r: float(r["ratio"]))
            ax.errorbar([float(r["ratio"]) for r in ok], [r["miou"] for r in ok], yerr=[r["miou_sem"] for r in ok],
                        marker="o", capsize=3, label=LABELS[method], color=COLOURS[method])
        bad = [r for r in pts if not r["reachable"]]
        if bad:  # JPEG 2000's floor: plotted at the ratio it really reached, hollow
            r = bad[0]
            ax.errorbar([float(r["ratio"])], [r["miou"]], yerr=[r["miou_sem"]], marker="o", mfc="none", capsize=3,
                        color=COLOURS[method], linestyle="none",
                        label=f"JPEG 2000 floor ({float(r['ratio']):.0f}:1); "
                              f"{', '.join(str(int(float(b['target_ratio']))) for b in bad)}:1 not reachable")
    unc = [r for r in rows if r["method"] == "uncompressed"]
    if unc:
        ax.plot([float(unc[0]["ratio"])], [unc[0]["miou"]], "s", color="magenta", ms=9,
                label=f"uncompressed ceiling ({float(unc[0]['ratio']):.0f}:1, float32 code)")
        ax.axhline(unc[0]["miou"], color="magenta", lw=0.8, ls=":")
    pa = [r for r in rows if r["method"] == "pose-aware"]
    if pa:
        ax.errorbar([float(pa[0]["ratio"])], [pa[0]["miou"]], yerr=[pa[0]["miou_sem"]], marker="*", ms=12, capsize=3,
                    color=COLOURS["pose-aware"], linestyle="none",
                    label=f"pose-aware, shipped {Path(pa[0]['model_file']).stem} (its own budget)")
    base = [r for r in rows if r["method"] == "mean-grid"]
    if base:
        ax.axhline(base[0]["miou"], color="grey", lw=1, ls="--", label="trivial baseline (mean training grid)")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (Eq. 12), log scale")
    ax.set_ylabel("mIoU, 5 views (Eq. 17, tau = 0.4)")
    ax.set_xlim(8, 1500)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict], info: dict) -> str:
    """The results as Markdown: mIoU per method (rows) and target ratio (columns), then the details."""
    ratios = sorted({float(r["target_ratio"]) for r in rows if r["method"] in LABELS and r["target_ratio"] != ""})
    lines = [f"# voxlink bench accuracy ({info['profile']['name']} profile)", "",
             f"mIoU at 5 views (Eq. 17, tau = 0.4) on {info['objects']} test objects of `{info['data']}` "
             f"(manifest `{info['data_manifest']}`), git `{info['git_commit'][:10]}`, "
             f"{info['seconds'] / 60:.1f} minutes on {info['machine']}.", "",
             "| method | " + " | ".join(f"{r:g}:1" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for method in ("implicit", "sequential", "direct", "jpeg2000"):
        cells = []
        for t in ratios:
            r = next((x for x in rows if x["method"] == method and x["target_ratio"] != "" and
                      float(x["target_ratio"]) == t), None)
            if r is None:
                cells.append("")
            elif r["miou"] == "":
                cells.append("not reachable")
            elif not r["reachable"]:
                cells.append(f"not reachable (floor {float(r['ratio']):.0f}:1: {r['miou']:.3f})")
            else:
                cells.append(f"{r['miou']:.3f} ± {r['miou_sem']:.3f}")
        if any(cells):
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    for r in rows:
        if r["method"] == "uncompressed":
            lines += ["", f"Uncompressed ceiling ({float(r['ratio']):.0f}:1, float32 code): **{r['miou']:.3f}** "
                          f"± {r['miou_sem']:.3f}."]
        if r["method"] == "mean-grid":
            lines += ["", f"Trivial baseline (mean training grid at its best threshold): **{r['miou']:.3f}**."]
        if r["method"] == "pose-aware":
            lines += ["", f"Pose-aware model as shipped (`{Path(r['model_file']).stem}`, {float(r['ratio']):.0f}:1, "
                          f"not trained at this profile: its own data and budget): **{r['miou']:.3f}** ± {r['miou_sem']:.3f}."]
    jp = [r for r in rows if r["method"] == "jpeg2000" and r["miou"] != ""]
    if jp:
        lines += ["", "JPEG 2000 bytes per view (codestream / without the main header): " + ", ".join(
            f"{float(r['target_ratio']):g}:1 -> {r['bytes_per_view']} / {r['bytes_per_view_no_header']} B "
            f"({float(r['ratio']):.0f}:1 reached)" for r in jp) + "."]
    lines += ["", "± is one standard error of the mean over objects. Each row of `accuracy.csv` names its model file.",
              ""]
    return "\n".join(lines)
