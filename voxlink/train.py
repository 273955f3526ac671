"""``voxlink train``: train an implicit model (3D-R2N2 protocol: random 1..5 views, Adam).

A training config is a TOML file with a ``[model]`` table (:class:`~voxlink.models.config.ModelConfig`)
and a ``[train]`` table (:class:`TrainConfig`); ``model = "cpu"`` (a string) names a built-in
model config instead. The run folder gets ``checkpoint.pt`` (resumable, written every few minutes),
``log.jsonl`` (one line per logged step) and the final ``model.safetensors``.

Data-parallel training: launch with ``torchrun --nproc_per_node N -m voxlink.cli train ...``;
each process takes every N-th batch of objects (DDP, gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from voxlink.data.dataset import MultiViewDataset
from voxlink.data.store import manifest_hash
from voxlink.models.config import ModelConfig, get_config
from voxlink.models.implicit import ImplicitModel, depth_loss, iou, occupancy_loss
from voxlink.weights import save_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training parameters.

    Attributes:
        data: dataset folder (made by ``voxlink data make``).
        make_data: if ``data`` has no manifest, the ``voxlink data make`` arguments to build it
            (``{"procedural": N, "views": V, "seed": S}``), so training can start from nothing.
        steps: optimiser steps.
        batch_size: objects per step.
        max_views: views per object are drawn in 1..max_views per step (3D-R2N2).
        lr: Adam learning rate; multiplied by ``lr_decay`` after ``decay_at`` of the steps.
        depth_weight: weight of the depth decoder's loss (it trains on detached codes).
        depth_views: views per step fed to the depth decoder.
        seed: seed of everything random in training.
        checkpoint_minutes: minutes between checkpoints.
        val_every: steps between validation passes.
        val_objects: objects of the validation split used per pass.
        workers: DataLoader worker processes.
        threads: torch intra-op threads (0 = torch's default).
        mask_weight: weight of the silhouette loss (fusion models).
        mask_edge_weight: extra weight of the pixels at the true silhouette's boundary in that loss
            (fusion models; :func:`voxlink.train_fusion.view_losses`): 0 = plain BCE.
        min_views: views per object are drawn in min_views..max_views (fusion models).
        views_draw: how (fusion models): ``uniform`` over min_views..max_views, or ``log``: log-uniform
            (:func:`voxlink.train_fusion.draw_views`), so that a refiner trained for up to 24 views still
            sees few views as often as before.
        mesh_share: share of the training draws made from objects rendered from real meshes (source
            ``mesh:``), the rest from procedural ones, by a seeded weighted sampler with replacement
            (:func:`voxlink.train_fusion.source_weights`; fusion models); 0: every object equally
            often (a shuffle, as before).
        heading: ``canonical`` or ``random`` (a fresh yaw per object and step: fusion models).
        backgrounds: ``plain`` or ``textured`` training backgrounds (:mod:`voxlink.data.backgrounds`).
        pose_noise_deg, pose_noise_m: pose noise in training, up to these magnitudes per view
            (degrees, metres; fusion models).
        pose_noise_floor: the least share of those maxima a view's noise has (0: uniform from none).
        pose_noise_share: share of the training objects whose views get that noise, drawn per object
            and step; the others keep exact poses (1: every object, as before), so that a refiner that
            reads a tight hull beside the wide one (``tight_footprint``) sees exact poses too.
        bf16: bfloat16 autocast on the CPU (fusion models).
        channels_last: channels-last memory formats for the 2D encoder and decoder and the 3D refiner (fusion
            models; :meth:`FusionModel.to_channels_last`).
        warm_start: model file or shipped name whose matching weights (same name and shape) start
            the run (fusion models); with ``distill_from``, what the teacher does not give (the student's
            view decoder, e.g. from an earlier distillation).
        distill_from: model file or shipped name of a fusion model whose view decoder this run distils
            into a smaller one (fusion models): E_K and the 3D refiner are copied from it and frozen (the
            same codes bit for bit), and only the view decoder trains, on the teacher's depth maps and
            silhouettes of the same codes (:func:`voxlink.train_fusion.distill_losses`).
        trainable: comma-separated parts of a fusion model that train (``encoder``, ``depth``,
            ``refiner``); the others are frozen in eval mode, their BatchNorm statistics kept (with
            ``encoder`` frozen every code stays the same, bit for bit). Empty: all of them.
        cached_codes: with ``trainable = "depth"`` (fusion models): E_K is frozen, so a view's code is
            the same at every step; every view of the training split is encoded once (over the
            configured ``backgrounds``, one draw per view) and the view decoder trains on those codes,
            ``batch_size`` *views* a step, silhouette BCE (``mask_weight``) and depth L1 (``depth_weight``)
            (:func:`voxlink.train_fusion.train_view_decoder`): no image is encoded and no grid fused in a step.
        patch_size: side in pixels of the training patches (image codecs: :mod:`voxlink.train_codec`).
        bank_views: rendered views held in memory to crop the patches from (image codecs).
    """

    data: str = "data/proc"
    make_data: dict = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 16
    max_views: int = 5
    lr: float = 5e-4
    lr_decay: float = 0.2
    decay_at: float = 0.75
    depth_weight: float = 1.0
    depth_views: int = 8
    seed: int = 0
    checkpoint_minutes: float = 5.0
    val_every: int = 200
    val_objects: int = 64
    workers: int = 0
    threads: int = 0
    mask_weight: float = 1.0
    mask_edge_weight: float = 0.0
    min_views: int = 1
    views_draw: str = "uniform"
    mesh_share: float = 0.0
    heading: str = "canonical"
    backgrounds: str = "plain"
    pose_noise_deg: float = 0.0
    pose_noise_m: float = 0.0
    pose_noise_floor: float = 0.0
    pose_noise_share: float = 1.0
    bf16: bool = False
    channels_last: bool = False
    warm_start: str = ""
    distill_from: str = ""
    trainable: str = ""
    cached_codes: bool = False
    patch_size: int = 32
    bank_views: int = 4096

    def __post_init__(self):
        if not 0.0 <= self.pose_noise_share <= 1.0:
            raise ValueError(f"pose_noise_share must be in [0, 1], got {self.pose_noise_share}")


