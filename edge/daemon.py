"""The on-drone daemon: capture -> preprocess -> encoder backend -> K bits -> ZeroMQ, and a local log.

One thread captures into a small bounded queue (the oldest frame is dropped when the encoder falls
behind, and counted); the main thread encodes, sends and logs. PUB never blocks the loop (a full
high-water mark drops, counted); PUSH is an option. A stream-info message goes out at start and
every ``info_interval_s`` (with ``first_seq`` and ``last_seq``, so the ground can count views lost at
the start and end of the stream). SIGINT / SIGTERM stop the loop, flush the log, close the socket, exit 0.

No PyTorch: the daemon stands on the runtime core only (protocol, camera, preprocess, backends, model-file
metadata); the model file's K and fingerprint are read from its metadata (:mod:`voxlink.modelfile`) and
checked against the encoder backend's. PyTorch is imported only by the ``torch`` backend (and, where
it is installed, to verify a model file that records no fingerprint); the renderer only by ``orbit:``.

Sequence numbers continue across restarts: the daemon starts after the last one in its code log, so
(stream, sequence number) names one view for ever (as long as the log folder is kept). A daemon whose
log was lost starts at 0 under a new epoch (each run's stream infos carry its start time); the ground
sees the reused numbers and places that run after everything the stream sent before
(``ground/delivery.py``), so nothing it sends is taken for a duplicate.

Gap recovery: with ``backchannel`` set, a DEALER socket connects to the ground's back-channel ROUTER,
says hello (``{"hello": stream_id}``) at start and with every stream info, and answers each request
(``{"stream": S, "seqs": [...]}``) with the requested views from the local code log, byte for byte
as first sent. CURVE applies to both sockets.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import signal
import threading
import time
import tomllib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.sources import Capture, SourceEnded, SourceError, open_source
from voxlink import camera
from voxlink.preprocess import to_input_array
from voxlink.protocol import (HEADER_BYTES, KIND_CODE, CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32,
                              pack_bits, run_tag)

log = logging.getLogger("voxlink.edge")


@dataclass
class EdgeConfig:
    """Daemon settings (``edge.toml`` maps onto these, see ``deploy/edge.toml``).

    Attributes:
        source: frame source spec. connect: ZeroMQ endpoints to connect to. bind: endpoints to bind.
        socket: ``pub`` (default, never blocks) or ``push``. model: model name or file.
        backend: ``auto``, ``tensorrt``, ``onnxruntime``, ``torch``. onnx, engine: files for those.
        stream_id: drone id 0..255. object_id: object id 0..65535. fps: frame rate cap (0 = as fast as
        the source). send_pose: include the pose where the source knows it. hwm: ZeroMQ send
        high-water mark (messages). info_interval_s: stream-info period. metrics_interval_s: metrics
        period. log_dir: local code log folder. log_max_bytes, log_backups: its rotation.
        max_frames: stop after this many frames (0 = never). intrinsics: fx, fy, cx, cy of the camera
        frame (pixels), for sources that do not know them. curve_server_key, curve_secret_file: CURVE
        (``zmq.auth``) keys: the ground's public key (z85 text, or the path of its public ``.key``
        certificate) and this drone's certificate with its secret key (``.key_secret``, from
        ``voxlink keys``). heartbeat_ms: ZeroMQ heartbeat interval. orbit_views, orbits: ``orbit:``
        source settings. backchannel: the ground's back-channel endpoints (its ``--backchannel``),
        empty for none. log_cache: views kept in memory for fast back-channel answers.
        iterations, psnr_db: for a sequential or direct model (N_small iterations of m bits a view):
        iterations per view (0: the model's N_max) and a PSNR target in dB (0: none; else each view
        stops at the first iteration whose decoded image reaches it, at most ``iterations``: variable
        rate, more bits for the views that need them). PyTorch backend only. allow_unverified: accept an
        encoder graph or engine that does not record the fingerprint of the model it was built from.
    """

    source: str = "0"
    connect: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:5555"])
    bind: list[str] = field(default_factory=list)
    socket: str = "pub"
    model: str | None = None
    backend: str = "auto"
    onnx: str | None = None
    engine: str | None = None
    stream_id: int = 0
    object_id: int = 0
    fps: float = 0.0
    send_pose: bool = True
    hwm: int = 1000
    info_interval_s: float = 2.0
    metrics_interval_s: float = 5.0
    log_dir: str = "edge-log"
    log_max_bytes: int = 16 << 20
    log_backups: int = 4
    max_frames: int = 0
    intrinsics: list[float] | None = None
    curve_server_key: str | None = None
    curve_secret_file: str | None = None
    heartbeat_ms: int = 1000
    orbit_views: int = 24
    orbits: int = 1
    backchannel: list[str] = field(default_factory=list)
    log_cache: int = 65536
    iterations: int = 0
    psnr_db: float = 0.0
    allow_unverified: bool = False

    def __post_init__(self) -> None:
        """Check the settings, so that a mistake stops the start with its name, not a traceback later.

        Raises:
            ValueError: a value of the wrong type or out of range (each named).
        """
        for name in ("connect", "bind", "backchannel"):
            v = getattr(self, name)
            if isinstance(v, str):  # a TOML string where a list was meant: one endpoint
                v = [v]
            if not isinstance(v, (list, tuple)) or not all(isinstance(e, str) and "://" in e for e in v):
                raise ValueError(f"{name} must be a list of ZeroMQ endpoints like tcp://HOST:PORT, got {v!r}")
            setattr(self, name, list(v))
        if not self.connect and not self.bind:
            raise ValueError("give the ground's endpoint (connect) or one to bind")
        ranges = {"stream_id": (0, 255), "object_id": (0, 65535)}
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        positive = ("info_interval_s", "metrics_interval_s", "log_max_bytes", "orbit_views")
        # (ZeroMQ: hwm 0 is no limit, heartbeat_ms 0 no heartbeats)
        non_negative = ("fps", "max_frames", "log_backups", "log_cache", "orbits", "iterations", "psnr_db", "hwm",
                        "heartbeat_ms")
        for name in positive + non_negative:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                    v == 0 and name in positive):
                raise ValueError(f"{name} must be a {'positive' if name in positive else 'non-negative'} number, "
                                 f"got {v!r}")
        if self.socket not in ("pub", "push"):
            raise ValueError(f"socket must be pub or push, got {self.socket!r}")
        if self.intrinsics is not None and (
                not isinstance(self.intrinsics, (list, tuple)) or len(self.intrinsics) != 4
                or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in self.intrinsics)
                or min(self.intrinsics[:2]) <= 0):
            raise ValueError(f"intrinsics must be [fx, fy, cx, cy] in pixels (fx, fy > 0), got {self.intrinsics!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a camera index, file, URL, folder or orbit:MESH, got {self.source!r}")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "EdgeConfig":
        """Read ``[edge]`` (or the top level) of a TOML file; ``overrides`` (not None) win.

        Raises:
            ValueError: unknown keys. FileNotFoundError: no file.
        """
        d = tomllib.loads(Path(path).read_text())
        d = d.get("edge", d)
        names = set(cls.__dataclass_fields__)
        if set(d) - names:
            raise ValueError(f"unknown keys in {path}: {sorted(set(d) - names)}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)


def _code_seq(rec: bytes) -> int | None:
    """The sequence number of a logged code message (header only, no CRC check), None for other records."""
    if len(rec) < HEADER_BYTES or rec[0] != 0xB5 or rec[1] & 0x0F != KIND_CODE:
        return None
    return int.from_bytes(rec[12:16], "little")


class CodeLog:
    """Append-only local log of every message sent: ``[uint32 length][message]`` records, rotated
    at ``max_bytes`` into ``codes.log.1 .. codes.log.N`` (oldest dropped), so a view lost on the link is
    not lost for ever. The last ``cache`` code messages are also kept in memory by sequence number
    for :meth:`find`. Thread-safe (the back channel reads while the main loop appends).

    A full disk never ends the daemon: a record the disk refuses is cut off again (the file stays
    readable), kept in memory in order (at most ``MAX_UNWRITTEN`` records; beyond that the oldest are
    counted in ``lost``) and written, before anything newer, once the disk takes writes again (tried at most every
    5 s). A log whose last record was torn (the process died in the middle of a write) is cut back to its
    last whole record when it is opened, so the records appended after it stay readable.

    Attributes:
        write_errors: writes the disk refused. lost: records dropped from memory before they could be
            written (the in-memory cache may still hold them). unwritten: records waiting for the disk.

    Raises:
        OSError: the folder cannot be made or the log file opened (at start).
    """

    RETRY_S = 5.0
    #: records kept in memory while the disk refuses them (about 10 MB at 152 bytes a record)
    MAX_UNWRITTEN = 65536

    def __init__(self, folder: str | Path, max_bytes: int = 16 << 20, backups: int = 4, cache: int = 65536):
        import collections

        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "codes.log"
        self.max_bytes, self.backups = max_bytes, backups
        self._cur_range = self._repair(self.path)
        self.f = self.path.open("ab", buffering=0)  # unbuffered: a record is in the file once append returns
        self._torn = False  # a failed write could not be cut off again: repair before writing on
        self.lock = threading.Lock()
        self.cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.cache_size = cache
        self.unwritten: deque[bytes] = deque()
        self.write_errors = self.lost = 0
        self._retry_at = 0.0
        # the rotated files' (lowest, highest) sequence numbers, codes.log.1 first (shifted at each rotation)
        self._ranges: list[tuple[int, int] | None] = [self._seq_range(self.dir / f"codes.log.{i}")
                                                      for i in range(1, backups + 1)]

    def files(self) -> list[Path]:
        """The log files, newest first."""
        out = [self.path] + [self.dir / f"codes.log.{i}" for i in range(1, self.backups + 1)]
        return [p for p in out if p.exists()]

    def last_seq(self) -> int | None:
        """The sequence number of the last code message logged (newest file that has one), or None."""
        for p in self.files():
            seqs = [q for q in map(_code_seq, self.read(p)) if q is not None]
            if seqs:
                return seqs[-1]
        return None

    def append(self, msg: bytes) -> bool:
        """Log one message (rotating first if the file would grow past ``max_bytes``); never raises.

        Returns:
            whether it is on disk now (False: it waits in memory for the disk, see the class).
        """
        with self.lock:
            seq = _code_seq(msg)
            if seq is not None and self.cache_size:  # first: the back channel can answer it whatever the disk
                self.cache[seq] = msg
                self.cache.move_to_end(seq)
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            self.unwritten.append(msg)
            while len(self.unwritten) > self.MAX_UNWRITTEN:
                self.unwritten.popleft()
                self.lost += 1
            if len(self.unwritten) > 1 and time.monotonic() < self._retry_at:
                return False
            return self._write_unwritten()

    def _write_unwritten(self) -> bool:
        """Write the waiting records in order (under the lock); False where the disk refuses one."""
        while self.unwritten:
            try:
                self._write(self.unwritten[0])
            except (OSError, ValueError) as e:
                self.write_errors += 1
                self._retry_at = time.monotonic() + self.RETRY_S
                if self.write_errors == 1 or self.write_errors % 1000 == 0:
                    log.error("code log %s: cannot write (%s); %d records wait in memory (%d write errors so far)",
                              self.path, e, len(self.unwritten), self.write_errors)
                return False
            self.unwritten.popleft()
        return True

    def _write(self, msg: bytes) -> None:
        """One record, whole or not at all (a partial write is cut off again). Raises OSError."""
        if self.f.closed or self._torn:  # a torn record left behind: cut it off before appending after it
            if not self.f.closed:
                self.f.close()
            self._cur_range = self._repair(self.path)
            self.f = self.path.open("ab", buffering=0)
            self._torn = False
        if self.f.tell() + 4 + len(msg) > self.max_bytes and self.f.tell() > 0:
            self._rotate()
        pos = self.f.tell()
        rec = memoryview(len(msg).to_bytes(4, "little") + msg)
        try:
            while rec:
                rec = rec[self.f.write(rec):]
        except OSError:
            try:
                self.f.truncate(pos)
                self.f.seek(pos)
            except OSError:  # cannot even cut it: repaired before the next write (or at the next open)
                self._torn = True
            raise
        seq = _code_seq(msg)
        if seq is not None:
            lo, hi = self._cur_range or (seq, seq)
            self._cur_range = (min(lo, seq), max(hi, seq))

    def find(self, seqs: list[int]) -> dict[int, bytes]:
        """The logged code messages of these sequence numbers (those still in the log), as first sent. A
        file whose sequence numbers cannot hold any of them is not read."""
        want = set(int(s) & 0xFFFFFFFF for s in seqs)
        with self.lock:
            found = {s: self.cache[s] for s in want if s in self.cache}
            found.update({s: m for m in self.unwritten if (s := _code_seq(m)) in want})
            spans = [(self.path, self._cur_range)] + [(self.dir / f"codes.log.{i + 1}", r)
                                                      for i, r in enumerate(self._ranges)]
        rest = want - set(found)
        if rest:
            for p, span in spans:
                if span is None or not any(span[0] <= s <= span[1] for s in rest):
                    continue
                for rec in self.read(p):  # (a rotation meanwhile: this file may have moved on; then not found)
                    s = _code_seq(rec)
                    if s in rest and s not in found:
                        found[s] = rec
                if len(found) == len(want):
                    break
        return found

    @classmethod
    def _seq_range(cls, path: Path) -> tuple[int, int] | None:
        """Lowest and highest sequence number of the code messages in a log file (None: none, or no file)."""
        seqs = [q for q in map(_code_seq, cls.read(path)) if q is not None]
        return (min(seqs), max(seqs)) if seqs else None

    def _rotate(self) -> None:
        """``codes.log`` -> ``codes.log.1`` -> ... (the oldest dropped), under the lock. Raises OSError (the
        next write reopens the log; the files' sequence ranges are read again from the disk)."""
        self.f.close()
        try:
            for i in range(self.backups - 1, 0, -1):
                src = self.dir / f"codes.log.{i}"
                if src.exists():
                    src.replace(self.dir / f"codes.log.{i + 1}")
            if self.backups:
                self.path.replace(self.dir / "codes.log.1")
                self._ranges = [self._cur_range] + self._ranges[:-1]
            else:
                self.path.unlink()
        except OSError:
            self._ranges = [self._seq_range(self.dir / f"codes.log.{i}") for i in range(1, self.backups + 1)]
            raise
        self._cur_range = None
        self.f = self.path.open("ab", buffering=0)

    def close(self) -> None:
        """Write what waits for the disk if it can, and close; never raises (a failure is logged)."""
        with self.lock:
            if self.unwritten and not self._write_unwritten():
                log.error("code log %s: %d records could not be written before closing", self.path,
                          len(self.unwritten))
            try:
                self.f.close()
            except OSError as e:
                log.error("code log %s: closing failed: %s", self.path, e)

    @staticmethod
    def _repair(path: Path) -> tuple[int, int] | None:
        """Cut a torn last record off ``path`` (see the class); returns the sequence numbers it holds
        (lowest, highest) or None."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        records, end = CodeLog._records(data)
        if end != len(data):
            log.warning("code log %s: its last record was torn (%d bytes): cut off", path, len(data) - end)
            with path.open("r+b") as f:
                f.truncate(end)
        seqs = [q for q in map(_code_seq, records) if q is not None]
        return (min(seqs), max(seqs)) if seqs else None

    @staticmethod
    def _records(data: bytes) -> tuple[list[bytes], int]:
        """The whole ``[uint32 length][message]`` records of a log file's bytes, and where the last one ends."""
        out, i = [], 0
        while i + 4 <= len(data):
            n = int.from_bytes(data[i:i + 4], "little")
            if i + 4 + n > len(data):
                break
            out.append(data[i + 4:i + 4 + n])
            i += 4 + n
        return out, i

    @staticmethod
    def read(path: str | Path) -> list[bytes]:
        """All message records of one log file (a torn last record is ignored; a missing file has none)."""
        try:
            return CodeLog._records(Path(path).read_bytes())[0]
        except FileNotFoundError:
            return []


def curve_keys(cfg: EdgeConfig) -> tuple[bytes, bytes, bytes] | None:
    """``(this drone's public key, its secret key, the ground's public key)`` (z85 bytes), or None without CURVE.

    Raises:
        ValueError: half a configuration, unreadable certificates, a certificate without its secret
            key, a server key that is not 40 z85 characters, or a libzmq without CURVE.
    """
    import zmq

    if not cfg.curve_server_key and not cfg.curve_secret_file:
        return None
    if not cfg.curve_server_key or not cfg.curve_secret_file:
        raise ValueError("CURVE needs both curve_server_key (the ground's public key or its .key file) and "
                         "curve_secret_file (this drone's .key_secret, from voxlink keys)")
    if not zmq.has("curve"):
        raise ValueError("this libzmq has no CURVE support")
    import zmq.auth

    try:
        pub, sec = zmq.auth.load_certificate(cfg.curve_secret_file)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the CURVE certificate {cfg.curve_secret_file}: {e}") from e
    if sec is None:
        raise ValueError(f"{cfg.curve_secret_file} holds no secret key (use the .key_secret file)")
    server = cfg.curve_server_key
    if Path(server).is_file():
        try:
            server_pub, _ = zmq.auth.load_certificate(server)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the ground's certificate {server}: {e}") from e
    else:
        server_pub = server.strip().encode()
    if len(server_pub) != 40:
        raise ValueError(f"curve_server_key must be the ground's 40-character z85 public key or its .key file, "
                         f"got {server!r}")
    return pub, sec, server_pub


def apply_curve(s, cfg: EdgeConfig) -> None:
    """Make ``s`` a CURVE client of the ground (before connecting), if the config has keys.

    Raises:
        ValueError: see :func:`curve_keys`.
    """
    keys = curve_keys(cfg)
    if keys is not None:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = keys


def make_socket(ctx, cfg: EdgeConfig):
    """The ZeroMQ socket: PUB (or PUSH), high-water mark, heartbeats, optional CURVE; connected/bound.

    Raises:
        ValueError: unknown socket type or bad CURVE key files.
    """
    import zmq

    kinds = {"pub": zmq.PUB, "push": zmq.PUSH}
    if cfg.socket not in kinds:
        raise ValueError(f"socket must be pub or push, got {cfg.socket!r}")
    s = ctx.socket(kinds[cfg.socket])
    s.setsockopt(zmq.SNDHWM, cfg.hwm)
    s.setsockopt(zmq.LINGER, 2000)
    s.setsockopt(zmq.HEARTBEAT_IVL, cfg.heartbeat_ms)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, cfg.heartbeat_ms * 3)
    apply_curve(s, cfg)
    for ep in cfg.bind:
        s.bind(ep)
    for ep in cfg.connect:
        s.connect(ep)
    return s


