"""Guided Anchoring at small scale (Wang et al., CVPR 2019, arXiv 1901.03278) on `shapes`:

  1. AP of RetinaNet (9 fixed anchors per location) vs GA-RetinaNet (one guided anchor per
     location), with and without feature adaption (the paper's ablation), without the
     location branch's loss (its focal loss shares the classification tower) and with
     that loss at the weight it has relative to the other losses on COCO;
  2. proposal recall AR@100 / 300 / 1000 of the RPN vs GA-RPN (the paper's headline);
  3. the learned anchor shapes (aspect ratio h / w and scale sqrt(w h)) of GA-RetinaNet
     (seed 0) on the val split, at the locations its loc branch keeps (sigmoid >= 0.01,
     the test-time filter) and at those it predicts as object centres (sigmoid >= 0.5),
     against the GT shapes and the fixed RetinaNet anchors.

  python experiments/guided_anchoring/run.py [--steps 1000] [--recipe adamw|config|sgd] \
      [--seeds 3] [--workdir runs/guided_anchoring] [--out experiments/guided_anchoring]

Every row trains with seeds 0..N-1 in `<workdir>/seed<k>/v<i>` (RetinaNet in the shared
baseline workdir), resumed when rerun. Writes results.json (mean ± std over the seeds and
the per-seed values), anchor_shapes.png and the tables in README.md (between markers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs.guided_anchoring import ga_retinanet_tiny_shapes, ga_rpn_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from configs.rpn import rpn_tiny_shapes  # noqa: E402
from experiments import ap_rows, recipe, report  # noqa: E402
from jaxdet.core import priors as priors_lib  # noqa: E402
from jaxdet.data import pipeline  # noqa: E402
from jaxdet.detectors import ga_retinanet as gar  # noqa: E402
from jaxdet.train import loop  # noqa: E402
from jaxdet.train.step import network_images  # noqa: E402

BASELINE = "RetinaNet (#A=9)"
GA = "GA-RetinaNet"
AR_KEYS = ("AR@100", "AR@300", "AR@1000")
# The location loss is normalised by (images x locations) / 200, a constant set for COCO's
# ~1333 x 800 images (~22,400 P3-P7 locations): per image, a 128 px `shapes` image (336
# P3-P5 locations, 4.1 GTs, 7.1 positive locations) weighs its positives ~38x more than a
# COCO image (7.3 GTs at the same ~1.7 positive locations each). This weight gives the
# location loss COCO's weight relative to the other losses.
LOC_WEIGHT_COCO = 0.025
LOC_COCO = f"GA-RetinaNet (location loss x {LOC_WEIGHT_COCO})"
NO_FA, NO_LOC = "GA-RetinaNet (no feature adaption)", "GA-RetinaNet (no location loss)"
# Each row's workdir tag (every row but the baseline), fixed whatever the table order.
TAGS = {GA: "v1", NO_FA: "v2", NO_LOC: "v3", "RPN": "v4", "GA-RPN": "v5", LOC_COCO: "v6"}


def variants(steps: int, recipe_name: str) -> tuple[dict, dict]:
    """({AP row: config}, {AR row: config}), every config on the same schedule."""
    plain = ga_retinanet_tiny_shapes.get_config()
    plain.ga.feature_adaption = False
    no_loc = ga_retinanet_tiny_shapes.get_config()  # the loc branch untrained, no filter
    no_loc.ga.loc_weight, no_loc.ga.loc_filter_thr = 0.0, 0.0
    coco_weight = ga_retinanet_tiny_shapes.get_config()
    coco_weight.ga.loc_weight = LOC_WEIGHT_COCO
    ap = {BASELINE: retinanet_tiny_shapes.get_config(), GA: ga_retinanet_tiny_shapes.get_config(),
          NO_FA: plain, NO_LOC: no_loc, LOC_COCO: coco_weight}
    ar = {"RPN": rpn_tiny_shapes.get_config(), "GA-RPN": ga_rpn_tiny_shapes.get_config()}
    for c in (*ap.values(), *ar.values()):
        recipe.apply(c, steps, recipe_name)
    return ap, ar


CENTRE_THR = 0.5  # sigmoid(loc) of the locations drawn as predicted object centres


def anchor_shapes(config, workdir: str) -> dict:
    """(w, h) of the guided anchors on the val split kept by the loc filter ('learned')
    and at the predicted centres ('centres', sigmoid(loc) >= CENTRE_THR), of the GT boxes
    (valid, not crowd), and of the fixed RetinaNet anchors of the same scale."""
    state, parts = loop.train(config, workdir)  # finished: restores the last checkpoint
    det = parts.detector

    @jax.jit
    def guided(params, images, hw):
        out = det.apply(params, network_images(det, images, hw))
        anchors = det.priors(tuple(images.shape[1:3]), out)["guided"].boxes
        return (anchors, gar.loc_keep(out, det.ga.loc_filter_thr),
                gar.loc_keep(out, CENTRE_THR))

    learned, centres, gts = [], [], []
    for b in pipeline.from_config(config.data, batch_size=int(config.eval.batch_size),
                                  train=False):
        anchors, keep, centre = jax.tree_util.tree_map(
            np.asarray, guided(state.params, b["image"], b["image_hw"]))
        for i in range(anchors.shape[0]):
            if b["image_id"][i] < 0:
                continue
            learned.append(anchors[i][keep[i]])
            centres.append(anchors[i][centre[i]])
            g = b["valid"][i] & ~b["ignore"][i]
            gts.append(b["boxes"][i][g])
    strides = tuple(int(s) for s in config.model.strides)
    fixed = priors_lib.make_anchors([(1, 1)] * len(strides), strides,
                                    octave_base_scale=config.anchor.octave_base_scale,
                                    scales_per_octave=config.anchor.scales_per_octave,
                                    ratios=tuple(config.anchor.ratios)).boxes
    wh = lambda b: np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)  # noqa: E731
    return {"learned": wh(np.concatenate(learned)), "centres": wh(np.concatenate(centres)),
            "gt": wh(np.concatenate(gts)),
            "fixed": wh(np.asarray(fixed))}


def plot_shapes(shapes: dict, path: str) -> dict:
    """Histograms of log2(h / w) and sqrt(w h); returns medians per set."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    summary = {}
    labels = {"gt": "GT boxes", "learned": "guided anchors, sigmoid(loc) >= 0.01",
              "centres": f"guided anchors, sigmoid(loc) >= {CENTRE_THR}"}
    for name, style in (("gt", dict(color="k", alpha=0.35)),
                        ("learned", dict(color="tab:blue", alpha=0.4)),
                        ("centres", dict(color="tab:orange", alpha=0.45))):
        w, h = np.maximum(shapes[name][:, 0], 1e-3), np.maximum(shapes[name][:, 1], 1e-3)
        ratio, scale = np.log2(h / w), np.sqrt(w * h)
        hist = dict(bins=60, density=True, label=labels[name], **style)
        axes[0].hist(ratio, range=(-3, 3), **hist)
        axes[1].hist(scale, range=(0, 128), **hist)
        summary[name] = dict(n=int(len(w)), median_log2_ratio=float(np.median(ratio)),
                             median_scale=float(np.median(scale)))
    fw, fh = shapes["fixed"][:, 0], shapes["fixed"][:, 1]
    for r in np.unique(np.round(np.log2(fh / fw), 3)):
        axes[0].axvline(r, color="tab:red", ls="--", lw=1)
    for s in np.sqrt(fw * fh):
        axes[1].axvline(s, color="tab:red", ls="--", lw=1)
    axes[0].plot([], [], color="tab:red", ls="--", label="fixed RetinaNet anchors")
    axes[0].set_xlabel("log2(h / w)")
    axes[1].set_xlabel("sqrt(w h) (px)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return summary


def write_readme(results: dict, schedule: str, summary: dict, out: str) -> None:
    keys = ap_rows.KEYS
    lines = ["<!-- results:start -->", f"Trained {schedule} on `shapes` (128 px).", "",
             "| detector | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, s in results["ap"].items():
        lines.append(f"| {name} | " + " | ".join(report.pm(s[k]) for k in keys) + " |")
    lines += ["", "| proposals | " + " | ".join(AR_KEYS) + " |", "|---|" + "---|" * 3]
    for name, s in results["ar"].items():
        lines.append(f"| {name} | " + " | ".join(report.pm(s[k]) for k in AR_KEYS) + " |")
    lines += ["", "Anchor shapes of GA-RetinaNet, seed 0 (medians over the val split): " +
              "; ".join(f"{k}: n={v['n']}, log2(h/w) {v['median_log2_ratio']:.2f}, "
                        f"sqrt(wh) {v['median_scale']:.1f} px" for k, v in summary.items()),
              "", "![anchor shapes](anchor_shapes.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/guided_anchoring")
    ap.add_argument("--out", default=HERE, help="where results.json, the plot and README go")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict = {"ap": {}, "ar": {}}
    summary: dict = {}

    def rows() -> list:
        ap_rows_, ar_rows = variants(args.steps, args.recipe)
        return [("ap", n, c) for n, c in ap_rows_.items()] + [("ar", n, c)
                                                              for n, c in ar_rows.items()]

    for i in range(len(rows())):  # row by row: a finished row has all its seeds
        for seed in range(args.seeds):
            kind, name, config = rows()[i]
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed).data.val_split = args.val_split
            baseline = name == BASELINE  # the shared RetinaNet workdir, no tag
            workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, seed,
                                         "" if baseline else TAGS[name], baseline=baseline)
            per_seed[kind].setdefault(name, []).append(loop.train_and_evaluate(config, workdir))
            if seed == 0 and name == GA:
                summary = plot_shapes(anchor_shapes(config, workdir),
                                      os.path.join(args.out, "anchor_shapes.png"))
            results = {k: {n: report.aggregate_seeds(v) for n, v in d.items()}
                       for k, d in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "recipe": args.recipe, "seeds": args.seeds,
                           "results": results, "anchor_shapes": summary,
                           "per_seed": per_seed}, f, indent=2)
        # The tables of the rows finished so far (all rows once the last one is).
        write_readme(results, recipe.describe(args.steps, args.recipe, args.seeds), summary,
                     args.out)


if __name__ == "__main__":
    main()
