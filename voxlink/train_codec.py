"""Pre-training N_small as an image codec on 32 x 32 patches (Toderici et al. 2017; issue 13).

Toderici et al. train their RNN codec on 32 x 32 patches; the network is fully convolutional, so a
codec trained on patches codes a 128 x 128 view as it is (an iteration gives 16 bits per 16 x 16 block
of pixels at any size: 1024 bits = 128 bytes at 128 x 128). A patch costs 1/16 of a view per sample,
which is what makes the codec trainable on a CPU.

Training images: rendered views of the training split (procedural objects and the real training meshes
of ``voxlink data make``), half composited over textured backgrounds (:mod:`voxlink.data.backgrounds`,
what a drone sees), half over a flat colour (as rendered); a bank of them is held in memory and every
step crops ``batch_size`` random patches. The loss is Golts & Schechner Eq. 14 (the mean absolute
residual over the pixels, channels and all ``max_iterations`` iterations; additive reconstruction, so
every rate is trained in every step). Validation codes whole 128 x 128 views of the validation split
and reports PSNR (dB) per iteration count.

The run folder gets ``checkpoint.pt`` (resumable), ``log.jsonl`` and ``model.safetensors`` like the
other training loops (:func:`voxlink.train.train`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from voxlink.data.store import DatasetStore, manifest_hash
from voxlink.models.rnn_compress import CompressionConfig, RNNCompressor
from voxlink.preprocess import to_input
from voxlink.train import TrainConfig, git_commit, load_checkpoint, run_loop, save_checkpoint

log = logging.getLogger(__name__)


def view_bank(root: str | Path, split: str, n: int, seed: int, textured: float = 0.5) -> np.ndarray:
    """Rendered views of one split, a share of them over textured backgrounds.

    Args:
        root: dataset folder (``voxlink data make``). split: ``train``, ``val``, ``test`` or ``all``.
        n: views to draw (objects in turn, a random view of each, until ``n``). seed: NumPy seed.
        textured: share of the views composited over a textured background; the rest keep the flat
            background they were rendered on.

    Returns:
        uint8 [n, H, W, 3].

    Raises:
        voxlink.data.store.DatasetError: bad folder. ValueError: empty split.
    """
    from voxlink.data.backgrounds import composite

    store = DatasetStore(root)
    objs = store.split(split)
    if not objs:
        raise ValueError(f"split {split!r} of {root} holds no objects")
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.resize(objs, max(n, len(objs))))[:n]
    out = []
    for j in order:
        v = int(rng.integers(store.n_views(int(j))))
        rgb = store.read(int(j), "rgb")[v:v + 1]
        if rng.random() < textured:
            depth = store.read(int(j), "depth")[v:v + 1]
            rgb = composite(rgb, depth > 0, rng)
        out.append(rgb[0])
    return np.stack(out)


def random_patches(bank: np.ndarray, batch: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``batch`` random ``size`` x ``size`` crops of random views of ``bank``, randomly mirrored.

    Shape:
        bank uint8 [N, H, W, 3] -> float32 [batch, 3, size, size] in [0, 1].
    """
    n, h, w, _ = bank.shape
    i = rng.integers(n, size=batch)
    y = rng.integers(h - size + 1, size=batch)
    x = rng.integers(w - size + 1, size=batch)
    crops = np.stack([bank[a, b:b + size, c:c + size] for a, b, c in zip(i, y, x)])
    flip = rng.random(batch) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    return to_input(np.ascontiguousarray(crops))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1], one per image.

    Shape:
        a, b float32 [B, 3, H, W] -> float32 [B].
    """
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003; the ``pytorch_msssim`` library) of images in [0, 1], one per image.

    At 128 x 128, five scales leave an 8 x 8 image at the coarsest, so the Gaussian window is 7 pixels
    wide (the library's default, 11, needs at least 161 pixels); the scale weights are the standard ones.

    Shape:
        a, b float32 [B, 3, H, W] -> float32 [B].
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    return _ms_ssim(a.clamp(0, 1), b.clamp(0, 1), data_range=1.0, size_average=False, win_size=7)


@torch.no_grad()
def validate_codec(model: RNNCompressor, images: torch.Tensor, batch: int = 16) -> dict:
    """Code whole views and score each iteration count.

    Args:
        model: N_small (put in eval mode for the pass). images: float32 [N, 3, H, W] in [0, 1].

    Returns:
        ``{"psnr": [dB after 1..N_max iterations], "l1": Eq. 14 loss}``.
    """
    was = model.training
    model.eval()
    n_it = model.cfg.max_iterations
    ps = torch.zeros(n_it)
    l1 = 0.0
    for j in range(0, len(images), batch):
        x = images[j:j + batch]
        out = model(x, n_it)
        l1 += float(out["loss"]) * len(x)
        for t in range(n_it):
            ps[t] += psnr(out["recon"][:, t], x).sum()
    model.train(was)
    return {"psnr": [round(float(p) / len(images), 3) for p in ps], "l1": round(l1 / len(images), 5)}


def train_codec(ccfg: CompressionConfig, tcfg: TrainConfig, out: str | Path, resume: bool = False,
                command: str = "") -> Path:
    """Train N_small on patches (module docstring); write ``<out>/model.safetensors``.

    Args:
        ccfg: N_small's architecture (``image_size`` is the size it is used at, 128).
        tcfg: ``data``, ``steps``, ``batch_size`` (patches per step), ``patch_size``, ``lr``,
            ``lr_decay``/``decay_at`` (a step decay), ``seed``, ``threads``, ``checkpoint_minutes``,
            ``val_every``, ``val_objects`` (validation views) and ``bank_views`` apply.
        out: run folder. resume: continue from ``<out>/checkpoint.pt``.
        command: the command line, recorded in the model file.

    Returns:
        the model file's path.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint. ValueError: a patch size that is not a
            multiple of 16 or larger than the views.
    """
    from voxlink.weights import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tcfg.patch_size % 16 or tcfg.patch_size > ccfg.image_size:
        raise ValueError(f"patch_size must be a multiple of 16 up to {ccfg.image_size}, got {tcfg.patch_size}")
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    t_bank = time.time()
    bank = view_bank(tcfg.data, "train", tcfg.bank_views, tcfg.seed)
    val = to_input(view_bank(tcfg.data, "val", tcfg.val_objects, tcfg.seed + 1))
    log.info("view bank: %d training views, %d validation views (%.0f s)", len(bank), len(val), time.time() - t_bank)
    model = RNNCompressor(ccfg)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    ckpt = out / "checkpoint.pt"
    step, elapsed = (load_checkpoint(ckpt, model, opt) if resume else (0, 0.0))
    rng = np.random.default_rng([tcfg.seed, step])  # a resumed run draws new patches, deterministically
    model.train()

    def patches():
        """Random training patches float32 [batch_size, 3, patch_size, patch_size] in [0, 1], forever."""
        while True:
            yield random_patches(bank, tcfg.batch_size, tcfg.patch_size, rng)

    def train_step(x):
        """Eq. 14's loss of ``max_iterations`` iterations on patches ``x`` [B, 3, P, P], for :func:`run_loop`."""
        return {"loss": model(x, ccfg.max_iterations)["loss"]}, {}, {}

    def validate_fn(at: int) -> dict:
        """:func:`validate_codec` on the validation views at step ``at`` (PSNR in dB per iteration count)."""
        return {"val": validate_codec(model, val)}

    # the gradient norm clipped at 1: a ConvLSTM's early steps can spike
    step, elapsed, _ = run_loop(model, opt, tcfg, out, step, elapsed, patches(), train_step, validate_fn,
                                lambda at, secs: save_checkpoint(ckpt, model, opt, at, secs, ccfg, tcfg),
                                log_every=50, clip=1.0, progress=False)
    final = validate_codec(model, val)
    meta = {"command": command, "data_manifest": manifest_hash(tcfg.data), "git_commit": git_commit(),
            "train_config": dataclasses.asdict(tcfg), "steps": step, "train_seconds": round(elapsed, 1),
            "val": final}
    path = save_model(model, out / "model.safetensors", meta=meta, half=True)
    log.info("wrote %s (val PSNR %s dB)", path, final["psnr"])
    return path
