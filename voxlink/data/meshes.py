"""Real meshes: load OBJ (multi-part, with materials and textures), PLY, OFF and GLB through trimesh,
and normalise every object the same way.

Normalisation (the voxlink object frame): Y up, the bounding box centred on the origin, the longest
side scaled to 1, so the object fits the unit cube ``[-0.5, 0.5]^3``. Meshes authored Z-up (many
PLY and OFF files) are turned Y-up with ``up="z"`` (a -90 degree rotation about X).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

log = logging.getLogger(__name__)

#: File suffixes that :func:`find_meshes` collects.
MESH_SUFFIXES = (".obj", ".ply", ".off", ".glb", ".gltf", ".stl")
#: the six real meshes shipped with voxlink (CC0; ``voxlink/assets/meshes/ATTRIBUTION.md``): the demo's
#: and the ground benchmark's default input
ASSET_MESHES = Path(__file__).resolve().parents[1] / "assets" / "meshes"

#: Keyword -> category rules for real meshes (matched against the name, in order).
_CATEGORY_RULES: tuple[tuple[str, str], ...] = (
    (r"fan", "other"),
    (r"lamp|light|lantern", "lamp"),
    (r"sofa|couch", "sofa"),
    (r"bench", "bench"),
    (r"stool", "stool"),
    (r"chair|armchair|silla|thonet", "chair"),
    (r"bedside|drawer|cabinet|cupboard|wardrobe|bookcase|refrigerator|shelf", "cabinet"),
    (r"desk|table", "table"),
    (r"tv|television|display|monitor|screen", "display"),
    (r"car|truck|peterbilt|forklift|fork_lift|motorbike|vehicle", "car"),
    (r"plane|biplane|aircraft|jet", "airplane"),
    (r"boat|ship|vessel|watercraft", "watercraft"),
    (r"bed", "bed"),
)


class MeshLoadError(ValueError):
    """A mesh file exists but cannot be used: unreadable, empty, or degenerate. The message names the file."""


@dataclass
class LoadedMesh:
    """A normalised real mesh, ready to render and voxelize.

    Attributes:
        name: short name (folder or file stem).
        path: the file it came from.
        category: category guessed from the name (or ``"other"``).
        parts: render parts, each a ``trimesh.Trimesh`` in the voxlink object frame, with its own
            visual (texture or colours).
        mesh: all parts concatenated (geometry only), float64 vertices in the object frame.
        scale: the factor applied to the file's units (object units per file unit).
        meta: extra facts (``display_name`` from a catalogue).
        transform: float64 [4, 4], the similarity that took the file's coordinates to the object frame
            (:func:`normalization_matrix`); ``voxlink data import`` moves a capture's poses with it.
    """

    name: str
    path: Path
    category: str
    parts: list[trimesh.Trimesh]
    mesh: trimesh.Trimesh
    scale: float = 1.0
    meta: dict = field(default_factory=dict)
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))


def normalization_matrix(bounds: np.ndarray, up: str = "y") -> np.ndarray:
    """The 4 x 4 similarity that turns a mesh with axis-aligned ``bounds`` into the voxlink object frame.

    Args:
        bounds: float [2, 3], min and max corner in the file's units.
        up: ``"y"`` (file is Y-up) or ``"z"`` (file is Z-up: rotated -90 degrees about X first).

    Returns:
        float64 [4, 4]: rotate (for Z-up), centre the box, scale the longest side to 1.

    Raises:
        ValueError: unknown ``up`` or a degenerate (zero-size) box.
    """
    if up not in ("y", "z"):
        raise ValueError(f"up must be 'y' or 'z', got {up!r}")
    R = np.eye(4)
    if up == "z":
        R[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    corners = np.array([[x, y, z] for x in bounds[:, 0] for y in bounds[:, 1] for z in bounds[:, 2]])
    rc = corners @ R[:3, :3].T
    lo, hi = rc.min(0), rc.max(0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("degenerate bounding box (zero size)")
    T = np.eye(4)
    T[:3, 3] = -(lo + hi) / 2.0
    S = np.diag([1.0 / extent] * 3 + [1.0])
    return S @ T @ R


def category_from_name(name: str) -> str:
    """Guess a ShapeNet-like category from a mesh's name (``"oakChair"`` -> ``"chair"``), else ``"other"``."""
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
    for pattern, cat in _CATEGORY_RULES:
        if re.search(pattern, s):
            return cat
    return "other"


def _catalog_names(path: Path) -> dict[str, str]:
    """Folder -> display name from a ``catalog.tsv`` beside the mesh folders (shared data), if any."""
    for parent in (path.parent.parent, path.parent):
        cat = parent / "catalog.tsv"
        if cat.is_file():
            with cat.open(newline="") as f:
                return {row["folder"]: row.get("name", "") for row in csv.DictReader(f, delimiter="\t")}
    return {}


def load_mesh(path: str | Path, up: str = "y") -> LoadedMesh:
    """Load and normalise one mesh file (OBJ with MTL and textures, PLY, OFF, GLB, STL).

    Args:
        path: the mesh file.
        up: ``"y"`` or ``"z"``, the file's up axis.

    Returns:
        :class:`LoadedMesh` in the voxlink object frame (Y up, centred, longest side 1).

    Raises:
        FileNotFoundError: the file does not exist.
        MeshLoadError: trimesh cannot read it, or it holds no triangles, or it is degenerate.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as e:  # trimesh raises many types for bad files
        raise MeshLoadError(f"cannot read mesh {path}: {type(e).__name__}: {e}") from e
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        parts = []
    parts = [p for p in parts if len(p.faces) > 0 and len(p.vertices) > 0]
    if not parts:
        raise MeshLoadError(f"mesh {path} holds no triangles")
    bounds = np.array([np.min([p.bounds[0] for p in parts], axis=0), np.max([p.bounds[1] for p in parts], axis=0)])
    try:
        M = normalization_matrix(bounds, up)
    except ValueError as e:
        raise MeshLoadError(f"mesh {path}: {e}") from e
    for p in parts:
        p.apply_transform(M)
    geom = trimesh.util.concatenate([trimesh.Trimesh(p.vertices, p.faces, process=False) for p in parts])
    name = path.parent.name if path.stem == path.parent.name else path.stem
    display = _catalog_names(path).get(path.parent.name, "")
    category = category_from_name(display or name)
    if category == "other":
        category = category_from_name(name)
    return LoadedMesh(name=name, path=path, category=category, parts=parts, mesh=geom,
                      scale=float(M[0, 0] if up == "y" else np.linalg.norm(M[:3, 0])),
                      meta={"display_name": display} if display else {}, transform=M)


def find_meshes(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of mesh files.

    Folders are searched recursively for :data:`MESH_SUFFIXES`; files are taken as given.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in MESH_SUFFIXES and q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"mesh path not found: {p}")
    return out
