"""Decoders: the 3D decoder D^3D (hidden grid -> 32^3 occupancy, 2-class softmax; 3D-R2N2) and the
depth decoder (one view's K bits -> depth map in metres and a mask)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Per axis, which taps of a 3-tap kernel (offsets -1, 0, +1) land on each tap of the 4-tap stride-2
# transposed kernel that computes "2x nearest upsample, then the 3-tap conv" (derivation in
# :func:`fold_nearest_upsample`).
_FOLD = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def fold_nearest_upsample(weight: torch.Tensor) -> torch.Tensor:
    """The transposed-convolution kernel equal to a 2x nearest upsample followed by a 3x3 (or 3x3x3)
    convolution with zero padding 1.

    Per axis, output pixel ``2i`` of "upsample, then conv" reads low-resolution pixels ``i - 1`` (tap -1)
    and ``i`` (taps 0 and +1), and pixel ``2i + 1`` reads ``i`` (taps -1 and 0) and ``i + 1`` (tap +1);
    a stride-2 transposed convolution with a 4-tap kernel and padding 1 writes output ``o`` from input
    ``i`` with tap ``o + 1 - 2i``, so its taps are ``(w[+1], w[0] + w[+1], w[-1] + w[0], w[-1])``: per
    axis ``_FOLD @ w``. The result is the same function (to float rounding) for 16 instead of 36
    multiply-adds per input pixel and channel pair in 2D (64 instead of 216 in 3D).

    Args:
        weight: a convolution's weight float [C_out, C_in, 3, 3] or [C_out, C_in, 3, 3, 3].

    Returns:
        the transposed convolution's weight [C_in, C_out, 4, 4] (or [C_in, C_out, 4, 4, 4]), for
        ``conv_transpose2d/3d(x, w, bias, stride=2, padding=1)``; differentiable in ``weight``.

    Raises:
        ValueError: a kernel that is not 3 wide on every axis.
    """
    if weight.shape[2:] not in ((3, 3), (3, 3, 3)):
        raise ValueError(f"only 3x3 and 3x3x3 kernels fold, got {tuple(weight.shape)}")
    f = torch.tensor(_FOLD, dtype=weight.dtype, device=weight.device)
    if weight.dim() == 4:
        return torch.einsum("ka,lb,oiab->iokl", f, f, weight)
    return torch.einsum("ka,lb,mc,oiabc->ioklm", f, f, f, weight)


class _FoldedUpsampleConv:
    """The forward pass shared by :class:`NearestUpConv2d` and :class:`NearestUpConv3d` (mixed into
    ``nn.Conv2d`` / ``nn.Conv3d``: ``weight``, ``bias`` and ``_conv_forward`` are theirs)."""

    folded = True
    _transposed = None  # F.conv_transpose2d or F.conv_transpose3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, *S] -> [B, C_out, *2S] (float32)."""
        if not self.folded:
            return self._conv_forward(F.interpolate(x, scale_factor=2, mode="nearest"), self.weight, self.bias)
        return type(self)._transposed(x, fold_nearest_upsample(self.weight), self.bias, stride=2, padding=1)


class NearestUpConv2d(_FoldedUpsampleConv, nn.Conv2d):
    """A 2x nearest upsample followed by this 3x3 convolution (padding 1), computed as one stride-2
    transposed convolution with the folded kernel (:func:`fold_nearest_upsample`): 2.25x fewer
    multiply-adds; measured on 2 cores, the shipped fusion-k1024's view decoder went from 3.1 to 1.7 ms
    a view (largest difference to the two-step form 2.5e-5 on outputs up to 25).

    The parameters are a plain ``Conv2d``'s (``weight`` [C_out, C_in, 3, 3], ``bias``): weights trained
    or shipped with ``Upsample`` + ``Conv2d`` load unchanged. ``folded = False`` computes the two steps
    instead (``voxlink bench fusion`` times both).

    Shape:
        [N, C_in, H, W] -> [N, C_out, 2H, 2W].
    """

    _transposed = F.conv_transpose2d

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=1)


class NearestUpConv3d(_FoldedUpsampleConv, nn.Conv3d):
    """:class:`NearestUpConv2d` in 3D: a 2x nearest upsample (unpooling) and this 3x3x3 convolution as
    one stride-2 transposed 3D convolution (3.4x fewer multiply-adds).

    Shape:
        [B, C_in, D, H, W] -> [B, C_out, 2D, 2H, 2W].
    """

    _transposed = F.conv_transpose3d

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=1)


