"""Encoder backends for the edge: one small interface over TensorRT, ONNX Runtime and PyTorch.

Every backend turns a batch of 128 x 128 RGB views into K-bit codes (+1/-1), bit-identical to
:meth:`voxlink.models.implicit.ImplicitModel.encode` in eval mode up to pre-activations within float
rounding of zero (counted by the parity tests). ``tensorrt``, ``cuda`` and ``pycuda`` are imported
only inside :class:`TensorRTBackend`, so voxlink imports without them.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (library, device or file missing); the message says which."""


class EncoderBackend(ABC):
    """Interface: ``load`` once, ``warmup``, then ``encode`` batches.

    Attributes:
        name: backend name (``tensorrt``, ``onnxruntime[<provider>]``, ``torch``).
        code_bits: K.
        fingerprint: 8-byte model fingerprint.
    """

    name: str = "backend"
    code_bits: int = 0
    fingerprint: bytes = b""

    @abstractmethod
    def encode(self, images: np.ndarray) -> np.ndarray:
        """Codes of a batch of views.

        Shape:
            images float32 [N, 3, 128, 128] in [0, 1] -> float32 [N, K] in {-1, +1}.
        """

    def warmup(self, n: int = 3) -> float:
        """Run ``n`` dummy batches; returns the last one's time in ms."""
        x = np.zeros((1, 3, 128, 128), np.float32)
        t = 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            self.encode(x)
            t = (time.perf_counter() - t0) * 1e3
        return t


class TorchBackend(EncoderBackend):
    """PyTorch on CPU or CUDA.

    Raises:
        voxlink.weights.ModelFileError: bad model file.
    """

    def __init__(self, model_name_or_path: str | None = None, device: str = "cpu"):
        import torch

        from voxlink.weights import load_model

        self.model, self.meta, _ = load_model(model_name_or_path, device=device)
        self.device = device
        self.code_bits = self.model.cfg.code_bits
        self.fingerprint = self.model.fingerprint()
        self.name = f"torch[{device}]"
        self._torch = torch

    def encode(self, images: np.ndarray) -> np.ndarray:  # noqa: D102 (interface docstring)
        """Codes float32 [N, K] (+1/-1) of views float32 [N, 3, 128, 128] in [0, 1]."""
        with self._torch.no_grad():
            x = self._torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
            return self.model.encode(x).cpu().numpy()


class OnnxBackend(EncoderBackend):
    """ONNX Runtime, trying the TensorRT, CUDA and CPU execution providers in that order.

    Raises:
        BackendUnavailable: onnxruntime missing or the file unreadable.
    """

    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, onnx_path: str | Path, providers: tuple[str, ...] | None = None):
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime is not installed: {e}") from e
        path = Path(onnx_path)
        if not path.is_file():
            raise BackendUnavailable(f"no ONNX file at {path}")
        avail = ort.get_available_providers()
        chosen = [p for p in (providers or self.PREFERRED) if p in avail]
        if not chosen:
            raise BackendUnavailable(f"none of the providers {providers or self.PREFERRED} is available ({avail})")
        try:
            self.session = ort.InferenceSession(str(path), providers=chosen)
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendUnavailable(f"cannot load {path}: {e}") from e
        self.code_bits = int(props.get("voxlink.code_bits", self.session.get_outputs()[0].shape[1]))
        self.fingerprint = bytes.fromhex(props.get("voxlink.fingerprint", "00" * 8))
        self.name = f"onnxruntime[{self.session.get_providers()[0]}]"

    def encode(self, images: np.ndarray) -> np.ndarray:  # noqa: D102
        """Codes float32 [N, K] (+1/-1) of views float32 [N, 3, 128, 128] in [0, 1]."""
        return self.session.run(["codes"], {"images": np.ascontiguousarray(images, np.float32)})[0]


class TensorRTBackend(EncoderBackend):
    """A serialized TensorRT engine (from ``voxlink export trt``), with its ``.json`` metadata beside it.

    Device memory and the stream go through ``cuda.bindings`` (cuda-python) when present, else pycuda.

    Raises:
        BackendUnavailable: no tensorrt, no CUDA device, no engine file, or an engine that does not
            deserialize with this TensorRT version.
    """

    def __init__(self, engine_path: str | Path):
        from export.trt import TrtRunner

        self._runner = TrtRunner(engine_path)
        meta = json.loads(Path(str(engine_path) + ".json").read_text()) if Path(str(engine_path) + ".json").is_file() else {}
        self.code_bits = int(meta.get("code_bits", self._runner.output_shape[-1]))
        self.fingerprint = bytes.fromhex(meta.get("fingerprint", "00" * 8))
        self.name = f"tensorrt[{meta.get('precision', '?')}]"

    def encode(self, images: np.ndarray) -> np.ndarray:  # noqa: D102
        """Codes float32 [N, K] (+1/-1) of views float32 [N, 3, 128, 128] in [0, 1]."""
        return self._runner.run(np.ascontiguousarray(images, np.float32))


def probe(kind: str = "auto", model: str | None = None, onnx_path: str | None = None,
          engine_path: str | None = None) -> EncoderBackend:
    """Pick a backend: ``auto`` tries TensorRT, then ONNX Runtime, then PyTorch, logging why each
    one it skips was skipped.

    Args:
        kind: ``auto``, ``tensorrt``, ``onnxruntime`` or ``torch``.
        model: model name or file (PyTorch backend, and the fingerprint source).
        onnx_path: ONNX file for ONNX Runtime.
        engine_path: engine file for TensorRT.

    Raises:
        BackendUnavailable: the requested backend (or, for ``auto``, every one) cannot run.
        ValueError: unknown kind.
    """
    if kind not in ("auto", "tensorrt", "onnxruntime", "torch"):
        raise ValueError(f"unknown backend {kind!r}: choose auto, tensorrt, onnxruntime or torch")
    tries = []
    if kind in ("auto", "tensorrt"):
        tries.append(("tensorrt", lambda: TensorRTBackend(engine_path) if engine_path else
                      (_ for _ in ()).throw(BackendUnavailable("no engine file given (--engine)"))))
    if kind in ("auto", "onnxruntime"):
        tries.append(("onnxruntime", lambda: OnnxBackend(onnx_path) if onnx_path else
                      (_ for _ in ()).throw(BackendUnavailable("no ONNX file given (--onnx)"))))
    if kind in ("auto", "torch"):
        tries.append(("torch", lambda: TorchBackend(model)))
    reasons = []
    for name, make in tries:
        try:
            b = make()
        except (BackendUnavailable, ImportError, OSError, ValueError) as e:
            reasons.append(f"{name}: {e}")
            log.info("backend %s skipped: %s", name, e)
            continue
        log.info("backend: %s (K = %d)", b.name, b.code_bits)
        return b
    raise BackendUnavailable("no encoder backend could start: " + "; ".join(reasons))
