"""RNN image compression N_small (Golts & Schechner Sec. II-B and appendix, after Toderici et al. 2017).

One iteration ``t`` (Golts & Schechner Eqs. 9-11, additive reconstruction gamma = 1)::

    b_t   = B(E_t(r_{t-1}))             r_0 = x (centred to [-0.5, 0.5])
    x_t   = x_{t-1} + D_t(b_t)          x_0 = 0
    r_t   = x - x_t

* Encoder E: a 3x3 stride-2 convolution, then three convolutional-LSTM layers of stride 2; the last
  has 16 channels, so one iteration gives ``m = (H/16)(W/16) 16`` values (1024 at 128 x 128).
* Binarizer B: Eq. 13 on those values, with no convolution before it (N_small's change to [7]).
* Decoder D: a 1x1 convolution and a depth-to-space, three convolutional-LSTM layers each followed by
  a depth-to-space (x2), and a final 3x3 convolution to the RGB residual. Three depth-to-space stages
  after the LSTMs give only 8x; the appendix keeps N_small's decoder at three LSTM layers, so the
  fourth 2x comes from the depth-to-space after the first convolution.
* Loss Eq. 14: the mean absolute residual over pixels, channels and iterations.

``N`` iterations give ``N m`` bits per view: ratio ``384 / N`` at 128 x 128 (Eq. 12). Training draws
``N`` at random per batch (the appendix), so one model serves every rate.

The convolutional LSTM (Shi et al. 2015; Golts & Schechner Eqs. 3-8 with convolutions)::

    [i, f, o, g] = W * x_t + U * h_{t-1} + b
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);   h_t = sigmoid(o) tanh(c_t)

with a 3x3 input kernel (stride 2 in the encoder) and a 1x1 hidden kernel (Toderici's "hidden kernel").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from voxlink.models.binarizer import Binarizer, compression_ratio
from voxlink.models.codec import model_fingerprint


@dataclass
class CompressionConfig:
    """Architecture of N_small.

    Attributes:
        name: config name.
        image_size: input side in pixels (multiple of 16).
        enc_channels: widths of the first convolution and the first two encoder LSTMs
            (paper: 64, 256, 512).
        code_channels: channels of the last encoder LSTM = bits per position per iteration (16).
        dec_channels: widths of the decoder's 1x1 convolution and its three LSTMs (paper size:
            512, 512, 256, 128); each must be a multiple of 4 (depth-to-space).
        max_iterations: largest N (8 -> 48:1 at 128 x 128).
    """

    name: str = "nsmall-cpu"
    image_size: int = 128
    enc_channels: tuple[int, ...] = (32, 64, 128)
    code_channels: int = 16
    dec_channels: tuple[int, ...] = (128, 128, 64, 32)
    max_iterations: int = 8

    def __post_init__(self):
        self.enc_channels, self.dec_channels = tuple(self.enc_channels), tuple(self.dec_channels)
        if len(self.enc_channels) != 3 or len(self.dec_channels) != 4:
            raise ValueError("N_small has 3 encoder widths (conv + 2 LSTMs) and 4 decoder widths (conv + 3 LSTMs)")
        if any(c % 4 for c in self.dec_channels):
            raise ValueError(f"decoder widths must be multiples of 4 (depth-to-space), got {self.dec_channels}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")

    @property
    def bits_per_iteration(self) -> int:
        """m = (H/16)(W/16) * code_channels."""
        return (self.image_size // 16) ** 2 * self.code_channels

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        extra = set(d) - {f.name for f in dataclasses.fields(cls)}
        if extra:
            raise ValueError(f"unknown compression config keys: {sorted(extra)}")
        return cls(**d)


COMPRESSION_CONFIGS: dict[str, CompressionConfig] = {
    "paper": CompressionConfig(name="nsmall-paper", enc_channels=(64, 256, 512), dec_channels=(512, 512, 256, 128)),
    "cpu": CompressionConfig(name="nsmall-cpu"),
    "quick": CompressionConfig(name="nsmall-quick", enc_channels=(8, 16, 32), dec_channels=(32, 32, 16, 16)),
    "tiny": CompressionConfig(name="nsmall-tiny", enc_channels=(8, 8, 16), dec_channels=(16, 16, 8, 8)),
}


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (module docstring).

    Args:
        in_channels, out_channels: channels of ``x`` and of ``h``.
        kernel: input kernel. stride: input stride (2 halves the side). hidden_kernel: kernel on ``h``.

    Shape:
        x float32 [B, C_in, H, W]; state ``(h, c)`` each [B, C_out, H/s, W/s] or ``None`` (zeros)
        -> ``(h, c)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, hidden_kernel: int = 1):
        super().__init__()
        self.out_channels = out_channels
        self.conv_x = nn.Conv2d(in_channels, 4 * out_channels, kernel, stride, kernel // 2)
        self.conv_h = nn.Conv2d(out_channels, 4 * out_channels, hidden_kernel, 1, hidden_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        """One step; returns the new ``(h, c)``."""
        g = self.conv_x(x)
        if state is None:
            c = torch.zeros_like(g[:, : self.out_channels])
            gates = g
        else:
            h, c = state
            gates = g + self.conv_h(h)
        i, f, o, u = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        return torch.sigmoid(o) * torch.tanh(c), c


class CompressionEncoder(nn.Module):
    """E^comp: conv (stride 2) + three ConvLSTMs (stride 2); output in (-1, 1), ready for B.

    Shape:
        x float32 [B, 3, H, W] (the residual, centred) -> float32 [B, 16, H/16, W/16]; the state is a
        list of three ``(h, c)`` (or ``None`` at the first iteration).
    """

    def __init__(self, cfg: CompressionConfig):
        super().__init__()
        e0, e1, e2 = cfg.enc_channels
        self.conv = nn.Conv2d(3, e0, 3, stride=2, padding=1)
        self.rnn = nn.ModuleList([ConvLSTMCell(e0, e1, stride=2), ConvLSTMCell(e1, e2, stride=2),
                                  ConvLSTMCell(e2, cfg.code_channels, stride=2)])

    def forward(self, x: torch.Tensor, state: list | None):
        """One iteration: residual [B, 3, H, W] -> (values in (-1, 1) [B, 16, H/16, W/16], new state)."""
        y = self.conv(x)
        new = []
        for i, cell in enumerate(self.rnn):
            h, c = cell(y, None if state is None else state[i])
            new.append((h, c))
            y = h
        return y, new


class CompressionDecoder(nn.Module):
    """D^comp: 1x1 conv, depth-to-space, three ConvLSTMs each followed by depth-to-space, 3x3 conv to RGB.

    Shape:
        b float32 [B, 16, H/16, W/16] in {-1, +1} -> residual float32 [B, 3, H, W]; state a list of
        three ``(h, c)`` or ``None``.
    """

    def __init__(self, cfg: CompressionConfig):
        super().__init__()
        d0, d1, d2, d3 = cfg.dec_channels
        self.conv_in = nn.Conv2d(cfg.code_channels, d0, 1)
        self.rnn = nn.ModuleList([ConvLSTMCell(d0 // 4, d1), ConvLSTMCell(d1 // 4, d2), ConvLSTMCell(d2 // 4, d3)])
        self.shuffle = nn.PixelShuffle(2)
        self.conv_out = nn.Conv2d(d3 // 4, 3, 3, padding=1)
        with torch.no_grad():  # start with small residuals, so untrained later iterations add little noise
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()

    def forward(self, b: torch.Tensor, state: list | None):
        """One iteration: bits [B, 16, H/16, W/16] -> (RGB residual [B, 3, H, W], new state)."""
        y = self.shuffle(self.conv_in(b))
        new = []
        for i, cell in enumerate(self.rnn):
            h, c = cell(y, None if state is None else state[i])
            new.append((h, c))
            y = self.shuffle(h)
        return self.conv_out(y), new


class RNNCompressor(nn.Module):
    """N_small: variable-rate RNN image compression with additive reconstruction (module docstring).

    Args:
        cfg: :class:`CompressionConfig`.

    Shapes (B images, N iterations, m bits per iteration, H = W = 128):
        images float32 [B, 3, H, W] in [0, 1]; codes float32 [B, N, m] in {-1, +1};
        reconstructions float32 [B, N, 3, H, W] in [0, 1] (after 1..N iterations).
    """

    family = "codec"

    def __init__(self, cfg: CompressionConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = CompressionEncoder(cfg)
        self.binarizer = Binarizer()
        self.decoder = CompressionDecoder(cfg)

    @property
    def bits_per_iteration(self) -> int:
        """m: bits produced by one iteration (1024 at 128 x 128)."""
        return self.cfg.bits_per_iteration

    def compression_ratio(self, iterations: int) -> float:
        """Eq. 12: ``H W 3 8 / (N m)`` = 384 / N at 128 x 128."""
        return compression_ratio(self.bits_per_iteration, self.cfg.image_size, self.cfg.image_size, iterations)

    @property
    def code_bits(self) -> int:
        """Bits per view and iteration at ``image_size`` (m; the model file's K)."""
        return self.bits_per_iteration

    def fingerprint(self) -> bytes:
        """8-byte fingerprint of the config and weights (:func:`voxlink.models.codec.model_fingerprint`)."""
        return model_fingerprint(self, "codec:")

    def _check(self, images: torch.Tensor, iterations: int) -> None:
        # fully convolutional: any side that is a multiple of 16 (training uses 32 x 32 patches)
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % 16 or images.shape[3] % 16:
            raise ValueError(f"N_small expects images [B, 3, H, W] with H and W multiples of 16, got {tuple(images.shape)}")
        if not 1 <= iterations <= self.cfg.max_iterations:
            raise ValueError(f"iterations must be in 1..{self.cfg.max_iterations}, got {iterations}")

    def forward(self, images: torch.Tensor, iterations: int) -> dict[str, torch.Tensor]:
        """Encode, binarize and decode ``iterations`` times (training and evaluation).

        Shape:
            images [B, 3, H, W] in [0, 1] -> ``codes`` [B, N, m], ``recon`` [B, N, 3, H, W] (unclipped,
            in [0, 1] when perfect), ``loss`` scalar: Eq. 14, mean |r_t| over pixels, channels, t.

        Raises:
            ValueError: a side that is not a multiple of 16, or iterations outside 1..max_iterations.
        """
        self._check(images, iterations)
        codes, recons, loss = [], [], 0.0
        for b, recon, r in self._iterate(images - 0.5, iterations):
            loss = loss + r.abs().mean()
            codes.append(b)
            recons.append(recon + 0.5)
        return {"codes": torch.stack(codes, 1), "recon": torch.stack(recons, 1), "loss": loss / iterations}

    def _iterate(self, x: torch.Tensor, iterations: int):
        """The iterations of Eq. 14 on centred images ``x`` = images - 0.5 [B, 3, H, W]: yields, after each,
        its bits float32 [B, m], the reconstruction so far (centred) and the residual ``x - recon``."""
        recon = torch.zeros_like(x)
        r, se, sd = x, None, None
        for _ in range(iterations):
            e, se = self.encoder(r, se)
            b = self.binarizer(e)
            d, sd = self.decoder(b, sd)
            recon = recon + d
            r = x - recon
            yield b.flatten(1), recon, r

    def encode(self, images: torch.Tensor, iterations: int) -> torch.Tensor:
        """The bits only (the edge's job; the encoder needs the decoder for the residual).

        Shape:
            images [B, 3, H, W] in [0, 1] -> codes float32 [B, N, m] in {-1, +1}.
        """
        return self.forward(images, iterations)["codes"]

    @torch.no_grad()
    def encode_to_quality(self, images: torch.Tensor, psnr_db: float, max_iterations: int | None = None) -> list[torch.Tensor]:
        """Variable rate: each view's code stops at the first iteration whose reconstruction reaches
        ``psnr_db`` (more iterations for views that need them), at most ``max_iterations`` (None: N_max).
        The iterations are those of :meth:`forward` (the first N of a view's code are the same bits as
        :meth:`encode` with N iterations); the loop ends when every view is done.

        Shape:
            images float32 [B, 3, H, W] in [0, 1] -> B codes float32 [N_i m] in {-1, +1}, N_i in 1..max.

        Raises:
            ValueError: as :meth:`forward`; a non-finite ``psnr_db``.
        """
        nmax = max_iterations or self.cfg.max_iterations
        self._check(images, nmax)
        if not math.isfinite(psnr_db):
            raise ValueError(f"psnr_db must be finite, got {psnr_db}")
        x = images - 0.5
        codes, n_used = [], torch.full((len(x),), nmax, dtype=torch.long)
        done = torch.zeros(len(x), dtype=torch.bool)
        for t, (b, recon, _) in enumerate(self._iterate(x, nmax)):
            codes.append(b)
            mse = (recon.clamp(-0.5, 0.5) - x).square().flatten(1).mean(1).clamp_min(1e-12)
            reached = ~done & (10 * torch.log10(1.0 / mse) >= psnr_db)
            n_used[reached] = t + 1
            done |= reached
            if bool(done.all()):
                break
        c = torch.stack(codes, 1)
        return [c[i, :int(n_used[i])].flatten() for i in range(len(x))]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Viewable images from codes (the ground's job).

        Shape:
            codes float32 [B, N, m] in {-1, +1} -> reconstructions float32 [B, N, 3, H, W] clipped to
            [0, 1] (index ``N - 1`` is the full-rate image).

        Raises:
            ValueError: codes of another length than m per iteration.
        """
        m, side = self.bits_per_iteration, self.cfg.image_size // 16
        if codes.dim() != 3 or codes.shape[-1] != m:
            raise ValueError(f"expected codes [B, N, {m}], got {tuple(codes.shape)}")
        recon, sd, out = 0.0, None, []
        for t in range(codes.shape[1]):
            d, sd = self.decoder(codes[:, t].view(-1, self.cfg.code_channels, side, side), sd)
            recon = recon + d
            out.append(recon + 0.5)
        return torch.stack(out, 1).clamp(0, 1)

    @torch.no_grad()
    def compress(self, images: torch.Tensor, iterations: int) -> list[bytes]:
        """Views to packed codes, ``N m / 8`` bytes each (eval mode: deterministic sign).

        Shape:
            images float32 [B, 3, H, W] -> B byte strings (iteration-major, MSB first).
        """
        was = self.training
        self.eval()
        codes = self.encode(images, iterations)
        self.train(was)
        return [np.packbits(c.flatten().numpy() > 0).tobytes() for c in codes.cpu()]

    def decompress(self, payloads: list[bytes]) -> torch.Tensor:
        """Packed codes back to codes float32 [B, N, m]; N from the payload length.

        Raises:
            ValueError: a payload that is not a whole number of iterations.
        """
        m = self.bits_per_iteration
        out = []
        for p in payloads:
            if len(p) == 0 or (len(p) * 8) % m:
                raise ValueError(f"a payload must be a whole number of {m // 8}-byte iterations, got {len(p)} bytes")
            bits = np.unpackbits(np.frombuffer(p, np.uint8)).astype(np.float32) * 2 - 1
            out.append(torch.from_numpy(bits).view(-1, m))
        return torch.stack(out)
