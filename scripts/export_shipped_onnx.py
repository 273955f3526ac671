"""(Re)export the edge encoder graph (E_K + sign, ONNX) of every shipped model beside its weights.

    .venv/bin/python scripts/export_shipped_onnx.py            # every voxlink/weights/*.safetensors
    .venv/bin/python scripts/export_shipped_onnx.py fusion-k1024
    .venv/bin/python scripts/export_shipped_onnx.py --check    # exit 1 if a graph is missing or stale

Writes ``voxlink/weights/NAME.onnx`` for each shipped ``NAME.safetensors`` (the drone runs it with ONNX
Runtime, without PyTorch; ``voxlink edge`` finds it by the model's name and checks its fingerprint),
then checks it in ONNX Runtime against PyTorch on rendered views of the shipped meshes and procedural
objects: the codes must be the same bits (at most 1 bit in 10,000 may differ, and only where a
pre-activation is within float rounding of zero). Rerun it whenever a shipped model changes or lands.
Needs the full install (PyTorch, onnx, the renderer).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def graph_is_current(onnx_path: Path, fingerprint: bytes, code_bits: int) -> bool:
    """Whether ``onnx_path`` exists and records this fingerprint and K."""
    from voxlink.backends import BackendUnavailable, OnnxBackend

    if not onnx_path.is_file():
        return False
    try:
        b = OnnxBackend(onnx_path, ("CPUExecutionProvider",))
    except BackendUnavailable:
        return False
    return b.fingerprint == fingerprint and b.code_bits == code_bits


def main(argv: list[str] | None = None) -> int:
    """Export (or with ``--check`` only check) the graphs; returns the exit code (0 ok, 1 a failure)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="shipped model names (default: all)")
    ap.add_argument("--check", action="store_true", help="only check that every graph exists and is current")
    ap.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    args = ap.parse_args(argv)

    from voxlink.modelfile import ITERATIVE_FAMILIES, encoder_onnx_beside, read_model_info, resolve, shipped_models

    names = args.models or shipped_models()
    failed = 0
    for name in names:
        info = read_model_info(resolve(name))
        if info.family in ITERATIVE_FAMILIES:  # N_small's encoder loops through its decoder: PyTorch only
            print(f"{name}: a {info.family} model (N_small iterations), no edge encoder graph")
            continue
        out = encoder_onnx_beside(info.path)
        current = info.fingerprint is not None and graph_is_current(out, info.fingerprint, info.code_bits)
        if args.check:
            print(f"{name}: {out.name} {'current' if current else 'MISSING or STALE'} "
                  f"(model fingerprint {info.fingerprint_hex}, K = {info.code_bits})")
            failed += not current
            continue
        from voxlink.backends import export_encoder_onnx

        export_encoder_onnx(info.path, out)
        msg = f"{name} ({info.family}, K = {info.code_bits}, fingerprint {info.fingerprint_hex}): wrote {out} " \
              f"({out.stat().st_size / 1e6:.2f} MB)"
        if not args.no_parity:
            from export.onnx_export import onnx_parity
            from voxlink.cli import _parity_views
            from voxlink.weights import load_model

            model, _, _ = load_model(info.path)
            rep = onnx_parity(model, out, _parity_views(None))
            msg += f"; ONNX Runtime vs PyTorch on {rep['views']} views: {rep['mismatched_bits']} of {rep['bits']} bits differ"
            if rep["mismatched_bits"] > max(1, rep["bits"] // 10000):
                msg += "  FAILED"
                failed += 1
        print(msg)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
