"""Decoders: the 3D decoder D^3D (hidden grid -> 32^3 occupancy, 2-class softmax; 3D-R2N2) and the
depth decoder (one view's K bits -> depth map in metres and a mask)."""

from __future__ import annotations

import torch
from torch import nn


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
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(hidden, c0, 3, padding=1), act(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(c0, c1, 3, padding=1), act(),
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
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(0.01)]
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
        out = self.net(x.contiguous(memory_format=torch.channels_last))
        if out.shape[-1] != self.image_size:
            out = torch.nn.functional.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear",
                                                  align_corners=False)
        return out[:, 0] + self.depth_offset, out[:, 1]
