"""Binarizer B (Golts & Schechner Eq. 13, after Toderici et al. 2015/2017) and bit packing.

Training: ``b = +1`` with probability ``(1 + x) / 2`` else ``-1`` for ``x`` in [-1, 1] (the output
of a tanh); the gradient passes straight through (``d b / d x = 1``, since ``E[b(x)] = x``).
Inference: ``b = sign(x)`` with ``sign(0) = +1``, deterministic, so the drone and the ground agree
bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from voxlink import protocol as _protocol

#: Bits in one raw 128 x 128 RGB view at 8 bits per channel (Eq. 12 numerator).
RAW_BITS_128 = 128 * 128 * 3 * 8


def compression_ratio(bits_per_view: int, height: int = 128, width: int = 128, iterations: int = 1) -> float:
    """Compression ratio ``c = H * W * 3 * 8 / (N * m)`` (Golts & Schechner Eq. 12).

    Args:
        bits_per_view: ``m``, bits per iteration (the implicit model's K).
        height, width: image size in pixels.
        iterations: ``N``, RNN iterations (1 for the implicit model).

    Raises:
        ValueError: non-positive sizes.
    """
    if bits_per_view <= 0 or iterations <= 0 or height <= 0 or width <= 0:
        raise ValueError("bits, iterations and image size must be positive")
    return height * width * 3 * 8 / (iterations * bits_per_view)


def binarize(x: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Binarize values in [-1, 1] to {-1, +1} (Eq. 13), with a straight-through gradient.

    Args:
        x: float tensor in [-1, 1] (any shape).
        stochastic: draw each bit with ``P(+1) = (1 + x) / 2`` (training); otherwise ``sign`` with
            ``sign(0) = +1`` (inference).

    Returns:
        float tensor of the same shape and dtype, exactly +1 or -1; ``grad = identity``.
    """
    if stochastic:
        b = torch.where(torch.rand_like(x) < (1.0 + x) / 2.0, 1.0, -1.0).to(x.dtype)
    else:
        b = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    # b + (x - x.detach()): exactly b in the forward pass (x + (b - x) can round to 0.99999994),
    # gradient 1 with respect to x
    return b.detach() + (x - x.detach())


class Binarizer(nn.Module):
    """Module form of :func:`binarize`: stochastic in ``train()`` mode, ``sign`` in ``eval()`` mode.

    Shape:
        input float [..., K] in [-1, 1] -> output float [..., K] in {-1, +1}.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Binarize ``x`` (float [..., K] in [-1, 1]) to {-1, +1}: stochastic if training, else sign."""
        return binarize(x, stochastic=self.training)


def pack_bits(bits: torch.Tensor | np.ndarray) -> bytes:
    """Pack one code of +1/-1 (or 1/0) values into bytes, most significant bit first (+1 -> 1).

    Delegates to :func:`voxlink.protocol.pack_bits` (the wire protocol owns the packing); tensors are
    moved to the CPU first.

    Shape:
        bits: [K] -> ``ceil(K / 8)`` bytes.

    Raises:
        ValueError: not one-dimensional.
    """
    return _protocol.pack_bits(bits.detach().cpu().numpy() if isinstance(bits, torch.Tensor) else bits)


def unpack_bits(data: bytes, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits` (:func:`voxlink.protocol.unpack_bits` as a tensor).

    Returns:
        float32 [k] of +1/-1.

    Raises:
        ValueError: ``data`` is not ``ceil(k / 8)`` bytes.
    """
    return torch.from_numpy(_protocol.unpack_bits(data, k))
