"""Browser viewer of the ground station: a three.js page (vendored from the npm package ``three``)
served with the station's live state as JSON.

``GET /`` the page; ``GET /api/state`` per stream the views, gaps (missing ranges), missing views,
duplicates, late views, bytes/s and compression ratio, and
per object the occupied voxel centres (p > 0.4, world frame), the fused point cloud (at most 20,000
points), the latest depth map as a PNG data URL (``depth_png``; with a pose-aware model the latest view's
depth from the object's fused grid, ``depth_source`` ``fused``, about half the decoded depth's error, else
the view's decoded depth, ``decoded``) and, for a sequential or direct model, the latest decoded view
(``image_png``).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

log = logging.getLogger("voxlink.viewer")
ASSETS = Path(__file__).resolve().parents[1] / "voxlink" / "assets" / "viewer"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _depth_png(depth: np.ndarray) -> str:
    import cv2

    valid = depth > 0
    img = np.zeros(depth.shape + (3,), np.uint8)
    if valid.any():
        lo, hi = depth[valid].min(), depth[valid].max()
        g = ((depth - lo) / max(hi - lo, 1e-6) * 255).clip(0, 255).astype(np.uint8)
        img = cv2.applyColorMap(255 - g, cv2.COLORMAP_VIRIDIS)
        img[~valid] = 0
    ok, buf = cv2.imencode(".png", img)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def fused_depth_map(model, occ: np.ndarray, raw: np.ndarray, mask: np.ndarray, pose: np.ndarray,
                    K: np.ndarray) -> np.ndarray:
    """One view's depth from its object's fused grid, on the view's decoded silhouette
    (:func:`ground.station.fused_depth_maps` for one view).

    Args:
        model: a :class:`voxlink.models.fusion.FusionModel` (only its ``fused_depth``: no network).
        occ: float32 [R, R, R] the object's occupancy grid. raw: float32 [H, W] the view's decoded depth
            (metres). mask: bool [H, W] its decoded silhouette. pose: float [4, 4] camera-to-world, as fused.
            K: float [3, 3] intrinsics (pixels).

    Returns:
        float32 [H, W] metres, 0 off the silhouette.
    """
    from ground.station import fused_depth_maps

    return fused_depth_maps(model, occ, np.where(mask, raw, 0.0)[None], np.asarray(pose)[None], np.asarray(K)[None])[0]


def _image_png(rgb: np.ndarray) -> str:
    """A decoded view (uint8 [H, W, 3] RGB) as a PNG data URL."""
    import cv2

    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


class ViewerServer:
    """HTTP server of the viewer page and the station's state.

    Args:
        station: a running :class:`ground.station.GroundStation`.
        host, port: where to listen (port 0 picks a free one; see ``.port``).
    """

    def __init__(self, station, host: str = "127.0.0.1", port: int = 8080):
        self.station = station
        self.t0 = time.time()
        # object name -> (views when made, PNG data URL) of its latest fused depth map: made again only
        # when views came (13 ms an object on 2 cores), and never while holding the station's lock
        self._fused_png: dict = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            """Serves the page, its scripts and /api/state."""
            def log_message(self, fmt, *args):  # quiet: one line per request is noise
                """http.server hook (see the class docstring)."""
                log.debug(fmt, *args)

            def do_GET(self):  # noqa: N802 (http.server's name)
                """http.server hook (see the class docstring)."""
                path = self.path.split("?")[0]
                if path == "/api/state":
                    body, ctype = json.dumps(server.state()).encode(), "application/json"
                else:
                    name = "index.html" if path in ("/", "") else path.lstrip("/")
                    f = (ASSETS / name).resolve()
                    if f.parent != ASSETS or not f.is_file():
                        self.send_error(404)
                        return
                    body, ctype = f.read_bytes(), _TYPES.get(f.suffix, "application/octet-stream")
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="viewer")

    def start(self) -> "ViewerServer":
        """Serve in a background thread."""
        self.thread.start()
        log.info("viewer on http://%s:%d/", self.httpd.server_address[0], self.port)
        return self

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def state(self) -> dict:
        """The JSON state the page polls (see the module docstring)."""
        st = self.station
        dt = max(time.time() - self.t0, 1e-6)
        fused_todo = []
        with st.lock:
            status = st.status()
            streams = [{"stream": int(k), "model": v["model"] or "?", "views": v["views"], "gaps": len(v["missing"]),
                        "missing_views": v["missing_views"], "duplicates": v["duplicates"], "late": v["late"],
                        "bytes_per_s": sum(s.bytes for s in st.sessions.values() if s.stream == int(k)) / dt,
                        "ratio": st.ratio(*(s for s in st.sessions.values() if s.stream == int(k)))} for k, v in status["streams"].items() if v["views"]]
            objects = []
            for s in list(st.sessions.values()):
                if s.views == 0:
                    continue
                occ = st.occupancy(s)  # decoded here, only when the page asks
                st.process_depths(only=s)
                idx = np.argwhere(occ > 0.4).astype(np.float64)
                vox = idx @ s.grid_to_world[:3, :3].T + s.grid_to_world[:3, 3]
                pts = st.fused_points(s)
                if len(pts) > 20000:
                    pts = pts[np.linspace(0, len(pts) - 1, 20000).astype(int)]
                obj = {"key": s.name, "views": s.views,
                       "voxel_size": float(np.linalg.norm(s.grid_to_world[:3, 0])),
                       "voxels": np.round(vox, 4).reshape(-1).tolist(),
                       "points": np.round(pts, 4).reshape(-1).tolist(), "point_source": s.point_source,
                       "depth_png": _depth_png(s.last_depth) if s.last_depth is not None else "",
                       "depth_source": "decoded" if s.last_depth is not None else "",
                       "image_png": _image_png(s.last_image) if s.last_image is not None else ""}
                objects.append(obj)
                info = st.streams.get(s.stream)
                if (st.fused_depth_on and s.last_depth is not None and s.last_pose is not None
                        and s.last_raw_depth is not None and info is not None and info.K is not None):
                    cached = self._fused_png.get(s.name)
                    if cached is not None and cached[0] == s.views:
                        obj["depth_png"], obj["depth_source"] = cached[1], "fused"
                    else:  # copies: rendered after the lock is released
                        pose = s.corrected_pose(s.depth_u)  # (--refine-poses: as it was fused)
                        pose = np.asarray(s.last_pose if pose is None else pose, np.float32)
                        fused_todo.append((obj, s.name, s.views, occ.copy(), s.last_raw_depth.copy(),
                                           s.last_depth > 0, pose, np.asarray(info.K, np.float32)))
        for obj, name, views, occ, raw, mask, pose, K in fused_todo:
            try:
                obj["depth_png"] = _depth_png(fused_depth_map(st.model, occ, raw, mask, pose, K))
                obj["depth_source"] = "fused"
                self._fused_png[name] = (views, obj["depth_png"])
            except Exception:  # noqa: BLE001 - the decoded depth map stays; the viewer keeps serving
                log.exception("fused depth map of %s", name)
        return {"streams": streams, "objects": objects, "rejected": status["rejected"]}
