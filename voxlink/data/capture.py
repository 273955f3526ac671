"""``voxlink data import``: a user's own multi-view capture with poses -> one interchange ``.npz``.

Inputs (see the README's "Data format" section):

* images: a folder of PNG / JPEG / BMP / TIFF files of any size. Each becomes a ``size x size`` view by
  :func:`voxlink.preprocess.capture_to_view`'s rule (centre square crop, area resize), and its intrinsics
  move the same way (:func:`voxlink.preprocess.view_intrinsics`).
* poses: camera-to-world 4 x 4 matrices in OpenCV camera axes (x right, y down, z forward), metres, as

  - JSON: a list of ``{"image": NAME, "pose": 4x4, "K": 3x3 (optional)}`` (or ``{"frames": [...]}``,
    or ``{NAME: 4x4, ...}``), or
  - text: one line per image, ``NAME m00 m01 m02 m03 m10 ... m33`` (the matrix row by row), ``#``
    comments and blank lines skipped.

  ``NAME`` is the image's file name, with or without its extension. The views keep the poses file's
  order; images without a pose are skipped (and counted).
* intrinsics (unless every pose entry has its own ``K``): JSON ``{"K": 3x3}``, a bare 3 x 3 list, or
  ``{"fx", "fy", "cx", "cy"}``; optional ``"width"`` and ``"height"``: the image size K is for (checked).
* depth (optional): per image a ``NAME.png`` (16-bit, millimetres by default: ``depth_scale``) or
  ``NAME.npy`` (float metres) of the image's size; 0 = no depth.
* masks (optional): per image a ``NAME.png``, nonzero = object.
* mesh (optional): the object's mesh in the same world frame as the poses.

The object frame: the world is moved by one similarity (rotation for ``up="z"``, translation, uniform
scale) so that the object is Y up, centred, its longest side 1, the grid's unit cube: with a mesh, the
mesh's bounding box decides (the same normalisation as ``voxlink data make``), and the mesh is voxelized
by :func:`voxlink.data.voxelize.voxelize`; without a mesh but with depth, the box of the back-projected
depth (0.5th to 99.5th percentile per axis); with neither, the world is taken as it is (it must already
be the object frame). Poses' translations and depth scale with it. Without a mesh the occupancy is
unknown: ``occupancy`` is all False and ``has_occupancy`` False, and datasets leave the object out of
training and scoring. Views whose intrinsics differ from the first view's (after the crop) are
resampled into the first view's (a homography: same camera centre and orientation), so one ``K``
holds for the whole object.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from voxlink.camera import GRID_EXTENT, GRID_RESOLUTION, VOXEL_MIN, backproject
from voxlink.preprocess import IMAGE_SIZE, crop_box, capture_to_view, view_intrinsics

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class CaptureError(ValueError):
    """A capture cannot be imported; the message names the file and entry."""


def _matrix(value, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CaptureError(f"{where}: not a {shape[0]}x{shape[1]} matrix of numbers: {e}") from e
    if m.shape != shape and m.size == shape[0] * shape[1]:
        m = m.reshape(shape)
    if m.shape != shape or not np.isfinite(m).all():
        raise CaptureError(f"{where}: expected a finite {shape[0]}x{shape[1]} matrix, got shape {m.shape}")
    return m


def read_poses(path: str | Path) -> list[dict]:
    """Read a poses file (module docstring: JSON list / frames / mapping, or text lines).

    Returns:
        in file order, dicts ``{"image": str, "pose": float64 [4, 4] camera-to-world, "K": float64 [3, 3] or None}``.

    Raises:
        FileNotFoundError: no such file.
        CaptureError: unreadable JSON, a bad line or entry (named), a pose that is not a rigid motion, or no poses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"poses file not found: {path}")
    entries = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CaptureError(f"{path}: not valid JSON: {e}") from e
        if isinstance(data, dict) and "frames" in data:
            data = data["frames"]
        if isinstance(data, dict):
            data = [{"image": k, "pose": v} for k, v in data.items()]
        if not isinstance(data, list):
            raise CaptureError(f"{path}: expected a list of {{image, pose, K}} entries")
        for n, e in enumerate(data):
            if not isinstance(e, dict) or "image" not in e or "pose" not in e:
                raise CaptureError(f"{path}: entry {n} needs 'image' and 'pose'")
            K = _matrix(e["K"], (3, 3), f"{path}: entry {n} K") if e.get("K") is not None else None
            entries.append({"image": str(e["image"]), "pose": _matrix(e["pose"], (4, 4), f"{path}: entry {n} pose"),
                            "K": K})
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            tok = line.split()
            if len(tok) != 17:
                raise CaptureError(f"{path}:{n}: expected 'NAME' and 16 numbers (a 4x4 pose row by row), got {len(tok)} fields")
            entries.append({"image": tok[0], "pose": _matrix(tok[1:], (4, 4), f"{path}:{n}"), "K": None})
    if not entries:
        raise CaptureError(f"{path}: no poses")
    for e in entries:
        T = e["pose"]
        R = T[:3, :3]
        if not (np.allclose(R @ R.T, np.eye(3), atol=1e-3) and np.linalg.det(R) > 0 and np.allclose(T[3], [0, 0, 0, 1])):
            raise CaptureError(f"{path}: pose of {e['image']} is not a rigid motion (rotation + translation, last row 0 0 0 1)")
    return entries


