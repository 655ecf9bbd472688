"""RepPoints at small scale (Yang et al., ICCV 2019): the point-set representation against
the bounding-box representation in the same network (the paper's box baseline:
`reppoints.use_grid_points`, the head regresses boxes and samples their 3x3 grids; init
stage by the point assigner, and by max-IoU on base squares, mmdetection's box-centre
and box-anchor configs), the moment, min-max and partial min-max pseudo-box transforms,
and the box-based 9-anchor RetinaNet of the same backbone and FPN (the baseline the
other experiments share, trained in `recipe.baseline_workdir`), one schedule on
`shapes`; and a figure of the learned points on val images (the paper's Figure 4).

  python experiments/reppoints/run.py [--steps 1000] [--recipe adamw|config|sgd] \
      [--seeds 3] [--workdir runs/reppoints] [--out experiments/reppoints]

Every row trains with seeds 0..N-1 in `<workdir>/seed<k>/v<i>` (resumed when rerun).
Writes the table of mean ± std over the seeds into README.md (between markers),
results.json (the aggregate and the per-seed values) and learned_points.png (seed 0 of
the moment row) into --out.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.reppoints import reppoints_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import ap_rows, recipe, report  # noqa: E402

BASELINE = "RetinaNet (#A=9, max-IoU, boxes)"
MOMENT = "RepPoints (moment)"
NUM_IMAGES = 6  # val images in the figure
MAX_DETECTIONS = 6  # detections drawn per image (score >= MIN_SCORE, after NMS 0.5)
MIN_SCORE = 0.3


def variants(steps: int, recipe_name: str = "adamw"):
    def reppoints(transform: str, grid: bool = False, init_assigner: str = "point"):
        c = reppoints_tiny_shapes.get_config()
        c.reppoints.transform = transform
        c.reppoints.use_grid_points = grid
        c.assigner.name = init_assigner
        return c

    rows = {  # in the order they train (row by row)
        BASELINE: retinanet_tiny_shapes.get_config(),
        MOMENT: reppoints("moment"),
        "Box representation (grid points, centre)": reppoints("minmax", grid=True),
        "RepPoints (min-max)": reppoints("minmax"),
        "RepPoints (partial min-max)": reppoints("partial_minmax"),
        "Box representation (grid points, max-IoU)": reppoints("minmax", True, "max_iou"),
    }
    for c in rows.values():
        recipe.apply(c, steps, recipe_name)
    return rows


def top_detections(scores: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Indices of up to MAX_DETECTIONS locations of one image by score (>= MIN_SCORE),
    greedy NMS 0.5 on their boxes: scores [N], boxes [N, 4] -> [k] int."""
    from jaxdet.core.boxes import pairwise_iou

    order = [i for i in np.argsort(-scores)[:200] if scores[i] >= MIN_SCORE]
    keep: list[int] = []
    for i in order:
        if keep and np.max(np.asarray(pairwise_iou(boxes[keep], boxes[i : i + 1]))) > 0.5:
            continue
        keep.append(i)
        if len(keep) == MAX_DETECTIONS:
            break
    return np.asarray(keep, int)


def draw_figure(args: argparse.Namespace) -> None:
    """learned_points.png: val images with GT boxes (white), and for the top detections
    of the moment RepPoints (seed 0) the 9 refined points (filled), the 9 init points
    (hollow) and the pseudo-box (dashed)."""
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxdet.data import pipeline
    from jaxdet.train import loop
    from jaxdet.train.step import network_images

    config = recipe.seeded(variants(args.steps, args.recipe)[MOMENT], 0)
    config.data.val_split = args.val_split
    names = list(variants(args.steps, args.recipe))
    workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, 0,
                                 f"v{names.index(MOMENT)}", baseline=False)
    state, parts = loop.train(config, workdir)  # finished: restores the last checkpoint
    det = parts.detector

    @jax.jit
    def points(params, images, hw):
        out = det.apply(params, network_images(det, images, hw))
        pri = det.priors(tuple(images.shape[1:3]), out)
        to_px = lambda p: (p.reshape(*p.shape[:-1], -1, 2)[..., ::-1]  # (x, y) pixels
                           * pri.strides[:, None, None] + pri.centers[:, None])
        return (jax.nn.sigmoid(out["cls_logits"]).max(-1), det.boxes(out, "pts_refine", pri),
                to_px(out["pts_init"]), to_px(out["pts_refine"]))

    batch = next(pipeline.from_config(config.data, batch_size=NUM_IMAGES, train=False))
    scores, boxes, p_init, p_refine = jax.tree_util.tree_map(
        np.asarray, points(state.params, batch["image"], batch["image_hw"]))
    fig, axes = plt.subplots(1, NUM_IMAGES, figsize=(2.6 * NUM_IMAGES, 2.9), squeeze=False)
    for b in range(NUM_IMAGES):
        ax = axes[0, b]
        ax.imshow(batch["image"][b])
        for k in np.flatnonzero(batch["valid"][b]):
            x1, y1, x2, y2 = batch["boxes"][b, k]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       edgecolor="white", lw=0.8))
        for j, i in enumerate(top_detections(scores[b], boxes[b])):
            color = f"C{j + 1}"
            x1, y1, x2, y2 = boxes[b, i]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=color, lw=1, ls="--"))
            ax.scatter(p_init[b, i, :, 0], p_init[b, i, :, 1], s=10, facecolors="none",
                       edgecolors=color, linewidths=0.6)
            ax.scatter(p_refine[b, i, :, 0], p_refine[b, i, :, 1], s=12, color=color,
                       edgecolors="white", linewidths=0.5)
        ax.set_xlim(0, batch["image"].shape[2])
        ax.set_ylim(batch["image"].shape[1], 0)
        ax.set_axis_off()
    fig.suptitle("RepPoints (moment): refined points (filled), init points (hollow), "
                 "pseudo-boxes (dashed), GT (white)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.out, "learned_points.png")
    report.save_image_figure(fig, path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    ap_rows.main(variants, lambda name: name == BASELINE, "runs/reppoints", HERE,
                 after=draw_figure)


if __name__ == "__main__":
    main()
