"""Encoder backends for the edge: one small interface over TensorRT, ONNX Runtime and PyTorch.

Every backend turns a batch of 128 x 128 RGB views into K-bit codes (+1/-1), bit-identical to
:meth:`voxlink.models.implicit.ImplicitModel.encode` in eval mode up to pre-activations within float
rounding of zero (counted by the parity tests). ``tensorrt``, ``cuda`` and ``pycuda`` are imported
only inside :class:`TensorRTBackend`, ``torch`` only inside :class:`TorchBackend`, ``onnxruntime`` only
inside :class:`OnnxBackend`: this module is runtime core and imports NumPy only.

ONNX Runtime runs a model's encoder graph (E_K + sign) found by :meth:`OnnxBackend.for_model`: the
``NAME.onnx`` shipped beside ``NAME.safetensors`` (``scripts/export_shipped_onnx.py`` writes those),
else one exported once into the cache (:func:`onnx_cache_dir`) where PyTorch is installed; either way
the graph's recorded fingerprint must equal the model file's.
"""

from __future__ import annotations

import json
import logging
import os
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

    def encode_views(self, images: np.ndarray) -> list[np.ndarray]:
        """One code per view (a variable-rate backend's may differ in length): the rows of :meth:`encode`.

        Shape:
            images float32 [N, 3, 128, 128] in [0, 1] -> N arrays float32 [K_i] in {-1, +1}.
        """
        return list(self.encode(images))

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

    def __init__(self, model_name_or_path: str | None = None, device: str = "cpu", iterations: int = 0,
                 psnr_db: float = 0.0):
        import torch

        from voxlink.weights import load_model

        self.model, self.meta, _ = load_model(model_name_or_path, device=device)
        self.device = device
        self.code_bits = self.model.cfg.code_bits
        self.fingerprint = self.model.fingerprint()
        self.name = f"torch[{device}]"
        self._torch = torch
        self.iterative = hasattr(self.model, "compressor")
        nmax = self.model.cfg.compression.max_iterations if self.iterative else 1
        if not 0 <= iterations <= nmax:
            raise ValueError(f"iterations must be in 1..{nmax} (0: {nmax}) for {self.model.cfg.name}, got {iterations}")
        if (iterations not in (0, 1) or psnr_db) and not self.iterative:
            raise ValueError(f"{self.model.cfg.name} sends one code per view: iterations and a PSNR target are for "
                             f"the sequential and direct models")
        self.iterations, self.psnr_db = iterations or nmax, float(psnr_db)

    def encode(self, images: np.ndarray) -> np.ndarray:  # noqa: D102 (interface docstring)
        """Codes float32 [N, K] (+1/-1) of views float32 [N, 3, 128, 128] in [0, 1]; for the sequential and
        direct models K = ``iterations`` x m."""
        with self._torch.no_grad():
            x = self._torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
            if self.iterative:
                return self.model.encode(x, self.iterations).cpu().numpy()
            return self.model.encode(x).cpu().numpy()

    def encode_views(self, images: np.ndarray) -> list[np.ndarray]:
        """One code per view, of its own length: with a PSNR target (``psnr_db`` > 0) each view of a
        sequential or direct model takes the fewest N_small iterations (up to ``iterations``) whose
        decoded image reaches it (:meth:`voxlink.models.rnn_compress.RNNCompressor.encode_to_quality`);
        otherwise the rows of :meth:`encode`.

        Shape:
            images float32 [B, 3, 128, 128] in [0, 1] -> B arrays float32 [N_i m] in {-1, +1}.
        """
        if not (self.iterative and self.psnr_db > 0):
            return list(self.encode(images))
        with self._torch.no_grad():
            x = self._torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
            codes = self.model.compressor.encode_to_quality(x, self.psnr_db, self.iterations)
        return [c.cpu().numpy() for c in codes]


def onnx_cache_dir() -> Path:
    """Folder of encoder graphs exported once and cached: ``$VOXLINK_CACHE/onnx``, else
    ``$XDG_CACHE_HOME/voxlink/onnx``, else ``~/.cache/voxlink/onnx`` (not created here)."""
    root = os.environ.get("VOXLINK_CACHE")
    if root:
        return Path(root) / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxlink" / "onnx"


