"""The ground station: ZeroMQ in, per-object 3D reconstruction out, nothing lost and nothing twice.

Threads: a receiver reads messages (SUB or PULL, bound or connected, optionally CURVE-authenticated)
and the back channel (a ROUTER the edges connect to) into a bounded queue; the main loop takes
batches from the queue, checks each message, applies every new view exactly once (batched across
objects), and keeps files and counts up to date. With a fusion model the main loop only decodes the
views: a fuser thread places them into their objects' states and a depth thread makes their depth
PNGs and points, each in order, a few batches behind at most, while the next batch is decoded;
whatever reads a result (snapshot, viewer, occupancy) waits for it first (:meth:`GroundStation.settle`).

Delivery. A view is identified by (stream, sequence number): a repeat is counted as a duplicate and
changes nothing; views out of order are applied as they come, without false gaps; missing views are
counted per stream (also at its start and end: the stream info says ``first_seq`` / ``last_seq``) and
asked back from the edge's code log over the back channel (see :mod:`edge.daemon`).

Objects outlive idle timeouts and restarts. After ``idle_timeout_s`` without views an object's
results are written as a *snapshot*; the object stays, and a later view continues the same
reconstruction. Each snapshot is written into a temporary folder and renamed into a fresh one::

    <out>/s<stream>_o<object>/snap-NNN/occupancy.npz    occupancy float32 [32,32,32] p in [0,1], [x,y,z];
                                                        voxel_min, voxel_size (metres), grid_to_world [4,4]
    <out>/s<stream>_o<object>/snap-NNN/occupancy.binvox (p > 0.4)
    <out>/s<stream>_o<object>/snap-NNN/points.ply       fused point cloud (object/world frame of the poses)
    <out>/s<stream>_o<object>/snap-NNN/mesh.ply         marching cubes (scikit-image) of p = 0.4, world frame
    <out>/s<stream>_o<object>/snap-NNN/depth.tar        per view <u>.png: 16-bit depth in millimetres (0 = invalid),
                                                        u its unwrapped sequence number (:mod:`ground.archive`)
    <out>/s<stream>_o<object>/snap-NNN/depth_fused.tar  (fusion models) the same views' depth from the snapshot's
                                                        grid, on the same silhouettes (about half the error);
                                                        added whole just after the snapshot (its own thread)
    <out>/s<stream>_o<object>/snap-NNN/views.jsonl      per view: seq, u, capture time, pose, K, latency, late
    <out>/s<stream>_o<object>/snap-NNN/session.json     views, late views, missing views, bytes, ratio, timings

``NNN`` counts up and never reuses a folder; ``<out>/ground.json`` (rewritten atomically every
``status_interval_s`` and at exit) names each object's latest snapshot and holds every count.
Work is split by urgency: a view's code is fused into its object's recurrent state at once (batched
across objects: that is the latency ``ground.json`` reports); its depth map (and the points
back-projected from it) follows in the same loop iteration, as many as were just applied, oldest
first across objects (a fusion model's depth maps come out of fusing, so this is only writing them),
catches up in spare time, and at the latest before a snapshot or when the viewer asks; it is written
to ``<out>/.work/`` (no per-view arrays are kept in memory). A backlog is never left to build up and be
forced through at once: that stalled a 10-minute run for a minute at a time. The occupancy grid is
decoded only when someone needs it (snapshot, viewer).

Durable record: every accepted message is appended as received to ``<out>/record/*.mcap``
(:mod:`ground.record`); a ground started again on the same ``out`` replays it first, so a restart
loses no view and the objects continue.

Nothing from the wire is trusted: every rejection is counted by reason (logged at most once per
reason every few seconds); a stream info that does not match this ground's model is rejected without
touching the stream already known under that id; errors writing output are counted, logged and
retried once (into ``<out>/_fallback/``), and never end the station. SIGINT / SIGTERM snapshot
every object and return 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ground import archive
from ground.delivery import StreamDelivery
from voxlink import camera
from voxlink.camera import grid_to_world as _g2w
from voxlink.camera import voxel_size, yaw_matrix
from voxlink.models.binarizer import compression_ratio, unpack_bits
from voxlink.models.fusion import view_geometry
from voxlink.net import read_drone_certificate
from voxlink.protocol import (MAX_MESSAGE_BYTES, CodeMessage, ProtocolError, StreamInfo, capture_time_unix, decode,
                              run_tag)

log = logging.getLogger("voxlink.ground")
TAU = 0.4
#: views at most waiting for their snapshot's ``depth_fused.tar`` (about 20 ms a view on 2 cores: about
#: 3 minutes of the ``fused`` thread); a snapshot beyond goes without it (counted)
FUSED_DEPTH_BACKLOG_VIEWS = 8192
#: seconds the ground waits at exit for ``depth_fused.tar`` still being made, after the snapshots and the
#: record (systemd's TimeoutStopSec is 120 in deploy/voxlink-ground.service); the rest are cancelled
FUSED_DEPTH_EXIT_S = 30.0


class FusedDepthCancelled(Exception):
    """A snapshot's ``depth_fused.tar`` was not finished because the ground is stopping."""


#: Pipelined (``GroundConfig.pipeline``): at most this many batches of views waiting to be placed, and
#: as many chunks of depth maps being made, before the main loop waits for them (each chunk holds its
#: batch's depth maps, 64 x 128 x 128 float32 = 4 MiB). Measured with 100 drones (lite model): with one
#: chunk in flight the main loop spent 18 % of its time waiting for the depth thread, which idled half
#: of its time (a loop iteration's several chunks were made one after another).
PIPELINE_DEPTH = 4
#: A missing view is asked back once it has been missing this long (seconds): reordering on the
#: link heals by itself faster than that.
REORDER_GRACE_S = 0.5
#: Views a stream keeps waiting for the stream info of their run (an edge restarted and its new info is
#: late or lost; the edge repeats it every few seconds): 4,096 views is over half an hour at 2 views/s.
#: Beyond, a view is rejected as ``held_overflow`` (and asked back over the back channel once the info
#: says it was sent).
MAX_HELD_VIEWS = 4096
#: Accepted messages kept until the record's next fsync (every ``status_interval_s``), to be written again
#: if the record breaks: 100,000 is far beyond what 2 s bring (200 views/s with 100 drones).
MAX_UNSYNCED = 100000


def clean_json(x):
    """``x`` with every non-finite float replaced by None (JSON has no NaN / Infinity), numpy scalars as Python's."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return clean_json(x.tolist())
    return x


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as strict JSON (no NaN) to ``path`` through a temporary file and a rename.

    Raises:
        OSError: the folder is not writable.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(clean_json(obj), indent=1, allow_nan=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
        raise


def _libc_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere): the
    station frees and reallocates arrays of many sizes (point clouds, batches of depth maps), and glibc
    otherwise keeps the freed pages resident."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def fused_depth_maps(model, occ: np.ndarray, depth: np.ndarray, pose: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Views' depth from their object's fused grid, on each view's decoded silhouette (the ground's
    ``depth_fused.tar`` and the viewer's depth map; :meth:`voxlink.models.fusion.FusionModel.fused_depth`).

    Args:
        model: a fusion model (only its ``fused_depth``: no network, any backend).
        occ: float32 [R, R, R] the object's occupancy grid. depth: float [N, H, W] each view's decoded depth
            masked by its decoded silhouette (metres, 0 off it: the station's depth maps). pose: float
            [N, 4, 4] camera-to-world, as fused. K: float [N, 3, 3] intrinsics (pixels).

    Returns:
        float32 [N, H, W] metres, 0 off the silhouette.
    """
    d = torch.from_numpy(np.ascontiguousarray(depth, np.float32))
    mask = d > 0
    P, Kt = view_geometry(np.asarray(pose, np.float32), np.asarray(K, np.float32))
    fd = model.fused_depth(torch.from_numpy(np.ascontiguousarray(occ, np.float32)), d, mask.float(), Kt, P,
                           tau=TAU, rays=mask)
    return torch.where(mask, fd, torch.zeros_like(fd)).numpy()


def depth_png(d: np.ndarray) -> bytes:
    """One view's depth map as a 16-bit PNG (millimetres, 0 = empty; OpenCV).

    Args:
        d: float32 [H, W] masked depth, metres (0 where no object).

    Returns:
        the PNG's bytes (for the object's ``depth.tar`` and the record).

    Raises:
        OSError: OpenCV could not encode it.
    """
    import cv2

    ok, png = cv2.imencode(".png", np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16))
    if not ok:
        raise OSError("cv2.imencode failed")
    return png.tobytes()


@dataclass
class GroundConfig:
    """Ground station settings.

    Attributes:
        bind: endpoints to bind (the drones connect). connect: drone endpoints to connect to.
        model: model name or file. out: output folder. idle_timeout_s: snapshot an object after this
        long without views (seconds). metrics_interval_s: metrics log period. status_interval_s:
        ``ground.json`` period. queue_size: decode queue length (messages beyond it are dropped,
        counted as ``queue_full``, and asked back over the back channel). rcvhwm: ZeroMQ receive
        high-water mark. point_voxel: voxel size of the point-cloud downsampling, metres.
        max_points: points kept per object (beyond, the cloud is thinned). socket: ``sub`` or
        ``pull``. backend: decoder backend: ``torch``, ``onnxruntime`` (graphs from
        ``export/ground_onnx.py``, exported into ``<out>/onnx`` once per weights) or ``auto``
        (ONNX Runtime for the implicit model where it starts, PyTorch for the fusion model).
        batch: most views fused in one model call. decoded_cache: a fusion model's decoded views kept
        for the depth maps (beyond it, a depth map is decoded again). record: keep the MCAP record in ``<out>/record``
        and rebuild from it on start. record_depth: also every view's depth image in the record (a
        16-bit PNG, about 4 to 10 kB a view). backchannel: endpoints to bind the ROUTER the edges connect to
        for gap requests (empty: none). request_interval_s: how often a missing view is asked again.
        curve_secret_file: this ground's ``zmq.auth`` certificate with its secret key (CURVE server);
        curve_allow_dir: folder of the drones' public certificates (``*.key``) allowed to connect.
        max_msg_bytes: ZeroMQ's limit per message (bigger ones drop the connection).
        pipeline: while serving (:meth:`GroundStation.run`), a fusion model's decoded views are placed into
        their objects' states in one worker thread while the next batch is decoded, and their depth
        maps' PNGs and points are made in another; each result is waited for only where it is read
        (:meth:`GroundStation.settle`). Measured with 100 drones x 2 views/s on 2 cores (the lite model,
        60 s): 194 against 178 views/s, latency p99 1.7 against 5.8 s. False: every step in turn.
        torch_threads: PyTorch's intra-op threads while serving; 0: one where pipelined (each stage
        its own thread: measured, 60-second pairs with 100 drones, p99 0.26 / 0.53 s against 1.2 /
        0.40 s with two), else PyTorch's default. Set back when :meth:`GroundStation.run` returns.
        refine_poses: a pose-aware fusion model's grid is made from all the object's distinct views at
            poses corrected by silhouette coherence (:func:`voxlink.models.pose_refine.refine_poses`:
            drones know their poses to a few degrees), whenever views came since the grid was last made
            (measured on 2 cores: 2 to 4.5 s an object at 5 views, 5 to 6.5 s at 12, 10.5 to 16 s at 24). The object then keeps each
            distinct view's code, pose and intrinsics (about 250 bytes a view); the running state (and
            the depth maps and point clouds) keep the poses as sent. ``session.json`` says what was
            corrected (``pose_refinement``). False: the poses as sent.
        refiner_precision: a pose-aware fusion model's 3D refiner and view decoder on the CPU
            (:attr:`voxlink.models.fusion.FusionModel.inference_precision`): ``auto`` (bfloat16 where the
            CPU has it natively: 5-6 ms a grid against 17-27 ms, and 0.6 against 1.2 ms a view decoded in
            a batch of 64), ``bfloat16`` or ``float32`` (the same grids on every machine).
        max_live_objects: objects kept in memory (about 0.2 MB each for the implicit model, 1.5 to 3 MB for
            the fusion model: state, depth maps, points). Beyond it, the objects idle longest whose views
            are all in a snapshot are put to sleep: the whole object is saved as
            ``<out>/.work/<object>/sleeping.npz`` (arrays and a JSON description, no pickle:
            :func:`save_session`) and dropped from memory, and its next view wakes it, the same
            reconstruction going on. A sleeping object is listed in ``ground.json`` (``sleeping``) but
            not in the viewer. 0: no limit.
        fused_depth: with a pose-aware fusion model, every snapshot also holds ``depth_fused.tar``: each
            view's depth map from the snapshot's grid (:meth:`voxlink.models.fusion.FusionModel.fused_depth`),
            on the view's decoded silhouette; about half the decoded depth's AbsRel (the model card). Tens
            of milliseconds a view, so it is written on its own thread once the snapshot is in place
            (renamed in whole), counted in ``ground.json`` (``fused_depth``); the ground waits for it at
            exit and in :meth:`GroundStation.finalise`.
    """

    bind: list[str] = field(default_factory=lambda: ["tcp://*:5555"])
    connect: list[str] = field(default_factory=list)
    model: str | None = None
    out: str = "ground-out"
    idle_timeout_s: float = 30.0
    metrics_interval_s: float = 5.0
    status_interval_s: float = 2.0
    queue_size: int = 100000
    rcvhwm: int = 100000
    point_voxel: float = 1.0 / 128
    max_points: int = 131072
    socket: str = "sub"
    backend: str = "torch"
    batch: int = 64
    decoded_cache: int = 1024
    record: bool = True
    record_depth: bool = True
    backchannel: list[str] = field(default_factory=list)
    request_interval_s: float = 2.0
    curve_secret_file: str | None = None
    curve_allow_dir: str | None = None
    max_msg_bytes: int = 1 << 20
    pipeline: bool = True
    torch_threads: int = 0
    refine_poses: bool = False
    refiner_precision: str = "auto"
    max_live_objects: int = 256
    fused_depth: bool = True


