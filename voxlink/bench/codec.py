"""``voxlink bench codec``: rate-distortion of the N_small image codec against JPEG 2000 at equal bytes.

Views of the real evaluation meshes (a dataset made with ``voxlink data make --meshes
../shared/data/meshes``), ``views_per_object`` fixed views of each object, as rendered (flat
background) or over textured backgrounds (``backgrounds = "textured"``, what a drone sees).

For N = 1..8 iterations N_small spends N x 128 bytes on a 128 x 128 view (384/N : 1, 0.0625 N bpp).
JPEG 2000 (glymur/OpenJPEG, :mod:`voxlink.jpeg2000`) gets the same bytes two ways:

* ``jpeg2000``: its whole codestream (headers counted) at most N x 128 bytes;
* ``jpeg2000-no-header``: its codestream less the main header at most N x 128 bytes (the header sent
  once per stream, not per view).

Where OpenJPEG cannot get that small (its floor is about 185 bytes a view), the row says
``reachable = false`` and gives the floor's figures at the bytes it really took. Quality: PSNR (dB) and
MS-SSIM (:func:`voxlink.train_codec.ms_ssim`), the mean over views. Output: ``codec.csv``,
``codec.md``, ``codec.json`` and ``codec.png`` in the output folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from voxlink.data.store import manifest_hash


def eval_views(data: str | Path, views_per_object: int = 3, backgrounds: str = "plain", seed: int = 0) -> np.ndarray:
    """Fixed views of every object of a dataset (all splits).

    Args:
        data: dataset folder. views_per_object: views of each object, spread around its orbit.
        backgrounds: ``plain`` (as rendered) or ``textured`` (composited, seeded).
        seed: seed of the view choice and the backgrounds.

    Returns:
        uint8 [objects x views_per_object, H, W, 3].

    Raises:
        voxlink.data.store.DatasetError: bad folder. ValueError: unknown ``backgrounds``.
    """
    from voxlink.data.store import DatasetStore

    if backgrounds not in ("plain", "textured"):
        raise ValueError(f"backgrounds must be plain or textured, got {backgrounds!r}")
    store = DatasetStore(data)
    out = []
    for j in store.split("all"):
        nv = store.n_views(j)
        ids = (np.arange(views_per_object) * nv // views_per_object + j) % nv
        rgb = store.read(j, "rgb")[ids]
        if backgrounds == "textured":
            from voxlink.data.backgrounds import composite

            rgb = composite(rgb, store.read(j, "depth")[ids] > 0, np.random.default_rng([seed, j]), bank=False)
        out.append(rgb)
    return np.concatenate(out)


def _quality(decoded: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    from voxlink.train_codec import ms_ssim, psnr

    return float(psnr(decoded, ref).mean()), float(ms_ssim(decoded, ref).mean())


def run(out: str | Path, model: str = "nsmall-k1024", data: str | Path = "data/real", views_per_object: int = 3,
        backgrounds: str = "plain", max_iterations: int | None = None) -> str:
    """Run the benchmark (module docstring) and write its files.

    Args:
        out: output folder. model: an N_small model file or shipped name (``codec`` family).
        data: dataset of the real evaluation meshes. views_per_object, backgrounds: see :func:`eval_views`.
        max_iterations: the largest N measured (default: the model's, 8).

    Returns:
        the Markdown table.

    Raises:
        voxlink.weights.ModelFileError: not an N_small model. voxlink.jpeg2000.Jpeg2000Error: no glymur.
    """
    from voxlink import jpeg2000
    from voxlink.preprocess import to_input
    from voxlink.weights import ModelFileError, load_model

    codec, meta, _ = load_model(model)
    if getattr(codec, "family", None) != "codec":
        raise ModelFileError(f"{model} is a {getattr(codec, 'family', 'implicit')} model, not an N_small image codec")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    views = eval_views(data, views_per_object, backgrounds)
    ref = to_input(views)
    raw = views[0].size
    n_max = max_iterations or codec.cfg.max_iterations
    rows = []
    with torch.no_grad():
        recon = []
        for j in range(0, len(ref), 32):  # through the bytes, as a user would
            recon.append(codec.decode(codec.decompress(codec.compress(ref[j:j + 32], n_max))))
        recon = torch.cat(recon)  # [V, n_max, 3, H, W]: after 1..n_max iterations
    # the main header of each view's codestream (141 bytes at 128 x 128 RGB with OpenJPEG's defaults)
    headers = [jpeg2000.main_header_length(jpeg2000.encode(v, 100.0)[0]) for v in views]
    for n in range(1, n_max + 1):
        nbytes = n * codec.bits_per_iteration // 8
        p, s = _quality(recon[:, n - 1], ref)
        rows.append({"method": "nsmall", "iterations": n, "budget_bytes": nbytes, "bytes": nbytes,
                     "bytes_no_header": nbytes, "ratio": raw / nbytes, "bpp": nbytes * 8 / (views.shape[1] * views.shape[2]),
                     "reachable": True, "psnr_db": p, "ms_ssim": s})
        for method, header_free in (("jpeg2000", False), ("jpeg2000-no-header", True)):
            res = []
            for v, hdr in zip(views, headers):
                budget = nbytes + (hdr if header_free else 0)
                res.append(jpeg2000.encode_at_ratio(v, raw / budget))
            dec = to_input(np.stack([r.image for r in res]))
            p, s = _quality(dec, ref)
            b = float(np.mean([r.bytes for r in res]))
            counted = b if not header_free else float(np.mean([r.bytes_no_header for r in res]))  # what it is charged
            rows.append({"method": method, "iterations": n, "budget_bytes": nbytes, "bytes": b,
                         "bytes_no_header": float(np.mean([r.bytes_no_header for r in res])), "ratio": raw / counted,
                         "bpp": counted * 8 / (views.shape[1] * views.shape[2]),
                         "reachable": all(r.reachable for r in res), "psnr_db": p, "ms_ssim": s})
    with (out / "codec.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    info = {"model": str(model), "model_meta": {k: meta.get(k) for k in ("steps", "train_seconds", "git_commit")},
            "data": str(data), "data_manifest": manifest_hash(data), "views": len(views), "backgrounds": backgrounds,
            "rows": rows}
    (out / "codec.json").write_text(json.dumps(info, indent=1))
    text = _markdown(rows, len(views), backgrounds, model)
    (out / "codec.md").write_text(text)
    _plot(rows, out / "codec.png")
    return text


def _markdown(rows: list[dict], n_views: int, backgrounds: str, model: str) -> str:
    by = {(r["method"], r["iterations"]): r for r in rows}
    lines = [f"Rate-distortion on {n_views} views of the real evaluation meshes ({backgrounds} backgrounds), "
             f"128 x 128; N_small = `{model}`. JPEG 2000 (headers counted) must fit the whole codestream in "
             "the same bytes; JPEG 2000 (no header) only the codestream less its main header.", "",
             "| N | bytes/view | ratio | bpp | N_small PSNR / MS-SSIM | JPEG 2000 PSNR / MS-SSIM (bytes) | "
             "JPEG 2000 no header PSNR / MS-SSIM (bytes without header) |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r["iterations"] for r in rows}):
        a, j, h = by[("nsmall", n)], by[("jpeg2000", n)], by[("jpeg2000-no-header", n)]

        def cell(r: dict, key: str) -> str:
            """A JPEG 2000 row's ``PSNR dB / MS-SSIM (bytes)`` (``key``: which byte count), or "not
            reachable" with its floor's figures where OpenJPEG could not get within the budget."""
            s = f"{r['psnr_db']:.2f} dB / {r['ms_ssim']:.3f} ({r[key]:.0f})"
            return s if r["reachable"] else f"not reachable (floor: {s})"

        lines.append(f"| {n} | {a['bytes']} | {a['ratio']:.0f}:1 | {a['bpp']:.4f} | {a['psnr_db']:.2f} dB / "
                     f"{a['ms_ssim']:.3f} | {cell(j, 'bytes')} | {cell(h, 'bytes_no_header')} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("nsmall", "o-"), ("jpeg2000", "s--"), ("jpeg2000-no-header", "^:")):
        rs = [r for r in rows if r["method"] == method and r["reachable"]]
        for ax, key in zip(axes, ("psnr_db", "ms_ssim")):
            ax.plot([r["budget_bytes"] for r in rs], [r[key] for r in rs], style, label=method)
    for ax, label in zip(axes, ("PSNR (dB)", "MS-SSIM")):
        ax.set_xlabel("bytes per 128 x 128 view")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
