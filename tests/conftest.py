"""Shared fixtures: small datasets made once per test session, and the real meshes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

ROOT = Path(__file__).resolve().parents[1]
SHARED_MESHES = ROOT.parent / "shared" / "data" / "meshes"
ASSET_MESHES = ROOT / "voxlink" / "assets" / "meshes"


@pytest.fixture(scope="session")
def mesh_root() -> Path:
    """The project's shared real meshes (CC0), or the six shipped ones where shared/ is absent."""
    return SHARED_MESHES if SHARED_MESHES.is_dir() else ASSET_MESHES


@pytest.fixture(scope="session")
def real_mesh_files(mesh_root) -> list[Path]:
    from voxlink.data.meshes import find_meshes

    return find_meshes([mesh_root])


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, mesh_root) -> Path:
    """16 procedural objects (every category) + 3 real meshes, 8 views each."""
    from voxlink.data.make import MakeConfig, make_dataset, plan_jobs
    from voxlink.data.meshes import find_meshes

    out = tmp_path_factory.mktemp("ds") / "small"
    meshes = find_meshes([ASSET_MESHES])[:3]
    jobs = plan_jobs(16, meshes, seed=3)
    stats = make_dataset(out, jobs, MakeConfig(views=8, seed=3, shard_size=8, mesh_split="auto"), workers=1,
                         progress=False)
    assert stats["objects"] == 19 and not stats["failed"]
    return out
