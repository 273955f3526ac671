"""The ground station's fault matrix (issue 12): duplicates, reordering, interleaved objects, gaps at the
start and end, wraparound, idle links, restarts, bad peers, bad values, output errors, multipart and
oversized messages. Each case: no crash, no view lost or applied twice, missing views exact."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from ground.archive import read_members
from voxlink import camera
from voxlink.models import ImplicitModel, get_config
from voxlink.models.binarizer import pack_bits
from voxlink.protocol import (FLAG_POSE, KIND_CODE, CodeMessage, StreamInfo, _pack, encode_code, encode_info,
                              fingerprint32, run_tag)
from voxlink.weights import save_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    m = ImplicitModel(get_config("tiny")).eval()
    path = save_model(m, tmp_path_factory.mktemp("m") / "tiny.safetensors")
    rng = np.random.default_rng(0)
    codes = [pack_bits(np.where(rng.random(64) > 0.5, 1.0, -1.0)) for _ in range(64)]
    return path, m, codes


def station(out: Path, model_file, **kw):
    from ground.station import GroundConfig, GroundStation

    return GroundStation(GroundConfig(bind=[], model=str(model_file), out=str(out), **kw))


def view(tiny, seq, obj=1, stream=2, pose=True, epoch=None):
    """A valid view message; the code and pose depend on ``seq`` only (the same view when resent). With
    ``epoch``, tagged with that edge run (``run_tag``), as the edge sends it; else untagged."""
    _, m, codes = tiny
    T = camera.orbit_poses(1, np.random.default_rng(seq % 1000))[0] if pose else None
    return encode_code(CodeMessage(stream=stream, object_id=obj, seq=seq & 0xFFFFFFFF, t_ms=(seq % 1000) * 100,
                                   fingerprint=fingerprint32(m.fingerprint()), n_bits=64,
                                   payload=codes[seq % len(codes)], pose=T,
                                   run=0 if epoch is None else run_tag(epoch)))


EPOCH = time.time()  # one edge run: its stream infos all carry the same epoch (a new epoch is a new run)


def info(tiny, stream=2, fp=None, bits=64, K=None, epoch=None, **kw):
    _, m, _ = tiny
    return encode_info(StreamInfo(stream=stream, seq=0, fingerprint=fp or bytes.hex(m.fingerprint()), code_bits=bits,
                                  K=camera.intrinsics() if K is None else K, model="tiny",
                                  epoch_unix=EPOCH if epoch is None else epoch, **kw))


def strict_json(path: Path):
    """Parse a file as strict JSON (NaN / Infinity are errors)."""
    def bad(c):
        raise ValueError(f"{c} in {path}")

    return json.loads(path.read_text(), parse_constant=bad)


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_view_twice_is_applied_once(tmp_path, tiny):
    once, twice = station(tmp_path / "a", tiny[0]), station(tmp_path / "b", tiny[0])
    for st in (once, twice):
        st.handle(info(tiny))
    for i in range(12):
        once.handle(view(tiny, i))
        twice.handle(view(tiny, i))
        assert twice.handle(view(tiny, i)) is None, "a repeat returns no update"
    s1, s2 = once.sessions[(2, 1)], twice.sessions[(2, 1)]
    assert s2.views == 12 and twice.stats["duplicates"] == 12 and twice.delivery[2].missing_count() == 0
    for a, b in zip(s1.state, s2.state):
        assert torch.equal(a, b), "the repeats changed the reconstruction"
    summary = twice.finalise((2, 1))
    assert summary["views"] == 12 and summary["missing_views"] == 0
    assert len(read_members(Path(summary["folder"]) / "depth.tar")) == 12


def test_swapped_neighbours_make_no_false_gap(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny))
    for seq in [0, 2, 1, 3, 5, 4, 6]:
        assert st.handle(view(tiny, seq)) is not None
    assert st.delivery[2].missing_count() == 0 and st.stats["late"] == 2
    summary = st.finalise((2, 1))
    assert summary["missing_views"] == 0 and summary["views"] == 7
    assert sorted(seq for seq, _ in summary["late_views"]) == [1, 4]


def test_interleaved_objects_on_one_stream_have_no_false_gaps(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny))
    for seq in range(20):
        st.handle(view(tiny, seq, obj=seq % 2))
    assert st.delivery[2].missing_count() == 0
    for obj in (0, 1):
        summary = st.finalise((2, obj))
        assert summary["views"] == 10 and summary["missing_views"] == 0 and summary["never_came"] == []


def test_missing_views_exact_at_start_middle_and_end(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny, first_seq=0))
    for seq in (2, 3, 5, 6, 7):  # 0, 1 lost at the start, 4 in the middle
        st.handle(view(tiny, seq))
    st.handle(info(tiny, first_seq=0, last_seq=9))  # the edge's last info: 8 and 9 never came
    assert st.delivery[2].missing_ranges() == [(0, 1), (4, 4), (8, 9)]
    assert st.delivery[2].missing_count() == 5
    st.write_status()
    g = strict_json(tmp_path / "ground.json")
    assert g["missing_views"] == 5 and g["streams"]["2"]["missing"] == [[0, 1], [4, 4], [8, 9]]
    assert g["views_applied"] == 5


def test_sequence_wraparound_is_continuous(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny))
    for seq in (2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1, 2):
        assert st.handle(view(tiny, seq)) is not None
    assert st.handle(view(tiny, 2**32 - 2)) is None and st.stats["duplicates"] == 1
    assert st.delivery[2].missing_count() == 0 and st.sessions[(2, 1)].views == 6


def test_corrupt_truncated_garbage_and_dropped(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny))
    good = view(tiny, 0)
    st.handle(good[:-7])
    st.handle(good[:40] + bytes([good[40] ^ 0x10]) + good[41:])
    st.handle(bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)))
    st.handle(b"")
    for seq in (0, 1, 3):  # 2 dropped on the link
        st.handle(view(tiny, seq))
    assert st.rejected["truncated"] == 2 and st.rejected["bad_crc"] == 1 and st.rejected["bad_magic"] >= 1
    assert st.sessions[(2, 1)].views == 3 and st.delivery[2].missing_ranges() == [(2, 2)]


def _raw_view(tiny, seq, pose7):
    _, m, codes = tiny
    return _pack(KIND_CODE, FLAG_POSE, 2, fingerprint32(m.fingerprint()), 1, 64, seq, 0,
                 struct.pack("<7f", *pose7) + codes[0])


def test_bad_values_with_a_valid_crc_are_rejected_and_json_stays_valid(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny, K=np.zeros((3, 3))))
    nan_body = info(tiny)[24:].replace(b'"K":[[', b'"K":[[NaN,0,0],[', 1)
    st.handle(_pack(2, 0, 2, fingerprint32(tiny[1].fingerprint()), 0, 64, 0, 0, nan_body))
    st.handle(info(tiny, K=np.array([[-100.0, 0, 64], [0, 100, 64], [0, 0, 1]])))
    st.handle(info(tiny, epoch=1e308))
    st.handle(info(tiny, image_size=256))  # intrinsics for views the model does not code
    assert st.rejected["bad_intrinsics"] == 2 and st.rejected["bad_time"] == 1 and st.rejected["bad_info"] == 1
    assert st.rejected["wrong_image_size"] == 1 and 2 not in st.streams
    st.handle(info(tiny))
    st.handle(_raw_view(tiny, 0, [np.nan, 0, 0, 0, 0, 0, 1]))
    st.handle(_raw_view(tiny, 1, [2.0, 0, 0, 0, 0, 0, 1]))  # not a unit quaternion
    st.handle(_raw_view(tiny, 2, [1.0, 0, 0, 0, 0, np.inf, 1]))
    assert st.rejected["bad_pose"] == 3 and not st.sessions
    st.handle(_raw_view(tiny, 0, [1.0, 0, 0, 0, 0, 0, 2.0]))
    summary = st.finalise((2, 1))
    assert summary["views"] == 1
    strict_json(Path(summary["folder"]) / "session.json")
    st.write_status()
    assert strict_json(tmp_path / "ground.json")["rejected"]["bad_pose"] == 3


def test_a_foreign_stream_info_does_not_evict_the_valid_stream(tmp_path, tiny):
    st = station(tmp_path, tiny[0])
    st.handle(info(tiny))
    st.handle(view(tiny, 0))
    st.handle(info(tiny, fp="00" * 8))  # another model
    st.handle(info(tiny, bits=512))  # the right fingerprint, the wrong code length
    assert st.rejected["wrong_fingerprint"] == 1 and st.rejected["wrong_code_length"] == 1
    for seq in range(1, 11):
        assert st.handle(view(tiny, seq)) is not None, "the valid stream's views are still applied"
    assert st.sessions[(2, 1)].views == 11 and st.rejected["unknown_stream"] == 0


def test_idle_timeout_snapshots_and_the_object_continues(tmp_path, tiny):
    st = station(tmp_path, tiny[0], idle_timeout_s=0.3, record=False, status_interval_s=0.2)
    t = threading.Thread(target=st.run, kwargs={"duration_s": 30}, daemon=True)
    t.start()
    st.q.put((info(tiny), time.time(), "link"))
    for seq in range(5):
        st.q.put((view(tiny, seq), time.time(), "link"))
    snap0 = tmp_path / "s2_o1" / "snap-000"
    deadline = time.time() + 20
    while time.time() < deadline and not snap0.is_dir():
        time.sleep(0.05)
    assert snap0.is_dir(), "no snapshot after the idle timeout"
    before = tree_digest(snap0)
    for seq in range(5, 10):
        st.q.put((view(tiny, seq), time.time(), "link"))
    snap1 = tmp_path / "s2_o1" / "snap-001"
    while time.time() < deadline and not snap1.is_dir():
        time.sleep(0.05)
    st.stop.set()
    t.join(timeout=20)
    assert not t.is_alive()
    assert strict_json(snap0 / "session.json")["views"] == 5
    assert strict_json(snap1 / "session.json")["views"] == 10, "the second snapshot continues the same object"
    assert tree_digest(snap0) == before, "the first snapshot's files were touched"
    assert len(read_members(snap1 / "depth.tar")) == 10
    g = strict_json(tmp_path / "ground.json")
    assert g["objects"]["s2_o1"]["latest"] == str(snap1) and g["objects"]["s2_o1"]["views"] == 10
    assert not list((tmp_path / "s2_o1").glob(".tmp-*")), "temporary folders left behind"


def test_restart_rebuilds_from_the_record_and_loses_nothing(tmp_path, tiny):
    # reference: one ground sees all 10 views
    ref = station(tmp_path / "ref", tiny[0])
    ref.handle(info(tiny))
    for seq in range(10):
        ref.handle(view(tiny, seq))
    # the same, with a restart after 6 views (the first ground dies without finishing its record)
    a = station(tmp_path / "g", tiny[0])
    a.open_record()
    a.handle(info(tiny))
    for seq in range(6):
        a.handle(view(tiny, seq))
    a.snapshot((2, 1), "exit")
    first = tree_digest(tmp_path / "g" / "s2_o1" / "snap-000")
    b = station(tmp_path / "g", tiny[0])
    assert b.rebuild() == 6 and b.sessions[(2, 1)].views == 6 and 2 in b.streams
    b.open_record()
    for seq in range(3, 10):  # the edge resends a few the first ground had
        b.handle(view(tiny, seq))
    s = b.sessions[(2, 1)]
    assert s.views == 10 and b.stats["duplicates"] == 3 and b.delivery[2].missing_count() == 0
    for x, y in zip(s.state, ref.sessions[(2, 1)].state):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    summary = b.snapshot((2, 1), "exit")
    b.close_record()
    assert summary["folder"].endswith("snap-001") and summary["views"] == 10
    assert tree_digest(tmp_path / "g" / "s2_o1" / "snap-000") == first, "the first run's files were overwritten"
    assert len(read_members(Path(summary["folder"]) / "depth.tar")) == 10
    # a third start rebuilds all 10 from both records, and --replay of one record gives its views
    c = station(tmp_path / "g", tiny[0])
    assert c.rebuild() == 10
    d = station(tmp_path / "replay", tiny[0])
    assert d.replay(sorted((tmp_path / "g" / "record").glob("*.mcap"))[0]) == 6


def test_an_edge_that_lost_its_code_log_restarts_at_zero_and_loses_nothing(tmp_path, tiny):
    """An edge whose code log was wiped starts at seq 0 again under a new epoch: its new views are
    applied as new views (not duplicates of the old run's), the old run's gap stays counted, only the
    new run's gaps are asked back, and a restarted ground rebuilds the same from its record."""
    a = station(tmp_path / "g", tiny[0])
    a.open_record()
    a.handle(info(tiny, epoch=1000.0, first_seq=0, backchannel=True))
    for seq in [0, 1, 2, 3, 4, 5, 6, 8, 9]:  # 7 never comes
        assert a.handle(view(tiny, seq)) is not None
    # the drone reboots with an empty log: seq 0 again, a new epoch (an edge that kept its log: first_seq 10)
    a.handle(info(tiny, epoch=2000.0, first_seq=0, backchannel=True))
    a.handle(info(tiny, epoch=2000.0, first_seq=0, backchannel=True, last_seq=5))  # a repeat: no second restart
    for seq in [0, 1, 2, 4, 5]:  # 3 is late
        assert a.handle(view(tiny, seq)) is not None, f"new seq {seq} taken for a duplicate"
    assert a.stats["stream_restarts"] == 1 and a.stats["duplicates"] == 0
    assert a.sessions[(2, 1)].views == 14
    dl = a.delivery[2]
    assert dl.missing_count() == 2 and [(dl.to_wire(x), dl.to_wire(y)) for x, y in dl.missing_ranges()] == [(7, 7), (3, 3)]
    a.request_missing(now=time.monotonic())
    asked = a.request_missing(now=time.monotonic() + 10)
    assert asked == 1 and a.requests.get_nowait() == (2, [3]), "only the new run's gap is asked back, by its wire number"
    assert a.handle(view(tiny, 3), source="backchannel") is not None
    assert a.handle(view(tiny, 3)) is None and a.stats["duplicates"] == 1
    # the edge restarts again, this time with its log: numbering continues, no new incarnation
    a.handle(info(tiny, epoch=3000.0, first_seq=6, backchannel=True))
    assert a.handle(view(tiny, 6)) is not None and a.stats["stream_restarts"] == 1
    summary = a.snapshot((2, 1), "exit")
    a.close_record()
    assert summary["views"] == 16 and summary["missing_views"] == 1 and summary["never_came"] == [[7, 7]]
    assert len(read_members(Path(summary["folder"]) / "depth.tar")) == 16, "a new run's depth map replaced an old one"
    b = station(tmp_path / "g", tiny[0])
    assert b.rebuild() == 16 and b.stats["stream_restarts"] == 1 and b.delivery[2].missing_count() == 1
    for x, y in zip(b.sessions[(2, 1)].state, a.sessions[(2, 1)].state):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_a_restarted_edge_whose_stream_info_is_late_is_never_taken_for_its_previous_run(tmp_path, tiny):
    """Views say which edge run made them (the run tag): a restarted edge (its code log lost) whose new
    stream info is late has its views held until the info comes, then applied as new views, each once;
    the previous run's views that come after the restart was seen are placed in the previous run."""
    assert run_tag(1000.0) != run_tag(2000.0)
    a = station(tmp_path / "a", tiny[0], record=False)
    a.handle(info(tiny, epoch=1000.0, first_seq=0, backchannel=True))
    for s in range(10):  # run 1: 0..9
        a.handle(view(tiny, s, epoch=1000.0))
    for s in range(15):  # run 2 restarts at 0, its first stream info lost on the link
        assert a.handle(view(tiny, s, obj=5, epoch=2000.0)) is None
    assert a.stats["duplicates"] == 0 and a.status()["views_waiting_for_info"] == 15 and (2, 5) not in a.sessions
    a.handle(info(tiny, epoch=2000.0, first_seq=0, last_seq=14, backchannel=True))  # the repeated info
    dl = a.delivery[2]
    assert dl.restarts == 1 and a.sessions[(2, 5)].views == 15 and a.sessions[(2, 1)].views == 10
    assert dl.missing_count() == 0 and a.stats["duplicates"] == 0 and a.status()["views_waiting_for_info"] == 0
    assert _asked(a, 3) == []

    b = station(tmp_path / "b", tiny[0], record=False)
    b.handle(info(tiny, epoch=1000.0, first_seq=0))
    for s in range(8):  # run 1: 0..7 came; 8 and 9 are still in flight
        b.handle(view(tiny, s, epoch=1000.0))
    b.handle(info(tiny, epoch=2000.0, first_seq=0))  # the edge rebooted without its log
    for s in (8, 9):  # run 1's late views: run 1's numbers, not run 2's
        assert b.handle(view(tiny, s, epoch=1000.0)) is not None
    assert [b.handle(view(tiny, s, obj=5, epoch=2000.0)) is not None for s in range(10)] == [True] * 10
    assert b.sessions[(2, 1)].views == 10 and b.sessions[(2, 5)].views == 10 and b.stats["duplicates"] == 0
    assert b.handle(view(tiny, 9, epoch=1000.0)) is None and b.stats["duplicates"] == 1  # a repeat is a repeat
    assert b.delivery[2].missing_count() == 0


def test_run_tags_with_a_kept_log_two_quick_restarts_and_a_wild_number(tmp_path, tiny):
    """Three ways a restart's messages can come (found by review): a run the ground never heard of, whose
    views the edge resends from its kept log, is applied in the current numbering (not held for an info
    that never comes); a second lost-log restart whose info comes before any view of the first
    restarted run is a restart too; and an old run's view with a number far outside it is ``bad_seq``."""
    Z, A, B = 1000.0, 2000.0, 3000.0
    assert len({run_tag(Z), run_tag(A), run_tag(B)}) == 3
    a = station(tmp_path / "a", tiny[0], record=False)
    a.handle(info(tiny, epoch=Z, first_seq=0, backchannel=True))
    for s in range(5):
        a.handle(view(tiny, s, epoch=Z))
    a.handle(info(tiny, epoch=B, first_seq=10, backchannel=True))  # run A (5..9) was never heard; B keeps the log
    for s in range(10, 13):
        a.handle(view(tiny, s, epoch=B))
    assert sorted(_asked(a, 2)) == [5, 6, 7, 8, 9]
    assert all(a.handle(view(tiny, s, epoch=A), source="backchannel") is not None for s in range(5, 8))
    assert all(a.handle(view(tiny, s, epoch=A)) is not None for s in (8, 9))  # before B's first number
    assert a.delivery[2].missing_count() == 0 and a.status()["views_waiting_for_info"] == 0

    b = station(tmp_path / "b", tiny[0], record=False)
    b.handle(info(tiny, epoch=Z, first_seq=0))
    for s in range(10):
        b.handle(view(tiny, s, epoch=Z))
    b.handle(info(tiny, epoch=A, first_seq=0))
    b.handle(info(tiny, epoch=B, first_seq=0))  # A rebooted again, without its log, before its views came
    assert b.delivery[2].restarts == 2
    assert all(b.handle(view(tiny, s, obj=5, epoch=A)) is not None for s in range(4))
    assert all(b.handle(view(tiny, s, obj=6, epoch=B)) is not None for s in range(4))
    assert b.stats["duplicates"] == 0
    assert b.handle(view(tiny, -(1 << 30) & 0xFFFFFFFF, epoch=Z)) is None and b.rejected["bad_seq"] == 1
    assert b.delivery[2].missing_count() == 0


def _asked(st, rounds, t0=None):
    """Every wire seq the station queues for the back channel over ``rounds`` request rounds 10 s apart."""
    import queue

    t0 = time.monotonic() if t0 is None else t0
    out = []
    for k in range(rounds):
        st.request_missing(now=t0 + 10 * k)
        while True:
            try:
                out += st.requests.get_nowait()[1]
            except queue.Empty:
                break
    return out


def test_gaps_an_edge_cannot_answer_do_not_stop_newer_ones_being_asked(tmp_path, tiny):
    """More gaps than one request round takes (64 ranges): after an edge restart that lost its log (the
    old run's 69 gaps cannot be asked), and without one (70 old gaps rotated out of the edge's log, a
    new gap after them), the gap the edge can answer is asked all the same."""
    a = station(tmp_path / "a", tiny[0], record=False)
    a.handle(info(tiny, epoch=1000.0, first_seq=0, backchannel=True))
    for s in range(0, 140, 2):
        a.handle(view(tiny, s))
    a.handle(info(tiny, epoch=2000.0, first_seq=0, backchannel=True))  # a restart without the log
    for s in (0, 1, 3, 4):
        a.handle(view(tiny, s))
    asked = _asked(a, 3)
    assert asked and set(asked) == {2}, "only the new run's gap is asked back, by its wire number"

    b = station(tmp_path / "b", tiny[0], record=False)
    b.handle(info(tiny, epoch=1000.0, first_seq=0, backchannel=True))
    for s in list(range(0, 140, 2)) + [140, 142, 143]:
        b.handle(view(tiny, s))
    asked = _asked(b, 4)
    assert 141 in asked and set(asked) == set(range(1, 142, 2)), "every gap asked in turn, the newest included"


def test_objects_beyond_max_live_objects_sleep_and_wake_as_they_were(tmp_path, tiny):
    """Memory does not grow with the objects a ground has seen: beyond ``max_live_objects`` the objects
    idle longest (all views in a snapshot) go to disk; a later view wakes one and its reconstruction
    goes on exactly as if it had stayed in memory."""
    a = station(tmp_path / "a", tiny[0], record=False, max_live_objects=3)
    b = station(tmp_path / "b", tiny[0], record=False, max_live_objects=0)
    for st in (a, b):
        st.handle(info(tiny))
        for obj in range(6):
            st.handle(view(tiny, 2 * obj, obj=obj))
            st.handle(view(tiny, 2 * obj + 1, obj=obj))
        st.sessions[(2, 5)].last_t = -1.0  # the newest object idle longest: not merely the first made
        st.handle(view(tiny, 12, obj=0))  # object 0 has an unsaved view: it must stay awake
        for key in list(st.sessions):
            if key != (2, 0):
                st.snapshot(key)
        st._sleep_idle()
    assert len(b.sessions) == 6 and not b.sleeping
    assert len(a.sessions) == 3 and set(a.sleeping) == {(2, 5), (2, 1), (2, 2)}
    status = a.status()
    assert len(status["objects"]) == 6 and status["objects"]["s2_o5"]["sleeping"] is True
    assert (tmp_path / "a" / ".work" / "s2_o5" / "sleeping.npz").exists()
    for st in (a, b):  # a view for a sleeping object wakes it
        st.handle(view(tiny, 13, obj=5))
    s_a, s_b = a.sessions[(2, 5)], b.sessions[(2, 5)]
    assert (2, 5) not in a.sleeping and s_a.views == s_b.views == 3 and len(s_a.snapshots) == 1
    assert np.array_equal(a.occupancy(s_a), b.occupancy(s_b))
    assert not (tmp_path / "a" / ".work" / "s2_o5" / "sleeping.npz").exists()
    assert a.stats["objects_slept"] == 3 and a.stats["objects_woken"] == 1
    # a sleeping object can still be finalised, and a duplicate of its views is still a duplicate
    a.handle(view(tiny, 2, obj=1))
    assert a.stats["duplicates"] == 1 and (2, 1) in a.sleeping
    assert a.finalise((2, 2)) is not None and (2, 2) not in a.sleeping and (2, 2) not in a.sessions


def test_a_full_disk_under_the_record_loses_no_view_once_space_returns(tmp_path, tiny, monkeypatch):
    """While the disk is full the record cannot be written (counted); once space returns the record goes
    on in a new file holding every message since its last fsync, and a restart rebuilds every view."""
    import errno

    from ground.record import Recorder

    a = station(tmp_path / "g", tiny[0])
    a.open_record()
    a.handle(info(tiny))
    for seq in range(3):
        a.handle(view(tiny, seq))
    assert a.sync_record(now=0.0)
    real_add = Recorder._add

    def full(self, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Recorder, "_add", full)
    for seq in range(3, 6):  # applied, but the record cannot take them
        assert a.handle(view(tiny, seq)) is not None
    assert a.stats["record_errors"] >= 1 and a.sessions[(2, 1)].views == 6
    files = sorted((tmp_path / "g" / "record").glob("*.mcap"))
    assert not a.sync_record(now=100.0), "still full: no new record yet"
    assert sorted((tmp_path / "g" / "record").glob("*.mcap")) == files, "a record file that holds nothing is removed"
    monkeypatch.setattr(Recorder, "_add", real_add)  # space is back
    assert not a.sync_record(now=105.0) and a.sync_record(now=111.0)  # tried again at most every 10 s
    for seq in range(6, 8):
        a.handle(view(tiny, seq))
    a.close_record()
    b = station(tmp_path / "g", tiny[0])
    assert b.rebuild() == 8 and b.sessions[(2, 1)].views == 8 and b.delivery[2].missing_count() == 0

    def no_room(self, sync=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Recorder, "flush", no_room)  # a record cannot even start: no empty file is left
    with pytest.raises(OSError):
        Recorder(tmp_path / "r" / "x.mcap")
    assert not (tmp_path / "r" / "x.mcap").exists()


def test_output_errors_are_contained(tmp_path, tiny):
    st = station(tmp_path, tiny[0], record=False)
    st.handle(info(tiny))
    (tmp_path / "s2_o1").write_text("a file in the way")
    for seq in range(4):
        st.handle(view(tiny, seq, obj=1 + seq % 2))
    bad = st.snapshot((2, 1))
    good = st.snapshot((2, 2))
    assert st.stats["output_errors"] == 1, "the failure is counted once, then the retry succeeds"
    assert bad is not None and "_fallback" in bad["folder"] and Path(bad["folder"], "occupancy.npz").is_file()
    assert good is not None and Path(good["folder"], "occupancy.npz").is_file()


def test_a_full_disk_leaves_ground_json_as_it_was_and_no_partial_file(tmp_path, monkeypatch):
    import errno

    from ground.station import write_json_atomic

    write_json_atomic(tmp_path / "ground.json", {"views": 1})
    real = Path.write_text

    def full(self, text, *a, **k):
        real(self, text[:10], *a, **k)  # part of it reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "ground.json", {"views": 2})
    monkeypatch.setattr(Path, "write_text", real)
    assert strict_json(tmp_path / "ground.json") == {"views": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ground.json"], "no temporary file left behind"


def test_a_failing_depth_thread_is_counted_and_loses_no_view(tmp_path, tiny, monkeypatch):
    """The depth maps' files and points are made in worker threads: an unexpected error there is counted
    as an internal error, the views stay applied, the other views' depth maps are written."""
    from voxlink import camera as cam

    st = station(tmp_path, tiny[0], record=False)
    st.handle(info(tiny))
    real = cam.backproject
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(cam, "backproject", flaky)
    for seq in range(4):
        st.handle(view(tiny, seq, obj=1))
    summary = st.snapshot((2, 1))
    assert st.rejected["internal_error"] >= 1 and st.stats["views"] == 4
    assert summary["views"] == 4 and len(read_members(Path(summary["folder"]) / "depth.tar")) == 4


def test_sigterm_snapshots_every_object_even_with_an_output_error(tmp_path, tiny):
    import signal
    import subprocess
    import sys

    from voxlink.net import free_port

    port = free_port()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "s2_o1").write_text("a file in the way")
    proc = subprocess.Popen([sys.executable, "-m", "voxlink.cli", "ground", "--bind", f"tcp://127.0.0.1:{port}",
                             "--socket", "pull", "--model", str(tiny[0]), "--out", str(tmp_path / "o"),
                             "--backend", "torch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        push.send(info(tiny))
        for seq in range(6):
            push.send(view(tiny, seq, obj=1 + seq % 3))
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / "o" / "ground.json").exists():
            time.sleep(0.2)
        deadline = time.time() + 60
        while time.time() < deadline and strict_json(tmp_path / "o" / "ground.json")["views_applied"] < 6:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        push.close(0)
        ctx.term()
    assert proc.returncode == 0, err[-3000:]
    g = strict_json(tmp_path / "o" / "ground.json")
    assert g["views_applied"] == 6 and g["output_errors"] >= 1
    for name in ("s2_o1", "s2_o2", "s2_o3"):
        latest = g["objects"][name]["latest"]
        assert latest and Path(latest, "occupancy.npz").is_file(), name


def test_multipart_and_oversized_messages_are_counted(tmp_path, tiny):
    from voxlink.net import free_port
    from voxlink.protocol import MAX_MESSAGE_BYTES

    port = free_port()
    st = station(tmp_path, tiny[0], socket="pull", record=False)
    st.cfg.bind = [f"tcp://127.0.0.1:{port}"]
    t = threading.Thread(target=st.run, kwargs={"duration_s": 60}, daemon=True)
    t.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        push.send(info(tiny))
        push.send_multipart([view(tiny, 0), view(tiny, 1)])
        push.send(b"\xb5" * (MAX_MESSAGE_BYTES + 1))
        push.send(view(tiny, 2))
        deadline = time.time() + 20
        while time.time() < deadline and st.stats["views"] < 1:
            time.sleep(0.05)
    finally:
        st.stop.set()
        t.join(timeout=20)
        push.close(0)
        ctx.term()
    rej = st.all_rejected()
    assert rej.get("multipart") == 1 and rej.get("too_large") == 1
    assert st.stats["views"] == 1


def recorded_station(tmp_path, tiny, **kw):
    """A station that recorded a stream info and three views of one object, snapshot it, closed its record."""
    st = station(tmp_path, tiny[0], **kw)
    st.open_record()
    st.handle(info(tiny))
    for seq in range(3):
        st.handle(view(tiny, seq))
    st.snapshot((2, 1))
    st.close_record()
    return st


def test_record_is_a_standard_mcap_with_foxglove_outputs(tmp_path, tiny):
    from mcap.reader import make_reader

    st = recorded_station(tmp_path, tiny)
    with open(st.recorder.path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        schemas = {s.name for s in summary.schemas.values()}
        assert {"foxglove.PointCloud", "foxglove.CompressedImage", "foxglove.PoseInFrame",
                "foxglove.CameraCalibration"} <= schemas
        by_topic: dict[str, list] = {}
        for _, channel, message in reader.iter_messages():
            by_topic.setdefault(channel.topic, []).append(message.data)
    assert len(by_topic["/voxlink/wire"]) == 4, "the stream info and the three views, as received"
    assert by_topic["/voxlink/wire"][1] == view(tiny, 0)
    assert [json.loads(d)["seq"] for d in by_topic["/voxlink/views"]] == [0, 1, 2]
    cloud = json.loads(by_topic["/voxlink/points"][0])
    assert cloud["point_stride"] == 12 and [f["name"] for f in cloud["fields"]] == ["x", "y", "z"]
    assert len(by_topic["/voxlink/camera_pose"]) == 3, "every view's camera pose"
    cal = [json.loads(d) for d in by_topic["/voxlink/calibration"]]
    assert len(cal) == 1, "the object's camera calibration once (its intrinsics did not change)"
    assert cal[0]["frame_id"] == json.loads(by_topic["/voxlink/camera_pose"][0])["frame_id"] and len(cal[0]["K"]) == 9
    depth = [json.loads(d) for d in by_topic["/voxlink/depth"]]
    assert len(depth) == 3 and {d["format"] for d in depth} == {"png"}, "every view's depth image"
    assert [d["timestamp"] for d in depth] == [json.loads(p)["timestamp"] for p in by_topic["/voxlink/camera_pose"]]
    import base64

    import cv2

    first = cv2.imdecode(np.frombuffer(base64.b64decode(depth[0]["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    members = read_members(tmp_path / "s2_o1" / "snap-000" / "depth.tar")
    on_disk = cv2.imdecode(np.frombuffer(members[sorted(members)[0]], np.uint8), cv2.IMREAD_UNCHANGED)
    assert first.dtype == np.uint16 and np.array_equal(first, on_disk), "the recorded image is the depth map written"


def test_rejections_are_all_counted_but_logged_at_a_limited_rate(tmp_path, tiny, caplog):
    import logging

    st = station(tmp_path, tiny[0], record=False)
    with caplog.at_level(logging.WARNING, logger="voxlink.ground"):
        for i in range(500):
            st.handle(b"\x00" * (30 + i % 7))
    assert st.rejected["bad_magic"] == 500
    lines = [r for r in caplog.records if "bad_magic" in r.getMessage()]
    assert 1 <= len(lines) <= 2, f"{len(lines)} log lines for 500 rejections in a burst"


def test_internal_errors_are_all_counted_but_their_tracebacks_logged_at_a_limited_rate(tmp_path, tiny, caplog,
                                                                                         monkeypatch):
    import logging

    st = station(tmp_path, tiny[0], record=False)

    def broken(*a, **k):
        raise RuntimeError("a bug a peer can trigger")

    monkeypatch.setattr(st, "_check", broken)
    with caplog.at_level(logging.WARNING, logger="voxlink.ground"):
        for i in range(200):
            st.handle(view(tiny, i))
    assert st.rejected["internal_error"] == 200 and st.stats["views"] == 0
    traces = [r for r in caplog.records if r.exc_info]
    assert 1 <= len(traces) <= 2, f"{len(traces)} tracebacks logged for 200 failures in a burst"


def test_record_without_depth_images(tmp_path, tiny):
    """``--no-record-depth``: the record keeps the codes, poses and snapshots, not the depth images."""
    from mcap.reader import make_reader

    st = recorded_station(tmp_path, tiny, record_depth=False)
    with open(st.recorder.path, "rb") as f:
        topics = [channel.topic for _, channel, _ in make_reader(f).iter_messages()]
    assert topics.count("/voxlink/wire") == 4 and topics.count("/voxlink/camera_pose") == 3
    assert "/voxlink/depth" not in topics and "/voxlink/points" in topics
    assert len(read_members(tmp_path / "s2_o1" / "snap-000" / "depth.tar")) == 3, "the depth files are still written"


def test_an_error_fusing_a_batch_loses_none_of_its_views(tmp_path, tiny, monkeypatch):
    """The ground fuses views of many objects in one batched model call. Where that call fails (memory
    running out, a bug one view triggers), the batch's views are fused again one by one: every good view
    reaches its object's grid as if nothing had happened, and the one view that fails even alone is
    counted (``internal_error``) and named in ``session.json`` (``views_not_fused``), never silently lost."""
    from voxlink.models.binarizer import unpack_bits

    _, _, codes = tiny
    msgs = [(view(tiny, obj * 10 + seq, obj=obj), time.time(), "link") for seq in range(3) for obj in range(1, 5)]
    clean = station(tmp_path / "clean", tiny[0], record=False)
    clean.handle(info(tiny))
    clean.handle_many(msgs)
    st = station(tmp_path / "faulty", tiny[0], record=False)
    st.handle(info(tiny))
    poison = unpack_bits(codes[21], 64)  # object 2's second view (seq 21)
    step = st.net.step

    def fragile(c, state):
        if len(c) > 1 or torch.equal(c[0], poison):
            raise RuntimeError("out of memory")
        return step(c, state)

    monkeypatch.setattr(st.net, "step", fragile)
    assert sum(r is not None for r in st.handle_many(msgs)) == 12
    assert st.rejected["internal_error"] == 1 and st.stats["views"] == 12
    for obj in (1, 3, 4):
        np.testing.assert_allclose(st.occupancy(st.sessions[(2, obj)]), clean.occupancy(clean.sessions[(2, obj)]),
                                   atol=1e-6)
    s = st.sessions[(2, 2)]
    assert s.not_fused == [21]
    summary = st.snapshot((2, 2), reason="test")
    on_disk = json.loads((Path(summary["folder"]) / "session.json").read_text())
    assert on_disk["views_not_fused"] == [21] and on_disk["views_fused"] == 2 and on_disk["views"] == 3


def test_a_ground_that_cannot_bind_says_so_and_exits(tmp_path, tiny):
    """A malformed endpoint or viewer port ends the ground at once with a message (the socket made before
    the failing bind used to stay open, and the ZeroMQ context waited for it: the process hung)."""
    import subprocess
    import sys

    for extra, says in [(["--bind", "ground:5555"], "Invalid argument"),
                        (["--bind", "tcp://127.0.0.1:0", "--viewer", "99999"], "cannot serve the viewer")]:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "voxlink.cli", "ground", "--model", str(tiny[0]), "--out",
                            str(tmp_path / "g"), "--duration", "1", *extra], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and says in r.stderr, r.stderr[-1500:]
        assert time.time() - t0 < 60
