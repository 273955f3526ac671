"""The ground over real sockets: CURVE both ways (a sender without the right keys gets nothing
applied) and gap recovery over the back channel from the edge's code log."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zmq

from edge.daemon import CodeLog, EdgeConfig, EdgeDaemon, make_socket
from voxlink.net import free_port
from voxlink import camera
from voxlink.models import ImplicitModel, get_config
from voxlink.models.binarizer import pack_bits
from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
from voxlink.weights import save_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    m = ImplicitModel(get_config("tiny")).eval()
    return save_model(m, tmp_path_factory.mktemp("m") / "tiny.safetensors"), m


def _view(m, seq, stream=2):
    rng = np.random.default_rng(seq)
    return encode_code(CodeMessage(stream=stream, object_id=1, seq=seq, t_ms=seq * 100,
                                   fingerprint=fingerprint32(m.fingerprint()), n_bits=64,
                                   payload=pack_bits(np.where(rng.random(64) > 0.5, 1.0, -1.0)),
                                   pose=camera.orbit_poses(1, rng)[0]))


EPOCH = time.time()  # one edge run: all its stream infos carry the same epoch (a new epoch is a new run)


def _info(m, stream=2, **kw):
    return encode_info(StreamInfo(stream=stream, seq=0, fingerprint=bytes.hex(m.fingerprint()), code_bits=64,
                                  K=camera.intrinsics(), model="tiny", epoch_unix=EPOCH, **kw))


def _start(tmp_path, path, **kw):
    from ground.station import GroundConfig, GroundStation

    port = free_port()
    st = GroundStation(GroundConfig(bind=[f"tcp://127.0.0.1:{port}"], model=str(path), out=str(tmp_path / "out"),
                                    socket="pull", record=False, **kw))
    t = threading.Thread(target=st.run, kwargs={"duration_s": 120}, daemon=True)
    t.start()
    return st, t, port


def _wait(cond, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def _stop(st, t, ctx, socks):
    """Stop a station started by :func:`_start` and close the test's sockets and their context."""
    st.stop.set()
    t.join(timeout=20)
    for s in socks:
        s.close(0)
    ctx.term()


