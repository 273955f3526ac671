"""What every bit-code model family shares (CompressAI's manner: ``compress`` gives bytes,
``decompress`` gives the codes back): the code length K, the compression ratio (Golts & Schechner
Eq. 12), packing to bytes and the model fingerprint the wire protocol carries.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from voxlink.models.binarizer import compression_ratio, pack_bits, unpack_bits


class CodeError(ValueError):
    """A code of the wrong length (or a payload of the wrong size) for this model."""


class BitCodeModel(nn.Module):
    """Base of the models whose drone side is E_K + binarizer (``self.encoder``, ``self.binarizer``) with
    ``self.cfg`` holding ``code_bits``, ``binarize`` and ``image_size``.

    Subclasses set ``family`` (the model-file family), ``needs_pose`` and ``fingerprint_salt`` (a
    prefix hashed before the config, so that two families never share a fingerprint).
    """

    family = "implicit"
    needs_pose = False
    fingerprint_salt = ""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """E_K followed by the binarizer (Eq. 13: stochastic in training mode, ``sign`` in eval mode):
        what the drone runs.

        Shape:
            images float32 [N, 3, H, W] in [0, 1] -> codes float32 [N, K].

        Raises:
            ValueError: wrong image size.
        """
        return self.binarizer(self.encoder(images))

    @property
    def code_bits(self) -> int:
        """K: bits (values) per view."""
        return self.cfg.code_bits

    @property
    def compression_ratio(self) -> float:
        """Eq. 12 with N = 1, m = K (binarized), or m = 32 K for a float32 (uncompressed) variant."""
        bits = self.cfg.code_bits * (1 if self.cfg.binarize else 32)
        return compression_ratio(bits, self.cfg.image_size, self.cfg.image_size)

    def _check_code(self, codes: torch.Tensor) -> None:
        if codes.shape[-1] != self.cfg.code_bits:
            raise CodeError(f"model expects {self.cfg.code_bits}-bit codes, got {codes.shape[-1]}")

    @torch.no_grad()
    def compress(self, images: torch.Tensor) -> list[bytes]:
        """Views to packed codes (``ceil(K / 8)`` bytes each, MSB first), deterministic (eval mode).

        Shape:
            images float32 [N, 3, H, W] -> N byte strings.

        Raises:
            ValueError: for an uncompressed variant (it has no bit codes).
        """
        if not self.cfg.binarize:
            raise ValueError("the uncompressed variant has no binary codes to pack")
        was = self.training
        self.eval()
        codes = self.encode(images)
        self.train(was)
        return [pack_bits(c) for c in codes]

    def decompress(self, payloads: list[bytes]) -> torch.Tensor:
        """Packed codes back to +1/-1 codes float32 [N, K].

        Raises:
            CodeError: a payload of the wrong size.
        """
        try:
            return torch.stack([unpack_bits(p, self.cfg.code_bits) for p in payloads])
        except ValueError as e:
            raise CodeError(str(e)) from e

    @torch.no_grad()
    def reconstruct(self, payloads: list[bytes], K: torch.Tensor | None = None,
                    pose: torch.Tensor | None = None) -> torch.Tensor:
        """The ground's half, from bytes: one object's views' packed codes -> occupancy probabilities.

        The views are fused in order (:meth:`init_state`, :meth:`step`, :meth:`occupancy` of the family).

        Args:
            payloads: V packed codes. K: float32 [V, 3, 3] intrinsics (pixels) and pose: float32 [V, 4, 4]
                camera-to-object poses, for a pose-aware family (others ignore them).

        Returns:
            float32 [1, R, R, R] occupancy probabilities.

        Raises:
            CodeError: a payload of the wrong size. ValueError: a pose-aware family without poses.
        """
        codes = self.decompress(payloads)
        state = self.init_state(1)
        for v in range(len(codes)):
            state = self.step(codes[v:v + 1], state, pose=None if pose is None else pose[v:v + 1],
                              K=None if K is None else K[v:v + 1])
        return self.occupancy(state)

    def fingerprint(self) -> bytes:
        """8-byte model fingerprint (:func:`model_fingerprint`; the wire protocol carries it)."""
        return model_fingerprint(self, self.fingerprint_salt)


def model_fingerprint(model: nn.Module, salt: str = "") -> bytes:
    """8-byte fingerprint of a model: SHA-256 of ``salt`` (the family's), its config (``model.cfg``) and
    every weight, in name order.

    A config field added after models were shipped is named in its class's ``ADDED_FIELDS`` with the
    value every earlier model has; at that value it is left out of the hash, so earlier model files
    (and the drones that send their fingerprint) keep theirs.

    Returns:
        8 bytes.
    """
    added = getattr(type(model.cfg), "ADDED_FIELDS", {})
    cfg = {k: v for k, v in model.cfg.to_dict().items() if not (k in added and v == added[k])}
    h = hashlib.sha256((salt + repr(sorted(cfg.items()))).encode())
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return h.digest()[:8]
