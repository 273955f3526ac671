"""The drone daemon under faults: a camera that sends garbage or stops, a full disk, a torn code log,
malformed back-channel requests, a missing TensorRT engine, an unverifiable encoder graph, startup
mistakes. Each is counted and logged, and the daemon keeps streaming (or refuses to start, saying why)."""

from __future__ import annotations

import errno
import json
import os
import queue
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import zmq

from edge.daemon import CodeLog, EdgeConfig, EdgeDaemon, _code_seq
from edge.sources import Capture, OpenCVSource, Source, SourceEnded, SourceError
from voxlink.net import free_port
from voxlink.protocol import CodeMessage, StreamInfo, decode, encode_code
from voxlink.weights import DEFAULT_MODEL, shipped_models

needs_model = pytest.mark.skipif(DEFAULT_MODEL not in shipped_models(), reason=f"no shipped {DEFAULT_MODEL} weights")


def _msg(seq: int) -> bytes:
    return encode_code(CodeMessage(stream=1, object_id=0, seq=seq, t_ms=seq, fingerprint=0, n_bits=64,
                                   payload=bytes([seq % 256]) * 8))


def _daemon(tmp_path, **kw) -> EdgeDaemon:
    """A daemon on the shipped model's ONNX graph, its source a folder of two images (replaced by tests)."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(2):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), np.full((96, 128, 3), 40 * i, np.uint8))
    cfg = dict(source=str(tmp_path / "imgs"), backend="onnxruntime", connect=[f"tcp://127.0.0.1:{free_port()}"],
               log_dir=str(tmp_path / "log"))
    cfg.update(kw)
    return EdgeDaemon(EdgeConfig(**cfg))


class FailingFile:
    """Stands in for the code log's file on a failing disk: while ``failing``, a write reaches the file in
    part (5 bytes) and then raises OSError(``err``), and with ``truncate_fails`` cutting it off fails too."""

    closed = False

    def __init__(self, real, err: int, truncate_fails: bool = False):
        self.real, self.err, self.truncate_fails, self.failing = real, err, truncate_fails, True

    def write(self, b):
        if self.failing:
            self.real.write(bytes(b[:5]))
            raise OSError(self.err, os.strerror(self.err))
        return self.real.write(b)

    def truncate(self, *a):
        if self.failing and self.truncate_fails:
            raise OSError(self.err, os.strerror(self.err))
        return self.real.truncate(*a)

    def __getattr__(self, name):
        return getattr(self.real, name)


class FakeCamera:
    """Stands in for ``cv2.VideoCapture``: ``script(n)`` gives the n-th read's frame, or None (no frame)."""

    def __init__(self, script):
        self.script, self.n, self.released = script, 0, 0

    def read(self):
        self.n += 1
        img = self.script(self.n)
        return (img is not None), img

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def release(self):
        self.released += 1


def _live_camera(script) -> OpenCVSource:
    src = OpenCVSource.__new__(OpenCVSource)
    src.spec, src.K_capture, src.live, src.cap = "0", None, True, FakeCamera(script)
    return src


@needs_model
def test_a_malformed_camera_frame_is_counted_and_streaming_goes_on(tmp_path):
    frame = np.full((480, 640, 3), 90, np.uint8)
    d = _daemon(tmp_path, max_frames=6)
    d.source = _live_camera(lambda n: np.zeros((480, 640, 2), np.uint8) if n == 3 else frame)  # a raw YUYV buffer
    assert d.run() == 0
    assert d.stats["capture_errors"] == 1 and d.stats["codes_sent"] == 6


@needs_model
def test_a_camera_that_stops_is_reopened_and_never_given_up(tmp_path):
    """A live camera that delivers nothing for longer than a file source would be given (50 failures) is
    opened again every REOPEN_AFTER failures, and streams again once it is back."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    d = _daemon(tmp_path, max_frames=4)
    d.BACKOFF_S = d.BACKOFF_MAX_S = 0.001
    cam = FakeCamera(lambda n: frame if n <= 2 or n > 130 else None)
    src = _live_camera(lambda n: None)
    src.cap = cam
    src._open = lambda: cam  # reopening gives the same (fake) device back
    d.source = src
    assert d.run() == 0
    assert d.stats["capture_errors"] == 128 and d.stats["codes_sent"] == 4
    assert d.stats["source_reopened"] == 128 // d.REOPEN_AFTER and cam.released >= 6


@needs_model
def test_a_broken_file_source_ends_the_daemon_with_an_error_code(tmp_path):
    class Broken(Source):
        def read(self):
            raise SourceError("render failed")

    d = _daemon(tmp_path)
    d.BACKOFF_S = d.BACKOFF_MAX_S = 0.001
    d.source = Broken()
    assert d.run() == 1 and d.stats["capture_errors"] == d.GIVE_UP_AFTER


def test_the_end_marker_waits_for_a_slow_encoder():
    """A file source's last frame and its end marker reach the main loop however long it is busy."""
    class One(Source):
        sent = False

        def read(self):
            if self.sent:
                raise SourceEnded("done")
            self.sent = True
            return Capture(view=np.zeros((128, 128, 3), np.uint8), t=time.time())

    d = EdgeDaemon.__new__(EdgeDaemon)
    d.cfg, d.source, d.stop, d.stats = EdgeConfig(), One(), threading.Event(), __import__("collections").Counter()
    d.q, d.exit_code = queue.Queue(maxsize=1), 0
    t = threading.Thread(target=d._capture)
    t.start()
    time.sleep(1.5)  # the encoder is busy with an earlier frame longer than any fixed wait for room
    got = [d.q.get(timeout=5)]
    try:
        got.append(d.q.get(timeout=5))
    finally:
        d.stop.set()
        t.join(5)
    assert isinstance(got[0], Capture) and got[1] is None


