"""Property-based fuzzing (hypothesis, a bounded number of examples): ``protocol.decode`` never
raises anything but ProtocolError, and the ground applies every distinct (stream, seq) exactly once
whatever arrives, with exact missing counts and strict-JSON outputs."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from voxlink import camera  # noqa: E402
from voxlink.protocol import (KIND_CODE, KIND_INFO, CodeMessage, ProtocolError, StreamInfo, _pack, decode,  # noqa: E402
                              encode_code, encode_info, fingerprint32)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_view(seq=5, pose=True):
    T = camera.orbit_poses(1, np.random.default_rng(seq))[0] if pose else None
    return encode_code(CodeMessage(stream=3, object_id=9, seq=seq, t_ms=100, fingerprint=0x01234567, n_bits=64,
                                   payload=bytes(range(8)), pose=T))


def _valid_info():
    return encode_info(StreamInfo(stream=3, seq=0, fingerprint="0123456789abcdef", code_bits=64, K=camera.intrinsics(),
                                  model="x", epoch_unix=1.7e9, first_seq=0, last_seq=4))


def _decode_or_reject(buf: bytes):
    try:
        return decode(buf)
    except ProtocolError as e:
        assert e.reason in ("too_large", "truncated", "bad_magic", "unknown_version", "unknown_kind", "bad_crc",
                            "bad_length", "bad_info", "bad_pose", "bad_intrinsics", "bad_time"), e.reason
        return None


@FAST
@given(st.binary(max_size=400))
def test_decode_of_arbitrary_bytes_only_raises_protocol_error(buf):
    _decode_or_reject(buf)


@FAST
@given(st.sampled_from([_valid_view(), _valid_view(pose=False), _valid_info()]),
       st.lists(st.tuples(st.integers(0, 399), st.integers(0, 255)), max_size=6),
       st.integers(0, 400), st.binary(max_size=20))
def test_decode_of_mutated_messages(base, flips, cut, tail):
    b = bytearray(base)
    for i, v in flips:
        if i < len(b):
            b[i] = v
    out = _decode_or_reject(bytes(b[:cut]) + tail)
    if out is not None and isinstance(out, CodeMessage) and out.pose is not None:
        assert np.all(np.isfinite(out.pose)), "a decoded pose is always finite"


_json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                            | st.integers(10**308, 10**400).map(lambda x: x * (-1) ** (x % 2))  # beyond a float
                            | st.text(max_size=8),
                            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                            max_leaves=12)


@FAST
@given(st.dictionaries(st.sampled_from(["K", "code_bits", "image_size", "fingerprint", "epoch_unix", "first_seq",
                                        "last_seq", "model", "frame", "backchannel", "x"]), _json_values, max_size=9),
       st.integers(0, 0xFFFF))
def test_info_with_a_valid_crc_and_any_json_body(body, n_bits):
    """A correctly framed stream info with any JSON body: rejected with a reason, or every field checked."""
    buf = _pack(KIND_INFO, 0, 1, 0, 0, n_bits, 0, 0, json.dumps(body).encode())
    out = _decode_or_reject(buf)
    if out is not None:
        assert isinstance(out, StreamInfo) and out.K.shape == (3, 3) and np.all(np.isfinite(out.K))
        assert out.K[0, 0] > 0 and out.K[1, 1] > 0 and out.code_bits == n_bits
        assert np.isfinite(out.epoch_unix)


@FAST
@given(st.lists(st.floats(width=32), min_size=7, max_size=7))
def test_pose_with_a_valid_crc_and_any_floats(pose7):
    buf = _pack(KIND_CODE, 1, 1, 0, 0, 64, 0, 0, struct.pack("<7f", *pose7) + bytes(8))
    out = _decode_or_reject(buf)
    if out is not None:
        R = out.pose[:3, :3]
        assert np.all(np.isfinite(out.pose)) and np.allclose(R @ R.T, np.eye(3), atol=1e-3)


# -- the ground --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ground(tmp_path_factory):
    from ground.station import GroundConfig, GroundStation
    from voxlink.models import ImplicitModel, get_config
    from voxlink.weights import save_model

    torch.manual_seed(0)
    m = ImplicitModel(get_config("tiny")).eval()
    path = save_model(m, tmp_path_factory.mktemp("m") / "tiny.safetensors")
    return lambda out: GroundStation(GroundConfig(bind=[], model=str(path), out=str(out), record=False)), m


_event = st.one_of(
    st.tuples(st.just("view"), st.integers(0, 2), st.integers(0, 30), st.integers(0, 2)),  # stream, seq, object
    st.tuples(st.just("info"), st.integers(0, 2), st.sampled_from(["ok", "foreign", "bits", "zeroK"]), st.just(0)),
    st.tuples(st.just("garbage"), st.integers(0, 2), st.integers(0, 30), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(_event, max_size=40))
def test_ground_applies_each_view_once_whatever_arrives(tmp_path, ground, events):
    make, m = ground
    g = make(tmp_path / f"g{time.monotonic_ns()}")
    fp = fingerprint32(m.fingerprint())
    known: set[int] = set()
    applied: dict[int, set[int]] = {}
    for kind, stream, a, obj in events:
        if kind == "info":
            K = np.zeros((3, 3)) if a == "zeroK" else camera.intrinsics()
            g.handle(encode_info(StreamInfo(stream=stream, seq=0, code_bits=512 if a == "bits" else 64, K=K,
                                            fingerprint="00" * 8 if a == "foreign" else bytes.hex(m.fingerprint()),
                                            epoch_unix=time.time())))
            if a == "ok":
                known.add(stream)
        elif kind == "view":
            buf = encode_code(CodeMessage(stream=stream, object_id=obj, seq=a, t_ms=a, fingerprint=fp, n_bits=64,
                                          payload=bytes([a] * 8), pose=camera.orbit_poses(1, np.random.default_rng(a))[0]))
            s = g.handle(buf)
            new = stream in known and a not in applied.get(stream, set())
            assert (s is not None) == new
            if new:
                applied.setdefault(stream, set()).add(a)
        else:
            g.handle(bytes(np.random.default_rng(a).integers(0, 256, a + 1, dtype=np.uint8)))
    assert g.stats["views"] == sum(len(v) for v in applied.values())
    assert sum(s.views for s in g.sessions.values()) == g.stats["views"]
    for stream, seqs in applied.items():
        want = (max(seqs) - min(seqs) + 1) - len(seqs)
        assert g.delivery[stream].missing_count() == want
    status = g.status()
    json.dumps(status, allow_nan=False)
    assert status["views_applied"] == g.stats["views"]
