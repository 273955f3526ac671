"""Wire protocol: round trips, header size, and rejection of bad messages with the right reason."""

from __future__ import annotations

import numpy as np
import pytest

from voxlink import camera
from voxlink.protocol import (HEADER_BYTES, CodeMessage, ProtocolError, StreamInfo, decode, encode_code,
                              encode_info, fingerprint32)


def _msg(pose=None, n_bits=1024):
    rng = np.random.default_rng(0)
    return CodeMessage(stream=7, object_id=513, seq=123456, t_ms=98765, fingerprint=fingerprint32(bytes(range(8))),
                       n_bits=n_bits, payload=rng.bytes((n_bits + 7) // 8), pose=pose)


def test_header_is_small_and_round_trips():
    buf = encode_code(_msg())
    assert HEADER_BYTES == 24 and len(buf) == 24 + 128, "at K = 1024: 24-byte header + 128-byte code"
    back = decode(buf)
    assert back == _msg() or (back.payload == _msg().payload and back.seq == 123456 and back.object_id == 513)
    assert back.stream == 7 and back.t_ms == 98765 and back.n_bits == 1024 and back.pose is None


def test_pose_round_trip():
    T = camera.orbit_poses(1, np.random.default_rng(3))[0]
    back = decode(encode_code(_msg(pose=T)))
    assert np.allclose(back.pose, T, atol=1e-5)


def test_stream_info_round_trip():
    info = StreamInfo(stream=3, seq=2, fingerprint="0123456789abcdef", code_bits=1024, K=camera.intrinsics(),
                      model="implicit-k1024", epoch_unix=1.7e9)
    back = decode(encode_info(info))
    assert isinstance(back, StreamInfo) and back.fingerprint == info.fingerprint and np.allclose(back.K, info.K)
    assert back.fingerprint32 == 0x01234567


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b[:10], "truncated"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b"\x00" + b[1:], "bad_magic"),
    (lambda b: b[:1] + bytes([(2 << 4) | 1]) + b[2:], "unknown_version"),
    (lambda b: b[:1] + bytes([(1 << 4) | 9]) + b[2:], "unknown_kind"),
    (lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:], "bad_crc"),
])
def test_corrupt_messages_rejected_with_reason(mutate, reason):
    buf = encode_code(_msg())
    with pytest.raises(ProtocolError) as e:
        decode(mutate(buf))
    assert e.value.reason == reason


def test_encode_refuses_inconsistent_payload():
    m = _msg()
    m.payload = m.payload[:-1]
    with pytest.raises(ValueError, match="payload"):
        encode_code(m)


@pytest.mark.parametrize("epoch", [10**400, -(10**400), 10**11, -1], ids=["1e400", "-1e400", "1e11", "-1"])
def test_stream_info_with_an_epoch_out_of_range_is_bad_time(epoch):
    """JSON integers have no size limit: one too large for a float is rejected like any other bad time."""
    import json

    from voxlink.protocol import KIND_INFO, _pack

    body = json.dumps({"K": camera.intrinsics().tolist(), "image_size": 128, "fingerprint": "0123456789abcdef",
                       "code_bits": 64, "epoch_unix": epoch}).encode()
    with pytest.raises(ProtocolError) as e:
        decode(_pack(KIND_INFO, 0, 2, 0x01234567, 0, 64, 0, 0, body))
    assert e.value.reason == "bad_time"


def test_run_tag_round_trips_beside_the_pose_flag():
    """The run tag (flags bits 1..7) comes back as sent, with and without a pose; 0 means not said."""
    from voxlink.protocol import RUN_TAGS, run_tag

    T = camera.orbit_poses(1, np.random.default_rng(3))[0]
    tags = {run_tag(1.7e9 + k) for k in range(2000)}
    assert tags <= set(range(1, RUN_TAGS + 1)) and len(tags) == RUN_TAGS, "every tag is used, 0 never"
    for pose in (None, T):
        for tag in (0, 1, run_tag(1.7e9), RUN_TAGS):
            m = _msg(pose)
            m.run = tag
            back = decode(encode_code(m))
            assert back.run == tag and (back.pose is None) == (pose is None)
    m = _msg()
    m.run = RUN_TAGS + 1
    with pytest.raises(ValueError, match="run tag"):
        encode_code(m)


def test_capture_time_is_right_after_the_49_day_wrap_of_t_ms():
    """``t_ms`` is uint32 milliseconds since the stream's epoch: after 2^32 ms (49.7 days) it wraps, and the
    capture time (so the latency the ground reports) must still come out right."""
    from voxlink.protocol import capture_time_unix

    epoch = 1.7e9
    for days, delay_s in ((0.001, 0.2), (49.7, 0.35), (60.0, 1.5), (200.0, 0.05)):
        t_capture = epoch + days * 86400.0
        t_ms = int(round((t_capture - epoch) * 1000.0)) & 0xFFFFFFFF
        got = capture_time_unix(epoch, t_ms, near=t_capture + delay_s)
        assert abs(got - t_capture) < 1e-3, (days, got - t_capture)
