"""2D encoder E_K of 3D-R2N2 ("3D-LSTM-3", shallow variant), ending in K values in [-1, 1].

Six stages of conv + LeakyReLU + 2 x 2 max-pool (stride 64 in all), then a fully connected layer to
K values (Choy et al. 2016, Fig. 4; Golts & Schechner Sec. II-C and III-C). A BatchNorm before the
tanh keeps the pre-activations in range: without it they grew to hundreds and every bit became
constant (voxlink DESIGN.md, measured).
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder2D(nn.Module):
    """E_K: a view to K values in [-1, 1] (tanh), ready for the binarizer.

    Args:
        code_bits: K.
        channels: six stage widths (3D-R2N2: 96, 128, 256, 256, 256, 256).
        first_kernel: kernel of the first conv (7 in 3D-R2N2; 3 elsewhere).
        image_size: input side (multiple of 64).

    Shape:
        input float32 [B, 3, H, W] in [0, 1] -> output float32 [B, K] in [-1, 1].

    Raises:
        ValueError: (at call) an input of another size.
    """

    def __init__(self, code_bits: int, channels: tuple[int, ...], first_kernel: int = 7, image_size: int = 128):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(channels):
            k = first_kernel if i == 0 else 3
            layers += [nn.Conv2d(c_in, c, k, padding=k // 2), nn.LeakyReLU(0.01), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.image_size = image_size
        side = image_size // 2 ** len(channels)
        self.fc = nn.Linear(c_in * side * side, code_bits)
        self.norm = nn.BatchNorm1d(code_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[-3:] != (3, self.image_size, self.image_size):
            raise ValueError(f"encoder expects views [B, 3, {self.image_size}, {self.image_size}], got {tuple(x.shape)}")
        return torch.tanh(self.norm(self.fc(self.features(x).flatten(1))))