def _key_pairs(tmp_path, *names):
    """``(keys folder, empty allow-list folder, [(public file, secret file) per name])``: zmq.auth certificates."""
    import zmq.auth

    keys, allow = tmp_path / "keys", tmp_path / "allow"
    keys.mkdir()
    allow.mkdir()
    return keys, allow, [zmq.auth.create_certificates(str(keys), n) for n in names]


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_both_ways_and_a_sender_without_keys_gets_nothing_applied(tmp_path, tiny):
    import zmq.auth

    path, m = tiny
    keys, allow, pairs = _key_pairs(tmp_path, "ground", "drone", "stranger")  # the ground does not allow the stranger
    (g_pub, g_sec), (d_pub, d_sec), (_, x_sec) = pairs
    shutil.copy(d_pub, allow)
    st, t, port = _start(tmp_path, path, curve_secret_file=str(g_sec), curve_allow_dir=str(allow))
    ctx = zmq.Context()
    ep = f"tcp://127.0.0.1:{port}"
    try:
        # the edge's own socket code, with the ground's public key file and the drone's certificate
        drone = make_socket(ctx, EdgeConfig(connect=[ep], socket="push", curve_server_key=str(g_pub),
                                            curve_secret_file=str(d_sec)))
        plain = ctx.socket(zmq.PUSH)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(ep)
        stranger = make_socket(ctx, EdgeConfig(connect=[ep], socket="push", curve_server_key=str(g_pub),
                                               curve_secret_file=str(x_sec)))
        stranger.setsockopt(zmq.LINGER, 0)
        for s, stream in ((plain, 7), (stranger, 8)):
            for buf in [_info(m, stream)] + [_view(m, i, stream) for i in range(3)]:
                s.send(buf, zmq.NOBLOCK)
        drone.send(_info(m))
        for i in range(3):
            drone.send(_view(m, i))
        assert _wait(lambda: st.stats["views"] >= 3), "the drone with allowed keys was not heard"
        time.sleep(1.0)  # time for the others to have been applied, if they could be
        assert st.stats["views"] == 3 and set(st.streams) == {2}, "a sender without allowed keys got views applied"
    finally:
        _stop(st, t, ctx, (drone, plain, stranger))


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_binds_each_stream_to_one_drone_key(tmp_path, tiny):
    """Two allowed drones: the second cannot feed views into the first's stream (same stream id by
    mistake, or on purpose), and a key whose certificate names its streams can send only those."""
    import zmq.auth
    from typer.testing import CliRunner

    from voxlink.cli import app

    path, m = tiny
    keys, allow, pairs = _key_pairs(tmp_path, "ground", "drone-a", "drone-b")
    (g_pub, g_sec), (a_pub, a_sec), (b_pub, b_sec) = pairs
    r = CliRunner().invoke(app, ["keys", "drone-c", "--out", str(keys), "--stream", "5"])
    assert r.exit_code == 0, r.output
    for p in (a_pub, b_pub, keys / "drone-c.key"):
        shutil.copy(p, allow)
    st, t, port = _start(tmp_path, path, curve_secret_file=str(g_sec), curve_allow_dir=str(allow))
    ctx = zmq.Context()
    ep = f"tcp://127.0.0.1:{port}"
    socks = []
    try:
        def drone(sec):
            s = make_socket(ctx, EdgeConfig(connect=[ep], socket="push", curve_server_key=str(g_pub), curve_secret_file=str(sec)))
            socks.append(s)
            return s

        a, b, c = drone(a_sec), drone(b_sec), drone(keys / "drone-c.key_secret")
        a.send(_info(m, 2))
        for i in range(3):
            a.send(_view(m, i, 2))
        assert _wait(lambda: st.stats["views"] >= 3)
        b.send(_info(m, 2))  # drone b claims stream 2 as well
        for i in range(3, 6):
            b.send(_view(m, i, 2))
        c.send(_info(m, 6))  # drone c's certificate names stream 5 only
        c.send(_view(m, 0, 6))
        c.send(_info(m, 5))
        c.send(_view(m, 0, 5))
        assert _wait(lambda: st.all_rejected().get("stream_not_owned", 0) >= 6 and st.stats["views"] >= 4), \
            (st.all_rejected(), dict(st.stats))
        for i in range(3, 6):  # drone a's next views still go in
            a.send(_view(m, i, 2))
        assert _wait(lambda: st.stats["views"] >= 7)
        time.sleep(0.5)
        assert st.stats["views"] == 7 and st.sessions[(2, 1)].views == 6 and st.sessions[(5, 1)].views == 1
        assert st.all_rejected()["stream_not_owned"] == 6 and 6 not in st.streams
        assert st.stats["duplicates"] == 0, "drone b's views must not have taken drone a's sequence numbers"
    finally:
        _stop(st, t, ctx, socks)
    owners = __import__("json").loads((tmp_path / "out" / "stream_keys.json").read_text())
    assert owners == {"2": zmq.auth.load_certificate(str(a_pub))[0].decode()}


def test_curve_configuration_errors_are_clear(tmp_path):
    from edge.daemon import curve_keys

    with pytest.raises(ValueError, match="both"):
        curve_keys(EdgeConfig(curve_server_key="x" * 40))
    with pytest.raises(ValueError, match="certificate|secret"):
        curve_keys(EdgeConfig(curve_server_key="x" * 40, curve_secret_file=str(tmp_path / "none.key_secret")))


def test_gaps_are_recovered_from_the_edge_code_log(tmp_path, tiny):
    path, m = tiny
    bport = free_port()
    st, t, port = _start(tmp_path, path, backchannel=[f"tcp://127.0.0.1:{bport}"], request_interval_s=0.5)
    ctx = zmq.Context()
    log = CodeLog(tmp_path / "log")
    views = [_view(m, i) for i in range(10)]
    for v in views:
        log.append(v)
    # the edge's back-channel answerer, exactly as the daemon runs it
    edge = SimpleNamespace(cfg=EdgeConfig(backchannel=[f"tcp://127.0.0.1:{bport}"], stream_id=2, info_interval_s=0.2),
                           stop=threading.Event(), stats=Counter())
    edge._parse_request = lambda raw: EdgeDaemon._parse_request(edge, raw)
    bc = threading.Thread(target=EdgeDaemon._backchannel, args=(edge, EdgeDaemon._backchannel_socket(edge, ctx), log),
                          daemon=True)
    bc.start()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        push.send(_info(m, first_seq=0, backchannel=True))
        for i in (0, 1, 2, 6, 7):  # 3, 4, 5 lost in a link cut; 8 and 9 after it
            push.send(views[i])
        push.send(_info(m, first_seq=0, last_seq=9, backchannel=True))
        assert _wait(lambda: st.stats["views"] >= 10, 30), f"only {st.stats['views']} of 10 views; {dict(edge.stats)}"
        summary = st.snapshot((2, 1))
    finally:
        st.stop.set()
        edge.stop.set()
        t.join(timeout=20)
        bc.join(timeout=5)
        push.close(0)
        log.close()
        ctx.term()
    assert st.delivery[2].missing_count() == 0 and st.stats["recovered"] == 5 and edge.stats["backchannel_resent"] >= 5
    assert summary["views"] == 10 and summary["missing_views"] == 0
    assert sorted(seq for seq, how in summary["late_views"] if how == "backchannel") == [3, 4, 5, 8, 9]


