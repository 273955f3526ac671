"""Average two model files of the same family and config, tensor by tensor (a "model soup", Wortsman et
al., ICML 2022): ``(1 - alpha) * A + alpha * B`` for every floating-point tensor (BatchNorm running
statistics included), B's value for the integer ones (BatchNorm's step counters). Meant for two points
of one training lineage (B trained on from A), where the average often keeps what each is better at.

    python scripts/average_model_weights.py A.safetensors B.safetensors OUT.safetensors [--alpha 0.5]

A and B may be shipped names (``fusion-k1024``) or files. The output is a float16 voxlink model file with
B's config; its metadata records both inputs' fingerprints and ``alpha``.
"""

import argparse
import json

import torch

from voxlink.modelfile import resolve
from voxlink.weights import load_model, save_model


def average(a: str, b: str, alpha: float) -> tuple[torch.nn.Module, dict]:
    """The weighted average of model files ``a`` and ``b`` (loaded in float32) and its metadata.

    Args:
        a, b: model files or shipped names. alpha: B's weight in [0, 1].

    Returns:
        ``(model, meta)``: B's model class and config with the averaged tensors (eval mode), and a
        metadata dict naming the inputs, their fingerprints and ``alpha``.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or two files whose configs or tensor names differ.
        voxlink.modelfile.ModelFileError: a file that is missing or not a voxlink model.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ma, _, _ = load_model(a)
    mb, meta_b, _ = load_model(b)
    if ma.cfg.to_dict() != mb.cfg.to_dict():
        raise ValueError(f"{a} and {b} have different configs: only one model's two weight sets can be averaged")
    sa, sb = ma.state_dict(), mb.state_dict()
    if sa.keys() != sb.keys():
        raise ValueError(f"{a} and {b} hold different tensors")
    fingerprints = [bytes.hex(ma.fingerprint()), bytes.hex(mb.fingerprint())]
    soup = {k: ((1 - alpha) * sa[k] + alpha * sb[k]) if sb[k].is_floating_point() else sb[k] for k in sb}
    mb.load_state_dict(soup)
    meta = {"averaged_from": [str(resolve(a)), str(resolve(b))],
            "fingerprints": fingerprints,
            "alpha": alpha, "meta_b": meta_b}
    return mb.eval(), meta


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("out")
    ap.add_argument("--alpha", type=float, default=0.5, help="B's weight (0: A, 1: B)")
    args = ap.parse_args()
    model, meta = average(args.a, args.b, args.alpha)
    save_model(model, args.out, meta=meta, half=True)
    print(json.dumps({"out": args.out, "fingerprint": bytes.hex(model.fingerprint()), "alpha": args.alpha}))


if __name__ == "__main__":
    main()
