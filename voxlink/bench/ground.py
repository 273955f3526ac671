"""``voxlink bench ground``: N simulated drones drive a real ground station (a subprocess) over loopback.

Each drone has its own PUSH socket, stream id and object, sends a stream info every 2 s (and a last
one with ``last_seq``) and ``rate`` views a second, evenly spread. The views are real: before the
clock starts, the model encodes ``orbit_views`` views of each shipped real mesh on a drone's orbit,
and drone ``d`` streams the codes and true poses of mesh ``d mod 6`` round and round (``codes =
"random"``: random K-bit codes with orbit poses instead, a ground fed noise: its point clouds never
stop finding new voxels, so they fill to their bound).
While it runs the ground's CPU time and memory are read from ``/proc``; at the end the ground gets
SIGTERM and its ``ground.json`` gives every count. The report (``<out>/bench.json``): views sent and
applied, views lost, applied views/s, capture-to-applied latency p50 / p99 (ms, the ground's), CPU
(% of one core), peak and final resident memory (MiB) and RSS over time, the ground's exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from voxlink import camera
from voxlink.models.binarizer import pack_bits
from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32


def _proc_sample(pid: int) -> tuple[float, float, float]:
    """``(CPU seconds user + system, RSS MiB, peak RSS MiB)`` of a process (Linux ``/proc``; zeros elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        status = Path(f"/proc/{pid}/status").read_text()
        kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))}
        return cpu, kb.get("VmRSS", 0) / 1024, kb.get("VmHWM", 0) / 1024
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0.0


def _read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def real_codes(m, orbit_views: int = 48) -> list[tuple[list[bytes], np.ndarray]]:
    """Per shipped real mesh, the model's codes of ``orbit_views`` orbit views and their poses.

    Args:
        m: a reconstruction model (``encode``: float32 [N, 3, H, W] -> codes in {-1, +1} [N, K]).

    Returns:
        ``[(packed codes (K / 8 bytes each), poses float32 [V, 4, 4] camera-to-object), ...]``, one per mesh.
    """
    import torch

    from voxlink.data.meshes import ASSET_MESHES, find_meshes, load_mesh
    from voxlink.data.render import Renderer
    from voxlink.preprocess import to_input

    out = []
    K = camera.intrinsics(128)
    # a drone's orbit as the ``orbit:MESH`` source flies it (30 degrees down, 2 m; its seed-0 background)
    poses = np.stack([camera.circle_pose(i, orbit_views) for i in range(orbit_views)])
    bg = np.repeat(np.random.default_rng(0).integers(0, 256, size=3, dtype=np.uint8)[None], orbit_views, 0)
    renderer = Renderer(128)
    try:
        for path in find_meshes([ASSET_MESHES]):
            views, _ = renderer.render(load_mesh(path).parts, K, poses, bg)
            with torch.no_grad():
                codes = m.encode(to_input(views)).numpy()
            out.append(([pack_bits(c) for c in codes], poses.astype(np.float32)))
    finally:
        renderer.close()
    return out


