"""Image preprocessing shared by training, evaluation and the edge daemon (one function, one place).

A camera frame (any size, BGR uint8 as OpenCV delivers it) becomes a 128 x 128 RGB view by a centre
crop to a square and an area resize; the network input is that view as float32 in [0, 1], channels
first. Training images are rendered at 128 x 128 RGB already and only go through :func:`to_input`.

Runtime core: this module imports NumPy only (OpenCV inside :func:`capture_to_view`, PyTorch inside
:func:`to_input`), so the drone runs it without PyTorch through :func:`to_input_array`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Network input size in pixels (height = width).
IMAGE_SIZE = 128


def capture_to_view(image: np.ndarray, size: int = IMAGE_SIZE, bgr: bool = True) -> np.ndarray:
    """Turn a captured camera image (a video frame) into a square RGB view.

    (voxlink calls the camera's image a *capture* and keeps *frame* for the coordinate frame a grid is
    reconstructed in.)

    Args:
        image: uint8 [H, W, 3] (BGR if ``bgr``, else RGB) or [H, W] greyscale.
        size: output side in pixels.
        bgr: whether channels are in OpenCV's BGR order.

    Returns:
        uint8 [size, size, 3] RGB: centre crop to a square (:func:`crop_box`), then ``cv2.INTER_AREA``
        resize (``INTER_LINEAR`` when enlarging). The view's intrinsics: :func:`view_intrinsics`.

    Raises:
        ValueError: not a 2D/3-channel uint8 image, or empty.
    """
    import cv2

    f = np.asarray(image)
    if f.dtype != np.uint8 or f.ndim not in (2, 3) or (f.ndim == 3 and f.shape[2] not in (3, 4)) or f.size == 0:
        raise ValueError(f"expected a uint8 image [H, W, 3], got dtype {f.dtype} shape {f.shape}")
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    f = f[:, :, :3]
    if bgr:
        f = f[:, :, ::-1]
    y0, x0, s = crop_box(*f.shape[:2])
    f = np.ascontiguousarray(f[y0:y0 + s, x0:x0 + s])
    if s != size:
        f = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)
    return f


def crop_box(height: int, width: int) -> tuple[int, int, int]:
    """The centre square that :func:`capture_to_view` keeps: ``(y0, x0, side)`` in pixels.

    Raises:
        ValueError: a non-positive size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    s = min(height, width)
    return (height - s) // 2, (width - s) // 2, s


def view_intrinsics(K: np.ndarray, height: int, width: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Intrinsics of the view :func:`capture_to_view` makes from a ``height x width`` frame with intrinsics ``K``.

    The crop shifts the principal point by ``(x0, y0)``; the resize by ``r = size / side`` maps a pixel
    centre ``x`` to ``(x + 0.5) * r - 0.5`` (OpenCV's resize; pixel centres at integers, as
    :mod:`voxlink.camera` says). So ``fx' = r fx``, ``fy' = r fy``, ``cx' = (cx - x0 + 0.5) r - 0.5``,
    ``cy' = (cy - y0 + 0.5) r - 0.5``; the skew, if any, scales with ``r``.

    Args:
        K: float [3, 3] intrinsics of the frame, pixels.
        height, width: the frame's size in pixels.
        size: the view's side in pixels.

    Returns:
        float64 [3, 3] intrinsics of the view, pixels.

    Raises:
        ValueError: ``K`` is not 3 x 3, or a non-positive size.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be 3 x 3, got shape {K.shape}")
    if size < 1:
        raise ValueError(f"view size must be positive, got {size}")
    y0, x0, s = crop_box(height, width)
    r = size / s
    out = K.copy()
    out[0, 0], out[0, 1], out[1, 1] = K[0, 0] * r, K[0, 1] * r, K[1, 1] * r
    out[0, 2] = (K[0, 2] - x0 + 0.5) * r - 0.5
    out[1, 2] = (K[1, 2] - y0 + 0.5) * r - 0.5
    return out


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
