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
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

#: Manifest format name and version.
FORMAT = "voxlink-dataset"
FORMAT_VERSION = 1
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
ARRAYS = ("rgb", "depth", "pose", "occupancy")


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
    """Read access to a dataset folder: its manifest and, lazily, any object's arrays.

    Args:
        root: dataset folder (with ``manifest.json``).
        cache_shards: number of open shard files kept.

    Raises:
        DatasetError: no manifest, or a manifest of another format or version.
    """

    def __init__(self, root: str | Path, cache_shards: int = 8):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise DatasetError(f"not a voxlink dataset (no manifest.json): {self.root}")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"corrupt manifest {mpath}: {e}") from e
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{mpath}: format {self.manifest.get('format')!r} v{self.manifest.get('format_version')}"
                               f" is not {FORMAT!r} v{FORMAT_VERSION}")
        self.objects: list[dict] = self.manifest["objects"]
        self.K = np.asarray(self.manifest["camera"]["K"], dtype=np.float64)
        self._cache: OrderedDict[str, ShardReader] = OrderedDict()
        self._cache_size = cache_shards

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
            r = ShardReader(self.root / "shards" / name)
            self._cache[name] = r
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)[1].close()
        else:
            self._cache.move_to_end(name)
        return r

    def read(self, i: int, name: str) -> np.ndarray:
        """Array ``name`` of object ``i`` (see the module docstring for shapes and units)."""
        o = self.objects[i]
        return self._shard(o["shard"]).read(o["index"], name)

    def __getstate__(self):  # DataLoader workers reopen their own files
        d = self.__dict__.copy()
        d["_cache"] = OrderedDict()
        return d


def manifest_hash(root: str | Path) -> str:
    """SHA-256 (hex, first 16 digits) of a dataset's ``manifest.json``: names the data a model saw."""
    return hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()[:16]
