"""``voxlink bench speed``: Golts & Schechner's Tab. III, forward time per block and per backend.

Blocks (one object, 5 views, N_small at 4 iterations, as the paper's Tab. III):

=============  =====================================================================  ============
key            block                                                                  paper [ms]
=============  =====================================================================  ============
r2n2           3D reconstruction: 3D-R2N2 (E^3D + 3D-LSTM + D^3D), 5 views             13
e3d            E^3D (= E_K without the binarizer) only, 5 views                       6
lstm_decoder   3D-LSTM + D^3D over 5 codes (the ground's half of the implicit model)  --
nsmall         compression N_small, 4 iterations, 5 views (E + B + D: the decoder     32
               runs at the edge too, for the residual)
nsmall_decode  N_small decoder only, 4 iterations, 5 views (the ground)               --
sequential     sequential model (Sec. III-A), 5 views, 4 iterations                   45
direct         direct model (Sec. III-B), 5 views, 4 iterations                       39
implicit       implicit model (Sec. III-C), 5 views                                   13
pose_aware     the pose-aware model (voxlink's default, beyond the paper) at its      --
               shipped size whatever the profile: E_K + B, view decoder, fusion by
               the poses, 3D refiner, 5 views
=============  =====================================================================  ============

Backends: PyTorch (CPU, and CUDA when there is a GPU), ONNX Runtime (each block exported to ONNX;
CPU, and CUDA when its provider is there) and TensorRT for the edge encoder E_K where TensorRT is
installed. A backend that cannot run says why in the table instead of a number. Times are medians
of repeated forward passes after warm-up, in milliseconds; weights are untrained (the cost of a
forward pass does not depend on their values).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxlink.bench.profiles import get_profile
from voxlink.models.implicit import ImplicitModel
from voxlink.models.joint import JointConfig, JointModel, Reconstructor3D
from voxlink.models.rnn_compress import RNNCompressor

log = logging.getLogger(__name__)

#: Tab. III of the paper: forward pass in ms on a GTX 1080 Ti (None: not in the table).
PAPER_MS = {"r2n2": 13.0, "e3d": 6.0, "lstm_decoder": None, "nsmall": 32.0, "nsmall_decode": None,
            "sequential": 45.0, "direct": 39.0, "implicit": 13.0, "pose_aware": None}
BLOCK_NAMES = {
    "r2n2": "3D-R2N2 (E^3D + 3D-LSTM + D^3D), 5 views",
    "e3d": "E^3D / E_K only, 5 views",
    "lstm_decoder": "3D-LSTM + D^3D, 5 codes (ground)",
    "nsmall": "N_small, 4 iterations, 5 views (edge: E + B + D)",
    "nsmall_decode": "N_small decoder, 4 iterations, 5 views (ground)",
    "sequential": "sequential model, 5 views x 4 iterations",
    "direct": "direct model, 5 views x 4 iterations",
    "implicit": "implicit model (E_K + B + 3D-LSTM + D^3D), 5 views",
    "pose_aware": "pose-aware model (fusion-k1024's size: E_K + B, view decoder, fusion, refiner), 5 views",
}
VIEWS, ITERATIONS = 5, 4
CSV_FIELDS = ("block", "name", "backend", "size", "input_shape", "median_ms", "p90_ms", "reps", "ratio_to_sequential",
              "paper_ms", "paper_ratio_to_sequential", "note", "git_commit")


class _Block(nn.Module):
    """A one-input wrapper around a model call (so every block exports and times the same way)."""

    def __init__(self, fn, *modules: nn.Module):
        super().__init__()
        self.mods = nn.ModuleList(modules)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped call on its one input tensor."""
        return self.fn(x)


