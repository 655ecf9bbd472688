"""YOLO grid assignment: mmdetection's `GridAssigner` and darknet's YOLOv3 rule.

`assign` is mmdetection 3.x's `GridAssigner` (pos_iou_thr 0.5, neg_iou_thr 0.5,
min_pos_iou 0, gt_max_assign_all) with the responsible flags of
`YOLOV3Head.responsible_flags`, as `YOLOV3Head.loss_by_feat` runs them:

1. responsible anchors: on every level, the anchors of the cell holding a GT's
   centre, cell = floor(centre / stride) (a union over the GTs);
2. negative (-1): anchors whose largest IoU with any GT is <= neg_iou_thr; the
   others start as ignored (-2, objectness gets no loss);
3. a responsible anchor whose largest IoU with a GT (over the GTs, the IoUs of
   non-responsible anchors set to -1) is > pos_iou_thr goes to that GT (the first
   GT among equal IoUs, as torch's `max`);
4. then, GT by GT in row order, every responsible anchor whose IoU equals the GT's
   largest IoU over the responsible anchors (if > min_pos_iou) goes to that GT: a
   later GT overwrites an earlier one on the same anchor.

IoUs are between the anchors (fixed boxes at the cell centres) and the GTs, not the
predictions. An anchor in one GT's cell can go to another GT (step 3 and 4 look at
all responsible anchors), as in mmdetection. Differences: a GT centre on the
right / bottom border (centre / stride = cells) is clamped to the last cell (in
mmdetection its flat index runs into the next row or past the end); ignore rows
(crowd) are never matched and, with `ignore_iof_thr > 0`, anchors they cover are
ignored (mmdetection's YOLOv3 drops crowd boxes: 0, the default, does the same).
A GT smaller than a pixel is assigned like any other (its IoU with its best
anchor is tiny but > 0); a zero-area GT has IoU 0 everywhere and gets no anchor.

`assign_darknet` is the rule of darknet's `yolo_layer.c` (and of Gaussian YOLOv3's
`gaussian_yolo_layer.c`): each GT goes to the one anchor of all levels whose shape
fits best (IoU of the (w, h) boxes centred at the origin, the first of equal
IoUs), at the cell holding its centre on that anchor's level (a later GT
overwrites an earlier one on the same anchor; a centre on the border is clamped to
the last cell); every other prediction whose decoded box has IoU > ignore_thr with
some GT is ignored for objectness.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdet.assign import common
from jaxdet.core.types import Assignment, GroundTruth, Priors

Array = jnp.ndarray


def _cells(priors: Priors) -> tuple[np.ndarray, ...]:
    """Per anchor (NumPy, static): its cell (x, y) and its level's width and height."""
    if priors.feature_shapes is None:
        raise ValueError("yolo_grid needs priors on a lattice (feature_shapes)")
    cx, cy, fw, fh = [], [], [], []
    for (h, w) in priors.feature_shapes:
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cx.append(np.repeat(xx.reshape(-1), priors.num_base))
        cy.append(np.repeat(yy.reshape(-1), priors.num_base))
        fw.append(np.full(h * w * priors.num_base, w))
        fh.append(np.full(h * w * priors.num_base, h))
    return tuple(np.concatenate(v).astype(np.int32) for v in (cx, cy, fw, fh))


def gt_cells(priors: Priors, box: Array) -> tuple[Array, Array]:
    """The cell (x, y) [N] int32 holding the centre of `box` [4] on each anchor's level,
    clamped to the level's grid."""
    _, _, fw, fh = _cells(priors)
    s = common.as_f32(priors.strides)
    gx = jnp.floor((box[0] + box[2]) * 0.5 / s).astype(jnp.int32)
    gy = jnp.floor((box[1] + box[3]) * 0.5 / s).astype(jnp.int32)
    return jnp.clip(gx, 0, fw - 1), jnp.clip(gy, 0, fh - 1)


def responsible_flags(priors: Priors, gt: GroundTruth) -> Array:
    """[N] bool: anchors in a cell that holds the centre of a (valid, non-ignore) GT."""
    boxes, match_rows, _ = common.split_gt(gt)
    cx, cy, _, _ = _cells(priors)

    def body(acc, box, k, live):
        gx, gy = gt_cells(priors, box)
        return acc | (live & (cx == gx) & (cy == gy))

    return common.fold_gts(body, jnp.zeros((priors.num_priors,), bool), boxes, match_rows)


