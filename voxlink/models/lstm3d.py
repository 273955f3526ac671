"""The 3D convolutional LSTM grid of 3D-R2N2 (Choy et al. 2016, Sec. 3.2; Golts & Schechner Sec. II-C).

A G x G x G grid of LSTM units, each with N_h hidden channels. The input (a view's K-vector) enters
every unit through a fully connected layer; only the hidden state is convolved (3 x 3 x 3):

    f_t = sigmoid(W_f T(x_t) + U_f * h_{t-1} + b_f)
    i_t = sigmoid(W_i T(x_t) + U_i * h_{t-1} + b_i)
    s_t = f_t . s_{t-1} + i_t . tanh(W_s T(x_t) + U_s * h_{t-1} + b_s)
    h_t = tanh(s_t)

(3D-R2N2's 3D-LSTM: forget and input gates, no output gate; Golts & Schechner Eqs. 3-8 give the
general LSTM.) ``T`` is a full K x 3 N_h G^3 matrix in the paper config, or low-rank (K -> r -> ...)
in the CPU configs: DESIGN.md measured 89 % of a compact model's parameters in that one layer.
"""

from __future__ import annotations

import torch
from torch import nn


class LSTM3DGrid(nn.Module):
    """One recurrent step over a view's code; the state is ``(h, s)``.

    Args:
        code_bits: K.
        hidden: N_h.
        grid: G.
        rank: rank of the gate input (0 = full matrix).

    Shape:
        code float32 [B, K]; state ``(h, s)`` each float32 [B, N_h, G, G, G] (zeros at the start).
    """

    def __init__(self, code_bits: int, hidden: int, grid: int = 4, rank: int = 0):
        super().__init__()
        self.hidden, self.grid = hidden, grid
        n_out = 3 * hidden * grid ** 3
        if rank and rank < min(code_bits, n_out):
            self.gate_in = nn.Sequential(nn.Linear(code_bits, rank, bias=False), nn.Linear(rank, n_out))
        else:
            self.gate_in = nn.Linear(code_bits, n_out)
        self.gate_h = nn.Conv3d(hidden, 3 * hidden, 3, padding=1, bias=False)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state ``(h, s)``, each [batch, N_h, G, G, G]."""
        z = torch.zeros(batch, self.hidden, self.grid, self.grid, self.grid, device=device, dtype=dtype)
        return z, z.clone()

    def forward(self, code: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the state with one view's code; returns the new ``(h, s)``."""
        h, s = state
        g = self.grid
        x = self.gate_in(code).view(-1, 3 * self.hidden, g, g, g) + self.gate_h(h)
        f, i, c = x.chunk(3, dim=1)
        s = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(c)
        return torch.tanh(s), s
