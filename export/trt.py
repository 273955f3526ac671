"""ONNX -> TensorRT engine for the edge encoder, and a small runner for it.

Written against NVIDIA's documented Python APIs of TensorRT 10 and 11, chosen by the installed
major version:

* TensorRT 10: ``create_network(0)`` (explicit batch is the only mode), precision by builder flags
  (``BuilderFlag.FP16``, ``BuilderFlag.INT8`` with an ``IInt8EntropyCalibrator2`` fed by views).
* TensorRT 11: strongly typed networks only (no EXPLICIT_BATCH flag, no precision flags): FP16
  comes from the ONNX itself, converted by NVIDIA ModelOpt's AutoCast; INT8 from Q/DQ nodes inserted
  by ModelOpt's ONNX quantizer with the calibration views.

Device buffers and streams go through ``cuda.bindings.runtime`` (cuda-python) or, failing that,
pycuda. All of these are imported inside functions: voxlink imports without them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Batch sizes of the engine's optimisation profile (min, opt, max).
PROFILE_BATCH = (1, 8, 32)


class TrtUnavailable(RuntimeError):
    """TensorRT, CUDA or a GPU is missing, or the engine does not fit this version; says which."""


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TrtUnavailable(f"TensorRT is not installed (pip install 'voxlink[trt]' on a CUDA machine): {e}") from e
    return trt


def _cuda():
    """(api, name): cuda-python's runtime bindings, else pycuda; raises TrtUnavailable without a GPU."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        err, n = cudart.cudaGetDeviceCount()
        if int(err) != 0 or n < 1:
            raise TrtUnavailable(f"no CUDA device (cudaGetDeviceCount: error {int(err)}, {n} devices)")
        return cudart, "cuda-python"
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda
    except Exception as e:  # ImportError, or pycuda's LogicError without a device
        raise TrtUnavailable(f"neither cuda-python nor a working pycuda is available: {e}") from e
    return cuda, "pycuda"


def trt_major() -> int:
    """Major version of the installed TensorRT (raises TrtUnavailable if none)."""
    return int(_import_trt().__version__.split(".")[0])


def _calibration_batches(calib_dir: str | Path, batch: int = 8, limit: int = 256):
    """Views (float32 [B, 3, 128, 128] in [0, 1]) from a folder of images or a voxlink dataset."""
    import cv2

    from voxlink.preprocess import capture_to_view, to_input

    calib_dir = Path(calib_dir)
    if (calib_dir / "manifest.json").is_file():
        from voxlink.data.store import DatasetStore

        st = DatasetStore(calib_dir)
        views = np.concatenate([st.read(i, "rgb") for i in range(len(st))])[:limit]
    else:
        files = sorted(p for p in calib_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:limit]
        views = np.stack([capture_to_view(cv2.imread(str(p))) for p in files]) if files else np.zeros((0, 128, 128, 3), np.uint8)
    if len(views) == 0:
        raise ValueError(f"no calibration images in {calib_dir}")
    x = to_input(views).numpy()
    for i in range(0, len(x), batch):
        yield np.ascontiguousarray(x[i:i + batch])


def _make_calibrator(trt, calib_dir, cache: Path):
    """An IInt8EntropyCalibrator2 (TensorRT 10) over the calibration views."""
    cudart, api = _cuda()
    batches = list(_calibration_batches(calib_dir))

    class Calibrator(trt.IInt8EntropyCalibrator2):
        """INT8 entropy calibrator over the calibration views (TensorRT 10)."""
        def __init__(self):
            super().__init__()
            self.i = 0
            self.nbytes = batches[0].nbytes
            self.dev = _malloc(cudart, api, self.nbytes)

        def get_batch_size(self):
            """TensorRT calibrator callback."""
            return batches[0].shape[0]

        def get_batch(self, names):
            """TensorRT calibrator callback."""
            if self.i >= len(batches) or batches[self.i].shape[0] != batches[0].shape[0]:
                return None
            _h2d(cudart, api, self.dev, batches[self.i])
            self.i += 1
            return [int(self.dev)]

        def read_calibration_cache(self):
            """TensorRT calibrator callback."""
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            """TensorRT calibrator callback."""
            cache.write_bytes(bytes(data))

    return Calibrator()


def _malloc(cudart, api, nbytes):
    if api == "pycuda":
        return cudart.mem_alloc(nbytes)
    err, ptr = cudart.cudaMalloc(nbytes)
    if int(err) != 0:
        raise TrtUnavailable(f"cudaMalloc({nbytes}) failed: error {int(err)}")
    return ptr


def _h2d(cudart, api, dev, host: np.ndarray, stream=None):
    if api == "pycuda":
        cudart.memcpy_htod(dev, host)
        return
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    (err,) = (cudart.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, kind, stream) if stream is not None
              else cudart.cudaMemcpy(dev, host.ctypes.data, host.nbytes, kind))
    if int(err) != 0:
        raise RuntimeError(f"host-to-device copy failed: error {int(err)}")


