"""Capture sources of the edge daemon: camera index, video file, RTSP URL or GStreamer pipeline
(OpenCV), a folder of images, and ``orbit:MESH`` (a simulated drone orbiting a real mesh, rendered by
the data pipeline, with true poses)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxlink import camera
from voxlink.preprocess import IMAGE_SIZE, capture_to_view

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class SourceError(RuntimeError):
    """A source cannot be opened, or stopped delivering frames."""


class SourceEnded(Exception):
    """A finite source (file, folder, orbit) has no more frames."""


@dataclass
class Capture:
    """One captured camera image, already preprocessed into the view the encoder takes (voxlink keeps
    the word *frame* for the coordinate frame a grid is reconstructed in).

    Attributes:
        view: uint8 [128, 128, 3] RGB (centre crop + resize of the camera frame).
        t: capture time, ``time.time()`` seconds.
        pose: camera-to-object pose float64 [4, 4] (OpenCV convention) where the source knows it.
        resized_from: the camera frame's (H, W).
    """

    view: np.ndarray
    t: float
    pose: np.ndarray | None = None
    resized_from: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)


def view_intrinsics(K_capture: np.ndarray, height: int, width: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Intrinsics of the 128 x 128 view made by :func:`voxlink.preprocess.capture_to_view` from a frame.

    Args:
        K_capture: float [3, 3] intrinsics of the H x W camera frame (pixels).
        height, width: frame size.

    Returns:
        float64 [3, 3]: the centre crop shifts the principal point, the resize scales everything.
    """
    s = min(height, width)
    y0, x0 = (height - s) // 2, (width - s) // 2
    k = size / s
    K = np.array(K_capture, np.float64).copy()
    K[0, 2] = (K[0, 2] - x0 + 0.5) * k - 0.5
    K[1, 2] = (K[1, 2] - y0 + 0.5) * k - 0.5
    K[0, 0] *= k
    K[1, 1] *= k
    return K


class Source:
    """Base class: ``read()`` returns a :class:`Capture`, raises SourceEnded or SourceError."""

    live = False
    #: intrinsics of the delivered 128 x 128 views (None where unknown)
    K: np.ndarray | None = None

    def read(self) -> Capture:  # pragma: no cover - interface
        """The next frame."""
        raise NotImplementedError

    def reopen(self) -> None:
        """Open the device again after it stopped delivering (a camera unplugged and plugged back, an
        RTSP stream that dropped); a source that cannot be reopened does nothing.

        Raises:
            SourceError: it cannot be opened now (the caller tries again later).
        """

    def close(self) -> None:
        """Release the device or file."""


def _view_of(img, what: str) -> np.ndarray:
    """:func:`capture_to_view`, a malformed frame (a raw YUYV buffer, a float image) as a SourceError."""
    try:
        return capture_to_view(img)
    except ValueError as e:
        raise SourceError(f"bad frame from {what}: {e}") from e


class OrbitSource(Source):
    """A simulated drone circling a real mesh at constant elevation, rendered with true poses.

    Args:
        mesh: mesh file. views_per_orbit: frames per full circle. elevation_deg: looking down.
        distance: metres (object units). orbits: circles before the source ends (0 = forever).
        up: the mesh file's up axis.
    """

    def __init__(self, mesh: str | Path, views_per_orbit: int = 24, elevation_deg: float = 30.0,
                 distance: float = 2.0, orbits: int = 1, up: str = "y", seed: int = 0):
        from voxlink.data.meshes import load_mesh
        from voxlink.data.render import Renderer

        self.mesh = load_mesh(mesh, up=up)
        self.renderer = Renderer(IMAGE_SIZE)
        self.K = camera.intrinsics(IMAGE_SIZE)
        self.n, self.el, self.d, self.orbits = views_per_orbit, math.radians(elevation_deg), distance, orbits
        self.i = 0
        self.rng = np.random.default_rng(seed)
        self.bg = self.rng.integers(0, 256, size=3, dtype=np.uint8)

    def read(self) -> Capture:  # noqa: D102
        """The next frame (see :class:`Source`); raises SourceEnded or SourceError."""
        if self.orbits and self.i >= self.n * self.orbits:
            raise SourceEnded(f"orbit of {self.mesh.name} complete ({self.i} views)")
        pose = camera.circle_pose(self.i, self.n, self.el, self.d)
        rgb, _ = self.renderer.render(self.mesh.parts, self.K, pose[None], self.bg[None])
        self.i += 1
        return Capture(view=rgb[0], t=time.time(), pose=pose)

    def close(self) -> None:  # noqa: D102
        """Release the device, file or renderer."""
        self.renderer.close()