class EdgeDaemon:
    """Runs the capture -> encode -> send loop (see the module docstring).

    Raises:
        voxlink.backends.BackendUnavailable: no backend. edge.sources.SourceError: bad source.
        ValueError: bad config (socket kind, an engine of another K than the model).
    """

    def __init__(self, cfg: EdgeConfig):
        from voxlink.backends import probe
        from voxlink.modelfile import read_model_info

        self.cfg = cfg
        info = read_model_info(cfg.model)  # metadata only: no PyTorch
        self.backend = probe(cfg.backend, model=cfg.model, onnx_path=cfg.onnx, engine_path=cfg.engine,
                             iterations=cfg.iterations, psnr_db=cfg.psnr_db)
        fp = info.fingerprint
        if fp is None:  # a model file written without its fingerprint: compute it (needs PyTorch)
            from voxlink.weights import load_model

            fp = load_model(info.path)[0].fingerprint()
        if self.backend.code_bits != info.code_bits:
            raise ValueError(f"backend {self.backend.name} produces {self.backend.code_bits}-bit codes, model "
                             f"{info.name} expects {info.code_bits}")
        if self.backend.fingerprint in (b"", b"\0" * 8):
            # a graph without voxlink's metadata, an engine without its .json: its codes could be any
            # model's, and the ground (which trusts the fingerprint sent with them) would decode garbage
            if not cfg.allow_unverified:
                raise ValueError(f"backend {self.backend.name} does not record which model it was built from (an ONNX "
                                 f"graph without voxlink.fingerprint, a TensorRT engine without its .json): export it "
                                 f"again with voxlink export, or set allow_unverified = true if you are sure it is "
                                 f"{info.name}'s encoder")
            log.warning("backend %s records no model fingerprint: sending its codes as %s's (allow_unverified)",
                        self.backend.name, info.name)
        elif self.backend.fingerprint != fp:
            raise ValueError(f"backend {self.backend.name} was built from another model (fingerprint "
                             f"{bytes.hex(self.backend.fingerprint)} != {bytes.hex(fp)})")
        self.model_name, self.frame_kind = info.name, info.frame
        self.fp = fp
        K_capture = None
        if cfg.intrinsics:
            fx, fy, cx, cy = cfg.intrinsics
            K_capture = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        self.source = open_source(cfg.source, K_capture, cfg.orbit_views, cfg.orbits)
        self.stats = Counter()
        self.encode_ms: deque[float] = deque(maxlen=1000)
        self.stop = threading.Event()
        self.q: queue.Queue[Capture] = queue.Queue(maxsize=4)
        self.epoch = time.time()
        self.seq = 0  # set from the code log in run()
        self.first_seq = 0
        self.info_seq = 0
        self.exit_code = 0

    #: consecutive read failures after which a live source is opened again (then every as many more)
    REOPEN_AFTER = 20
    #: consecutive read failures after which a file, folder or simulation counts as broken
    GIVE_UP_AFTER = 50
    #: the wait after the n-th failure in a row: n x BACKOFF_S, at most BACKOFF_MAX_S (seconds)
    BACKOFF_S, BACKOFF_MAX_S = 0.1, 2.0

    def _capture(self) -> None:
        """The capture thread: frames into the queue, then the end marker (None), whatever happens."""
        try:
            self._capture_loop()
        except Exception:  # noqa: BLE001 - a bug here must not leave the main loop waiting for ever
            log.exception("the capture thread failed")
            self.stats["capture_thread_failed"] += 1
            self.exit_code = 1
        finally:
            self._put_waiting(None)  # the end marker always reaches the main loop (it drains the queue)

    def _put_waiting(self, item) -> None:
        """Put ``item`` in the queue, waiting as long as it is full (until the daemon stops)."""
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _capture_loop(self) -> None:
        period = 1.0 / self.cfg.fps if self.cfg.fps > 0 else 0.0
        failures = 0
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                f = self.source.read()
                failures = 0
            except SourceEnded as e:
                log.info("%s", e)
                self.stats["source_ended"] += 1
                break
            except Exception as e:  # noqa: BLE001 - SourceError, or a driver's own: counted, tried again
                failures += 1
                self.stats["capture_errors"] += 1
                if failures <= 3 or failures % 50 == 0:
                    log.warning("capture failed (%d in a row): %s", failures, e)
                if not self.source.live and failures >= self.GIVE_UP_AFTER:
                    log.error("source %s failed %d times in a row: giving up", self.cfg.source, failures)
                    self.exit_code = 1
                    break
                if self.source.live and failures % self.REOPEN_AFTER == 0:  # a camera never gives up
                    try:
                        self.source.reopen()
                        self.stats["source_reopened"] += 1
                    except Exception as e2:  # noqa: BLE001
                        log.warning("cannot reopen the source: %s", e2)
                self.stop.wait(min(self.BACKOFF_S * failures, self.BACKOFF_MAX_S))
                continue
            if f.resized_from != (128, 128):
                self.stats["frames_resized"] += 1
            if not self.source.live:  # files, folders, simulations: nothing is lost, the source waits
                self._put_waiting(f)
            else:
                try:
                    self.q.put_nowait(f)
                except queue.Full:  # a live camera is behind: drop the oldest frame, keep the newest
                    try:
                        self.q.get_nowait()
                        self.stats["frames_dropped_queue"] += 1
                    except queue.Empty:
                        pass
                    self.q.put_nowait(f)
            self.stats["frames_captured"] += 1
            if self.cfg.max_frames and self.stats["frames_captured"] >= self.cfg.max_frames:
                break
            if period:
                self.stop.wait(max(0.0, period - (time.monotonic() - t0)))

    def _info(self) -> bytes:
        K = self.source.K if self.source.K is not None else camera.intrinsics(128)
        info = StreamInfo(stream=self.cfg.stream_id, seq=self.info_seq, fingerprint=bytes.hex(self.fp),
                          code_bits=self.backend.code_bits, K=K, model=self.model_name, frame=self.frame_kind,
                          epoch_unix=self.epoch, first_seq=self.first_seq,
                          last_seq=(self.seq - 1) & 0xFFFFFFFF if self.seq != self.first_seq else None,
                          backchannel=bool(self.cfg.backchannel), extra={"backend": self.backend.name})
        self.info_seq += 1
        return encode_info(info)

    def _send(self, sock, buf: bytes) -> bool:
        import zmq

        try:
            sock.send(buf, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.stats["send_dropped_hwm"] += 1
            return False

    def _parse_request(self, raw: bytes) -> list[int]:
        """The sequence numbers a back-channel request asks for (at most 4,096).

        Raises:
            ValueError: not ``{"stream": this drone's id, "seqs": [int, ...]}`` with numbers in 0..2^32-1, or
                over 64 KiB (the ground asks for at most 512 numbers a request).
        """
        if len(raw) > 64 << 10:
            raise ValueError(f"{len(raw)} bytes, more than any gap request")
        try:
            req = json.loads(raw)
        except (ValueError, RecursionError) as e:  # RecursionError: a JSON nested past Python's limit
            raise ValueError(f"not JSON: {type(e).__name__}") from None
        if not isinstance(req, dict) or not isinstance(req.get("seqs"), list):
            raise ValueError("not an object with a list of seqs")
        if req.get("stream", self.cfg.stream_id) != self.cfg.stream_id:
            raise ValueError(f"asks for stream {req.get('stream')!r}, this drone is {self.cfg.stream_id}")
        seqs = req["seqs"][:4096]
        if not all(type(x) is int and 0 <= x <= 0xFFFFFFFF for x in seqs):
            raise ValueError("seqs must be integers in 0..2^32-1")
        return seqs

    def _backchannel(self, s, codelog: CodeLog) -> None:
        """Answer the ground's gap requests from the code log (a thread, on its own DEALER socket ``s``).
        A malformed request is counted (``backchannel_bad_requests``), an unexpected error too
        (``backchannel_errors``); neither ends the thread."""
        import zmq

        hello = json.dumps({"hello": self.cfg.stream_id}).encode()
        last_hello, last_warn = 0.0, -1e9
        try:
            while not self.stop.is_set():
                try:
                    if time.monotonic() - last_hello >= self.cfg.info_interval_s:
                        try:
                            s.send(hello, zmq.NOBLOCK)
                        except zmq.Again:
                            pass
                        last_hello = time.monotonic()
                    if not s.poll(200):
                        continue
                    raw = s.recv()
                    try:
                        seqs = self._parse_request(raw)
                    except ValueError as e:
                        self.stats["backchannel_bad_requests"] += 1
                        if time.monotonic() - last_warn >= 5.0:
                            log.warning("bad back-channel request (%d so far): %s", self.stats["backchannel_bad_requests"], e)
                            last_warn = time.monotonic()
                        continue
                    found = codelog.find(seqs)
                    for q in seqs:
                        buf = found.get(q)
                        if buf is None:
                            self.stats["backchannel_not_in_log"] += 1
                            continue
                        try:
                            s.send(buf, zmq.NOBLOCK)
                            self.stats["backchannel_resent"] += 1
                        except zmq.Again:
                            self.stats["backchannel_dropped_hwm"] += 1
                    log.info("back channel: the ground asked for %d views, %d resent from the log", len(seqs), len(found))
                except zmq.ContextTerminated:
                    return
                except Exception:  # noqa: BLE001 - gap recovery must outlive any one request
                    self.stats["backchannel_errors"] += 1
                    if time.monotonic() - last_warn >= 5.0:
                        log.exception("back channel: unexpected error (%d so far)", self.stats["backchannel_errors"])
                        last_warn = time.monotonic()
                    self.stop.wait(0.2)
        finally:
            s.close(0)

    def _backchannel_socket(self, ctx):
        """The back channel's DEALER socket, connected (in the main thread, so a bad endpoint stops the
        start with its error). (No ``MAXMSGSIZE``: libzmq 4.3 does not reconnect after dropping an
        oversized message, which would end gap recovery; :meth:`_parse_request` refuses them.)

        Raises:
            zmq.ZMQError: a malformed endpoint. ValueError: bad CURVE keys.
        """
        import zmq

        s = ctx.socket(zmq.DEALER)
        try:
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100000)
            apply_curve(s, self.cfg)
            for ep in self.cfg.backchannel:
                s.connect(ep)
        except BaseException:
            s.close(0)
            raise
        return s

    def _encode_send(self, f: Capture, sock, codelog: CodeLog) -> int:
        """Encode one capture, send it, then log it. Returns the bytes sent (0 where the send dropped it).

        Raises:
            whatever the backend raises (the caller counts it).
        """
        t0 = time.perf_counter()
        code = self.backend.encode_views(to_input_array(f.view[None]))[0]
        self.encode_ms.append((time.perf_counter() - t0) * 1e3)
        msg = CodeMessage(stream=self.cfg.stream_id, object_id=self.cfg.object_id, seq=self.seq,
                          t_ms=int((f.t - self.epoch) * 1000) & 0xFFFFFFFF, fingerprint=fingerprint32(self.fp),
                          n_bits=len(code), payload=pack_bits(code),
                          pose=f.pose if self.cfg.send_pose else None, run=run_tag(self.epoch))
        buf = encode_code(msg)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        try:
            sent = self._send(sock, buf)  # first: a full disk must not hold back the link
        finally:  # logged even if the send raised: the back channel can still fill the gap
            if not codelog.append(buf):
                self.stats["log_write_errors"] += 1
        if not sent:
            return 0
        self.stats["codes_sent"] += 1
        self.stats["bytes_sent"] += len(buf)
        return len(buf)

    #: encoder failures in a row after which the daemon exits non-zero (so that systemd starts it afresh)
    MAX_ENCODE_FAILURES = 50

    def run(self) -> int:
        """Run until the source ends, ``max_frames``, or SIGINT / SIGTERM.

        Returns:
            the exit code: 0, or 1 where a file, folder or simulation source broke for good, the capture
            thread failed, or the encoder failed ``MAX_ENCODE_FAILURES`` times in a row.

        Raises:
            zmq.ZMQError: a malformed endpoint. OSError: the code log folder cannot be written. ValueError:
                bad CURVE keys. (All at start, before a frame is read.)
        """
        import zmq

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, lambda *_: self.stop.set())
            except ValueError:  # not the main thread (tests): the caller sets self.stop
                pass
        ctx = zmq.Context.instance()
        codelog = CodeLog(self.cfg.log_dir, self.cfg.log_max_bytes, self.cfg.log_backups, self.cfg.log_cache)
        try:
            sock = make_socket(ctx, self.cfg)
            try:
                bc_sock = self._backchannel_socket(ctx) if self.cfg.backchannel else None
            except BaseException:
                sock.close(0)
                raise
        except BaseException:
            codelog.close()
            raise
        last = codelog.last_seq()
        self.seq = self.first_seq = 0 if last is None else (last + 1) & 0xFFFFFFFF
        if last is not None:
            log.info("code log %s ends at seq %d: this run starts at %d", codelog.path, last, self.seq)
        bc = None
        if bc_sock is not None:
            bc = threading.Thread(target=self._backchannel, args=(bc_sock, codelog), name="backchannel", daemon=True)
            bc.start()
        log.info("edge: source %s, backend %s, %d-bit codes, %s %s", self.cfg.source, self.backend.name,
                 self.backend.code_bits, self.cfg.socket.upper(), ", ".join(self.cfg.connect + self.cfg.bind))
        cap = threading.Thread(target=self._capture, name="capture", daemon=True)
        try:
            self.backend.warmup()
            cap.start()
            last_info = last_metrics = time.monotonic()
            self._send(sock, self._info())
            sent_bytes_window, frames_window, encode_failures = 0, 0, 0
            while not self.stop.is_set():
                try:
                    f = self.q.get(timeout=0.5)
                except queue.Empty:
                    f = False  # nothing came: the stream infos and metrics go on all the same
                    if not cap.is_alive() and self.q.empty():  # (the end marker is always sent; a safety net)
                        break
                if f is None:
                    break
                if f is not False:
                    try:
                        sent_bytes_window += self._encode_send(f, sock, codelog)
                        encode_failures = 0
                    except Exception as e:  # noqa: BLE001 - an engine error costs this frame, not the daemon
                        encode_failures += 1
                        self.stats["encode_errors"] += 1
                        if encode_failures <= 3 or encode_failures % 50 == 0:
                            log.error("encoding a frame failed (%d in a row): %r", encode_failures, e)
                        if encode_failures >= self.MAX_ENCODE_FAILURES:
                            log.error("the encoder failed %d times in a row: stopping", encode_failures)
                            self.exit_code = 1
                            break
                    frames_window += 1
                now = time.monotonic()
                if now - last_info >= self.cfg.info_interval_s:
                    self._send(sock, self._info())
                    last_info = now
                if now - last_metrics >= self.cfg.metrics_interval_s:
                    dt = now - last_metrics
                    ms = np.array(self.encode_ms) if self.encode_ms else np.zeros(1)
                    log.info("%.1f frames/s  encode p50 %.1f ms p99 %.1f ms  %.0f bytes/s  queue %d  dropped %d%s",
                             frames_window / dt, np.percentile(ms, 50), np.percentile(ms, 99), sent_bytes_window / dt,
                             self.q.qsize(), self.stats["frames_dropped_queue"] + self.stats["send_dropped_hwm"],
                             f"  code log: {len(codelog.unwritten)} records wait for the disk" if codelog.unwritten else "")
                    last_metrics, sent_bytes_window, frames_window = now, 0, 0
        finally:
            self.stop.set()
            # the capture thread may be inside the source (an OSMesa render): closing the source
            # under it crashed the process on SIGTERM, so wait for it first
            if cap.is_alive():
                cap.join(timeout=10)
            try:
                self._send(sock, self._info())
            except Exception as e:  # noqa: BLE001 - shutting down: the rest must still run
                log.warning("last stream info not sent: %r", e)
            if bc is not None:
                bc.join(timeout=2)
            codelog.close()
            if codelog.lost:
                self.stats["log_lost"] = codelog.lost
            sock.close()
            try:
                self.source.close()
            except Exception as e:  # noqa: BLE001
                log.warning("closing the source failed: %r", e)
            log.info("edge stopped: %s", dict(self.stats))
        return self.exit_code