def blocks(size: str = "paper") -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The blocks of Tab. III at a profile's sizes (``full``/``paper``, ``quick``, ``tiny``, or ``cpu``).

    Returns:
        ``{key: (module in eval mode, example input)}``.

    Raises:
        ValueError: unknown size.
    """
    from voxlink.models.config import CONFIGS
    from voxlink.models.rnn_compress import COMPRESSION_CONFIGS

    if size in ("paper", "full"):
        prof = get_profile("full")
    elif size == "cpu":
        prof = dataclasses.replace(get_profile("quick"), recon=CONFIGS["cpu"], compression=COMPRESSION_CONFIGS["cpu"])
    else:
        prof = get_profile(size)
    r = dataclasses.replace(prof.recon, code_bits=1024)
    torch.manual_seed(0)
    implicit = ImplicitModel(dataclasses.replace(r, binarize=True)).eval()
    r2n2 = Reconstructor3D(dataclasses.replace(r, binarize=False)).eval()
    comp = RNNCompressor(prof.compression).eval()
    seq = JointModel(JointConfig("sequential", prof.compression, dataclasses.replace(r, binarize=False))).eval()
    direct = JointModel(JointConfig("direct", prof.compression, dataclasses.replace(r, binarize=False))).eval()
    s, k, m = r.image_size, r.code_bits, prof.compression.bits_per_iteration
    images = torch.rand(VIEWS, 3, s, s)
    codes = torch.where(torch.rand(VIEWS, k) < 0.5, -1.0, 1.0)
    comp_codes = torch.where(torch.rand(VIEWS, ITERATIONS, m) < 0.5, -1.0, 1.0)

    def lstm_dec(c):
        """3D-LSTM over codes float [V, K] in order, then D^3D: logits [1, 2, R, R, R]."""
        state = implicit.init_state(1)
        for i in range(c.shape[0]):
            state = implicit.step(c[i:i + 1], state)
        return implicit.logits(state)

    from voxlink import camera
    from voxlink.modelfile import read_model_info
    from voxlink.models.fusion import FusionConfig, FusionModel

    fusion = FusionModel(FusionConfig.from_dict(read_model_info("fusion-k1024").config)).eval()
    K = torch.from_numpy(camera.intrinsics(s)).float()
    poses = torch.from_numpy(camera.orbit_poses(VIEWS, np.random.default_rng(0))).float()

    def pose_aware(x):
        """E_K + sign, then each view fused by its pose, then the refiner: occupancy [1, R, R, R]."""
        codes, state = fusion.encode(x), fusion.init_state(1)
        for i in range(codes.shape[0]):
            state = fusion.step(codes[i:i + 1], state, poses[i:i + 1], K)
        return fusion.occupancy(state)

    return {
        "r2n2": (_Block(lambda x: r2n2(x[None]), r2n2), images),
        "e3d": (_Block(lambda x: r2n2.encoder(x), r2n2), images),
        "lstm_decoder": (_Block(lstm_dec, implicit), codes),
        "nsmall": (_Block(lambda x: comp(x, ITERATIONS)["recon"][:, -1], comp), images),
        "nsmall_decode": (_Block(lambda c: comp.decode(c)[:, -1], comp), comp_codes),
        "sequential": (_Block(lambda x: seq(x[None], ITERATIONS)["logits"], seq), images),
        "direct": (_Block(lambda x: direct(x[None], ITERATIONS)["logits"], direct), images),
        "implicit": (_Block(lambda x: lstm_dec(implicit.encode(x)), implicit), images),
        "pose_aware": (_Block(pose_aware, fusion), images),
    }


def _time(fn, sync=lambda: None, min_reps: int = 5, min_seconds: float = 1.0, warmup: int = 2) -> tuple[float, float, int]:
    """Median and 90th percentile (ms) of ``fn()`` after warm-up; at least ``min_reps`` runs and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    sync()
    ts, t_end = [], time.perf_counter() + min_seconds
    while len(ts) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
        if len(ts) >= 200:
            break
    return float(np.median(ts)), float(np.percentile(ts, 90)), len(ts)


def time_torch(module: nn.Module, x: torch.Tensor, device: str, **kw) -> tuple[float, float, int]:
    """Forward time of ``module(x)`` under PyTorch on ``device`` (``cpu`` or ``cuda``)."""
    module = module.to(device)
    x = x.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        return _time(lambda: module(x), sync, **kw)


