"""Gaussian YOLOv3's analyses at small scale (Choi et al., ICCV 2019, arXiv 1904.04620),
on `shapes` with the tiny configs:

1. per true positive (a detection with IoU > 0.5 with a GT of its class), the predicted
   sigma of each coordinate (tx, ty, tw, th) against that coordinate's absolute error
   in the same units (|centre error| / stride, |log(w_gt / w)|), binned by sigma, with
   the Pearson and Spearman correlations;
2. the IoU of each true positive with its GT against the mean of its four sigmas;
3. AP, AP75 and the number of false positives before the detections (all classes,
   sorted by score) reach a fixed recall (`--recall`), for YOLOv3, Gaussian YOLOv3
   scored without the uncertainty term (objectness x class) and with it (x (1 - mean
   sigma)).

  python experiments/gaussian_yolov3/run.py [--steps 1000] [--recipe adamw|config] \
      [--seeds 3] [--workdir runs/gaussian_yolov3] [--out experiments/gaussian_yolov3]

Every detector trains with seeds 0..N-1 (`<workdir>/seed<k>/<row>`). Writes results.json
(mean ± std over the seeds and every seed's values), gaussian_yolov3.png (seed 0) and the
table in README.md (between the results markers) into --out. Training resumes from the
checkpoints in --workdir.
"""

from __future__ import annotations

import argparse
import copy
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

from configs.gaussian_yolov3 import gaussian_yolov3_tiny_shapes  # noqa: E402
from configs.yolov3 import yolov3_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet import detectors  # noqa: E402
from jaxdet.data import pipeline  # noqa: E402
from jaxdet.detectors import gaussian_yolov3  # noqa: E402
from jaxdet.ops.postprocess import dense_postprocess  # noqa: E402
from jaxdet.train import loop  # noqa: E402
from jaxdet.train.step import network_images  # noqa: E402

COORDS = ("tx", "ty", "tw", "th")
NUM_BINS = 8


def detections_with_priors(det, params, images, image_hw):
    """Detections of `det.predict`'s settings plus, per detection, its four sigmas
    [B, K, 4] (0 for YOLOv3) and its prior's index [B, K] (for the stride): the head's outputs
    through the template's `apply`, `priors`, `decode` and `dense_postprocess`."""
    out = det.apply(params, images)
    priors = det.priors(tuple(images.shape[1:3]), out)
    t = det.config.test

    def one(o, hw):
        boxes, scores, factors = det.decode(o, priors)
        if o["box"].shape[-1] == 8:
            _, sigma = gaussian_yolov3.split_gaussian(o["box"])
        else:  # YOLOv3: no sigma
            sigma = jax.numpy.zeros_like(boxes)
        extra = dict(sigma=sigma, prior=jax.numpy.arange(boxes.shape[0]))
        return dense_postprocess(boxes, scores, det.level_sizes(priors), hw,
                                 score_thr=t.score_thr, pre_nms_topk=t.pre_nms_topk,
                                 iou_threshold=t.nms_iou, max_det=t.max_det,
                                 score_factors=factors, extra=extra)

    return jax.vmap(one)(out, image_hw), priors


