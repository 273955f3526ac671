"""Dataset storage: sharded, compressed files plus a JSON manifest, read lazily.

Layout of a dataset folder::

    manifest.json            # format, generator version, seeds, camera, splits, objects, shards
    shards/shard-00000.npz   # zip (deflate) of .npy members, one group per object

Members of a shard for its ``j``-th object (``j`` zero-padded to 3 digits)::

    {j}/rgb.npy        uint8   [V, H, W, 3]  RGB, plain random background
    {j}/depth.npy      float32 [V, H, W]     z-depth in metres (object units), 0 = background
    {j}/pose.npy       float32 [V, 4, 4]     camera-to-object poses, OpenCV convention
    {j}/occupancy.npy  bool    [R, R, R]     solid occupancy, indexed [x, y, z]

The mask is ``depth > 0`` (not stored twice). ``K`` (float [3, 3]) is in the manifest. Zip entries
carry a fixed timestamp, so the same seed gives byte-identical files.

A folder of interchange files (one ``.npz`` per object, no ``manifest.json``; see
:mod:`voxlink.data.interchange`), or one such file, is read through the same :class:`DatasetStore`
interface: ``objects``, ``manifest`` (built from the files), ``K``, ``split``, ``read``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

#: Manifest format name and version.
FORMAT = "voxlink-dataset"
FORMAT_VERSION = 1
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
ARRAYS = ("rgb", "depth", "pose", "occupancy")
log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or of an unknown format; the message says which file."""


def write_shard(path: Path, objects: list[dict[str, np.ndarray]]) -> None:
    """Write one shard: a deterministic zip of ``.npy`` members (see module docstring).

    Args:
        path: output ``.npz`` file.
        objects: per object a dict with the arrays named in :data:`ARRAYS`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for j, obj in enumerate(objects):
            for name in ARRAYS:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(obj[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{j:03d}/{name}.npy", date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=6)
    tmp.replace(path)


class ShardReader:
    """Lazy reader of one shard: each array is decompressed only when asked for.

    Raises:
        DatasetError: the shard is missing or is not a valid zip.
    """

    def __init__(self, path: Path):
        if not path.is_file():
            raise DatasetError(f"shard not found: {path}")
        try:
            self._zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise DatasetError(f"corrupt shard {path}: {e}") from e
        self.path = path

    def read(self, j: int, name: str) -> np.ndarray:
        """Array ``name`` (one of :data:`ARRAYS`) of the shard's ``j``-th object."""
        try:
            with self._zf.open(f"{j:03d}/{name}.npy") as f:
                return np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
        except KeyError as e:
            raise DatasetError(f"{self.path}: no member {j:03d}/{name}.npy") from e

    def close(self) -> None:
        """Close the underlying zip file."""
        self._zf.close()


