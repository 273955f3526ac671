"""PyTorch -> ONNX export of the edge encoder (E_K + sign), checked in ONNX Runtime.

The exported graph takes ``images`` float32 [N, 3, 128, 128] in [0, 1] (static size, dynamic
batch) and returns ``codes`` float32 [N, K] of exactly +1/-1 (``sign`` with ``sign(0) = +1``, as
:func:`voxlink.models.binarizer.binarize` at inference).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxlink.models.implicit import ImplicitModel

log = logging.getLogger(__name__)


class EdgeEncoder(nn.Module):
    """E_K followed by the deterministic sign: what the drone runs.

    Shape:
        images float32 [N, 3, H, W] in [0, 1] -> codes float32 [N, K] in {-1, +1}.
    """

    def __init__(self, model: ImplicitModel):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode and binarize deterministically."""
        x = self.encoder(images)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def export_onnx(model: ImplicitModel, out: str | Path, opset: int = 17) -> Path:
    """Export E_K + sign to ONNX and validate it with the ONNX checker.

    Args:
        model: a model with an ``encoder`` (E_K) and ``cfg.code_bits`` / ``cfg.image_size``: the implicit
            or the fusion family (put in eval mode here).
        out: ``.onnx`` path.
        opset: ONNX opset.

    Returns:
        the written path. The model's fingerprint, K, name and family are stored as metadata properties
        ``voxlink.fingerprint``, ``voxlink.code_bits``, ``voxlink.model`` and ``voxlink.family`` (ONNX Runtime
        reads them as the session's custom metadata, so the drone needs no ``onnx`` package).

    Raises:
        onnx.checker.ValidationError: the exported graph is invalid.
    """
    import onnx

    model.eval()
    enc = EdgeEncoder(model).eval()
    size = model.cfg.image_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.rand(2, 3, size, size)
    torch.onnx.export(enc, (dummy,), str(out), input_names=["images"], output_names=["codes"],
                      dynamic_axes={"images": {0: "batch"}, "codes": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    m = onnx.load(str(out))
    for k, v in (("voxlink.fingerprint", bytes.hex(model.fingerprint())), ("voxlink.code_bits", str(model.cfg.code_bits)),
                 ("voxlink.model", model.cfg.name), ("voxlink.family", getattr(model, "family", "implicit"))):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def onnx_parity(model: ImplicitModel, onnx_path: str | Path, images: torch.Tensor) -> dict:
    """Compare ONNX Runtime (CPU) codes with PyTorch's on the same views.

    Args:
        images: float32 [N, 3, H, W] in [0, 1].

    Returns:
        ``{"views": N, "bits": N*K, "mismatched_bits": m, "mismatched_views": v, "max_abs_pre_sign": ...}``;
        a mismatch can only come from pre-activations within float rounding of 0.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["codes"], {"images": images.numpy().astype(np.float32)})[0]
    model.eval()
    with torch.no_grad():
        ref = model.encode(images).numpy()
        pre = model.encoder(images).numpy()
    diff = got != ref
    return {"views": int(images.shape[0]), "bits": int(diff.size), "mismatched_bits": int(diff.sum()),
            "mismatched_views": int(diff.any(axis=1).sum()),
            "min_abs_pre_sign": float(np.abs(pre).min()) if pre.size else 0.0}