class Decoder3D(nn.Module):
    """D^3D: two (2x nearest unpool + 3x3x3 conv + LeakyReLU) stages, a 3x3x3 conv, a 2x2x2 stride-2
    3D deconvolution to full resolution, and a 1x1x1 conv to 2 class logits.

    3D-R2N2 runs 3x3x3 convolutions at 32^3 too; on a CPU those took 80 % of a training step, so
    voxlink upsamples the last octave with a learned deconvolution instead (all configs, paper
    included, so the structure is the same at every size).

    Args:
        hidden: N_h (input channels).
        channels: four widths (at 8^3, 16^3, 16^3, and 32^3 after the deconvolution).

    Shape:
        h float32 [B, N_h, G, G, G] -> logits float32 [B, 2, 8G, 8G, 8G]; ``softmax(dim=1)[:, 1]`` is
        the occupancy probability (Golts & Schechner Eq. 15 is the cross-entropy on it).
    """

    def __init__(self, hidden: int, channels: tuple[int, ...], resolution: int = 32):
        super().__init__()
        c0, c1, c2, c3 = channels
        # Per-voxel logit bias, initialised from the training set's mean grid (see
        # :meth:`init_prior`): the network then learns the object's departure from the prior
        # instead of spending its first thousand steps learning that most voxels are empty.
        self.voxel_bias = nn.Parameter(torch.zeros(1, 2, resolution, resolution, resolution))
        act = lambda: nn.LeakyReLU(0.01)  # noqa: E731
        # each "unpool + 3x3x3 conv" is one folded transposed conv (:class:`NearestUpConv3d`; the same
        # function, 3.4x fewer multiply-adds); the Identity keeps the unpooling's slot, so that the
        # parameter names (net.1, net.4, ...) of weights trained before stay valid
        self.net = nn.Sequential(
            nn.Identity(), NearestUpConv3d(hidden, c0), act(),
            nn.Identity(), NearestUpConv3d(c0, c1), act(),
            nn.Conv3d(c1, c2, 3, padding=1), act(),
            nn.ConvTranspose3d(c2, c3, 2, stride=2), act(),
            nn.Conv3d(c3, 2, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, 2, R, R, R] from the 3D-LSTM hidden state [B, N_h, G, G, G]."""
        return self.net(h) + self.voxel_bias

    @torch.no_grad()
    def init_prior(self, mean_grid: torch.Tensor) -> None:
        """Set the per-voxel bias to the log-odds of the mean occupancy (float [R, R, R] in [0, 1])."""
        p = mean_grid.clamp(0.01, 0.99)
        self.voxel_bias.zero_()
        self.voxel_bias[0, 1] = torch.log(p / (1 - p))


def view_head(c_in: int, channels: tuple[int, ...]) -> list[nn.Module]:
    """The upsampling stages of a view decoder: (2x nearest upsample + 3x3 conv + LeakyReLU) per entry of
    ``channels``, then a 3x3 conv to 2 channels (depth offset, silhouette logit) whose silhouette bias
    starts at the background prior (about 15 % of a view is object).

    Shape:
        [N, c_in, h, w] -> [N, 2, h * 2^len(channels), w * 2^len(channels)].
    """
    layers = []
    for c in channels:
        # upsample + conv as one folded transposed conv (:class:`NearestUpConv2d`: the same function, 2.25x
        # fewer multiply-adds); the Identity keeps the upsample's slot and so the parameter names
        layers += [nn.Identity(), NearestUpConv2d(c_in, c), nn.LeakyReLU(0.01, inplace=True)]
        c_in = c
    layers.append(nn.Conv2d(c_in, 2, 3, padding=1))
    with torch.no_grad():
        layers[-1].bias[1] = -1.7
    return layers


class DepthDecoder(nn.Module):
    """A view's code -> depth map (metres) and mask logits.

    FC to ``C0 x 4 x 4``, then (2x nearest upsample + 3x3 conv + LeakyReLU) stages, one per entry of
    ``channels``, a 3x3 conv to 2 channels (depth offset from ``depth_offset`` metres, and the
    mask logit), and a bilinear upsample to the image size when the stages stop short of it.

    Shape:
        code float32 [N, K] -> depth float32 [N, H, W] (metres), mask_logit float32 [N, H, W].
    """

    def __init__(self, code_bits: int, channels: tuple[int, ...], image_size: int = 128, depth_offset: float = 2.0):
        super().__init__()
        self.side, self.image_size = 4, image_size
        self.c0 = channels[0]
        self.fc = nn.Linear(code_bits, channels[0] * self.side * self.side)
        self.net = nn.Sequential(*view_head(channels[0], channels))
        self.depth_offset = depth_offset

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        """Depth (metres) and mask logits, each float32 [N, H, W], from codes [N, K]."""
        x = torch.nn.functional.leaky_relu(self.fc(code), 0.01).view(-1, self.c0, self.side, self.side)
        # channels-last: PyTorch's 2x nearest upsample is ten times faster on it here (see SpatialViewDecoder)
        # float32 before the offset is added: under bfloat16 autocast (training, the ground's bfloat16
        # decoding) a depth near 2 m would otherwise be rounded to steps of 7.8 mm
        out = self.net(x.contiguous(memory_format=torch.channels_last)).float()
        if out.shape[-1] != self.image_size:
            # in the default layout: measured on 2 cores, [16, 2, 64, 64] -> 128^2 took 4.0 ms channels-last
            # and 1.2 ms contiguous, the conversion included (the same values)
            out = torch.nn.functional.interpolate(out.contiguous(), size=(self.image_size, self.image_size), mode="bilinear",
                                                  align_corners=False)
        return out[:, 0] + self.depth_offset, out[:, 1]