def read_intrinsics(path: str | Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Read an intrinsics file (module docstring).

    Returns:
        ``(K, size)``: float64 [3, 3] pixels, and ``(height, width)`` the file names, else None.

    Raises:
        FileNotFoundError: no such file. CaptureError: not one of the accepted layouts, or non-positive focal lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intrinsics file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CaptureError(f"{path}: not valid JSON: {e}") from e
    size = None
    if isinstance(data, dict):
        if "width" in data and "height" in data:
            size = (int(data["height"]), int(data["width"]))
        if "K" in data:
            K = _matrix(data["K"], (3, 3), f"{path}: K")
        elif all(k in data for k in ("fx", "fy", "cx", "cy")):
            K = np.array([[data["fx"], 0.0, data["cx"]], [0.0, data["fy"], data["cy"]], [0.0, 0.0, 1.0]], np.float64)
        else:
            raise CaptureError(f"{path}: expected 'K' (3x3) or 'fx', 'fy', 'cx', 'cy'")
    else:
        K = _matrix(data, (3, 3), str(path))
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CaptureError(f"{path}: focal lengths must be positive, got fx={K[0, 0]} fy={K[1, 1]}")
    return K, size


def _find(folder: Path, name: str, suffixes: tuple[str, ...]) -> Path | None:
    p = folder / name
    if p.is_file() and p.suffix.lower() in suffixes:
        return p
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES + (".npy",) else name
    for s in suffixes:
        for q in (folder / f"{stem}{s}", folder / f"{stem}{s.upper()}"):
            if q.is_file():
                return q
    return None


def _crop_resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    import cv2

    y0, x0, s = crop_box(*a.shape[:2])
    a = np.ascontiguousarray(a[y0:y0 + s, x0:x0 + s])
    if s == size:
        return a
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)
    return cv2.resize(a, (size, size), interpolation=interp)


