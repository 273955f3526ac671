"""How much an entropy coder could save on N_small's bits: a diagnostic, no new weights.

    .venv/bin/python scripts/nsmall_bit_entropy.py [--fit data/train] [--eval data/real] > OUT.txt

N_small (``nsmall-k1024``) sends 1,024 bits an iteration, each as one bit on the wire. An arithmetic
coder driven by a probability model of the bits (Toderici et al. 2017 use a binary RNN context model)
would spend, per bit, the cross-entropy of that model on them. Two simple models, fitted on views of
the training data (one per object of ``--fit``, 600 drawn) and scored on the 3 views per object of the
evaluation meshes that ``voxlink bench codec`` scores (``--eval``), both with add-one smoothing:

* ``static``: one probability per iteration and bit position (8 x 1,024 numbers);
* ``previous iteration``: one per iteration, bit position and the value of the same position's bit in
  the iteration before (from the second iteration on).

Prints, per iteration, the share of ones and each model's bits per sent bit, and what the first N
iterations would then cost in bytes (the bound an ideal coder reaches; a real one adds a few bytes).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from voxlink.bench.codec import eval_views
from voxlink.preprocess import to_input
from voxlink.weights import load_model


def _codes(model, views: np.ndarray, iterations: int) -> torch.Tensor:
    """Bits bool [B, N, m] of uint8 views [B, H, W, 3]."""
    out = []
    with torch.no_grad():
        for i in range(0, len(views), 32):
            out.append(model.encode(to_input(views[i:i + 32]), iterations) > 0)
    return torch.cat(out)


def _xent(bits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Bits of an ideal coder per bit: bits bool [B, m], p float [B or 1, m] = P(bit = 1)."""
    x = bits.float()
    return -(x * p.log2() + (1 - x) * (1 - p).log2()).mean()


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nsmall-k1024")
    ap.add_argument("--fit", default="data/train")
    ap.add_argument("--eval", default="data/real")
    ap.add_argument("--fit-views", type=int, default=600)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(a.model)[0].eval()
    n_it = model.cfg.max_iterations
    fit = eval_views(a.fit, 1)
    fit = fit[np.random.default_rng(0).choice(len(fit), min(a.fit_views, len(fit)), replace=False)]
    cf, ce = _codes(model, fit, n_it), _codes(model, eval_views(a.eval, 3), n_it)
    m = cf.shape[-1]
    print(f"{a.model}: {n_it} iterations of {m} bits; fitted on {len(cf)} views of {a.fit}, scored on {len(ce)} views of {a.eval}")
    print("iteration | share of ones | static model, bits a bit | previous-iteration model, bits a bit")
    static, context = [], []
    for t in range(n_it):
        p = (cf[:, t].sum(0) + 1.0) / (len(cf) + 2.0)
        static.append(_xent(ce[:, t], p[None]).item())
        if t == 0:
            context.append(static[-1])
        else:
            q = torch.empty_like(ce[:, t], dtype=torch.float32)
            for v in (False, True):
                sel = cf[:, t - 1] == v
                pv = ((cf[:, t] & sel).sum(0) + 1.0) / (sel.sum(0) + 2.0)
                q = torch.where(ce[:, t - 1] == v, pv[None].expand_as(q), q)
            context.append(_xent(ce[:, t], q).item())
        print(f"{t + 1} | {ce[:, t].float().mean():.3f} | {static[-1]:.3f} | {context[-1]:.3f}")
    print("N | bytes sent now | static model | previous-iteration model")
    for n in range(1, n_it + 1):
        print(f"{n} | {n * m // 8} | {sum(static[:n]) * m / 8:.0f} | {sum(context[:n]) * m / 8:.0f}")


if __name__ == "__main__":
    main()
