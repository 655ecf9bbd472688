"""The FSAF paper's analysis at small scale (Zhu et al., CVPR 2019, Sec. 3.4 / Table 1):

1. online feature selection vs the size heuristic: the share of GTs whose selected
   level differs from the heuristic's, over training (logged by the detector's
   `loss_fn` as `fsaf/mismatch`), and each rule's level histogram;
2. AP of RetinaNet vs FSAF anchor-free only vs anchor-based + anchor-free, all with the
   tiny ResNet-18/16 + FPN P3-P5 on `shapes` (128 px) and one schedule;
   `--with-heuristic` adds the anchor-free branch trained with the heuristic (Table 1's
   baseline row).

  python experiments/fsaf/run.py [--steps 1000] [--recipe adamw|config] \
      [--workdir runs/fsaf] [--with-heuristic]

Writes results.json and fsaf.png beside this file and the tables into README.md
(between the results markers). Re-running with the same workdir resumes / reuses the
finished runs (the loop restores the last checkpoint).
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
    ax.barh(range(len(names)), [results[n]["AP"] for n in names], color="C0", label="AP")
    ax.barh([i + 0.35 for i in range(len(names))], [results[n]["AP50"] for n in names],
            height=0.35, color="C1", label="AP50")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace("FSAF ", "FSAF\n") for n in names], fontsize=8)
    ax.set_title("COCO AP on shapes val")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tables(results: dict, curves: dict, steps: str) -> None:
    lines = [
        "<!-- results:start -->",
        f"Trained {steps} on `shapes` (128 px), same schedule for all.",
        "",
        "| detector | AP | AP50 | AP75 | APs | APm | APl |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        lines.append(
            f"| {name} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | "
            f"{s['APs']:.3f} | {s['APm']:.3f} | {s['APl']:.3f} |"
        )
    lines += [
        "",
        "Online selection vs the size heuristic (share of GTs; mean over the first / last "
        "10 % of the logged steps):",
        "",
        "| detector | mismatch first 10 % | mismatch last 10 % | online P3 / P4 / P5 (last 10 %) "
        "| heuristic P3 / P4 / P5 |",
        "|---|---|---|---|---|",
    ]
    for name, c in curves.items():
        if "fsaf/mismatch" not in c:
            continue
        sel = " / ".join(f"{_window_mean(c[f'fsaf/sel_l{i}'], 0.9, 1.0):.2f}" for i in range(3))
        heur = " / ".join(f"{_window_mean(c[f'fsaf/heur_l{i}'], 0.0, 1.0):.2f}" for i in range(3))
        lines.append(
            f"| {name} | {_window_mean(c['fsaf/mismatch'], 0.0, 0.1):.3f} | "
            f"{_window_mean(c['fsaf/mismatch'], 0.9, 1.0):.3f} | {sel} | {heur} |"
        )
    lines += ["", "![FSAF](fsaf.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(HERE, "README.md"), lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/fsaf")
    ap.add_argument("--with-heuristic", action="store_true",
                    help="also train the anchor-free branch with the size heuristic")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    results, curves = {}, {}
    for name, (slug, config) in variants(args).items():
        print(f"=== {name}", flush=True)
        workdir = (recipe.baseline_workdir(args.workdir, args.steps, args.recipe)
                   if slug == "retina" else os.path.join(args.workdir, slug))
        results[name] = loop.train_and_evaluate(config, workdir)
        c = read_curves(workdir)
        if c:
            curves[name] = c
        with open(os.path.join(HERE, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "val_split": args.val_split, "results": results,
                       "curves": curves}, f, indent=1)
    plot(results, curves, os.path.join(HERE, "fsaf.png"))
    write_tables(results, curves, recipe.describe(args.steps, args.recipe))


if __name__ == "__main__":
    main()
