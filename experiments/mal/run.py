"""The MAL paper's comparison at small scale (Ke et al., CVPR 2020, Tables 1-2):
RetinaNet vs the same network trained with the anchor-bag loss alone
(FreeAnchor-like: every bag anchor in the mean-max, no depression) vs MAL's
selection-depression (all-to-top-1 selection, and anchor depression). All use the
tiny ResNet-18/16 + FPN P3-P5 on `shapes` (128 px) and one schedule.

  python experiments/mal/run.py [--steps 1000] [--recipe adamw|config] [--seeds 3] \
      [--workdir runs/mal] [--out experiments/mal] [--no-ablation] \
      [--with-image-depression] [--with-released]

Rows: RetinaNet; FreeAnchor-like; MAL selection only (the paper's "anchor
selection" ablation row; `--no-ablation` drops it); MAL (selection + depression on
the selected anchors); with `--with-image-depression` also MAL with the released
code's whole-map depression; with `--with-released` also the released code's
training as a whole (DeLightCMU/MAL `free_anchor_loss_IA.py`: the mean-max over all
40 bag anchors at every step, i.e. no all-to-top-1 selection, `mal.selection=False`;
`retinanetIA.py`: the attention-ranked positions of the whole level depressed,
`mal.depression='image'`). Every row trains with seeds 0..N-1
(`<workdir>/seed<k>/<row>`; RetinaNet in the shared baseline workdir). Writes
results.json (mean ± std over the seeds and the per-seed values), mal.png (curves of
seed 0) and the table into README.md (between the results markers) in --out.
Re-running with the same workdir resumes the runs from their last checkpoints.
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
        rows["MAL (selection + whole-map depression)"] = ("mal_image", mal(True, "image"))
    if args.with_released:
        rows["MAL released code (no selection, whole-map depression)"] = (
            "mal_released", mal(False, "image"))
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
    for dy, key, color in ((-0.27, "AP", "C0"), (0.0, "AP50", "C1"), (0.27, "AP75", "C2")):
        ax.barh([y + dy for y in ys], [report.mean_of(results[n][key]) for n in names],
                height=0.27, color=color, label=key)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_title("COCO AP on shapes val (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def write_table(results: dict, schedule: str, val_split: str, out: str) -> None:
    """results: {row: aggregate_seeds cell per COCO key}."""
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes` (128 px), same schedule for all; "
        f"evaluated on `{val_split}`.",
        "",
        "| detector | " + " | ".join(KEYS) + " |",
        "|---|" + "---|" * len(KEYS),
    ]
    for name, s in results.items():
        lines.append(f"| {name} | " + " | ".join(report.pm(s[k]) for k in KEYS) + " |")
    lines += ["", "![MAL experiment](mal.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/mal")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false")
    ap.add_argument("--with-image-depression", action="store_true",
                    help="also MAL with selection and the whole-map depression")
    ap.add_argument("--with-released", action="store_true",
                    help="also the released code's training (no selection, whole-map depression)")
    ap.add_argument("--out", default=HERE, help="where results.json, mal.png and README go")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    curves = {}  # seed 0's, for the plot
    for seed in range(args.seeds):
        for name, (tag, config) in variants(args).items():
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed)
            workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, seed, tag,
                                         baseline=tag == "retina")
            stats = loop.train_and_evaluate(config, workdir)
            per_seed.setdefault(name, []).append({k: float(v) for k, v in stats.items()})
            if seed == 0:
                curves[name] = read_curves(workdir)
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "val_split": args.val_split,
                           "seeds": args.seeds, "results": results, "per_seed": per_seed,
                           "curves_seed0": curves}, f, indent=1)
    plot(results, curves, os.path.join(args.out, "mal.png"))
    write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), args.val_split,
                args.out)


if __name__ == "__main__":
    main()
