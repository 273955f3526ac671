"""Plot a training run's validation curve against wall-clock minutes (the model card's figure):
mIoU@5 for a reconstruction model, PSNR after 1, 2, 4 and 8 iterations for an image codec (N_small).

    python scripts/plot_learning_curve.py RUN/log.jsonl OUT.png [--title TEXT] [--baseline 0.19]

Several logs, one per training stage of the same model, each warm-started from the one before, are
drawn end to end (their minutes added up, a dotted line and a label where each stage begins):

    python scripts/plot_learning_curve.py STAGE1.jsonl STAGE2.jsonl ... OUT.png --stages "1-2,3,..."
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="training logs (log.jsonl); several: stages drawn end to end")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    ap.add_argument("--baseline", type=float, default=None, help="mean-grid baseline mIoU to draw")
    ap.add_argument("--stages", default=None, help="comma-separated label of each log (several logs)")
    a = ap.parse_args()
    recs, starts = stages_end_to_end(a.logs)
    if any("psnr" in r.get("val", {}) for r in recs):
        return codec_curve(recs, a)
    val = [r for r in recs if "val_miou5" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["elapsed_s"] / 60 for r in val], [r["val_miou5"] for r in val], "o-", label="validation mIoU@5")
    batch = [r for r in recs if "iou" in r]  # a distillation run has no grid in its training step
    if batch:
        ax.plot([r["elapsed_s"] / 60 for r in batch], [r["iou"] for r in batch], lw=0.8, alpha=0.6,
                label="training-batch IoU (EMA)")
    agree = [r for r in recs if "mask_agree" in r]
    if agree:
        ax.plot([r["elapsed_s"] / 60 for r in agree], [r["mask_agree"] for r in agree], lw=0.8, alpha=0.6,
                label="silhouette pixels agreeing with the teacher (EMA)")
    for key, label in (("val_decoded_hull_miou5", "validation: hull of decoded silhouettes, mIoU@5"),
                       ("val_silhouette_iou", "validation: decoded silhouette IoU")):
        pts = [r for r in val if key in r]
        if pts:
            ax.plot([r["elapsed_s"] / 60 for r in pts], [r[key] for r in pts], "s--", ms=3, lw=1, label=label)
    if a.baseline is not None:
        ax.axhline(a.baseline, color="grey", ls="--", lw=1, label="mean-grid baseline")
    if len(starts) > 1:
        labels = a.stages.split(",") if a.stages else [str(i + 1) for i in range(len(starts))]
        if len(labels) != len(starts):
            raise SystemExit(f"--stages has {len(labels)} labels for {len(starts)} logs")
        for t, label in zip(starts, labels):
            ax.axvline(t, color="grey", ls=":", lw=0.8)
            ax.text(t, 0.97, f" {label}", fontsize=7, color="grey", va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel("wall-clock minutes (2 CPU cores)" + (", stages end to end" if len(starts) > 1 else ""))
    ax.set_ylabel("IoU (Eq. 17, tau = 0.4)")
    ax.set_ylim(0, 1.02 if agree else max(0.6, max(max(r.get(k, 0) for k in ("val_miou5", "val_silhouette_iou")) for r in val) + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(a.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


def stages_end_to_end(paths: list[str]) -> tuple[list[dict], list[float]]:
    """The records of one or more training logs, each later log's ``elapsed_s`` (or ``t``; seconds) shifted
    by the last such time of the logs before it, and the minute at which each log begins.

    Raises:
        FileNotFoundError: a log that is not there. json.JSONDecodeError: a line that is not JSON.
    """
    recs, starts, offset = [], [], 0.0
    for path in paths:
        starts.append(offset / 60)
        last = 0.0
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                for key in ("elapsed_s", "t"):  # "t": the image codec's logs
                    if key in r:
                        last = r[key]
                        r[key] = r[key] + offset
                recs.append(r)
        offset += last
    return recs, starts


def codec_curve(recs: list[dict], a) -> None:
    """Validation PSNR (dB) of whole 128 x 128 views after N iterations, against minutes."""
    val = [r for r in recs if "psnr" in r.get("val", {})]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n in (1, 2, 4, 8):
        if n <= len(val[0]["val"]["psnr"]):
            ax.plot([r.get("t", r.get("elapsed_s", 0)) / 60 for r in val], [r["val"]["psnr"][n - 1] for r in val], "o-", ms=3,
                    label=f"N = {n} ({n * 128} bytes, {384 // n}:1)")
    ax.set_xlabel("wall-clock minutes (2 CPU cores)")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(a.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
