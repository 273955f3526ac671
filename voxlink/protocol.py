"""The wire protocol between drone and ground: one compact binary message per view, plus a
stream-info message at start and every few seconds. Plain structs and JSON only (never Python
object serialisation); every message is checked.

View-code message (little-endian), 24 bytes of header at any K, then the optional pose and the code::

    offset size field
    0      1    magic        0xB5
    1      1    version<<4 | kind      (version 1; kind 1 = code, 2 = stream info)
    2      1    flags        bit 0: a pose follows the header; bits 1..7: the run tag (code messages):
                                 :func:`run_tag` of the stream info's ``epoch_unix`` (1..127; 0: not said)
    3      1    stream id    (drone) 0..255
    4      4    fingerprint  first 4 bytes of the model fingerprint (uint32)
    8      2    object id    0..65535
    10     2    code length in bits (K)
    12     4    sequence number, per stream (uint32, wraps)
    16     4    capture time, ms since the stream's epoch (uint32)
    20     4    CRC32 of bytes 0..19, the pose and the payload
    24     28   pose (if flag): camera-to-object rotation as a unit quaternion (w, x, y, z) and the
                translation (x, y, z) in metres, 7 x float32
    ..     ceil(K/8) payload: the code, MSB first, +1 -> 1 (:func:`pack_bits`)

At K = 1024 a view without pose is 24 + 128 = 152 bytes; with pose 180 bytes.

Stream-info message: the same 24-byte header (object id 0, code length = K, the info's own
sequence number), then a UTF-8 JSON body: intrinsics ``K`` (3 x 3, pixels), ``image_size``,
``model`` (name), ``fingerprint`` (16 hex digits), ``code_bits``, ``frame``, ``epoch_unix`` (the
wall-clock time of capture time 0, seconds) and ``protocol``; optionally ``first_seq`` (the first
code sequence number of this run of the edge), ``last_seq`` (the last code sequence number sent so
far; absent before the first) and ``backchannel`` (true: the edge answers gap requests, see
``ground/station.py``). Other keys are kept in ``StreamInfo.extra``.

Delivery: a view is identified by (stream, sequence number); a receiver applies it once and counts
repeats (see ``ground/station.py``). Sequence numbers are per stream (not per object) and wrap at 2^32.
An edge that loses its code log numbers again from 0 under a new epoch; each view's run tag
(:func:`run_tag` of that epoch) tells a receiver which run, and so which numbering, the view belongs to
however late or early it comes beside the stream infos (see ``ground/delivery.py``).

Everything is checked before it is believed: magic, version, kind, CRC, lengths, a finite unit
quaternion and finite translation in the pose, finite positive focal lengths and a finite,
plausible epoch in the stream info, and a size limit (:data:`MAX_MESSAGE_BYTES`). Decoding failures
raise :class:`ProtocolError` whose ``reason`` is one of :data:`REASONS`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = 0xB5
VERSION = 1
KIND_CODE = 1
KIND_INFO = 2
FLAG_POSE = 0x01
#: Run tags (flags bits 1..7) are 1..RUN_TAGS; 0 means the sender does not say.
RUN_TAGS = 127
_HEAD = struct.Struct("<BBBBIHHII")  # 20 bytes
_CRC = struct.Struct("<I")
_POSE = struct.Struct("<7f")
HEADER_BYTES = _HEAD.size + _CRC.size  # 24
POSE_BYTES = _POSE.size  # 28
#: Largest message a receiver accepts (bytes): a view is at most 24 + 28 + 8192 bytes, an info a few hundred.
MAX_MESSAGE_BYTES = 64 * 1024
#: A pose's quaternion must have a norm within this of 1 (float32 rounding is about 1e-7).
QUAT_NORM_TOL = 1e-3
#: Largest accepted pose translation (metres) and stream epoch (unix seconds, year 2286).
MAX_TRANSLATION_M = 1e6
MAX_EPOCH_UNIX = 1e10
#: Reasons a message is rejected (counted by receivers under these names). The first group comes from
#: :func:`decode`, the second from receivers (``ground/station.py``).
REASONS = ("truncated", "bad_magic", "unknown_version", "unknown_kind", "bad_crc", "bad_length", "bad_info",
           "bad_pose", "bad_intrinsics", "bad_time", "too_large",
           "wrong_fingerprint", "wrong_code_length", "wrong_image_size", "unknown_stream", "stream_not_owned", "bad_seq", "multipart", "queue_full",
           "held_overflow", "internal_error")


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class CodeMessage:
    """One view's code on the wire.

    Attributes:
        stream: drone id 0..255.
        object_id: object id 0..65535.
        seq: per-stream sequence number (uint32).
        t_ms: capture time in ms since the stream's epoch (uint32).
        fingerprint: first 4 bytes of the model fingerprint, as uint32 (big-endian reading of the bytes).
        n_bits: K, the code length in bits.
        payload: the packed code, ``ceil(K / 8)`` bytes.
        pose: camera-to-object pose float64 [4, 4] (OpenCV convention), or None.
        run: the run tag, :func:`run_tag` of the epoch of the edge run that made the view (0: not said):
            which stream info the view belongs to, even when that info is late or lost.
    """

    stream: int
    object_id: int
    seq: int
    t_ms: int
    fingerprint: int
    n_bits: int
    payload: bytes
    pose: np.ndarray | None = None
    run: int = 0


@dataclass
class StreamInfo:
    """Stream parameters a ground station needs to decode (sent at start and periodically).

    Attributes:
        stream: drone id. seq: the info message's sequence number. fingerprint: full 8-byte model
        fingerprint (hex). code_bits: K. K: intrinsics float64 [3, 3] in pixels (of the 128 x 128
        view). image_size: view side in pixels. model: model name. frame: reconstruction frame.
        epoch_unix: wall-clock seconds at capture time 0. first_seq: first code sequence number of
        this run of the edge (None: not said). last_seq: last code sequence number sent so far (None:
        none yet / not said). backchannel: the edge answers gap requests. extra: other JSON keys.
    """

    stream: int
    seq: int
    fingerprint: str
    code_bits: int
    K: np.ndarray
    image_size: int = 128
    model: str = ""
    frame: str = "view"
    epoch_unix: float = 0.0
    first_seq: int | None = None
    last_seq: int | None = None
    backchannel: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def fingerprint32(self) -> int:
        """The 4-byte fingerprint that code messages carry."""
        return int(self.fingerprint[:8], 16)


def fingerprint32(fp: bytes) -> int:
    """uint32 of the first 4 bytes of an 8-byte model fingerprint (what code messages carry)."""
    return int.from_bytes(fp[:4], "big")


def pack_bits(bits) -> bytes:
    """Pack one code of +1/-1 (or 1/0) values into the wire payload, most significant bit first.

    A value ``> 0`` becomes bit 1, anything else bit 0; the last byte is padded with zero bits.
    Pure NumPy (the drone packs codes without PyTorch); :func:`voxlink.models.binarizer.pack_bits`
    calls this for tensors.

    Shape:
        bits: array-like [K] (any real dtype) -> ``ceil(K / 8)`` bytes.

    Raises:
        ValueError: not one-dimensional.
    """
    b = np.asarray(bits)
    if b.ndim != 1:
        raise ValueError(f"pack_bits takes one code [K], got shape {b.shape}")
    return np.packbits(b > 0).tobytes()


def unpack_bits(data: bytes, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``k`` bits of ``data`` as +1/-1.

    Returns:
        float32 [k] of +1.0 (bit 1) and -1.0 (bit 0).

    Raises:
        ValueError: ``data`` is not ``ceil(k / 8)`` bytes.
    """
    if len(data) != (k + 7) // 8:
        raise ValueError(f"a {k}-bit code is {(k + 7) // 8} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[:k]
    return bits.astype(np.float32) * 2.0 - 1.0


def _quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix (Shepperd's method)."""
    m = R
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q / np.linalg.norm(q)


def _matrix_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def capture_time_unix(epoch_unix: float, t_ms: int, near: float) -> float:
    """A view's capture time, unix seconds, from its stream's epoch and its ``t_ms`` (uint32 ms since the
    epoch, which wraps every 2^32 ms, 49.7 days): the one of the wrapped candidates nearest ``near``
    (e.g. the receive time, unix seconds)."""
    wrap = float(1 << 32)
    ms = (near - epoch_unix) * 1000.0
    k = round((ms - (int(t_ms) & 0xFFFFFFFF)) / wrap)
    return epoch_unix + ((int(t_ms) & 0xFFFFFFFF) + k * wrap) / 1000.0


def run_tag(epoch_unix: float) -> int:
    """The run tag of an edge run, 1..:data:`RUN_TAGS`, from its stream epoch (wall-clock seconds of capture
    time 0): a view says which run made it, so that a receiver never takes a restarted edge's views for
    the previous run's when the new run's stream info is late or lost. Two runs share a tag with
    probability 1/127 (then a receiver is where it would be without tags)."""
    return 1 + zlib.crc32(struct.pack("<d", float(epoch_unix))) % RUN_TAGS


def _pack(kind: int, flags: int, stream: int, fp32: int, object_id: int, n_bits: int, seq: int, t_ms: int,
          body: bytes) -> bytes:
    if not 0 <= stream <= 255 or not 0 <= object_id <= 0xFFFF or not 0 <= n_bits <= 0xFFFF:
        raise ValueError(f"field out of range: stream {stream}, object {object_id}, bits {n_bits}")
    head = _HEAD.pack(MAGIC, (VERSION << 4) | kind, flags, stream, fp32 & 0xFFFFFFFF, object_id, n_bits,
                      seq & 0xFFFFFFFF, t_ms & 0xFFFFFFFF)
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def encode_code(msg: CodeMessage) -> bytes:
    """Serialise a view-code message (see the module docstring for the layout).

    Raises:
        ValueError: payload size does not match ``n_bits``, or a field is out of range.
    """
    if len(msg.payload) != (msg.n_bits + 7) // 8:
        raise ValueError(f"payload of {len(msg.payload)} bytes for a {msg.n_bits}-bit code")
    if not 0 <= msg.run <= RUN_TAGS:
        raise ValueError(f"run tag {msg.run}: 0..{RUN_TAGS}")
    body, flags = b"", msg.run << 1
    if msg.pose is not None:
        T = np.asarray(msg.pose, np.float64)
        body = _POSE.pack(*_quat_from_matrix(T[:3, :3]), *T[:3, 3])
        flags |= FLAG_POSE
    return _pack(KIND_CODE, flags, msg.stream, msg.fingerprint, msg.object_id, msg.n_bits, msg.seq, msg.t_ms,
                 body + msg.payload)


def encode_info(info: StreamInfo) -> bytes:
    """Serialise a stream-info message (24-byte header + JSON body).

    Raises:
        ValueError: a non-finite number in the body (JSON has no NaN), or a field out of range.
    """
    d = {"protocol": VERSION, "K": np.asarray(info.K).tolist(), "image_size": info.image_size,
         "model": info.model, "fingerprint": info.fingerprint, "code_bits": info.code_bits,
         "frame": info.frame, "epoch_unix": info.epoch_unix, **info.extra}
    if info.first_seq is not None:
        d["first_seq"] = int(info.first_seq) & 0xFFFFFFFF
    if info.last_seq is not None:
        d["last_seq"] = int(info.last_seq) & 0xFFFFFFFF
    if info.backchannel:
        d["backchannel"] = True
    body = json.dumps(d, separators=(",", ":"), allow_nan=False).encode()
    return _pack(KIND_INFO, 0, info.stream, info.fingerprint32, 0, info.code_bits, info.seq, 0, body)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _seq_field(d: dict, name: str) -> int | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be an integer 0..2^32-1, got {v!r}")
    return v


def _decode_info(stream: int, seq: int, n_bits: int, body: bytes) -> StreamInfo:
    """Parse and check a stream-info body (see :func:`decode`)."""
    try:
        d = json.loads(body.decode(), parse_constant=_reject_constant)
        if not isinstance(d, dict):
            raise ValueError("the body is not a JSON object")
        fp = d["fingerprint"]
        if not isinstance(fp, str) or len(fp) != 16 or any(c not in "0123456789abcdef" for c in fp):
            raise ValueError(f"fingerprint must be 16 lower-case hex digits, got {fp!r}")
        code_bits, image_size = d["code_bits"], d["image_size"]
        for name, v in (("code_bits", code_bits), ("image_size", image_size)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 0xFFFF:
                raise ValueError(f"{name} must be an integer 1..65535, got {v!r}")
        if code_bits != n_bits:
            raise ValueError(f"code_bits {code_bits} in the body, {n_bits} in the header")
        epoch = d.get("epoch_unix", 0.0)
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
            raise ValueError(f"epoch_unix must be a number, got {epoch!r}")
        first_seq, last_seq = _seq_field(d, "first_seq"), _seq_field(d, "last_seq")
        K = np.asarray(d["K"], np.float64).reshape(3, 3)
        model, frame = d.get("model", ""), d.get("frame", "view")
        if not isinstance(model, str) or not isinstance(frame, str):
            raise ValueError("model and frame must be strings")
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_info", str(e)) from e
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.array_equal(K[2], [0.0, 0.0, 1.0]) \
            or K[1, 0] != 0 or abs(K[0, 1]) > K[0, 0]:
        raise ProtocolError("bad_intrinsics", f"K = {K.tolist()} (finite, fx > 0, fy > 0, last row 0 0 1)")
    # an integer too large for a float (JSON allows any length) is as out of range as any other
    if not 0 <= epoch <= MAX_EPOCH_UNIX or not math.isfinite(epoch):
        raise ProtocolError("bad_time", f"epoch_unix {str(epoch)[:40]!r}")
    epoch = float(epoch)
    known = {"protocol", "K", "image_size", "model", "fingerprint", "code_bits", "frame", "epoch_unix", "first_seq",
             "last_seq", "backchannel"}
    extra = {k: v for k, v in d.items() if k not in known}
    return StreamInfo(stream=stream, seq=seq, fingerprint=fp, code_bits=code_bits, K=K, image_size=image_size,
                      model=model, frame=frame, epoch_unix=epoch, first_seq=first_seq, last_seq=last_seq,
                      backchannel=d.get("backchannel") is True, extra=extra)


def decode(buf: bytes) -> CodeMessage | StreamInfo:
    """Parse and check one message.

    Returns:
        :class:`CodeMessage` or :class:`StreamInfo`.

    Raises:
        ProtocolError: with ``reason`` ``too_large``, ``truncated``, ``bad_magic``, ``unknown_version``,
            ``unknown_kind``, ``bad_crc``, ``bad_length``, ``bad_pose`` (non-finite, not a unit
            quaternion, translation beyond :data:`MAX_TRANSLATION_M`), ``bad_info``, ``bad_intrinsics``
            or ``bad_time`` (epoch not finite or outside 0..:data:`MAX_EPOCH_UNIX`). Never another exception.
    """
    if len(buf) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{len(buf)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    if len(buf) < HEADER_BYTES:
        raise ProtocolError("truncated", f"{len(buf)} bytes, a header is {HEADER_BYTES}")
    magic, vk, flags, stream, fp32, obj, n_bits, seq, t_ms = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ProtocolError("bad_magic", f"0x{magic:02x}")
    if vk >> 4 != VERSION:
        raise ProtocolError("unknown_version", f"version {vk >> 4}, this receiver speaks {VERSION}")
    kind = vk & 0x0F
    if kind not in (KIND_CODE, KIND_INFO):
        raise ProtocolError("unknown_kind", f"kind {kind}")
    (crc,) = _CRC.unpack_from(buf, _HEAD.size)
    body = bytes(buf[HEADER_BYTES:])
    if zlib.crc32(body, zlib.crc32(bytes(buf[:_HEAD.size]))) != crc:
        # a cut-short message fails its CRC too; say which
        expect = HEADER_BYTES + (POSE_BYTES if flags & FLAG_POSE else 0) + (n_bits + 7) // 8
        if kind == KIND_CODE and len(buf) < expect:
            raise ProtocolError("truncated", f"{len(buf)} of {expect} bytes")
        raise ProtocolError("bad_crc")
    if kind == KIND_INFO:
        return _decode_info(stream, seq, n_bits, body)
    pose = None
    off = 0
    if flags & FLAG_POSE:
        if len(body) < POSE_BYTES:
            raise ProtocolError("truncated", "pose cut short")
        v = np.array(_POSE.unpack_from(body, 0), np.float64)
        if not np.all(np.isfinite(v)):
            raise ProtocolError("bad_pose", "non-finite pose")
        if abs(float(np.linalg.norm(v[:4])) - 1.0) > QUAT_NORM_TOL:
            raise ProtocolError("bad_pose", f"quaternion norm {np.linalg.norm(v[:4]):.6g}, not 1")
        if np.abs(v[4:]).max() > MAX_TRANSLATION_M:
            raise ProtocolError("bad_pose", f"translation {v[4:]} m")
        pose = np.eye(4)
        pose[:3, :3] = _matrix_from_quat(v[:4])
        pose[:3, 3] = v[4:]
        off = POSE_BYTES
    payload = body[off:]
    if len(payload) != (n_bits + 7) // 8:
        raise ProtocolError("bad_length", f"{len(payload)} payload bytes for a {n_bits}-bit code")
    return CodeMessage(stream=stream, object_id=obj, seq=seq, t_ms=t_ms, fingerprint=fp32, n_bits=n_bits,
                       payload=payload, pose=pose, run=flags >> 1)