def export_encoder_onnx(model_name_or_path: str | Path | None, out: str | Path) -> Path:
    """Export a model file's edge encoder (E_K + sign) to ONNX at ``out``, written atomically
    (a temporary file renamed into place). Needs PyTorch and the ``onnx`` package.

    Raises:
        ImportError: PyTorch or onnx missing. voxlink.modelfile.ModelFileError: bad model file.
    """
    from export.onnx_export import export_onnx
    from voxlink.weights import load_model

    model, _, _ = load_model(model_name_or_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        export_onnx(model, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class OnnxBackend(EncoderBackend):
    """ONNX Runtime, trying the TensorRT, CUDA and CPU execution providers in that order.

    Attributes (besides :class:`EncoderBackend`'s): path: the ONNX file. model_name: the
    ``voxlink.model`` metadata of the graph ('' where absent).

    Raises:
        BackendUnavailable: onnxruntime missing or the file unreadable.
    """

    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, onnx_path: str | Path, providers: tuple[str, ...] | None = None, threads: int = 0):
        """Open ``onnx_path``; ``threads`` > 0 caps ONNX Runtime's intra-op threads (0: its default)."""
        try:
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
            opts = ort.SessionOptions()
            if threads > 0:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
            # metadata through ONNX Runtime itself: the onnx package is not needed on the drone
            props = dict(self.session.get_modelmeta().custom_metadata_map)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendUnavailable(f"cannot load {path}: {e}") from e
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != ["images"] or "codes" not in outputs:
            raise BackendUnavailable(f"{path} is not a voxlink encoder graph (inputs {inputs}, outputs {outputs}; "
                                     f"expected images -> codes, as voxlink export onnx writes)")
        self.path = path
        self.code_bits = int(props.get("voxlink.code_bits", self.session.get_outputs()[0].shape[1]))
        self.fingerprint = bytes.fromhex(props.get("voxlink.fingerprint", "00" * 8))
        self.model_name = props.get("voxlink.model", "")
        self.name = f"onnxruntime[{self.session.get_providers()[0]}]"

    @classmethod
    def for_model(cls, model_name_or_path: str | Path | None = None, providers: tuple[str, ...] | None = None,
                  export: bool = True, threads: int = 0) -> "OnnxBackend":
        """The encoder graph of a model file, without PyTorch where the graph ships with it.

        Looks, in order, for ``NAME.onnx`` beside the model file (shipped models have one), then for
        ``<cache>/NAME-<fingerprint>.onnx`` (:func:`onnx_cache_dir`); a graph whose recorded
        ``voxlink.fingerprint`` or K differs from the model file's is skipped (logged). If none fits
        and ``export`` is set, the graph is exported once into the cache, which needs PyTorch.

        Args:
            model_name_or_path: model file or shipped name (None: the default model).
            providers: ONNX Runtime execution providers (default :attr:`PREFERRED`).
            export: allow exporting into the cache.
            threads: ONNX Runtime intra-op threads (0: its default).

        Raises:
            BackendUnavailable: onnxruntime missing, or no fitting graph and none can be exported
                here (the message says why and what to run).
            voxlink.modelfile.ModelFileError: bad model file.
        """
        from voxlink.modelfile import encoder_onnx_beside, read_model_info

        info = read_model_info(model_name_or_path)
        if info.family in ("sequential", "direct"):
            raise BackendUnavailable(f"{info.path.name} is a {info.family} model: its N_small encoder loops through its "
                                     f"decoder once per iteration, which voxlink runs on PyTorch only (--backend torch)")
        if info.fingerprint is None:
            raise BackendUnavailable(f"{info.path} records no fingerprint, so no ONNX graph can be matched to it; "
                                     f"use --backend torch or re-save the model")
        cached = onnx_cache_dir() / f"{info.path.stem}-{info.fingerprint_hex}.onnx"
        stale = []
        for path in (encoder_onnx_beside(info.path), cached):
            if not path.is_file():
                continue
            b = cls(path, providers, threads)
            if b.fingerprint == info.fingerprint and b.code_bits == info.code_bits:
                log.info("encoder graph %s (fingerprint %s)", path, info.fingerprint_hex)
                return b
            stale.append(f"{path} (fingerprint {bytes.hex(b.fingerprint)}, {b.code_bits}-bit codes)")
            log.warning("skipping %s: built from another model (fingerprint %s, %d-bit codes; the model file has %s, %d-bit codes)",
                        path, bytes.hex(b.fingerprint), b.code_bits, info.fingerprint_hex, info.code_bits)
        why = (f"no ONNX graph of {info.path.name} (fingerprint {info.fingerprint_hex}) beside it or in {cached.parent}"
               + (f"; skipped stale {', '.join(stale)}" if stale else ""))
        if not export:
            raise BackendUnavailable(why)
        try:
            import torch  # noqa: F401
        except ImportError:
            raise BackendUnavailable(f"{why}, and PyTorch is not installed to export one: run "
                                     f"`voxlink export onnx {info.path} --out {encoder_onnx_beside(info.path)}` "
                                     f"(or scripts/export_shipped_onnx.py) where PyTorch is, or pass --onnx") from None
        log.info("%s: exporting it once into %s", why, cached)
        export_encoder_onnx(info.path, cached)
        b = cls(cached, providers, threads)
        if b.fingerprint != info.fingerprint:
            raise BackendUnavailable(f"the exported graph {cached} has fingerprint {bytes.hex(b.fingerprint)}, the model "
                                     f"file records {info.fingerprint_hex} (a corrupt model file?)")
        return b

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
        from export.trt import TrtRunner, TrtUnavailable

        try:
            self._runner = TrtRunner(engine_path)
        except TrtUnavailable as e:  # so that ``auto`` goes on to the next backend
            raise BackendUnavailable(str(e)) from e
        meta = json.loads(Path(str(engine_path) + ".json").read_text()) if Path(str(engine_path) + ".json").is_file() else {}
        self.code_bits = int(meta.get("code_bits", self._runner.output_shape[-1]))
        self.fingerprint = bytes.fromhex(meta.get("fingerprint", "00" * 8))
        self.name = f"tensorrt[{meta.get('precision', '?')}]"

    def encode(self, images: np.ndarray) -> np.ndarray:  # noqa: D102
        """Codes float32 [N, K] (+1/-1) of views float32 [N, 3, 128, 128] in [0, 1]."""
        return self._runner.run(np.ascontiguousarray(images, np.float32))


def probe(kind: str = "auto", model: str | None = None, onnx_path: str | None = None,
          engine_path: str | None = None, iterations: int = 0, psnr_db: float = 0.0) -> EncoderBackend:
    """Pick a backend, logging why each one it skips was skipped.

    ``auto`` tries TensorRT (with an engine), ONNX Runtime (with ``onnx_path``), PyTorch, then ONNX
    Runtime on the model's own encoder graph (:meth:`OnnxBackend.for_model`; so a drone without
    PyTorch runs the shipped model out of the box). ``onnxruntime`` uses ``onnx_path`` if given,
    else the model's own graph (shipped, cached, or exported once where PyTorch is installed).

    Args:
        kind: ``auto``, ``tensorrt``, ``onnxruntime`` or ``torch``.
        model: model name or file (PyTorch backend, the model's ONNX graph, and the fingerprint source).
        onnx_path: ONNX file for ONNX Runtime.
        engine_path: engine file for TensorRT.
        iterations, psnr_db: a sequential or direct model's N_small iterations per view (0: N_max) and
            its PSNR target in dB (0: none; else each view stops at the first iteration that reaches it):
            :class:`TorchBackend`, the only backend these models run on.

    Raises:
        BackendUnavailable: the requested backend (or, for ``auto``, every one) cannot run.
        ValueError: unknown kind. voxlink.modelfile.ModelFileError: a bad model file, or one that is not a
            reconstruction model (the image codec).
    """
    if kind not in ("auto", "tensorrt", "onnxruntime", "torch"):
        raise ValueError(f"unknown backend {kind!r}: choose auto, tensorrt, onnxruntime or torch")
    if engine_path is None or kind != "tensorrt":
        from voxlink.modelfile import require_reconstruction_model

        require_reconstruction_model(model)  # an image codec is no drone model: say so, not a shape error
    tries = []
    if kind in ("auto", "tensorrt"):
        tries.append(("tensorrt", lambda: TensorRTBackend(engine_path) if engine_path else
                      (_ for _ in ()).throw(BackendUnavailable("no engine file given (--engine)"))))
    if kind == "onnxruntime" or (kind == "auto" and onnx_path):
        tries.append(("onnxruntime", lambda: OnnxBackend(onnx_path) if onnx_path else OnnxBackend.for_model(model)))
    if kind in ("auto", "torch"):
        tries.append(("torch", lambda: TorchBackend(model, iterations=iterations, psnr_db=psnr_db)))
    if kind == "auto" and not onnx_path:
        # reached only where PyTorch is absent (or cannot load the model): the model's shipped graph
        tries.append(("onnxruntime", lambda: OnnxBackend.for_model(model, export=False)))
    reasons = []
    for name, make in tries:
        try:
            b = make()
        except (BackendUnavailable, ImportError, OSError, ValueError) as e:
            reasons.append(f"{name}: {e}")
            log.info("backend %s skipped: %s", name, e)
            continue
        log.info("backend: %s (%d-bit codes)", b.name, b.code_bits)
        return b
    raise BackendUnavailable("no encoder backend could start: " + "; ".join(reasons))
