"""The pose-aware fusion model: voxlink's default reconstruction (beyond Golts & Schechner).

The drone is unchanged: E_K + binarizer (Golts & Schechner Eq. 13), K bits a view (1024 bits =
384:1). The ground uses the pose that comes with every code:

1. **View decoder** — each view's K bits are decoded into that view's silhouette (mask probability)
   and depth map in metres (:class:`SpatialViewDecoder` for the spatial code the shipped model uses,
   :class:`voxlink.models.decoder.DepthDecoder` for the 3D-R2N2 fully connected code).
2. **Projective evidence** — every voxel centre of the 32^3 grid (in the frame of the poses) is
   projected into the view with its intrinsics and pose (:mod:`voxlink.models.projection`), as a
   visual hull does (Laurentini 1994), and reads the view's evidence there: in the silhouette or not,
   in front of the decoded surface (seen empty, as in space carving, Kutulakos & Seitz 2000, and the
   free space of Curless & Levoy 1996), on it, or behind it.
3. **Order-invariant fusion** — the views' evidence is pooled element-wise with running minima and
   maxima (min: "every view agrees", max: "some view saw it"), an order-invariant, idempotent pooling
   in the spirit of Pix2Vox's context-aware fusion (Xie et al. 2019). With ``pooling = "minmax+mean"``
   (the shipped model since its stage 4) the state also keeps running sums over the distinct views of
   four of a view's evidence channels (:data:`MEAN_EVIDENCE`), whose means are votes that one wrong
   silhouette or pose cannot carve away, and a ledger of the views summed (a hash of each view's pose
   and intrinsics: a repeat is summed once). The ground keeps one constant-size state per object
   (5, or 10, channels x 32^3); any order of the same views gives the same evidence and sums bit for bit
   (a view's evidence is rounded to 1/4096 before it is summed), and a repeated view changes nothing.
4. **3D refiner** — a small 3D U-Net turns the fused evidence (and the voxel's height: gravity is known)
   into the 32^3 occupancy logits (2-class softmax, Eq. 15), filling what silhouettes cannot carve.

Training (:mod:`voxlink.train_fusion`) minimises Eq. 15 on the grid plus silhouette (BCE) and depth (L1)
losses *through the binarizer*, so that the 1024 bits carry what the ground needs.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxlink.models.binarizer import Binarizer
from voxlink.models.codec import BitCodeModel
from voxlink.models.config import ConfigDict
from voxlink.models.decoder import DepthDecoder, view_head
from voxlink.models.encoder import Encoder2D
from voxlink.models.projection import max_filter2d, project_normalized, render_depth, voxel_centres

#: Evidence channels of the fused state, and how each is pooled over views.
EVIDENCE = ("hull", "seen_empty", "surface", "behind", "seen_object")
_POOL_MIN = (True, False, False, True, False)

#: With ``tight_footprint`` > 0: a min-pooled channel of the state after :data:`EVIDENCE`, the hull read
#: over the narrower footprint (the refiner reads it last, after every other input, so that a refiner
#: trained without it starts from its weights with zeros for it: ``train_fusion.warm_start``)
TIGHT_EVIDENCE = ("hull_tight",)

#: With ``pooling = "minmax+mean"``: channels of the state that hold running sums over the distinct
#: views of one view evidence each (the refiner reads their means): the first three are
#: :data:`EVIDENCE`'s ``hull``, ``seen_empty`` and ``behind``; ``silhouette_vote`` is the silhouette
#: at the voxel's centre (1 outside the view, as ``hull``), without the footprint.
MEAN_EVIDENCE = ("hull_mean", "seen_empty_mean", "behind_mean", "silhouette_vote")
#: per-view evidence channels whose sums make :data:`MEAN_EVIDENCE` (indices into a view's evidence:
#: :data:`EVIDENCE`, then :data:`TIGHT_EVIDENCE` where the model has it, then ``silhouette_vote``,
#: whose index is the model's :attr:`FusionModel.pooled_channels`)
_MEAN_SOURCES = (0, 1, 3)
#: a view's evidence is rounded to multiples of 1 / 4096 before it is summed, so that the sums of up
#: to 4096 views are exact in float32 (24-bit significand): the same views in any order give the same
#: state bit for bit
_MEAN_QUANTUM = 4096.0
#: the ledger (the state's last channel, flattened): [0] the number of distinct views summed, then two
#: float32 slots a view (the two 24-bit halves of its 48-bit key, :func:`view_keys`), exact in float32
_KEY_BITS = 24


#: the values of :attr:`FusionModel.inference_precision` (``voxlink eval`` and ``voxlink ground`` ``--precision``)
INFERENCE_PRECISIONS = ("auto", "bfloat16", "float32")

#: fused depth maps: a view's decoded depth is shifted onto the grid's surface by the median difference
#: over at least this many pixels seen by both (fewer: not shifted)
FUSED_DEPTH_MIN_PIXELS = 20

#: what the 3D refiner's convolution at full resolution can read (:class:`Refiner3D`, ``refiner_full_res_input``)
REFINER_FULL_RES_INPUTS = ("features+evidence", "features")


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """True where this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), so that bfloat16 is faster.

    On x86 Linux the CPU's flags decide (``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``); elsewhere
    oneDNN's own check. Measured: on an AVX2-only AMD EPYC a bfloat16 training step of fusion-k1024 took
    38 s against 1.8 s in float32 (emulated), on an AMD EPYC with AVX-512 BF16 0.51 s against 0.80 s, and
    the 3D refiner's inference 5.1 ms against 27 ms (``voxlink bench fusion``).
    """
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        have = set(flags.split(":", 1)[1].split())
        return bool(have & {"avx512_bf16", "amx_bf16"})
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def view_keys(pose: torch.Tensor, K: torch.Tensor) -> list[int]:
    """Each view's identity for the mean pooling: a 48-bit hash (BLAKE2b) of its pose and intrinsics,
    as float32 bytes. Two views with the same pose and intrinsics, bit for bit, are one view (a repeat:
    the same message delivered twice, or a camera that did not move): the second changes no mean.

    Shape:
        pose float [N, 4, 4], K float [N, 3, 3] -> N ints in [0, 2^48).
    """
    import hashlib

    p = pose.detach().to("cpu", torch.float32).reshape(-1, 16).numpy()
    k = K.detach().to("cpu", torch.float32).reshape(-1, 9).numpy()
    return [int.from_bytes(hashlib.blake2b(a.tobytes() + b.tobytes(), digest_size=6).digest(), "little")
            for a, b in zip(p, k)]


@dataclass
class FusionConfig(ConfigDict):
    """Architecture of a pose-aware fusion model.

    Attributes:
        name: config name.
        code_bits: K, bits per view.
        binarize: True (binary codes); False for an uncompressed (float32 code) ceiling.
        image_size: view side in pixels (128).
        enc_channels, enc_first_kernel: E_K (as :class:`voxlink.models.config.ModelConfig`).
        view_channels: upsampling stages of the view decoder (code -> silhouette + depth).
        resolution: occupancy grid side (32), over the unit cube of the poses' frame.
        refiner_channels: widths of the 3D U-Net at 32^3 (last stage), 16^3 and 8^3.
        refiner_full_res_input: what the refiner's 3x3x3 convolution at 32^3 reads (:class:`Refiner3D`):
            ``features+evidence`` or ``features``.
        depth_margin: metres; a voxel this far in front of the decoded surface counts as seen empty.
        depth_sigma: metres; softness of the in-front / on-surface / behind tests.
        footprint: pixels (odd); the side of the square window whose silhouette maximum a voxel's hull
            and "off the silhouette" tests read (a voxel's footprint, widened for pose error).
        tight_footprint: pixels (odd), or 0 (every shipped model before stage 7): a second hull,
            ``hull_tight`` (:data:`TIGHT_EVIDENCE`), read over this narrower window and pooled with a
            running minimum beside the wide one, so that the refiner sees both the hull that tolerates
            pose error and the one that exact poses carve, and can tell from their agreement which to
            trust.
        frame: always ``pose``: the grid is the unit cube of the frame the poses are given in.
        pooling: ``minmax``: the state is :data:`EVIDENCE` pooled with running minima and maxima (exact
            and idempotent, but one view that misses a part carves it away for good); ``minmax+mean``:
            also running sums over the distinct views (a repeated view, :func:`view_keys`, is summed
            once) of the views' hull, seen-empty, behind and centre-silhouette evidence
            (:data:`MEAN_EVIDENCE`), whose means (votes) the refiner reads as well: evidence that
            tolerates one view's wrong silhouette or pose, and keeps gaining from views past a dozen.
        code_layout: ``fc``: E_K as in 3D-R2N2 (six conv stages, a fully connected layer to K values);
            ``spatial``: a fully convolutional E_K whose K values are a grid of (H/16) x (W/16) cells
            with K / ((H/16)(W/16)) channels each (Toderici et al.'s binarizer layout: 8 x 8 x 16 =
            1024 bits at 128 x 128), read by a convolutional view decoder. Each bit then describes one
            region of the view, which is what a silhouette and a depth map need.
    """

    name: str = "fusion-cpu"
    code_bits: int = 1024
    binarize: bool = True
    image_size: int = 128
    enc_channels: tuple[int, ...] = (24, 32, 64, 64, 128, 128)
    enc_first_kernel: int = 7
    view_channels: tuple[int, ...] = (64, 48, 32, 24)
    resolution: int = 32
    refiner_channels: tuple[int, ...] = (8, 32, 64)
    depth_margin: float = 0.04
    depth_sigma: float = 0.02
    footprint: int = 5
    tight_footprint: int = 0
    frame: str = "pose"
    code_layout: str = "fc"
    pooling: str = "minmax"
    refiner_full_res_input: str = "features+evidence"

    #: fields added after models were shipped, with the value those models have (left out of the
    #: fingerprint at that value: :func:`voxlink.models.codec.model_fingerprint`)
    ADDED_FIELDS = {"footprint": 5, "pooling": "minmax", "refiner_full_res_input": "features+evidence",
                    "tight_footprint": 0}

    def __post_init__(self):
        self.enc_channels = tuple(self.enc_channels)
        self.view_channels = tuple(self.view_channels)
        self.refiner_channels = tuple(self.refiner_channels)
        if self.code_bits < 1:
            raise ValueError(f"code_bits must be >= 1, got {self.code_bits}")
        if len(self.enc_channels) != 6 or self.image_size % 64:
            raise ValueError("E_K needs six stages and an image size that is a multiple of 64")
        if len(self.refiner_channels) != 3 or self.resolution % 4:
            raise ValueError("the refiner has three levels: 3 refiner_channels, resolution a multiple of 4")
        if self.code_layout not in ("fc", "spatial"):
            raise ValueError(f"code_layout must be fc or spatial, got {self.code_layout!r}")
        if self.code_layout == "spatial" and self.code_bits % ((self.image_size // 16) ** 2):
            raise ValueError(f"a spatial code needs K divisible by {(self.image_size // 16) ** 2} cells")
        if self.refiner_full_res_input not in REFINER_FULL_RES_INPUTS:
            raise ValueError(f"refiner_full_res_input must be one of {', '.join(REFINER_FULL_RES_INPUTS)}, got "
                             f"{self.refiner_full_res_input!r}")
        if self.footprint < 1 or self.footprint % 2 == 0:
            raise ValueError(f"footprint must be an odd number of pixels, got {self.footprint}")
        if self.tight_footprint < 0 or (self.tight_footprint and self.tight_footprint % 2 == 0):
            raise ValueError(f"tight_footprint must be 0 or an odd number of pixels, got {self.tight_footprint}")
        if self.tight_footprint > self.footprint:
            raise ValueError(f"tight_footprint ({self.tight_footprint}) must not be wider than footprint ({self.footprint})")
        if self.pooling not in ("minmax", "minmax+mean"):
            raise ValueError(f"pooling must be minmax or minmax+mean, got {self.pooling!r}")
        if self.frame != "pose":
            raise ValueError(f"a fusion model reconstructs in the poses' frame (frame = 'pose'), got {self.frame!r}")


FUSION_CONFIGS: dict[str, FusionConfig] = {
    # the shipped fusion-k1024's architecture (voxlink/configs/fusion-k1024.toml)
    "fusion-cpu": FusionConfig(code_layout="spatial", view_channels=(128, 96, 64, 32)),
    # the same with 3D-R2N2's fully connected code (the shipped model's warm-up run)
    "fusion-cpu-fc": FusionConfig(name="fusion-cpu-fc"),
    "fusion-paper": FusionConfig(name="fusion-paper", enc_channels=(96, 128, 256, 256, 256, 256),
                                 view_channels=(256, 128, 64, 32, 16), refiner_channels=(16, 48, 96)),
    "fusion-tiny": FusionConfig(name="fusion-tiny", code_bits=64, enc_channels=(8, 8, 16, 16, 16, 16),
                                enc_first_kernel=3, view_channels=(16, 8, 8), refiner_channels=(4, 8, 8)),
    "fusion-spatial-tiny": FusionConfig(name="fusion-spatial-tiny", code_bits=128, enc_channels=(8, 8, 16, 16, 16, 16),
                                        enc_first_kernel=3, view_channels=(16, 8, 8), refiner_channels=(4, 8, 8),
                                        code_layout="spatial"),
}


def get_fusion_config(name_or_path: str | Path) -> FusionConfig:
    """A named fusion config or a TOML file's ``[model]`` table.

    Raises:
        ValueError: unknown name or keys. FileNotFoundError: missing file.
    """
    s = str(name_or_path)
    if s in FUSION_CONFIGS:
        return dataclasses.replace(FUSION_CONFIGS[s])
    p = Path(s)
    if p.suffix == ".toml":
        d = tomllib.loads(p.read_text())
        m = d.get("model", d)
        if isinstance(m, str):
            return get_fusion_config(m)
        m = {k: v for k, v in m.items() if k != "family"}
        return FusionConfig.from_dict(m)
    raise ValueError(f"unknown fusion config {s!r}; choose one of {sorted(FUSION_CONFIGS)} or a .toml file")


class SpatialEncoder(nn.Module):
    """E_K with a spatial code: four conv + LeakyReLU + 2x2 max-pool stages of 3D-R2N2's encoder
    (stride 16), a 3x3 conv + LeakyReLU doubling the width, a 1x1 conv to ``K / ((H/16)(W/16))`` channels, BatchNorm and tanh (Toderici et al. 2017's
    binarizer input: one code cell per 16 x 16 pixels).

    Args:
        code_bits: K. channels: the first four stage widths. first_kernel: the first conv's kernel.
        image_size: input side (multiple of 16).

    Shape:
        input float32 [B, 3, H, W] in [0, 1] -> output float32 [B, K] in [-1, 1], flattened from
        [B, K / ((H/16)(W/16)), H/16, W/16] (channel-major).

    Raises:
        ValueError: (at call) an input of another size.
    """

    def __init__(self, code_bits: int, channels: tuple[int, ...], first_kernel: int = 7, image_size: int = 128):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(channels[:4]):
            k = first_kernel if i == 0 else 3
            layers += [nn.Conv2d(c_in, c, k, padding=k // 2), nn.LeakyReLU(0.01), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)  # the same names and shapes as Encoder2D's first stages
        self.image_size = image_size
        self.cells = image_size // 16
        self.code_channels = code_bits // (self.cells * self.cells)
        self.mix = nn.Sequential(nn.Conv2d(c_in, 2 * c_in, 3, padding=1), nn.LeakyReLU(0.01))
        self.to_code = nn.Conv2d(2 * c_in, self.code_channels, 1)
        self.norm = nn.BatchNorm2d(self.code_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Code values float32 [B, K] in [-1, 1] from views [B, 3, H, W]; ValueError for another size."""
        if x.shape[-3:] != (3, self.image_size, self.image_size):
            raise ValueError(f"encoder expects views [B, 3, {self.image_size}, {self.image_size}], got {tuple(x.shape)}")
        return torch.tanh(self.norm(self.to_code(self.mix(self.features(x))))).flatten(1)


class _RoundStraightThrough(torch.autograd.Function):
    """Rounding to multiples of 1 / :data:`_MEAN_QUANTUM` with the identity as its gradient (a
    straight-through estimator, Bengio et al. 2013): the forward value is the rounded one exactly, and
    the backward pass costs nothing (``x + (q - x).detach()``, its former form, made four passes over
    the [B, V, R^3] evidence forward and left an addition's value that is not exactly ``q``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to the nearest multiple of 1 / :data:`_MEAN_QUANTUM` (unitless evidence in [0, 1]).

        Shape:
            any float -> the same shape and dtype.
        """
        return torch.round(x * _MEAN_QUANTUM).mul_(1.0 / _MEAN_QUANTUM)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        """The incoming gradient unchanged (straight-through).

        Shape:
            any float -> the same tensor.
        """
        return grad


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to multiples of 1 / 4096 (:data:`_MEAN_QUANTUM`), with a straight-through gradient:
    sums of up to 4096 such values in [0, 1] are exact in float32, so any order gives the same sum.

    Shape:
        any -> the same shape and dtype.
    """
    return _RoundStraightThrough.apply(x)


def view_geometry(pose, K) -> tuple[torch.Tensor, torch.Tensor]:
    """Views' poses and intrinsics as the fusion model takes them.

    Args:
        pose: camera-to-world [B, 4, 4] (or [4, 4]), metres. K: intrinsics [B, 3, 3] or one [3, 3] shared.

    Returns:
        ``(pose float32 [B, 4, 4], K float32 [B, 3, 3])``.

    Raises:
        ValueError: no pose or no intrinsics (a pose-aware model cannot place a view without them).
    """
    if pose is None or K is None:
        raise ValueError("the fusion model needs each view's pose and intrinsics")
    pose = torch.as_tensor(pose, dtype=torch.float32).reshape(-1, 4, 4)
    return pose, torch.as_tensor(K, dtype=torch.float32).reshape(-1, 3, 3).expand(len(pose), 3, 3)


class SpatialViewDecoder(nn.Module):
    """A spatial code -> the view's depth map (metres) and silhouette logits.

    The code is viewed as [K / c^2, c, c] (c = H/16), then a 3x3 conv and (2x nearest upsample + 3x3 conv
    + LeakyReLU) stages, one per entry of ``channels`` after the first, a 3x3 conv to 2 channels (depth
    offset from ``depth_offset`` metres, silhouette logit) and a bilinear upsample to the image size.

    Shape:
        code float32 [N, K] -> depth float32 [N, H, W] (metres), mask_logit float32 [N, H, W].
    """

    def __init__(self, code_bits: int, channels: tuple[int, ...], image_size: int = 128, depth_offset: float = 2.0):
        super().__init__()
        self.cells = image_size // 16
        self.code_channels = code_bits // (self.cells * self.cells)
        self.image_size, self.depth_offset = image_size, depth_offset
        # in-place activations (each follows a convolution, whose backward does not need its output):
        # measured on 2 cores, [16, 32, 64, 64]: 0.23 ms against 0.70 ms
        self.net = nn.Sequential(nn.Conv2d(self.code_channels, channels[0], 3, padding=1), nn.LeakyReLU(0.01, inplace=True),
                                 *view_head(channels[0], channels[1:]))

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth (metres) and silhouette logits, each float32 [N, H, W], from codes [N, K]."""
        # channels-last all the way: measured on 2 cores, a 2x nearest upsample of [64, 64, 32, 32] took
        # 343 ms in the default layout and 34 ms channels-last (same values)
        x = code.reshape(-1, self.code_channels, self.cells, self.cells).contiguous(memory_format=torch.channels_last)
        # float32 before the offset is added: under bfloat16 autocast (training, the ground's bfloat16
        # decoding) a depth near 2 m would otherwise be rounded to steps of 7.8 mm
        out = self.net(x).float()
        if out.shape[-1] != self.image_size:
            # in the default layout: measured on 2 cores, [16, 2, 64, 64] -> 128^2 took 4.0 ms channels-last
            # and 1.2 ms contiguous, the conversion included (the same values)
            out = torch.nn.functional.interpolate(out.contiguous(), size=(self.image_size, self.image_size), mode="bilinear",
                                                  align_corners=False)
        return out[:, 0] + self.depth_offset, out[:, 1]


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the ground refines one object at a time, and batch statistics that
    # lag the weights made eval mode differ from training in the implicit model (DESIGN.md).
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(4, c_out),
                         nn.LeakyReLU(0.01))


