"""``voxlink bench edge``: what the drone costs, in one run — install size, start-up time and encode
time per frame, for each Python environment given (this one, plus e.g. a torch-free edge venv) and
each encoder backend that environment has (ONNX Runtime on CPU, PyTorch on CPU).

* Install size: bytes of the environment's ``site-packages`` (purelib and platlib, each counted once).
* Start-up: wall-clock seconds from launching ``python -m voxlink.cli edge`` (a fresh process, on a
  short lossless video) to the first code message arriving at a ZeroMQ PULL socket here: interpreter
  start, imports, model metadata, backend load, warm-up, first capture and encode.
* Import: seconds to ``import edge.daemon`` in a fresh process, and whether that pulled in torch.
* Encode: ms per frame at batch 1 (median and mean over ``frames`` frames of the video after 5 warm-up
  frames), preprocessing excluded, in a fresh process per backend and thread count (1 thread, and the
  library's default of all cores).

Only the standard library, NumPy, OpenCV and pyzmq are used here, so it runs in a torch-free edge
environment too (``python -m edge.bench --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The encoder backends compared (CPU execution for both).
BACKENDS = ("onnxruntime", "torch")


def make_video(path: str | Path, n: int = 16, width: int = 320, height: int = 240, fps: float = 10.0,
               seed: int = 0) -> Path:
    """Write a short lossless (FFV1) video of moving coloured shapes on a textured background.

    Args:
        path: ``.avi`` file to write.
        n: frames. width, height: pixels. fps: frames per second in the container. seed: RNG seed.

    Returns:
        the path; its frames decode (OpenCV) to exactly the uint8 BGR [height, width, 3] frames drawn.

    Raises:
        RuntimeError: OpenCV cannot write FFV1 here.
    """
    import cv2

    rng = np.random.default_rng(seed)
    bg = cv2.resize(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), (width, height),
                    interpolation=cv2.INTER_LINEAR)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write an FFV1 video to {path}")
    try:
        for i in range(n):
            f = bg.copy()
            a = 2 * np.pi * i / max(n, 1)
            cx, cy = int(width / 2 + width / 4 * np.cos(a)), int(height / 2 + height / 4 * np.sin(a))
            cv2.circle(f, (cx, cy), height // 6, tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
            cv2.rectangle(f, (width // 3, height // 3), (width // 3 + 40 + 3 * i, height // 3 + 50), (20, 200, 240), -1)
            w.write(f)
    finally:
        w.release()
    return Path(path)


def site_packages_bytes(python: str | Path) -> int:
    """Total size in bytes of the files in an interpreter's site-packages (purelib and platlib)."""
    out = subprocess.run([str(python), "-c", "import sysconfig, json; p = sysconfig.get_paths(); "
                          "print(json.dumps(sorted({p['purelib'], p['platlib']})))"],
                         capture_output=True, text=True, check=True).stdout
    total = 0
    for root in json.loads(out):
        for dirpath, _, files in os.walk(root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    return total


def _has_module(python: str | Path, name: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {name}"], capture_output=True).returncode == 0


def _child_env() -> dict:
    """Environment of the measured processes (run from the temporary folder, so each interpreter
    imports its own installed voxlink, not a checkout in the current folder)."""
    env = dict(os.environ)
    env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return env


def measure_import(python: str | Path) -> dict:
    """Seconds to ``import edge.daemon`` in a fresh process, and whether torch got imported.

    Returns:
        ``{"import_s": float, "torch_imported": bool}``.

    Raises:
        RuntimeError: the import failed (its stderr in the message).
    """
    code = ("import sys, time; t = time.perf_counter(); import edge.daemon; "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=_child_env(), cwd=tempfile.gettempdir())
    if r.returncode:
        raise RuntimeError(f"{python}: import edge.daemon failed: {r.stderr[-1000:]}")
    t, torch_in = r.stdout.split()
    return {"import_s": float(t), "torch_imported": torch_in == "True"}


def measure_startup(python: str | Path, backend: str, video: str | Path, model: str | None = None,
                    timeout_s: float = 120.0) -> float:
    """Seconds from launching the edge daemon (fresh process) to its first code message arriving here.

    Raises:
        RuntimeError: the daemon exited or sent nothing within ``timeout_s`` (its log in the message).
    """
    import zmq

    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [str(python), "-m", "voxlink.cli", "edge", "--source", str(video), "--backend", backend,
               "--connect", f"tcp://127.0.0.1:{port}", "--socket", "push", "--max-frames", "2", "--log-dir", logdir]
        if model:
            cmd += ["--model", str(model)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
                                cwd=tempfile.gettempdir())
        try:
            while time.perf_counter() - t0 < timeout_s:
                if pull.poll(100):
                    buf = pull.recv()
                    if len(buf) > 1 and buf[1] & 0x0F == 1:  # a code message (kind 1), not the stream info
                        dt = time.perf_counter() - t0
                        proc.wait(timeout=60)
                        return dt
                elif proc.poll() is not None and not pull.poll(200):
                    break
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"{python} edge --backend {backend}: no code received; log:\n{err[-2000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            pull.close()


def encode_timing(backend: str, video: str | Path, model: str | None = None, frames: int = 50,
                  threads: int = 0) -> dict:
    """Encode time per frame at batch 1, in this process, on the CPU.

    Args:
        backend: ``onnxruntime`` (CPU execution provider; the model's shipped or cached graph) or
            ``torch`` (CPU).
        video: frames to encode (cycled); preprocessing happens before timing.
        frames: timed frames.
        threads: intra-op threads of the backend (0: the library's default, all cores).

    Returns:
        ``{"backend": name, "load_s": s, "encode_ms_p50": ms, "encode_ms_mean": ms, "frames": n}``.

    Raises:
        voxlink.backends.BackendUnavailable, ImportError: the backend cannot run here. ValueError: unknown backend.
    """
    from edge.sources import OpenCVSource, SourceEnded
    from voxlink.backends import OnnxBackend, TorchBackend
    from voxlink.preprocess import to_input_array

    src = OpenCVSource(str(video))
    views = []
    try:
        while True:
            views.append(src.read().view)
    except SourceEnded:
        pass
    finally:
        src.close()
    x = [to_input_array(v[None]) for v in views]
    t0 = time.perf_counter()
    if backend == "onnxruntime":
        b = OnnxBackend.for_model(model, providers=("CPUExecutionProvider",), threads=threads)
    elif backend == "torch":
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        b = TorchBackend(model, device="cpu")
    else:
        raise ValueError(f"unknown backend {backend!r}")
    load_s = time.perf_counter() - t0
    for i in range(5):
        b.encode(x[i % len(x)])
    ms = []
    for i in range(frames):
        t = time.perf_counter()
        b.encode(x[i % len(x)])
        ms.append((time.perf_counter() - t) * 1e3)
    return {"backend": b.name, "load_s": load_s, "encode_ms_p50": float(np.median(ms)),
            "encode_ms_mean": float(np.mean(ms)), "frames": frames, "threads": threads}


def run(pythons: list[str | Path] | None = None, model: str | None = None, frames: int = 50,
        threads: tuple[int, ...] = (1, 0)) -> tuple[list[dict], str]:
    """Measure every environment in ``pythons`` (default: this interpreter) on every backend it has.

    Encode time is measured once per entry of ``threads`` (intra-op threads; 0 = the library's default,
    all cores: on a loaded machine PyTorch's default thread pool can be many times slower than 1 thread).

    Returns:
        ``(rows, text)``: one dict per environment (``python``, ``site_packages_mb``, ``torch``,
        ``import_s``, ``backends``: {kind: {startup_s, encode_ms_p50, encode_ms_mean, load_s, backend}}
        or {kind: {"error": ...}}), and a Markdown table of them.
    """
    pythons = [Path(os.path.abspath(p)) for p in (pythons or [sys.executable])]  # abspath: keep venv symlinks
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "bench.avi", n=16)
        for py in pythons:
            row = {"python": str(py), "site_packages_mb": site_packages_bytes(py) / 1e6,
                   "torch": _has_module(py, "torch"), **measure_import(py), "backends": {}}
            for kind in BACKENDS:
                if kind == "torch" and not row["torch"]:
                    continue
                r = {}
                try:
                    r["startup_s"] = measure_startup(py, kind, video, model)
                    r["encode"] = {}
                    for th in threads:
                        cmd = [str(py), "-m", "edge.bench", "--child-encode", kind, "--video", str(video),
                               "--frames", str(frames), "--threads", str(th)] + (["--model", str(model)] if model else [])
                        out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(),
                                             cwd=tempfile.gettempdir())
                        if out.returncode:
                            raise RuntimeError(out.stderr[-1000:])
                        e = json.loads(out.stdout.strip().splitlines()[-1])
                        r["backend"] = e["backend"]
                        r["encode"][th] = e
                except (RuntimeError, ValueError, OSError) as e:
                    r = {"error": str(e)}
                row["backends"][kind] = r
            rows.append(row)
    heads = [f"encode ms/frame p50 (mean), {th or 'default'} thread{'s' if th != 1 else ''}" for th in threads]
    lines = ["| environment | site-packages MB | torch | import edge.daemon s | backend | start-up to first code s | "
             + " | ".join(heads) + " |", "|---|---|---|---|---|---|" + "---|" * len(threads)]
    for row in rows:
        for kind, r in row["backends"].items() or [("-", {"error": "no backend"})]:
            cells = [row["python"], f"{row['site_packages_mb']:.0f}", "yes" if row["torch"] else "no",
                     f"{row['import_s']:.2f}" + (" (imports torch)" if row["torch_imported"] else "")]
            if "error" in r:
                msg = r["error"].strip().splitlines()[-1][:80] if r["error"].strip() else ""
                cells += [kind, "error: " + msg] + [""] * len(threads)
            else:
                cells += [r["backend"], f"{r['startup_s']:.2f}"]
                cells += [f"{r['encode'][th]['encode_ms_p50']:.2f} ({r['encode'][th]['encode_ms_mean']:.2f})" for th in threads]
            lines.append("| " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.bench [--python PY ...]``; ``--child-encode KIND`` is the per-backend worker."""
    ap = argparse.ArgumentParser(description="Edge install size, start-up and encode time per backend.")
    ap.add_argument("--python", action="append", default=None, help="interpreter(s) to measure (default: this one)")
    ap.add_argument("--model", default=None, help="model name or file")
    ap.add_argument("--frames", type=int, default=50, help="timed frames per backend")
    ap.add_argument("--threads", type=int, action="append", default=None,
                    help="intra-op threads for the encode timing (0 = library default); repeat for several "
                         "(default: 1 and 0)")
    ap.add_argument("--child-encode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--video", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_encode:
        print(json.dumps(encode_timing(a.child_encode, a.video, a.model, a.frames, (a.threads or [0])[0])))
        return 0
    _, text = run(a.python, a.model, a.frames, tuple(a.threads or (1, 0)))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
