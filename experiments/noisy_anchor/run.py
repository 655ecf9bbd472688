"""Learning from noisy anchors at small scale (Li et al., CVPR 2020, arXiv 1912.05086):
RetinaNet vs the same detector trained from candidate bags with cleanliness soft
labels and re-weighting, on `shapes` with one schedule. Measures the AP of both and
how well each detector's score ranks its boxes' localisation: the Pearson and
Spearman correlation between a detection's score and its IoU with the matched GT
(the same-class GT it overlaps most), over the val split.

  python experiments/noisy_anchor/run.py [--steps 1000] [--recipe adamw|config] \
      [--seeds 3] [--topk 50] \
      [--workdir runs/noisy_anchor] [--out experiments/noisy_anchor]

Every row trains with seeds 0..N-1 (`<workdir>/seed<k>/v<i>`; RetinaNet in the shared
baseline workdir). Writes results.json (mean ± std over the seeds and the per-seed
values), score_iou.png (seed 0) and the table in README.md (between markers) into
--out (default: beside this file). Training resumes from the checkpoints in
--workdir.
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
from scipy import stats as sstats  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs.noisy_anchor import noisy_anchor_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet.data import pipeline  # noqa: E402
from jaxdet.train import loop  # noqa: E402
from jaxdet.train.step import predict_step  # noqa: E402


def variants(steps: int, topk: int, score_thr: float | None = None,
             recipe_name: str = "adamw", val_split: str = "val") -> dict:
    rows = {
        "RetinaNet": retinanet_tiny_shapes.get_config(),
        f"Noisy anchors (N={topk})": noisy_anchor_tiny_shapes.get_config(),
    }
    rows[f"Noisy anchors (N={topk})"].assigner.topk = topk
    for c in rows.values():
        recipe.apply(c, steps, recipe_name)
        c.data.val_split = val_split
        if score_thr is not None:
            c.test.score_thr = score_thr
    return rows


def score_iou_pairs(config, detector, params) -> tuple[np.ndarray, np.ndarray]:
    """(score [D], IoU [D]) of every valid val detection: IoU with the same-class,
    non-crowd GT it overlaps most (0 if none), in network-input pixels."""
    predict = jax.jit(functools.partial(predict_step, detector=detector))
    scores, ious = [], []
    batches = pipeline.from_config(
        config.data, batch_size=int(config.eval.batch_size), train=False
    )
    for b in batches:
        dets = jax.tree_util.tree_map(np.asarray, predict(params, b["image"], b["image_hw"]))
        for i in range(b["image"].shape[0]):
            if b["image_id"][i] < 0:
                continue
            keep = dets.valid[i]
            boxes, sc, cl = dets.boxes[i][keep], dets.scores[i][keep], dets.classes[i][keep]
            g = b["valid"][i] & ~b["ignore"][i]
            gb, gl = b["boxes"][i][g], b["labels"][i][g]
            iou = report.np_iou(boxes, gb) if len(gb) else np.zeros((len(boxes), 0))
            iou = np.where(cl[:, None] == gl[None, :], iou, 0.0)
            scores.append(sc)
            ious.append(iou.max(axis=1) if iou.shape[1] else np.zeros(len(boxes)))
    return np.concatenate(scores), np.concatenate(ious)


def correlations(score: np.ndarray, iou: np.ndarray) -> dict:
    out = {}
    for name, sel in (("matched", iou > 0), ("iou50", iou >= 0.5)):
        s, u = score[sel], iou[sel]
        ok = len(s) > 2 and np.std(s) > 0 and np.std(u) > 0
        out[name] = dict(
            n=int(sel.sum()),
            pearson=float(sstats.pearsonr(s, u)[0]) if ok else float("nan"),
            spearman=float(sstats.spearmanr(s, u)[0]) if ok else float("nan"),
        )
    out["unmatched"] = int((iou == 0).sum())
    return out


def plot(pairs: dict, results: dict, path: str) -> None:
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.4), sharey=True)
    for ax, (name, (score, iou)) in zip(np.atleast_1d(axes), pairs.items()):
        sel = iou > 0
        ax.scatter(iou[sel], score[sel], s=3, alpha=0.25, linewidths=0)
        c = results[name]["corr"]["matched"]
        ax.set_title(f"{name}, seed 0\nPearson {c['pearson']:.3f}  Spearman "
                     f"{c['spearman']:.3f}  (n={c['n']})", fontsize=10)
        ax.set_xlabel("IoU with the matched GT")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("detection score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(results: dict, steps: str, score_thr: float, out: str) -> None:
    lines = [
        "<!-- results:start -->",
        f"Trained {steps} on `shapes` (128 px), same schedule for both; "
        f"val split, detections after NMS with score > {score_thr:g}.",
        "",
        "| detector | AP | AP50 | AP75 | Pearson (IoU>0) | Spearman (IoU>0) | "
        "Pearson (IoU>=0.5) | Spearman (IoU>=0.5) | dets matched / unmatched |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, c = r["coco"], r["corr"]
        lines.append(
            f"| {name} | {report.pm(s['AP'])} | {report.pm(s['AP50'])} | "
            f"{report.pm(s['AP75'])} | {report.pm(c['matched']['pearson'])} | "
            f"{report.pm(c['matched']['spearman'])} | {report.pm(c['iou50']['pearson'])} | "
            f"{report.pm(c['iou50']['spearman'])} | {report.pm(c['matched']['n'], '.0f')} / "
            f"{report.pm(c['unmatched'], '.0f')} |"
        )
    lines += ["", "![score vs IoU](score_iou.png)", "<!-- results:end -->"]
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--topk", type=int, default=50, help="candidate bag size N (paper 50)")
    ap.add_argument("--workdir", default="runs/noisy_anchor")
    ap.add_argument("--out", default=HERE, help="where results.json, the PNG and README go")
    ap.add_argument("--score-thr", type=float, default=None,
                    help="detection score threshold (default: the configs' 0.05)")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    pairs, seed0 = {}, {}  # seed 0's score / IoU pairs and results, for the plot
    for seed in range(args.seeds):
        rows = variants(args.steps, args.topk, args.score_thr, args.recipe, args.val_split)
        score_thr = float(next(iter(rows.values())).test.score_thr)
        for i, (name, config) in enumerate(rows.items()):
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed)
            workdir = (recipe.baseline_workdir(args.workdir, args.steps, args.recipe, seed)
                       if name == "RetinaNet"
                       else os.path.join(recipe.seed_workdir(args.workdir, seed), f"v{i}"))
            state, parts = loop.train(config, workdir)
            det = parts.detector
            coco = loop.evaluate(config, det, state.params, parts.mesh, workdir,
                                 step=int(state.step))
            score, iou = score_iou_pairs(config, det, state.params)
            row = dict(coco=coco, corr=correlations(score, iou))
            per_seed.setdefault(name, []).append(row)
            if seed == 0:
                pairs[name], seed0[name] = (score, iou), row
            print(json.dumps(row["corr"]), flush=True)
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "topk": args.topk, "score_thr": score_thr,
                           "seeds": args.seeds, "results": results, "per_seed": per_seed},
                          f, indent=2)
    plot(pairs, seed0, os.path.join(args.out, "score_iou.png"))
    write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), score_thr,
                args.out)


if __name__ == "__main__":
    main()