class DatasetStore:
    """Read access to a dataset: its manifest and, lazily, any object's arrays.

    Two kinds of dataset, one interface (``kind`` says which):

    * ``sharded``: a folder made by ``voxlink data make`` (``manifest.json`` + ``shards/``).
    * ``npz``: a folder of interchange object files (``*.npz``, no ``manifest.json``) or one such file
      (:mod:`voxlink.data.interchange`). Objects are the files in name order; an object's ``id`` is its
      file's ``id`` member, else the file's stem; its split is the file's ``split`` member, else ``test``. ``manifest`` is built from the
      files: ``views`` (the fewest of any object), ``image_size``, ``camera`` (``K``: the first view's of the
      first object), ``grid``, ``splits``, ``categories``, ``objects``. Every object must have the same image
      size and grid resolution.

    Args:
        root: dataset folder (or one interchange ``.npz`` file).
        cache_shards: number of open shard (or object) files kept.

    Attributes:
        K: float64 [3, 3] intrinsics in pixels: the dataset's (sharded), or the first object's first view's
            (npz; :meth:`read_K` gives each object's per-view intrinsics, which may differ).
        objects: per object a dict with at least ``id``, ``name``, ``category``, ``split``, ``source``
            (npz entries add ``file``, ``views``, ``has_occupancy``, ``has_mask``).

    Raises:
        DatasetError: no manifest and no ``.npz`` object files; a manifest of another format or version; an
            object file that does not fit the interchange format; objects of different image sizes or grids.
    """

    def __init__(self, root: str | Path, cache_shards: int = 8):
        self.root = Path(root)
        self._cache: OrderedDict[str, ShardReader] = OrderedDict()
        self._cache_size = cache_shards
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            self._open_npz()
            return
        self.kind = "sharded"
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"corrupt manifest {mpath}: {e}") from e
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{mpath}: format {self.manifest.get('format')!r} v{self.manifest.get('format_version')}"
                               f" is not {FORMAT!r} v{FORMAT_VERSION}")
        self.objects: list[dict] = self.manifest["objects"]
        self.K = np.asarray(self.manifest["camera"]["K"], dtype=np.float64)

    def _open_npz(self) -> None:
        from voxlink.camera import GRID_EXTENT, VOXEL_MIN
        from voxlink.data.interchange import InterchangeError, ObjectFile, find_object_files

        try:
            files = find_object_files(self.root)
        except FileNotFoundError as e:
            raise DatasetError(str(e)) from e
        if not files:
            raise DatasetError(f"not a voxlink dataset (no manifest.json and no .npz object files): {self.root}")
        self.kind = "npz"
        objects, sizes, grids, k0 = [], set(), set(), None
        for path in files:
            try:
                f = ObjectFile(path)
                try:
                    info = f.info()
                finally:
                    f.close()
            except InterchangeError as e:
                raise DatasetError(str(e)) from e
            if info["K_varies"]:
                log.warning("%s: views have different intrinsics; models given one K per object use each item's "
                            "first view's (read_K / K_views give them all)", path)
            k0 = info.pop("K0") if k0 is None else k0
            info.pop("K0", None)
            sizes.add(tuple(info["image_size"]))
            grids.add(info["resolution"])
            objects.append({"file": path.name, **info})
        if len(sizes) > 1 or len(grids) > 1:
            raise DatasetError(f"{self.root}: objects differ in image size {sorted(sizes)} or grid {sorted(grids)}; "
                               "a dataset needs one of each")
        (h, w), r = sizes.pop(), grids.pop()
        self.objects = objects
        self.K = np.asarray(k0, dtype=np.float64)
        self.manifest = {
            "format": "voxlink-npz", "format_version": 1, "views": min(o["views"] for o in objects),
            "image_size": h if h == w else [h, w],
            "camera": {"convention": "opencv", "pose": "camera_to_object", "K": self.K.tolist(), "depth_units": "metres"},
            "grid": {"resolution": r, "voxel_min": VOXEL_MIN, "voxel_size": GRID_EXTENT / r, "indexing": "xyz"},
            "splits": {s: sum(o["split"] == s for o in objects) for s in ("train", "val", "test")},
            "categories": sorted({o["category"] for o in objects}), "objects": objects, "failed": [],
        }

    def __len__(self) -> int:
        return len(self.objects)

    def split(self, name: str | None) -> list[int]:
        """Indices of the objects in split ``name`` (``train``, ``val``, ``test``), or all for ``None``/``all``."""
        if name in (None, "all"):
            return list(range(len(self.objects)))
        return [i for i, o in enumerate(self.objects) if o["split"] == name]

    def _shard(self, name: str) -> ShardReader:
        r = self._cache.get(name)
        if r is None:
            if self.kind == "npz":
                from voxlink.data.interchange import ObjectFile

                r = ObjectFile(self.root / name if self.root.is_dir() else self.root)
            else:
                r = ShardReader(self.root / "shards" / name)
            self._cache[name] = r
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)[1].close()
        else:
            self._cache.move_to_end(name)
        return r

    def read(self, i: int, name: str) -> np.ndarray:
        """Array ``name`` of object ``i``.

        Args:
            i: object index (position in :attr:`objects`).
            name: ``rgb`` (uint8 [V, H, W, 3]), ``depth`` (float32 [V, H, W] metres, 0 = empty), ``pose``
                (float32 [V, 4, 4] camera-to-object), ``occupancy`` (bool [R, R, R], ``[x, y, z]``), ``mask``
                (bool [V, H, W]; ``depth > 0`` in a sharded dataset) or ``K`` (float32 [V, 3, 3]); an npz
                object also any other member of its file.

        Raises:
            DatasetError: no such array (npz: :class:`voxlink.data.interchange.InterchangeError`, a subclass).
        """
        o = self.objects[i]
        if self.kind == "npz":
            return self._shard(o["file"]).read(name)
        if name == "mask":
            return self.read(i, "depth") > 0
        if name == "K":
            return np.broadcast_to(self.K.astype(np.float32), (self.n_views(i), 3, 3)).copy()
        return self._shard(o["shard"]).read(o["index"], name)

    def read_K(self, i: int) -> np.ndarray:
        """Intrinsics of every view of object ``i``: float64 [V, 3, 3], pixels."""
        return self.read(i, "K").astype(np.float64)

    def n_views(self, i: int) -> int:
        """Number of views of object ``i``."""
        return int(self.objects[i].get("views", self.manifest["views"]))

    def has_occupancy(self, i: int) -> bool:
        """Whether object ``i`` has a true occupancy grid (False: a capture imported without a mesh)."""
        return bool(self.objects[i].get("has_occupancy", True))

    def __getstate__(self):  # DataLoader workers reopen their own files
        d = self.__dict__.copy()
        d["_cache"] = OrderedDict()
        return d


def manifest_hash(root: str | Path) -> str:
    """Names the data a model saw: SHA-256 (hex, first 16 digits).

    Sharded: of ``manifest.json``. Folder of interchange files (or one file): of every file's name and
    its members' names, sizes and CRC32s (from the zip directories: a hash of the content that reads no
    array, and ignores file times, so a copied folder keeps its hash).

    Raises:
        DatasetError: neither a manifest nor ``.npz`` object files at ``root``.
    """
    root = Path(root)
    if (root / "manifest.json").is_file():
        return hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()[:16]
    from voxlink.data.interchange import InterchangeError, ObjectFile, find_object_files

    try:
        files = find_object_files(root)
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from e
    if not files:
        raise DatasetError(f"not a voxlink dataset (no manifest.json and no .npz object files): {root}")
    h = hashlib.sha256(b"voxlink-npz-folder\n")
    for path in files:
        try:
            f = ObjectFile(path)
        except InterchangeError as e:
            raise DatasetError(str(e)) from e
        try:
            h.update(json.dumps([path.name, f.fingerprint()]).encode())
        finally:
            f.close()
    return h.hexdigest()[:16]
