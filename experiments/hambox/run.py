"""HAMBox's two analyses at small scale (Liu et al., CVPR 2020, arXiv 1912.09231), on
the `small_objects` variant of `shapes` (objects 4-20 % of the 128 px side):

1. of the predictions that end up correct (regressed IoU >= 0.5 with a GT and a score
   >= the test threshold for its class, before NMS), the share regressed from anchors
   that the IoU matching (T1 = 0.35 + best anchor) left unmatched;
2. per GT, binned by size: the number of matched anchors, of correct predicted boxes
   before NMS and of correct detections after NMS;

for the paper's baseline (the same detector with matching alone: `assigner.k = 0`)
and for HAMBox (online compensation to K = 5 + regression-aware focal loss), with the
COCO AP of both.

  python experiments/hambox/run.py [--steps 1000] [--recipe adamw|config] \
      [--workdir runs/hambox]

Writes results.json, hambox.png and the table in README.md (between the results
markers) beside this file. Training resumes from the checkpoints in --workdir.
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

from configs.hambox import hambox_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet.core.types import ground_truth_from_batch  # noqa: E402
from jaxdet.data import pipeline  # noqa: E402
from jaxdet.train import loop  # noqa: E402

SIZE_BINS = (0, 8, 12, 16, 24, 1e9)  # sqrt(area) of the GT in input pixels
SIZE_LABELS = ("<8", "8-12", "12-16", "16-24", ">=24")


def variants(steps: int, recipe_name: str) -> dict:
    base = recipe.apply(hambox_tiny_shapes.get_config(), steps, recipe_name)
    baseline = recipe.apply(hambox_tiny_shapes.get_config(), steps, recipe_name)
    baseline.assigner.k = 0
    return {"Baseline (IoU 0.35 matching)": ("baseline", baseline),
            "HAMBox (K=5)": ("hambox", base)}


def analyse(config, det, params) -> dict:
    """Both analyses over the val split (see the module docstring)."""
    thr = float(config.test.score_thr)
    apply = jax.jit(det.apply)
    predict = jax.jit(det.predict)
    match = jax.jit(det.match)
    correct_from_unmatched, correct = 0, 0  # score >= thr
    good_from_unmatched, good = 0, 0  # any score
    per_gt = []  # (size, n_matched, n_pre, n_post)
    batches = pipeline.from_config(config.data, batch_size=int(config.eval.batch_size),
                                   train=False)
    for b in batches:
        out = apply(params, b["image"])
        priors = det.priors(b["image"].shape[1:3])
        gt = ground_truth_from_batch(b)
        stage1 = np.asarray(match(priors, gt).gt_index)  # HAMBox.match: stage 1 alone
        boxes = np.asarray(jax.jit(det.pred_boxes)(out, priors))
        scores = np.asarray(jax.nn.sigmoid(out["cls_logits"]))
        dets = jax.tree_util.tree_map(np.asarray, predict(params, b["image"], b["image_hw"]))
        for i in range(b["image"].shape[0]):
            if b["image_id"][i] < 0:
                continue
            keep = np.asarray(b["valid"][i] & ~b["ignore"][i])
            rows = np.nonzero(keep)[0]
            if not len(rows):
                continue
            gb, gl = np.asarray(b["boxes"][i])[rows], np.asarray(b["labels"][i])[rows]
            iou = report.np_iou(boxes[i], gb)  # [N, G]
            best = iou.argmax(1)
            best_iou = iou.max(1)
            cls_score = scores[i][np.arange(len(best)), gl[best]]
            hit = best_iou >= 0.5
            unmatched = stage1[i] == -1
            good += hit.sum()
            good_from_unmatched += (hit & unmatched).sum()
            ok = hit & (cls_score >= thr)
            correct += ok.sum()
            correct_from_unmatched += (ok & unmatched).sum()
            v = dets.valid[i]
            d_iou = report.np_iou(dets.boxes[i][v], gb)
            d_iou = np.where(dets.classes[i][v][:, None] == gl[None, :], d_iou, 0.0)
            d_best = d_iou.argmax(1) if d_iou.shape[0] else np.zeros(0, int)
            d_hit = (d_iou.max(1) >= 0.5) if d_iou.shape[0] else np.zeros(0, bool)
            for j, r in enumerate(rows):
                w, h = gb[j, 2] - gb[j, 0], gb[j, 3] - gb[j, 1]
                per_gt.append((float(np.sqrt(max(w * h, 0))), int(np.sum(stage1[i] == r)),
                               int(np.sum(ok & (best == j))), int(np.sum(d_hit & (d_best == j)))))
    a = np.asarray(per_gt, np.float64).reshape(-1, 4)
    bins = np.digitize(a[:, 0], SIZE_BINS[1:-1])
    by_size = {}
    for k, label in enumerate(SIZE_LABELS):
        sel = bins == k
        by_size[label] = dict(
            n=int(sel.sum()),
            matched=float(a[sel, 1].mean()) if sel.any() else float("nan"),
            pre_nms=float(a[sel, 2].mean()) if sel.any() else float("nan"),
            post_nms=float(a[sel, 3].mean()) if sel.any() else float("nan"),
            missed=float((a[sel, 3] == 0).mean()) if sel.any() else float("nan"),
        )
    return dict(
        share_correct_from_unmatched=float(correct_from_unmatched / max(correct, 1)),
        num_correct=int(correct),
        share_good_from_unmatched=float(good_from_unmatched / max(good, 1)),
        num_good=int(good),
        num_gt=int(len(a)),
        matched=float(a[:, 1].mean()),
        pre_nms=float(a[:, 2].mean()),
        post_nms=float(a[:, 3].mean()),
        missed=float((a[:, 3] == 0).mean()),
        by_size=by_size,
    )


def plot(results: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    names = list(results)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [results[n]["analysis"]["share_correct_from_unmatched"] for n in names],
           0.4, label="correct before NMS (score >= thr)")
    ax.bar(x + 0.2, [results[n]["analysis"]["share_good_from_unmatched"] for n in names],
           0.4, label="all regressed boxes with IoU >= 0.5")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share from stage-1 unmatched anchors")
    ax.set_title("(1) where the well-regressed boxes come from")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    for c, n in zip(("tab:blue", "tab:red"), names):
        s = results[n]["analysis"]["by_size"]
        xs = np.arange(len(SIZE_LABELS))
        for key, style in (("matched", ":"), ("pre_nms", "-"), ("post_nms", "--")):
            ax.plot(xs, [s[k][key] for k in SIZE_LABELS], style, color=c, marker="o", ms=3,
                    label=f"{n}: {key.replace('_', ' ')}")
    ax.set_xticks(np.arange(len(SIZE_LABELS)))
    ax.set_xticklabels(SIZE_LABELS)
    ax.set_xlabel("GT size sqrt(wh), px (128 px images)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("per GT (mean)")
    ax.set_title("(2) matched anchors, correct boxes before / after NMS")
    ax.legend(fontsize=6.5, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(results: dict, schedule: str, score_thr: float) -> None:
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes/small_objects` (128 px), same schedule for both; "
        f"val split (500 images); \"correct\" = regressed IoU >= 0.5 with a GT and score "
        f">= {score_thr:g} for its class.",
        "",
        "| detector | AP | AP50 | AP75 | APs | APm | correct before NMS from unmatched anchors "
        "| all IoU >= 0.5 boxes from unmatched | per GT: matched / correct pre-NMS / "
        "correct post-NMS | GTs missed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, a = r["coco"], r["analysis"]
        lines.append(
            f"| {name} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | {s['APs']:.3f} | "
            f"{s['APm']:.3f} | {a['share_correct_from_unmatched']:.1%} "
            f"(of {a['num_correct']}) | {a['share_good_from_unmatched']:.1%} | "
            f"{a['matched']:.2f} / {a['pre_nms']:.2f} / {a['post_nms']:.2f} | "
            f"{a['missed']:.1%} |"
        )
    lines += ["", "Per GT by size (matched / correct pre-NMS / correct post-NMS, mean; "
              "share of GTs without a correct detection):", "",
              "| detector | " + " | ".join(SIZE_LABELS) + " |",
              "|---|" + "---|" * len(SIZE_LABELS)]
    for name, r in results.items():
        s = r["analysis"]["by_size"]
        cells = [f"{s[k]['matched']:.2f} / {s[k]['pre_nms']:.1f} / {s[k]['post_nms']:.2f}; "
                 f"{s[k]['missed']:.0%} (n={s[k]['n']})" for k in SIZE_LABELS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![HAMBox analyses](hambox.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(HERE, "README.md"), lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/hambox")
    args = ap.parse_args()
    results = {}
    rows = variants(args.steps, args.recipe)
    for name, (tag, config) in rows.items():
        print(f"=== {name}", flush=True)
        workdir = os.path.join(args.workdir, tag)
        state, parts = loop.train(config, workdir)
        coco = loop.evaluate(config, parts.detector, state.params, parts.mesh, workdir,
                             step=int(state.step))
        analysis = analyse(config, parts.detector, state.params)
        results[name] = dict(coco={k: float(v) for k, v in coco.items()}, analysis=analysis)
        print(json.dumps({k: v for k, v in analysis.items() if k != "by_size"}), flush=True)
        with open(os.path.join(HERE, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "recipe": args.recipe, "results": results}, f,
                      indent=1)
    plot(results, os.path.join(HERE, "hambox.png"))
    score_thr = float(next(iter(rows.values()))[1].test.score_thr)
    write_table(results, recipe.describe(args.steps, args.recipe), score_thr)


if __name__ == "__main__":
    main()
