"""The ground's durable session record: an MCAP file (``mcap`` library) that ROS 2 tools and
Foxglove open.

Channels:

- ``/voxlink/wire`` (message encoding ``voxlink.wire.v1``, no schema): every accepted message
  exactly as received, code messages and (changed) stream infos, with the receive time as log time.
  This is what a restarted ground rebuilds from and what ``voxlink ground --replay`` plays.
- ``/voxlink/views`` (JSON, JSON schema ``voxlink.View``): per accepted code its header fields and
  pose, readable in Foxglove's raw message panel.
- ``/voxlink/points``, ``/voxlink/voxels``, ``/voxlink/depth``, ``/voxlink/camera_pose``,
  ``/voxlink/calibration`` (JSON, Foxglove's ``foxglove.PointCloud``, ``foxglove.CompressedImage``,
  ``foxglove.PoseInFrame`` and ``foxglove.CameraCalibration`` schemas as JSON schema): the ground's
  outputs, at every snapshot the fused cloud and the occupied voxel centres, and per view its decoded
  depth image (a 16-bit PNG in millimetres, 0 = no object: the file the ground writes), its camera pose
  and the calibration, all three with the view's receive time and the frame ``<object>/camera``.

The file is written without chunks and flushed after every batch of records, so a ground that is
killed keeps every record up to its last flush; :func:`read_wire` reads such an unfinished file (no
footer) up to its last whole record.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("voxlink.ground.record")
WIRE_TOPIC = "/voxlink/wire"
WIRE_ENCODING = "voxlink.wire.v1"

_VIEW_SCHEMA = {
    "title": "voxlink.View", "type": "object",
    "properties": {"stream": {"type": "integer"}, "object_id": {"type": "integer"}, "seq": {"type": "integer"},
                   "t_ms": {"type": "integer"}, "n_bits": {"type": "integer"}, "source": {"type": "string"},
                   "pose": {"type": ["array", "null"], "items": {"type": "number"},
                            "description": "camera-to-object 4x4, row-major, metres"}},
}
_TIME = {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}}
_VEC3 = {"type": "object", "properties": {k: {"type": "number"} for k in "xyz"}}
_QUAT = {"type": "object", "properties": {k: {"type": "number"} for k in "xyzw"}}
_POSE = {"type": "object", "properties": {"position": _VEC3, "orientation": _QUAT}}
#: Foxglove's schemas (https://docs.foxglove.dev/docs/visualization/message-schemas), as JSON schema.
FOXGLOVE_SCHEMAS = {
    "foxglove.PointCloud": {
        "title": "foxglove.PointCloud", "type": "object",
        "properties": {"timestamp": _TIME, "frame_id": {"type": "string"}, "pose": _POSE,
                       "point_stride": {"type": "integer"},
                       "fields": {"type": "array", "items": {"type": "object", "properties": {
                           "name": {"type": "string"}, "offset": {"type": "integer"}, "type": {"type": "integer"}}}},
                       "data": {"type": "string", "contentEncoding": "base64"}}},
    "foxglove.CompressedImage": {
        "title": "foxglove.CompressedImage", "type": "object",
        "properties": {"timestamp": _TIME, "frame_id": {"type": "string"},
                       "data": {"type": "string", "contentEncoding": "base64"}, "format": {"type": "string"}}},
    "foxglove.PoseInFrame": {
        "title": "foxglove.PoseInFrame", "type": "object",
        "properties": {"timestamp": _TIME, "frame_id": {"type": "string"}, "pose": _POSE}},
    "foxglove.CameraCalibration": {
        "title": "foxglove.CameraCalibration", "type": "object",
        "properties": {"timestamp": _TIME, "frame_id": {"type": "string"}, "width": {"type": "integer"},
                       "height": {"type": "integer"}, "distortion_model": {"type": "string"},
                       "D": {"type": "array", "items": {"type": "number"}},
                       "K": {"type": "array", "items": {"type": "number"}},
                       "R": {"type": "array", "items": {"type": "number"}},
                       "P": {"type": "array", "items": {"type": "number"}}}},
}


def _stamp(t: float) -> dict:
    sec = int(t)
    return {"sec": sec, "nsec": int((t - sec) * 1e9)}


def _quat_xyzw(R: np.ndarray) -> dict:
    from voxlink.protocol import _quat_from_matrix

    w, x, y, z = _quat_from_matrix(R)
    return {"x": float(x), "y": float(y), "z": float(z), "w": float(w)}


class Recorder:
    """Appends to one MCAP file (see the module docstring).

    Args:
        path: the file to create (its folder is made). fsync_interval_s: at most this long between
            ``os.fsync`` calls (records are flushed to the OS after every call of :meth:`flush`).

    Raises:
        OSError: the file cannot be created.
    """

    def __init__(self, path: str | Path, fsync_interval_s: float = 2.0):
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync_interval_s = fsync_interval_s
        self.f = self.path.open("xb")
        try:
            self._start(Writer, CompressionType)
        except BaseException:
            try:  # a full disk: leave no file that holds no whole header behind
                self.f.close()  # (closing flushes, and fails again on a full disk)
            except OSError:
                pass
            self.path.unlink(missing_ok=True)
            raise
        self.closed = False

    def _start(self, Writer, CompressionType) -> None:
        """The MCAP header, schemas and channels, made durable."""
        self.w = Writer(self.f, use_chunking=False, compression=CompressionType.NONE)
        self.w.start(profile="", library="voxlink")
        self._last_sync = time.monotonic()
        self._seq = 0
        self._calibrated: dict[str, tuple] = {}  # frame id -> (its calibration, when last written)
        self.ch: dict[str, int] = {}
        self.ch["wire"] = self.w.register_channel(WIRE_TOPIC, WIRE_ENCODING, 0)
        sid = self.w.register_schema("voxlink.View", "jsonschema", json.dumps(_VIEW_SCHEMA).encode())
        self.ch["views"] = self.w.register_channel("/voxlink/views", "json", sid)
        for topic, name in (("points", "foxglove.PointCloud"), ("voxels", "foxglove.PointCloud"),
                            ("depth", "foxglove.CompressedImage"),
                            ("camera_pose", "foxglove.PoseInFrame"), ("calibration", "foxglove.CameraCalibration")):
            sid = self.w.register_schema(name, "jsonschema", json.dumps(FOXGLOVE_SCHEMAS[name]).encode())
            self.ch[topic] = self.w.register_channel(f"/voxlink/{topic}", "json", sid)
        self.flush(sync=True)

    def _add(self, channel: str, t: float, data: bytes) -> None:
        ns = int(t * 1e9)
        self._seq += 1
        self.w.add_message(self.ch[channel], log_time=ns, data=data, publish_time=ns, sequence=self._seq)

    def wire(self, buf: bytes, t_recv: float) -> None:
        """Record one accepted message exactly as received (``t_recv``: unix seconds)."""
        self._add("wire", t_recv, bytes(buf))

    def view(self, msg, t_recv: float, source: str) -> None:
        """Record a decoded view's header and pose as JSON (``msg``: :class:`voxlink.protocol.CodeMessage`)."""
        d = {"stream": msg.stream, "object_id": msg.object_id, "seq": msg.seq, "t_ms": msg.t_ms, "n_bits": msg.n_bits,
             "source": source, "pose": None if msg.pose is None else np.round(msg.pose, 7).reshape(-1).tolist()}
        self._add("views", t_recv, json.dumps(d).encode())

    def camera(self, frame_id: str, pose: np.ndarray | None, K: np.ndarray, size: int, t: float) -> None:
        """Record a view's camera: ``foxglove.PoseInFrame`` (camera-to-object, metres), and its
        ``foxglove.CameraCalibration`` where it is the frame's first, changed, or 10 s old (``t``: unix s)."""
        if pose is not None:
            p = {"timestamp": _stamp(t), "frame_id": frame_id,
                 "pose": {"position": dict(zip("xyz", map(float, pose[:3, 3]))), "orientation": _quat_xyzw(pose[:3, :3])}}
            self._add("camera_pose", t, json.dumps(p).encode())
        Kl = np.asarray(K, np.float64)
        # the calibration when it is new or changed for this frame, and every 10 s (so that a player that
        # seeks finds one nearby); not with every view: its JSON was a fifth of the record's cost a view
        key = (frame_id, Kl.tobytes(), int(size))
        last = self._calibrated.get(frame_id)
        if last is not None and last[0] == key and t - last[1] < 10.0:
            return
        self._calibrated[frame_id] = (key, t)
        cal = {"timestamp": _stamp(t), "frame_id": frame_id, "width": int(size), "height": int(size),
               "distortion_model": "plumb_bob", "D": [0.0] * 5, "K": Kl.reshape(-1).tolist(),
               "R": np.eye(3).reshape(-1).tolist(), "P": np.hstack([Kl, np.zeros((3, 1))]).reshape(-1).tolist()}
        self._add("calibration", t, json.dumps(cal).encode())

    def depth_png(self, frame_id: str, png: bytes, t: float) -> None:
        """Record one view's depth image as ``foxglove.CompressedImage`` (``format`` png).

        Args:
            frame_id: the view's camera frame. png: a 16-bit PNG, millimetres, 0 = no object. t: the
                view's receive time, unix seconds (that of its camera pose).
        """
        img = {"timestamp": _stamp(t), "frame_id": frame_id, "format": "png", "data": base64.b64encode(png).decode()}
        self._add("depth", t, json.dumps(img).encode())

    def points(self, frame_id: str, pts: np.ndarray, t: float, topic: str = "points") -> None:
        """Record a point cloud (float32 [N, 3] metres) as ``foxglove.PointCloud`` (x, y, z float32).

        ``topic``: ``points`` (the fused cloud) or ``voxels`` (centres of the occupied voxels, p > 0.4).
        """
        p = np.ascontiguousarray(pts, np.float32)
        pc = {"timestamp": _stamp(t), "frame_id": frame_id,
              "pose": {"position": {"x": 0.0, "y": 0.0, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
              "point_stride": 12, "fields": [{"name": n, "offset": 4 * i, "type": 7} for i, n in enumerate("xyz")],
              "data": base64.b64encode(p.tobytes()).decode()}
        self._add(topic, t, json.dumps(pc).encode())

    def flush(self, sync: bool = False) -> None:
        """Hand buffered records to the OS; ``os.fsync`` when ``sync`` or every ``fsync_interval_s``."""
        self.f.flush()
        if sync or time.monotonic() - self._last_sync >= self.fsync_interval_s:
            os.fsync(self.f.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Write the MCAP summary and footer, and close the file."""
        if self.closed:
            return
        self.closed = True
        self.w.finish()
        self.flush(sync=True)
        self.f.close()


def read_wire(path: str | Path) -> Iterator[tuple[bytes, float]]:
    """The ``/voxlink/wire`` messages of an MCAP file, in file order: ``(message bytes, receive time s)``.

    A file that was not finished (the ground was killed) is read up to its last whole record.

    Raises:
        OSError: unreadable file. mcap.exceptions.McapError: not an MCAP file.
    """
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    wire_ids: set[int] = set()
    with open(path, "rb") as f:
        it = StreamReader(f, record_size_limit=1 << 26).records
        first = True
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except (McapError, EOFError, ValueError, OSError, IndexError) as e:
                if first:
                    raise
                log.info("%s ends without a footer (%s): read up to its last whole record", path, type(e).__name__)
                return
            except Exception as e:  # the reader's struct errors on a torn record
                if first:
                    raise
                log.info("%s ends in a torn record (%s): read up to it", path, e)
                return
            first = False
            if isinstance(rec, Channel) and rec.topic == WIRE_TOPIC:
                wire_ids.add(rec.id)
            elif isinstance(rec, Message) and rec.channel_id in wire_ids:
                yield bytes(rec.data), rec.log_time / 1e9