class Refiner3D(nn.Module):
    """A small 3D U-Net (Ronneberger et al. 2015; in 3D, Cicek et al. 2016): fused evidence -> logits.

    Measured on 2 CPU cores, 3x3x3 convolutions at 32^3 took most of a training step, so the U-Net
    enters with a strided convolution (a strided stem) and works at (R/2)^3 and (R/4)^3; at full
    resolution there is one narrow 3x3x3 convolution over the upsampled features and the evidence
    itself (a skip connection), so thin parts seen in the evidence are not lost.

    Args:
        c_in: input channels (evidence + height).
        channels: widths at R^3 (the last stage), (R/2)^3 and (R/4)^3.
        full_res_input: what the 3x3x3 convolution at R^3 reads: ``features+evidence`` (the upsampled
            features and the input; every shipped model) or ``features`` (the upsampled features alone:
            measured in bfloat16 on 2 cores, 0.7 against 1.5 ms; the input still reaches the 1x1 head at
            every voxel; 0.02 lower on validation after 800 steps of refiner training:
            ``voxlink/configs/fusion-k1024-slim-refiner-experiment.toml``).

    Shape:
        x float32 [B, c_in, R, R, R] -> logits float32 [B, 2, R, R, R].

    Raises:
        ValueError: an unknown ``full_res_input``.
    """

    def __init__(self, c_in: int, channels: tuple[int, int, int], full_res_input: str = "features+evidence"):
        super().__init__()
        if full_res_input not in REFINER_FULL_RES_INPUTS:
            raise ValueError(f"full_res_input must be one of {', '.join(REFINER_FULL_RES_INPUTS)}, got {full_res_input!r}")
        c0, c1, c2 = channels
        self.full_res_evidence = full_res_input == "features+evidence"
        self.enc1 = nn.Sequential(_block(c_in, c1, stride=2), _block(c1, c1))
        self.enc2 = nn.Sequential(_block(c1, c2, stride=2), _block(c2, c2))
        self.up1 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = _block(2 * c1, c1)
        self.up0 = nn.ConvTranspose3d(c1, c0, 2, stride=2)
        self.dec0 = nn.Sequential(nn.Conv3d(c0 + (c_in if self.full_res_evidence else 0), c0, 3, padding=1),
                                  nn.LeakyReLU(0.01))
        self.head = nn.Conv3d(c0 + c_in, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, 2, R, R, R] from the refiner input [B, c_in, R, R, R]."""
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([self.up1(e2), e1], 1))
        u0 = self.up0(d1)
        if self.full_res_evidence:
            u0 = torch.cat([u0, x], 1)
        return self.head(torch.cat([self.dec0(u0), x], 1))


class FusionModel(BitCodeModel):
    """E_K + binarizer (edge); view decoder, projective evidence, min/max fusion and 3D refiner (ground).

    ``code_bits``, ``compression_ratio``, ``compress``, ``decompress`` and ``fingerprint`` come from
    :class:`voxlink.models.codec.BitCodeModel` (the fingerprint hashes the family name too).

    Args:
        cfg: :class:`FusionConfig`.

    Shapes (B objects, V views, K bits, R = 32, H = W = 128):
        images float32 [B, V, 3, H, W] in [0, 1]; codes float32 [B, V, K] in {-1, +1}; intrinsics
        ``K`` float32 [B, V, 3, 3] (pixels); poses float32 [B, V, 4, 4] camera-to-world (OpenCV axes,
        metres; the grid is the unit cube of that world frame); state float32 [B, C, R, R, R] (C = 5, or 10 with mean pooling, one more with ``tight_footprint``: :attr:`state_channels`); logits
        float32 [B, 2, R, R, R]; occupancy float32 [B, R, R, R] indexed ``[x, y, z]``.
    """

    family = "fusion"
    needs_pose = True
    fingerprint_salt = "fusion:"

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.code_layout == "spatial":
            self.encoder = SpatialEncoder(cfg.code_bits, cfg.enc_channels, cfg.enc_first_kernel, cfg.image_size)
            self.depth = SpatialViewDecoder(cfg.code_bits, cfg.view_channels, cfg.image_size)
        else:
            self.encoder = Encoder2D(cfg.code_bits, cfg.enc_channels, cfg.enc_first_kernel, cfg.image_size)
            self.depth = DepthDecoder(cfg.code_bits, cfg.view_channels, cfg.image_size)
        self.binarizer = Binarizer() if cfg.binarize else nn.Identity()
        # input: the evidence, the carved hull, the voxel's height and a constant: 8 channels, a
        # multiple of oneDNN's channel blocks (voxlink bench fusion: 5 % faster a training step than
        # the 6 channels of evidence and height alone); with mean pooling also the means of
        # MEAN_EVIDENCE and the number of views (log-scaled), after those 8, so that a refiner trained
        # without them starts from its weights with zeros for the new inputs (train_fusion.warm_start)
        self.mean_pooling = cfg.pooling == "minmax+mean"
        #: min / max pooled channels of the state: EVIDENCE, then TIGHT_EVIDENCE (tight_footprint > 0)
        self.pooled_channels = len(EVIDENCE) + (len(TIGHT_EVIDENCE) if cfg.tight_footprint else 0)
        self._pool_min_list = _POOL_MIN + ((True,) if cfg.tight_footprint else ())
        # the per-view channels summed for MEAN_EVIDENCE: silhouette_vote comes after the pooled ones
        self._mean_sources = _MEAN_SOURCES + (self.pooled_channels,)
        #: channels of the state: the pooled ones, then (mean pooling) MEAN_EVIDENCE's sums and the ledger
        self.state_channels = self.pooled_channels + (len(MEAN_EVIDENCE) + 1 if self.mean_pooling else 0)
        # (the refiner's input: the pooled channels, carved hull, height, constant, and the votes and views)
        self.refiner = Refiner3D(self.pooled_channels + 3 + (len(MEAN_EVIDENCE) + 1 if self.mean_pooling else 0),
                                 cfg.refiner_channels, cfg.refiner_full_res_input)
        r = cfg.resolution
        self.register_buffer("centres", voxel_centres(r), persistent=False)
        self.register_buffer("height", voxel_centres(r)[:, 1].reshape(1, 1, r, r, r).clone(), persistent=False)
        self.register_buffer("pool_min", torch.tensor(self._pool_min_list).view(1, -1, 1, 1, 1), persistent=False)

    def to_channels_last(self) -> "FusionModel":
        """Channels-last layouts for CPU training, in place: the 2D encoder and view decoder in
        ``channels_last``, the 3D refiner in ``channels_last_3d`` (its training input is converted to it in
        :meth:`refine`). The same values; oneDNN's convolutions run faster in these layouts (measured on 2
        cores with bfloat16 autocast, the refiner's forward and backward for 8 objects: 0.15 s against
        0.18 to 0.23 s). Returns the model.
        """
        self.encoder.to(memory_format=torch.channels_last)
        self.depth.to(memory_format=torch.channels_last)
        self.refiner.to(memory_format=torch.channels_last_3d)
        return self

    # -- ground -----------------------------------------------------------------------------------
    def decode_views(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each view's depth map and silhouette logits from its code.

        Shape:
            codes float32 [N, K] -> depth float32 [N, H, W] (metres), mask logits float32 [N, H, W].

        Raises:
            CodeError: codes of another length than K.
        """
        self._check_code(codes)
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.depth(codes)
        # inference: 16 views at a time, so that the working set stays in the cache (measured on 2
        # cores, 64 views: 2.6 ms a view at once, 1.7 ms in chunks of 16; the same values), and where the
        # refiner runs in bfloat16 (:meth:`refiner_precision`; the shipped weights were trained under
        # bfloat16 autocast) a bfloat16 copy of the view decoder: measured on 2 cores with AVX-512 BF16,
        # interleaved, one view 2.32 ms against 3.05 in float32 (2.65 under autocast, which converts the
        # weights at every call), 16 views 0.81 against 1.33 ms a view; outputs float32 either way
        net = self.depth
        if codes.device.type == "cpu" and self.refiner_precision(codes.device) == "bfloat16":
            net = self._inference_module("depth", torch.bfloat16, torch.channels_last)
        dtype = next(net.parameters()).dtype
        parts = [net(codes[j:j + 16].to(dtype)) for j in range(0, len(codes), 16)]
        return torch.cat([d for d, _ in parts]), torch.cat([m for _, m in parts])

    def decode_depth(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth maps (metres) and silhouette probabilities, each float32 [N, H, W], from codes [N, K].

        Raises:
            CodeError: codes of another length than K.
        """
        d, m = self.decode_views(codes)
        return d, torch.sigmoid(m)

    @torch.no_grad()
    def fused_depth(self, occupancy: torch.Tensor, depth: torch.Tensor, mask_prob: torch.Tensor, K: torch.Tensor,
                    pose: torch.Tensor, tau: float = 0.4, rays: torch.Tensor | None = None) -> torch.Tensor:
        """Each fused view's depth map from the fused occupancy grid: multi-view depth, beyond the paper.

        A view's decoded depth (:meth:`decode_depth`) comes from its own 1024 bits; the occupancy grid
        comes from every view fused so far, placed by their poses. Where the view's pixel ray meets the
        grid's ``tau`` level set (:func:`voxlink.models.projection.render_depth`), that surface's depth is
        the pixel's depth; elsewhere (thin parts the grid lost, the silhouette's rim) the decoded depth,
        shifted by the median difference between the two over the pixels where both see the object
        (a decoded depth's largest error is its distance: a view cannot tell the camera's distance
        exactly, the pose can). Measured with stage 6 at 5 views, depth AbsRel on the true mask's
        pixels: validation 0.038 against the decoded depth's 0.074; the 64 real meshes 0.051 against
        0.086 (docs/history/fusion-k1024.md, "Depth from the fused grid").

        Args:
            occupancy: float32 [R, R, R] probabilities of the grid (:meth:`occupancy` of the state that
                fused these views), indexed ``[x, y, z]`` over the unit cube.
            depth: float32 [N, H, W] decoded depth, metres. mask_prob: float32 [N, H, W] decoded silhouette.
            K: float32 [N, 3, 3] intrinsics (pixels). pose: float32 [N, 4, 4] camera-to-grid, as fused.
            tau: the grid's level set (Golts & Schechner Eq. 17's threshold).
            rays: optional bool [N, H, W]: only these pixels are cast (e.g. the decoded silhouette,
                where the ground keeps depth); the others keep the shifted decoded depth.

        Returns:
            float32 [N, H, W] z-depth in metres (voxlink's camera convention).

        Raises:
            ValueError: shapes that do not match (:func:`~voxlink.models.projection.render_depth`).

        Shape:
            occupancy [R, R, R], depth / mask_prob [N, H, W], K [N, 3, 3], pose [N, 4, 4] -> [N, H, W].
        """
        if depth.shape != mask_prob.shape or depth.dim() != 3:
            raise ValueError(f"depth and mask_prob must both be [N, H, W], got {tuple(depth.shape)}, "
                             f"{tuple(mask_prob.shape)}")
        n, h, w = depth.shape
        g = render_depth(occupancy, K, pose, h, w, tau=tau, rays=rays)
        hit = g > 0
        both = hit & (mask_prob > 0.5)
        out = depth.float().clone()
        for v in range(n):
            if int(both[v].sum()) >= FUSED_DEPTH_MIN_PIXELS:
                out[v] += (g[v][both[v]] - depth[v][both[v]]).median()
        return torch.where(hit, g, out)

    def init_state(self, batch: int = 1, device=None) -> torch.Tensor:
        """The fused evidence of no view: minima at 1, maxima at 0 (and, with mean pooling, sums and the
        ledger at 0); float32 [B, C, R, R, R], C = :attr:`state_channels` (5, or 10 with mean pooling; one more with ``tight_footprint``)."""
        r = self.cfg.resolution
        s = torch.zeros(batch, self.state_channels, r, r, r, device=device if device is not None else self.centres.device)
        s[:, list(np.flatnonzero(self._pool_min_list))] = 1.0
        return s

    def evidence(self, depth: torch.Tensor, mask_prob: torch.Tensor, K: torch.Tensor,
                 pose: torch.Tensor) -> torch.Tensor:
        """Each view's evidence at every voxel centre (before fusion).

        Args:
            depth: float32 [N, H, W] decoded depth, metres. mask_prob: float32 [N, H, W] silhouette.
            K: float32 [N, 3, 3] intrinsics (pixels). pose: float32 [N, 4, 4] camera-to-world.

        Returns:
            float32 [N, 5, R, R, R] (with ``tight_footprint`` one more, ``hull_tight``, the hull over the
            narrower footprint; with mean pooling one more last, ``silhouette_vote``, the
            silhouette at the voxel's centre, 1 outside the view), channels :data:`EVIDENCE`: ``hull`` the silhouette's maximum over
            the voxel's footprint (a square of ``cfg.footprint`` pixels, 11 in the shipped models; 1 outside the view: not carved), ``seen_empty`` the
            footprint off the silhouette, or in front of the decoded surface by more than ``depth_margin``, ``surface`` on the decoded surface,
            ``behind`` in the silhouette and behind the surface (0 outside the view), ``seen_object``
            the silhouette at the voxel (0 outside the view).
        """
        r = self.cfg.resolution
        ch = self._evidence_channels(depth, mask_prob, K, pose)
        return torch.stack(ch, 1).view(-1, len(ch), r, r, r)

    def _evidence_channels(self, depth: torch.Tensor, mask_prob: torch.Tensor, K: torch.Tensor,
                           pose: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`evidence`'s channels, each float32 [N, R^3], in the order of :data:`EVIDENCE` (and, with
        mean pooling, ``silhouette_vote``) (the one
        place their formulas are written; :meth:`evidence` stacks them (one view at a time with gradients,
        :meth:`step`), :meth:`_pool_views` pools them over the views in training and :meth:`fuse_all`,
        :meth:`place` pools them into the state one by one in inference)."""
        cfg = self.cfg
        h, w = mask_prob.shape[-2:]
        grid, z, in_view = project_normalized(self.centres, K.float(), pose.float(), h, w)
        # A voxel's footprint is about 2 pixels across at the orbit's distance: a thin part can cover
        # the footprint but miss its centre (measured: the hull of true masks sampled at centres kept
        # 58-70 % of a chair's or bench's voxels, 100 % with a 5 x 5 footprint), so the hull and the
        # "off the silhouette" test read the silhouette's maximum over the footprint.
        if cfg.tight_footprint > 1:  # the wide window's maximum from the tight one's (the same values)
            tight = max_filter2d(mask_prob, cfg.tight_footprint)
            planes = [mask_prob, depth, max_filter2d(tight, cfg.footprint - cfg.tight_footprint + 1), tight]
        else:
            planes = [mask_prob, depth, max_filter2d(mask_prob, cfg.footprint)]
        vals = torch.nn.functional.grid_sample(torch.stack(planes, 1), grid[:, None].to(depth.dtype),
                                               mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
        # "where(in_view, x, 0)" as a product with the 0 / 1 mask: fewer passes over [N, R^3], and the
        # same values (every sampled value is finite)
        fin = in_view.to(vals.dtype)
        planes_at = vals.unbind(1)  # one backward node for all planes (slices would each zero a [N, P, R^3] gradient)
        s, d, s_foot = planes_at[:3]
        s_in = s * fin
        off = fin - fin * s_foot  # in the view and off the silhouette's footprint
        t = (z - d) * (1.0 / cfg.depth_sigma)  # signed distance behind the decoded surface, in sigmas
        m = cfg.depth_margin / cfg.depth_sigma
        front = torch.sigmoid(-m - t)
        behind = torch.sigmoid(t - m)
        # the exponent clamped at -80 (exp(-80) = 1.8e-35): below about -88 the exponential takes a slow
        # path (measured on 2 cores, [8, 32768]: 0.2 ms for arguments above -87, 1.6 to 3.5 ms below -100)
        surface = torch.exp((t * t).clamp(max=320.0) * -0.25)
        out = [1 - off, off + s_in * front, s_in * surface, s_in * behind, s_in]
        if cfg.tight_footprint:  # hull_tight: as hull, over the narrower footprint (1 pixel: the centre)
            s_tight = planes_at[3] if cfg.tight_footprint > 1 else s
            out.append(1 - (fin - fin * s_tight))
        if self.mean_pooling:
            out.append(1 - (fin - s_in))  # the centre's silhouette in the view, 1 outside it
        return out

    def fuse(self, state: torch.Tensor, ev: torch.Tensor, keys: list[int] | None = None) -> torch.Tensor:
        """Pool one view's evidence into the state: element-wise min or max per channel of
        :data:`EVIDENCE`; with mean pooling, the view's :data:`MEAN_EVIDENCE` sources are added to the
        sums unless its key is in the state's ledger already (a repeat), and the key is recorded.

        Order-invariant and idempotent: the same views in any order, any of them repeated, give the
        same state bit for bit (sums of evidence rounded to 1/4096 are exact), but for the order in which
        the ledger lists the views' keys, which the refiner does not read.

        Args:
            state: [B, C, R, R, R]. ev: one view an object, [B, E, R, R, R], E = 5 to 7 (:meth:`evidence`).
            keys: B view keys (:func:`view_keys`); needed with mean pooling.

        Shape:
            state [B, C, R, R, R], ev [B, E, R, R, R] -> [B, C, R, R, R].

        Raises:
            ValueError: mean pooling without ``keys``.
        """
        c = self.pooled_channels
        mm = torch.where(self.pool_min, torch.minimum(state[:, :c], ev[:, :c]), torch.maximum(state[:, :c], ev[:, :c]))
        if not self.mean_pooling:
            return mm
        if keys is None or len(keys) != len(state):
            raise ValueError("mean pooling needs one view key per object (view_keys)")
        ledger = state[:, -1:].detach().clone()
        new = torch.tensor([self._ledger_add(ledger[b].view(-1), k) for b, k in enumerate(keys)],
                           dtype=state.dtype, device=state.device).view(-1, 1, 1, 1, 1)
        sums = state[:, c:-1] + new * _quantize(ev[:, list(self._mean_sources)])
        return torch.cat([mm, sums, ledger], 1)

    @staticmethod
    def _ledger_add(flat: torch.Tensor, key: int) -> bool:
        """Record a view key in one object's ledger (float32 [R^3], in place) unless it is there; True
        when the view is new (its evidence is to be summed). A ledger that is full (R^3 // 2 - 1 views)
        still counts new views but no longer remembers them (a repeat of one of those is summed again)."""
        n = int(flat[0])
        hi, lo = divmod(int(key), 1 << _KEY_BITS)
        kept = min(n, (flat.numel() - 1) // 2)
        slots = flat[1:1 + 2 * kept].view(-1, 2)
        if bool(((slots[:, 0] == hi) & (slots[:, 1] == lo)).any()):
            return False
        if kept == n and 1 + 2 * (n + 1) <= flat.numel():
            flat[1 + 2 * n], flat[2 + 2 * n] = float(hi), float(lo)
        flat[0] = n + 1
        return True

    def distinct_views(self, state: torch.Tensor) -> list[int] | None:
        """Distinct views summed into each object's state (mean pooling; None without it).

        Shape:
            state [B, C, R, R, R] -> B ints.
        """
        if not self.mean_pooling:
            return None
        return [int(x) for x in state[:, -1].reshape(len(state), -1)[:, 0]]

    def fuse_all(self, depth: torch.Tensor, mask_prob: torch.Tensor, K: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The state of one object from all its decoded views at once (the same values as fusing them one by
        one with :meth:`step`: min, max and the rounded sums are exact; repeated views, by
        :func:`view_keys`, count once). Used where the poses change after the views came
        (pose refinement, :mod:`voxlink.models.pose_refine`), so the state is made anew.

        Shape:
            depth, mask_prob float32 [V, H, W], K [V, 3, 3], pose [V, 4, 4] -> state float32 [1, C, R, R, R].
        """
        keys = None
        if self.mean_pooling:
            first: dict[int, int] = {}  # each key's first view, in order
            for i, k in enumerate(view_keys(pose, K)):
                first.setdefault(k, i)
            keys, idx = list(first), list(first.values())
            depth, mask_prob, K, pose = depth[idx], mask_prob[idx], K[idx], pose[idx]
        chans = self._evidence_channels(depth, mask_prob, K, pose)
        return self._pool_views([ch[None] for ch in chans], None if keys is None else [keys])

    def _pool_views(self, chans: list[torch.Tensor], keys: list[list[int]] | None = None) -> torch.Tensor:
        """Views' evidence pooled over the views, in one pass: what :meth:`fuse` gives view by view.

        Each channel is pooled on its own as :meth:`_evidence_channels` made it (min or max; with mean
        pooling, the rounded sums and a ledger of V views, with their ``keys`` where given: B lists of V
        ints; the V views are taken as distinct): no stacked [B, V, E, R^3] evidence, no minimum and
        maximum both taken of every channel (measured in a bfloat16 training step on 2 cores, 8 objects x
        5 views: evidence and pooling, forward and backward, 0.24 s before).

        Shape:
            chans: E (5 to 7) tensors float32 [B, V, R^3], the channels of :meth:`evidence` in its order
            -> state [B, C, R, R, R].
        """
        c, r = self.pooled_channels, self.cfg.resolution
        b, v = chans[0].shape[:2]
        parts = [ch.amin(1) if mn else ch.amax(1) for ch, mn in zip(chans[:c], self._pool_min_list)]
        if self.mean_pooling:
            ledger = torch.zeros(b, r ** 3, dtype=chans[0].dtype, device=chans[0].device)
            for i in range(b):
                for k in (keys[i] if keys is not None else ()):
                    self._ledger_add(ledger[i], k)
            ledger[:, 0] = float(v)
            parts += [_quantize(chans[k]).sum(1) for k in self._mean_sources] + [ledger]
        return torch.stack(parts, 1).view(b, len(parts), r, r, r)

    def step(self, codes: torch.Tensor, state: torch.Tensor, pose: torch.Tensor | None = None,
             K: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse one view per object into the state.

        Args:
            codes: float32 [B, K]. state: [B, C, R, R, R]. pose: float32 [B, 4, 4] camera-to-world.
            K: float32 [B, 3, 3] (or [3, 3], shared) intrinsics in pixels.

        Returns:
            the new state [B, C, R, R, R].

        Raises:
            CodeError: codes of another length than K. ValueError: no pose or intrinsics (a pose-aware
            model cannot place a view without them).
        """
        return self.step_decoded(codes, state, pose, K)[0]

    def step_decoded(self, codes: torch.Tensor, state: torch.Tensor, pose: torch.Tensor | None,
                     K: torch.Tensor | None, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`step`, also returning what the view decoder made, so that a caller that wants the depth
        maps (the ground station) does not decode the views a second time.

        ``inplace``: in inference, pool into ``state`` itself and return it (a caller whose state batch is
        a temporary, as the ground's, saves a fresh tensor of the batch's size). In inference ``state``
        may also be a list of the B objects' own states, each pooled in place (:meth:`place`; the ground).

        Returns:
            ``(state [B, C, R, R, R], depth float32 [B, H, W] metres, silhouette probability float32 [B, H, W])``.

        Raises:
            as :meth:`step`.
        """
        pose, K = view_geometry(pose, K)
        depth, mask_prob = self.decode_depth(codes)
        if torch.is_grad_enabled():
            keys = view_keys(pose, K) if self.mean_pooling else None
            return self.fuse(state, self.evidence(depth, mask_prob, K, pose), keys), depth, mask_prob
        return self.place(state, depth, mask_prob, K, pose, out=state if inplace else None), depth, mask_prob

    @torch.no_grad()
    def place(self, state: torch.Tensor | list[torch.Tensor], depth: torch.Tensor, mask_prob: torch.Tensor,
              K: torch.Tensor, pose: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Fuse decoded views into the state (the ground's half after the view decoder, in inference):
        :meth:`evidence` then :meth:`fuse`, eight views at a time so that the evidence's element-wise
        chain stays in the cache (measured on 2 cores, 64 views: 2.4 ms a view at once, 1.4 ms in
        chunks of 8; the same values), each channel pooled as it is made (no stacked evidence tensor).

        ``state`` may be a batch [B, C, R, R, R], or a list of B objects' own states ([1, C, R, R, R] or
        [C, R, R, R] each), which are then pooled in place, view ``i`` into ``state[i]``, and the list is
        returned: no batch is gathered and scattered (measured with 100 drones' real codes on 2 cores,
        gathering 64 objects' states into a batch and copying them back cost about 0.3 ms a view).

        ``out``: for a batch, where to write the new state (a tensor like ``state``; may be ``state``
        itself: each element is read before it is written). Measured on 2 cores, 64 views: a fresh 42 MB
        state batch per call cost about 0.2 ms a view in page faults.

        Shape:
            state [B, C, R, R, R] (or a list of B states), depth and mask_prob float32 [B, H, W], K [B, 3, 3],
            pose [B, 4, 4] -> the new state [B, C, R, R, R] (``out`` where given; the list where given).
        """
        c, cs = self.pooled_channels, self.state_channels
        per_object = isinstance(state, (list, tuple))
        if per_object:
            n, new = len(state), state
            targets = [t.view(cs, -1) for t in state]
        else:
            n = len(state)
            new = torch.empty_like(state) if out is None else out
            old, dst = state.view(n, cs, -1), new.view(n, cs, -1)
            if self.mean_pooling and new is not state:
                dst[:, c:] = old[:, c:]
            targets = list(dst)
        for i in range(0, n, 8):
            sl = slice(i, i + 8)
            chans = self._evidence_channels(depth[sl], mask_prob[sl], K[sl], pose[sl])
            for ch, ev in enumerate(chans[:c]):
                pool = torch.minimum if self._pool_min_list[ch] else torch.maximum
                if per_object:
                    for j, t in enumerate(targets[sl]):
                        pool(t[ch], ev[j], out=t[ch])
                else:
                    pool(old[sl, ch], ev, out=dst[sl, ch])
            if self.mean_pooling:  # the sums, of views new to each object's ledger
                src = _quantize(torch.stack([chans[k] for k in self._mean_sources], 1))
                for j, (t, key) in enumerate(zip(targets[sl], view_keys(pose[sl], K[sl]))):
                    if self._ledger_add(t[-1], key):
                        t[c:-1] += src[j]
        return new

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """3D refiner logits float32 [B, 2, R, R, R] from the fused state [B, C, R, R, R]: the refiner reads
        :data:`EVIDENCE`, the carved hull, the voxel's height and a constant, with mean pooling the
        means of :data:`MEAN_EVIDENCE` and log(1 + views) / log(25), and last, with ``tight_footprint``,
        :data:`TIGHT_EVIDENCE`."""
        carved = state[:, :1] * (1 - state[:, 1:2])  # in every silhouette and seen empty by no view
        # expand_as, not a Python batch size: the ONNX export keeps the batch dynamic
        parts = [state[:, :len(EVIDENCE)], carved, self.height.expand_as(carved), torch.ones_like(carved)]
        if self.mean_pooling:  # the votes: sums over the distinct views / their number (0 with no view)
            views = state[:, -1:].flatten(2)[:, :, :1].unsqueeze(-1).unsqueeze(-1)  # [B, 1, 1, 1, 1]
            parts += [state[:, self.pooled_channels:-1] / views.clamp(min=1.0),
                      (torch.log1p(views) * (1.0 / np.log(25.0))).expand_as(carved)]
        if self.pooled_channels > len(EVIDENCE):  # the tight hull, last (a warm start widens with zeros)
            parts.append(state[:, len(EVIDENCE):self.pooled_channels])
        return self.refine(torch.cat(parts, 1))

    def occupancy(self, state: torch.Tensor) -> torch.Tensor:
        """Occupancy probabilities float32 [B, R, R, R] (softmax class 1) from a state."""
        return torch.softmax(self.logits(state), dim=1)[:, 1]

    #: the arithmetic of the 3D refiner and the view decoder in CPU inference: ``auto`` (bfloat16 where
    #: :func:`native_bf16`, else float32), ``bfloat16`` or ``float32``; training, gradients, GPUs and ONNX
    #: export always use the float32 modules themselves
    inference_precision = "auto"

    def refiner_precision(self, device: torch.device | str = "cpu") -> str:
        """``bfloat16`` or ``float32``: what :meth:`refine` and :meth:`decode_views` compute in, in inference
        on ``device``.

        Raises:
            ValueError: :attr:`inference_precision` is none of ``auto``, ``bfloat16``, ``float32``.
        """
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"inference_precision {self.inference_precision!r}: use {', '.join(INFERENCE_PRECISIONS)}")
        if torch.device(device).type != "cpu" or self.inference_precision == "float32":
            return "float32"
        return "bfloat16" if self.inference_precision == "bfloat16" or native_bf16() else "float32"

    def refine(self, x: torch.Tensor) -> torch.Tensor:
        """The 3D refiner: input [B, c_in, R, R, R] -> logits float32 [B, 2, R, R, R].

        In CPU inference it runs a copy of the refiner in channels-last-3D layout, in bfloat16 where the
        CPU has it natively (:meth:`refiner_precision`): measured on 2 cores of an AMD EPYC with AVX-512
        BF16, one grid in 5.1 ms against 27 ms in float32 (occupancy probabilities within 0.004 of
        float32; ``voxlink eval`` scores equal to 0.001, model card). In float32 a batch of one runs as a
        pair: PyTorch takes its slow reference path for a batch of one 3D convolution (measured, 1
        thread: 116 ms alone, 63 ms as a pair). The copy is remade when the refiner's weights change.
        """
        if (torch.is_grad_enabled() or self.training or x.device.type != "cpu" or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export()):
            if self.refiner.enc1[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d):
                x = x.contiguous(memory_format=torch.channels_last_3d)  # a refiner in that layout (training)
            return self.refiner(x)
        bf16 = self.refiner_precision(x.device) == "bfloat16"
        fast = self._inference_module("refiner", torch.bfloat16 if bf16 else torch.float32, torch.channels_last_3d)
        n = len(x)
        if n == 1 and not bf16:
            x = x.expand(2, -1, -1, -1, -1)
        y = fast(x.to(fast.dtype).contiguous(memory_format=torch.channels_last_3d))
        return y[:n].float().contiguous()

    def _inference_module(self, name: str, dtype: torch.dtype, memory_format: torch.memory_format) -> nn.Module:
        """A copy of the submodule ``name`` (``refiner`` or ``depth``) in ``dtype`` and ``memory_format``
        (with a ``dtype`` attribute) for CPU inference, cached until a weight of that submodule changes
        (its storage or version counter) or ``dtype`` does."""
        import copy

        module = getattr(self, name)
        key = (dtype, tuple((p.data_ptr(), p._version) for p in module.parameters()))
        cache = self.__dict__.setdefault("_inference_cache", {})  # not a submodule: no state_dict entry
        cached = cache.get(name)
        if cached is None or cached[0] != key:
            fast = copy.deepcopy(module).to(dtype=dtype, memory_format=memory_format).eval()
            fast.dtype = dtype
            cache[name] = cached = (key, fast)
        return cached[1]

    # -- training ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, K: torch.Tensor, pose: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode every view (stochastic bits in training), decode, place, fuse, refine.

        Shape:
            images [B, V, 3, H, W], K [B, V, 3, 3], pose [B, V, 4, 4] -> ``logits`` [B, 2, R, R, R],
            ``codes`` [B, V, K], ``depth`` [B, V, H, W] (metres), ``mask_logit`` [B, V, H, W].
        """
        b, v = images.shape[:2]
        codes = self.encode(images.flatten(0, 1))
        depth, mask_logit = self.depth(codes)
        chans = self._evidence_channels(depth.float(), torch.sigmoid(mask_logit.float()), K.flatten(0, 1),
                                        pose.flatten(0, 1))
        state = self._pool_views([ch.view(b, v, -1) for ch in chans])
        h, w = depth.shape[-2:]
        return {"logits": self.logits(state), "codes": codes.view(b, v, -1), "depth": depth.view(b, v, h, w),
                "mask_logit": mask_logit.view(b, v, h, w)}