def test_a_full_disk_costs_the_code_log_nothing(tmp_path, monkeypatch):
    """Records the disk refuses (a partial write first, as ENOSPC does) are cut off again, kept in memory
    in order and written once the disk takes writes; append never raises; the back channel can answer
    from memory meanwhile."""
    log = CodeLog(tmp_path, max_bytes=1 << 20, cache=1000)
    log.RETRY_S = 0.0
    for s in range(3):
        assert log.append(_msg(s))
    disk = FailingFile(log.f, errno.ENOSPC)  # a disk that fills up: part of a record reaches it, then ENOSPC
    log.f = disk
    for s in range(3, 8):
        assert not log.append(_msg(s))
    assert log.write_errors == 5 and len(log.unwritten) == 5
    assert [_code_seq(r) for r in CodeLog.read(tmp_path / "codes.log")] == [0, 1, 2], "no torn record left"
    assert sorted(log.find([4, 6])) == [4, 6]
    disk.failing = False
    assert log.append(_msg(8))
    log.close()
    assert [_code_seq(r) for r in CodeLog.read(tmp_path / "codes.log")] == list(range(9))


def test_a_torn_last_record_is_cut_off_when_the_log_is_opened(tmp_path):
    """A daemon killed in the middle of a write leaves a torn record: a new run must not append after it
    (everything after would be unreadable, and the sequence numbers reused)."""
    log = CodeLog(tmp_path)
    for s in range(5):
        log.append(_msg(s))
    log.close()
    with open(tmp_path / "codes.log", "ab") as f:
        f.write((40).to_bytes(4, "little") + _msg(5)[:12])
    log = CodeLog(tmp_path)
    assert log.last_seq() == 4
    for s in range(5, 9):
        log.append(_msg(s))
    log.close()
    assert [_code_seq(r) for r in CodeLog.read(tmp_path / "codes.log")] == list(range(9))
    assert CodeLog(tmp_path).last_seq() == 8


def test_gap_requests_outside_the_logs_numbers_read_no_file(tmp_path, monkeypatch):
    """The ground asks again every 2 s for views the edge no longer has: that must not cost a scan of
    every log file each time."""
    log = CodeLog(tmp_path, max_bytes=2000, backups=3, cache=0)
    for s in range(40):
        log.append(_msg(s))
    reads = []
    real = CodeLog.read
    monkeypatch.setattr(CodeLog, "read", staticmethod(lambda p: (reads.append(p), real(p))[1]))
    assert sorted(log.find([39, 38])) == [38, 39]
    n = len(reads)
    assert log.find([100000, 5_000_000]) == {} and len(reads) == n
    oldest = min(s for p in log.files() for s in map(_code_seq, real(p)))
    assert sorted(log.find([oldest])) == [oldest]
    log.close()


@needs_model
@pytest.mark.parametrize("bad", [b'{"stream": 0, "seqs": [Infinity]}', b'{"stream": 0, "seqs": [1e400]}',
                                 b"[" * 60000, b"[" * 100000, b'{"stream": 0, "seqs": "12"}', b'{"stream": 7, "seqs": [0]}',
                                 b'{"stream": 0, "seqs": [true]}', b"\xff\xfe"])
