"""Model files: save and load implicit models as safetensors, and the shipped weights by name.

A model file is one ``.safetensors`` file: the weights, plus string metadata ``voxlink.config``
(the :class:`~voxlink.models.config.ModelConfig` as JSON), ``voxlink.meta`` (JSON: training
command, data manifest hash, git commit, metrics) and ``voxlink.format``. Buffers that are not
weights ride along under the ``extra.`` prefix (the mean training grid of the trivial baseline).
Shipped weights live in ``voxlink/weights/`` and load by name (``implicit-k1024``). Reading a model
file's metadata (K, fingerprint, family) needs no PyTorch: see :mod:`voxlink.modelfile`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from voxlink.models import registry as _registry
from voxlink.models.implicit import ImplicitModel

# Shared with the torch-free runtime core (voxlink.modelfile), re-exported here unchanged.
from voxlink.modelfile import (DEFAULT_MODEL, FORMAT, WEIGHTS_DIR, ModelFileError,  # noqa: E402,F401
                               read_model_info, resolve, shipped_models)


#: Model families a model file may hold (its ``voxlink.family`` metadata; files without it are
#: implicit models): name -> a function returning ``(config class, model class)``; from the one registry
#: of families, :mod:`voxlink.models.registry`.
FAMILIES = {name: f.classes for name, f in _registry.FAMILIES.items() if f.model_file}


def save_model(model: ImplicitModel, path: str | Path, meta: dict | None = None,
               extra: dict[str, torch.Tensor] | None = None, half: bool = False) -> Path:
    """Write a model file (weights + config + metadata) with safetensors.

    Args:
        model: the model.
        path: output ``.safetensors`` file.
        meta: JSON-serialisable metadata (training command, data manifest hash, git commit, metrics).
        extra: extra tensors stored under ``extra.<name>``.
        half: store floating-point weights as float16 (half the bytes; loading converts back to
            float32, and the model's fingerprint is that of the rounded weights).
    """
    from safetensors.torch import save_file

    def _cast(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().cpu().contiguous()
        return v.half() if half and v.is_floating_point() else v

    if half:  # round the live model too, so its fingerprint is the one the file will load with
        with torch.no_grad():
            for v in model.state_dict().values():
                if v.is_floating_point():
                    v.copy_(v.half().float())
    tensors = {k: _cast(v) for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    md = {"voxlink.format": FORMAT, "voxlink.family": getattr(model, "family", "implicit"),
          "voxlink.config": json.dumps(model.cfg.to_dict()),
          "voxlink.meta": json.dumps(meta or {}), "voxlink.fingerprint": bytes.hex(model.fingerprint())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=md)
    return path


def load_model(name_or_path: str | Path | None = None, code_bits: int | None = None,
               device: str = "cpu") -> tuple[ImplicitModel, dict, dict[str, torch.Tensor]]:
    """Load a model file in eval mode.

    Args:
        name_or_path: a file, or a shipped name; ``None`` loads :data:`DEFAULT_MODEL`.
        code_bits: if given, the K the caller needs (an engine or a stream); another K is an error.
        device: torch device.

    Returns:
        ``(model, meta, extra)``: the model (eval mode), its metadata dict, its extra tensors.

    Raises:
        ModelFileError: missing, corrupt, not a voxlink model, or of another K than ``code_bits``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = resolve(name_or_path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"corrupt or unreadable model file {path}: {e}") from e
    if md.get("voxlink.format") != FORMAT:
        raise ModelFileError(f"{path} is not a voxlink model file (format {md.get('voxlink.format')!r})")
    family = md.get("voxlink.family", "implicit")
    if family not in FAMILIES:
        raise ModelFileError(f"{path}: unknown model family {family!r} (this voxlink knows {sorted(FAMILIES)})")
    config_cls, model_cls = FAMILIES[family]()
    try:
        cfg = config_cls.from_dict(json.loads(md["voxlink.config"]))
        meta = json.loads(md.get("voxlink.meta", "{}"))
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: bad model config metadata: {e}") from e
    if code_bits is not None and cfg.code_bits != code_bits:
        raise ModelFileError(f"{path} makes {cfg.code_bits}-bit codes, but {code_bits}-bit codes are needed")
    model = model_cls(cfg)
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    weights = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items() if not k.startswith("extra.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not match its config: {e}") from e
    model.to(device).eval()
    stored = md.get("voxlink.fingerprint")
    if stored and stored != bytes.hex(model.fingerprint()):
        raise ModelFileError(f"{path}: weights do not match the fingerprint recorded in the file (corrupt?)")
    return model, meta, extra