def collect(config, det, params) -> dict:
    """Over the val split: every detection (score, class, TP or FP) and, per true
    positive, its sigmas, coordinate errors and IoU; the number of GTs."""
    fn = jax.jit(lambda p, im, hw: detections_with_priors(
        det, p, network_images(det, im, hw), hw))
    scores, tp, sig, err, ious, num_gt = [], [], [], [], [], 0
    for b in pipeline.from_config(config.data, batch_size=int(config.eval.batch_size),
                                  train=False):
        (dets, extra), priors = fn(params, b["image"], b["image_hw"])
        dets, extra = jax.tree_util.tree_map(np.asarray, (dets, extra))
        strides = np.asarray(priors.strides)
        for i in range(b["image"].shape[0]):
            if b["image_id"][i] < 0:
                continue
            keep = np.asarray(b["valid"][i] & ~b["ignore"][i])
            gb, gl = np.asarray(b["boxes"][i])[keep], np.asarray(b["labels"][i])[keep]
            num_gt += len(gb)
            v = dets.valid[i]
            boxes, cls, sc = dets.boxes[i][v], dets.classes[i][v], dets.scores[i][v]
            iou = report.np_iou(boxes, gb) * (cls[:, None] == gl[None, :])
            used = np.zeros(len(gb), bool)
            for k in np.argsort(-sc, kind="stable"):  # greedy matching, as COCO at 0.5
                j = int(np.argmax(np.where(used, -1.0, iou[k]))) if len(gb) else -1
                hit = j >= 0 and not used[j] and iou[k, j] > 0.5
                scores.append(sc[k])
                tp.append(hit)
                if not hit:
                    continue
                used[j] = True
                s = strides[extra["prior"][i][v][k]]
                pc, gc = (boxes[k, :2] + boxes[k, 2:]) / 2, (gb[j, :2] + gb[j, 2:]) / 2
                pwh = np.maximum(boxes[k, 2:] - boxes[k, :2], 1e-6)
                gwh = np.maximum(gb[j, 2:] - gb[j, :2], 1e-6)
                err.append(np.concatenate([np.abs(gc - pc) / s, np.abs(np.log(gwh / pwh))]))
                sig.append(extra["sigma"][i][v][k])
                ious.append(iou[k, j])
    return dict(scores=np.asarray(scores), tp=np.asarray(tp, bool), num_gt=num_gt,
                sigma=np.asarray(sig).reshape(-1, 4), err=np.asarray(err).reshape(-1, 4),
                iou=np.asarray(ious))


def rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def correlations(x: np.ndarray, y: np.ndarray) -> dict:
    if len(x) < 3:
        return dict(pearson=float("nan"), spearman=float("nan"))
    return dict(pearson=float(np.corrcoef(x, y)[0, 1]),
                spearman=float(np.corrcoef(rank(x), rank(y))[0, 1]))


def binned(x: np.ndarray, y: np.ndarray) -> dict:
    """Mean of y in NUM_BINS quantile bins of x: {'x': bin means of x, 'y': of y}."""
    if len(x) < NUM_BINS:
        return dict(x=[], y=[])
    edges = np.quantile(x, np.linspace(0, 1, NUM_BINS + 1))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, NUM_BINS - 1)
    return dict(x=[float(x[idx == k].mean()) for k in range(NUM_BINS) if np.any(idx == k)],
                y=[float(y[idx == k].mean()) for k in range(NUM_BINS) if np.any(idx == k)])


def false_positives_at_recall(c: dict, recall: float) -> float:
    """FPs among the detections ranked above the one that reaches `recall` (nan if never)."""
    order = np.argsort(-c["scores"], kind="stable")
    tp = c["tp"][order]
    reached = np.nonzero(np.cumsum(tp) >= recall * max(c["num_gt"], 1))[0]
    return float(np.sum(~tp[: reached[0] + 1])) if len(reached) else float("nan")


def uncertainty_analysis(c: dict) -> dict:
    out = {}
    for k, name in enumerate(COORDS):
        out[name] = dict(**correlations(c["sigma"][:, k], c["err"][:, k]),
                         bins=binned(c["sigma"][:, k], c["err"][:, k]))
    mean_sigma = c["sigma"].mean(1) if len(c["sigma"]) else np.zeros(0)
    out["iou_vs_mean_sigma"] = dict(**correlations(mean_sigma, c["iou"]),
                                    bins=binned(mean_sigma, c["iou"]))
    out["num_tp"] = int(len(c["iou"]))
    return out


def rows(steps: int, recipe_name: str) -> dict:
    """{row: (tag, train config, test.use_uncertainty or None)}; the two Gaussian rows
    share one training."""
    y = recipe.apply(yolov3_tiny_shapes.get_config(), steps, recipe_name)
    g = recipe.apply(gaussian_yolov3_tiny_shapes.get_config(), steps, recipe_name)
    return {"YOLOv3": ("yolov3", y, None),
            "Gaussian YOLOv3, score without uncertainty": ("gaussian", g, False),
            "Gaussian YOLOv3": ("gaussian", g, True)}