@dataclass
class ObjectSession:
    """Reconstruction state of one (stream, object); memory does not grow with its views.

    Attributes:
        state: the model's recurrent state (None before the first view). dirty: views were fused
        since the occupancy was last decoded. occupancy: the last decoded grid float32 [R, R, R].
        views, bytes: applied views and their wire bytes. first_seq, last_seq: lowest and highest
        unwrapped sequence numbers applied. late: sequence numbers (wire) that came late, with how
        (``link``: after a higher one; ``backchannel``: asked back), at most 10,000. points:
        fused cloud, chunks of float32 [n, 3] (see :meth:`GroundStation.fused_points`). pending: views
        fused whose depth map is not decoded yet: ``(seq, unwrapped seq, payload, pose, K, receive time, source)``.
        last_depth, last_raw_depth: the latest decoded view's depth map (masked / raw, metres).
        last_pose: its pose. last_image: a sequential or direct model's latest decoded view, uint8
        [H, W, 3] RGB. code_bits: code bits of its views, summed (a variable-rate stream's views differ).
        latency_ms: recent capture-to-applied
        latencies. snap_views: views at the last snapshot. snapshots: folders written. last_t:
        monotonic time of the last view. no_pose: sequence numbers of views that came without a pose
        (a pose-aware model does not fuse them), at most 10,000. not_fused: sequence numbers of views that
        came and were recorded but could not be fused, even alone, because of an internal error (each
        counted as ``internal_error``), at most 10,000. kept: with ``refine_poses``, each
        distinct view (code bytes, float32 pose [4, 4] bytes) -> its K float32 [3, 3]; kept_u: each applied
        view's unwrapped sequence number -> its key in ``kept``; refined_poses: the last successful
        refinement's corrected pose float32 [4, 4] per key of ``kept`` (None after a failed one). pose_refinement:
        what the last refinement corrected (``voxlink.models.pose_refine.refine_poses``'s info), or None.
    """

    stream: int
    object_id: int
    grid_to_world: np.ndarray
    state: tuple | torch.Tensor | None = None
    dirty: bool = False
    no_pose: list = field(default_factory=list)
    not_fused: list = field(default_factory=list)
    occupancy: np.ndarray | None = None
    views: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    late: list = field(default_factory=list)
    points: list = field(default_factory=list)
    n_points: int = 0
    pending: list = field(default_factory=list)
    depth_u: int | None = None
    last_depth: np.ndarray | None = None
    last_raw_depth: np.ndarray | None = None
    last_pose: np.ndarray | None = None
    last_image: np.ndarray | None = None
    code_bits: int = 0
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=4096))
    snap_views: int = 0
    snapshots: list = field(default_factory=list)
    last_t: float = 0.0
    retry_after: float = 0.0
    point_source: str = "depth"
    kept: dict = field(default_factory=dict)
    pose_refinement: dict | None = None
    kept_u: dict = field(default_factory=dict)
    refined_poses: dict | None = None

    def corrected_pose(self, u: int) -> np.ndarray | None:
        """With ``refine_poses``, the pose view ``u`` (unwrapped sequence number) was last fused at, float32
        [4, 4]; None where no refinement holds it (its pose as sent then)."""
        key = self.kept_u.get(u) if self.refined_poses else None
        return None if key is None else self.refined_poses.get(key)

    @property
    def name(self) -> str:
        """Folder name ``s<stream>_o<object>``."""
        return f"s{self.stream}_o{self.object_id}"


