"""Image preprocessing shared by training, evaluation and the edge daemon (one function, one place).

A camera frame (any size, BGR uint8 as OpenCV delivers it) becomes a 128 x 128 RGB view by a centre
crop to a square and an area resize; the network input is that view as float32 in [0, 1], channels
first. Training images are rendered at 128 x 128 RGB already and only go through :func:`to_input`.

Runtime core: this module imports NumPy only (OpenCV inside :func:`frame_to_view`, PyTorch inside
:func:`to_input`), so the drone runs it without PyTorch through :func:`to_input_array`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Network input size in pixels (height = width).
IMAGE_SIZE = 128


def frame_to_view(frame: np.ndarray, size: int = IMAGE_SIZE, bgr: bool = True) -> np.ndarray:
    """Turn a camera frame into a square RGB view.

    Args:
        frame: uint8 [H, W, 3] (BGR if ``bgr``, else RGB) or [H, W] greyscale.
        size: output side in pixels.
        bgr: whether channels are in OpenCV's BGR order.

    Returns:
        uint8 [size, size, 3] RGB: centre crop to a square, then ``cv2.INTER_AREA`` resize
        (``INTER_LINEAR`` when enlarging).

    Raises:
        ValueError: not a 2D/3-channel uint8 image, or empty.
    """
    import cv2

    f = np.asarray(frame)
    if f.dtype != np.uint8 or f.ndim not in (2, 3) or (f.ndim == 3 and f.shape[2] not in (3, 4)) or f.size == 0:
        raise ValueError(f"expected a uint8 image [H, W, 3], got dtype {f.dtype} shape {f.shape}")
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    f = f[:, :, :3]
    if bgr:
        f = f[:, :, ::-1]
    h, w = f.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    f = np.ascontiguousarray(f[y0:y0 + s, x0:x0 + s])
    if s != size:
        f = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)
    return f


def to_input_array(views: np.ndarray) -> np.ndarray:
    """RGB uint8 views to the network's input, in NumPy (bit-identical to :func:`to_input`).

    Shape:
        views: uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [0, 1] (C-contiguous), each value
        ``float32(v) / 255`` correctly rounded, as PyTorch's division gives.

    Raises:
        ValueError: the last axis is not 3 channels.
    """
    a = np.asarray(views)
    if a.ndim < 1 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB views [..., H, W, 3], got shape {a.shape}")
    return np.ascontiguousarray(np.moveaxis(a, -1, -3), dtype=np.float32) / np.float32(255.0)


def to_input(views: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB uint8 views to the network's input.

    Shape:
        views: uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [0, 1].

    Raises:
        ValueError: the last axis is not 3 channels.
    """
    import torch

    t = torch.as_tensor(views)
    if t.shape[-1] != 3:
        raise ValueError(f"expected RGB views [..., H, W, 3], got shape {tuple(t.shape)}")
    return t.movedim(-1, -3).float().div_(255.0)