def run_bench(drones: int = 10, rate: float = 2.0, seconds: float = 30.0, model: str | None = None,
              out: str | Path = "bench/ground", backend: str = "torch", drain_timeout_s: float = 120.0,
              codes: str = "real", orbit_views: int = 48) -> dict:
    """Run the benchmark (see the module docstring) and write ``<out>/bench.json``.

    Args:
        drones: streams (1..256). rate: views per second per drone. seconds: sending time.
        model: the ground's model. out: output folder (the ground's files in ``out/ground``).
        backend: the ground's decoder backend. drain_timeout_s: how long to wait for the ground to
            apply what was sent after the drones stop. codes: ``real`` (the model's codes of orbit
            views of the shipped real meshes) or ``random``. orbit_views: views per orbit (real codes).

    Raises:
        ValueError: ``codes`` is neither ``real`` nor ``random``.

    Returns:
        the report dict.

    Raises:
        RuntimeError: the ground did not start.
    """
    import zmq

    from voxlink.net import free_port
    from voxlink.weights import load_model

    out = Path(out)
    gout = out / "ground"
    if gout.exists():
        import shutil

        shutil.rmtree(gout)
    out.mkdir(parents=True, exist_ok=True)
    if codes not in ("real", "random"):
        raise ValueError(f"codes must be real or random, got {codes!r}")
    m, _, _ = load_model(model)
    code_bits, fp = m.cfg.code_bits, m.fingerprint()
    orbits = real_codes(m.eval(), orbit_views) if codes == "real" else None
    port = free_port()
    cmd = [sys.executable, "-m", "voxlink.cli", "ground", "--bind", f"tcp://127.0.0.1:{port}", "--socket", "pull",
           "--out", str(gout), "--idle-timeout", "3600", "--backend", backend]
    if model:
        cmd += ["--model", str(model)]
    errlog = (out / "ground.log").open("w")
    proc = subprocess.Popen(cmd, stdout=errlog, stderr=subprocess.STDOUT)
    status_path = gout / "ground.json"
    deadline = time.time() + 120
    while time.time() < deadline and not status_path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the ground exited with {proc.returncode}; see {out / 'ground.log'}")
        time.sleep(0.2)
    if not status_path.exists():
        proc.kill()
        raise RuntimeError(f"the ground did not start in 120 s; see {out / 'ground.log'}")
    ctx = zmq.Context()
    socks = []
    for _ in range(drones):
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.setsockopt(zmq.LINGER, 5000)
        s.connect(f"tcp://127.0.0.1:{port}")
        socks.append(s)
    rng = np.random.default_rng(0)
    poses = camera.orbit_poses(64, rng)
    K = camera.intrinsics(128)
    epoch = time.time()
    seqs = [0] * drones

    def info(d, last=False):
        """Drone ``d``'s stream-info message (bytes); ``last`` carries the last sequence number sent."""
        return encode_info(StreamInfo(stream=d, seq=0, fingerprint=bytes.hex(fp), code_bits=code_bits, K=K, model=m.cfg.name,
                                      frame=m.cfg.frame, epoch_unix=epoch, first_seq=0,
                                      last_seq=seqs[d] - 1 if seqs[d] else None))

    for d in range(drones):
        socks[d].send(info(d))
    time.sleep(0.5)
    samples = []  # (t, cpu s, rss MiB)
    cpu0 = _proc_sample(proc.pid)[0]
    t0 = time.time()
    period = 1.0 / rate
    n_total = int(seconds * rate)
    schedule = sorted((k * period + d * period / drones, d) for d in range(drones) for k in range(n_total))
    next_info, next_sample = t0 + 2.0, t0
    sent = 0
    for t_rel, d in schedule:
        while True:
            now = time.time()
            if now >= next_sample:
                cpu, rss, _ = _proc_sample(proc.pid)
                samples.append((now - t0, cpu - cpu0, rss))
                next_sample = now + 1.0
            if now >= next_info:
                for dd in range(drones):
                    socks[dd].send(info(dd))
                next_info = now + 2.0
            wait = t0 + t_rel - now
            if wait <= 0:
                break
            time.sleep(min(wait, 0.05))
        if orbits is not None:
            payloads, orbit_poses = orbits[d % len(orbits)]
            payload, pose = payloads[seqs[d] % len(payloads)], orbit_poses[seqs[d] % len(payloads)]
        else:
            payload, pose = pack_bits(np.where(rng.random(code_bits) > 0.5, 1.0, -1.0)), poses[seqs[d] % len(poses)]
        msg = CodeMessage(stream=d, object_id=d, seq=seqs[d], t_ms=int((time.time() - epoch) * 1000),
                          fingerprint=fingerprint32(fp), n_bits=code_bits, payload=payload, pose=pose)
        socks[d].send(encode_code(msg))
        seqs[d] += 1
        sent += 1
    t_sent = time.time()
    for d in range(drones):
        socks[d].send(info(d, last=True))
    # wait until the ground has applied everything (or the drain timeout)
    applied, t_applied = 0, t_sent
    deadline = time.time() + drain_timeout_s
    while time.time() < deadline:
        st = _read_status(status_path)
        if st.get("views_applied", 0) != applied:
            applied, t_applied = st.get("views_applied", 0), time.time()
        if applied >= sent:
            break
        now = time.time()
        if now >= next_sample:
            cpu, rss, _ = _proc_sample(proc.pid)
            samples.append((now - t0, cpu - cpu0, rss))
            next_sample = now + 1.0
        time.sleep(0.2)
    cpu, rss, peak = _proc_sample(proc.pid)
    wall = max(time.time() - t0, 1e-6)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = -9
    errlog.close()
    for s in socks:
        s.close(0)
    ctx.term()
    final = _read_status(status_path)
    applied = final.get("views_applied", applied)
    rss_series = [r for _, _, r in samples]
    half = len(rss_series) // 2
    report = {
        "drones": drones, "rate_per_drone": rate, "seconds": seconds, "codes": codes,
        "orbit_views": orbit_views if codes == "real" else None, "views_sent": sent, "views_applied": applied,
        "views_lost": sent - applied, "applied_views_per_s": applied / max(t_applied - t0, 1e-6),
        "offered_views_per_s": drones * rate, "latency_ms": final.get("latency_ms"),
        "cpu_percent_of_one_core": 100.0 * (cpu - cpu0) / wall, "rss_mib_final": rss, "rss_mib_peak": peak,
        "rss_mib_first_half_max": max(rss_series[:half]) if half else None,
        "rss_mib_second_half_max": max(rss_series[half:]) if half else None,
        "ground_exit_code": code, "duplicates": final.get("duplicates"), "missing_views": final.get("missing_views"),
        "rejected": final.get("rejected"), "output_errors": final.get("output_errors"),
        "queue_at_end": final.get("queue"), "rss_series": [[round(t, 1), round(r, 1)] for t, _, r in samples],
        "ground": final,
    }
    (out / "bench.json").write_text(json.dumps(report, indent=1, allow_nan=False, default=str))
    return report