def _plain(v, key: str, arrays: dict):
    """A value of an :class:`ObjectSession` field as JSON-able data, its arrays moved into ``arrays``
    (name -> NumPy array) under names made from ``key``; every container is tagged, so that
    :func:`_unplain` gives back the same types. Raises TypeError for a type it does not know."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (np.bool_, np.integer, np.floating)):
        return v.item()
    if isinstance(v, torch.Tensor):
        arrays[key] = v.detach().cpu().float().numpy() if v.dtype == torch.bfloat16 else v.detach().cpu().numpy()
        return {"tensor": key, "dtype": str(v.dtype).removeprefix("torch.")}
    if isinstance(v, np.ndarray):
        arrays[key] = v
        return {"array": key}
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": bytes(v).hex()}
    if isinstance(v, (list, tuple, deque)):
        items = [_plain(x, f"{key}.{i}", arrays) for i, x in enumerate(v)]
        if isinstance(v, deque):
            return {"deque": items, "maxlen": v.maxlen}
        return {"tuple": items} if isinstance(v, tuple) else {"list": items}
    if isinstance(v, dict):
        return {"dict": [[_plain(k, f"{key}.k{i}", arrays), _plain(x, f"{key}.v{i}", arrays)]
                         for i, (k, x) in enumerate(v.items())]}
    raise TypeError(f"{key}: cannot keep a {type(v).__name__} of a sleeping object")


def _unplain(d, arrays):
    """The inverse of :func:`_plain` (``arrays``: the NPZ it wrote, read with ``allow_pickle=False``)."""
    if not isinstance(d, dict):
        return d
    if "tensor" in d:
        return torch.from_numpy(np.array(arrays[d["tensor"]])).to(getattr(torch, d["dtype"]))
    if "array" in d:
        return np.array(arrays[d["array"]])
    if "bytes" in d:
        return bytes.fromhex(d["bytes"])
    if "deque" in d:
        return deque((_unplain(x, arrays) for x in d["deque"]), maxlen=d["maxlen"])
    if "tuple" in d:
        return tuple(_unplain(x, arrays) for x in d["tuple"])
    if "list" in d:
        return [_unplain(x, arrays) for x in d["list"]]
    return {_unplain(k, arrays): _unplain(x, arrays) for k, x in d["dict"]}


def save_session(s: ObjectSession, path: Path) -> None:
    """Write a session as one NPZ file (its arrays, and a JSON description of every field): no pickle,
    so that nothing a drone sent is ever unpickled (the file holds codes as they came).

    Raises:
        OSError: the file cannot be written. TypeError: a field of a type :func:`_plain` does not know.
    """
    import dataclasses

    arrays: dict = {}
    desc = {f.name: _plain(getattr(s, f.name), f.name, arrays) for f in dataclasses.fields(s)}
    with path.open("wb") as f:
        np.savez(f, **{"__session__": np.array(json.dumps(desc))}, **arrays)


def load_session(path: Path) -> ObjectSession:
    """A session written by :func:`save_session` (read with ``allow_pickle=False``).

    Raises:
        OSError, ValueError, KeyError: the file is missing or not such a file.
    """
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    desc = json.loads(str(arrays.pop("__session__")))
    return ObjectSession(**{k: _unplain(v, arrays) for k, v in desc.items()})


class GroundStation:
    """Receives codes from drones and reconstructs every object they stream (see the module docstring).

    Raises:
        voxlink.weights.ModelFileError: bad model. ValueError: bad config (backend, CURVE files).
    """

    def __init__(self, cfg: GroundConfig):
        from voxlink.modelfile import require_reconstruction_model
        from voxlink.models.fusion import INFERENCE_PRECISIONS
        from voxlink.weights import load_model

        if cfg.refiner_precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"refiner_precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                             f"got {cfg.refiner_precision!r}")
        self.cfg = cfg
        info = require_reconstruction_model(cfg.model)
        self.model, self.meta, _ = load_model(cfg.model)
        if hasattr(self.model, "inference_precision"):
            self.model.inference_precision = cfg.refiner_precision
        self.code_bits = self.model.cfg.code_bits
        # a sequential or direct model (Golts & Schechner Sec. III-A/B): each view carries N iterations of
        # code_bits bits, N in 1..max_iterations chosen by the drone per view; the ground decodes and shows
        # the view's image (no depth maps: these models have no depth decoder)
        self.max_iterations = info.max_iterations
        self.iterative = info.family in ("sequential", "direct")
        self.fp = self.model.fingerprint()
        self.out = Path(cfg.out)
        self.net = self._decoder_backend(cfg.backend)
        self._warm_up()
        self.streams: dict[int, StreamInfo] = {}
        self.delivery: dict[int, StreamDelivery] = {}
        self.sessions: dict[tuple[int, int], ObjectSession] = {}
        self.sleeping: dict[tuple[int, int], dict] = {}  # put to sleep (max_live_objects) -> its ground.json row
        # views of an edge run whose stream info has not come yet (a restart whose info is late or lost),
        # per stream, checked again when a stream info of the stream comes
        self.held: dict[int, deque] = {}
        self._released: deque = deque()
        self.finished: list[dict] = []
        self.stats = Counter()  # main thread only
        # a fusion model's decoded views ((stream, unwrapped seq) -> float16 depth [H, W], bool mask
        # [H, W]), kept from fusing to writing the depth maps, oldest dropped beyond ``decoded_cache``;
        # keyed by the view, not its bytes: equal codes (a hovering drone) must not evict each other
        self._decoded: OrderedDict = OrderedDict()
        # the object of every applied view whose depth map is pending, in the order applied: depth maps
        # are decoded oldest first across objects, so a fusion model's decoded views are still cached
        self._depth_order: deque = deque()
        self.rejected = Counter()  # main thread only
        self.rx_stats = Counter()  # receiver thread only (read under _rx_lock)
        self.rx_rejected = Counter()
        self._curve_keys = None
        # CURVE: which streams each allowed drone key may send (None: not named in its certificate, the
        # first stream it sends becomes its own), and which key owns each stream (kept in stream_keys.json)
        self._key_streams: dict[str, frozenset[int] | None] = {}
        self._stream_owner: dict[int, str] = {}
        self.q: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self.requests: queue.SimpleQueue = queue.SimpleQueue()  # (stream, [seq, ...]) for the back channel
        self.stop = threading.Event()
        self.lock = threading.RLock()
        self._rx_lock = threading.Lock()
        self.listeners: list = []  # callables(session) after every applied view (the viewer)
        # callables(session, seq, raw depth float32 [H, W] metres, pose [4, 4] or None) per decoded depth map
        self.depth_listeners: list = []
        self._log_at: dict[str, tuple[float, int]] = {}
        self.latency_all: deque = deque(maxlen=100000)
        self.recorder = None
        # wire messages recorded since the record's last fsync, written again into a new record file if
        # the record breaks (a full disk: what the OS had not written may be lost with the failing write)
        self._unsynced: deque = deque()
        self._record_broken = False
        self._record_retry_at = 0.0
        self.t_start = time.time()
        self._snap_index: dict[str, int] = {}
        self._view_files: OrderedDict = OrderedDict()  # object name -> its open views.jsonl (line-buffered)
        self._workers: dict = {}  # name -> its one worker thread (:meth:`_worker`)
        self._fused_jobs: deque = deque()  # (object name, future, views) per depth_fused.tar being written
        self._fused_pending_views = 0  # the views of those jobs
        self._fused_stop = threading.Event()  # set at exit past FUSED_DEPTH_EXIT_S: the jobs stop
        # pipelined (cfg.pipeline, while serving): views being placed (future, views, what a retry needs), chunks whose depth
        # products are being made (chunk, depth, products, future), oldest first
        self._pipelined = False
        self._placing: deque = deque()
        self._inflight: deque = deque()

    def _decoder_backend(self, kind: str):
        """The object whose init_state / step / occupancy / decode_depth the station calls."""
        if kind not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"ground backend must be auto, torch or onnxruntime, got {kind!r}")
        fusion = getattr(self.model, "family", "implicit") == "fusion"
        if self.iterative:  # N_small's recurrent decoder and the 3D part run on PyTorch only
            if kind == "onnxruntime":
                raise ValueError(f"the ground decodes a {self.model.family} model with PyTorch only (--backend torch or auto)")
            log.info("decoder backend: torch")
            return self.model
        if kind == "torch" or (kind == "auto" and fusion):
            # auto for the fusion model is PyTorch: its geometry runs in PyTorch either way, and its view
            # decoder measured no faster on ONNX Runtime on the CPU (1.9 against 1.7-2.0 ms a view, 2 cores),
            # and its 3D refiner runs in bfloat16 where the CPU has it (5-6 ms a grid against 12 ms on ONNX
            # Runtime and 18-27 ms in float32)
            log.info("decoder backend: torch%s", f" (3D refiner in {self.model.refiner_precision()})" if fusion else "")
            return self.model
        from export.ground_onnx import OnnxFusionGroundDecoder, OnnxGroundDecoder, export_ground
        from voxlink.backends import BackendUnavailable

        try:
            folder = export_ground(self.model, Path(self.cfg.out) / "onnx")
            dec = OnnxFusionGroundDecoder(folder, self.model) if fusion else OnnxGroundDecoder(folder)
        except (BackendUnavailable, OSError, RuntimeError) as e:
            if kind == "onnxruntime":
                raise BackendUnavailable(f"ONNX Runtime decoder unavailable: {e}") from e
            log.info("decoder backend onnxruntime skipped (%s): torch", e)
            return self.model
        log.info("decoder backend: %s", dec.name)
        return dec

    @torch.no_grad()
    def _warm_up(self) -> None:
        """Run the model once at every batch size up to 16 (its inference chunk) before the first view:
        oneDNN builds its kernels per shape on first use, and this spends that time (about 1 s) at start
        instead of on the first views. A failure here is logged: the views will show it again."""
        if getattr(self.model, "family", "implicit") != "fusion":
            return
        t0 = time.perf_counter()
        try:
            K = torch.from_numpy(camera.intrinsics(self.model.cfg.image_size).astype(np.float32))
            pose = torch.eye(4)
            pose[2, 3] = -2.0
            for n in range(1, 17):
                state = self.model.init_state(n)
                self.net.step_decoded(torch.ones(n, self.code_bits), state, pose.expand(n, 4, 4), K)
            self.net.occupancy(state[:1])
        except Exception:  # noqa: BLE001 - not fatal: the station still runs, only slower at first
            log.exception("model warm-up failed")
        log.info("model warmed up in %.1f s", time.perf_counter() - t0)

    # -- the model: every call into it is in these three methods -----------------------------------
    @torch.no_grad()
    def _fuse_checked(self, items: list[tuple[ObjectSession, CodeMessage, StreamInfo, int]]) -> None:
        """:meth:`_fuse_views`, losing no view to an error in the batch: where the batched call fails, every
        view it had not applied yet is fused again on its own, and a view that fails even alone is counted
        (``internal_error``) and named in its object's ``not_fused`` (``views_not_fused`` in
        ``session.json``); the other views of the batch are fused as if nothing had happened. Retrying is
        safe: an object's state is replaced only once its view is applied (the implicit and iterative
        models), or pooled idempotently (a fusion model: minima, maxima and a ledger of the views summed).
        """
        done: set[int] = set()
        try:
            self._fuse_views(items, done)
            return
        except Exception:  # noqa: BLE001 - counted below, view by view
            self._log_trace("internal error fusing a batch of views; fusing them one by one")
        for item in items:
            if id(item) in done:
                continue
            try:
                self._fuse_views([item])
            except Exception as e:  # noqa: BLE001
                self._not_fused(item[0], item[1], e)

    def _not_fused(self, s: ObjectSession, m: CodeMessage, e: BaseException) -> None:
        """Count and name a view that could not be fused (see :meth:`_fuse_checked`)."""
        if len(s.not_fused) < 10000:
            s.not_fused.append(m.seq)
        self._reject("internal_error", f"stream {m.stream} object {m.object_id} seq {m.seq}: not fused: {e!r}")

    def _fuse_views(self, items: list[tuple[ObjectSession, CodeMessage, StreamInfo, int]],
                    done: set[int] | None = None) -> None:
        """Fuse one view into each of several *distinct* objects in one batched model call.

        Args:
            items: ``(session, message, stream info, unwrapped seq)``; each session at most once. The message
                carries the view's pose (camera-to-object [4, 4] or None) and the info its intrinsics
                ``K`` [3, 3], for a model that uses them.
            done: where given, the ``id`` of each item whose view is applied is added to it as it is
                (a view without a pose, which a pose-aware model counts and skips, is done too); pipelined,
                a fusion model's views count as applied once handed to the fuser thread, which retries
                each on its own if the batch fails (:meth:`_wait_placed`).

        Raises:
            whatever the model raises (the caller, :meth:`_fuse_checked`, keeps the views).
        """
        done = set() if done is None else done
        if getattr(self.model, "needs_pose", False):
            # a pose-aware model cannot place a view without its pose: count it, name it, skip it
            for s, m, _, _ in items:
                if m.pose is None:
                    self.stats["views_without_pose"] += 1
                    if len(s.no_pose) < 10000:
                        s.no_pose.append(m.seq)
                    self._log_reject("no_pose", f"stream {m.stream} object {m.object_id} seq {m.seq}: "
                                                "view without a pose, not fused")
            done.update(id(it) for it in items if it[1].pose is None)
            items = [it for it in items if it[1].pose is not None]
            if not items:
                return
        if self.iterative:
            self._fuse_iterative(items, lambda j: done.add(id(items[j])))
            return
        codes = torch.stack([unpack_bits(m.payload, self.code_bits) for _, m, _, _ in items])
        if getattr(self.model, "family", "implicit") == "fusion":  # one evidence tensor per object
            pose = torch.tensor(np.stack([m.pose for _, m, _, _ in items]), dtype=torch.float32)
            K = torch.tensor(np.stack([info.K for _, _, info, _ in items]), dtype=torch.float32)
            # the view decoder is most of a view's cost: decode once, fuse, and keep the depth maps
            # and silhouettes for the depth PNGs and the point cloud (:meth:`_depths`)
            # each object's own state pooled in place (no batch gathered and copied back: about 0.3 ms a
            # view with 100 drones' real codes); a new object's state is made here first; pipelined, the
            # fuser thread pools them (in order) while this thread decodes the next batch
            for s, _, _, _ in items:
                if s.state is None:
                    s.state = self.net.init_state(1)
            pose, K = view_geometry(pose, K)
            depth, mask_prob = self.net.decode_depth(codes)
            states = [s.state for s, _, _, _ in items]
            if self._pipelined:
                retry = ([(s, m) for s, m, _, _ in items], states, depth, mask_prob, K, pose)
                self._placing.append((self._worker("fuser").submit(self.net.place, states, depth, mask_prob, K, pose),
                                      len(items), retry))
            else:
                self.net.place(states, depth, mask_prob, K, pose)
            done.update(id(it) for it in items)
            for i, (s, m, info, u) in enumerate(items):
                s.dirty = True
                if self.cfg.refine_poses:  # a repeated view (same code, same pose) is kept once
                    key = (bytes(m.payload), np.asarray(m.pose, dtype=np.float32).tobytes())
                    s.kept.setdefault(key, np.asarray(info.K, dtype=np.float32))
                    s.kept_u[u] = key  # (its depth maps are named by u: rendered at its corrected pose)
                self._decoded[(m.stream, u)] = (depth[i].numpy().astype(np.float16), mask_prob[i].numpy() > 0.5)
            while len(self._decoded) > self.cfg.decoded_cache:
                self._decoded.popitem(last=False)
            if self._pipelined:
                self._wait_placed(keep=PIPELINE_DEPTH)  # bounded memory and latency
            return
        states = [s.state if s.state is not None else self.net.init_state(1) for s, _, _, _ in items]
        batched = tuple(torch.cat(parts) for parts in zip(*states))
        new = self.net.step(codes, batched)
        for i, (s, _, _, _) in enumerate(items):
            s.state = tuple(t[i:i + 1].clone() for t in new)
            done.add(id(items[i]))
            s.dirty = True

    def _fuse_iterative(self, items: list[tuple[ObjectSession, CodeMessage, StreamInfo, int]], applied) -> None:
        """:meth:`_fuse_views` for a sequential or direct model: the views grouped by their number of
        iterations (a variable-rate stream's differ), each group one batched call that decodes the views'
        images (kept for :meth:`process_depths` to write) and steps the objects' 3D-LSTM states.
        ``applied(i)`` is called for each view (index into ``items``) once its object's state is replaced."""
        groups: dict[int, list[int]] = {}
        for i, (_, m, _, _) in enumerate(items):
            groups.setdefault(m.n_bits, []).append(i)
        for n_bits, idx in groups.items():
            codes = torch.stack([unpack_bits(items[i][1].payload, n_bits) for i in idx])
            states = [items[i][0].state if items[i][0].state is not None else self.net.init_state(1) for i in idx]
            new, images = self.net.step_decoded(codes, tuple(torch.cat(parts) for parts in zip(*states)))
            rgb = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
            for j, i in enumerate(idx):
                s, m, _, u = items[i]
                s.state = tuple(t[j:j + 1].clone() for t in new)
                applied(i)  # at once: stepping the 3D-LSTM again with this view would apply it twice
                s.dirty = True
                self._decoded[(m.stream, u)] = rgb[j].copy()
        while len(self._decoded) > self.cfg.decoded_cache:
            self._decoded.popitem(last=False)

    @torch.no_grad()
    def _images(self, views: list[tuple[tuple[int, int], bytes]]) -> list[np.ndarray]:
        """A sequential or direct model's decoded views, uint8 [H, W, 3] RGB each: kept from fusing, or
        decoded again (N_small's decoder) where the cache has dropped them.

        Args:
            views: ``((stream, unwrapped seq), payload)`` per view.
        """
        out = [self._decoded.pop(key, None) for key, _ in views]
        for k, ((_, p), img) in enumerate(zip(views, out)):
            if img is None:
                codes = unpack_bits(p, len(p) * 8).view(1, -1, self.code_bits)
                img = self.model.compressor.decode(codes)[0, -1]
                out[k] = (img * 255).round().byte().permute(1, 2, 0).numpy()
        return out

    @torch.no_grad()
    def _depths(self, views: list[tuple[tuple[int, int], bytes]]) -> tuple[np.ndarray, np.ndarray]:
        """Decode views' depth maps in one batched call (those still cached from fusing are not decoded again).

        Args:
            views: ``((stream, unwrapped seq), payload)`` per view.

        Returns:
            depth float32 [B, H, W] metres and mask bool [B, H, W] (decoded mask above 0.5), one per view.
        """
        cached = [self._decoded.pop(key, None) for key, _ in views]
        todo = [p for (_, p), c in zip(views, cached) if c is None]
        if todo:
            codes = torch.stack([unpack_bits(p, self.code_bits) for p in todo])
            d, m = self.net.decode_depth(codes)
            fresh = iter(zip(d.numpy(), m.numpy() > 0.5))
            cached = [c if c is not None else next(fresh) for c in cached]
        depth = np.stack([c[0] for c in cached]).astype(np.float32)
        return depth, np.stack([c[1] for c in cached])

    @torch.no_grad()
    def _occupancy(self, s: ObjectSession) -> np.ndarray:
        """The object's occupancy grid float32 [R, R, R] (p in [0, 1]), decoded only if views came since."""
        self._wait_placed()
        if s.occupancy is None or s.dirty:
            state = s.state if s.state is not None else self.net.init_state(1)
            if self.cfg.refine_poses and len(s.kept) >= 2:
                state = self._refined_state(s)
            s.occupancy = self.net.occupancy(state)[0].numpy().astype(np.float32)
            s.dirty = False
        return s.occupancy

    def _refined_state(self, s: ObjectSession) -> torch.Tensor:
        """The object's state made anew from its distinct views at poses corrected by silhouette coherence
        (``GroundConfig.refine_poses``). The views are taken in a canonical order (sorted by code and pose
        bytes), so the same views in any order, any of them repeated, give the same grid. A refinement
        that fails is logged and counted (``pose_refinement_failed``) and the running state is used."""
        from voxlink.models.pose_refine import PoseRefineConfig, refine_poses

        keys = sorted(s.kept)
        try:
            codes = torch.stack([unpack_bits(payload, self.code_bits) for payload, _ in keys])
            pose = torch.from_numpy(np.stack([np.frombuffer(p, dtype=np.float32).reshape(4, 4) for _, p in keys]))
            K = torch.from_numpy(np.stack([s.kept[k] for k in keys]))
            depth, mask = self.net.decode_depth(codes)
            fixed, info = refine_poses(mask, K, pose, PoseRefineConfig())
            state = self.model.fuse_all(depth, mask, K, fixed)
            s.refined_poses = {k: f.numpy().astype(np.float32) for k, f in zip(keys, fixed)}
        except Exception as e:  # noqa: BLE001 - the grid of the poses as sent is still there
            s.refined_poses = None  # that grid is fused at the poses as sent: so are its depth maps
            self.stats["pose_refinement_failed"] += 1
            log.exception("pose refinement of %s failed (%s): poses as sent", s.name, e)
            return s.state if s.state is not None else self.net.init_state(1)
        self.stats["pose_refinements"] += 1
        s.pose_refinement = {"views": len(keys), "loss_before": info["loss_before"], "loss_after": info["loss_after"],
                             "rotation_deg_mean": float(np.mean(info["rotation_deg"])),
                             "shift_m_mean": float(np.mean(info["shift_m"])), "ms": round(info["ms"], 1)}
        return state

    def occupancy(self, s: ObjectSession) -> np.ndarray:
        """Public access to :meth:`_occupancy` (for the viewer and the demo): float32 [R, R, R]."""
        return self._occupancy(s)

    # -- receiving ---------------------------------------------------------------------------------
    def _count_rx(self, reason: str, detail: str = "") -> None:
        with self._rx_lock:
            self.rx_rejected[reason] += 1
        self._log_reject(reason, detail)

    def _rx(self, name: str) -> None:
        with self._rx_lock:
            self.rx_stats[name] += 1

    def all_rejected(self) -> dict:
        """Rejections by reason, from the decoder and the receiver (``multipart``, ``too_large``, ``queue_full``)."""
        with self._rx_lock:
            out = Counter(self.rx_rejected)
        out.update(self.rejected)
        return dict(out)

    def _sockets(self, ctx):
        """The data socket and the back-channel ROUTER (or None), CURVE servers when configured."""
        import zmq

        def curve(s):
            """Make socket ``s`` a CURVE server with this ground's keys, where keys are configured."""
            if self._curve_keys is not None:
                pub, sec = self._curve_keys
                s.curve_publickey, s.curve_secretkey, s.curve_server = pub, sec, True

        s = ctx.socket(zmq.SUB if self.cfg.socket == "sub" else zmq.PULL)
        r = None
        try:  # a socket left open would block ctx.term() for ever: close what was made if a bind fails
            if self.cfg.socket == "sub":
                s.setsockopt(zmq.SUBSCRIBE, b"")
            s.setsockopt(zmq.RCVHWM, self.cfg.rcvhwm)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_msg_bytes)
            curve(s)
            for ep in self.cfg.bind:
                s.bind(ep)
            for ep in self.cfg.connect:
                s.connect(ep)
            if self.cfg.backchannel:
                r = ctx.socket(zmq.ROUTER)
                r.setsockopt(zmq.LINGER, 0)
                r.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_msg_bytes)
                r.setsockopt(zmq.ROUTER_MANDATORY, 1)
                curve(r)
                for ep in self.cfg.backchannel:
                    r.bind(ep)
        except BaseException:
            for x in (s, r):
                if x is not None:
                    x.close(0)
            raise
        return s, r

    def _peer(self, frame) -> str | None:
        """The sender's CURVE public key (z85, the User-Id ``zmq.auth`` gives it), None without CURVE."""
        if self._curve_keys is None:
            return None
        try:
            return frame.get("User-Id") or None
        except Exception:  # noqa: BLE001 - no ZAP user id on this frame
            return None

    def _enqueue(self, buf: bytes, source: str, peer: str | None = None) -> None:
        if len(buf) > MAX_MESSAGE_BYTES:
            self._count_rx("too_large", f"{len(buf)} bytes")
            return
        try:
            self.q.put_nowait((buf, time.time(), source, peer))
        except queue.Full:
            self._count_rx("queue_full", f"queue of {self.cfg.queue_size}")

    def _receive(self, sock, router) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        peers: dict[int, tuple[bytes, str | None]] = {}  # stream -> (back-channel routing id, CURVE key)
        if router is not None:
            poller.register(router, zmq.POLLIN)
        while not self.stop.is_set():
            try:
                while router is not None:
                    try:
                        stream, seqs = self.requests.get_nowait()
                    except queue.Empty:
                        break
                    ident, key = peers.get(stream, (None, None))
                    if ident is None:
                        self._rx("backchannel_no_peer")
                        continue
                    if key is not None and not self._may_own(key, stream):
                        # said hello before another drone's key took the stream: its gaps are not this drone's
                        self._rx("backchannel_not_owner")
                        peers.pop(stream, None)
                        continue
                    try:
                        router.send_multipart([ident, json.dumps({"stream": stream, "seqs": seqs}).encode()], zmq.NOBLOCK)
                        self._rx("backchannel_requests")
                    except zmq.ZMQError:
                        self._rx("backchannel_unreachable")
                        peers.pop(stream, None)
                events = dict(poller.poll(100))
                if sock in events:
                    for _ in range(1000):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._rx("messages")
                        if len(frames) != 1:
                            self._count_rx("multipart", f"{len(frames)} frames")
                            continue
                        self._enqueue(frames[0].bytes, "link", self._peer(frames[0]))
                if router is not None and router in events:
                    for _ in range(1000):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if len(frames) != 2:
                            self._count_rx("multipart", f"back channel: {len(frames)} frames")
                            continue
                        peer = self._peer(frames[1])
                        ident, body = frames[0].bytes, frames[1].bytes
                        if body[:1] == b"{":
                            self._hello(body, ident, peer, peers)
                            continue
                        self._rx("messages")
                        self._rx("backchannel_messages")
                        self._enqueue(body, "backchannel", peer)
            except zmq.ContextTerminated:
                return
            except Exception as e:  # noqa: BLE001 - one bad frame must not stop the receiver: counted, logged
                self._count_rx("internal_error", repr(e))
                time.sleep(0.01)  # a socket that keeps failing must not spin a core

    def _hello(self, body: bytes, ident: bytes, peer: str | None, peers: dict) -> None:
        """A drone's back-channel hello ``{"hello": stream}``: route that stream's gap requests to ``ident``.

        A body that is not such a hello (not JSON, too deep, a stream that is not an integer in 0..255) is
        counted as ``bad_info`` and changes nothing; under CURVE, a hello for a stream that another drone's
        key owns (or that another drone's certificate names) is counted as ``stream_not_owned`` and ignored, so
        that one drone cannot take another's gap requests.
        """
        try:
            stream = json.loads(body.decode())["hello"]
        except Exception:  # noqa: BLE001 - any malformed body (bad JSON, too deep, not a dict): counted
            stream = None
        if type(stream) is not int or not 0 <= stream <= 255:
            self._count_rx("bad_info", "back-channel hello")
            return
        if peer is not None and not self._may_own(peer, stream):
            self._count_rx("stream_not_owned", f"back-channel hello for stream {stream} from a drone that does not own it")
            return
        peers[stream] = (ident, peer)

    # -- checking ----------------------------------------------------------------------------------
    def _log_reject(self, reason: str, detail: str) -> None:
        """Log a rejection at most once per reason every 5 s (with how many were not logged)."""
        now = time.monotonic()
        last, quiet = self._log_at.get(reason, (-1e9, 0))
        if now - last >= 5.0:
            more = f" (and {quiet} more since)" if quiet else ""
            log.warning("rejected message: %s %s%s", reason, detail, more)
            self._log_at[reason] = (now, 0)
        else:
            self._log_at[reason] = (last, quiet + 1)

    def _log_trace(self, what: str, exc: BaseException | None = None) -> None:
        """Log the exception being handled (or ``exc``) with its traceback, at most once per ``what`` every
        5 s (a peer whose messages keep failing must not flood the log; each is counted all the same)."""
        now = time.monotonic()
        last, quiet = self._log_at.get("trace: " + what, (-1e9, 0))
        if now - last >= 5.0:
            log.error("%s%s", what, f" (and {quiet} more since)" if quiet else "", exc_info=exc or True)
            self._log_at["trace: " + what] = (now, 0)
        else:
            self._log_at["trace: " + what] = (last, quiet + 1)

    def _reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        self._log_reject(reason, detail)

    def _check_info(self, msg: StreamInfo, buf: bytes, t_recv: float, source: str) -> None:
        if msg.fingerprint != bytes.hex(self.fp):
            self._reject("wrong_fingerprint", f"stream {msg.stream} runs model {msg.model!r} ({msg.fingerprint}); "
                                              f"the stream it had keeps going")
            return
        if msg.code_bits != self.code_bits:
            self._reject("wrong_code_length", f"stream info of {msg.code_bits} bits, the model takes {self.code_bits}")
            return
        if msg.image_size != self.model.cfg.image_size:  # its intrinsics are for views the model never codes
            self._reject("wrong_image_size", f"stream {msg.stream}: {msg.image_size} x {msg.image_size} views, the "
                                             f"model codes {self.model.cfg.image_size} x {self.model.cfg.image_size}")
            return
        old = self.streams.get(msg.stream)
        if old is None:
            log.info("stream %d: model %s, %d-bit codes, backend %s%s", msg.stream, msg.model, msg.code_bits,
                     msg.extra.get("backend", "?"), ", back channel" if msg.backchannel else "")
        changed = old is None or any((not np.array_equal(old.K, msg.K), old.epoch_unix != msg.epoch_unix,
                                      old.image_size != msg.image_size, old.frame != msg.frame))
        self.streams[msg.stream] = msg
        dl = self.delivery.setdefault(msg.stream, StreamDelivery(msg.stream))
        if old is not None and old.epoch_unix != msg.epoch_unix and msg.first_seq is not None \
                and dl.restart(msg.first_seq):
            # the edge restarted and numbers from where it did before (its code log was lost): a new
            # incarnation of the stream, placed after everything it sent before (ground/delivery.py)
            self.stats["stream_restarts"] += 1
            log.warning("stream %d restarted its sequence numbers at %d (new epoch, its code log was lost): "
                        "its views are new views of a new incarnation of the stream", msg.stream, msg.first_seq)
        dl.note_tag(run_tag(msg.epoch_unix))
        dl.note_info(msg.first_seq, msg.last_seq)
        self.stats["infos"] += 1
        held = self.held.pop(msg.stream, None)
        if held:
            self._released.extend(held)  # checked again right after this message (handle_many)
        if changed and self.recorder is not None and source != "record":
            self._record_wire(buf, t_recv)

    def _check(self, buf: bytes, t_recv: float, source: str, peer: str | None = None, rechecked: bool = False):
        """Decode and check one message; infos are applied here. Returns an accepted view or None.
        ``rechecked``: a held view checked again (not counted as held twice)."""
        try:
            msg = decode(buf)
        except ProtocolError as e:
            self._reject(e.reason, str(e))
            return None
        if peer is not None and not self._owns(peer, msg.stream):
            self._reject("stream_not_owned", f"stream {msg.stream} belongs to another drone's key; "
                                             f"sent by {peer[:8]}...")
            return None
        if isinstance(msg, StreamInfo):
            self._check_info(msg, buf, t_recv, source)
            return None
        info = self.streams.get(msg.stream)
        if info is None:
            self._reject("unknown_stream", f"stream {msg.stream}: no stream info received yet")
            return None
        if msg.fingerprint != info.fingerprint32:
            self._reject("wrong_fingerprint", f"stream {msg.stream}")
            return None
        if self.iterative:
            if msg.n_bits % self.code_bits or not 1 <= msg.n_bits // self.code_bits <= self.max_iterations:
                self._reject("wrong_code_length", f"{msg.n_bits} bits, the model takes 1..{self.max_iterations} "
                                                  f"iterations of {self.code_bits}")
                return None
        elif msg.n_bits != self.code_bits:
            self._reject("wrong_code_length", f"{msg.n_bits} bits, the model takes {self.code_bits}")
            return None
        dl = self.delivery.setdefault(msg.stream, StreamDelivery(msg.stream))
        incarnation = dl.incarnation_of(msg.run)
        if incarnation is None and (source == "backchannel" or (
                info.first_seq is not None and 0 < (info.first_seq - msg.seq) & 0xFFFFFFFF < 1 << 31)):
            # a run whose stream info never came here, but the view was asked back or comes before the
            # current run's first number: it is from the edge's kept code log, the current numbering
            incarnation = dl.incarnation_of(0)
        if incarnation is None:  # a run whose stream info has not come: neither the old run's nor lost
            held = self.held.setdefault(msg.stream, deque())
            if len(held) >= MAX_HELD_VIEWS:
                self._reject("held_overflow", f"stream {msg.stream}: {len(held)} views already wait for the "
                                              f"stream info of run {msg.run}")
                return None
            held.append((buf, t_recv, source, peer))
            if not rechecked:
                self.stats["views_held"] += 1
            return None
        verdict, u = dl.check(msg.seq, incarnation)
        if verdict == "bad_seq":
            self._reject("bad_seq", f"stream {msg.stream}: seq {msg.seq} is too far from the others")
            return None
        if verdict == "duplicate":
            dl.duplicates += 1
            self.stats["duplicates"] += 1
            return None
        late = dl.apply(u, source)
        if late:
            self.stats["late"] += 1
        if source == "backchannel":
            self.stats["recovered"] += 1
        if self.recorder is not None and source != "record":
            self._record_wire(buf, t_recv, msg, source)
        return msg, info, u, late, t_recv, source

    # -- applying ----------------------------------------------------------------------------------
    def handle(self, buf: bytes, t_recv: float | None = None, source: str = "link") -> ObjectSession | None:
        """Check one message and apply it.

        Returns:
            the updated session for a new view; None for a stream info, a duplicate or a rejection
            (counted in ``stats`` / ``rejected``).
        """
        return self.handle_many([(buf, t_recv or time.time(), source)])[0]

    def handle_many(self, items: list[tuple]) -> list[ObjectSession | None]:
        """Check and apply messages in order (``(bytes, receive time s, source[, peer])``), views batched
        across objects.

        ``source``: ``link``, ``backchannel`` or ``record`` (a replayed record: not recorded again).
        ``peer``: the sender's CURVE public key (z85), where CURVE is on: a stream belongs to one key
        (:meth:`_owns`).
        Never raises on a message: an unexpected error is counted as ``internal_error``.
        """
        results: list[ObjectSession | None] = [None] * len(items)
        pending: list[tuple[int, tuple]] = []
        for i, (buf, t_recv, source, *peer) in enumerate(items):
            try:
                v = self._check(buf, t_recv, source, peer[0] if peer else None)
            except Exception as e:  # noqa: BLE001 - a message must never end the station
                self._log_trace("internal error checking a message")
                self._reject("internal_error", repr(e))
                continue
            if v is not None:
                pending.append((i, v))
            while self._released:  # views a stream info just placed in their run: checked again
                buf_, t_, src_, peer_ = self._released.popleft()
                try:
                    v = self._check(buf_, t_, src_, peer_, rechecked=True)
                except Exception as e:  # noqa: BLE001
                    self._log_trace("internal error checking a message")
                    self._reject("internal_error", repr(e))
                    continue
                if v is not None:
                    pending.append((-1, v))
        # rounds: each object at most once per model call, its views in arrival order
        while pending:
            round_, rest, seen = [], [], set()
            for i, v in pending:
                key = (v[0].stream, v[0].object_id)
                (rest if key in seen else round_).append((i, v))
                seen.add(key)
            for j in range(0, len(round_), max(1, self.cfg.batch)):
                chunk = round_[j:j + self.cfg.batch]
                try:
                    for i, s in zip([i for i, _ in chunk], self._apply([v for _, v in chunk])):
                        if i >= 0:
                            results[i] = s
                except Exception as e:  # noqa: BLE001
                    self._log_trace("internal error applying views")
                    self._reject("internal_error", repr(e))
            pending = rest
        if self.recorder is not None:
            self._record(lambda r: r.flush())
        return results

    def _record(self, fn) -> bool:
        """Run ``fn(recorder)``; False (counted as ``record_errors``, the record marked broken) if it fails,
        or if the record is broken already (then nothing is tried: :meth:`sync_record` starts a new one)."""
        if self._record_broken:
            return False
        try:
            fn(self.recorder)
            return True
        except Exception as e:  # noqa: BLE001 - a full disk must not end the station
            self._record_broken = True
            self.stats["record_errors"] += 1
            if self.stats["record_errors"] <= 3 or self.stats["record_errors"] % 1000 == 0:
                log.error("cannot write the MCAP record (%d errors): %s", self.stats["record_errors"], e)
            return False

    def _record_wire(self, buf: bytes, t_recv: float, msg: CodeMessage | None = None, source: str = "") -> None:
        """Record an accepted message (and a view's header), keeping it until the record's next fsync."""
        self._unsynced.append((bytes(buf), t_recv))
        if len(self._unsynced) > MAX_UNSYNCED:
            self._unsynced.popleft()  # (outside the serving loop nobody syncs: the file has it)
            if self._record_broken:
                self.stats["record_lost"] += 1  # counted: only the back channel can bring such a view back
        self._record(lambda r: (r.wire(buf, t_recv), msg is not None and r.view(msg, t_recv, source)))

    def sync_record(self, now: float | None = None) -> bool:
        """Make the record durable (``fsync``); where it broke (a full disk), start a new record file and
        write into it again every accepted message since the last fsync, at most every 10 s until it
        works. Returns True when the record is whole on disk. Errors are counted, never raised."""
        if self.recorder is None:
            return False
        now = time.monotonic() if now is None else now
        if not self._record_broken:
            if self._record(lambda r: r.flush(sync=True)):
                self._unsynced.clear()
                return True
        if now < self._record_retry_at:
            return False
        self._record_retry_at = now + 10.0
        old = self.recorder
        try:
            old.close()  # may fail on a full disk: a reader of the old file reads up to where it broke
        except Exception:  # noqa: BLE001
            pass
        self.recorder = None
        self.open_record()
        if self.recorder is None:
            self.recorder = old  # closed: every write fails until a new file can be made
            return False
        self._record_broken = False
        n = len(self._unsynced)
        if self._record(lambda r: ([r.wire(b, t) for b, t in self._unsynced], r.flush(sync=True))):
            self._unsynced.clear()
            log.warning("the MCAP record goes on in %s: %d messages since its last fsync written again",
                        self.recorder.path, n)
            return True
        path = self.recorder.path  # the disk is still full: this file holds nothing whole
        try:
            self.recorder.f.close()
        except Exception:  # noqa: BLE001 - closing flushes, and fails again on a full disk
            pass
        path.unlink(missing_ok=True)
        return False

    def _session(self, msg: CodeMessage) -> ObjectSession:
        key = (msg.stream, msg.object_id)
        s = self.sessions.get(key)
        if s is None and key in self.sleeping:
            s = self._wake(key)
        if s is None:
            g2w = _g2w(self.model.cfg.resolution)
            if self.model.cfg.frame == "view" and msg.pose is not None:
                g2w = yaw_matrix(camera.azimuth_of(msg.pose)) @ g2w
            s = ObjectSession(msg.stream, msg.object_id, g2w)
            self.sessions[key] = s
            # the work folder belongs to this state: what a previous run or state left there is stale
            # (a restart rebuilds every view of the object from the record into it again)
            self._close_view_file(s)
            shutil.rmtree(self._work_dir(s), ignore_errors=True)
            log.info("new object: stream %d, object %d", *key)
        return s

    def _apply(self, views: list[tuple]) -> list[ObjectSession | None]:
        """Apply checked views (:meth:`_check`'s tuples) of distinct objects: fuse them, queue their depth
        maps, count them. Never raises: an unexpected error is counted as ``internal_error`` for the one
        view it concerns (a view whose object cannot be made gets None), the others are applied."""
        sessions: list[ObjectSession | None] = []
        for v in views:
            try:
                sessions.append(self._session(v[0]))
            except Exception as e:  # noqa: BLE001
                self._log_trace("internal error making an object's session")
                self._reject("internal_error", f"stream {v[0].stream} object {v[0].object_id}: {e!r}")
                sessions.append(None)
        self._fuse_checked([(s, v[0], v[1], v[2]) for s, v in zip(sessions, views) if s is not None])
        now = time.time()
        for s, v in zip(sessions, views):
            if s is None:
                continue
            try:
                self._account(s, *v, now)
            except Exception as e:  # noqa: BLE001 - the view is fused; its counts or files are what failed
                self._log_trace("internal error accounting for a view")
                self._reject("internal_error", f"stream {v[0].stream} object {v[0].object_id} seq {v[0].seq}: {e!r}")
        return sessions

    def _account(self, s: ObjectSession, msg: CodeMessage, info: StreamInfo, u: int, late: bool, t_recv: float,
                 source: str, now: float) -> None:
        """:meth:`_apply`'s part for one fused view: its depth map queued, its counts, its line in
        ``views.jsonl``, its camera in the record, the listeners told."""
        s.pending.append((msg.seq, u, msg.payload, msg.pose, info.K, t_recv, source))
        self._depth_order.append(s)
        s.views += 1
        s.bytes += len(msg.payload) + 24 + (28 if msg.pose is not None else 0)
        s.code_bits += msg.n_bits
        s.first_seq = u if s.first_seq is None else min(s.first_seq, u)
        s.last_seq = u if s.last_seq is None else max(s.last_seq, u)
        if late and len(s.late) < 10000:
            s.late.append([msg.seq, source if source != "record" else "link"])
        s.last_t = time.monotonic()
        lat = ((now - capture_time_unix(info.epoch_unix, msg.t_ms, now)) * 1000.0 if source != "record"
               else float("nan"))
        if math.isfinite(lat):
            s.latency_ms.append(lat)
            self.latency_all.append(lat)
        self._append_view_line(s, msg, u, info.K, lat, late, source)
        if self.recorder is not None and source != "record":
            self._record(lambda r: r.camera(f"{s.name}/camera", msg.pose, info.K, info.image_size, t_recv))
        self.stats["views"] += 1
        if source == "record":
            self.stats["views_rebuilt"] += 1
        for f in self.listeners:
            try:
                f(s)
            except Exception:  # noqa: BLE001 - a listener's bug is not the station's
                log.exception("listener failed")
        if len(s.pending) >= 4 * self.cfg.batch:  # bounded memory: never let one object's backlog grow
            self.process_depths(only=s)

    def process_depths(self, budget: int | None = None, only: ObjectSession | None = None) -> int:
        """Decode pending depth maps (batched across objects): write their PNGs, add their points.

        Args:
            budget: at most this many views (None: all). only: just this object's.

        Returns:
            how many views' depth maps were decoded.
        """
        todo = []
        if only is not None:
            take = only.pending if budget is None else only.pending[:budget]
            todo = [(only, p) for p in take]
            del only.pending[:len(take)]
        else:
            # oldest first across objects; an entry whose view was already done (``only=``) is skipped
            while self._depth_order and (budget is None or len(todo) < budget):
                s = self._depth_order.popleft()
                if s.pending and self.sessions.get((s.stream, s.object_id)) is s:
                    todo.append((s, s.pending.pop(0)))
        for j in range(0, len(todo), max(1, self.cfg.batch)):
            chunk = todo[j:j + self.cfg.batch]
            if self.iterative:
                self._write_images(chunk)
                continue
            try:
                depth, mask = self._depths([((s.stream, p[1]), p[2]) for s, p in chunk])
            except Exception as e:  # noqa: BLE001 - counted, the views stay applied
                log.exception("internal error decoding depth maps")
                self._reject("internal_error", repr(e))
                continue
            self._depth_products(chunk, depth, mask)
        if only is not None or budget is None:  # someone reads the results now
            self._finish_products()
        return len(todo)

    def _depth_products(self, chunk: list, depth: np.ndarray, mask: np.ndarray) -> None:
        """Make a chunk's PNGs and points in the depth thread (:meth:`_view_products`); then (pipelined: when
        the next chunk comes, or a result is read) update its objects in order on this thread: latest
        depth map, record, counts, depth listeners (:meth:`_finish_products`)."""
        products, future = self._view_products(chunk, depth, mask)
        self._inflight.append((chunk, depth, products, future))
        # pipelined: the chunks already done, and at most PIPELINE_DEPTH left in flight (bounded memory)
        self._finish_products(keep=PIPELINE_DEPTH if self._pipelined else 0)

    def _wait_placed(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` batches of views are still being placed by the fuser thread. Where a
        batch failed, each of its views is placed again on its own, here (safe: pooling is idempotent), and
        a view that fails even alone is counted as ``internal_error`` and named in its object's
        ``not_fused``."""
        while len(self._placing) > keep:
            future, n, (owners, states, depth, mask_prob, K, pose) = self._placing.popleft()
            if future.exception() is None:  # (waits for it)
                continue
            self._log_trace("internal error placing a batch of views; placing them one by one", future.exception())
            # on the fuser thread, after the batches already handed to it: never two threads on one state
            retry = self._worker("fuser").submit(self._place_one_by_one, owners, states, depth, mask_prob, K, pose)
            for s, m, e in retry.result():
                self._not_fused(s, m, e)

    def _place_one_by_one(self, owners: list, states: list, depth: torch.Tensor, mask_prob: torch.Tensor,
                          K: torch.Tensor, pose: torch.Tensor) -> list:
        """Place a failed batch's views again, each on its own (on the fuser thread: :meth:`_wait_placed`).

        Args:
            owners: ``(session, message)`` per view. states: the objects' states. depth, mask_prob: float32
                [B, H, W] (metres, probability). K: [B, 3, 3] intrinsics. pose: [B, 4, 4] camera-to-grid.

        Returns:
            ``(session, message, exception)`` of each view that failed even alone (nothing raised).
        """
        failed = []
        for i, (s, m) in enumerate(owners):
            try:
                self.net.place([states[i]], depth[i:i + 1], mask_prob[i:i + 1], K[i:i + 1], pose[i:i + 1])
            except Exception as e:  # noqa: BLE001 - counted by the caller, on the main thread
                failed.append((s, m, e))
        return failed

    def settle(self) -> None:
        """Wait for every view still being placed and every depth map still being made, and apply their
        results (pipelined, see ``GroundConfig.pipeline``; at once otherwise). The station's readers
        (occupancy, snapshots, the viewer) call it where they need it."""
        self._wait_placed()
        self._finish_products()

    def _finish_products(self, keep: int = 0) -> None:
        """Apply the depth products of the chunks in flight, oldest first: those already made, and more
        (waiting for them) until at most ``keep`` are left."""
        while self._inflight and (len(self._inflight) > keep or self._inflight[0][3].done()):
            self._finish_one(*self._inflight.popleft())

    def _finish_one(self, chunk: list, depth: np.ndarray, products: list, future) -> None:
        """One chunk's results on this thread, in order: latest depth map, record, counts, listeners."""
        # (waits for it) counted and logged at a bounded rate; the views stay applied
        if future.exception() is not None:
            self._reject("internal_error", f"depth maps: {future.exception()!r}")
        for k, ((s, (seq, u, _, pose, K, t_recv, source)), done) in enumerate(zip(chunk, products)):
            if done is None:  # its thread failed before it
                continue
            # counted and logged at a bounded rate; the view stays applied, its points are lost
            if isinstance(done, Exception):
                self._reject("internal_error", f"depth map of {s.name} view {u}: {done!r}")
                continue
            d, png, err, thinned = done
            if s.depth_u is None or u >= s.depth_u:
                # a copy: a view into the batch would keep the whole batch alive per object
                s.depth_u, s.last_depth, s.last_raw_depth, s.last_pose = u, d, depth[k].copy(), pose
            if err is not None:
                self._output_error(f"depth of {s.name} view {u}", err)
            if png is not None and self.recorder is not None and self.cfg.record_depth and source != "record":
                self._record(lambda r: r.depth_png(f"{s.name}/camera", png, t_recv))
            self.stats["points_thinned"] += thinned
            self.stats["depth_maps"] += 1
            for f in self.depth_listeners:
                try:
                    f(s, seq, depth[k], pose)
                except Exception:  # noqa: BLE001
                    log.exception("depth listener failed")

    def _write_images(self, chunk: list) -> None:
        """A sequential or direct model's part of :meth:`process_depths`: each view's decoded image
        appended to ``<work>/images.tar`` as ``<u>.png`` (8-bit RGB), the latest kept for the viewer."""
        import cv2

        try:
            images = self._images([((s.stream, p[1]), p[2]) for s, p in chunk])
        except Exception as e:  # noqa: BLE001 - counted, the views stay applied
            log.exception("internal error decoding images")
            self._reject("internal_error", repr(e))
            return
        for (s, (seq, u, *_)), img in zip(chunk, images):
            if s.depth_u is None or u >= s.depth_u:
                s.depth_u, s.last_image = u, img
            try:
                ok, png = cv2.imencode(".png", img[:, :, ::-1])
                if not ok:
                    raise OSError("cv2.imencode failed")
                archive.append(os.path.join(str(self._work_dir(s)), "images.tar"), f"{u:010d}.png", png.tobytes())
            except Exception as e:  # noqa: BLE001
                self._output_error(f"image of {s.name} view {u}", e)
            self.stats["images"] += 1

    def _view_products(self, chunk: list, depth: np.ndarray, mask: np.ndarray) -> tuple[list, object]:
        """:meth:`process_depths`' work per view: its masked depth map, its PNG (appended to the object's
        ``depth.tar``) and its points (added to its object's cloud), in the depth thread.

        One thread, the chunks in order: an object's views are appended and its cloud grown in the order
        they were applied, and only that thread touches the clouds and archives until
        :meth:`_finish_products`. (Two threads, objects split between them, were no faster once the depth
        PNGs went into archives: most of this work holds the GIL.)

        Args:
            chunk: ``(session, pending entry)`` per view. depth: float [B, H, W] metres. mask: bool [B, H, W].

        Returns:
            ``(products, future)``: once the future is done, ``products`` holds ``(masked depth float32
            [H, W], PNG bytes or None, the error that kept the PNG from being written or None, 1 where the
            object's cloud was thinned else 0)`` per view, in ``chunk``'s order, or the exception that
            stopped that view's work.
        """
        out: list = [None] * len(chunk)

        def work() -> None:
            """Set ``out[k]`` to each view's products or to the exception that stopped them (never raises
            for a view: the next views go on)."""
            for k, (s, (_, u, _, pose, K, *_)) in enumerate(chunk):
                try:
                    d = np.where(mask[k], depth[k], 0.0).astype(np.float32)
                    png = err = None
                    try:
                        png = depth_png(d)
                        archive.append(os.path.join(str(self._work_dir(s)), "depth.tar"), f"{u:010d}.png", png)
                    except Exception as e:  # noqa: BLE001 - an output error, counted by the caller
                        err = e
                    thinned = 0
                    if pose is not None:
                        thinned = self._add_points(s, camera.backproject(d, K, pose).astype(np.float32))
                    out[k] = (d, png, err, thinned)
                except Exception as e:  # noqa: BLE001 - an internal error, counted by the caller
                    out[k] = e

        return out, self._worker("depth").submit(work)

    def _add_points(self, s: ObjectSession, pts: np.ndarray) -> int:
        """Append points and keep the cloud voxel-downsampled within ``max_points`` (bounded memory).

        Returns:
            1 where the cloud had to be thinned (more occupied point voxels than the bound allows), else 0.
        """
        s.points.append(pts)
        s.n_points += len(pts)
        if s.n_points <= self.cfg.max_points:
            return 0
        merged = self._downsample(np.concatenate(s.points))
        thinned = 0
        if len(merged) > self.cfg.max_points * 3 // 4:
            keep = np.random.default_rng(len(merged)).choice(len(merged), self.cfg.max_points // 2, replace=False)
            merged = merged[np.sort(keep)]
            thinned = 1
        s.points, s.n_points = [merged], len(merged)
        return thinned

    def _downsample(self, pts: np.ndarray) -> np.ndarray:
        """The first point of each ``point_voxel`` voxel, in their order: float32 [N, 3] -> [M, 3].

        A voxel's three indices are packed into one int64 (21 bits each: +-8 km at 1/128 m), so that
        one 1-D ``np.unique`` finds them (measured here: 130,000 points in 24 ms, against 174 ms for a
        row-wise ``np.unique(axis=0)``, which made 100 drones' clouds outrun the ground).
        """
        if len(pts) == 0:
            return pts.reshape(0, 3)
        q = np.clip(np.floor(pts / self.cfg.point_voxel), -(1 << 20), (1 << 20) - 1).astype(np.int64) + (1 << 20)
        _, first = np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2], return_index=True)
        return pts[np.sort(first)]

    def _work_dir(self, s: ObjectSession) -> Path:
        return self.out / ".work" / s.name

    def _worker(self, name: str):
        """The station's one worker thread called ``name`` (``fuser``, ``depth``; made on first use): one
        thread, so that what is submitted runs in order."""
        w = self._workers.get(name)
        if w is None:
            from concurrent.futures import ThreadPoolExecutor

            w = self._workers[name] = ThreadPoolExecutor(1, thread_name_prefix=name)
        return w

    def _output_error(self, what: str, e: Exception) -> None:
        self.stats["output_errors"] += 1
        n = self.stats["output_errors"]
        if n <= 5 or n % 100 == 0:
            log.error("output error %d (%s): %s", n, what, e)

    def _append_view_line(self, s: ObjectSession, msg: CodeMessage, u: int, K, lat: float, late: bool,
                          source: str) -> None:
        """Append the view's line to the object's ``views.jsonl`` (a line-buffered file kept open: the
        most recent 256 objects' files, so that a view costs one write, not an open, a mkdir and a close)."""
        try:
            line = {"seq": msg.seq, "u": u, "t_ms": msg.t_ms, "latency_ms": lat if math.isfinite(lat) else None,
                    "late": late, "source": source,
                    "pose": None if msg.pose is None else np.round(msg.pose, 7).tolist(),
                    "K": None if K is None else np.round(np.asarray(K, np.float64), 5).tolist()}
            f = self._view_files.get(s.name)
            if f is None:
                folder = self._work_dir(s)
                folder.mkdir(parents=True, exist_ok=True)
                f = self._view_files[s.name] = (folder / "views.jsonl").open("a", buffering=1)
                while len(self._view_files) > 256:
                    self._view_files.popitem(last=False)[1].close()
            else:
                self._view_files.move_to_end(s.name)
            f.write(json.dumps(line, allow_nan=False) + "\n")
        except Exception as e:  # noqa: BLE001
            self._close_view_file(s)  # opened again at the next view
            self._output_error(f"views.jsonl of {s.name}", e)

    def _close_view_file(self, s: ObjectSession) -> None:
        f = self._view_files.pop(s.name, None)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    # -- results -----------------------------------------------------------------------------------
    def fused_points(self, s: ObjectSession) -> np.ndarray:
        """The session's point cloud, voxel-downsampled (float32 [N, 3], metres).

        From back-projected depth maps where views carry poses; otherwise from the occupancy grid's
        surface voxels (``session.json`` says which).
        """
        self.process_depths(only=s)
        if s.n_points:
            s.points = [self._downsample(np.concatenate(s.points))]
            s.n_points = len(s.points[0])
            s.point_source = "depth"
            return s.points[0]
        occ = self._occupancy(s) > TAU
        from scipy import ndimage

        surf = occ & ~ndimage.binary_erosion(occ)
        idx = np.argwhere(surf).astype(np.float64)
        pts = (idx @ s.grid_to_world[:3, :3].T + s.grid_to_world[:3, 3]).astype(np.float32)
        s.point_source = "occupancy_surface"
        return self._downsample(pts)

    def _missing(self, s: ObjectSession) -> dict:
        dl = self.delivery.get(s.stream)
        if dl is None or s.first_seq is None:
            return {"stream_missing_views": 0, "missing_in_span": 0, "never_came": []}
        ranges = dl.missing_ranges()
        in_span = [(max(a, s.first_seq), min(b, s.last_seq)) for a, b in ranges if b >= s.first_seq and a <= s.last_seq]
        return {"stream_missing_views": dl.missing_count(),
                "missing_in_span": int(sum(b - a + 1 for a, b in in_span)),
                "never_came": [[dl.to_wire(a), dl.to_wire(b)] for a, b in in_span[:1000]]}

    def _wire(self, stream: int, u: int) -> int:
        """The wire sequence number of a stream's unwrapped number ``u``."""
        dl = self.delivery.get(stream)
        return dl.to_wire(u) if dl is not None else u & 0xFFFFFFFF

    def summary(self, s: ObjectSession, folder: Path | None = None) -> dict:
        """The object's counts (what ``session.json`` holds), strict-JSON-safe."""
        lat = np.array(s.latency_ms) if s.latency_ms else np.array([np.nan])
        miss = self._missing(s)
        return clean_json({
            "stream": s.stream, "object_id": s.object_id, "views": s.views,
            "first_seq": None if s.first_seq is None else self._wire(s.stream, s.first_seq),
            "last_seq": None if s.last_seq is None else self._wire(s.stream, s.last_seq),
            "late_views": s.late, "late_count": len(s.late),
            "views_without_pose": s.no_pose, "views_not_fused": s.not_fused,
            "views_fused": s.views - len(s.no_pose) - len(s.not_fused),
            "distinct_views": self._distinct_views(s),
            "missing_views": miss["missing_in_span"], "stream_missing_views": miss["stream_missing_views"],
            "never_came": miss["never_came"],
            "gaps": miss["never_came"],
            "bytes": s.bytes, "bytes_per_view": s.bytes / max(s.views, 1),
            "compression_ratio": self.ratio(s), "code_bits": self.code_bits,
            "code_bits_per_view": s.code_bits / max(s.views, 1),
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "point_source": s.point_source, "model": self.model.cfg.name, "frame": self.model.cfg.frame,
            "pose_refinement": s.pose_refinement,
            "folder": None if folder is None else str(folder), "snapshot": len(s.snapshots)})

    def _distinct_views(self, s: ObjectSession) -> int | None:
        """Distinct views (pose and intrinsics) summed into the object's votes, for a fusion model with
        mean pooling (:meth:`voxlink.models.fusion.FusionModel.distinct_views`: a view repeated at the same
        pose counts once); None for other models or before the first view."""
        distinct = getattr(self.model, "distinct_views", None)
        if distinct is None or not torch.is_tensor(s.state):
            return None
        self._wait_placed()
        n = distinct(s.state)
        return None if n is None else n[0]

    def ratio(self, *sessions: ObjectSession) -> float:
        """Compression ratio (Eq. 12) of the views of these objects as received (a variable-rate stream's
        mean), or of one code of this model (no objects, or no views yet)."""
        views, bits = sum(s.views for s in sessions), sum(s.code_bits for s in sessions)
        if not views or not bits:
            return compression_ratio(self.code_bits)
        return compression_ratio(1) * views / bits  # raw bits of a view x views / code bits received

    def _next_snap(self, parent: Path) -> int:
        n = self._snap_index.get(str(parent), 0)
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith("snap-") and p.name[5:].isdigit():
                    n = max(n, int(p.name[5:]) + 1)
        return n

    def _write_snapshot(self, s: ObjectSession, parent: Path) -> tuple[Path, dict]:
        """Write every file of a snapshot into a temporary folder in ``parent`` and rename it into ``snap-NNN``."""
        import cv2  # noqa: F401 - fail early where OpenCV is missing
        import trimesh

        from voxlink.binvox import write_binvox

        parent.mkdir(parents=True, exist_ok=True)
        n = self._next_snap(parent)
        tmp = parent / f".tmp-snap-{n:03d}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            self.process_depths(only=s)
            occ = self._occupancy(s)
            vs = voxel_size(occ.shape[0])
            np.savez_compressed(tmp / "occupancy.npz", occupancy=occ.astype(np.float32), voxel_min=np.float32(-0.5),
                                voxel_size=np.float32(vs), grid_to_world=s.grid_to_world.astype(np.float64))
            write_binvox(tmp / "occupancy.binvox", occ > TAU)
            pts = self.fused_points(s)
            if len(pts):
                trimesh.PointCloud(pts).export(tmp / "points.ply")
            else:  # trimesh cannot write an empty cloud
                (tmp / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                                                "property float y\nproperty float z\nend_header\n")
            mesh_faces = 0
            if (occ > TAU).any() and not (occ > TAU).all():
                from skimage import measure

                v, f, _, _ = measure.marching_cubes(np.pad(occ, 1), level=TAU)
                v = (v - 1.0) @ s.grid_to_world[:3, :3].T + s.grid_to_world[:3, 3]
                trimesh.Trimesh(v, f, process=False).export(tmp / "mesh.ply")
                mesh_faces = len(f)
            work = self._work_dir(s)
            for name in ("depth.tar", "images.tar") if self.iterative else ("depth.tar",):
                archive.finish_copy(work / name, tmp / name)
            if (work / "views.jsonl").is_file():
                shutil.copy2(work / "views.jsonl", tmp / "views.jsonl")
            while True:
                final = parent / f"snap-{n:03d}"
                summary = self.summary(s, final)
                summary.update(points=int(len(pts)), mesh_faces=mesh_faces, point_source=s.point_source)
                write_json_atomic(tmp / "session.json", summary)
                try:
                    if final.exists():
                        raise FileExistsError(str(final))
                    os.rename(tmp, final)
                    break
                except OSError:
                    if not final.exists():
                        raise
                    n += 1  # another snapshot holds that name: take the next, never overwrite
            self._snap_index[str(parent)] = n + 1
            if self.fused_depth_on:  # tens of ms a view: on its own thread, never stalling the views
                self._submit_fused_depth(s, occ, final)
            if self.recorder is not None:
                t_now = time.time()
                vox = np.argwhere(occ > TAU).astype(np.float64) @ s.grid_to_world[:3, :3].T + s.grid_to_world[:3, 3]
                self._record(lambda r: (r.points(s.name, pts, t_now),
                                        r.points(s.name, vox.astype(np.float32), t_now, topic="voxels")))
            return final, summary
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @property
    def fused_depth_on(self) -> bool:
        """Whether snapshots get ``depth_fused.tar`` (a fusion model and ``GroundConfig.fused_depth``)."""
        return self.cfg.fused_depth and hasattr(self.model, "fused_depth")  # (no network: any backend)

    def _submit_fused_depth(self, s: ObjectSession, occ: np.ndarray, folder: Path) -> None:
        """Queue a snapshot's ``depth_fused.tar`` on the ``fused`` thread, unless more than
        :data:`FUSED_DEPTH_BACKLOG_VIEWS` views are already waiting for it (then the snapshot goes without
        it, counted as ``fused_depth.dropped``: a ground behind on it must not fall further behind)."""
        if self._fused_pending_views + s.views > FUSED_DEPTH_BACKLOG_VIEWS and self._fused_jobs:
            self.stats["fused_depth_dropped"] += 1
            n = self.stats["fused_depth_dropped"]
            if n <= 5 or n % 100 == 0:
                log.warning("a snapshot of %s goes without depth_fused.tar: %d views already wait for theirs "
                            "(%d such snapshots so far; --no-fused-depth for a busy ground)", s.name,
                            self._fused_pending_views, n)
            return
        refined = None
        if self.cfg.refine_poses and s.refined_poses:  # each view's corrected pose, by its name in depth.tar
            refined = {f"{u:010d}.png": p for u in s.kept_u if (p := s.corrected_pose(u)) is not None}
        future = self._worker("fused").submit(self._write_fused_depth, np.array(occ, np.float32), folder, refined)
        self._fused_jobs.append((s.name, future, s.views))
        self._fused_pending_views += s.views

    def _write_fused_depth(self, occ: np.ndarray, folder: Path, refined: dict | None = None) -> dict:
        """Write ``depth_fused.tar`` into a snapshot folder: each view's depth map from the snapshot's grid.

        Every member of the snapshot's ``depth.tar`` (the view's decoded depth, masked by its decoded
        silhouette) whose line in ``views.jsonl`` has a pose and intrinsics is made again with
        :meth:`voxlink.models.fusion.FusionModel.fused_depth` from the grid ``occ`` (all the object's
        views up to the snapshot), kept on the same silhouette, and written under the same name (16-bit
        PNG, millimetres, 0 = empty). Runs on the ``fused`` worker thread, at a lower CPU priority than
        the threads that apply views (Linux: the thread's nice value), after the snapshot is in place
        (:meth:`collect_fused_depth` counts the results); the archive is written aside and renamed in,
        so it is there whole or not at all; 16 views are read and rendered at a time.

        Args:
            occ: float32 [R, R, R] the snapshot's occupancy grid. folder: the snapshot folder (its
                ``depth.tar`` and ``views.jsonl`` there). refined: with ``refine_poses``, each view's
                corrected pose float32 [4, 4] by its member name: the grid was fused at the corrected
                poses, so each view is rendered at its own.

        Returns:
            ``{"views": written, "skipped": members without pose / intrinsics or unreadable, "ms": time}``.

        Raises:
            FusedDepthCancelled: the ground is stopping and would wait too long (:data:`FUSED_DEPTH_EXIT_S`).
            Whatever reading, rendering or writing raises (the partial file removed first).
        """
        import cv2

        if sys.platform.startswith("linux"):  # below the threads that apply views (Linux: nice is per thread)
            try:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
            except OSError:
                pass
        t0 = time.perf_counter()
        res = {"views": 0, "skipped": 0, "ms": 0.0}
        tmp = folder / "depth_fused.tar.part"
        try:
            geo = {}
            if (folder / "views.jsonl").is_file():
                with (folder / "views.jsonl").open() as f:
                    for line in f:
                        try:
                            v = json.loads(line)
                        except ValueError:  # a torn last line (a crash mid-write): that view is skipped
                            continue
                        if (isinstance(v, dict) and isinstance(v.get("u"), int) and v.get("pose") is not None
                                and v.get("K") is not None):
                            geo[f"{v['u']:010d}.png"] = (v["pose"], v["K"])

            def render(batch: list, out) -> None:
                """Render and append one batch of ``(name, depth float32 [H, W] metres, pose, K)``."""
                if self._fused_stop.is_set():
                    raise FusedDepthCancelled(f"{folder}: the ground is stopping")
                poses = [refined[b[0]] if refined and b[0] in refined else b[2]
                         for b in batch]  # (with refine_poses, each view at its corrected pose)
                fd = fused_depth_maps(self.model, occ, np.stack([b[1] for b in batch]), np.asarray(poses, np.float32),
                                      np.asarray([b[3] for b in batch], np.float32))
                for k, b in enumerate(batch):
                    out.write(archive.member_bytes(b[0], depth_png(fd[k])))
                res["views"] += len(batch)

            batch: list = []
            with open(tmp, "wb") as out:
                if (folder / "depth.tar").is_file():
                    for name, png in archive.iter_members(folder / "depth.tar"):  # memory bounded by the batch
                        d = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) if name in geo else None
                        if d is None or d.ndim != 2:
                            res["skipped"] += 1
                            continue
                        batch.append((name, d.astype(np.float32) / 1000.0, *geo[name]))
                        if len(batch) == 16:
                            render(batch, out)
                            batch = []
                if batch:
                    render(batch, out)
                out.write(archive.END_OF_ARCHIVE)
            os.replace(tmp, folder / "depth_fused.tar")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        res["ms"] = round((time.perf_counter() - t0) * 1000.0, 1)
        return res

    def collect_fused_depth(self, wait: bool = False, deadline_s: float | None = None) -> int:
        """Count the finished ``depth_fused.tar`` writes (``ground.json``'s ``fused_depth``: views, skipped,
        ms, dropped, cancelled; a failure is an output error, logged: the snapshot stays whole without
        it). Main thread.

        Args:
            wait: wait for those still being written first (at exit, :meth:`finalise`).
            deadline_s: with ``wait``, wait at most this long; then those not done are cancelled
                (counted as ``cancelled``; the one being written stops within 16 views).

        Returns:
            how many writes were collected.
        """
        import concurrent.futures

        end = None if deadline_s is None else time.monotonic() + deadline_s
        n = 0
        while self._fused_jobs and (wait or self._fused_jobs[0][1].done()):
            name, future, views = self._fused_jobs[0]
            if end is not None and not future.done():
                concurrent.futures.wait([future], timeout=max(0.0, end - time.monotonic()))
                if not future.done():
                    self._fused_stop.set()
                    for _, f, _ in self._fused_jobs:
                        f.cancel()
            self._fused_jobs.popleft()
            self._fused_pending_views -= views
            n += 1
            if future.cancelled():
                self.stats["fused_depth_cancelled"] += 1
                continue
            e = future.exception()  # (waits for it)
            if isinstance(e, FusedDepthCancelled):
                self.stats["fused_depth_cancelled"] += 1
            elif e is not None:
                self._output_error(f"depth_fused.tar of {name}", e)
            else:
                r = future.result()
                self.stats["fused_depth_views"] += r["views"]
                self.stats["fused_depth_skipped"] += r["skipped"]
                self.stats["fused_depth_ms"] += r["ms"]
        if not self._fused_jobs:
            self._fused_stop.clear()  # every job collected: the next snapshots' are written again
        return n

    def snapshot(self, key: tuple[int, int], reason: str = "idle") -> dict | None:
        """Write the object's results into a fresh snapshot folder; the object stays and continues.

        Errors are contained: counted (``output_errors``), logged, retried once under
        ``<out>/_fallback/``; if that fails too the snapshot is counted as ``snapshots_failed`` and
        tried again later.

        Returns:
            the snapshot's summary (``session.json``), or None if it could not be written.
        """
        s = self.sessions.get(key) or self._wake(key)
        if s is None:
            raise KeyError(f"no object {key}")
        for attempt, parent in enumerate((self.out / s.name, self.out / "_fallback" / s.name)):
            try:
                folder, summary = self._write_snapshot(s, parent)
            except Exception as e:  # noqa: BLE001 - one object's output never ends the station
                self._output_error(f"snapshot of {s.name} (attempt {attempt + 1}) in {parent}", e)
                continue
            s.snap_views = s.views
            s.snapshots.append(str(folder))
            self.stats["snapshots"] += 1
            self.finished.append(summary)
            del self.finished[:-1000]
            log.info("object %s snapshot (%s): %d views, %d late, %d missing in its span, %s", s.name, reason, s.views,
                     len(s.late), summary["missing_views"], folder)
            return summary
        self.stats["snapshots_failed"] += 1
        s.retry_after = time.monotonic() + max(self.cfg.idle_timeout_s, 5.0)
        return None

    def _row(self, s: ObjectSession) -> dict:
        """The object's row of ``ground.json``'s ``objects``."""
        return {"stream": s.stream, "object_id": s.object_id, "views": s.views, "late": len(s.late),
                "missing_views": self._missing(s)["missing_in_span"], "snapshots": len(s.snapshots),
                "latest": s.snapshots[-1] if s.snapshots else None, "unsaved_views": s.views - s.snap_views}

    def sleep(self, key: tuple[int, int]) -> bool:
        """Put an object whose views are all in a snapshot to sleep (:attr:`GroundConfig.max_live_objects`):
        saved whole as ``<out>/.work/<object>/sleeping.npz`` (:func:`save_session`) and dropped from memory. Returns True if it
        did; False (the object stays in memory) if it has views not in a snapshot, depth maps still
        pending, or the file cannot be written (counted as an output error)."""
        s = self.sessions.get(key)
        if s is None or s.views > s.snap_views or s.pending:
            return False
        path = self._work_dir(s) / "sleeping.npz"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_session(s, tmp)
            os.replace(tmp, path)
        except Exception as e:  # noqa: BLE001 - a full disk: the object stays awake
            path.with_suffix(".tmp").unlink(missing_ok=True)
            self._output_error(f"putting {s.name} to sleep", e)
            return False
        self._close_view_file(s)
        self.sleeping[key] = {**self._row(s), "sleeping": True}
        del self.sessions[key]
        self.stats["objects_slept"] += 1
        return True

    def _wake(self, key: tuple[int, int]) -> ObjectSession | None:
        """A sleeping object back in memory, as it was put to sleep (None if it was not asleep). A file
        that cannot be read is counted (``wake_failed``, an output error) and the object starts anew: its
        snapshots on disk stay, and the record holds its views."""
        if key not in self.sleeping:
            return None
        del self.sleeping[key]
        path = self.out / ".work" / f"s{key[0]}_o{key[1]}" / "sleeping.npz"
        try:
            s = load_session(path)
        except Exception as e:  # noqa: BLE001 - counted; the object starts anew
            self.stats["wake_failed"] += 1
            self._output_error(f"waking s{key[0]}_o{key[1]}", e)
            return None
        try:
            path.unlink()
        except OSError as e:  # the object is back all the same; the stale file goes when it sleeps again
            self._output_error(f"removing {path}", e)
        self.sessions[key] = s
        self.stats["objects_woken"] += 1
        return s

    def _sleep_idle(self) -> None:
        """Put the objects idle longest to sleep while more than ``max_live_objects`` are in memory."""
        extra = len(self.sessions) - self.cfg.max_live_objects
        if self.cfg.max_live_objects <= 0 or extra <= 0:
            return
        if not any(s.views <= s.snap_views for s in self.sessions.values()):
            return  # none could sleep: do not stall the pipeline for nothing
        self.settle()  # nothing of an object may still be in flight in the pipeline's threads
        for key, _ in sorted(((k, s.last_t) for k, s in self.sessions.items()), key=lambda x: x[1]):
            if extra <= 0:
                break
            extra -= self.sleep(key)

    def finalise(self, key: tuple[int, int]) -> dict | None:
        """Snapshot an object and drop it from memory (a later view of it starts a new state).

        Returns:
            the snapshot's summary, or None if it could not be written (see :meth:`snapshot`).
        """
        summary = self.snapshot(key, "finalise")
        self.collect_fused_depth(wait=True)  # the object's files complete when this returns (one worker
        # thread in order: its job is the last queued, so this waits for the earlier ones anyway)
        self.sleeping.pop(key, None)
        s = self.sessions.pop(key, None)
        if s is not None:
            self._close_view_file(s)
        if s is not None and summary is not None:
            shutil.rmtree(self._work_dir(s), ignore_errors=True)
        return summary

    def status(self) -> dict:
        """Every count (what ``ground.json`` holds)."""
        lat = np.array(self.latency_all) if self.latency_all else np.array([np.nan])
        with self._rx_lock:
            stats = dict(self.rx_stats)
        stats.update(self.stats)
        rejected = self.all_rejected()
        streams = {}
        for sid, dl in sorted(self.delivery.items()):
            info = self.streams.get(sid)
            b = dl.bounds()
            streams[str(sid)] = {
                "model": info.model if info else None, "views": dl.seen.count, "duplicates": dl.duplicates,
                "late": dl.late, "recovered": dl.recovered, "missing_views": dl.missing_count(),
                "missing": [[dl.to_wire(a), dl.to_wire(b_)] for a, b_ in dl.missing_ranges(limit=100)],
                "first_seq": None if b is None else dl.to_wire(b[0]),
                "last_seq": None if b is None else dl.to_wire(b[1]), "restarts": dl.restarts,
                "backchannel": bool(info and info.backchannel)}
        objects = {s.name: self._row(s) for s in sorted(self.sessions.values(), key=lambda x: (x.stream, x.object_id))}
        objects.update({f"s{k[0]}_o{k[1]}": row for k, row in sorted(self.sleeping.items())})
        return clean_json({
            "time_unix": time.time(), "uptime_s": time.time() - self.t_start, "model": self.model.cfg.name,
            "refiner_precision": (self.model.refiner_precision() if hasattr(self.model, "refiner_precision")
                                  else None),
            "messages": stats.get("messages", 0), "views_applied": stats.get("views", 0),
            "views_rebuilt": stats.get("views_rebuilt", 0), "duplicates": stats.get("duplicates", 0),
            "late_views": stats.get("late", 0), "recovered_views": stats.get("recovered", 0),
            "missing_views": sum(v["missing_views"] for v in streams.values()),
            "rejected": rejected, "rejected_total": sum(rejected.values()),
            "output_errors": stats.get("output_errors", 0), "snapshots": stats.get("snapshots", 0),
            "snapshots_failed": stats.get("snapshots_failed", 0), "record_errors": stats.get("record_errors", 0),
            "stream_restarts": stats.get("stream_restarts", 0),
            # depth_fused.tar of the snapshots (a pose-aware model; None where there is none)
            "fused_depth": ({"views": stats.get("fused_depth_views", 0), "skipped": stats.get("fused_depth_skipped", 0),
                             "ms": round(stats.get("fused_depth_ms", 0.0), 1), "writing": len(self._fused_jobs),
                             "views_waiting": self._fused_pending_views,
                             "dropped": stats.get("fused_depth_dropped", 0),
                             "cancelled": stats.get("fused_depth_cancelled", 0)}
                            if self.fused_depth_on else None),
            "queue": self.q.qsize(), "views_waiting_for_info": sum(len(h) for h in self.held.values()),
            "depth_backlog": sum(len(s.pending) for s in self.sessions.values()),
            "latency_ms": {"p50": float(np.percentile(lat, 50)),
                                                    "p99": float(np.percentile(lat, 99))},
            "record": None if self.recorder is None else str(self.recorder.path),
            "stats": stats, "streams": streams, "objects": objects})

    def write_status(self) -> None:
        """Rewrite ``<out>/ground.json`` atomically (errors counted, never raised)."""
        self.collect_fused_depth()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "ground.json", self.status())
        except Exception as e:  # noqa: BLE001
            self._output_error("ground.json", e)

    # -- gap recovery --------------------------------------------------------------------------------
    def request_missing(self, now: float | None = None) -> int:
        """Queue back-channel requests for views missing longer than the reorder grace; returns how many seqs."""
        now = time.monotonic() if now is None else now
        total = 0
        for sid, dl in self.delivery.items():
            info = self.streams.get(sid)
            if info is None or not info.backchannel:
                continue
            want = []
            # an earlier incarnation's gaps are never asked (the edge that sent them has lost its log), and
            # the gaps are taken in turn, so that ones the edge cannot answer do not starve newer ones
            for a, b in dl.ranges_to_ask(limit=64):
                for u in range(max(a, b - 511), b + 1):
                    due = dl.missing_since.setdefault(u, now + REORDER_GRACE_S)  # next time to ask
                    if now >= due:
                        want.append(u)
                        dl.missing_since[u] = now + self.cfg.request_interval_s
                        if len(want) >= 512:
                            break
                if len(want) >= 512:
                    dl.ask_cursor = u + 1  # the next round goes on from here
                    break
            if len(dl.missing_since) > 100000:  # forget the oldest marks, keep memory bounded
                for u in sorted(dl.missing_since)[:50000]:
                    del dl.missing_since[u]
            if want:
                self.requests.put((sid, [dl.to_wire(u) for u in want]))
                total += len(want)
        return total

    # -- durable record --------------------------------------------------------------------------------
    def rebuild(self, files: list[Path] | None = None) -> int:
        """Replay MCAP records through the station (default: this ``out``'s own ``record/*.mcap``).

        Views already applied are duplicates and change nothing. Returns the number of views applied.
        """
        files = sorted((self.out / "record").glob("*.mcap")) if files is None else files
        before = self.stats["views"]
        from ground.record import read_wire

        for path in files:
            batch = []
            try:
                for buf, t in read_wire(path):
                    batch.append((buf, t, "record"))
                    if len(batch) >= self.cfg.batch:
                        self.handle_many(batch)
                        batch = []
            except Exception as e:  # noqa: BLE001 - an unreadable record is reported, never fatal
                self.stats["record_errors"] += 1
                log.error("cannot read the record %s: %s", path, e)
            if batch:
                self.handle_many(batch)
        n = self.stats["views"] - before
        if files:
            log.info("rebuilt %d views of %d objects from %d record file(s)", n, len(self.sessions), len(files))
        # objects whose snapshot already holds every view need no new one
        for s in self.sessions.values():
            s.last_t = time.monotonic()
            latest = self._latest_on_disk(s)
            if latest is not None:
                s.snapshots.append(str(latest[0]))
                if latest[1] >= s.views:
                    s.snap_views = s.views
        return n

    def _latest_on_disk(self, s: ObjectSession) -> tuple[Path, int] | None:
        parent = self.out / s.name
        snaps = sorted(p for p in parent.glob("snap-*") if p.name[5:].isdigit()) if parent.is_dir() else []
        for p in reversed(snaps):
            try:
                return p, int(json.loads((p / "session.json").read_text())["views"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def open_record(self) -> None:
        """Start this run's MCAP record ``<out>/record/ground-<time>-<pid>-<n>.mcap`` (errors: counted, no record)."""
        from ground.record import Recorder

        now = time.time()
        stamp = time.strftime("ground-%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1000000:06d}Z-{os.getpid()}"
        try:
            for k in range(1000):  # names sort in start order; never reuse one
                try:
                    self.recorder = Recorder(self.out / "record" / f"{stamp}-{k:03d}.mcap")
                    break
                except FileExistsError:
                    continue
            log.info("recording to %s", self.recorder.path)
        except Exception as e:  # noqa: BLE001
            self.stats["record_errors"] += 1
            log.error("cannot open the MCAP record in %s: %s (running without one)", self.out / "record", e)

    def close_record(self) -> None:
        """Finish the MCAP record (summary and footer); a broken record is first started anew
        (:meth:`sync_record`), so that every accepted message is in a whole file where the disk allows."""
        if self.recorder is not None:
            if self._record_broken:
                self._record_retry_at = 0.0
                self.sync_record()
            self._record(lambda r: r.close())

    # -- main loop -----------------------------------------------------------------------------------
    def _curve(self):
        """``(public, secret)`` from ``curve_secret_file``, or None without CURVE."""
        if not self.cfg.curve_secret_file:
            return None
        import zmq
        import zmq.auth

        if not zmq.has("curve"):
            raise ValueError("this libzmq has no CURVE support")
        if not self.cfg.curve_allow_dir or not Path(self.cfg.curve_allow_dir).is_dir():
            raise ValueError("CURVE needs curve_allow_dir: a folder of the drones' public certificates (*.key)")
        try:
            pub, sec = zmq.auth.load_certificate(self.cfg.curve_secret_file)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the CURVE certificate {self.cfg.curve_secret_file}: {e}") from e
        if sec is None:
            raise ValueError(f"{self.cfg.curve_secret_file} holds no secret key (use the .key_secret file)")
        self._key_streams = {}
        for cert in sorted(Path(self.cfg.curve_allow_dir).glob("*.key")):
            try:
                key, streams = read_drone_certificate(cert)
            except (OSError, ValueError) as e:
                raise ValueError(f"bad drone certificate {cert}: {e}") from e
            self._key_streams[key] = streams
        try:
            owners = json.loads((self.out / "stream_keys.json").read_text())
            self._stream_owner = {int(k): str(v) for k, v in owners.items()}
        except FileNotFoundError:
            self._stream_owner = {}
        except (OSError, ValueError, AttributeError) as e:
            log.error("cannot read %s (%s): streams are bound to keys afresh", self.out / "stream_keys.json", e)
            self._stream_owner = {}
        return pub, sec

    def _may_own(self, peer: str, stream: int) -> bool:
        """Whether the drone with CURVE public key ``peer`` owns ``stream`` or may claim it (:meth:`_owns`
        without claiming: the back channel's check of a hello, which must not bind a stream)."""
        named = self._key_streams.get(peer)
        if named is not None:
            return stream in named
        owner = self._stream_owner.get(stream)
        if owner is not None:
            return owner == peer
        return not any(v is not None and stream in v for v in self._key_streams.values())

    def _owns(self, peer: str, stream: int) -> bool:
        """Whether the drone with CURVE public key ``peer`` (z85) may send for ``stream``.

        A drone certificate that names its streams (``voxlink keys NAME --stream S``) allows those only.
        Otherwise a stream belongs to the first key that sends for it (kept in ``<out>/stream_keys.json``
        across restarts), so that a second drone configured with the same stream id, or another allowed
        drone, cannot feed views into that stream's reconstruction.
        """
        if not self._may_own(peer, stream):
            return False
        if self._key_streams.get(peer) is not None or stream in self._stream_owner:
            return True
        self._stream_owner[stream] = peer
        log.info("stream %d now belongs to the drone key %s...", stream, peer[:8])
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "stream_keys.json", {str(k): v for k, v in sorted(self._stream_owner.items())})
        except Exception as e:  # noqa: BLE001 - the binding holds in memory; counted
            self._output_error("stream_keys.json", e)
        return True

    def run(self, duration_s: float | None = None) -> int:
        """Serve until SIGINT / SIGTERM, ``stop`` or ``duration_s``; snapshot every object; returns 0.

        Raises:
            ValueError: bad CURVE configuration. zmq.ZMQError: an endpoint cannot be bound.
        """
        import signal

        import zmq

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, lambda *_: self.stop.set())
            except ValueError:
                pass
        self._curve_keys = self._curve()
        ctx = zmq.Context()
        auth = None
        if self._curve_keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=str(self.cfg.curve_allow_dir))
            log.info("CURVE: drones allowed from %s", self.cfg.curve_allow_dir)
        sock = router = None
        rx = None
        torch_threads = torch.get_num_threads()  # set back at the end (an in-process ground: the demo, tests)
        try:
            sock, router = self._sockets(ctx)
            if self.cfg.record:
                with self.lock:
                    self.rebuild()
                self.open_record()
            rx = threading.Thread(target=self._receive, args=(sock, router), daemon=True, name="receiver")
            rx.start()
            self._pipelined = self.cfg.pipeline and getattr(self.model, "family", "implicit") == "fusion"
            threads = self.cfg.torch_threads or (1 if self._pipelined else 0)
            if threads:
                torch.set_num_threads(threads)
            self._loop(duration_s)
        finally:
            self.stop.set()
            if rx is not None:
                rx.join(timeout=5)
            self._drain()
            with self.lock:
                self.settle()
                self._pipelined = False
                for key, s in list(self.sessions.items()):
                    if s.views > s.snap_views:
                        self.snapshot(key, "exit")
            waiting = sum(len(h) for h in self.held.values())
            if waiting:  # not in the record: asked back after a restart once their run's info says they were sent
                log.warning("%d views still waited for their run's stream info at exit (not applied, not recorded)",
                            waiting)
            self.close_record()
            # the snapshots are written and the record closed: depth_fused.tar is what may still be made
            self.write_status()  # (the exit snapshots in ground.json, whatever the wait below takes)
            self.collect_fused_depth(wait=True, deadline_s=FUSED_DEPTH_EXIT_S)
            for w in self._workers.values():
                w.shutdown(wait=True)
            self._workers.clear()
            torch.set_num_threads(torch_threads)
            for s_ in list(self.sessions.values()):
                self._close_view_file(s_)
            self.write_status()
            for s_ in (sock, router):
                if s_ is not None:
                    s_.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            log.info("ground stopped: %s, rejected %s", dict(self.stats), self.all_rejected())
        return 0

    def _drain(self) -> None:
        while True:
            batch = []
            while len(batch) < self.cfg.batch:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            with self.lock:
                self.handle_many(batch)

    def _loop(self, duration_s: float | None) -> None:
        t_end = time.time() + duration_s if duration_s else None
        last_metrics = last_status = last_request = time.monotonic()
        views_window = 0
        while not self.stop.is_set() and (t_end is None or time.time() < t_end):
            batch = []
            try:
                batch.append(self.q.get(timeout=0.1))
                while len(batch) < self.cfg.batch * 4:
                    batch.append(self.q.get_nowait())
            except queue.Empty:
                pass
            applied = 0
            if batch:
                with self.lock:
                    applied = sum(r is not None for r in self.handle_many(batch))
                    views_window += applied
            # depth maps keep pace with the views (as many as were just applied, oldest first), and
            # catch up in spare time: a backlog never builds up to be forced through at once
            with self.lock:
                self.process_depths(budget=applied + (self.cfg.batch if self.q.qsize() == 0 else 0))
                # pipelined: the results already made are applied at once (latest depth map, record,
                # listeners), and all of them once no message came for 0.1 s: a quiet link leaves
                # nothing in flight (waiting whenever the queue is empty would stall the pipeline)
                if batch:
                    self._finish_products(keep=PIPELINE_DEPTH)
                else:
                    self.settle()
            now = time.monotonic()
            with self.lock:
                # an object is idle when its last view is old AND no views wait in the queue (a decode
                # backlog is not a quiet link); a snapshot never ends the object either way
                backlog = self.q.qsize() >= self.cfg.batch
                for key, s in list(self.sessions.items()):
                    if not backlog and s.views > s.snap_views and now - s.last_t > self.cfg.idle_timeout_s \
                            and now >= s.retry_after:
                        self.snapshot(key, "idle")
                self._sleep_idle()
                if self.cfg.backchannel and now - last_request >= min(self.cfg.request_interval_s, 1.0):
                    self.request_missing(now)
                    last_request = now
            if now - last_status >= self.cfg.status_interval_s:
                with self.lock:
                    self.write_status()
                    _release_free_memory()
                    self.sync_record(now)
                last_status = now
            if now - last_metrics >= self.cfg.metrics_interval_s:
                dt = now - last_metrics
                log.info("%.1f views/s  objects %d  streams %d  queue %d  duplicates %d  late %d  rejected %s",
                         views_window / dt, len(self.sessions), len(self.streams), self.q.qsize(),
                         self.stats["duplicates"], self.stats["late"], self.all_rejected() or 0)
                last_metrics, views_window = now, 0

    def replay(self, path: str | Path) -> int:
        """Apply every message of an MCAP recording (``voxlink ground --replay``), snapshot every object.

        Returns:
            the number of views applied.
        """
        n = self.rebuild([Path(path)])
        for key, s in list(self.sessions.items()):
            if s.views > s.snap_views:
                self.snapshot(key, "replay")
        self.collect_fused_depth(wait=True)
        self.write_status()
        return n