def export_block(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Export a block to ONNX (opset 17, static shapes, TorchScript exporter)."""
    module = module.cpu().eval()
    with torch.no_grad():
        torch.onnx.export(module, (x.cpu(),), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
    return path


def time_onnx(onnx_path: Path, x: torch.Tensor, provider: str, **kw) -> tuple[float, float, int]:
    """Forward time of an exported block under ONNX Runtime with one execution provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=[provider])
    feed = {"x": x.cpu().numpy()}
    return _time(lambda: sess.run(None, feed), **kw)


def available_backends() -> list[tuple[str, str | None]]:
    """``[(backend, reason it cannot run or None)]`` for torch-cpu, torch-cuda, onnxruntime-cpu,
    onnxruntime-cuda and tensorrt on this machine."""
    out: list[tuple[str, str | None]] = [("torch-cpu", None)]
    out.append(("torch-cuda", None if torch.cuda.is_available() else "no CUDA GPU"))
    try:
        import onnxruntime as ort

        provs = ort.get_available_providers()
        out.append(("onnxruntime-cpu", None))
        out.append(("onnxruntime-cuda", None if "CUDAExecutionProvider" in provs and torch.cuda.is_available()
                    else "no CUDAExecutionProvider / GPU"))
    except ImportError:
        out += [("onnxruntime-cpu", "onnxruntime not installed"), ("onnxruntime-cuda", "onnxruntime not installed")]
    try:
        import tensorrt  # noqa: F401

        out.append(("tensorrt", None if torch.cuda.is_available() else "no CUDA GPU"))
    except ImportError:
        out.append(("tensorrt", "TensorRT not installed"))
    return out


def _time_tensorrt(module: nn.Module, x: torch.Tensor, workdir: Path, **kw) -> tuple[float, float, int]:
    """E_K through a TensorRT engine built from its ONNX (the edge's backend)."""
    from export.onnx_export import export_onnx
    from export.trt import TrtRunner, build_engine

    onnx_path = export_onnx(module, workdir / "ek.onnx")
    build_engine(onnx_path, workdir / "ek.engine", fp16=False)
    runner = TrtRunner(workdir / "ek.engine")
    xn = np.ascontiguousarray(x.numpy())
    return _time(lambda: runner.run(xn), **kw)


