"""Fig. 8 over several seeds: ``voxlink bench accuracy --seeds 0,1,2``.

At the quick profile one training run of a 3D network moves its mIoU@5 by up to 0.04 from seed to seed
(the convolutions are not bit-reproducible on a CPU, and 1,080 steps amplify it), as much as the gaps
the paper's claims are about. So each seed is a whole benchmark run in ``OUT/seed-S`` (its own models and
``accuracy.json``), and this module sums them up: every method's mIoU per seed, its mean and spread, and
the gaps the issue's targets are stated in (a method against the mean training grid and against 3D-R2N2
on JPEG 2000 at the same ratio), each paired over the same test objects within a seed, with their mean
and their smallest value over the seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: rows whose gaps are reported (the joint models and the paper's implicit model)
GAP_METHODS = ("implicit", "sequential", "direct")


def seed_folder(out: str | Path, seed: int) -> Path:
    """Where the run of one seed goes: ``OUT/seed-S``."""
    return Path(out) / f"seed-{seed}"


def _key(method: str, target) -> str:
    """The key of a method and target ratio in ``accuracy.json``'s ``per_object`` (``"direct@96.0"``,
    ``"mean-grid@"`` where there is no ratio)."""
    return f"{method}@{'' if target in ('', None) else float(target)}"


def summarize(out: str | Path, seeds: list[int]) -> dict:
    """Sum up the runs of ``seeds`` in ``OUT/seed-S`` (each with its ``accuracy.json``).

    Returns:
        ``{"seeds", "objects", "git_commits", "rows": [{"method", "target_ratio", "reachable", "miou":
        [per seed], "mean", "sd", "min", "max", "vs_mean_grid": {"per_seed", "mean", "min"} | None,
        "vs_jpeg2000": {...} | None}]}``: mIoU@5 per method and target ratio; a gap is the mean over
        test objects of (method - baseline) IoU in one seed; ``vs_jpeg2000`` only where JPEG 2000 reached
        the ratio. Rows missing from a seed's run are left out.

    Raises:
        FileNotFoundError: a seed's ``accuracy.json`` is missing. ValueError: fewer than one seed, or
        runs over different test objects or data.
    """
    if not seeds:
        raise ValueError("no seeds to sum up")
    runs = []
    for s in seeds:
        p = seed_folder(out, s) / "accuracy.json"
        if not p.exists():
            raise FileNotFoundError(f"no run for seed {s}: {p} is missing")
        runs.append(json.loads(p.read_text()))
    manifests = {r["info"]["data_manifest"] for r in runs}
    objects = {r["info"]["objects"] for r in runs}
    if len(manifests) > 1 or len(objects) > 1:
        raise ValueError(f"the seeds' runs differ in data or test objects: manifests {sorted(manifests)}, "
                         f"objects {sorted(objects)}")

    def per_object(run: dict, key: str) -> np.ndarray | None:
        """One seed's per-object IoU@5 of ``key`` (:func:`_key`): float64 [objects], or None if absent."""
        x = run["per_object"].get(key)
        return None if not x else np.asarray(x, dtype=np.float64)

    def gap(key: str, base_key: str) -> dict | None:
        """Paired gap of ``key`` over ``base_key`` (both :func:`_key`): per seed the mean over test objects
        of their IoU difference (mIoU units), with the mean and the smallest over seeds; None where a seed
        lacks either or their object counts differ."""
        diffs = []
        for run in runs:
            a, b = per_object(run, key), per_object(run, base_key)
            if a is None or b is None or len(a) != len(b):
                return None
            diffs.append(float((a - b).mean()))
        # "+ 0.0": no negative zero from a rounded -1e-17
        return {"per_seed": [round(d, 4) + 0.0 for d in diffs], "mean": round(float(np.mean(diffs)), 4) + 0.0,
                "min": round(float(np.min(diffs)), 4) + 0.0}

    out_rows = []
    for row in runs[0]["rows"]:
        key = _key(row["method"], row["target_ratio"])
        matches = [next((r for r in run["rows"] if _key(r["method"], r["target_ratio"]) == key and r["miou"] != ""),
                        None) for run in runs]
        if any(m is None for m in matches):
            continue
        m = np.array([float(r["miou"]) for r in matches])
        reachable = all(bool(r["reachable"]) for r in matches)
        entry = {"method": row["method"], "target_ratio": row["target_ratio"], "reachable": reachable,
                 "miou": [round(float(x), 4) for x in m], "mean": round(float(m.mean()), 4),
                 "sd": round(float(m.std(ddof=1)), 4) if len(m) > 1 else 0.0,
                 "min": round(float(m.min()), 4), "max": round(float(m.max()), 4), "vs_mean_grid": None,
                 "vs_jpeg2000": None}
        if row["method"] in GAP_METHODS and reachable:
            entry["vs_mean_grid"] = gap(key, _key("mean-grid", ""))
            jp = [next((r for r in run["rows"] if r["method"] == "jpeg2000" and r["target_ratio"] != "" and
                        float(r["target_ratio"]) == float(row["target_ratio"])), None) for run in runs]
            if all(j is not None and j["reachable"] and j["miou"] != "" for j in jp):
                entry["vs_jpeg2000"] = gap(key, _key("jpeg2000", row["target_ratio"]))
        out_rows.append(entry)
    return {"seeds": list(seeds), "objects": runs[0]["info"]["objects"], "data_manifest": manifests.pop(),
            "git_commits": sorted({r["info"]["git_commit"][:10] for r in runs}),
            "minutes": [round(r["info"]["seconds"] / 60, 1) for r in runs],
            "profile": runs[0]["info"]["profile"]["name"], "rows": out_rows}


