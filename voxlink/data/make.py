"""``voxlink data make``: generate a multi-view dataset from procedural objects and real meshes.

Every object is independent and deterministic from ``(seed, index)``: its shape (procedural), its
orbit of views, its backgrounds and its split, so the same command gives byte-identical files, with
any number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voxlink import __version__, camera
from voxlink.data import procedural
from voxlink.data.store import FORMAT, FORMAT_VERSION, write_shard
from voxlink.data.voxelize import GRID_EXTENT, RESOLUTION, VOXEL_MIN

log = logging.getLogger(__name__)

#: Version of the whole data generator (renderer, orbit, voxelizer, storage); recorded in manifests.
DATA_VERSION = "data-1"


@dataclass
class Job:
    """One object to generate.

    Attributes:
        index: position in the dataset (also derives every random choice with the seed).
        kind: ``"procedural"`` or ``"mesh"``.
        category: category name (procedural: what to build; mesh: guessed later if empty).
        shape_seed: seed of the procedural shape.
        path: mesh file (mesh jobs).
        up: mesh file's up axis, ``"y"`` or ``"z"``.
    """

    index: int
    kind: str
    category: str = ""
    shape_seed: int = 0
    path: str = ""
    up: str = "y"


@dataclass
class MakeConfig:
    """Parameters of a dataset (recorded in its manifest).

    Attributes:
        views: views rendered per object.
        size: image side in pixels.
        fov_deg: field of view in degrees.
        resolution: occupancy grid side in voxels.
        seed: master seed.
        split: (train, val) fractions for procedural objects; the rest is test.
        mesh_split: split of real meshes: ``test`` (default: never trained on), ``train``, ``val``,
            ``auto`` (same rule as procedural objects) or ``trainval`` (90 % train, 10 % val, by seed).
        shard_size: objects per shard file.
        orbit: viewpoint distribution.
    """

    views: int = 24
    size: int = 128
    fov_deg: float = 50.0
    resolution: int = RESOLUTION
    seed: int = 0
    split: tuple[float, float] = (0.8, 0.1)
    mesh_split: str = "test"
    shard_size: int = 32
    orbit: camera.OrbitSpec = field(default_factory=camera.OrbitSpec)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def plan_jobs(n_procedural: int, meshes: list[Path], seed: int, up: str = "y") -> list[Job]:
    """The list of objects: ``n_procedural`` procedural objects (categories in turn), then meshes.

    Raises:
        ValueError: a negative count.
    """
    if n_procedural < 0:
        raise ValueError(f"--procedural must be >= 0, got {n_procedural}")
    jobs = []
    cats = procedural.CATEGORIES
    for i in range(n_procedural):
        shape_seed = int(_rng(seed, i, 0).integers(0, 2**31 - 1))
        jobs.append(Job(index=i, kind="procedural", category=cats[i % len(cats)], shape_seed=shape_seed))
    for k, p in enumerate(meshes):
        jobs.append(Job(index=n_procedural + k, kind="mesh", path=str(p), up=up))
    return jobs


def _split_of(job: Job, cfg: MakeConfig) -> str:
    if job.kind == "mesh" and cfg.mesh_split not in ("auto", "trainval"):
        return cfg.mesh_split
    u = _rng(cfg.seed, job.index, 3).random()
    if job.kind == "mesh" and cfg.mesh_split == "trainval":
        return "train" if u < 0.9 else "val"
    return "train" if u < cfg.split[0] else ("val" if u < cfg.split[0] + cfg.split[1] else "test")


_RENDERER = None


def make_object(job: Job, cfg: MakeConfig) -> dict:
    """Build, render and voxelize one object.

    Returns:
        dict with ``arrays`` (``rgb``, ``depth``, ``pose``, ``occupancy``; see
        :mod:`voxlink.data.store`), ``meta`` (manifest entry without shard fields) and ``timing``
        (seconds: ``load``, ``render``, ``voxelize``); or ``{"error": message}`` if the object
        cannot be made (an unreadable mesh), so that the run goes on with the others.
    """
    global _RENDERER
    from voxlink.data.meshes import load_mesh
    from voxlink.data.render import Renderer, RenderError
    from voxlink.data.voxelize import voxelize

    t0 = time.perf_counter()
    try:
        if job.kind == "procedural":
            mesh = procedural.make_object(job.category, job.shape_seed)
            from voxlink.data.meshes import normalization_matrix

            mesh.apply_transform(normalization_matrix(mesh.bounds))
            parts, geom = [mesh], mesh
            name, category = f"{job.category}-{job.shape_seed}", job.category
            source = f"procedural:{procedural.GENERATOR_VERSION}:{job.category}:{job.shape_seed}"
        else:
            lm = load_mesh(job.path, up=job.up)
            parts, geom, name, category, source = lm.parts, lm.mesh, lm.name, lm.category, f"mesh:{job.path}"
    except (OSError, ValueError) as e:
        return {"error": f"{job.path or job.category}: {e}", "index": job.index}
    t1 = time.perf_counter()
    rng = _rng(cfg.seed, job.index, 1)
    poses = camera.orbit_poses(cfg.views, rng, cfg.orbit)
    bgs = rng.integers(0, 256, size=(cfg.views, 3), dtype=np.uint8)
    K = camera.intrinsics(cfg.size, cfg.fov_deg)
    if _RENDERER is None or _RENDERER.size != cfg.size:
        _RENDERER = Renderer(cfg.size)
    try:
        rgb, depth = _RENDERER.render(parts, K, poses, bgs)
    except RenderError as e:  # this mesh cannot be drawn: skip it with its reason, keep the context fresh
        _RENDERER.close()
        _RENDERER = None
        return {"error": f"{job.path or name}: cannot render: {e}", "index": job.index}
    t2 = time.perf_counter()
    occ = voxelize(geom, cfg.resolution)
    t3 = time.perf_counter()
    kind_prefix = "proc" if job.kind == "procedural" else "mesh"
    meta = {"id": f"{kind_prefix}-{job.index:06d}", "name": name, "category": category, "source": source,
            "split": _split_of(job, cfg), "occupied": int(occ.sum())}
    if occ.sum() == 0:
        return {"error": f"{name}: empty occupancy grid", "index": job.index}
    return {"arrays": {"rgb": rgb, "depth": depth, "pose": poses.astype(np.float32), "occupancy": occ},
            "meta": meta, "timing": {"load": t1 - t0, "render": t2 - t1, "voxelize": t3 - t2}}


def _worker(args):
    job, cfg = args
    try:
        return make_object(job, cfg)
    except Exception as e:  # a worker must report, not die, so the run goes on
        log.exception("object %s failed", job.index)
        return {"error": f"{job.path or job.category} (#{job.index}): {type(e).__name__}: {e}", "index": job.index}


def object_members(res: dict, cfg: MakeConfig) -> dict:
    """The interchange-format members (:mod:`voxlink.data.interchange`) of one made object.

    Args:
        res: a successful :func:`make_object` result (``arrays`` and ``meta``).
        cfg: the dataset parameters it was made with (intrinsics, grid).

    Returns:
        dict: ``rgb``, ``depth``, ``mask`` (``depth > 0``), ``K`` (float32 [V, 3, 3], every view the same),
        ``pose``, ``occupancy``, ``voxel_min``, ``voxel_size``, ``category``, ``source``, ``id`` (the sharded
        dataset's id, e.g. ``proc-000003``), ``name``, ``split``, ``has_occupancy`` (True), ``has_mask`` (True).
    """
    a, meta = res["arrays"], res["meta"]
    v = a["rgb"].shape[0]
    K = camera.intrinsics(cfg.size, cfg.fov_deg).astype(np.float32)
    return {"rgb": a["rgb"], "depth": a["depth"], "mask": a["depth"] > 0,
            "K": np.ascontiguousarray(np.broadcast_to(K, (v, 3, 3))), "pose": a["pose"], "occupancy": a["occupancy"],
            "voxel_min": np.full(3, VOXEL_MIN, np.float32), "voxel_size": np.float32(GRID_EXTENT / cfg.resolution),
            "category": meta["category"], "source": meta["source"], "id": meta["id"], "name": meta["name"],
            "split": meta["split"],
            "has_occupancy": True, "has_mask": True}


def make_dataset(out: str | Path, jobs: list[Job], cfg: MakeConfig, workers: int = 1, progress: bool = True,
                 fmt: str = "sharded") -> dict:
    """Generate a dataset folder: shards + ``manifest.json`` (``fmt="sharded"``), or one interchange
    ``.npz`` per object named ``<index>_<name>.npz`` (so name order is job order) plus ``make.json`` (parameters, seed, skipped objects; no
    manifest) (``fmt="npz"``, :mod:`voxlink.data.interchange`). Both hold the same arrays for the same seed.

    Args:
        out: output folder (created; must not already hold another dataset, or anything else).
        jobs: objects to make (:func:`plan_jobs`).
        cfg: dataset parameters.
        workers: processes rendering in parallel (each has its own OpenGL context).
        progress: show a progress bar (tqdm).
        fmt: ``sharded`` or ``npz``.

    Returns:
        statistics: ``objects``, ``failed`` (list of messages), ``seconds``, ``objects_per_s`` and
        ``render_s`` / ``voxelize_s`` / ``load_s`` (summed over workers).

    Raises:
        ValueError: no jobs, bad config, ``out`` empty, an existing file, or a non-empty folder that
            is not a dataset.
    """
    from tqdm import tqdm

    out = Path(out)
    if not jobs:
        raise ValueError("nothing to make: give --procedural N > 0 and/or --meshes PATH")
    if cfg.views < 1 or cfg.size < 16 or cfg.resolution < 4 or cfg.shard_size < 1:
        raise ValueError(f"bad dataset parameters: views={cfg.views} size={cfg.size} resolution={cfg.resolution}")
    if cfg.mesh_split not in ("train", "val", "test", "auto", "trainval"):
        raise ValueError(f"mesh split must be train, val, test, auto or trainval, got {cfg.mesh_split!r}")
    if str(out).strip() in ("", "."):
        raise ValueError("give a dataset folder with --out (not an empty path or the current folder)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a folder: {out}")
    if fmt not in ("sharded", "npz"):
        raise ValueError(f"format must be sharded or npz, got {fmt!r}")
    made_npz = out.is_dir() and (out / "make.json").is_file() and not (out / "manifest.json").exists()
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file() and not made_npz:
        raise ValueError(f"refusing to write into {out}: it is not empty and not a voxlink dataset")
    if (fmt == "npz" and (out / "manifest.json").is_file()) or (fmt == "sharded" and made_npz):
        raise ValueError(f"refusing to write into {out}: it holds a dataset of the other format")
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "shards").glob("shard-*.npz") if (out / "shards").is_dir() else []:
        old.unlink()
    if made_npz:  # files of an earlier `data make --format npz` into this folder
        for old in json.loads((out / "make.json").read_text()).get("files", []):
            (out / Path(old).name).unlink(missing_ok=True)

    t0 = time.perf_counter()
    objects, pending, failed, n_shard = [], [], [], 0
    timing = {"load": 0.0, "render": 0.0, "voxelize": 0.0}

    def _flush():
        nonlocal n_shard, pending
        if not pending:
            return
        if fmt == "npz":
            from voxlink.data.interchange import write_object

            for p in pending:  # <index>_<name>.npz: the folder's name order is the dataset's order
                fname = f"{p['meta']['id'].split('-')[-1]}_{re.sub(r'[^A-Za-z0-9._-]+', '_', p['meta']['name'])}.npz"
                write_object(out / fname, object_members(p, cfg))
                objects.append({**p["meta"], "file": fname})
            pending = []
            return
        name = f"shard-{n_shard:05d}.npz"
        write_shard(out / "shards" / name, [p["arrays"] for p in pending])
        for j, p in enumerate(pending):
            objects.append({**p["meta"], "shard": name, "index": j})
        n_shard += 1
        pending = []

    args = [(j, cfg) for j in jobs]
    if workers > 1:
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(min(workers, len(jobs)))
        results = pool.imap(_worker, args, chunksize=1)
    else:
        pool, results = None, map(_worker, args)
    try:
        for res in tqdm(results, total=len(jobs), desc="objects", unit="obj", disable=not progress):
            if "error" in res:
                log.error("skipped: %s", res["error"])
                failed.append(res["error"])
                continue
            for k in timing:
                timing[k] += res["timing"][k]
            pending.append(res)
            if len(pending) >= cfg.shard_size:
                _flush()
        _flush()
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    K = camera.intrinsics(cfg.size, cfg.fov_deg)
    splits = {s: sum(o["split"] == s for o in objects) for s in ("train", "val", "test")}
    if fmt == "npz":
        (out / "make.json").write_text(json.dumps({
            "format": "voxlink-npz-folder", "data_version": DATA_VERSION, "voxlink_version": __version__,
            "generator_version": procedural.GENERATOR_VERSION, "seed": cfg.seed,
            "config": {**asdict(cfg), "orbit": asdict(cfg.orbit)}, "splits": splits,
            "files": [o["file"] for o in objects], "failed": failed}, indent=1, sort_keys=True))
        secs = time.perf_counter() - t0
        return {"objects": len(objects), "failed": failed, "seconds": secs,
                "objects_per_s": len(objects) / secs if secs > 0 else math.nan,
                **{f"{k}_s": v for k, v in timing.items()}}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "data_version": DATA_VERSION,
        "generator_version": procedural.GENERATOR_VERSION, "voxlink_version": __version__,
        "seed": cfg.seed, "config": {**asdict(cfg), "orbit": asdict(cfg.orbit)},
        "image_size": cfg.size, "views": cfg.views,
        "camera": {"convention": "opencv", "pose": "camera_to_object", "K": K.tolist(), "depth_units": "metres"},
        "grid": {"resolution": cfg.resolution, "voxel_min": VOXEL_MIN, "voxel_size": GRID_EXTENT / cfg.resolution,
                 "indexing": "xyz"},
        "splits": splits, "categories": sorted({o["category"] for o in objects}),
        "objects": objects, "failed": failed,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    secs = time.perf_counter() - t0
    return {"objects": len(objects), "failed": failed, "seconds": secs,
            "objects_per_s": len(objects) / secs if secs > 0 else math.nan,
            **{f"{k}_s": v for k, v in timing.items()}}
