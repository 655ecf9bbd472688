"""The FSAF paper's analysis at small scale (Zhu et al., CVPR 2019, Sec. 3.4 / Table 1):

1. online feature selection vs the size heuristic: the share of GTs whose selected
   level differs from the heuristic's, over training (logged by the detector's
   `loss_fn` as `fsaf/mismatch`), and each rule's level histogram;
2. AP of RetinaNet vs FSAF anchor-free only vs anchor-based + anchor-free, all with the
   tiny ResNet-18/16 + FPN P3-P5 on `shapes` (128 px) and one schedule;
   `--with-heuristic` adds the anchor-free branch trained with the heuristic (Table 1's
   baseline row).

  python experiments/fsaf/run.py [--steps 1000] [--recipe adamw|config] [--seeds 3] \
      [--workdir runs/fsaf] [--out experiments/fsaf] [--with-heuristic]

Every row trains with seeds 0..N-1 (`<workdir>/seed<k>/<row>`; the RetinaNet row in
the shared baseline workdir, `recipe.baseline_workdir`). Writes results.json (mean ±
std over the seeds and the per-seed values), fsaf.png (the curves of seed 0) and the
tables into README.md (between the results markers) in --out. Re-running with the
same workdir resumes / reuses the finished runs (the loop restores the last
checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.fsaf import fsaf_ab_af_tiny_shapes, fsaf_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet.train import loop  # noqa: E402

FSAF_KEYS = ("fsaf/mismatch", "fsaf/sel_l0", "fsaf/sel_l1", "fsaf/sel_l2",
             "fsaf/heur_l0", "fsaf/heur_l1", "fsaf/heur_l2")


def variants(args) -> dict:
    rows = {
        "RetinaNet": ("retina", retinanet_tiny_shapes.get_config()),
        "FSAF anchor-free (online)": ("af_online", fsaf_tiny_shapes.get_config()),
        "FSAF anchor-based + anchor-free (online)": (
            "ab_af_online", fsaf_ab_af_tiny_shapes.get_config()),
    }
    if args.with_heuristic:
        c = fsaf_tiny_shapes.get_config()
        c.fsaf.selection = "heuristic"
        rows["FSAF anchor-free (heuristic)"] = ("af_heuristic", c)
    for _, c in rows.values():
        recipe.apply(c, args.steps, args.recipe)
        c.train.log_every = max(1, args.steps // 100)
        c.train.checkpoint_every = max(args.steps // 3, 1)
        c.data.val_split = args.val_split
    return rows


def read_curves(workdir: str) -> dict[str, list]:
    """{metric: [(step, value), ...]} of the FSAF metrics in workdir/metrics.jsonl."""
    by_step: dict[int, dict] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "train/loss" in row:
                by_step[row["step"]] = row  # last write wins (resumed runs)
    curves: dict[str, list] = {}
    for k in FSAF_KEYS:
        pts = [(s, r[f"train/{k}"]) for s, r in sorted(by_step.items()) if f"train/{k}" in r]
        if pts:
            curves[k] = pts
    return curves


def _window_mean(points, lo: float, hi: float) -> float:
    """Mean of the values whose step lies in the [lo, hi] fraction of training."""
    last = points[-1][0]
    vals = [v for s, v in points if lo * last <= s <= hi * last] or [points[-1][1]]
    return sum(vals) / len(vals)


def selection_summary(curves: dict) -> dict:
    """One run's selection numbers: mismatch over the first / last 10 % of the logged
    steps, online level shares over the last 10 % and heuristic shares over all."""
    if "fsaf/mismatch" not in curves:
        return {}
    out = {"mismatch_first": _window_mean(curves["fsaf/mismatch"], 0.0, 0.1),
           "mismatch_last": _window_mean(curves["fsaf/mismatch"], 0.9, 1.0)}
    for i in range(3):
        out[f"sel_l{i}"] = _window_mean(curves[f"fsaf/sel_l{i}"], 0.9, 1.0)
        out[f"heur_l{i}"] = _window_mean(curves[f"fsaf/heur_l{i}"], 0.0, 1.0)
    return out


def plot(results: dict, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for name, c in curves.items():
        if "fsaf/mismatch" in c:
            s, v = zip(*c["fsaf/mismatch"])
            ax.plot(s, v, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("share of GTs")
    ax.set_title("online level != size-heuristic level")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax = axes[1]
    name = next((n for n in curves if "online" in n and "fsaf/sel_l0" in curves[n]), None)
    if name:
        for lvl, color in zip(range(3), ("C0", "C1", "C2")):
            s, v = zip(*curves[name][f"fsaf/sel_l{lvl}"])
            ax.plot(s, v, color=color, label=f"online P{lvl + 3}")
            s, v = zip(*curves[name][f"fsaf/heur_l{lvl}"])
            ax.plot(s, v, color=color, ls="--", alpha=0.6, label=f"heuristic P{lvl + 3}")
        ax.set_title(f"selected level shares ({name})", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    names = list(results)
    ax.barh(range(len(names)), [report.mean_of(results[n]["AP"]) for n in names], color="C0",
            label="AP")
    ax.barh([i + 0.35 for i in range(len(names))],
            [report.mean_of(results[n]["AP50"]) for n in names],
            height=0.35, color="C1", label="AP50")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace("FSAF ", "FSAF\n") for n in names], fontsize=8)
    ax.set_title("COCO AP on shapes val (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def write_tables(results: dict, schedule: str, out: str) -> None:
    """results: {row: aggregate_seeds of {COCO key: value, 'selection': {...}}}."""
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes` (128 px), same schedule for all.",
        "",
        "| detector | " + " | ".join(KEYS) + " |",
        "|---|" + "---|" * len(KEYS),
    ]
    for name, s in results.items():
        lines.append(f"| {name} | " + " | ".join(report.pm(s[k]) for k in KEYS) + " |")
    lines += [
        "",
        "Online selection vs the size heuristic (share of GTs; mean over the first / last "
        "10 % of the logged steps):",
        "",
        "| detector | mismatch first 10 % | mismatch last 10 % | online P3 / P4 / P5 (last 10 %) "
        "| heuristic P3 / P4 / P5 |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = r.get("selection") or {}
        if "mismatch_first" not in c:
            continue
        sel = " / ".join(report.pm(c[f"sel_l{i}"], ".2f") for i in range(3))
        heur = " / ".join(report.pm(c[f"heur_l{i}"], ".2f") for i in range(3))
        lines.append(f"| {name} | {report.pm(c['mismatch_first'])} | "
                     f"{report.pm(c['mismatch_last'])} | {sel} | {heur} |")
    lines += ["", "![FSAF](fsaf.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/fsaf")
    ap.add_argument("--with-heuristic", action="store_true",
                    help="also train the anchor-free branch with the size heuristic")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    ap.add_argument("--out", default=HERE, help="where results.json, fsaf.png and README go")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    curves = {}  # seed 0's, for the plot
    for seed in range(args.seeds):
        for name, (slug, config) in variants(args).items():
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed)
            workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, seed, slug,
                                         baseline=slug == "retina")
            stats = loop.train_and_evaluate(config, workdir)
            c = read_curves(workdir)
            per_seed.setdefault(name, []).append({**stats, "selection": selection_summary(c)})
            if seed == 0 and c:
                curves[name] = c
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "val_split": args.val_split,
                           "seeds": args.seeds, "results": results, "per_seed": per_seed,
                           "curves_seed0": curves}, f, indent=1)
    plot(results, curves, os.path.join(args.out, "fsaf.png"))
    write_tables(results, recipe.describe(args.steps, args.recipe, args.seeds), args.out)


if __name__ == "__main__":
    main()
