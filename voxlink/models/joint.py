"""The paper's other two unified models and the plain 3D-R2N2 network they build on.

* :class:`Reconstructor3D`: 3D-R2N2 (Choy et al. 2016; Golts & Schechner Sec. II-C, Fig. 4): E^3D (a
  float K-vector, no binarizer), the 3D-LSTM grid and D^3D. Alone, it is the network trained on
  JPEG 2000 images (the paper's baseline).
* :class:`SequentialModel` (Sec. III-A, Fig. 5): N_small compresses each view, its decoder
  reconstructs the image, and 3D-R2N2 reads the reconstruction.
* :class:`DirectModel` (Sec. III-B, Fig. 6): the N_small codes feed the 3D-LSTM directly (no E^3D);
  the codes of ``N < N_max`` iterations are zero-padded to ``N_max m`` inputs, so one model serves
  every rate (zero = "no bits received"). Optionally (:attr:`JointConfig.code_encoder`, on in the
  ``quick`` benchmark profile) a :class:`CodeEncoder` reads the padded codes first: a departure from the
  paper, which feeds them to the 3D-LSTM's gates through one linear map.

Both unified models minimise Eq. 16 jointly: the compression loss (Eq. 14) of every view plus the 3D
loss (Eq. 15) of the final view. (``voxlink bench accuracy`` may start them from a pre-trained N_small:
:mod:`voxlink.bench.accuracy`.)

Streaming (the drone and the ground, as the implicit model): the drone sends each view's N iterations
(``N m`` bits, N in 1..N_max chosen per view: variable rate); the ground keeps the 3D-LSTM's state per
object and steps it one view at a time (:meth:`JointModel.step_decoded`), and shows the view's decoded
image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from voxlink.models.codec import CodeError
from voxlink.models.config import ModelConfig
from voxlink.models.decoder import Decoder3D
from voxlink.models.encoder import Encoder2D
from voxlink.models.implicit import occupancy_loss
from voxlink.models.lstm3d import LSTM3DGrid
from voxlink.models.rnn_compress import CompressionConfig, RNNCompressor


class CodeEncoder(nn.Module):
    """The direct model's optional code encoder: 2D convolutions over the spatial layout of N_small's
    bits before the 3D-LSTM (a departure from Sec. III-B, where the codes feed the 3D-LSTM's gates through
    one linear map; :attr:`JointConfig.code_encoder`). Each iteration's m bits are
    ``code_channels`` x (H/16) x (W/16) (Toderici et al. 2017's binarizer layout), so the zero-padded
    codes of N_max iterations are a [N_max c, H/16, W/16] map: a 3 x 3 convolution, a strided 3 x 3
    convolution, each followed by GroupNorm (8 groups) and ReLU, flattened. No image is decoded. (Without
    the GroupNorm, one start of three in the benchmark learnt almost nothing from the codes; with it the
    same seed scored 0.02 to 0.03 higher on the validation objects: ``docs/results.md``.)

    Args:
        in_channels: N_max x code_channels. side: H/16. channels: (c0, c1) of the two convolutions.

    Shape:
        codes float32 [B, N_max m] (zero-padded, {-1, 0, +1}) -> float32 [B, c1 ceil(side/2)^2].
    """

    def __init__(self, in_channels: int, side: int, channels: tuple[int, int]):
        super().__init__()
        self.in_channels, self.side = in_channels, side
        c0, c1 = channels
        self.net = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1), nn.GroupNorm(8, c0), nn.ReLU(inplace=True),
                                 nn.Conv2d(c0, c1, 3, stride=2, padding=1), nn.GroupNorm(8, c1), nn.ReLU(inplace=True),
                                 nn.Flatten(1))
        self.out_features = c1 * ((side + 1) // 2) ** 2

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Padded codes [B, N_max m] -> vectors [B, out_features]."""
        return self.net(codes.view(-1, self.in_channels, self.side, self.side))


class Reconstructor3D(nn.Module):
    """3D-R2N2: views -> float K-vectors (E^3D) -> 3D-LSTM -> D^3D logits.

    Args:
        cfg: the 3D part of a :class:`~voxlink.models.config.ModelConfig` (``binarize`` is ignored:
            the code is a float vector).
        code_inputs: input length of the 3D-LSTM when it is fed codes directly (the direct model);
            ``None`` builds E^3D and feeds it images. With codes and a full-matrix config
            (``gate_rank = 0``), the gate input is factored through ``code_bits`` (rank K).

    Shape:
        images float32 [B, V, 3, H, W] in [0, 1] (or codes float32 [B, V, K]) -> logits float32
        [B, 2, R, R, R].
    """

    def __init__(self, cfg: ModelConfig, code_inputs: int | None = None):
        super().__init__()
        self.cfg = cfg
        k = code_inputs or cfg.code_bits
        self.encoder = None if code_inputs else Encoder2D(cfg.code_bits, cfg.enc_channels, cfg.enc_first_kernel,
                                                            cfg.image_size)
        # Fed codes directly, the 3D-LSTM's input is N_max m wide (8192): a full gate matrix would be
        # 8192 x 3 N_h G^3 (201 M parameters at paper size), so it is factored through K (low-rank T).
        rank = cfg.gate_rank or (cfg.code_bits if code_inputs else 0)
        self.lstm = LSTM3DGrid(k, cfg.hidden, cfg.grid, rank)
        self.decoder = Decoder3D(cfg.hidden, cfg.dec_channels, cfg.resolution)

    def fuse(self, vectors: torch.Tensor) -> torch.Tensor:
        """3D-LSTM over the views in order, then D^3D: vectors [B, V, K] -> logits [B, 2, R, R, R]."""
        state = self.lstm.init_state(vectors.shape[0], vectors.device)
        for i in range(vectors.shape[1]):
            state = self.lstm(vectors[:, i], state)
        return self.decoder(state[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, V, 3, H, W] -> logits [B, 2, R, R, R]."""
        b, v = images.shape[:2]
        return self.fuse(self.encoder(images.flatten(0, 1)).view(b, v, -1))


@dataclass
class JointConfig:
    """A unified model: N_small plus the 3D part.

    Attributes:
        kind: ``sequential`` or ``direct``.
        compression: N_small's architecture.
        recon: the 3D part (E^3D widths, N_h, decoder); ``code_bits`` is E^3D's K (sequential).
        comp_weight: weight of the compression loss in Eq. 16 (1 in the paper).
        code_encoder: the direct model only: channels (c0, c1) of a :class:`CodeEncoder` between the
            codes and the 3D-LSTM; ``()`` (the default): the paper's direct model, codes into the gates.
    """

    kind: str = "sequential"
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    recon: ModelConfig = field(default_factory=lambda: ModelConfig(binarize=False))
    comp_weight: float = 1.0
    code_encoder: tuple[int, ...] = ()

    def __post_init__(self):
        self.code_encoder = tuple(int(c) for c in self.code_encoder)
        if self.code_encoder and (self.kind != "direct" or len(self.code_encoder) != 2
                                  or any(c <= 0 or c % 8 for c in self.code_encoder)):
            raise ValueError(f"code_encoder is two channel counts (multiples of 8: GroupNorm of 8 groups) of the "
                             f"direct model, got {self.code_encoder} for {self.kind!r}")
        if isinstance(self.compression, dict):
            self.compression = CompressionConfig.from_dict(self.compression)
        if isinstance(self.recon, dict):
            self.recon = ModelConfig.from_dict(self.recon)
        if self.kind not in ("sequential", "direct"):
            raise ValueError(f"kind must be sequential or direct, got {self.kind!r}")

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable)."""
        d = {"kind": self.kind, "compression": self.compression.to_dict(), "recon": self.recon.to_dict(),
             "comp_weight": self.comp_weight}
        if self.code_encoder:  # absent otherwise: files of the paper's models stay as they were
            d["code_encoder"] = list(self.code_encoder)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JointConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    @property
    def code_bits(self) -> int:
        """m: bits per view and iteration (what a stream-info message announces; a view carries N m)."""
        return self.compression.bits_per_iteration

    @property
    def image_size(self) -> int:
        """Side of a view in pixels."""
        return self.compression.image_size

    @property
    def frame(self) -> str:
        """Reconstruction frame of the 3D part."""
        return self.recon.frame

    @property
    def resolution(self) -> int:
        """Side R of the occupancy grid in voxels."""
        return self.recon.resolution

    @property
    def name(self) -> str:
        """The model's name (its 3D part's)."""
        return self.recon.name


class JointModel(nn.Module):
    """The sequential or the direct model (module docstring), one model for every rate.

    Args:
        cfg: :class:`JointConfig`.

    Shapes (B objects, V views, N iterations, m bits per iteration):
        images float32 [B, V, 3, H, W] in [0, 1]; codes float32 [B, V, N, m] in {-1, +1};
        logits float32 [B, 2, R, R, R].
    """

    needs_pose = False

    def __init__(self, cfg: JointConfig):
        super().__init__()
        self.cfg = cfg
        self.family = cfg.kind
        self.compressor = RNNCompressor(cfg.compression)
        m, n = cfg.compression.bits_per_iteration, cfg.compression.max_iterations
        self.code_encoder = None
        if cfg.code_encoder:
            side = cfg.compression.image_size // 16
            self.code_encoder = CodeEncoder(n * cfg.compression.code_channels, side, cfg.code_encoder)
        code_inputs = (self.code_encoder.out_features if self.code_encoder else m * n) if cfg.kind == "direct" else None
        self.recon = Reconstructor3D(cfg.recon, code_inputs=code_inputs)

    def compression_ratio(self, iterations: int) -> float:
        """Eq. 12 for ``iterations`` N_small iterations (384 / N at 128 x 128)."""
        return self.compressor.compression_ratio(iterations)

    def reconstruct_from_codes(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ground's half: codes -> occupancy logits, and the decoded images.

        Shape:
            codes [B, V, N, m] -> logits [B, 2, R, R, R], images float32 [B, V, 3, H, W] in [0, 1].

        Raises:
            ValueError: codes of another length per iteration or more than ``max_iterations``.
        """
        b, v, n, m = codes.shape
        if n > self.cfg.compression.max_iterations:
            raise ValueError(f"at most {self.cfg.compression.max_iterations} iterations, got {n}")
        images = self.compressor.decode(codes.flatten(0, 1))[:, -1]
        s = images.shape[-1]
        images = images.view(b, v, 3, s, s)
        if self.cfg.kind == "direct":
            return self.recon.fuse(self.code_vectors(codes)), images
        return self.recon(images), images

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """The direct model's 3D-LSTM inputs: the codes zero-padded to N_max iterations ("no bits
        received"), through the :class:`CodeEncoder` where the config has one.

        Shape:
            codes float32 [B, V, N, m] -> float32 [B, V, N_max m] (or [B, V, code encoder outputs]).
        """
        b, v, n, m = codes.shape
        pad = self.cfg.compression.max_iterations - n
        if pad:
            codes = torch.cat([codes, codes.new_zeros(b, v, pad, m)], 2)
        codes = codes.flatten(2)
        if self.code_encoder is not None:
            codes = self.code_encoder(codes.flatten(0, 1)).view(b, v, -1)
        return codes

    def forward(self, images: torch.Tensor, iterations: int) -> dict[str, torch.Tensor]:
        """Compress every view with ``iterations`` iterations and reconstruct the grid (training).

        Shape:
            images [B, V, 3, H, W] -> ``logits`` [B, 2, R, R, R], ``codes`` [B, V, N, m],
            ``loss_comp`` scalar (Eq. 14, mean over views: Eq. 16's first term).
        """
        b, v = images.shape[:2]
        out = self.compressor(images.flatten(0, 1), iterations)
        codes = out["codes"].view(b, v, iterations, -1)
        if self.cfg.kind == "direct":
            logits = self.recon.fuse(self.code_vectors(codes))
        else:
            s = images.shape[-1]
            logits = self.recon(out["recon"][:, -1].clamp(0, 1).view(b, v, 3, s, s))
        return {"logits": logits, "codes": codes, "loss_comp": out["loss"]}

    def compress(self, images: torch.Tensor, iterations: int) -> list[bytes]:
        """Views to N_small's packed codes, ``iterations`` x m / 8 bytes each (what the drone sends).

        Shape:
            images float32 [N, 3, H, W] -> N byte strings.
        """
        return self.compressor.compress(images, iterations)

    def decompress(self, payloads: list[bytes]) -> torch.Tensor:
        """Packed codes back to codes float32 [V, N, m] (N from the payload length; the views of one
        object carry the same N).

        Raises:
            ValueError: a payload that is not a whole number of iterations.
        """
        return self.compressor.decompress(payloads)

    @torch.no_grad()
    def reconstruct(self, payloads: list[bytes], K=None, pose=None) -> torch.Tensor:
        """One object's views' packed codes -> occupancy probabilities float32 [1, R, R, R] (the ground's
        half: :meth:`reconstruct_from_codes`; ``K`` and ``pose`` are not used)."""
        return torch.softmax(self.reconstruct_from_codes(self.decompress(payloads)[None])[0], 1)[:, 1]

    # -- streaming: the drone's and the ground's halves, one view at a time ------------------------
    def fingerprint(self) -> bytes:
        """8-byte fingerprint of the config and weights (:func:`voxlink.models.codec.model_fingerprint`)."""
        from voxlink.models.codec import model_fingerprint

        return model_fingerprint(self, f"{self.cfg.kind}:")

    def encode(self, images: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
        """The drone's half: each view's bits after ``iterations`` N_small iterations (None: N_max).

        Shape:
            images float32 [B, 3, H, W] in [0, 1] -> codes float32 [B, N m] in {-1, +1} (iteration-major).

        Raises:
            ValueError: iterations outside 1..N_max, or a side that is not a multiple of 16.
        """
        n = iterations or self.cfg.compression.max_iterations
        return self.compressor.encode(images, n).flatten(1)

    def init_state(self, batch: int = 1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero 3D-LSTM state for ``batch`` objects: ``(h, s)`` float32 [B, N_h, G, G, G] each."""
        return self.recon.lstm.init_state(batch, device)

    def _iterations(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, N m] -> [B, N, m], checked."""
        m, nmax = self.cfg.compression.bits_per_iteration, self.cfg.compression.max_iterations
        if codes.dim() != 2 or codes.shape[1] % m or not 1 <= codes.shape[1] // m <= nmax:
            raise CodeError(f"expected codes [B, N x {m}] with N in 1..{nmax}, got {tuple(codes.shape)}")
        return codes.view(codes.shape[0], -1, m)

    def step_decoded(self, codes: torch.Tensor, state, pose=None, K=None):
        """The ground's half for one view per object: decode the view's image, step the 3D-LSTM
        (``pose`` and ``K`` are accepted for the common interface and ignored: the paper's models do not
        use poses).

        Shape:
            codes float32 [B, N m] (the same N for the batch) in {-1, +1}; state ``(h, s)`` ->
            ``(new state, images float32 [B, 3, H, W] in [0, 1])`` (the decoded views).

        Raises:
            CodeError: codes that are not a whole number of 1..N_max iterations.
        """
        c = self._iterations(codes)
        images = self.compressor.decode(c)[:, -1]
        return self.recon.lstm(self._lstm_input(c, images), state), images

    def step(self, codes: torch.Tensor, state, pose=None, K=None):
        """:meth:`step_decoded` without the images: the new state (the direct model decodes no image)."""
        c = self._iterations(codes)
        return self.recon.lstm(self._lstm_input(c), state)

    def _lstm_input(self, c: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """The 3D-LSTM's input for one view per object: the zero-padded codes (direct) or E^3D of the
        decoded view (sequential; ``images`` [B, 3, H, W] if already decoded). c: codes [B, N, m]."""
        if self.cfg.kind == "direct":
            return self.code_vectors(c[:, None]).flatten(1)
        return self.recon.encoder(images if images is not None else self.compressor.decode(c)[:, -1])

    def occupancy(self, state) -> torch.Tensor:
        """Occupancy probabilities float32 [B, R, R, R] (softmax class 1) from a state."""
        return torch.softmax(self.recon.decoder(state[0]), dim=1)[:, 1]

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Eq. 16: ``comp_weight * L_comp + L_3D`` (target float [B, R, R, R] 0/1)."""
        return self.cfg.comp_weight * out["loss_comp"] + occupancy_loss(out["logits"], target)

