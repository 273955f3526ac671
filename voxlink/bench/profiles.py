"""Benchmark profiles: the widths and training budget of every model in ``voxlink bench accuracy``.

Every method gets the same network widths for its 3D part, the same number of training steps and
batch size, the same data and seed, so the comparison is of methods, not of budgets. Profiles scale
widths and steps, never the structure:

* ``full``: the paper's sizes (3D-R2N2 "3D-LSTM-3": 96-128-256-256-256-256, N_h = 128; N_small
  64-256-512-16 / 512-512-256-128) and a paper-like budget. For a GPU.
* ``quick``: narrow networks and about a thousand steps: every model of the benchmark on 2 CPU cores in
  under two hours (docs/results.md gives the measured times). At 360 steps (this profile before) the
  3D networks had barely left the mean grid (the uncompressed ceiling 0.236 against 0.182) and the
  sequential and direct models landed above or below the mean grid depending on the seed.
* ``tiny``: seconds, for tests only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from voxlink.models.binarizer import RAW_BITS_128
from voxlink.models.config import CONFIGS, ModelConfig
from voxlink.models.rnn_compress import COMPRESSION_CONFIGS, CompressionConfig

#: Target compression ratios of Fig. 8 (at 128 x 128 RGB, 8 bits per channel).
RATIOS: tuple[float, ...] = (48.0, 96.0, 192.0, 384.0, 480.0, 1000.0)


def implicit_bits(ratio: float, raw_bits: int = RAW_BITS_128) -> int:
    """K for the implicit model at a compression ratio: ``round(raw_bits / ratio)`` (Eq. 12 with N = 1).

    >>> [implicit_bits(r) for r in RATIOS]
    [8192, 4096, 2048, 1024, 819, 393]
    """
    return max(1, round(raw_bits / ratio))


@dataclass
class Profile:
    """Sizes and budget of one benchmark profile.

    Attributes:
        name: profile name.
        recon: 3D part (E^3D, 3D-LSTM, D^3D) of every model; ``code_bits`` is replaced per model.
        compression: N_small of the sequential and direct models.
        steps: optimiser steps per model. batch_size: objects per step. lr: Adam learning rate
            (x0.2 after 75 % of the steps, as ``voxlink train``).
        comp_lr: learning rate of N_small inside the sequential and direct models (None: ``lr``).
            Trained from scratch at the quick budget, N_small at ``lr`` = 5e-4 (or 3e-3) had not learned
            to compress (L1 0.20, a flat grey image's); started from a pre-trained ``codec``, its joint
            stage gets a small rate (quick: 1e-4) so that it refines the codec instead of undoing it.
        max_views: views per training object drawn in 1..max_views (3D-R2N2).
        eval_objects: test objects scored per model and ratio (None = all).
        ratios: target compression ratios.
        jpeg_train_ratios: (low, high) of the log-uniform ratio drawn per JPEG 2000 training batch.
        frame: reconstruction frame of every model.
        threads: torch threads (0 = default).
        codec: a shipped image codec (``voxlink/weights``, e.g. ``nsmall-k1024``) that the sequential
            and direct models start from: its widths replace ``compression`` and its weights N_small's.
            Then they train in two stages: the 3D part on the frozen codec's decoded images or codes for
            ``steps`` steps (codes and images of ``codec_pool`` training objects x ``codec_views`` views
            made once: 8 iterations of N_small at 128 x 128 cost about 0.08 s a view on these 2 cores,
            too much to run afresh every step), then all of it jointly (Eq. 16) for
            ``joint_steps`` steps of ``joint_batch`` objects. None: both train from scratch, jointly, as
            the paper.
        codec_pool: training objects in that cache (None: every one of the training split).
        codec_views: views of each pool object in that cache (None: ``max_views``).
        codec_shuffle_views: stage one draws 1..``max_views`` of an object's cached views in a random
            order every step; False: the first ones, in the cached order (``quick``).
        codec_cache_bf16: make the cache under bfloat16 autocast where the CPU has it natively (1.7x
            faster on this project's host, PSNR the same to 0.01 dB, a few bits of a code otherwise).
            ``quick`` keeps float32 so that its published runs can be made again bit for bit.
            Tried on the quick profile (2026-12-07, ``docs/results.md``), not kept: every training
            object in the pool (1,914 of data/proc, shuffled views, bfloat16): seed 0 a little better
            (the sequential model 0.302 / 0.300 / 0.299 / 0.266 at 48 / 96 / 192 / 384:1 against 0.297 /
            0.294 / 0.289 / 0.247), seed 1 worse for both models (sequential 0.281 / 0.276 / 0.271 /
            0.237 against 0.311 / 0.308 / 0.303 / 0.260; stage one ended at a loss of 0.226 against 0.207):
            more to learn in the same 1,080 steps. Shuffled views alone (pool 480): seed 0 better (0.304 /
            0.299 / 0.295 / 0.263), seed 1 far worse (0.246 / 0.244 / 0.248 / 0.239; stage-one loss 0.225).
        joint_freeze_bn: in that joint stage, BatchNorm layers of the 3D part use their running
            statistics (eval mode) instead of the statistics of ``joint_batch`` objects' views, which
            are noisy at 4 objects a step; the sequential model's are recomputed after training anyway.
        train_iterations: the N_small iteration counts N that the sequential and direct models train
            at, one drawn uniformly per step in every stage (stage one, joint, BatchNorm recalibration).
            None: every N in 1..N_max, as the paper. ``quick``: (1, 2, 4, 8), the rates of Fig. 8 that
            the benchmark scores (384, 192, 96, 48:1), so that each gets a quarter of the steps instead
            of an eighth; one run gave 0.332 / 0.328 / 0.318 / 0.282 against 0.310 / 0.301 / 0.279 /
            0.233 with 1..8; three seeds of the bench since: 0.297-0.311 / 0.294-0.308 / 0.289-0.303 /
            0.247-0.263, a spread of 0.008 where it had been up to 0.04 (``docs/results.md``).
        direct_code_encoder: channels of the direct model's code encoder
            (:class:`voxlink.models.joint.CodeEncoder`: two 2D convolutions over the bits' spatial
            layout before the 3D-LSTM); ``()``: the paper's direct model (codes into the gates).
            ``quick``: (64, 64): the paper's linear gate map (rank 64 at this size) left the direct model
            0.02 to 0.06 below the sequential one; with the encoder one run (seed 0, 1,080 steps, N in
            (1, 2, 4, 8)) gave 0.283 / 0.320 / 0.318 / 0.285 at 48 / 96 / 192 / 384:1 against 0.276 /
            0.292 / 0.271 / 0.245 without; three seeds then gave 0.28 to 0.33 in two, near the mean grid
            in the third, and GroupNorm went into the encoder; with it three seeds give 0.293-0.342 /
            0.294-0.337 / 0.282-0.340 / 0.264-0.326 (``docs/results.md``).
        pose_aware_model: the shipped pose-aware model scored as the ``pose-aware`` method.
    """

    name: str
    recon: ModelConfig
    compression: CompressionConfig
    steps: int
    batch_size: int
    lr: float = 5e-4
    comp_lr: float | None = None
    max_views: int = 5
    eval_objects: int | None = None
    ratios: tuple[float, ...] = RATIOS
    jpeg_train_ratios: tuple[float, float] = (24.0, 300.0)
    frame: str = "object"
    threads: int = 0
    codec: str | None = None
    codec_pool: int | None = 480
    codec_views: int | None = None
    codec_shuffle_views: bool = False
    codec_cache_bf16: bool = False
    joint_steps: int = 0
    joint_batch: int = 4
    joint_freeze_bn: bool = False
    train_iterations: tuple[int, ...] | None = None
    direct_code_encoder: tuple[int, ...] = ()
    pose_aware_model: str = "fusion-k1024"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["recon"], d["compression"] = self.recon.to_dict(), self.compression.to_dict()
        return d


PROFILES: dict[str, Profile] = {
    "full": Profile("full", recon=dataclasses.replace(CONFIGS["paper"], frame="object"),
                    compression=COMPRESSION_CONFIGS["paper"], steps=20000, batch_size=16, lr=1e-4,
                    eval_objects=None),
    "quick": Profile("quick", recon=ModelConfig(name="quick", enc_channels=(16, 24, 32, 32, 64, 64), enc_first_kernel=5,
                                                hidden=16, gate_rank=64, dec_channels=(16, 16, 12, 8),
                                                depth_channels=(16, 8, 8), frame="object"),
                     compression=COMPRESSION_CONFIGS["quick"], steps=1080, batch_size=8, eval_objects=100,
                     comp_lr=1e-4, codec="nsmall-k1024", codec_pool=480, joint_steps=40, joint_batch=4,
                     joint_freeze_bn=True, train_iterations=(1, 2, 4, 8),
                     direct_code_encoder=(64, 64)),
    "tiny": Profile("tiny", recon=dataclasses.replace(CONFIGS["tiny"], frame="object"),
                    compression=COMPRESSION_CONFIGS["tiny"], steps=2, batch_size=2, eval_objects=2,
                    max_views=2, joint_steps=1, joint_batch=2, codec_pool=4),
}


def get_profile(name: str) -> Profile:
    """A named profile (``full``, ``quick``, ``tiny``).

    Raises:
        ValueError: unknown name.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return dataclasses.replace(PROFILES[name])