def load_train_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a training TOML (``[model]`` table or ``model = "name"``, and ``[train]``).

    A ``[model]`` table with ``family = "fusion"`` (or a fusion config name such as ``fusion-cpu``)
    gives a :class:`voxlink.models.fusion.FusionConfig`, one with ``family = "codec"`` N_small's
    :class:`voxlink.models.rnn_compress.CompressionConfig`; anything else an implicit model's config.

    Raises:
        FileNotFoundError: no file. ValueError: unknown keys or model name.
    """
    from voxlink.models.fusion import FUSION_CONFIGS, FusionConfig

    d = tomllib.loads(Path(path).read_text())
    m = d.get("model", "cpu")
    if isinstance(m, dict) and m.get("family") == "codec":
        from voxlink.models.rnn_compress import CompressionConfig

        mcfg = CompressionConfig.from_dict({k: v for k, v in m.items() if k != "family"})
    elif isinstance(m, str) and m in FUSION_CONFIGS:
        mcfg = dataclasses.replace(FUSION_CONFIGS[m])
    elif isinstance(m, dict) and m.get("family") == "fusion":
        mcfg = FusionConfig.from_dict({k: v for k, v in m.items() if k != "family"})
    else:
        mcfg = get_config(m) if isinstance(m, str) else ModelConfig.from_dict(m)
    if isinstance(m, str) and "model_overrides" in d:
        mcfg = dataclasses.replace(mcfg, **d["model_overrides"])
    t = d.get("train", {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(t) - names:
        raise ValueError(f"unknown [train] keys in {path}: {sorted(set(t) - names)}")
    return mcfg, TrainConfig(**t)


def git_commit() -> str:
    """The current git commit of the voxlink checkout, or ``"unknown"``."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _collate(items: list[dict]) -> dict:
    out = {}
    for k in items[0]:
        v = [it[k] for it in items]
        out[k] = torch.stack(v) if isinstance(v[0], torch.Tensor) else torch.tensor(v)
    return out