def run(out: str | Path, size: str = "paper", backends: list[str] | None = None, only: list[str] | None = None,
        min_seconds: float = 1.0, min_reps: int = 5) -> list[dict]:
    """Time every block on every backend; write ``speed.csv`` and ``speed.md`` in ``out``.

    Args:
        out: output folder.
        size: network sizes (``paper`` as Tab. III, ``cpu``, ``quick`` or ``tiny``).
        backends: subset of the backends (default: all; those that cannot run get a row saying why).
        only: subset of block keys.
        min_seconds, min_reps: timing budget per block and backend.

    Returns:
        the CSV rows.
    """
    from voxlink.bench.accuracy import machine_description
    from voxlink.train import git_commit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    bl = blocks(size)
    if only:
        unknown = set(only) - set(bl)
        if unknown:
            raise ValueError(f"unknown blocks {sorted(unknown)}; choose from {sorted(bl)}")
        bl = {k: v for k, v in bl.items() if k in only}
    known = [b for b, _ in available_backends()]
    if backends is not None and set(backends) - set(known):
        raise ValueError(f"unknown backends {sorted(set(backends) - set(known))}; choose from {known}")
    avail = [(b, why) for b, why in available_backends() if backends is None or b in backends]
    rows = []
    kw = {"min_seconds": min_seconds, "min_reps": min_reps}
    with tempfile.TemporaryDirectory() as td:
        tdir = Path(td)
        onnx_files: dict[str, Path | str] = {}
        for backend, why in avail:
            for key, (module, x) in bl.items():
                row = {"block": key, "name": BLOCK_NAMES[key], "backend": backend, "size": size,
                       "input_shape": "x".join(map(str, x.shape)), "median_ms": "", "p90_ms": "", "reps": "",
                       "paper_ms": PAPER_MS[key] if PAPER_MS[key] is not None else "", "note": "",
                       "git_commit": commit}
                try:
                    if why:
                        raise RuntimeError(why)
                    if backend.startswith("torch"):
                        res = time_torch(module, x, "cuda" if backend.endswith("cuda") else "cpu", **kw)
                        module.cpu()
                    elif backend.startswith("onnxruntime"):
                        if key == "pose_aware":
                            raise RuntimeError("pose_aware: not one graph (the ground runs its geometry in PyTorch; "
                                               "its view decoder and refiner export: voxlink ground --backend onnxruntime)")
                        if key not in onnx_files:
                            try:
                                onnx_files[key] = export_block(module, x, tdir / f"{key}.onnx")
                            except Exception as e:  # noqa: BLE001 - report, keep timing the rest
                                onnx_files[key] = f"ONNX export failed: {type(e).__name__}: {e}"
                        f = onnx_files[key]
                        if isinstance(f, str):
                            raise RuntimeError(f)
                        prov = "CUDAExecutionProvider" if backend.endswith("cuda") else "CPUExecutionProvider"
                        res = time_onnx(f, x, prov, **kw)
                    else:  # tensorrt: the edge encoder only
                        if key != "e3d":
                            raise RuntimeError("TensorRT runs the edge encoder E_K only")
                        res = _time_tensorrt(bl["implicit"][0].mods[0], x, tdir, **kw)
                    row["median_ms"], row["p90_ms"], row["reps"] = round(res[0], 3), round(res[1], 3), res[2]
                except Exception as e:  # noqa: BLE001 - a backend that cannot run says why
                    row["note"] = str(e).splitlines()[0][:200]
                rows.append(row)
                log.info("%s on %s: %s", key, backend, row["median_ms"] or row["note"])
    for backend in {r["backend"] for r in rows}:
        seq = next((r for r in rows if r["backend"] == backend and r["block"] == "sequential" and r["median_ms"] != ""),
                   None)
        for r in rows:
            if r["backend"] == backend:
                r["ratio_to_sequential"] = (round(r["median_ms"] / seq["median_ms"], 3)
                                            if seq and r["median_ms"] != "" else "")
                r["paper_ratio_to_sequential"] = (round(PAPER_MS[r["block"]] / PAPER_MS["sequential"], 3)
                                                  if PAPER_MS[r["block"]] else "")
    with (out / "speed.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / "speed.md").write_text(markdown_table(rows, size, machine_description(), commit))
    return rows


def markdown_table(rows: list[dict], size: str, machine: str, commit: str) -> str:
    """Tab. III as Markdown: blocks x backends, ms (ratio to the sequential model), and the paper."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    keys = list(dict.fromkeys(r["block"] for r in rows))
    lines = [f"# voxlink bench speed ({size} sizes)", "",
             f"Forward pass, median ms (in parentheses: time / sequential model's, on the same backend), "
             f"one object, {VIEWS} views, {ITERATIONS} N_small iterations; {machine}; git `{commit[:10]}`.", "",
             "| block | " + " | ".join(backends) + " | paper (GTX 1080 Ti) |", "|---|" + "---|" * (len(backends) + 1)]
    for k in keys:
        cells = []
        for b in backends:
            r = next(r for r in rows if r["block"] == k and r["backend"] == b)
            if r["median_ms"] == "":
                cells.append("n/a")
            else:
                cells.append(f"{r['median_ms']:.1f}" + (f" ({r['ratio_to_sequential']:.2f})"
                                                       if r["ratio_to_sequential"] != "" else ""))
        p = PAPER_MS[k]
        paper = f"{p:g} ({p / PAPER_MS['sequential']:.2f})" if p else "--"
        lines.append(f"| {BLOCK_NAMES[k]} | " + " | ".join(cells) + f" | {paper} |")
    notes = sorted({f"{r['backend']}: {r['note']}" for r in rows if r["note"]})
    if notes:
        lines += ["", "Not run:"] + [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)
