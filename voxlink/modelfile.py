"""Model files without PyTorch: where they are, and what their metadata says (runtime core).

A voxlink model file is one ``.safetensors`` file (see :mod:`voxlink.weights`, which writes and loads
it with PyTorch). Its string metadata — ``voxlink.format``, ``voxlink.family``, ``voxlink.config``
(JSON), ``voxlink.meta`` (JSON) and ``voxlink.fingerprint`` (16 hex digits) — is read here with
safetensors' NumPy front end, so the drone can check a model's K and fingerprint against its encoder
graph (ONNX / TensorRT) without PyTorch. The edge encoder graph of a model file ``NAME.safetensors``
ships beside it as ``NAME.onnx`` (:func:`encoder_onnx_beside`).

This module imports only the standard library at import time (safetensors inside the functions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

#: Folder of the shipped ("embedded default") weights.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Model used when none is named.
DEFAULT_MODEL = "fusion-k1024"
#: Value of the ``voxlink.format`` metadata of every model file.
FORMAT = "voxlink-model-1"
#: Reconstruction frame of a family whose config does not say (the config classes' defaults).
DEFAULT_FRAME = {"implicit": "view", "fusion": "pose", "codec": "image", "sequential": "object", "direct": "object"}
#: Families whose views carry N iterations of m bits, N in 1..max_iterations chosen per view (variable rate).
ITERATIVE_FAMILIES = ("codec", "sequential", "direct")


class ModelFileError(ValueError):
    """A model file is missing, corrupt, of another format, or does not match what the caller needs."""


def shipped_models() -> list[str]:
    """Names of the shipped models (the ``*.safetensors`` files in :data:`WEIGHTS_DIR`), sorted."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve(name_or_path: str | Path | None) -> Path:
    """Path of a model given by file path or shipped name (``None`` -> :data:`DEFAULT_MODEL`).

    Raises:
        ModelFileError: neither an existing file nor a shipped name.
    """
    s = str(name_or_path or DEFAULT_MODEL)
    p = Path(s)
    if p.is_file():
        return p
    q = WEIGHTS_DIR / f"{s}.safetensors"
    if q.is_file():
        return q
    raise ModelFileError(f"no model file {s!r}; shipped models: {', '.join(shipped_models()) or 'none'}")


def encoder_onnx_beside(model_path: str | Path) -> Path:
    """Where the edge encoder graph (E_K + sign, ONNX) of a model file lives: ``NAME.onnx`` beside
    ``NAME.safetensors`` (the path, whether or not the file exists)."""
    return Path(model_path).with_suffix(".onnx")


@dataclass(frozen=True)
class ModelInfo:
    """What a model file's metadata says (no weights are read).

    Attributes:
        path: the ``.safetensors`` file.
        name: the config's name (the file's stem where the config has none).
        family: ``implicit``, ``fusion``, ``codec``, ``sequential`` or ``direct`` (``voxlink.family``;
            ``implicit`` where absent).
        code_bits: K, bits per view; for the iterative families (N_small and the sequential and direct
            models) m, bits per view and iteration: a view carries N m bits, N in 1..``max_iterations``.
        max_iterations: 1, or N_max of an iterative family.
        fingerprint: 8-byte model fingerprint recorded in the file (``voxlink.fingerprint``), or None
            for files written without one.
        frame: reconstruction frame (``object``, ``view`` or ``pose``).
        image_size: network input side in pixels.
        config: the config as a dict (``voxlink.config``).
        meta: training metadata (``voxlink.meta``: command, data manifest, git commit, metrics).
    """

    path: Path
    name: str
    family: str
    code_bits: int
    fingerprint: bytes | None
    frame: str
    image_size: int = 128
    config: dict = field(default_factory=dict)
    max_iterations: int = 1
    meta: dict = field(default_factory=dict)

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 16 hex digits ('' where the file records none)."""
        return bytes.hex(self.fingerprint) if self.fingerprint else ""


def read_metadata(path: str | Path) -> dict[str, str]:
    """The raw string metadata of a ``.safetensors`` file, read with safetensors' NumPy front end.

    Raises:
        ModelFileError: missing, corrupt or unreadable.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"corrupt or unreadable model file {path}: {e}") from e