class FolderSource(Source):
    """Images of a folder in name order (any size: centre crop + resize)."""

    def __init__(self, folder: str | Path, K_capture: np.ndarray | None = None):
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self.i, self.K_capture = 0, K_capture

    def read(self) -> Capture:  # noqa: D102
        """The next frame (see :class:`Source`); raises SourceEnded or SourceError."""
        import cv2

        while self.i < len(self.files):
            p = self.files[self.i]
            self.i += 1
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                log.warning("cannot read image %s: skipped", p)
                continue
            try:
                view = capture_to_view(img)
            except ValueError as e:
                log.warning("cannot use image %s: %s: skipped", p, e)
                continue
            if self.K_capture is not None:
                self.K = view_intrinsics(self.K_capture, *img.shape[:2])
            return Capture(view=view, t=time.time(), resized_from=img.shape[:2])
        raise SourceEnded(f"all {len(self.files)} images of the folder sent")


class OpenCVSource(Source):
    """A camera index, video file, RTSP URL or GStreamer pipeline (``... ! appsink``) through OpenCV.

    Raises:
        SourceError: it cannot be opened.
    """

    def __init__(self, spec: str, K_capture: np.ndarray | None = None):
        self.spec, self.K_capture = spec, K_capture
        self.live = spec.isdigit() or "!" in spec or spec.startswith(
            ("rtsp://", "rtmp://", "http://", "https://", "udp://"))
        self.cap = self._open()
        if not self.cap.isOpened():
            raise SourceError(f"cannot open video source {spec!r}")

    def _open(self):
        import cv2

        if self.spec.isdigit():
            return cv2.VideoCapture(int(self.spec))
        if "!" in self.spec:
            return cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        return cv2.VideoCapture(self.spec)

    def read(self) -> Capture:  # noqa: D102
        """The next frame (see :class:`Source`); raises SourceEnded or SourceError (a live source that
        delivers no frame, or a malformed frame)."""
        ok, img = self.cap.read()
        if not ok or img is None:
            if self.live:
                raise SourceError(f"camera {self.spec!r} delivered no frame")
            raise SourceEnded(f"video {self.spec!r} ended")
        view = _view_of(img, f"camera {self.spec!r}")
        if self.K_capture is not None:
            self.K = view_intrinsics(self.K_capture, *img.shape[:2])
        return Capture(view=view, t=time.time(), resized_from=img.shape[:2])

    def reopen(self) -> None:
        """Release the device and open the same spec again (a live source only).

        Raises:
            SourceError: it does not open now.
        """
        if not self.live:
            return
        try:
            self.cap.release()
        except Exception:  # noqa: BLE001 - a dead device may fail to release; it is replaced anyway
            log.warning("releasing %r failed", self.spec, exc_info=True)
        self.cap = self._open()
        if not self.cap.isOpened():
            raise SourceError(f"cannot reopen video source {self.spec!r}")
        log.info("video source %r opened again", self.spec)

    def close(self) -> None:  # noqa: D102
        """Release the device, file or renderer."""
        self.cap.release()


def open_source(spec: str, K_capture: np.ndarray | None = None, orbit_views: int = 24, orbits: int = 1) -> Source:
    """Open a source from its spec: ``orbit:MESH``, a folder, a camera index, a file/URL/pipeline.

    Raises:
        SourceError: it cannot be opened (the message names it).
    """
    try:
        if spec.startswith("orbit:"):
            return OrbitSource(spec[len("orbit:"):], views_per_orbit=orbit_views, orbits=orbits)
        if Path(spec).is_dir():
            return FolderSource(spec, K_capture)
        return OpenCVSource(spec, K_capture)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot open source {spec!r}: {e}") from e
