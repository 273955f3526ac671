"""Network helpers of the runtime core, shared by the drone, the ground and the tools around them.

- CURVE key pairs (``zmq.auth`` certificates) and the streams a drone's key may send: ``voxlink keys
  NAME --stream S`` writes them (:func:`make_key_pair`), the ground reads them from the drone's public
  certificate (:func:`read_drone_certificate`) and accepts only those streams from that key.
- :func:`free_port`: a free TCP port on loopback (the demo, the ground benchmark, the tests).

Imports only the standard library at module level (pyzmq inside the functions that need it).
"""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the OS picks it; another process may take it later).

    Raises:
        OSError: no socket can be bound on loopback.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_key_pair(name: str, folder: str | Path, streams: list[int] | None = None) -> tuple[Path, Path, str]:
    """Make a CURVE key pair: ``folder/NAME.key`` (public) and ``folder/NAME.key_secret`` (mode 0600).

    Args:
        name: key pair name (``ground``, ``drone1``). folder: where to write (made if missing).
        streams: a drone's stream ids (0..255): written as ``streams = "2,3"`` into the metadata of both
            certificates (pyzmq writes metadata into the secret one only; the ground reads the public one),
            so that a ground accepts only these streams from this key.

    Returns:
        ``(public certificate, secret certificate, public key z85)``.

    Raises:
        FileExistsError: either file exists already. ValueError: a stream id outside 0..255.
        RuntimeError: this libzmq has no CURVE.
    """
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support")
    folder = Path(folder)
    if (folder / f"{name}.key").exists() or (folder / f"{name}.key_secret").exists():
        raise FileExistsError(f"{folder / name}.key already exists")
    ids = sorted(set(streams or []))
    if any(not 0 <= x <= 255 for x in ids):
        raise ValueError(f"stream ids are 0..255, got {ids}")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"streams": '"' + ",".join(str(x) for x in ids) + '"'} if ids else None
    pub, sec = zmq.auth.create_certificates(str(folder), name, metadata=meta)
    if meta:
        text = Path(pub).read_text(encoding="utf-8")
        Path(pub).write_text(text.replace("metadata\n", f"metadata\n    streams = {meta['streams']}\n", 1), encoding="utf-8")
    Path(sec).chmod(0o600)
    public_key, _ = zmq.auth.load_certificate(pub)
    return Path(pub), Path(sec), public_key.decode()


def read_drone_certificate(path: str | Path) -> tuple[str, frozenset[int] | None]:
    """A drone's public certificate (``zmq.auth`` format): its public key (z85) and the streams its
    metadata names (``streams = "2,3"``, written by :func:`make_key_pair`), or None where it names none.

    Raises:
        OSError: unreadable. ValueError: no public key, or a stream that is not an integer in 0..255.
    """
    import zmq.auth

    pub, _ = zmq.auth.load_certificate(str(path))
    streams = None
    in_meta = False
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            in_meta = line.strip() == "metadata"
            continue
        key, _, value = line.strip().partition("=")
        if in_meta and key.strip() == "streams":
            parts = [p.strip() for p in value.strip().strip("'\"").split(",") if p.strip()]
            try:
                streams = frozenset(int(p) for p in parts)
            except ValueError:
                raise ValueError(f"streams = {value.strip()}: not a list of integers") from None
            if any(not 0 <= x <= 255 for x in streams):
                raise ValueError(f"streams = {value.strip()}: stream ids are 0..255")
    return pub.decode(), streams