def mean_grid(ds: MultiViewDataset, limit: int = 512) -> torch.Tensor:
    """Mean training occupancy (in the dataset's frame) over up to ``limit`` objects: float32 [R, R, R]."""
    idx = np.linspace(0, len(ds) - 1, min(limit, len(ds))).round().astype(int)
    acc = None
    for i in idx:
        occ = ds[int(i)]["occupancy"]
        acc = occ.clone() if acc is None else acc + occ
    return acc / len(idx)


def best_threshold(grid: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Threshold of a constant prediction ``grid`` with the best mIoU on ``targets`` [N, R, R, R].

    Returns:
        ``(threshold, miou)``.
    """
    best = (0.5, -1.0)
    for t in np.linspace(0.02, 0.9, 45):
        m = float(iou(grid.expand_as(targets), targets, float(t)).mean())
        if m > best[1]:
            best = (float(t), m)
    return best


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every BatchNorm layer (1d, 2d, 3d) of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, ds: MultiViewDataset, batches: int = 40, batch_size: int = 16,
                   device="cpu", seed: int = 0, forward=None) -> None:
    """Recompute the BatchNorm running statistics of the encoder as a plain average over training views.

    During training the pre-activations drift faster than BatchNorm's running averages follow, so
    eval-mode codes (what the drone sends) used stale statistics: measured here, val mIoU@5 0.05 with
    the running averages against 0.30 with batch statistics at step 150. This pass (cumulative
    average, ``momentum=None``) makes eval mode match the final weights.

    Args:
        ds: training dataset (items with ``images`` [V, 3, H, W]).
        batches, batch_size: objects seen = batches * batch_size (all their views).
        forward: what to run on each batch of views float32 [N, 3, H, W] (default ``model.encoder``;
            models whose normalised layers see something else pass their own).
    """
    norms = batchnorm_layers(model)
    if not norms:
        return
    was = model.training
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[: batches * batch_size]
    for i in range(0, len(idx), batch_size):
        imgs = torch.cat([ds[int(j)]["images"] for j in idx[i:i + batch_size]]).to(device)
        (forward or model.encoder)(imgs)
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.train(was)


def validate(model: ImplicitModel, ds: MultiViewDataset, n: int, device) -> dict:
    """mIoU@5 (tau = 0.4), distinct predictions and the share of code bits that vary across objects, on
    the first ``n`` objects of ``ds`` (:func:`voxlink.evaluate.evaluate_dataset`, as ``voxlink eval``);
    the model is back in training mode after it."""
    from voxlink.evaluate import evaluate_dataset

    sc = evaluate_dataset(model, ds, n, views=5, geometry=False, device=device)
    model.train()
    return {"val_miou5": float(sc["iou"][:, -1].mean()), "val_distinct_predictions": sc["distinct_predictions"],
            "val_bits_varying": sc["bits_varying"]}


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, elapsed: float,
                    mcfg, tcfg: TrainConfig) -> None:
    """Write a resumable checkpoint (weights, optimiser, step, wall-clock seconds, RNG states, configs)
    atomically: a temporary file, then a rename, so that a run killed mid-write keeps the last one."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                "torch_rng": torch.get_rng_state(), "np_rng": np.random.get_state(),
                "model_config": mcfg.to_dict(), "train_config": dataclasses.asdict(tcfg)}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device="cpu") -> tuple[int, float]:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` and ``opt``.

    Returns:
        ``(step, elapsed seconds)``.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    st = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    torch.set_rng_state(st["torch_rng"])
    np.random.set_state(st["np_rng"])
    log.info("resumed from %s at step %d", path, st["step"])
    return st["step"], st.get("elapsed", 0.0)


def open_train_log(out: Path, step: int):
    """Open ``out/log.jsonl`` for appending, resuming at ``step``: lines of later steps (logged after the
    checkpoint a resumed run starts from, so done again by it) are dropped first, so that every step
    is in the log once. Returns the open text file.
    """
    path = out / "log.jsonl"
    if path.is_file():
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) > step:
                    continue
            except ValueError:
                continue  # a torn last line of a killed run
            kept.append(line)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(path)
    return path.open("a")


def run_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, tcfg: TrainConfig, out: Path | None, step: int, elapsed: float,
             batches, train_step, validate_fn, save_ckpt, log_every: int = 10, clip: float | None = None,
             progress: bool = True, main: bool = True) -> tuple[int, float, dict[str, float]]:
    """The one training loop of every family (:func:`train`, :func:`voxlink.train_fusion.train_fusion`,
    :func:`voxlink.train_codec.train_codec`, and the benchmark's :func:`voxlink.bench.accuracy.train_method`): learning-rate schedule, optimiser step, running means,
    validation, the log and checkpoints; the family gives its batches, its step and its validation.

    Each step: the learning rate is ``tcfg.lr``, times ``tcfg.lr_decay`` from ``tcfg.decay_at * tcfg.steps``
    on; ``train_step(batch)`` returns ``(losses, metrics, info)``: ``losses`` a dict of scalar tensors
    with the total under ``"loss"`` (backpropagated), ``metrics`` floats (logged, like the losses, as
    running means with factor 0.95), ``info`` values logged as they are (``views``); then
    ``validate_fn(step)`` every ``tcfg.val_every`` steps and at the last (its dict joins that step's
    record), a line of ``out/log.jsonl`` every ``log_every`` steps and at each validation
    (:func:`open_train_log`: a resumed run logs each step once), and ``save_ckpt(step, elapsed)`` every
    ``tcfg.checkpoint_minutes`` and at the end.

    Args:
        out: the run folder (None: no log; the benchmark's runs).
        step, elapsed: where the run starts (0 and 0.0, or a checkpoint's; seconds).
        batches: an iterable of batches, long enough for the remaining steps.
        clip: clip the gradient norm of the optimised parameters to this (None: no clipping).
        progress: a progress bar. main: this process logs, validates and checkpoints (rank 0).

    Returns:
        ``(step, elapsed seconds, running means)`` at the end.

    Raises:
        FloatingPointError: a loss that is not finite (the checkpoint before it is kept).
    """
    from tqdm import tqdm

    logf = open_train_log(out, step) if main and out is not None else None
    bar = tqdm(total=tcfg.steps, initial=step, desc="train", unit="step", disable=not progress or not main)
    last_ckpt, t_start = time.time(), time.time() - elapsed
    params = [q for g in opt.param_groups for q in g["params"]]
    ema: dict[str, float] = {}
    t_data = time.perf_counter()
    try:
        for batch in batches:
            if step >= tcfg.steps:
                break
            t_ready = time.perf_counter()
            factor = tcfg.lr_decay if step >= tcfg.decay_at * tcfg.steps else 1.0
            lr = tcfg.lr * factor
            for g in opt.param_groups:  # a group with its own "base_lr" decays from that
                g["lr"] = g.get("base_lr", tcfg.lr) * factor
            losses, metrics, info = train_step(batch)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            step += 1
            cur = {k: float(x.detach()) for k, x in losses.items()}
            if not math.isfinite(cur["loss"]):
                raise FloatingPointError(f"loss is {cur['loss']} at step {step}")
            cur.update(metrics)
            cur.update({"data_s": t_ready - t_data, "compute_s": time.perf_counter() - t_ready})
            for k, x in cur.items():
                ema[k] = x if k not in ema else 0.95 * ema[k] + 0.05 * x
            elapsed = time.time() - t_start
            bar.update(1)
            bar.set_postfix({k: f"{x:.3f}" for k, x in ema.items() if not k.endswith("_s")})
            rec = {"step": step, **info, "lr": lr, "elapsed_s": round(elapsed, 1), **{k: round(x, 5) for k, x in ema.items()}}
            validated = False
            if main and (step % tcfg.val_every == 0 or step == tcfg.steps):
                rec.update(validate_fn(step))
                validated = True
                log.info("step %d: %s", step, {k: v for k, v in rec.items() if k.startswith("val")})
            if logf and (step % log_every == 0 or validated):
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            if main and time.time() - last_ckpt > 60 * tcfg.checkpoint_minutes:
                save_ckpt(step, elapsed)
                last_ckpt = time.time()
            t_data = time.perf_counter()
    finally:
        bar.close()
        if logf:
            logf.close()
    if main:
        save_ckpt(step, elapsed)
    return step, elapsed, ema


def batches_forever(loader, set_epoch=None):
    """The batches of a DataLoader, epoch after epoch (``set_epoch(epoch)`` before each, for a
    distributed sampler), for :func:`run_loop`."""
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1


def train(mcfg: ModelConfig, tcfg: TrainConfig, out: str | Path, resume: bool = False, device: str = "cpu",
          command: str = "", progress: bool = True) -> Path:
    """Train an implicit model and write ``out/model.safetensors``.

    Args:
        mcfg: model architecture.
        tcfg: training parameters.
        out: run folder.
        resume: continue from ``out/checkpoint.pt``.
        device: ``cpu`` or ``cuda``.
        command: the command line, recorded in the model file.
        progress: show a progress bar.

    Returns:
        path of the final model file.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint. voxlink.data.store.DatasetError: bad data.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed + rank)
    np.random.seed(tcfg.seed + rank)

    data = Path(tcfg.data)
    if not (data / "manifest.json").is_file() and tcfg.make_data:
        from voxlink.data.make import MakeConfig, make_dataset, plan_jobs

        md = tcfg.make_data
        log.info("no dataset at %s: making it (%s)", data, md)
        jobs = plan_jobs(int(md.get("procedural", 1000)), [], int(md.get("seed", 0)))
        make_dataset(data, jobs, MakeConfig(views=int(md.get("views", 24)), seed=int(md.get("seed", 0))),
                     workers=int(md.get("workers", 2)), progress=progress)
    train_ds = MultiViewDataset(data, "train", tcfg.max_views, train=True, frame=mcfg.frame, with_depth=True)
    try:
        val_ds = MultiViewDataset(data, "val", 5, train=False, frame=mcfg.frame)
    except ValueError:  # a small dataset may have no validation objects: validate on training objects
        log.warning("%s has no validation split; validating on training objects", data)
        val_ds = MultiViewDataset(data, "train", 5, train=False, frame=mcfg.frame)
    if len(train_ds) < tcfg.batch_size * world:
        log.warning("only %d training objects: batch size %d -> %d", len(train_ds), tcfg.batch_size,
                    max(1, len(train_ds) // world))
        tcfg = dataclasses.replace(tcfg, batch_size=max(1, len(train_ds) // world))
    sampler = (torch.utils.data.DistributedSampler(train_ds, seed=tcfg.seed) if world > 1 else None)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=tcfg.batch_size, shuffle=sampler is None,
                                         sampler=sampler, num_workers=tcfg.workers, collate_fn=_collate,
                                         drop_last=True, persistent_workers=tcfg.workers > 0)

    model = ImplicitModel(mcfg).to(device)
    prior = mean_grid(MultiViewDataset(data, "train", 1, train=False, frame=mcfg.frame))
    bn_ds = MultiViewDataset(data, "train", tcfg.max_views, train=False, frame=mcfg.frame)
    model.decoder.init_prior(prior.to(device))
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    step, elapsed = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if resume:
        step, elapsed = load_checkpoint(ckpt, model, opt, device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def _save_ckpt(at: int, secs: float):
        save_checkpoint(ckpt, model, opt, at, secs, mcfg, tcfg)

    rng = np.random.default_rng([tcfg.seed, rank, step])
    model.train()

    def train_step(batch):
        """One step's losses (Eq. 15 on the grid, the depth decoder's loss on detached codes), the batch
        IoU and the views drawn, for :func:`run_loop`.

        Args:
            batch: the collated batch: ``images`` float32 [B, V, 3, H, W], ``occupancy`` [B, R, R, R],
                ``depth`` float32 [B, V, H, W] metres.
        """
        # a dataset with fewer views than max_views: at most what it has
        v = int(rng.integers(1, min(tcfg.max_views, batch["images"].shape[1]) + 1))
        images = batch["images"][:, :v].to(device)
        target = batch["occupancy"].to(device)
        outp = net(images)
        l3d = occupancy_loss(outp["logits"], target)
        # depth decoder: a few views per step, on detached codes (the codec is trained by L_3D only)
        b = images.shape[0]
        pick = torch.as_tensor(rng.choice(b * v, size=min(tcfg.depth_views, b * v), replace=False))
        true_depth = batch["depth"][:, :v].flatten(0, 1)[pick].to(device)
        ld = depth_loss(outp["depth"].flatten(0, 1)[pick], outp["mask_logit"].flatten(0, 1)[pick], true_depth)
        with torch.no_grad():
            bi = float(iou(torch.softmax(outp["logits"], 1)[:, 1], target).mean())
        return {"loss": l3d + tcfg.depth_weight * ld, "loss3d": l3d, "loss_depth": ld}, {"iou": bi}, {"views": v}

    def validate_fn(at: int) -> dict:
        """BatchNorm statistics recomputed, then :func:`validate` at step ``at``; warns when the codes or
        the predictions collapse."""
        recalibrate_bn(model, bn_ds, batches=10, device=device, seed=at)
        r = validate(model, val_ds, tcfg.val_objects, device)
        if r["val_bits_varying"] < 0.5 and mcfg.binarize:
            log.warning("alarm: only %.0f %% of code bits vary across objects", 100 * r["val_bits_varying"])
        if r["val_distinct_predictions"] <= 2:
            log.warning("alarm: validation predictions are (nearly) all identical")
        return r

    step, elapsed, ema = run_loop(model, opt, tcfg, out, step, elapsed,
                                  batches_forever(loader, sampler.set_epoch if sampler is not None else None),
                                  train_step, validate_fn, _save_ckpt, progress=progress, main=rank == 0)
    final = out / "model.safetensors"
    if rank == 0:
        recalibrate_bn(model, bn_ds, batches=100, device=device)
        mg = prior
        val_t = torch.stack([val_ds[i]["occupancy"] for i in range(min(len(val_ds), 256))])
        thr, base_miou = best_threshold(mg, val_t)
        meta = {"command": command, "data": str(data), "data_manifest": manifest_hash(data), "git_commit": git_commit(),
                "train_config": dataclasses.asdict(tcfg), "steps": step, "train_seconds": round(elapsed, 1),
                "final": {k: round(x, 4) for k, x in ema.items()}, "baseline_threshold": thr,
                "baseline_val_miou": round(base_miou, 4), "frame": mcfg.frame}
        save_model(model, final, meta=meta, extra={"mean_grid": mg, "baseline_threshold": torch.tensor([thr])})
        log.info("wrote %s (%d steps, %.1f min)", final, step, elapsed / 60)
    if world > 1:
        torch.distributed.destroy_process_group()
    return final