def build_engine(onnx_path: str | Path, out: str | Path, fp16: bool = False, int8: bool = False,
                 calib: str | Path | None = None, workspace_mb: int = 1024) -> dict:
    """Build and serialise a TensorRT engine for the edge encoder, with ``<out>.json`` metadata.

    Args:
        onnx_path: the encoder's ONNX (``voxlink export onnx``).
        out: engine file.
        fp16, int8: precision (INT8 needs ``calib``: a folder of images or a voxlink dataset).
        workspace_mb: builder workspace in MiB.

    Returns:
        the metadata: input shape, K, model fingerprint, TensorRT version, precision, build seconds.

    Raises:
        TrtUnavailable: no TensorRT / CUDA / GPU. ValueError: INT8 without calibration data, or an
        ONNX the parser rejects (its errors in the message).
    """
    import onnx

    trt = _import_trt()
    _cuda()  # fail early and clearly without a GPU
    if int8 and not calib:
        raise ValueError("--int8 needs --calib DIR (calibration images or a voxlink dataset)")
    onnx_path, out = Path(onnx_path), Path(out)
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    major = int(trt.__version__.split(".")[0])
    precision = "int8" if int8 else ("fp16" if fp16 else "fp32")
    src = onnx_path
    if major >= 11 and precision != "fp32":
        src = _modelopt_convert(onnx_path, precision, calib)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if major >= 11:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    else:
        network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(src).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse {src}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    lo, opt, hi = PROFILE_BATCH
    profile.set_shape(name, (lo, 3, 128, 128), (opt, 3, 128, 128), (hi, 3, 128, 128))
    config.add_optimization_profile(profile)
    if major < 11:
        if fp16 or int8:
            config.set_flag(trt.BuilderFlag.FP16)
        if int8:
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _make_calibrator(trt, calib, out.with_suffix(".calib"))
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(blob))
    meta = {"input": name, "input_shape": [-1, 3, 128, 128], "batch_profile": list(PROFILE_BATCH),
            "code_bits": int(props.get("voxlink.code_bits", 0)), "fingerprint": props.get("voxlink.fingerprint", ""),
            "model": props.get("voxlink.model", ""), "tensorrt": trt.__version__, "precision": precision,
            "build_seconds": round(time.perf_counter() - t0, 1), "onnx": str(onnx_path)}
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=1))
    return meta


def _modelopt_convert(onnx_path: Path, precision: str, calib) -> Path:
    """TensorRT 11: FP16 by ModelOpt AutoCast, INT8 by ModelOpt's Q/DQ quantizer; returns the new ONNX."""
    try:
        if precision == "fp16":
            import onnx
            from modelopt.onnx.autocast import convert_to_mixed_precision

            model = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16")
            dst = onnx_path.with_suffix(".fp16.onnx")
            onnx.save(model, str(dst))
            return dst
        from modelopt.onnx.quantization import quantize

        data = np.concatenate(list(_calibration_batches(calib)))
        dst = onnx_path.with_suffix(".int8.onnx")
        quantize(onnx_path=str(onnx_path), quantize_mode="int8", calibration_data={"images": data},
                 output_path=str(dst))
        return dst
    except ImportError as e:
        raise TrtUnavailable(f"TensorRT 11 takes precision from the ONNX: install nvidia-modelopt ({e})") from e


class TrtRunner:
    """Runs a serialised encoder engine: ``run(images [N, 3, 128, 128] float32) -> codes [N, K]``.

    Raises:
        TrtUnavailable: no TensorRT / CUDA / GPU, a missing file, or an engine built by another version.
    """

    def __init__(self, engine_path: str | Path):
        trt = _import_trt()
        self._cudart, self._api = _cuda()
        path = Path(engine_path)
        if not path.is_file():
            raise TrtUnavailable(f"no engine file at {path}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise TrtUnavailable(f"{path} does not deserialize with TensorRT {trt.__version__} (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.output_shape = tuple(self.engine.get_tensor_shape(self.output))
        self._cap = 0
        if self._api == "pycuda":
            self._stream = self._cudart.Stream()
        else:
            err, self._stream = self._cudart.cudaStreamCreate()

    def _ensure(self, n: int, k: int) -> None:
        if n <= self._cap:
            return
        self._din = _malloc(self._cudart, self._api, n * 3 * 128 * 128 * 4)
        self._dout = _malloc(self._cudart, self._api, n * k * 4)
        self._cap = n

    def run(self, images: np.ndarray) -> np.ndarray:
        """Codes float32 [N, K] (+1/-1) of views float32 [N, 3, 128, 128]."""
        n = images.shape[0]
        self.context.set_input_shape(self.input, tuple(images.shape))
        k = int(self.context.get_tensor_shape(self.output)[-1])
        self._ensure(n, k)
        out = np.empty((n, k), np.float32)
        self.context.set_tensor_address(self.input, int(self._din))
        self.context.set_tensor_address(self.output, int(self._dout))
        if self._api == "pycuda":
            self._cudart.memcpy_htod_async(self._din, images, self._stream)
            self.context.execute_async_v3(self._stream.handle)
            self._cudart.memcpy_dtoh_async(out, self._dout, self._stream)
            self._stream.synchronize()
        else:
            cr = self._cudart
            cr.cudaMemcpyAsync(self._din, images.ctypes.data, images.nbytes, cr.cudaMemcpyKind.cudaMemcpyHostToDevice,
                               self._stream)
            self.context.execute_async_v3(int(self._stream))
            cr.cudaMemcpyAsync(out.ctypes.data, self._dout, out.nbytes, cr.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                               self._stream)
            cr.cudaStreamSynchronize(self._stream)
        return out