def plot(analysis: dict, path: str) -> None:
    """Seed 0: (1) |error| against sigma per coordinate, (2) IoU against mean sigma."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in COORDS:
        b = analysis[name]["bins"]
        axes[0].plot(b["x"], b["y"], marker="o", ms=3,
                     label=f"{name} (Pearson {analysis[name]['pearson']:.2f})")
    axes[0].set_xlabel("predicted sigma (bin mean)")
    axes[0].set_ylabel("|error| (bin mean; tx, ty: / stride; tw, th: |log ratio|)")
    axes[0].set_title("(1) does sigma predict the error?")
    axes[0].legend(fontsize=8)
    b = analysis["iou_vs_mean_sigma"]["bins"]
    axes[1].plot(b["x"], b["y"], marker="o", color="tab:red")
    axes[1].set_xlabel("mean of the four sigmas (bin mean)")
    axes[1].set_ylabel("IoU with the matched GT (bin mean)")
    axes[1].set_title("(2) IoU against uncertainty, true positives")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(results: dict, schedule: str, recall: float, out: str) -> None:
    pm = report.pm
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes` (128 px); val split. FP@R{recall:g}: false "
        f"positives ranked above the detection that reaches recall {recall:g} (IoU > 0.5, "
        "all classes together).",
        "",
        f"| detector | AP | AP50 | AP75 | FP@R{recall:g} |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s = r["coco"]
        lines.append(f"| {name} | {pm(s['AP'])} | {pm(s['AP50'])} | {pm(s['AP75'])} | "
                     f"{pm(r['fp_at_recall'], '.1f')} |")
    a = results["Gaussian YOLOv3"]["analysis"]
    lines += ["", "Gaussian YOLOv3, true positives: correlation of the predicted sigma with "
              "the coordinate's absolute error, and of the mean sigma with the IoU "
              f"(n = {pm(a['num_tp'], '.0f')} per seed):", "",
              "| | Pearson | Spearman |", "|---|---|---|"]
    for name in (*COORDS, "iou_vs_mean_sigma"):
        label = ("IoU vs mean sigma" if name == "iou_vs_mean_sigma"
                 else f"sigma_{name[1]} vs abs. error")
        lines.append(f"| {label} | {pm(a[name]['pearson'])} | {pm(a[name]['spearman'])} |")
    lines += ["", "![uncertainty analyses, seed 0](gaussian_yolov3.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/gaussian_yolov3")
    ap.add_argument("--out", default=HERE, help="where results.json, the plot and README go")
    ap.add_argument("--recall", type=float, default=0.7)
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    for seed in range(args.seeds):
        trained = {}
        for name, (tag, config, use_unc) in rows(args.steps, args.recipe).items():
            recipe.seeded(config, seed).data.val_split = args.val_split
            workdir = os.path.join(recipe.seed_workdir(args.workdir, seed), tag)
            if tag not in trained:
                print(f"=== {tag} (seed {seed})", flush=True)
                trained[tag] = loop.train(config, workdir)
            state, parts = trained[tag]
            test_config = copy.deepcopy(config)
            if use_unc is not None:
                test_config.test.use_uncertainty = use_unc
            det = detectors.build(test_config)
            coco = loop.evaluate(test_config, det, state.params, parts.mesh, workdir,
                                 step=int(state.step), draw=0)
            c = collect(test_config, det, state.params)
            row = dict(coco={k: float(v) for k, v in coco.items()},
                       fp_at_recall=false_positives_at_recall(c, args.recall))
            if use_unc:
                row["analysis"] = uncertainty_analysis(c)
                if seed == 0:
                    plot(row["analysis"], os.path.join(args.out, "gaussian_yolov3.png"))
            per_seed.setdefault(name, []).append(row)
            print(name, json.dumps({k: v for k, v in row.items() if k != "analysis"}),
                  flush=True)
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "recipe": args.recipe, "seeds": args.seeds,
                           "recall": args.recall, "results": results, "per_seed": per_seed},
                          f, indent=1)
    write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), args.recall,
                args.out)


if __name__ == "__main__":
    main()
