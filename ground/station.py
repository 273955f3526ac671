"""The ground station: ZeroMQ in, per-object 3D reconstruction out.

A receiver thread reads messages (SUB, bound or connected to one or many drones) into a bounded
queue; the decoder thread checks each one and updates, per (stream, object), the 3D-LSTM state, the
occupancy grid, that view's depth map and the fused point cloud. Objects idle for
``idle_timeout_s`` (and all at shutdown) are finalised to files:

    <out>/s<stream>_o<object>/occupancy.npz   occupancy float32 [32,32,32] p in [0,1], [x,y,z];
                                              voxel_min, voxel_size (metres), grid_to_world [4,4]
    <out>/s<stream>_o<object>/occupancy.binvox (p > 0.4)
    <out>/s<stream>_o<object>/points.ply       fused point cloud (object/world frame of the poses)
    <out>/s<stream>_o<object>/mesh.ply         marching cubes (scikit-image) of p = 0.4, world frame
    <out>/s<stream>_o<object>/depth/NNNNNN.png 16-bit depth in millimetres (0 = invalid), per view
    <out>/s<stream>_o<object>/session.json     views, gaps, bytes, ratio, timings, point source

Nothing from the wire is trusted: every rejection is counted by reason and logged; the station keeps
serving.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from voxlink import camera
from voxlink.data.dataset import yaw_matrix
from voxlink.data.voxelize import grid_to_world as _g2w
from voxlink.data.voxelize import voxel_size
from voxlink.models.binarizer import compression_ratio, unpack_bits
from voxlink.protocol import CodeMessage, ProtocolError, StreamInfo, decode

log = logging.getLogger("voxlink.ground")
TAU = 0.4


@dataclass
class GroundConfig:
    """Ground station settings.

    Attributes:
        bind: endpoints to bind (the drones connect). connect: drone endpoints to connect to.
        model: model name or file. out: output folder. idle_timeout_s: finalise an object after this
        long without views. metrics_interval_s: metrics period. queue_size: decode queue length
        (messages beyond it are dropped and counted). rcvhwm: ZeroMQ receive high-water mark.
        point_voxel: voxel size of the point-cloud downsampling, metres. socket: ``sub`` or ``pull``.
        backend: decoder backend: ``torch``, ``onnxruntime`` (graphs from ``export/ground_onnx.py``,
        exported on start into ``<out>/onnx``) or ``auto`` (ONNX Runtime where it loads, else torch).
    """

    bind: list[str] = field(default_factory=lambda: ["tcp://*:5555"])
    connect: list[str] = field(default_factory=list)
    model: str | None = None
    out: str = "ground-out"
    idle_timeout_s: float = 30.0
    metrics_interval_s: float = 5.0
    queue_size: int = 10000
    rcvhwm: int = 100000
    point_voxel: float = 1.0 / 128
    socket: str = "sub"
    backend: str = "torch"


@dataclass
class ObjectSession:
    """Reconstruction state of one (stream, object)."""

    stream: int
    object_id: int
    state: tuple
    grid_to_world: np.ndarray
    views: int = 0
    bytes: int = 0
    last_seq: int | None = None
    gaps: list = field(default_factory=list)
    points: list = field(default_factory=list)
    depths: list = field(default_factory=list)
    raw_depths: list = field(default_factory=list)
    poses: list = field(default_factory=list)
    latency_ms: list = field(default_factory=list)
    occupancy: np.ndarray | None = None
    last_update: float = 0.0
    point_source: str = "depth"


class GroundStation:
    """Receives codes from drones and reconstructs every object they stream.

    Raises:
        voxlink.weights.ModelFileError: bad model.
    """

    def __init__(self, cfg: GroundConfig):
        from voxlink.weights import load_model

        self.cfg = cfg
        self.model, self.meta, _ = load_model(cfg.model)
        self.K_bits = self.model.cfg.code_bits
        self.fp = self.model.fingerprint()
        self.net = self._decoder_backend(cfg.backend)
        self.streams: dict[int, StreamInfo] = {}
        self.sessions: dict[tuple[int, int], ObjectSession] = {}
        self.finished: list[dict] = []
        self.stats = Counter()
        self.rejected = Counter()
        self.q: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.listeners: list = []  # callables(session) after every update (the viewer)
        self.out = Path(cfg.out)

    def _decoder_backend(self, kind: str):
        """The object whose init_state / step / occupancy / decode_depth the station calls."""
        if kind not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"ground backend must be auto, torch or onnxruntime, got {kind!r}")
        if kind == "torch":
            log.info("decoder backend: torch")
            return self.model
        from export.ground_onnx import OnnxGroundDecoder, export_ground
        from voxlink.backends import BackendUnavailable

        try:
            folder = export_ground(self.model, Path(self.cfg.out) / "onnx")
            dec = OnnxGroundDecoder(folder)
        except (BackendUnavailable, OSError, RuntimeError) as e:
            if kind == "onnxruntime":
                raise BackendUnavailable(f"ONNX Runtime decoder unavailable: {e}") from e
            log.info("decoder backend onnxruntime skipped (%s): torch", e)
            return self.model
        log.info("decoder backend: %s", dec.name)
        return dec

    # -- receiving ---------------------------------------------------------------------------------
    def _socket(self, ctx):
        import zmq

        s = ctx.socket(zmq.SUB if self.cfg.socket == "sub" else zmq.PULL)
        if self.cfg.socket == "sub":
            s.setsockopt(zmq.SUBSCRIBE, b"")
        s.setsockopt(zmq.RCVHWM, self.cfg.rcvhwm)
        s.setsockopt(zmq.LINGER, 0)
        for ep in self.cfg.bind:
            s.bind(ep)
        for ep in self.cfg.connect:
            s.connect(ep)
        return s

    def _receive(self, sock) -> None:
        while not self.stop.is_set():
            if not sock.poll(200):
                continue
            buf = sock.recv()
            self.stats["messages"] += 1
            try:
                self.q.put_nowait((buf, time.time()))
            except queue.Full:
                self.rejected["queue_full"] += 1

    # -- decoding ----------------------------------------------------------------------------------
    def _reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        log.warning("rejected message: %s %s", reason, detail)

    def handle(self, buf: bytes, t_recv: float | None = None) -> ObjectSession | None:
        """Check one message and apply it; returns the updated session (None for info or rejects)."""
        try:
            msg = decode(buf)
        except ProtocolError as e:
            self._reject(e.reason, str(e))
            return None
        if isinstance(msg, StreamInfo):
            if msg.fingerprint != bytes.hex(self.fp):
                self._reject("wrong_fingerprint", f"stream {msg.stream} runs model {msg.model} ({msg.fingerprint})")
                self.streams.pop(msg.stream, None)
                return None
            if msg.stream not in self.streams:
                log.info("stream %d: model %s, K = %d, backend %s", msg.stream, msg.model, msg.code_bits,
                         msg.extra.get("backend", "?") if msg.extra else "?")
            self.streams[msg.stream] = msg
            return None
        info = self.streams.get(msg.stream)
        if info is None:
            self._reject("unknown_stream", f"stream {msg.stream}: no stream info received yet")
            return None
        if msg.fingerprint != info.fingerprint32:
            self._reject("wrong_fingerprint", f"stream {msg.stream}")
            return None
        if msg.n_bits != self.K_bits:
            self._reject("wrong_code_length", f"{msg.n_bits} bits, the model takes {self.K_bits}")
            return None
        return self._apply(msg, info, t_recv or time.time())

    @torch.no_grad()
    def _apply(self, msg: CodeMessage, info: StreamInfo, t_recv: float) -> ObjectSession:
        key = (msg.stream, msg.object_id)
        s = self.sessions.get(key)
        if s is None:
            g2w = _g2w(self.model.cfg.resolution)
            if self.model.cfg.frame == "view" and msg.pose is not None:
                g2w = yaw_matrix(camera.azimuth_of(msg.pose)) @ g2w
            s = ObjectSession(msg.stream, msg.object_id, self.net.init_state(1), g2w)
            self.sessions[key] = s
            log.info("new object: stream %d, object %d", *key)
        if s.last_seq is not None and msg.seq != (s.last_seq + 1) & 0xFFFFFFFF:
            s.gaps.append([s.last_seq, msg.seq])
        s.last_seq = msg.seq
        code = unpack_bits(msg.payload, self.K_bits)[None]
        s.state = self.net.step(code, s.state)
        s.occupancy = self.net.occupancy(s.state)[0].numpy()
        depth, mask = self.net.decode_depth(code)
        d = np.where(mask[0].numpy() > 0.5, depth[0].numpy(), 0.0).astype(np.float32)
        s.depths.append(d)
        s.raw_depths.append(depth[0].numpy())
        s.poses.append(msg.pose)
        if msg.pose is not None:
            s.points.append(camera.backproject(d, info.K, msg.pose).astype(np.float32))
        s.views += 1
        s.bytes += len(msg.payload) + 24
        s.last_update = time.time()
        s.latency_ms.append((s.last_update - (info.epoch_unix + msg.t_ms / 1000.0)) * 1000.0)
        self.stats["views"] += 1
        for f in self.listeners:
            f(s)
        return s

    def fused_points(self, s: ObjectSession) -> np.ndarray:
        """The session's point cloud, voxel-downsampled (float32 [N, 3], metres).

        From back-projected depth maps where views carry poses; otherwise from the occupancy grid's
        surface voxels (``session.json`` says which).
        """
        pts = np.concatenate(s.points) if s.points else np.zeros((0, 3), np.float32)
        if len(pts):
            s.point_source = "depth"
        else:
            occ = (s.occupancy if s.occupancy is not None else np.zeros((1, 1, 1))) > TAU
            from scipy import ndimage

            surf = occ & ~ndimage.binary_erosion(occ)
            idx = np.argwhere(surf).astype(np.float64)
            pts = (idx @ s.grid_to_world[:3, :3].T + s.grid_to_world[:3, 3]).astype(np.float32)
            s.point_source = "occupancy_surface"
        if len(pts) == 0:
            return pts.reshape(0, 3)
        keys = np.floor(pts / self.cfg.point_voxel).astype(np.int64)
        _, first = np.unique(keys, axis=0, return_index=True)
        return pts[np.sort(first)]

    def finalise(self, key: tuple[int, int]) -> dict:
        """Write an object's files and drop its state; returns its session summary."""
        import cv2
        import trimesh

        from voxlink.data.binvox import write_binvox

        s = self.sessions.pop(key)
        d = self.out / f"s{s.stream}_o{s.object_id}"
        (d / "depth").mkdir(parents=True, exist_ok=True)
        occ = s.occupancy if s.occupancy is not None else np.zeros((self.model.cfg.resolution,) * 3, np.float32)
        vs = voxel_size(occ.shape[0])
        np.savez_compressed(d / "occupancy.npz", occupancy=occ.astype(np.float32), voxel_min=np.float32(-0.5),
                            voxel_size=np.float32(vs), grid_to_world=s.grid_to_world.astype(np.float64))
        write_binvox(d / "occupancy.binvox", occ > TAU)
        pts = self.fused_points(s)
        if len(pts):
            trimesh.PointCloud(pts).export(d / "points.ply")
        else:  # trimesh cannot write an empty cloud
            (d / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                                          "property float y\nproperty float z\nend_header\n")
        mesh_faces = 0
        if (occ > TAU).any() and not (occ > TAU).all():
            from skimage import measure

            v, f, _, _ = measure.marching_cubes(np.pad(occ, 1), level=TAU)
            v = (v - 1.0) @ s.grid_to_world[:3, :3].T + s.grid_to_world[:3, 3]
            trimesh.Trimesh(v, f, process=False).export(d / "mesh.ply")
            mesh_faces = len(f)
        for i, dep in enumerate(s.depths):
            cv2.imwrite(str(d / "depth" / f"{i:06d}.png"), np.clip(np.round(dep * 1000.0), 0, 65535).astype(np.uint16))
        lat = np.array(s.latency_ms) if s.latency_ms else np.zeros(1)
        summary = {"stream": s.stream, "object_id": s.object_id, "views": s.views, "gaps": s.gaps,
                   "missing_views": int(sum((b - a - 1) & 0xFFFFFFFF for a, b in s.gaps)), "bytes": s.bytes,
                   "bytes_per_view": s.bytes / max(s.views, 1),
                   "compression_ratio": compression_ratio(self.K_bits), "code_bits": self.K_bits,
                   "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
                   "points": int(len(pts)), "point_source": s.point_source, "mesh_faces": mesh_faces,
                   "model": self.model.cfg.name, "frame": self.model.cfg.frame, "folder": str(d)}
        (d / "session.json").write_text(json.dumps(summary, indent=1))
        self.finished.append(summary)
        log.info("object s%d_o%d finalised: %d views, %d gaps, %s", s.stream, s.object_id, s.views, len(s.gaps), d)
        return summary

    def run(self, duration_s: float | None = None) -> int:
        """Serve until SIGINT / SIGTERM (or ``duration_s``); finalise every object; returns 0."""
        import signal

        import zmq

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, lambda *_: self.stop.set())
            except ValueError:
                pass
        ctx = zmq.Context.instance()
        sock = self._socket(ctx)
        rx = threading.Thread(target=self._receive, args=(sock,), daemon=True, name="receiver")
        rx.start()
        t_end = time.time() + duration_s if duration_s else None
        last_metrics = time.monotonic()
        views_window = 0
        try:
            while not self.stop.is_set() and (t_end is None or time.time() < t_end):
                try:
                    buf, t_recv = self.q.get(timeout=0.2)
                    with self.lock:
                        if self.handle(buf, t_recv) is not None:
                            views_window += 1
                except queue.Empty:
                    pass
                now = time.time()
                with self.lock:
                    for key in [k for k, s in self.sessions.items() if now - s.last_update > self.cfg.idle_timeout_s]:
                        self.finalise(key)
                if time.monotonic() - last_metrics >= self.cfg.metrics_interval_s:
                    dt = time.monotonic() - last_metrics
                    log.info("%.1f views/s  objects %d  streams %d  queue %d  rejected %s", views_window / dt,
                             len(self.sessions), len(self.streams), self.q.qsize(), dict(self.rejected) or 0)
                    last_metrics, views_window = time.monotonic(), 0
        finally:
            self.stop.set()
            rx.join(timeout=2)
            # drain what already arrived, then finalise every object
            while True:
                try:
                    buf, t_recv = self.q.get_nowait()
                except queue.Empty:
                    break
                with self.lock:
                    self.handle(buf, t_recv)
            with self.lock:
                for key in list(self.sessions):
                    self.finalise(key)
            sock.close()
            log.info("ground stopped: %s, rejected %s", dict(self.stats), dict(self.rejected))
        return 0
