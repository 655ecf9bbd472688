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

  python experiments/hambox/run.py [--steps 1000] [--recipe adamw|config] [--seeds 3] \
      [--workdir runs/hambox] [--out experiments/hambox]

Every row trains with seeds 0..N-1 (`<workdir>/seed<k>/<row>`). Writes results.json
(mean ± std over the seeds and the per-seed values), hambox.png (mean over the
seeds) and the table in README.md (between the results markers) into --out.
Training resumes from the checkpoints in --workdir.

The analysis needs the detector's raw per-anchor outputs; `raw_predictions` is the
one function that reaches into the detector for them.
"""

from __future__ import annotations

import argparse
import functools
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
from jaxdet.assign import hambox as ham  # noqa: E402
from jaxdet.core.types import ground_truth_from_batch  # noqa: E402
from jaxdet.data import pipeline  # noqa: E402
from jaxdet.train import loop  # noqa: E402
from jaxdet.train.step import network_images, predict_step  # noqa: E402

SIZE_BINS = (0, 8, 12, 16, 24, 1e9)  # sqrt(area) of the GT in input pixels
SIZE_LABELS = ("<8", "8-12", "12-16", "16-24", ">=24")


def variants(steps: int, recipe_name: str) -> dict:
    base = recipe.apply(hambox_tiny_shapes.get_config(), steps, recipe_name)
    baseline = recipe.apply(hambox_tiny_shapes.get_config(), steps, recipe_name)
    baseline.assigner.k = 0
    return {"Baseline (IoU 0.35 matching)": ("baseline", baseline),
            "HAMBox (K=5)": ("hambox", base)}


def raw_predictions(det, params, images, gt, assigner) -> tuple:
    """(boxes [B, N, 4], scores [B, N, C], stage-1 gt_index [B, N]) of every anchor:
    the decoded regressions and class probabilities before any filtering, and the
    IoU matching alone (`jaxdet.assign.hambox.match` with `assigner`'s thresholds).

    Uses the one-stage template's `apply` (head outputs), `priors` and `decode`."""
    out = det.apply(params, images)
    priors = det.priors(tuple(images.shape[1:3]), out)
    boxes, scores, _ = jax.vmap(lambda o: det.decode(o, priors))(out)
    stage1 = jax.vmap(lambda g: ham.match(
        priors, g, pos_iou_thr=float(assigner.pos_iou_thr),
        best_anchor_all_ties=bool(assigner.best_anchor_all_ties),
        ignore_iof_thr=float(assigner.ignore_iof_thr)))(gt)
    return boxes, scores, stage1.gt_index


def analyse(config, det, params) -> dict:
    """Both analyses over the val split (see the module docstring)."""
    thr = float(config.test.score_thr)
    raw = jax.jit(lambda p, im, hw, g: raw_predictions(
        det, p, network_images(det, im, hw), g, config.assigner))
    predict = jax.jit(functools.partial(predict_step, detector=det))
    correct_from_unmatched, correct = 0, 0  # score >= thr
    good_from_unmatched, good = 0, 0  # any score
    per_gt = []  # (size, n_matched, n_pre, n_post)
    batches = pipeline.from_config(config.data, batch_size=int(config.eval.batch_size),
                                   train=False)
    for b in batches:
        boxes, scores, stage1 = jax.tree_util.tree_map(
            np.asarray, raw(params, b["image"], b["image_hw"], ground_truth_from_batch(b)))
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
    mean = report.mean_of
    ax.bar(x - 0.2, [mean(results[n]["analysis"]["share_correct_from_unmatched"])
                     for n in names], 0.4, label="correct before NMS (score >= thr)")
    ax.bar(x + 0.2, [mean(results[n]["analysis"]["share_good_from_unmatched"]) for n in names],
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
            ax.plot(xs, [mean(s[k][key]) for k in SIZE_LABELS], style, color=c, marker="o", ms=3,
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


def write_table(results: dict, schedule: str, score_thr: float, out: str) -> None:
    """results: {row: aggregate_seeds of {'coco': ..., 'analysis': ...}}."""
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes/small_objects` (128 px), same schedule for both; "
        f"val split; \"correct\" = regressed IoU >= 0.5 with a GT and score "
        f">= {score_thr:g} for its class.",
        "",
        "| detector | AP | AP50 | AP75 | APs | APm | correct before NMS from unmatched anchors "
        "| all IoU >= 0.5 boxes from unmatched | per GT: matched / correct pre-NMS / "
        "correct post-NMS | GTs missed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pm = report.pm
    for name, r in results.items():
        s, a = r["coco"], r["analysis"]
        lines.append(
            f"| {name} | " + " | ".join(pm(s[k]) for k in ("AP", "AP50", "AP75", "APs", "APm"))
            + f" | {pm(a['share_correct_from_unmatched'], '.1%')} "
            f"(of {pm(a['num_correct'], '.0f')}) | {pm(a['share_good_from_unmatched'], '.1%')} | "
            f"{pm(a['matched'], '.2f')} / {pm(a['pre_nms'], '.2f')} / "
            f"{pm(a['post_nms'], '.2f')} | {pm(a['missed'], '.1%')} |"
        )
    lines += ["", "Per GT by size (matched / correct pre-NMS / correct post-NMS, mean; "
              "share of GTs without a correct detection):", "",
              "| detector | " + " | ".join(SIZE_LABELS) + " |",
              "|---|" + "---|" * len(SIZE_LABELS)]
    for name, r in results.items():
        s = r["analysis"]["by_size"]
        cells = [f"{pm(s[k]['matched'], '.2f')} / {pm(s[k]['pre_nms'], '.1f')} / "
                 f"{pm(s[k]['post_nms'], '.2f')}; {pm(s[k]['missed'], '.0%')} "
                 f"(n={pm(s[k]['n'], '.0f')})" for k in SIZE_LABELS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![HAMBox analyses](hambox.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/hambox")
    ap.add_argument("--out", default=HERE, help="where results.json, hambox.png and README go")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    for seed in range(args.seeds):
        rows = variants(args.steps, args.recipe)
        for name, (tag, config) in rows.items():
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed).data.val_split = args.val_split
            workdir = os.path.join(recipe.seed_workdir(args.workdir, seed), tag)
            state, parts = loop.train(config, workdir)
            det = parts.detector
            coco = loop.evaluate(config, det, state.params, parts.mesh, workdir,
                                 step=int(state.step))
            analysis = analyse(config, det, state.params)
            per_seed.setdefault(name, []).append(
                dict(coco={k: float(v) for k, v in coco.items()}, analysis=analysis))
            print(json.dumps({k: v for k, v in analysis.items() if k != "by_size"}), flush=True)
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "recipe": args.recipe, "seeds": args.seeds,
                           "results": results, "per_seed": per_seed}, f, indent=1)
    plot(results, os.path.join(args.out, "hambox.png"))
    score_thr = float(next(iter(rows.values()))[1].test.score_thr)
    write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), score_thr,
                args.out)


if __name__ == "__main__":
    main()