def test_a_malformed_back_channel_hello_is_counted_and_the_receiver_keeps_going(tmp_path, tiny):
    """A hello that is not ``{"hello": <int 0..255>}`` (an infinite or fractional stream, a boolean, a JSON
    nested past Python's recursion limit) is counted as ``bad_info``; the receiver thread lives on and
    the link's views are applied after it."""
    path, m = tiny
    bport = free_port()
    st, t, port = _start(tmp_path, path, backchannel=[f"tcp://127.0.0.1:{bport}"])
    ctx = zmq.Context()
    dealer, push = ctx.socket(zmq.DEALER), ctx.socket(zmq.PUSH)
    bad = [b'{"hello": Infinity}', b'{"hello": 2.5}', b'{"hello": true}', b'{"hello": 300}', b'{"hello": "2"}',
           b'{"hello": 2', b"{" + b'"a": [' * 5000 + b"]" * 5000 + b"}", b'{"x": 1}']
    try:
        dealer.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{bport}")
        push.connect(f"tcp://127.0.0.1:{port}")
        for body in bad:
            dealer.send(body)
        assert _wait(lambda: st.all_rejected().get("bad_info", 0) >= len(bad)), st.all_rejected()
        assert all(th.is_alive() for th in threading.enumerate() if th.name == "receiver")
        push.send(_info(m))
        for i in range(5):
            push.send(_view(m, i))
        assert _wait(lambda: st.stats["views"] >= 5), (st.all_rejected(), dict(st.stats))
        assert st.all_rejected().get("internal_error", 0) == 0
    finally:
        _stop(st, t, ctx, (dealer, push))


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_a_hello_for_another_drones_stream_gets_none_of_its_gap_requests(tmp_path, tiny):
    """Drone b (an allowed key) says hello for drone a's stream: the ground counts it as
    ``stream_not_owned`` and keeps sending the stream's gap requests to drone a, whose gap gets filled."""
    from edge.daemon import apply_curve

    path, m = tiny
    keys, allow, pairs = _key_pairs(tmp_path, "ground", "drone-a", "drone-b")
    (g_pub, g_sec), (a_pub, a_sec), (b_pub, b_sec) = pairs
    for p in (a_pub, b_pub):
        shutil.copy(p, allow)
    bport = free_port()
    st, t, port = _start(tmp_path, path, curve_secret_file=str(g_sec), curve_allow_dir=str(allow),
                         backchannel=[f"tcp://127.0.0.1:{bport}"], request_interval_s=0.3)
    ctx = zmq.Context()
    socks = []

    def dealer(sec):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        apply_curve(d, EdgeConfig(curve_server_key=str(g_pub), curve_secret_file=str(sec)))
        d.connect(f"tcp://127.0.0.1:{bport}")
        socks.append(d)
        return d

    try:
        a = make_socket(ctx, EdgeConfig(connect=[f"tcp://127.0.0.1:{port}"], socket="push",
                                        curve_server_key=str(g_pub), curve_secret_file=str(a_sec)))
        socks.append(a)
        da, db = dealer(a_sec), dealer(b_sec)
        da.send(b'{"hello": 2}')
        time.sleep(0.3)
        a.send(_info(m, backchannel=True))
        for i in (0, 1, 3):  # seq 2 is lost
            a.send(_view(m, i))
        assert _wait(lambda: st.stats["views"] >= 3)
        db.send(b'{"hello": 2}')  # drone b claims stream 2's back channel
        assert _wait(lambda: st.all_rejected().get("stream_not_owned", 0) >= 1), st.all_rejected()
        assert da.poll(5000), "the owner got no gap request"
        time.sleep(1.0)  # several request rounds after b's hello
        got_a = []
        while da.poll(0):
            got_a.append(__import__("json").loads(da.recv()))
        assert got_a and all(r == {"stream": 2, "seqs": [2]} for r in got_a)
        assert not db.poll(0), "a drone that does not own the stream got its gap requests"
        da.send(_view(m, 2))  # the owner answers over the back channel: the gap is filled
        assert _wait(lambda: st.stats["views"] >= 4)
    finally:
        _stop(st, t, ctx, socks)