def markdown(summary: dict) -> str:
    """The summary as Markdown: mIoU@5 mean ± sd over seeds, then the paired gaps (mean, and min over seeds)."""
    from voxlink.bench.accuracy import LABELS

    seeds = summary["seeds"]
    rows = summary["rows"]
    targets = sorted({float(r["target_ratio"]) for r in rows if r["method"] in LABELS and r["target_ratio"] != ""})
    head = "| method | " + " | ".join(f"{t:g}:1" for t in targets) + " |"
    rule = "|---|" + "---|" * len(targets)

    def cell(method: str, t: float, what: str) -> str:
        """One table cell for ``method`` at target ratio ``t`` (x:1): ``what`` = ``"miou"`` (mean ± sd
        (range) over seeds, or "not reachable") or a gap key (``"vs_mean_grid"``, ``"vs_jpeg2000"``: mean
        (smallest)); empty where there is no such row or gap."""
        r = next((x for x in rows if x["method"] == method and x["target_ratio"] != "" and
                  float(x["target_ratio"]) == t), None)
        if r is None:
            return ""
        if what == "miou":
            if not r["reachable"]:
                return "not reachable"
            return f"{r['mean']:.3f} ± {r['sd']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
        g = r.get(what)
        return "" if g is None else f"{g['mean']:+.3f} (min {g['min']:+.3f})"

    lines = [f"# voxlink bench accuracy over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
             f"({summary['profile']} profile)", "",
             f"Seeds {', '.join(map(str, seeds))}, each a whole run in `seed-S/` ({', '.join(f'{m:g}' for m in summary['minutes'])} "
             f"minutes), {summary['objects']} test objects, data manifest `{summary['data_manifest']}`, git "
             f"{', '.join(f'`{c}`' for c in summary['git_commits'])}.", "",
             "mIoU@5: mean ± sd over seeds (smallest-largest).", "", head, rule]
    for method in ("implicit", "sequential", "direct", "jpeg2000"):
        cells = [cell(method, t, "miou") for t in targets]
        if any(cells):
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    for r in rows:
        if r["method"] in ("uncompressed", "mean-grid", "pose-aware"):
            lines += ["", f"{r['method']}: {r['mean']:.3f} ± {r['sd']:.3f} ({', '.join(f'{x:.3f}' for x in r['miou'])})."]
    for what, title in (("vs_mean_grid", "above the mean training grid"), ("vs_jpeg2000", "above 3D-R2N2 on JPEG 2000")):
        lines += ["", f"Gap {title}, paired over the test objects within each seed: mean over seeds (smallest).", "",
                  head, rule]
        for method in GAP_METHODS:
            cells = [cell(method, t, what) for t in targets]
            if any(cells):
                lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def write(out: str | Path, seeds: list[int]) -> dict:
    """:func:`summarize` into ``OUT/accuracy-seeds.json`` and ``OUT/accuracy-seeds.md``; returns the summary.

    Raises:
        as :func:`summarize`.
    """
    s = summarize(out, seeds)
    Path(out, "accuracy-seeds.json").write_text(json.dumps(s, indent=1))
    Path(out, "accuracy-seeds.md").write_text(markdown(s))
    return s
