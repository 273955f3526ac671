"""JPEG 2000 baseline codec: glymur (OpenJPEG), irreversible 9/7 wavelet, one quality layer.

Byte counts are honest, and fair to JPEG 2000: ``bytes`` is the size of the ``.j2k`` codestream glymur
wrote less its comment (the COM marker segment, "Created by OpenJPEG version ...": 39 bytes that no
decoder needs, removed by :func:`strip_comments`), and ``bytes_no_header`` is that size less the main
header (SOC up to the first SOT marker: 102 bytes for a 128 x 128 RGB image with OpenJPEG's defaults once
the comment is gone), which a streaming system could send once.

OpenJPEG's rate control aims near the requested ratio but can overshoot it by a few per cent, and
it has a floor (the main header plus a minimal tile: about 146 bytes at 128 x 128 RGB, i.e. 336:1).
:func:`encode_at_ratio` therefore searches for the best quality whose codestream is *at most* the
target byte count, and reports ``reachable = False`` (with the floor's real ratio) when even the
floor is larger.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Jpeg2000Error(RuntimeError):
    """glymur or OpenJPEG is missing or failed."""


@dataclass
class J2kResult:
    """One encoded image.

    Attributes:
        image: uint8 [H, W, 3], the decoded image.
        bytes: codestream (.j2k file) size in bytes.
        bytes_no_header: ``bytes`` less the main header.
        ratio: achieved compression ratio, raw bytes / ``bytes``.
        target_ratio: the ratio asked for.
        reachable: whether ``bytes <= raw / target_ratio``.
        codestream: the J2K codestream itself (what would go on the wire).
    """

    image: np.ndarray
    bytes: int
    bytes_no_header: int
    ratio: float
    target_ratio: float
    reachable: bool
    codestream: bytes = b""


def _tmpdir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def main_header_length(codestream: bytes) -> int:
    """Bytes from SOC to the first SOT marker (0xFF90) of a J2K codestream.

    Raises:
        Jpeg2000Error: not a codestream (no SOC) or no tile.
    """
    if codestream[:2] != b"\xff\x4f":
        raise Jpeg2000Error("not a JPEG 2000 codestream (no SOC marker)")
    i = codestream.find(b"\xff\x90")
    if i < 0:
        raise Jpeg2000Error("JPEG 2000 codestream has no tile (no SOT marker)")
    return i


def strip_comments(codestream: bytes) -> bytes:
    """The codestream without the comment marker segments (COM, 0xFF64) of its main header: the same
    image for any decoder (ISO/IEC 15444-1 A.9.2: COM carries no information the decoding uses).

    Raises:
        Jpeg2000Error: not a codestream (no SOC), or a main header whose marker segments do not parse.
    """
    if codestream[:2] != b"\xff\x4f":
        raise Jpeg2000Error("not a JPEG 2000 codestream (no SOC marker)")
    out, i = [codestream[:2]], 2
    while True:
        if i + 4 > len(codestream) or codestream[i] != 0xFF:
            raise Jpeg2000Error(f"JPEG 2000 main header does not parse at byte {i}")
        marker = codestream[i + 1]
        if marker == 0x90:  # SOT: the first tile, the main header ends
            out.append(codestream[i:])
            return b"".join(out)
        n = int.from_bytes(codestream[i + 2:i + 4], "big")  # the segment's length, its own 2 bytes included
        if n < 2 or i + 2 + n > len(codestream):
            raise Jpeg2000Error(f"JPEG 2000 marker segment 0xFF{marker:02X} at byte {i} is cut")
        if marker != 0x64:
            out.append(codestream[i:i + 2 + n])
        i += 2 + n


def encode(image: np.ndarray, ratio: float, keep: str | Path | None = None) -> tuple[bytes, np.ndarray]:
    """Encode with OpenJPEG at a requested ratio (``cratios=[ratio]``, irreversible), drop the codestream's
    comment (:func:`strip_comments`) and decode that back.

    Args:
        image: uint8 [H, W, 3].
        ratio: requested compression ratio (raw bytes / codestream bytes), > 1.
        keep: also keep the codestream as this ``.j2k`` file.

    Returns:
        ``(codestream, decoded uint8 [H, W, 3])``.

    Raises:
        Jpeg2000Error: glymur missing or failing. ValueError: a bad image or ratio.
    """
    try:
        import glymur
    except ImportError as e:  # pragma: no cover - glymur is a dependency
        raise Jpeg2000Error("glymur is not installed (pip install glymur; apt install libopenjp2-7)") from e
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
    if ratio <= 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    # glymur must create the file itself (it parses an existing one): a fresh name, not mkstemp
    path = os.path.join(_tmpdir(), f"voxlink-{os.getpid()}-{uuid.uuid4().hex}.j2k")
    try:
        glymur.Jp2k(path, data=img, cratios=[float(ratio)], irreversible=True)
        data = strip_comments(Path(path).read_bytes())
        Path(path).write_bytes(data)
        dec = glymur.Jp2k(path)[:]
        if keep is not None:
            Path(keep).write_bytes(data)
    except Exception as e:  # glymur raises OSError/RuntimeError/IOError variants
        raise Jpeg2000Error(f"OpenJPEG failed at ratio {ratio}: {e}") from e
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return data, np.asarray(dec, np.uint8)


def encode_at_ratio(image: np.ndarray, target_ratio: float, steps: int = 6, keep: str | Path | None = None) -> J2kResult:
    """Best-quality encoding whose codestream is at most ``raw / target_ratio`` bytes.

    The request starts at the target; while OpenJPEG overshoots it is raised by geometric bisection
    between the target and 1.25x the target (or the floor, when 1.25x still overshoots); where it fits
    with room to spare (OpenJPEG aims at its size with the comment that :func:`encode` drops), it is
    lowered (better quality) by bisection down to 0.7x the target; ``steps`` encodes at most either way.
    If the floor (a request of 10,000:1) is still larger than the target, the result is that floor with
    ``reachable = False``.

    Args:
        image: uint8 [H, W, 3].
        target_ratio: wanted compression ratio.
        steps: encodes spent on the search.
        keep: write the chosen codestream to this ``.j2k`` file.

    Raises:
        Jpeg2000Error, ValueError: see :func:`encode`.
    """
    raw = image.size
    budget = raw / target_ratio
    data, dec = encode(image, target_ratio)
    if len(data) <= budget:  # it fits: spend what is left by asking for a little more
        lo = max(target_ratio * 0.7, 1.0 + 1e-6)
        d, x = encode(image, lo)
        if len(d) <= budget:
            data, dec = d, x
        else:
            data, dec = _bisect(image, lo, target_ratio, (data, dec), budget, steps)
    else:  # OpenJPEG overshot: search upward for the best request that fits
        hi = target_ratio * 1.25
        d, x = encode(image, hi)
        if len(d) > budget:
            hi = 10000.0
            d, x = encode(image, hi)
        if len(d) > budget:  # even the floor is larger: not reachable, report the floor
            data, dec = d, x
        else:
            data, dec = _bisect(image, target_ratio, hi, (d, x), budget, steps)
    hdr = main_header_length(data)
    if keep is not None:
        Path(keep).write_bytes(data)
    return J2kResult(image=dec, bytes=len(data), bytes_no_header=len(data) - hdr, ratio=raw / len(data),
                     target_ratio=float(target_ratio), reachable=len(data) <= budget, codestream=data)


def _bisect(image: np.ndarray, lo: float, hi: float, fits: tuple, budget: float, steps: int) -> tuple:
    """Geometric bisection of the requested ratio between ``lo`` (its codestream is over ``budget``
    bytes) and ``hi`` (``fits``: its ``(codestream, decoded)``, within budget), ``steps`` encodes: the
    smallest request found that fits, ``(codestream, decoded)``."""
    for _ in range(steps):
        mid = float(np.sqrt(lo * hi))
        d, x = encode(image, mid)
        if len(d) <= budget:
            hi, fits = mid, (d, x)
        else:
            lo = mid
    return fits


def decode(codestream: bytes) -> np.ndarray:
    """Decode a J2K codestream (from :func:`encode` or :func:`encode_at_ratio`) with OpenJPEG.

    Returns:
        uint8 [H, W, 3].

    Raises:
        Jpeg2000Error: glymur missing, or not a decodable codestream.
    """
    try:
        import glymur
    except ImportError as e:  # pragma: no cover - glymur is a dependency
        raise Jpeg2000Error("glymur is not installed (pip install glymur; apt install libopenjp2-7)") from e
    path = os.path.join(_tmpdir(), f"voxlink-{os.getpid()}-{uuid.uuid4().hex}.j2k")
    try:
        Path(path).write_bytes(codestream)
        return np.asarray(glymur.Jp2k(path)[:], np.uint8)
    except Exception as e:  # noqa: BLE001 - glymur raises OSError/RuntimeError/IOError variants
        raise Jpeg2000Error(f"cannot decode the codestream: {e}") from e
    finally:
        if os.path.exists(path):
            os.unlink(path)


class Jpeg2000Baseline:
    """The paper's baseline as a model family: each view compressed by JPEG 2000 (OpenJPEG, at most
    ``raw / ratio`` bytes), decoded at the ground, and 3D-R2N2 (Choy et al. 2016) on the decoded views
    (Golts & Schechner Sec. IV, Fig. 8). The same contract as the other families: ``forward`` for
    training, ``compress`` gives bytes, ``decompress`` the decoded views, ``reconstruct`` the grid.

    Args:
        recon: a 3D-R2N2 reconstructor (``forward``: float32 [B, V, 3, H, W] -> logits [B, 2, R, R, R]),
            trained on JPEG 2000 views (:mod:`voxlink.bench.accuracy`). ratio: the compression ratio asked.
    """

    family = "jpeg2000"

    def __init__(self, recon, ratio: float):
        self.recon, self.ratio = recon, float(ratio)

    def forward(self, images):
        """3D-R2N2's logits on views as given (training sees them through JPEG 2000 first).

        Shape:
            images float32 [B, V, 3, H, W] in [0, 1] -> logits [B, 2, R, R, R].
        """
        return self.recon(images)

    __call__ = forward

    def compress(self, images) -> list[bytes]:
        """Views float32 [N, 3, H, W] in [0, 1] -> N J2K codestreams of at most ``raw / ratio`` bytes
        each where OpenJPEG can reach it (its floor otherwise).

        Raises:
            Jpeg2000Error: OpenJPEG failed.
        """
        arr = (images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        return [encode_at_ratio(im, self.ratio, steps=4).codestream for im in arr]

    def decompress(self, payloads: list[bytes]):
        """Codestreams -> the decoded views float32 [N, 3, H, W] in [0, 1].

        Raises:
            Jpeg2000Error: a payload that does not decode.
        """
        import torch

        return torch.from_numpy(np.stack([decode(p) for p in payloads])).permute(0, 3, 1, 2).float() / 255.0

    def reconstruct(self, payloads: list[bytes], K=None, pose=None):
        """One object's views' codestreams -> occupancy probabilities float32 [1, R, R, R] (the ground's
        half; ``K`` and ``pose`` are not used: 3D-R2N2 ignores them)."""
        import torch

        with torch.no_grad():
            return torch.softmax(self.recon(self.decompress(payloads)[None]), 1)[:, 1]


def roundtrip_batch(images: np.ndarray, ratio: float) -> np.ndarray:
    """Compress and decompress a batch at one requested ratio (training; no search).

    Shape:
        images uint8 [N, H, W, 3] -> uint8 [N, H, W, 3].
    """
    return np.stack([encode(im, ratio)[1] for im in images])