def read_model_info(name_or_path: str | Path | None = None, code_bits: int | None = None) -> ModelInfo:
    """Read a model file's metadata without PyTorch.

    Args:
        name_or_path: a file, or a shipped name; ``None`` reads :data:`DEFAULT_MODEL`.
        code_bits: if given, the K the caller needs; another K is an error.

    Returns:
        :class:`ModelInfo`.

    Raises:
        ModelFileError: missing, corrupt, not a voxlink model file, unknown family, a config without
            ``code_bits``, a malformed fingerprint, or of another K than ``code_bits``.
    """
    path = resolve(name_or_path)
    md = read_metadata(path)
    if md.get("voxlink.format") != FORMAT:
        raise ModelFileError(f"{path} is not a voxlink model file (format {md.get('voxlink.format')!r})")
    family = md.get("voxlink.family", "implicit")
    if family not in DEFAULT_FRAME:
        raise ModelFileError(f"{path}: unknown model family {family!r} (this voxlink knows {sorted(DEFAULT_FRAME)})")
    try:
        cfg = json.loads(md["voxlink.config"])
        meta = json.loads(md.get("voxlink.meta", "{}"))
        if not isinstance(cfg, dict) or not isinstance(meta, dict):
            raise ValueError("config and meta must be JSON objects")
        comp, frame_cfg = None, cfg
        if family == "codec":  # N_small: m bits per iteration at its image size
            comp = cfg
        elif family in ("sequential", "direct"):  # N_small + the 3D part
            comp, frame_cfg = cfg["compression"], cfg["recon"]
        if comp is not None:
            k = (int(comp.get("image_size", 128)) // 16) ** 2 * int(comp["code_channels"])
            n_max, size = int(comp.get("max_iterations", 8)), int(comp.get("image_size", 128))
        else:
            k, n_max, size = cfg["code_bits"], 1, int(cfg.get("image_size", 128))
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"code_bits must be a positive integer, got {k!r}")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{path}: bad model config metadata: {e}") from e
    fp_hex = md.get("voxlink.fingerprint")
    fp = None
    if fp_hex:
        try:
            fp = bytes.fromhex(fp_hex)
        except ValueError:
            fp = b""
        if len(fp) != 8:
            raise ModelFileError(f"{path}: fingerprint {fp_hex!r} is not 16 hex digits")
    if code_bits is not None and k != code_bits:
        raise ModelFileError(f"{path} makes {k}-bit codes, but {code_bits}-bit codes are needed")
    name = cfg.get("name") or (frame_cfg.get("name") if frame_cfg is not cfg else None) or path.stem
    return ModelInfo(path=path, name=str(name), family=family, code_bits=k, fingerprint=fp,
                     frame=str(frame_cfg.get("frame", DEFAULT_FRAME[family])), image_size=size,
                     config=cfg, meta=meta, max_iterations=n_max)


#: Families that reconstruct 3D from per-view codes: what the edge encodes for and the ground decodes.
RECONSTRUCTION_FAMILIES = ("implicit", "fusion", "sequential", "direct")


def require_reconstruction_model(name_or_path: str | Path | None) -> "ModelInfo":
    """:func:`read_model_info` of a model the edge and the ground can stream with.

    Raises:
        ModelFileError: as :func:`read_model_info`, or a model of another family (the N_small image
            codec: its codes are images, for ``voxlink codec``).
    """
    info = read_model_info(name_or_path)
    if info.family not in RECONSTRUCTION_FAMILIES:
        raise ModelFileError(f"{info.path} is a {info.family} model (an image codec, for voxlink codec); the drone "
                             f"and the ground stream with a reconstruction model ({', '.join(RECONSTRUCTION_FAMILIES)}), "
                             f"e.g. {DEFAULT_MODEL}")
    return info
