"""The implicit model (Golts & Schechner Sec. III-C, Fig. 7): E_K -> B -> 3D-LSTM grid -> D^3D,
plus a depth decoder that reads each view's code.

The drone runs :meth:`ImplicitModel.encode` (E_K + sign); the ground runs :meth:`step` per
arriving code and :meth:`occupancy` / :meth:`decode_depth` whenever it wants an answer. Only the 3D
loss (Eq. 15) trains the codec; the depth decoder learns from detached codes, so the bits stay
those of the paper's implicit model.
"""

from __future__ import annotations

import torch
from torch import nn

from voxlink.models.binarizer import Binarizer
from voxlink.models.codec import BitCodeModel, CodeError  # noqa: F401 (CodeError: part of this module's API)
from voxlink.models.config import ModelConfig
from voxlink.models.decoder import Decoder3D, DepthDecoder
from voxlink.models.encoder import Encoder2D
from voxlink.models.lstm3d import LSTM3DGrid


class ImplicitModel(BitCodeModel):
    """E_K + binarizer + 3D-LSTM + 3D decoder (+ depth decoder).

    Args:
        cfg: architecture (:class:`voxlink.models.config.ModelConfig`).

    Shapes (B objects, V views, K bits, R = 32, H = W = 128):
        images float32 [B, V, 3, H, W] in [0, 1]; codes float32 [B, V, K] in {-1, +1} (or floats
        for the uncompressed variant); logits float32 [B, 2, R, R, R]; occupancy probabilities
        float32 [B, R, R, R] indexed ``[x, y, z]``.
    """

    family = "implicit"
    needs_pose = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder2D(cfg.code_bits, cfg.enc_channels, cfg.enc_first_kernel, cfg.image_size)
        self.binarizer = Binarizer() if cfg.binarize else nn.Identity()
        self.lstm = LSTM3DGrid(cfg.code_bits, cfg.hidden, cfg.grid, cfg.gate_rank)
        self.decoder = Decoder3D(cfg.hidden, cfg.dec_channels, cfg.resolution)
        self.depth = DepthDecoder(cfg.code_bits, cfg.depth_channels, cfg.image_size)

    # -- ground -----------------------------------------------------------------------------------
    def init_state(self, batch: int = 1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero 3D-LSTM state for ``batch`` objects."""
        return self.lstm.init_state(batch, device=device)

    def step(self, codes: torch.Tensor, state, pose=None, K=None):
        """Fuse one view per object into the state (the 3D-LSTM's update; ``pose`` and ``K`` are
        accepted for the common model interface and ignored: the paper's model does not use poses).

        Shape:
            codes float32 [B, K]; state ``(h, s)`` [B, N_h, G, G, G] each -> new state.

        Raises:
            CodeError: codes of another length than K.
        """
        self._check_code(codes)
        return self.lstm(codes, state)

    def logits(self, state) -> torch.Tensor:
        """3D decoder logits [B, 2, R, R, R] from a state."""
        return self.decoder(state[0])

    def occupancy(self, state) -> torch.Tensor:
        """Occupancy probabilities float32 [B, R, R, R] (softmax class 1) from a state."""
        return torch.softmax(self.logits(state), dim=1)[:, 1]

    def decode_depth(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth maps from codes (one per view).

        Shape:
            codes float32 [N, K] -> depth float32 [N, H, W] metres, mask probability float32 [N, H, W].

        Raises:
            CodeError: codes of another length than K.
        """
        self._check_code(codes)
        d, m = self.depth(codes)
        return d, torch.sigmoid(m)

    # -- training ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode every view, fuse them in order, decode the grid; also predict each view's depth.

        Shape:
            images [B, V, 3, H, W] -> ``logits`` [B, 2, R, R, R], ``codes`` [B, V, K],
            ``depth`` [B, V, H, W] (metres), ``mask_logit`` [B, V, H, W].
        """
        b, v = images.shape[:2]
        codes = self.encode(images.flatten(0, 1)).view(b, v, -1)
        state = self.init_state(b, images.device)
        for i in range(v):
            state = self.lstm(codes[:, i], state)
        depth, mask_logit = self.depth(codes.detach().flatten(0, 1))
        h, w = depth.shape[-2:]
        return {"logits": self.decoder(state[0]), "codes": codes, "depth": depth.view(b, v, h, w),
                "mask_logit": mask_logit.view(b, v, h, w)}


def occupancy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Voxel-wise 2-class softmax cross-entropy (Golts & Schechner Eq. 15), mean over voxels and batch.

    Shape:
        logits float32 [B, 2, R, R, R]; target float32/bool [B, R, R, R] (0/1) -> scalar.
    """
    return nn.functional.cross_entropy(logits, target.long())


def depth_loss(depth: torch.Tensor, mask_logit: torch.Tensor, true_depth: torch.Tensor) -> torch.Tensor:
    """L1 depth error (metres) on the true mask's pixels + BCE on the mask.

    Shape:
        depth, mask_logit, true_depth float32 [..., H, W] (true depth 0 = background) -> scalar.
    """
    mask = true_depth > 0
    l1 = (depth - true_depth).abs()[mask].mean() if mask.any() else depth.sum() * 0
    return l1 + nn.functional.binary_cross_entropy_with_logits(mask_logit, mask.float())


def iou(prob: torch.Tensor, target: torch.Tensor, tau: float = 0.4) -> torch.Tensor:
    """Intersection over union of ``prob > tau`` with the target (Golts & Schechner Eq. 17).

    Shape:
        prob float [B, R, R, R]; target [B, R, R, R] (0/1) -> float32 [B]. An empty union gives 1.
    """
    p = prob > tau
    t = target > 0.5
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