def assign(priors: Priors, gt: GroundTruth, *, pos_iou_thr: float = 0.5,
           neg_iou_thr: float = 0.5, min_pos_iou: float = 0.0, ignore_iof_thr: float = 0.0
           ) -> Assignment:
    """mmdetection's `GridAssigner` on YOLO anchors, one image (see the module docstring).

    Args:
      priors: YOLO anchors (`priors.make_yolo_anchors`), `boxes` [N, 4], on a lattice.
      gt: one image's GroundTruth, leaves [M, ...].
      pos_iou_thr, neg_iou_thr, min_pos_iou: mmdetection's YOLOv3 values 0.5, 0.5, 0.
      ignore_iof_thr: anchors covered by an ignore row (IoF above) are ignored; 0 = off.
    Returns:
      Assignment: gt_index [N] int32 (-1 negative, -2 ignored, k matched to GT row k),
      quality [N] float32 (1 on positives).
    """
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    resp = responsible_flags(priors, gt)
    cols = common.columns(priors.boxes)
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])
    n = priors.num_priors
    init = (jnp.zeros((n,), jnp.float32), jnp.full((n,), -1.0, jnp.float32),
            jnp.zeros((n,), jnp.int32), jnp.full((n,), -1, jnp.int32))

    def body(carry, box, k, live):
        max_all, max_r, arg_r, best_of = carry
        iou = common.iou_with_box(cols, area, box)
        iou_r = jnp.where(resp, iou, -1.0)
        gt_max = jnp.max(iou_r)
        better = live & (iou_r > max_r)
        best = live & (gt_max > min_pos_iou) & resp & (iou_r == gt_max)
        return (jnp.where(live, jnp.maximum(max_all, iou), max_all),
                jnp.where(better, iou_r, max_r), jnp.where(better, k, arg_r),
                jnp.where(best, k, best_of))

    max_all, max_r, arg_r, best_of = common.fold_gts(body, init, boxes, match_rows)
    ignored = (max_all > neg_iou_thr) | common.ignored_by_iof(
        priors.boxes, boxes, ignore_rows, ignore_iof_thr)
    gt_index = common.unmatched(ignored)
    gt_index = jnp.where(resp & (max_r > pos_iou_thr), arg_r, gt_index)
    gt_index = jnp.where(best_of >= 0, best_of, gt_index)
    return common.finish(gt_index, jnp.ones((n,), jnp.float32))


def anchor_sizes(priors: Priors) -> Array:
    """[L * A, 2] (w, h) of the base anchors of every level, level-major (darknet's order)."""
    rows = [start + a for start in priors.level_starts for a in range(priors.num_base)]
    b = jnp.asarray(priors.boxes)[np.asarray(rows)]
    return jnp.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=-1)


def assign_darknet(priors: Priors, gt: GroundTruth, pred_boxes: Array, *,
                   ignore_thr: float = 0.5) -> Assignment:
    """darknet's YOLOv3 assignment of one image (see the module docstring).

    Args:
      priors: YOLO anchors on a lattice, N = sum_l h_l * w_l * A.
      gt: one image's GroundTruth, leaves [M, ...].
      pred_boxes: [N, 4] decoded predicted boxes (stop_gradient-ed by the caller).
      ignore_thr: darknet's `ignore_thresh` (0.5 in yolov3.cfg and Gaussian_yolov3_BDD.cfg).
    Returns:
      Assignment: gt_index [N] (-1 negative, -2 ignored, k matched to GT row k),
      quality [N] float32 (1 on positives).
    """
    boxes, match_rows, _ = common.split_gt(gt)
    n, a = priors.num_priors, priors.num_base
    wh = anchor_sizes(priors)  # [L * A, 2]
    cx, cy, _, _ = _cells(priors)
    local = np.tile(np.arange(a, dtype=np.int32), n // a)
    levels = np.repeat(np.arange(len(priors.level_sizes)), priors.level_sizes)
    anchor_of = jnp.asarray(levels * a + local, jnp.int32)  # [N] index into wh
    pcols = common.columns(pred_boxes)
    parea = (pcols[2] - pcols[0]) * (pcols[3] - pcols[1])

    def body(carry, box, k, live):
        gt_index, max_iou = carry
        bw, bh = box[2] - box[0], box[3] - box[1]
        inter = jnp.minimum(wh[:, 0], bw) * jnp.minimum(wh[:, 1], bh)
        shape_iou = inter / jnp.maximum(wh[:, 0] * wh[:, 1] + bw * bh - inter, 1e-6)
        best = jnp.argmax(shape_iou)
        gx, gy = gt_cells(priors, box)
        hit = live & (anchor_of == best) & (cx == gx) & (cy == gy)
        iou = common.iou_with_box(pcols, parea, box)
        return (jnp.where(hit, k, gt_index),
                jnp.where(live, jnp.maximum(max_iou, iou), max_iou))

    init = (jnp.full((n,), -1, jnp.int32), jnp.zeros((n,), jnp.float32))
    gt_index, max_iou = common.fold_gts(body, init, boxes, match_rows)
    gt_index = jnp.where(gt_index >= 0, gt_index, common.unmatched(max_iou > ignore_thr))
    return common.finish(gt_index, jnp.ones((n,), jnp.float32))
