"""ONNX export of the ground's half of a model, and ONNX Runtime decoders with the same interface as
the PyTorch models, so the ground station runs on either.

The implicit model (:class:`voxlink.models.implicit.ImplicitModel`: ``init_state``, ``step``,
``occupancy``, ``decode_depth``): three graphs in one folder: ``lstm_step.onnx`` (code [B, K], h, s
[B, N_h, G, G, G] -> h', s'), ``occupancy.onnx`` (h -> occupancy probabilities [B, R, R, R]) and
``depth.onnx`` (code [N, K] -> depth [N, H, W] metres, mask probability [N, H, W]).

The pose-aware fusion model (:class:`voxlink.models.fusion.FusionModel`: also ``step_decoded``): its
networks as two graphs, ``depth.onnx`` (the view decoder, as above) and ``occupancy.onnx`` (the fused
evidence [B, 5, R, R, R] -> the 3D refiner's occupancy probabilities [B, R, R, R]); placing each view's
evidence with its pose and the min/max fusion between them are geometry, not learned, and stay the
model's own PyTorch functions (:meth:`FusionModel.place`).

All graphs have a dynamic batch. ``ground.json`` records the model's fingerprint: a folder whose graphs
were exported from the same weights is reused, not exported again at every start.
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


class _Refine(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, state):
        """The exported computation (see the module docstring for shapes)."""
        return torch.softmax(self.m.logits(state), dim=1)[:, 1]


def _graphs(family: str) -> tuple[str, ...]:
    return ("depth.onnx", "occupancy.onnx") if family == "fusion" else ("lstm_step.onnx", "occupancy.onnx", "depth.onnx")


def export_ground(model, folder: str | Path, opset: int = 17) -> Path:
    """Write the ground graphs of an implicit or fusion model and ``ground.json`` (family, K, sizes,
    fingerprint) into ``folder``; a folder that holds them for the same fingerprint already is kept.

    Returns:
        the folder.

    Raises:
        OSError: the folder cannot be written. RuntimeError: the export failed.
    """
    folder = Path(folder)
    family = getattr(model, "family", "implicit")
    fp = bytes.hex(model.fingerprint())
    try:
        meta = json.loads((folder / "ground.json").read_text())
        if meta.get("fingerprint") == fp and all((folder / g).is_file() for g in _graphs(family)):
            return folder  # the cache: exported from these weights before
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    # the wrappers go to eval mode first: torch.onnx.export puts a module back into the mode it found it
    # in, and a new wrapper is in training mode, which would leave the model's modules training after it
    model.eval()
    c = model.cfg
    kw = dict(opset_version=opset, dynamo=False)
    if family == "fusion":
        code = torch.zeros(2, c.code_bits)
        torch.onnx.export(_Depth(model).eval(), (code,), str(folder / "depth.onnx"), input_names=["code"],
                          output_names=["depth", "mask"], dynamic_axes={n: {0: "batch"} for n in ("code", "depth", "mask")},
                          **kw)
        torch.onnx.export(_Refine(model).eval(), (model.init_state(2),), str(folder / "occupancy.onnx"), input_names=["state"],
                          output_names=["occupancy"], dynamic_axes={"state": {0: "batch"}, "occupancy": {0: "batch"}}, **kw)
        meta = {"family": "fusion", "code_bits": c.code_bits, "resolution": c.resolution, "fingerprint": fp,
                "model": c.name}
        (folder / "ground.json").write_text(json.dumps(meta, indent=1))
        return folder
    code = torch.zeros(2, c.code_bits)
    h, s = model.init_state(2)
    torch.onnx.export(_Step(model).eval(), (code, h, s), str(folder / "lstm_step.onnx"), input_names=["code", "h", "s"],
                      output_names=["h_out", "s_out"],
                      dynamic_axes={n: {0: "batch"} for n in ("code", "h", "s", "h_out", "s_out")}, **kw)
    torch.onnx.export(_Occ(model).eval(), (h,), str(folder / "occupancy.onnx"), input_names=["h"], output_names=["occupancy"],
                      dynamic_axes={"h": {0: "batch"}, "occupancy": {0: "batch"}}, **kw)
    torch.onnx.export(_Depth(model).eval(), (code,), str(folder / "depth.onnx"), input_names=["code"],
                      output_names=["depth", "mask"], dynamic_axes={n: {0: "batch"} for n in ("code", "depth", "mask")}, **kw)
    meta = {"family": "implicit", "code_bits": c.code_bits, "hidden": c.hidden, "grid": c.grid,
            "resolution": c.resolution, "fingerprint": fp, "model": c.name, "frame": c.frame}
    (folder / "ground.json").write_text(json.dumps(meta, indent=1))
    return folder


def _open_graphs(folder: str | Path, names: tuple[str, ...]) -> tuple[dict, dict]:
    """``(ground.json, {name: onnxruntime.InferenceSession})`` of an exported folder, CUDA provider first
    where present.

    Raises:
        voxlink.backends.BackendUnavailable: onnxruntime missing or the files unreadable.
    """
    from voxlink.backends import BackendUnavailable

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime is not installed: {e}") from e
    folder = Path(folder)
    try:
        meta = json.loads((folder / "ground.json").read_text())
        prov = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        so = ort.SessionOptions()
        # no spinning: ONNX Runtime's idle threads otherwise spin after each run and take the cores from
        # the PyTorch geometry that follows it (measured on 2 cores with the fusion model: placing the
        # views took 2.6 ms a view after a spinning decoder, 1.3 ms after PyTorch's)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return meta, {n: ort.InferenceSession(str(folder / f"{n}.onnx"), so, providers=prov) for n in names}
    except Exception as e:  # OSError, ValueError and onnxruntime's own exception types
        raise BackendUnavailable(f"cannot load the ground's ONNX graphs from {folder}: {e}") from e


class OnnxGroundDecoder:
    """ONNX Runtime version of the ground's model calls (CUDA provider first where present).

    Raises:
        voxlink.backends.BackendUnavailable: onnxruntime missing or files unreadable.
    """

    def __init__(self, folder: str | Path):
        self.meta, g = _open_graphs(folder, ("lstm_step", "occupancy", "depth"))
        self._step, self._occ, self._depth = g["lstm_step"], g["occupancy"], g["depth"]
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


class OnnxFusionGroundDecoder:
    """ONNX Runtime version of the fusion model's ground calls: the view decoder and the 3D refiner run
    on ONNX Runtime (CUDA provider first where present), placing and fusing the evidence is the model's
    own geometry (:meth:`voxlink.models.fusion.FusionModel.place`).

    Args:
        folder: graphs from :func:`export_ground`. model: the fusion model they were exported from (its
            fingerprint must match ``ground.json``'s).

    Raises:
        voxlink.backends.BackendUnavailable: onnxruntime missing, files unreadable, or graphs of other weights.
    """

    def __init__(self, folder: str | Path, model):
        from voxlink.backends import BackendUnavailable

        self.meta, g = _open_graphs(folder, ("depth", "occupancy"))
        self._depth, self._occ = g["depth"], g["occupancy"]
        if self.meta.get("fingerprint") != bytes.hex(model.fingerprint()):
            raise BackendUnavailable(f"the ONNX graphs in {folder} were exported from other weights")
        self.model = model
        self.code_bits = int(self.meta["code_bits"])
        self.name = f"onnxruntime[{self._depth.get_providers()[0]}]"

    def init_state(self, batch: int = 1, device=None) -> torch.Tensor:
        """As :meth:`FusionModel.init_state`."""
        return self.model.init_state(batch)

    def decode_depth(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`FusionModel.decode_depth`: depth (metres) and silhouette probability [N, H, W]."""
        if codes.shape[-1] != self.code_bits:
            raise CodeError(f"model expects {self.code_bits}-bit codes, got {codes.shape[-1]}")
        d, m = self._depth.run(None, {"code": codes.numpy().astype(np.float32)})
        return torch.from_numpy(d), torch.from_numpy(m)

    def step_decoded(self, codes: torch.Tensor, state: torch.Tensor, pose, K, inplace: bool = False):
        """As :meth:`FusionModel.step_decoded`."""
        from voxlink.models.fusion import view_geometry

        pose, K = view_geometry(pose, K)
        depth, mask_prob = self.decode_depth(codes)
        return self.place(state, depth, mask_prob, K, pose, out=state if inplace else None), depth, mask_prob

    def place(self, state, depth: torch.Tensor, mask_prob: torch.Tensor, K: torch.Tensor, pose: torch.Tensor,
              out: torch.Tensor | None = None):
        """As :meth:`FusionModel.place` (on PyTorch: the geometry is not in the graphs)."""
        return self.model.place(state, depth, mask_prob, K, pose, out=out)

    def step(self, codes: torch.Tensor, state: torch.Tensor, pose=None, K=None) -> torch.Tensor:
        """As :meth:`FusionModel.step`."""
        return self.step_decoded(codes, state, pose, K)[0]

    def occupancy(self, state: torch.Tensor) -> torch.Tensor:
        """As :meth:`FusionModel.occupancy`: float32 [B, R, R, R]."""
        return torch.from_numpy(self._occ.run(None, {"state": state.numpy().astype(np.float32)})[0])