def import_capture(images: str | Path, poses: str | Path, out: str | Path, intrinsics: str | Path | None = None,
                   depth: str | Path | None = None, masks: str | Path | None = None, mesh: str | Path | None = None,
                   up: str = "y", size: int = IMAGE_SIZE, category: str = "other", name: str | None = None,
                   split: str | None = None, depth_scale: float = 0.001, resolution: int = GRID_RESOLUTION) -> dict:
    """Convert a capture into one interchange object file (module docstring for the inputs and rules).

    Args:
        images: folder of images. poses: poses file. out: the ``.npz`` to write.
        intrinsics: intrinsics file (needed unless every pose entry has ``K``).
        depth: folder of depth maps (16-bit PNG scaled by ``depth_scale`` to metres, or ``.npy`` metres).
        masks: folder of masks (nonzero = object).
        mesh: the object's mesh in the poses' world frame (gives the occupancy grid and the normalisation).
        up: the world's up axis, ``y`` or ``z``.
        size: view side in pixels.
        category: category name. name: object name (default: the images folder's name).
        split: ``train``, ``val`` or ``test`` written into the file (none: readers take ``test``).
        depth_scale: metres per PNG depth unit (0.001: millimetres).
        resolution: occupancy grid side in voxels.

    Returns:
        ``{"out", "views", "skipped_images", "K" (float64 [3, 3]), "world_to_object" (float64 [4, 4]),
        "scale", "has_occupancy", "resampled_views"}``.

    Raises:
        FileNotFoundError: a folder or file is missing.
        CaptureError: no intrinsics for an image, an image without a readable file, a depth map or mask of
            another size, a pose entry naming no image, a bad ``up`` or ``split``, an empty normalisation box.
        voxlink.data.meshes.MeshLoadError: the mesh cannot be read.
    """
    import cv2

    from voxlink.data.interchange import write_object
    from voxlink.data.meshes import normalization_matrix

    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    if up not in ("y", "z"):
        raise CaptureError(f"up must be y or z, got {up!r}")
    if split not in (None, "train", "val", "test"):
        raise CaptureError(f"split must be train, val or test, got {split!r}")
    for folder, what in ((depth, "depth"), (masks, "masks")):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
    entries = read_poses(poses)
    K_file, K_size = read_intrinsics(intrinsics) if intrinsics is not None else (None, None)
    all_images = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    rgbs, depths, maskv, Ks, T_w = [], [], [], [], []
    used = set()
    for e in entries:
        img_path = _find(images, e["image"], IMAGE_SUFFIXES)
        if img_path is None:
            raise CaptureError(f"pose entry {e['image']!r}: no such image in {images}")
        image = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if image is None:
            raise CaptureError(f"{img_path}: cannot read the image")
        used.add(img_path)
        h, w = image.shape[:2]
        K = e["K"] if e["K"] is not None else K_file
        if K is None:
            raise CaptureError(f"{img_path.name}: no intrinsics (give --intrinsics, or 'K' in its pose entry)")
        if e["K"] is None and K_size is not None and K_size != (h, w):
            raise CaptureError(f"{img_path.name} is {w}x{h} pixels but the intrinsics are for "
                               f"{K_size[1]}x{K_size[0]}")
        rgbs.append(capture_to_view(image, size, bgr=True))
        Ks.append(view_intrinsics(K, h, w, size))
        T_w.append(e["pose"])
        d = None
        if depth is not None:
            dp = _find(Path(depth), img_path.name, (".png", ".npy"))
            if dp is None:
                raise CaptureError(f"{img_path.name}: no depth map NAME.png / NAME.npy in {depth}")
            if dp.suffix.lower() == ".npy":
                d = np.load(dp, allow_pickle=False).astype(np.float32)
            else:
                raw = cv2.imread(str(dp), cv2.IMREAD_UNCHANGED)
                if raw is None or raw.ndim != 2:
                    raise CaptureError(f"{dp}: not a single-channel depth PNG")
                d = raw.astype(np.float32) * np.float32(depth_scale)
            if d.shape != (h, w):
                raise CaptureError(f"{dp}: depth is {d.shape[1]}x{d.shape[0]}, its image {w}x{h}")
            d = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
            d = _crop_resize(d, size, nearest=True)
        m = None
        if masks is not None:
            mp = _find(Path(masks), img_path.name, (".png", ".jpg", ".bmp", ".tif", ".tiff"))
            if mp is None:
                raise CaptureError(f"{img_path.name}: no mask NAME.png in {masks}")
            raw = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
            if raw is None or raw.shape != (h, w):
                raise CaptureError(f"{mp}: unreadable, or not {w}x{h} like its image")
            m = _crop_resize((raw > 0).astype(np.uint8), size, nearest=True) > 0
        depths.append(d)
        maskv.append(m)
    skipped = [p.name for p in all_images if p not in used]
    if skipped:
        log.warning("%d image(s) without a pose skipped: %s", len(skipped), ", ".join(skipped[:5]))

    # one K for the object: resample views whose intrinsics differ (same centre and orientation: a homography)
    K0, resampled = Ks[0], 0
    for i in range(1, len(Ks)):
        if np.allclose(Ks[i], K0, rtol=1e-6, atol=1e-6):
            continue
        H = K0 @ np.linalg.inv(Ks[i])
        rgbs[i] = cv2.warpPerspective(rgbs[i], H, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if depths[i] is not None:
            depths[i] = cv2.warpPerspective(depths[i], H, (size, size), flags=cv2.INTER_NEAREST)
        if maskv[i] is not None:
            maskv[i] = cv2.warpPerspective(maskv[i].astype(np.uint8), H, (size, size), flags=cv2.INTER_NEAREST) > 0
        resampled += 1

    V = len(rgbs)
    d_arr = np.stack([d if d is not None else np.zeros((size, size), np.float32) for d in depths])
    if masks is not None:
        m_arr, has_mask = np.stack(maskv), True
    elif depth is not None:
        m_arr, has_mask = d_arr > 0, True
    else:
        m_arr, has_mask = np.ones((V, size, size), bool), False
    if depth is not None:
        d_arr = np.where(m_arr, d_arr, 0).astype(np.float32)
    T_w = np.stack(T_w)

    # world -> object frame (a similarity), and the grid
    occ, has_occ = np.zeros((resolution,) * 3, bool), False
    if mesh is not None:
        from voxlink.data.meshes import load_mesh
        from voxlink.data.voxelize import voxelize

        lm = load_mesh(mesh, up=up)
        N = lm.transform
        occ, has_occ = voxelize(lm.mesh, resolution), True
        category = category if category != "other" else lm.category
    elif depth is not None and (d_arr > 0).any():
        pts = np.concatenate([backproject(d_arr[i], K0, T_w[i]) for i in range(V)])
        bounds = np.percentile(pts, [0.5, 99.5], axis=0)
        try:
            N = normalization_matrix(bounds, up)
        except ValueError as e:
            raise CaptureError(f"cannot normalise the capture from its depth: {e}") from e
    else:
        N = normalization_matrix(np.array([[-0.5] * 3, [0.5] * 3]), up)  # rotation only (Z up -> Y up)
    scale = float(np.cbrt(np.linalg.det(N[:3, :3])))
    Rn = N[:3, :3] / scale
    pose = np.empty_like(T_w)
    pose[:, :3, :3] = Rn @ T_w[:, :3, :3]
    pose[:, :3, 3] = T_w[:, :3, 3] @ N[:3, :3].T + N[:3, 3]
    pose[:, 3] = [0, 0, 0, 1]
    d_arr = (d_arr * np.float32(scale)).astype(np.float32)

    members = {
        "rgb": np.stack(rgbs).astype(np.uint8), "depth": d_arr, "mask": m_arr,
        "K": np.ascontiguousarray(np.broadcast_to(K0.astype(np.float32), (V, 3, 3))),
        "pose": pose.astype(np.float32), "occupancy": occ,
        "voxel_min": np.full(3, VOXEL_MIN, np.float32), "voxel_size": np.float32(GRID_EXTENT / resolution),
        "category": category, "source": f"capture:{images}", "name": name or images.resolve().name,
        "has_occupancy": has_occ, "has_mask": has_mask, "world_to_object": N,
    }
    if split is not None:
        members["split"] = split
    write_object(out, members)
    return {"out": str(out), "views": V, "skipped_images": skipped, "K": K0, "world_to_object": N, "scale": scale,
            "has_occupancy": has_occ, "resampled_views": resampled}
