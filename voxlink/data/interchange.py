"""The interchange format: one ``.npz`` file per object, readable by any NumPy (``np.load``).

``voxlink data make --format npz`` writes it, ``voxlink data import`` converts a user's own capture into
it, and a folder of such files (without ``manifest.json``) is a dataset for training, ``voxlink eval``
and ``voxlink bench accuracy`` (:class:`voxlink.data.store.DatasetStore` reads it). Members
(``V`` views of ``H x W`` pixels, ``R = 32``):

=================  ======================  =============================================================
``rgb``            uint8 [V, H, W, 3]      RGB views
``depth``          float32 [V, H, W]       z-depth along the camera's optical axis, metres (object
                                           units), ``0`` where the object is not seen
``mask``           bool [V, H, W]          the object's pixels
``K``              float32 [V, 3, 3]       intrinsics per view, pixels (OpenCV; pixel centres at integers)
``pose``           float32 [V, 4, 4]       camera-to-object, OpenCV camera axes (x right, y down, z forward)
``occupancy``      bool [R, R, R]          solid occupancy, indexed ``[x, y, z]``
``voxel_min``      float32 [3]             the grid's lower corner in the object frame, metres (-0.5)
``voxel_size``     float32 []              one voxel's edge, metres (``1 / R``)
``category``       str []                  e.g. ``chair``; ``other`` when unknown
``source``         str []                  where the object came from (``procedural:...``, ``mesh:PATH``,
                                           ``capture:DIR``)
=================  ======================  =============================================================

Optional extras: ``format`` (str, ``voxlink-npz-1``), ``id`` (str, default: the file's stem), ``name``
(str, default: the file's stem), ``split``
(str ``train`` / ``val`` / ``test``; a file without it is ``test``), ``has_occupancy`` (bool; ``False``
marks a capture imported without a mesh: its ``occupancy`` is all False and means "unknown", and
datasets leave such objects out of training and scoring), ``has_mask`` (bool; ``False``: the mask is
all True because none was given), ``world_to_object`` (float64 [4, 4]: the similarity that took the
capture's world frame to the object frame; object = ``world_to_object @ world``).

The object frame is voxlink's (:mod:`voxlink.camera`): Y up, the object centred in the unit cube
``[-0.5, 0.5]^3`` that the grid covers, so ``voxel_min`` must be -0.5 and ``voxel_size`` ``1 / R``
(readers check it). Strings are 0-d NumPy unicode arrays (no pickle). Files are written deterministically
(fixed zip timestamps), so the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from voxlink.camera import GRID_EXTENT, VOXEL_MIN
from voxlink.data.store import DatasetError

#: Value of the ``format`` member.
NPZ_FORMAT = "voxlink-npz-1"
#: Required members.
REQUIRED = ("rgb", "depth", "mask", "K", "pose", "occupancy", "voxel_min", "voxel_size", "category", "source")
#: Small members read when a folder is opened (everything but the big arrays).
SMALL = ("K", "voxel_min", "voxel_size", "category", "source", "id", "name", "split", "has_occupancy", "has_mask",
         "format")
SPLITS = ("train", "val", "test")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class InterchangeError(DatasetError):
    """An object file is missing members, has wrong shapes or dtypes, or another grid; the message names the file.
    A :class:`~voxlink.data.store.DatasetError` (so a ``ValueError``)."""


def scalar(value):
    """A member that holds one value (0-d, or 1 element as ``np.savez`` users may write it) as a Python
    ``str`` / ``bool`` / number; other values unchanged."""
    a = np.asarray(value)
    if a.size != 1:
        return value
    x = a.reshape(-1)[0]
    return str(x) if a.dtype.kind in "SU" else x.item() if hasattr(x, "item") else x


def _check_layout(shapes: dict, small: dict, where: str) -> None:
    """Shapes and dtypes (``name -> (shape, dtype)``) of the big members and the grid / split of ``small``."""
    (shape, dt) = shapes["rgb"]
    if np.dtype(dt) != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise InterchangeError(f"{where}: rgb must be uint8 [V, H, W, 3], got {np.dtype(dt)} {list(shape)}")
    v, h, w = shape[:3]
    for name, want_dt, want in (("depth", np.float32, (v, h, w)), ("mask", np.bool_, (v, h, w)),
                                ("K", np.float32, (v, 3, 3)), ("pose", np.float32, (v, 4, 4))):
        got, got_dt = shapes[name]
        if np.dtype(got_dt) != want_dt or tuple(got) != want:
            raise InterchangeError(f"{where}: {name} must be {np.dtype(want_dt).name} {list(want)}, "
                                   f"got {np.dtype(got_dt)} {list(got)}")
    occ, occ_dt = shapes["occupancy"]
    if np.dtype(occ_dt) != np.bool_ or len(occ) != 3 or len(set(occ)) != 1:
        raise InterchangeError(f"{where}: occupancy must be bool [R, R, R], got {np.dtype(occ_dt)} {list(occ)}")
    r = occ[0]
    vmin, vsize = np.asarray(small["voxel_min"], np.float64), np.asarray(small["voxel_size"], np.float64)
    if vmin.shape != (3,) or vsize.size != 1 or not np.allclose(vmin, VOXEL_MIN, atol=1e-6) \
            or abs(float(vsize.reshape(-1)[0]) - GRID_EXTENT / r) > 1e-6:
        raise InterchangeError(f"{where}: the grid must cover voxlink's unit cube (voxel_min {VOXEL_MIN} x3, voxel_size "
                               f"1/{r}); got voxel_min {vmin.tolist()}, voxel_size {vsize.tolist()}: "
                               "normalise the object first")
    split = small.get("split")
    if split is not None and scalar(split) not in SPLITS:
        raise InterchangeError(f"{where}: split must be one of {SPLITS}, got {scalar(split)!r}")


def validate(arrays: dict, where: str = "object") -> None:
    """Check an object's members against the format (module docstring).

    Args:
        arrays: member name -> value (NumPy arrays or Python scalars / strings).
        where: the file's name, used in messages.

    Raises:
        InterchangeError: a required member is missing; a shape or dtype is wrong; the grid is not voxlink's
            unit cube; depth, pose or K hold NaN or infinity; ``split`` is not train / val / test.
    """
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise InterchangeError(f"{where}: missing member(s) {', '.join(missing)}")
    big = {k: np.asarray(arrays[k]) for k in ("rgb", "depth", "mask", "K", "pose", "occupancy")}
    _check_layout({k: (a.shape, a.dtype) for k, a in big.items()}, arrays, where)
    if not all(np.isfinite(big[k]).all() for k in ("depth", "pose", "K")):
        raise InterchangeError(f"{where}: depth, pose and K must be finite")


def write_object(path: str | Path, arrays: dict) -> Path:
    """Write one object file (deterministic zip of ``.npy`` members, deflate), atomically.

    Args:
        path: output ``.npz`` file.
        arrays: the members of the module docstring (strings and booleans as Python values or 0-d
            arrays); ``format`` is added.

    Returns:
        the path written.

    Raises:
        InterchangeError: the members do not fit the format (:func:`validate`).
    """
    path = Path(path)
    validate(arrays, path.name)
    members = {"format": NPZ_FORMAT, **arrays}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, value in members.items():
            a = np.asarray(value)
            if a.dtype.kind in "OSU":
                a = np.asarray(str(value) if a.ndim == 0 else a, dtype=np.str_)
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a if a.flags.c_contiguous else a.copy(order="C"), allow_pickle=False)  # keeps 0-d
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=6)
    tmp.replace(path)
    return path


class ObjectFile:
    """Lazy reader of one object file: each member is decompressed only when asked for.

    Args:
        path: the ``.npz`` file.

    Raises:
        InterchangeError: not a readable zip (``np.savez`` file).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._zf = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as e:
            raise InterchangeError(f"cannot read {self.path}: {e}") from e
        self.members = {n[:-4] for n in self._zf.namelist() if n.endswith(".npy")}

    def read(self, name: str) -> np.ndarray:
        """Member ``name`` as a NumPy array (strings as 0-d unicode arrays).

        Raises:
            InterchangeError: no such member, or it is not a valid ``.npy``.
        """
        if name not in self.members:
            raise InterchangeError(f"{self.path}: no member {name!r}")
        with self._zf.open(f"{name}.npy") as f:
            try:
                return np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
            except ValueError as e:
                raise InterchangeError(f"{self.path}: member {name!r}: {e}") from e

    def shape(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of member ``name`` from its ``.npy`` header, without reading its data."""
        if name not in self.members:
            raise InterchangeError(f"{self.path}: no member {name!r}")
        with self._zf.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(f)
        return tuple(shape), dtype

    def fingerprint(self) -> list:
        """Names, sizes and CRC32s of the members, from the zip's directory (a content hash without decompressing)."""
        return sorted((i.filename, i.file_size, i.CRC) for i in self._zf.infolist())

    def info(self) -> dict:
        """The object's entry: ``id``, ``name``, ``category``, ``source``, ``split``, ``views``, ``image_size`` (H, W),
        ``resolution``, ``has_occupancy``, ``has_mask``, ``K_varies`` (views with different intrinsics).

        Raises:
            InterchangeError: a required member is missing, or the shapes / grid do not fit the format.
        """
        missing = [k for k in REQUIRED if k not in self.members]
        if missing:
            raise InterchangeError(f"{self.path}: missing member(s) {', '.join(missing)}")
        small = {k: self.read(k) for k in SMALL if k in self.members}
        shapes = {k: self.shape(k) for k in ("rgb", "depth", "mask", "K", "pose", "occupancy")}
        _check_layout(shapes, small, str(self.path))
        v, h, w = shapes["rgb"][0][:3]
        r = shapes["occupancy"][0][0]
        K = small["K"].astype(np.float64)
        return {"id": scalar(small["id"]) if "id" in small else self.path.stem,
                "name": scalar(small["name"]) if "name" in small else self.path.stem,
                "category": scalar(small["category"]), "source": scalar(small["source"]),
                "split": scalar(small["split"]) if "split" in small else "test",
                "views": int(v), "image_size": [int(h), int(w)], "resolution": int(r),
                "has_occupancy": bool(scalar(small.get("has_occupancy", True))),
                "has_mask": bool(scalar(small.get("has_mask", True))),
                "K_varies": bool(not np.allclose(K, K[:1], rtol=1e-6, atol=1e-6)), "K0": K[0]}

    def close(self) -> None:
        """Close the underlying zip file."""
        self._zf.close()


def find_object_files(root: str | Path) -> list[Path]:
    """The object files of a folder (``*.npz`` directly in it, sorted by name), or ``[root]`` for one file.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such dataset folder or object file: {root}")
    return sorted(p for p in root.glob("*.npz") if p.is_file())
