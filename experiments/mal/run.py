"""The MAL paper's comparison at small scale (Ke et al., CVPR 2020, Tables 1-2):
RetinaNet vs the same network trained with the anchor-bag loss alone
(FreeAnchor-like: every bag anchor in the mean-max, no depression) vs MAL's
selection-depression (all-to-top-1 selection, and anchor depression). All use the
tiny ResNet-18/16 + FPN P3-P5 on `shapes` (128 px) and one schedule.

  python experiments/mal/run.py [--steps 1000] [--recipe adamw|config] \
      [--workdir runs/mal] [--no-ablation]

Rows: RetinaNet; FreeAnchor-like; MAL selection only (the paper's "anchor
selection" ablation row; `--no-ablation` drops it); MAL (selection + depression on
the selected anchors); with `--with-image-depression` also MAL with the released
code's whole-map depression. Writes results.json and mal.png beside this file and
the table into README.md (between the results markers). Re-running with the same
workdir resumes the runs from their last checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.mal import mal_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet.train import loop  # noqa: E402

CURVE_KEYS = ("num_selected", "depression_ratio", "bag_max_conf", "loss_pos", "loss_neg",
              "depressed_positions")


def variants(args) -> dict:
    def mal(selection: bool, depression: str):
        c = mal_tiny_shapes.get_config()
        c.mal.selection = selection
        c.mal.depression = depression
        return c

    rows = {
        "RetinaNet": ("retina", retinanet_tiny_shapes.get_config()),
        "FreeAnchor-like (bag loss, K=40)": ("free_anchor", mal(False, "none")),
    }
    if args.ablation:
        rows["MAL selection only (all-to-top-1)"] = ("mal_select", mal(True, "none"))
    rows["MAL (selection + depression)"] = ("mal", mal(True, "selected"))
    if args.with_image_depression:
        rows["MAL (whole-map depression, released code)"] = ("mal_image", mal(True, "image"))
    for _, c in rows.values():
        recipe.apply(c, args.steps, args.recipe)
        c.train.log_every = max(1, args.steps // 100)
        c.train.checkpoint_every = max(args.steps // 3, 1)
        c.data.val_split = args.val_split
    return rows


def read_curves(workdir: str) -> dict[str, list]:
    """{metric: [(step, value), ...]} of the MAL metrics in workdir/metrics.jsonl."""
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
    for k in CURVE_KEYS:
        pts = [(s, r[f"train/{k}"]) for s, r in sorted(by_step.items()) if f"train/{k}" in r]
        if pts:
            curves[k] = pts
    return curves


def plot(results: dict, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    name = next((n for n in curves if "depression_ratio" in curves[n]), None)
    if name is None:
        name = next((n for n in curves if "num_selected" in curves[n]), None)
    if name:
        s, v = zip(*curves[name]["num_selected"])
        ax.plot(s, v, color="C0", label="selected anchors per bag s(t)")
        ax.set_ylabel("s(t)")
        if "depression_ratio" in curves[name]:
            ax2 = ax.twinx()
            s, v = zip(*curves[name]["depression_ratio"])
            ax2.step(s, v, color="C3", where="post", label="depression ratio r(t)")
            ax2.set_ylabel("r(t)")
            ax2.set_ylim(0, 0.6)
            ax2.legend(loc="upper left", bbox_to_anchor=(0.0, 0.9), fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("step")
    ax.set_title("selection-depression schedules")
    ax = axes[1]
    for n, c in curves.items():
        if "bag_max_conf" in c:
            s, v = zip(*c["bag_max_conf"])
            ax.plot(s, v, label=n)
    ax.set_xlabel("step")
    ax.set_ylabel("mean over GTs of max_j P_ij")
    ax.set_title("best joint confidence in each bag (training)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax = axes[2]
    names = list(results)
    ys = range(len(names))
    ax.barh([y - 0.27 for y in ys], [results[n]["AP"] for n in names], height=0.27,
            color="C0", label="AP")
    ax.barh(list(ys), [results[n]["AP50"] for n in names], height=0.27, color="C1",
            label="AP50")
    ax.barh([y + 0.27 for y in ys], [results[n]["AP75"] for n in names], height=0.27,
            color="C2", label="AP75")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_title("COCO AP on shapes val")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(results: dict, steps: str, val_split: str) -> None:
    lines = [
        "<!-- results:start -->",
        f"Trained {steps} on `shapes` (128 px), same schedule for all; "
        f"evaluated on `{val_split}`.",
        "",
        "| detector | AP | AP50 | AP75 | APs | APm | APl | AR100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        lines.append(
            f"| {name} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | "
            f"{s['APs']:.3f} | {s['APm']:.3f} | {s['APl']:.3f} | {s['AR100']:.3f} |"
        )
    lines += ["", "![MAL experiment](mal.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(HERE, "README.md"), lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/mal")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false")
    ap.add_argument("--with-image-depression", action="store_true")
    args = ap.parse_args()
    results, curves = {}, {}
    for name, (tag, config) in variants(args).items():
        print(f"=== {name}")
        workdir = (recipe.baseline_workdir(args.workdir, args.steps, args.recipe)
                   if tag == "retina" else os.path.join(args.workdir, tag))
        stats = loop.train_and_evaluate(config, workdir)
        results[name] = {k: float(v) for k, v in stats.items()}
        curves[name] = read_curves(workdir)
        with open(os.path.join(HERE, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "val_split": args.val_split, "results": results,
                       "curves": curves}, f, indent=1)
    plot(results, curves, os.path.join(HERE, "mal.png"))
    write_table(results, recipe.describe(args.steps, args.recipe), args.val_split)


if __name__ == "__main__":
    main()
