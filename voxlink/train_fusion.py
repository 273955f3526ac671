"""Training of the pose-aware fusion model (:mod:`voxlink.models.fusion`).

Each step takes ``batch_size`` objects with ``min_views..max_views`` views each, as a drone flies them:
a fresh random heading per object (the grid turns with it; the model is given the poses in the grid's
frame), the orbit's random elevation and distance per view, textured backgrounds, and per-view pose
noise. The loss is Golts & Schechner Eq. 15 on the refined grid plus the silhouette (BCE) and depth
(L1 on the true silhouette, metres) losses of every view, all through the binarizer's
straight-through gradient, so that the K bits carry the silhouette and depth the ground needs.

With ``cached_codes`` (and ``trainable = "depth"``) only the view decoder trains, on the codes of every
training view encoded once by the frozen E_K (:func:`encode_training_views`): the same codes a drone
sends, ``batch_size`` views a step, no image encoded and no grid fused in a step.

The run folder gets ``checkpoint.pt`` (resumable), ``log.jsonl`` and ``model.safetensors``, like
:func:`voxlink.train.train`; ``warm_start`` copies the matching weights of another model file (the
shipped implicit model's E_K and depth decoder, or an earlier fusion model) before step 0.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from voxlink.data.dataset import MultiViewDataset
from voxlink.data.store import manifest_hash
from voxlink.models.fusion import FusionConfig, FusionModel, native_bf16
from voxlink.models.implicit import iou, occupancy_loss
from voxlink.models.projection import perturb_poses
from voxlink.train import (TrainConfig, _collate, batches_forever, best_threshold, git_commit, load_checkpoint,
                           mean_grid, recalibrate_bn, run_loop, save_checkpoint)

log = logging.getLogger(__name__)


def fusion_losses(out: dict, target: torch.Tensor, true_depth: torch.Tensor,
                  edge_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """The three losses of a fusion model's training step.

    Args:
        out: :meth:`FusionModel.forward`'s dict. target: float [B, R, R, R] (0/1).
        true_depth: float [B, V, H, W] metres (0 = background).
        edge_weight: extra weight of the silhouette's boundary pixels (:func:`view_losses`).

    Returns:
        ``loss3d`` (Eq. 15), ``loss_mask`` (BCE of the silhouette), ``loss_depth`` (L1 in metres on the
        true silhouette), each a scalar.
    """
    lm, ld = view_losses(out["depth"], out["mask_logit"], true_depth, edge_weight)
    return {"loss3d": occupancy_loss(out["logits"].float(), target), "loss_mask": lm, "loss_depth": ld}


def silhouette_edges(mask: torch.Tensor) -> torch.Tensor:
    """Pixels within one pixel of a silhouette's boundary (on either side): its 3 x 3 dilation minus its
    3 x 3 erosion. A part one to three pixels wide (a chair's leg at 2 m) is boundary all through.

    Shape:
        mask float [..., H, W] in {0, 1} -> float [..., H, W] in {0, 1}.
    """
    x = mask.reshape(-1, 1, *mask.shape[-2:])
    dil = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    ero = -torch.nn.functional.max_pool2d(-x, 3, stride=1, padding=1)
    return (dil - ero).view(mask.shape)


def view_losses(depth: torch.Tensor, mask_logit: torch.Tensor, true_depth: torch.Tensor,
                edge_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The view decoder's two losses: silhouette BCE and depth L1 (metres) on the true silhouette.

    With ``edge_weight`` w > 0 the BCE is a weighted mean, the pixels of :func:`silhouette_edges` weighing
    1 + w and the others 1: a thin part, all boundary, that a silhouette misses costs (1 + w) times as
    much, where a view that misses it carves it out of the fused grid (min pooling of the hull).

    Shape:
        depth, mask_logit, true_depth: float [..., H, W] (true depth 0 = background) -> two scalars.
    """
    mask = true_depth > 0
    if edge_weight > 0:
        w = 1.0 + edge_weight * silhouette_edges(mask.float())
        bce = torch.nn.functional.binary_cross_entropy_with_logits(mask_logit.float(), mask.float(), reduction="none")
        lm = (w * bce).sum() / w.sum()
    else:
        lm = torch.nn.functional.binary_cross_entropy_with_logits(mask_logit.float(), mask.float())
    d = depth.float()
    ld = (d - true_depth).abs()[mask].mean() if mask.any() else d.sum() * 0
    return lm, ld


def distill_losses(student: FusionModel, teacher: FusionModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The losses of distilling the teacher's view decoder into the student's, on the codes the drone sends.

    Knowledge distillation (Hinton et al. 2015) of the view decoder alone: both decode the teacher's
    deterministic codes (``sign``, as on the wire); the student's silhouette logits follow the teacher's
    silhouette probabilities (BCE with soft targets), its depth the teacher's depth, weighted by the
    teacher's silhouette probability (the evidence reads depth only where the silhouette is: Sec.
    "pose-aware fusion" of DESIGN.md). The 3D refiner was trained on the teacher's evidence; a student
    that reproduces it keeps the refiner valid.

    Args:
        student, teacher: fusion models with the same E_K. images: float32 [N, 3, H, W] in [0, 1].

    Returns:
        ``loss_mask`` (BCE against the teacher's probabilities; its floor is their entropy, not 0),
        ``loss_depth`` (metres, mean absolute difference weighted by the teacher's silhouette), and
        ``mask_agree`` (share of pixels where both silhouettes, thresholded at 0.5, agree; no gradient).
    """
    with torch.no_grad():
        codes = teacher.encode(images)
        t_depth, t_logit = teacher.depth(codes)
        t_prob = torch.sigmoid(t_logit.float())
    s_depth, s_logit = student.depth(codes)
    lm = torch.nn.functional.binary_cross_entropy_with_logits(s_logit.float(), t_prob)
    ld = (t_prob * (s_depth.float() - t_depth.float()).abs()).sum() / t_prob.sum().clamp(min=1.0)
    agree = ((s_logit.detach() > 0) == (t_logit > 0)).float().mean()
    return {"loss_mask": lm, "loss_depth": ld, "mask_agree": agree}


#: the parts of a fusion model that ``trainable`` can name (its submodules)
FUSION_PARTS = ("encoder", "depth", "refiner")


def draw_views(rng: np.random.Generator, lo: int, hi: int, how: str = "uniform") -> int:
    """A training step's number of views per object, in ``lo..hi``: ``uniform``, or ``log``
    (log-uniform: floor(exp(u)), u uniform in [log lo, log(hi + 1)), so that each doubling of the views
    gets the same share of the steps: with 2..24, 2 views about 16 % of the steps and 24 about 2 %).

    Raises:
        ValueError: ``how`` neither, or ``lo`` > ``hi`` or ``lo`` < 1.
    """
    if lo < 1 or lo > hi:
        raise ValueError(f"views must be drawn from 1 <= lo <= hi, got {lo}..{hi}")
    if how == "uniform":
        return int(rng.integers(lo, hi + 1))
    if how == "log":
        return int(min(hi, max(lo, np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))))))
    raise ValueError(f"views_draw must be uniform or log, got {how!r}")


def source_weights(sources: list[str], mesh_share: float) -> np.ndarray:
    """Sampling weights that draw objects rendered from real meshes (a manifest ``source`` starting
    ``mesh:``) ``mesh_share`` of the time and the others the rest, each equally within its kind.

    Args:
        sources: [N] the objects' manifest sources. mesh_share: in (0, 1).

    Returns:
        [N] float64 weights summing to 1.

    Raises:
        ValueError: ``mesh_share`` outside (0, 1), or no object of one of the two kinds.
    """
    if not 0.0 < mesh_share < 1.0:
        raise ValueError(f"mesh_share must be in (0, 1), got {mesh_share}")
    is_mesh = np.array([s.startswith("mesh:") for s in sources])
    n_mesh = int(is_mesh.sum())
    if n_mesh == 0 or n_mesh == len(sources):
        raise ValueError(f"mesh_share needs objects from both real meshes and elsewhere; {n_mesh} of "
                         f"{len(sources)} are from meshes")
    return np.where(is_mesh, mesh_share / n_mesh, (1.0 - mesh_share) / (len(sources) - n_mesh))


def _fit_inputs(src: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A convolution's weight ``src`` [C_out, C_in, k...] for a layer of ``own``'s shape [C_out, C_in', k...]
    with other input channels: with more (C_in' > C_in: a refiner that reads new evidence after the
    old), the source's weights for the first C_in inputs and zeros for the new ones, so that the layer
    computes what it did whatever the new inputs hold; with fewer (a layer that no longer reads the
    inputs after its first C_in', as ``refiner_full_res_input = "features"``), the source's weights for
    those first C_in'. Any other pair of shapes: ``src`` unchanged."""
    if (src.dim() >= 3 and src.dim() == own.dim() and src.shape[0] == own.shape[0]
            and src.shape[2:] == own.shape[2:] and src.shape[1] != own.shape[1]):
        if src.shape[1] > own.shape[1]:
            return src[:, :own.shape[1]].clone()
        out = torch.zeros(own.shape, dtype=src.dtype)
        out[:, :src.shape[1]] = src
        return out
    return src


def warm_start(model: FusionModel, source: str) -> list[str]:
    """Copy the weights of ``source`` whose names and shapes match, a layer (all the tensors of one
    module: weight, bias, statistics) whole or not at all. A convolution of the 3D refiner with more
    input channels than the source's (a refiner that reads new evidence after the old, as with mean
    pooling) takes the source's weights for the old inputs and zeros for the new: it starts out as the
    source model; one with fewer takes the source's weights for its inputs (:func:`_fit_inputs`). No
    other layer is widened or narrowed.

    Args:
        source: a model file or shipped name, or a run's ``checkpoint.pt``; several, comma-separated,
            are applied in turn (a later one overrides an earlier one).

    Returns:
        the names copied.

    Raises:
        voxlink.weights.ModelFileError: unreadable model file. FileNotFoundError: missing checkpoint.
    """
    from voxlink.weights import load_model

    copied: set[str] = set()
    own = model.state_dict()
    for src_name in [x.strip() for x in source.split(",") if x.strip()]:
        if src_name.endswith(".pt"):
            sd = torch.load(src_name, map_location="cpu", weights_only=False)["model"]
        else:
            sd = load_model(src_name)[0].state_dict()
        # a layer is copied whole or not at all (two decoders of other widths share the shape of
        # their last bias, which alone would mix two models' layers)
        # only the refiner's: its input is the evidence, whose new channels come after the old ones (a
        # widened layer elsewhere, a view decoder of other widths, would graft two models' layers)
        sd = {k: _fit_inputs(v, own[k]) if k in own and k.startswith("refiner.") else v for k, v in sd.items()}
        fits = {k for k, v in sd.items() if k in own and own[k].shape == v.shape}
        whole = {layer for layer in {k.rsplit(".", 1)[0] for k in own}
                 if all(k in fits for k in own if k.rsplit(".", 1)[0] == layer)}
        take = {k: sd[k] for k in fits if k.rsplit(".", 1)[0] in whole}
        model.load_state_dict(take, strict=False)
        copied |= set(take)
        log.info("warm start from %s: %d of %d tensors", src_name, len(take), len(own))
    return sorted(copied)


def encode_training_views(model: FusionModel, data: str | Path, tcfg: TrainConfig,
                          device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of the training split encoded once by the model's (frozen) E_K, for
    ``cached_codes`` training of the view decoder.

    Each view is put over one background drawn as in training (``tcfg.backgrounds``; NumPy's global
    generator, so the same seed gives the same codes).

    Returns:
        ``(codes int8 [N, K] in {-1, +1}, true depth float16 [N, H, W] metres, 0 = background)``, N = all
        views of all training objects (about 1.1 GB for 34,000 views of 128 x 128).

    Raises:
        voxlink.data.store.DatasetError: unreadable data.
    """
    from tqdm import tqdm

    ds = MultiViewDataset(data, "train", 1, train=True, frame="object", with_depth=True, heading="canonical",
                          backgrounds=tcfg.backgrounds)
    ds.max_views = ds.n_views  # every view of an object, in one item
    codes, depth = [], []
    model.eval()
    with torch.no_grad():
        for i in tqdm(range(len(ds)), desc="encode views", unit="obj", disable=None):
            it = ds[i]
            x = it["images"].to(device)
            if tcfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            codes.append(model.encode(x).to(torch.int8).cpu())
            depth.append(it["depth"].to(torch.float16))
    log.info("encoded %d views of %d training objects once (cached_codes)", sum(len(c) for c in codes), len(ds))
    return torch.cat(codes), torch.cat(depth)


def _view_batches(codes: torch.Tensor, depth: torch.Tensor, n: int, gen: torch.Generator):
    """Endless batches ``(codes float32 [n, K], depth float32 [n, H, W])`` of views drawn at random."""
    while True:
        i = torch.randint(len(codes), (n,), generator=gen)
        yield codes[i].float(), depth[i].float()


def training_poses(pose: torch.Tensor, tcfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The poses a training step fuses: each view's pose perturbed as a drone knows it
    (:func:`voxlink.models.projection.perturb_poses`, up to ``pose_noise_deg`` degrees and ``pose_noise_m``
    metres, at least ``pose_noise_floor`` of those), for a share ``pose_noise_share`` of the objects drawn
    per step; the other objects keep their exact poses.

    Shape:
        pose float [B, V, 4, 4] camera-to-grid -> float32 [B, V, 4, 4].
    """
    noisy = perturb_poses(pose, tcfg.pose_noise_deg, tcfg.pose_noise_m, gen, floor=tcfg.pose_noise_floor)
    if tcfg.pose_noise_share < 1.0:  # the other objects keep exact poses (no draw at 1: runs as before)
        keep = torch.rand(len(pose), generator=gen) >= tcfg.pose_noise_share
        noisy = torch.where(keep[:, None, None, None], pose.float(), noisy)
    return noisy


def validate_fusion(model: FusionModel, ds: MultiViewDataset, n: int, device="cpu") -> dict:
    """mIoU@5 (tau = 0.4) of the model and of the silhouette hull of its decoded masks, and the decoded
    silhouettes' IoU, on the first ``n`` objects of ``ds`` (fixed views;
    :func:`voxlink.evaluate.evaluate_dataset`, as ``voxlink eval``); the model is back in training mode after it."""
    from voxlink.evaluate import evaluate_dataset

    sc = evaluate_dataset(model, ds, n, views=5, geometry=True, device=device)
    model.train()
    return {"val_miou5": float(sc["iou"][:, -1].mean()), "val_decoded_hull_miou5": float(sc["hull_decoded"][:, -1].mean()),
            "val_silhouette_iou": float(sc["silhouette_iou"])}


def train_fusion(mcfg: FusionConfig, tcfg: TrainConfig, out: str | Path, resume: bool = False, device: str = "cpu",
                 command: str = "", progress: bool = True) -> Path:
    """Train a fusion model and write ``out/model.safetensors``.

    Args:
        mcfg: architecture. tcfg: training parameters (``heading``, ``backgrounds``, ``pose_noise_*``,
            ``pose_noise_floor``, ``bf16`` (float32 where the CPU has no native bfloat16), ``channels_last``,
            ``warm_start``, ``trainable``, ``cached_codes``, ``mask_weight``, ``mask_edge_weight`` and ``min_views``
            apply here).
        out: run folder. resume: continue from ``out/checkpoint.pt``. device: ``cpu`` or ``cuda``.
        command: the command line, recorded in the model file. progress: show a progress bar.

    Returns:
        path of the final model file.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint. voxlink.data.store.DatasetError: bad data.
        ValueError: ``trainable`` naming something other than :data:`FUSION_PARTS`, or given with
            ``distill_from``; ``cached_codes`` without ``trainable = "depth"``; a ``distill_from`` model that
            is not a fusion model with the same K.
    """
    from voxlink.weights import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    data = Path(tcfg.data)
    train_ds = MultiViewDataset(data, "train", tcfg.max_views, train=True, frame="object", with_depth=True,
                                heading=tcfg.heading, backgrounds=tcfg.backgrounds)
    try:
        val_ds = MultiViewDataset(data, "val", 5, train=False, frame="object", with_depth=True, heading="random")
    except ValueError:
        log.warning("%s has no validation split; validating on training objects", data)
        val_ds = MultiViewDataset(data, "train", 5, train=False, frame="object", with_depth=True, heading="random")
    bs = min(tcfg.batch_size, len(train_ds))
    sampler = None
    if tcfg.mesh_share:
        objs = train_ds.store.objects
        w = source_weights([objs[j]["source"] for j in train_ds.indices], tcfg.mesh_share)
        sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(w), num_samples=len(w), replacement=True,
                                                         generator=torch.Generator().manual_seed(tcfg.seed))
    loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, shuffle=sampler is None, sampler=sampler,
                                         num_workers=tcfg.workers,
                                         collate_fn=_collate, drop_last=True, persistent_workers=tcfg.workers > 0,
                                         prefetch_factor=4 if tcfg.workers > 0 else None)
    model = FusionModel(mcfg).to(device)
    if tcfg.channels_last:
        model.to_channels_last()
    teacher = None
    if tcfg.distill_from:
        # only the view decoder trains: E_K (and so every code) and the refiner stay the teacher's
        from voxlink.weights import load_model

        teacher = load_model(tcfg.distill_from)[0].to(device).eval()
        if teacher.cfg.code_bits != mcfg.code_bits or getattr(teacher, "family", "") != "fusion":
            raise ValueError(f"distill_from {tcfg.distill_from!r} is not a fusion model with {mcfg.code_bits}-bit codes")
        model.requires_grad_(False)
        model.depth.requires_grad_(True)
    parts = [x.strip() for x in tcfg.trainable.split(",") if x.strip()]
    frozen: list[torch.nn.Module] = []
    if parts:
        if teacher is not None or set(parts) - set(FUSION_PARTS):
            raise ValueError(f"trainable must name parts of {FUSION_PARTS} (and cannot go with distill_from), got {tcfg.trainable!r}")
        model.requires_grad_(False)
        for name in FUSION_PARTS:
            getattr(model, name).requires_grad_(name in parts)
        frozen = [getattr(model, name) for name in FUSION_PARTS if name not in parts]
    if tcfg.cached_codes and parts != ["depth"]:
        raise ValueError('cached_codes needs trainable = "depth" (E_K frozen: the same codes at every step), '
                         f'got {tcfg.trainable!r}')
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr)
    step, elapsed = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if resume:
        step, elapsed = load_checkpoint(ckpt, model, opt, device)
    elif teacher is not None:
        if tcfg.warm_start:  # e.g. an earlier student's view decoder; the teacher's E_K and refiner win
            warm_start(model, tcfg.warm_start)
        copied = warm_start(model, tcfg.distill_from)
        missing = [k for k in model.state_dict() if k not in copied and not k.startswith("depth.")]
        if missing:
            raise ValueError(f"the student's {missing[:3]} ... do not match the teacher {tcfg.distill_from!r}")
    elif tcfg.warm_start:
        warm_start(model, tcfg.warm_start)

    bf16 = tcfg.bf16
    if bf16 and device == "cpu" and not native_bf16():
        # measured on an AVX2-only AMD EPYC (no AVX-512 BF16): 38 s a step of fusion-k1024 against 1.8 s
        # in float32, the time in the kernel; the config asks for a speed-up, not for bfloat16 numbers
        log.warning("bf16 = true, but this CPU has no native bfloat16 (AVX-512 BF16 / AMX): training in float32")
        bf16 = False

    def _save_ckpt(at: int, secs: float):
        save_checkpoint(ckpt, model, opt, at, secs, mcfg, tcfg)

    rng = np.random.default_rng([tcfg.seed, step])
    gen = torch.Generator().manual_seed(tcfg.seed * 7919 + step)
    model.train()

    def train_step(batch):
        """One step's losses for :func:`voxlink.train.run_loop`: :func:`fusion_losses` (or, distilling,
        :func:`distill_losses`), the batch IoU (or the silhouettes' agreement) and the views drawn.

        Args:
            batch: the collated batch: ``images`` float32 [B, V, 3, H, W], ``K`` [B, 3, 3] pixels,
                ``pose_grid`` [B, V, 4, 4] camera-to-grid, ``occupancy`` [B, R, R, R], ``depth`` [B, V, H, W] metres.
        """
        have = batch["images"].shape[1]  # a dataset with fewer views than max_views: what it has
        v = draw_views(rng, min(tcfg.min_views, have), min(tcfg.max_views, have), tcfg.views_draw)
        images = batch["images"][:, :v].to(device)
        if tcfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images
        b = images.shape[0]
        pose = batch["pose_grid"][:, :v]
        if tcfg.pose_noise_deg or tcfg.pose_noise_m:
            pose = training_poses(pose, tcfg, gen)
        K = batch["K"][:, None].expand(b, v, 3, 3)
        target = batch["occupancy"].to(device)
        true_depth = batch["depth"][:, :v].to(device)
        with torch.autocast(device_type="cpu" if device == "cpu" else "cuda", dtype=torch.bfloat16, enabled=bf16):
            if teacher is None:
                for m in frozen:  # frozen parts keep their BatchNorm statistics
                    m.eval()
                outp = model(images, K.to(device), pose.to(device))
                ls = fusion_losses(outp, target, true_depth, tcfg.mask_edge_weight)
            else:
                model.eval()  # E_K's batch norms keep the teacher's statistics (the same codes)
                model.depth.train()
                ls = distill_losses(model, teacher, images.flatten(0, 1))
        metrics = {}
        if "mask_agree" in ls:
            metrics["mask_agree"] = float(ls.pop("mask_agree"))
        loss = tcfg.mask_weight * ls["loss_mask"] + tcfg.depth_weight * ls["loss_depth"]
        if teacher is None:
            loss = loss + ls["loss3d"]
            with torch.no_grad():
                metrics["iou"] = float(iou(torch.softmax(outp["logits"].float(), 1)[:, 1], target).mean())
        return {"loss": loss, **ls}, metrics, {"views": v}

    def validate_fn(at: int) -> dict:
        """:func:`validate_fusion` at step ``at`` (after recomputing E_K's BatchNorm statistics, except
        when distilling)."""
        if teacher is None and model.encoder not in frozen:  # (a distilled or frozen E_K keeps its statistics)
            recalibrate_bn(model, train_ds, batches=6, batch_size=8, device=device, seed=at,
                           forward=lambda x: model.encoder(x))
        return {k: round(x, 4) for k, x in validate_fusion(model, val_ds, tcfg.val_objects, device).items()}

    def view_step(batch):
        """One ``cached_codes`` step: the view decoder alone on cached codes and their true depth maps."""
        c, true_depth = (x.to(device) for x in batch)
        model.eval()
        model.depth.train()
        d, logit = model.depth(c)
        lm, ld = view_losses(d, logit, true_depth, tcfg.mask_edge_weight)
        return ({"loss": tcfg.mask_weight * lm + tcfg.depth_weight * ld, "loss_mask": lm, "loss_depth": ld}, {},
                {"views": len(c)})

    if tcfg.cached_codes:
        codes, depth = encode_training_views(model, data, tcfg, device)
        batches, step_fn = _view_batches(codes, depth, min(tcfg.batch_size, len(codes)), gen), view_step
    else:
        batches, step_fn = batches_forever(loader), train_step
    step, elapsed, ema = run_loop(model, opt, tcfg, out, step, elapsed, batches, step_fn,
                                  validate_fn, _save_ckpt, progress=progress)
    if teacher is None and model.encoder not in frozen:
        recalibrate_bn(model, train_ds, batches=40, batch_size=8, device=device, forward=lambda x: model.encoder(x))
    final = out / "model.safetensors"
    mg = mean_grid(MultiViewDataset(data, "train", 1, train=False, frame="object", heading="random"))
    val_t = torch.stack([val_ds[i]["occupancy"] for i in range(min(len(val_ds), 256))])
    thr, base_miou = best_threshold(mg, val_t)
    meta = {"command": command, "data": str(data), "data_manifest": manifest_hash(data), "git_commit": git_commit(),
            "train_config": dataclasses.asdict(tcfg), "steps": step, "train_seconds": round(elapsed, 1),
            "final": {k: round(x, 4) for k, x in ema.items()}, "baseline_threshold": thr,
            "baseline_val_miou": round(base_miou, 4), "frame": mcfg.frame, "family": "fusion"}
    save_model(model.cpu(), final, meta=meta, extra={"mean_grid": mg, "baseline_threshold": torch.tensor([thr])},
               half=True)
    log.info("wrote %s (%d steps, %.1f min)", final, step, elapsed / 60)
    return final
