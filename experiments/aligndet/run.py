"""AlignDet's central ablation at small scale (Chen et al., arXiv 1908.01570): the same
two-stage-in-one head with RoIConv (3x3 sampling grid over the refined box) against a
plain 3x3 conv at the same place, one schedule on `shapes`; and a figure of RoIConv's
3x3 sampling points over a few GT objects of the val split, at initialisation and after
training.

  python experiments/aligndet/run.py [--steps 1000] [--recipe adamw|config|sgd] \
      [--seeds 3] [--workdir runs/aligndet] [--out experiments/aligndet]

Every row trains with seeds 0..N-1 in `<workdir>/seed<k>/v<i>` (resumed when rerun).
Writes the table of mean ± std over the seeds into README.md (between markers),
results.json (the aggregate and the per-seed values) and sampling_points.png (seed 0 of
the RoIConv row) into --out.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.aligndet import aligndet_tiny_shapes  # noqa: E402
from experiments import ap_rows, recipe, report  # noqa: E402

ROI_CONV = "AlignDet (RoIConv)"
PLAIN = "AlignDet, plain 3x3 conv"
NUM_IMAGES = 4  # val images in the figure
MAX_OBJECTS = 3  # GT objects drawn per image


def variants(steps: int, recipe_name: str = "adamw"):
    def aligndet(roi_conv: bool):
        c = aligndet_tiny_shapes.get_config()
        c.aligndet.roi_conv = roi_conv
        return recipe.apply(c, steps, recipe_name)

    return {ROI_CONV: aligndet(True), PLAIN: aligndet(False)}


def sampling_points(detector, params, images, image_hw, gt_boxes, gt_valid):
    """For each GT (up to MAX_OBJECTS per image), the 3x3 RoIConv sampling points in
    pixels at the location whose anchor overlaps it most: [B, MAX_OBJECTS, 9, 2] (x, y),
    and a [B, MAX_OBJECTS] mask."""
    import jax
    import jax.numpy as jnp

    from jaxdet.core import boxes as box_ops
    from jaxdet.detectors.aligndet import refined_boxes
    from jaxdet.ops.roi_conv import box_offsets
    from jaxdet.train.step import network_images

    out = detector.apply(params, network_images(detector, images, image_hw))
    anchors = detector.priors(tuple(images.shape[1:3]))["anchors"]
    boxes = refined_boxes(out["init_deltas"], anchors, tuple(detector.ad.init_box_stds))
    points = []
    for lvl, ((h, w), stride) in enumerate(zip(anchors.feature_shapes, detector.strides,
                                               strict=True)):
        start, n = anchors.level_starts[lvl], anchors.level_sizes[lvl]
        lvl_boxes = boxes[:, start:start + n].reshape(-1, h, w, 4)
        off = box_offsets(lvl_boxes, stride, 3, detector.ad.grid).reshape(-1, h, w, 9, 2)
        base = np.stack(np.meshgrid(np.arange(-1, 2), np.arange(-1, 2), indexing="ij"), -1)
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        regular = np.stack([ii, jj], -1)[:, :, None, :] + base.reshape(1, 1, 9, 2)
        yx = (off + regular) * stride  # [B, h, w, 9, 2] (y, x) in pixels
        points.append(yx[..., ::-1].reshape(yx.shape[0], h * w, 9, 2))
    points = jnp.concatenate(points, axis=1)  # [B, N, 9, 2] (x, y)
    k = MAX_OBJECTS
    iou = jax.vmap(lambda g: box_ops.pairwise_iou(g[:k], anchors.boxes))(gt_boxes)
    best = jnp.argmax(iou, axis=-1)  # [B, k]
    picked = jnp.take_along_axis(points, best[:, :, None, None], axis=1)
    return np.asarray(picked), np.asarray(gt_valid[:, :k])


def draw_figure(args: argparse.Namespace) -> None:
    """sampling_points.png: val images with GT boxes (white) and RoIConv's sampling
    points at initialisation (top row) and after training (bottom row), seed 0."""
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxdet import detectors
    from jaxdet.data import pipeline
    from jaxdet.train import checkpoint as ckpt_lib
    from jaxdet.train import loop

    config = recipe.seeded(variants(args.steps, args.recipe)[ROI_CONV], 0)
    config.data.val_split = args.val_split
    workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, 0, "v0", baseline=False)
    loop.prepare_data(config)
    det = detectors.build(config)
    init_rng, _ = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    init_params, _ = det.init(init_rng, tuple(config.data.image_size))
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    trained = jax.tree_util.tree_map(lambda t, r: np.asarray(r, t.dtype), init_params,
                                     ckpt.restore_params()["params"])
    ckpt.close()
    batch = next(pipeline.from_config(config.data, batch_size=NUM_IMAGES, train=False))
    fig, axes = plt.subplots(2, NUM_IMAGES, figsize=(3 * NUM_IMAGES, 6.4), squeeze=False)
    for row, (title, params) in enumerate((("init", init_params), ("trained", trained))):
        pts, ok = sampling_points(det, params, batch["image"], batch["image_hw"],
                                  batch["boxes"], batch["valid"])
        for b in range(NUM_IMAGES):
            ax = axes[row, b]
            ax.imshow(batch["image"][b])
            for k in range(ok.shape[1]):
                if not ok[b, k]:
                    continue
                x1, y1, x2, y2 = batch["boxes"][b, k]
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                           edgecolor="white", lw=1))
                ax.scatter(pts[b, k, :, 0], pts[b, k, :, 1], s=14, color=f"C{k + 1}",
                           edgecolors="white", linewidths=0.6)
            ax.set_xlim(0, batch["image"].shape[2])
            ax.set_ylim(batch["image"].shape[1], 0)
            ax.set_axis_off()
            ax.set_title(f"{title}, image {b}", fontsize=8)
    fig.suptitle("RoIConv 3x3 sampling points at the anchor that overlaps each GT most")
    fig.tight_layout()
    path = os.path.join(args.out, "sampling_points.png")
    report.save_image_figure(fig, path, dpi=90)
    print(f"wrote {path}")


def main() -> None:
    ap_rows.main(variants, lambda name: False, "runs/aligndet", HERE, after=draw_figure)


if __name__ == "__main__":
    main()
