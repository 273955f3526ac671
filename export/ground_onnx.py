"""ONNX export of the ground's half of the implicit model, and an ONNX Runtime decoder with the same
interface as :class:`voxlink.models.implicit.ImplicitModel` (``init_state``, ``step``, ``occupancy``,
``decode_depth``), so the ground station runs on either.

Three graphs in one folder: ``lstm_step.onnx`` (code [B, K], h, s [B, N_h, G, G, G] -> h', s'),
``occupancy.onnx`` (h -> occupancy probabilities [B, R, R, R]) and ``depth.onnx`` (code [N, K] ->
depth [N, H, W] metres, mask probability [N, H, W]); dynamic batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxlink.models.implicit import CodeError, ImplicitModel


class _Step(nn.Module):
    def __init__(self, m: ImplicitModel):
        super().__init__()
        self.lstm = m.lstm

    def forward(self, code, h, s):
        """The exported computation (see the module docstring for shapes)."""
        return self.lstm(code, (h, s))


class _Occ(nn.Module):
    def __init__(self, m: ImplicitModel):
        super().__init__()
        self.decoder = m.decoder

    def forward(self, h):
        """The exported computation (see the module docstring for shapes)."""
        return torch.softmax(self.decoder(h), dim=1)[:, 1]


class _Depth(nn.Module):
    def __init__(self, m: ImplicitModel):
        super().__init__()
        self.depth = m.depth

    def forward(self, code):
        """The exported computation (see the module docstring for shapes)."""
        d, logit = self.depth(code)
        return d, torch.sigmoid(logit)


def export_ground(model: ImplicitModel, folder: str | Path, opset: int = 17) -> Path:
    """Write the three ground graphs and ``ground.json`` (K, N_h, grid, fingerprint) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    c = model.cfg
    code = torch.zeros(2, c.code_bits)
    h, s = model.init_state(2)
    kw = dict(opset_version=opset, dynamo=False)
    torch.onnx.export(_Step(model), (code, h, s), str(folder / "lstm_step.onnx"), input_names=["code", "h", "s"],
                      output_names=["h_out", "s_out"],
                      dynamic_axes={n: {0: "batch"} for n in ("code", "h", "s", "h_out", "s_out")}, **kw)
    torch.onnx.export(_Occ(model), (h,), str(folder / "occupancy.onnx"), input_names=["h"], output_names=["occupancy"],
                      dynamic_axes={"h": {0: "batch"}, "occupancy": {0: "batch"}}, **kw)
    torch.onnx.export(_Depth(model), (code,), str(folder / "depth.onnx"), input_names=["code"],
                      output_names=["depth", "mask"], dynamic_axes={n: {0: "batch"} for n in ("code", "depth", "mask")}, **kw)
    meta = {"code_bits": c.code_bits, "hidden": c.hidden, "grid": c.grid, "resolution": c.resolution,
            "fingerprint": bytes.hex(model.fingerprint()), "model": c.name, "frame": c.frame}
    (folder / "ground.json").write_text(json.dumps(meta, indent=1))
    return folder


class OnnxGroundDecoder:
    """ONNX Runtime version of the ground's model calls (CUDA provider first where present).

    Raises:
        voxlink.backends.BackendUnavailable: onnxruntime missing or files unreadable.
    """

    def __init__(self, folder: str | Path):
        from voxlink.backends import BackendUnavailable

        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime is not installed: {e}") from e
        folder = Path(folder)
        try:
            self.meta = json.loads((folder / "ground.json").read_text())
            prov = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
            self._step = ort.InferenceSession(str(folder / "lstm_step.onnx"), providers=prov)
            self._occ = ort.InferenceSession(str(folder / "occupancy.onnx"), providers=prov)
            self._depth = ort.InferenceSession(str(folder / "depth.onnx"), providers=prov)
        except (OSError, ValueError, KeyError) as e:
            raise BackendUnavailable(f"cannot load the ground's ONNX graphs from {folder}: {e}") from e
        except Exception as e:  # onnxruntime's own exception types
            raise BackendUnavailable(f"cannot load the ground's ONNX graphs from {folder}: {e}") from e
        self.code_bits = int(self.meta["code_bits"])
        self.name = f"onnxruntime[{self._step.get_providers()[0]}]"

    def init_state(self, batch: int = 1, device=None):
        """Zero state ``(h, s)``: float32 [batch, N_h, G, G, G] each."""
        g, n = self.meta["grid"], self.meta["hidden"]
        z = torch.zeros(batch, n, g, g, g)
        return z, z.clone()

    def step(self, codes: torch.Tensor, state):
        """As :meth:`ImplicitModel.step`."""
        if codes.shape[-1] != self.code_bits:
            raise CodeError(f"model expects {self.code_bits}-bit codes, got {codes.shape[-1]}")
        h, s = self._step.run(None, {"code": codes.numpy().astype(np.float32), "h": state[0].numpy(), "s": state[1].numpy()})
        return torch.from_numpy(h), torch.from_numpy(s)

    def occupancy(self, state) -> torch.Tensor:
        """As :meth:`ImplicitModel.occupancy`."""
        return torch.from_numpy(self._occ.run(None, {"h": state[0].numpy()})[0])

    def decode_depth(self, codes: torch.Tensor):
        """As :meth:`ImplicitModel.decode_depth`."""
        if codes.shape[-1] != self.code_bits:
            raise CodeError(f"model expects {self.code_bits}-bit codes, got {codes.shape[-1]}")
        d, m = self._depth.run(None, {"code": codes.numpy().astype(np.float32)})
        return torch.from_numpy(d), torch.from_numpy(m)