def test_a_malformed_gap_request_is_counted_and_the_next_one_answered(tmp_path, bad):
    """A malformed request (over 64 KiB, not JSON, nested past Python's limit, numbers that are not
    sequence numbers, another drone's stream) is counted, and the next request is answered."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    d = _daemon(tmp_path, backchannel=[f"tcp://127.0.0.1:{port}"], fps=20.0, info_interval_s=0.5)
    d.source = _live_camera(lambda n: np.full((480, 640, 3), n % 255, np.uint8))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        assert router.poll(30000)
        ident, hello = router.recv_multipart()
        assert json.loads(hello) == {"hello": 0}
        deadline = time.time() + 30
        while d.stats["codes_sent"] < 2 and time.time() < deadline:
            time.sleep(0.05)

        def ask(payload):
            nonlocal ident
            router.send_multipart([ident, payload])
            got, t0 = [], time.time()
            while time.time() - t0 < 2:
                if router.poll(100):
                    who, m = router.recv_multipart()
                    if m.startswith(b"{"):
                        ident = who  # a hello: after a reconnect, the edge's new identity
                    else:
                        got.append(decode(m).seq)
            return got

        assert ask(bad) == []
        assert ask(b'{"stream": 0, "seqs": [0, 1]}') == [0, 1], "the back channel still answers"
        assert d.stats["backchannel_bad_requests"] == 1 and not d.stats["backchannel_errors"]
    finally:
        d.stop.set()
        t.join(30)
        router.close(0)


def test_a_missing_tensorrt_engine_falls_back_under_auto(tmp_path):
    pytest.importorskip("onnxruntime")
    from voxlink.backends import probe

    b = probe("auto", model=DEFAULT_MODEL, engine_path=str(tmp_path / "missing.engine"))
    assert not b.name.startswith("tensorrt")


@needs_model
def test_an_encoder_graph_that_does_not_say_its_model_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from voxlink.backends import OnnxBackend

    g = onnx.load(str(OnnxBackend.for_model(DEFAULT_MODEL).path))
    del g.metadata_props[:]
    onnx.save(g, str(tmp_path / "anonymous.onnx"))
    with pytest.raises(ValueError, match="allow_unverified"):
        _daemon(tmp_path, onnx=str(tmp_path / "anonymous.onnx"))
    assert _daemon(tmp_path, onnx=str(tmp_path / "anonymous.onnx"), allow_unverified=True).backend.code_bits == 1024
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 128, 128])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 128, 128])
    foreign = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)])
    foreign.ir_version = 8
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    from voxlink.backends import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="not a voxlink encoder graph"):
        OnnxBackend(tmp_path / "foreign.onnx")


def test_config_mistakes_are_named():
    assert EdgeConfig(connect="tcp://ground:5555").connect == ["tcp://ground:5555"]
    assert EdgeConfig(hwm=0, heartbeat_ms=0).hwm == 0  # ZeroMQ: no limit, no heartbeats
    for bad, what in [(dict(stream_id=300), "stream_id"), (dict(connect=["ground:5555"]), "connect"),
                      (dict(backchannel=["ground:5556"]), "backchannel"), (dict(fps=-1), "fps"),
                      (dict(object_id=1.5), "object_id"), (dict(intrinsics=[600, 600, 320]), "intrinsics"),
                      (dict(hwm=-1), "hwm")]:
        with pytest.raises(ValueError, match=what):
            EdgeConfig(**bad)


@needs_model
def test_startup_mistakes_end_with_a_message_not_a_traceback(tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    base = [sys.executable, "-m", "voxlink.cli", "edge", "--source", str(tmp_path / "imgs"), "--backend", "onnxruntime",
            "--max-frames", "1"]
    for extra, says in [(["--connect", "ground:5555"], "tcp://"),
                        (["--connect", "tcp://127.0.0.1:9", "--log-dir", "/proc/voxlink-log"], "cannot start")]:
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and says in r.stderr, r.stderr[-1500:]


@needs_model
def test_stream_infos_go_on_while_the_camera_sends_nothing(tmp_path):
    """The ground counts views lost at a stream's end from its stream infos: they must not stop when frames do."""
    pull = zmq.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    d = _daemon(tmp_path, connect=[f"tcp://127.0.0.1:{port}"], socket="push", info_interval_s=0.2)
    d.BACKOFF_S = d.BACKOFF_MAX_S = 0.05
    d.source = _live_camera(lambda n: None)  # a camera that delivers nothing
    t = threading.Thread(target=d.run)
    t.start()
    infos, t0 = 0, time.time()
    try:
        while time.time() - t0 < 2.0:
            if pull.poll(100) and isinstance(decode(pull.recv()), StreamInfo):
                infos += 1
    finally:
        d.stop.set()
        t.join(30)
        pull.close(0)
    assert infos >= 5, f"{infos} stream infos in 2 s at one per 0.2 s"


def test_gap_requests_find_every_record_still_on_disk_through_rotations(tmp_path):
    """The files' sequence ranges follow the rotations (a file system that reuses a freed inode for the new
    file once made a stale range hide records that were on disk)."""
    log = CodeLog(tmp_path, max_bytes=2000, backups=2, cache=0)
    for s in range(300):
        log.append(_msg(s))
        if s % 7 == 0:
            on_disk = sorted(q for p in log.files() for q in map(_code_seq, CodeLog.read(p)))
            assert sorted(log.find(on_disk)) == on_disk
    log.close()


def test_a_write_that_cannot_even_be_cut_off_is_repaired_before_the_next(tmp_path):
    """A write that fails part-way whose torn bytes cannot be cut off (the disk refuses that too): the log
    is repaired before anything is appended after the torn bytes, so every later record stays readable."""
    log = CodeLog(tmp_path, cache=0)
    log.RETRY_S = 0.0
    for s in range(3):
        log.append(_msg(s))
    disk = FailingFile(log.f, errno.EIO, truncate_fails=True)
    log.f = disk
    assert not log.append(_msg(3))
    disk.failing = False
    for s in range(4, 8):
        assert log.append(_msg(s))
    log.close()
    assert [_code_seq(r) for r in CodeLog.read(tmp_path / "codes.log")] == list(range(8))
    assert CodeLog(tmp_path).last_seq() == 7
