"""Max-IoU assignment (RetinaNet, RPN, R-CNN; Ren et al. 2015, Lin et al. 2017).

Same results as mmdetection's `MaxIoUAssigner`, per image, jittable and
vmappable: `jax.vmap(lambda g: max_iou.assign(priors, g))(gt_batch)`.

mmdetection's rules, in order (IoU = overlap of prior n with GT j):
  1. every prior starts as ignored (-2);
  2. negative (-1) if `0 <= max_j IoU < neg_iou_thr` (or `lo <= max_j IoU < hi`
     for a tuple);
  3. positive if `max_j IoU >= pos_iou_thr`, matched to the first GT reaching
     the maximum;
  4. low-quality matches (`match_low_quality`): for each GT j in order with
     `gt_max_j = max_n IoU >= min_pos_iou`, every prior with `IoU == gt_max_j`
     (only the first such prior if not `gt_max_assign_all`) goes to j. A later GT
     overwrites an earlier one, so a prior ends with the LAST GT that claims it.
Priors whose IoF with an ignore region exceeds `ignore_iof_thr` get IoU -1 with
every GT before these rules (so they stay -2 unless `neg_iou_thr` reaches below
0 or `min_pos_iou < 0`, as in mmdetection).

jaxdet conventions: `gt_index` -1 background, -2 ignored, k >= 0 GT row k
(mmdetection's `gt_inds - 1`); `quality` is the IoU with the matched GT (for a
low-quality match that is the GT's max IoU, not the prior's max over GTs as in
mmdetection's `max_overlaps`). An image without valid GT gives -1 everywhere and
-2 on priors covered by ignore regions (mmdetection returns all negatives there).

Hyper-parameters (paper / mmdetection config defaults) are in the presets below.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdet.assign import common
from jaxdet.core.types import Assignment, GroundTruth, Priors

# mmdetection configs: RetinaNet / FSAF / RepPoints refine, RPN, R-CNN second stage.
RETINANET = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, match_low_quality=True)
RPN = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
RCNN = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False)


def assign(
    priors: Priors,
    gt: GroundTruth,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float | tuple[float, float] = 0.4,
    min_pos_iou: float = 0.0,
    gt_max_assign_all: bool = True,
    match_low_quality: bool = True,
    ignore_iof_thr: float = 0.5,
    chunk: int = 8,
) -> Assignment:
    """Assigns each prior to a GT row, background or ignore by IoU.

    Args:
      priors: N anchors (or proposals) in `priors.boxes` [N, 4].
      gt: one image's GroundTruth, leaves [M, ...].
      pos_iou_thr: IoU for a positive (RetinaNet 0.5, RPN 0.7).
      neg_iou_thr: IoU below which a prior is negative, or a (lo, hi) range
        (RetinaNet 0.4, RPN 0.3).
      min_pos_iou: least IoU of a low-quality match (RetinaNet 0, RPN 0.3).
      gt_max_assign_all: give a GT all priors tied at its max IoU, not just the first.
      match_low_quality: rule 4 above (on for RetinaNet/RPN, off for R-CNN).
      ignore_iof_thr: IoF with an ignore region above which a prior is ignored;
        jaxdet default 0.5 handles crowd boxes, <= 0 disables (mmdetection's -1).
      chunk: GT rows per loop step (speed only).
    Returns:
      Assignment with gt_index [N] int32 and quality [N] float32.
    """
    pb = common.as_f32(priors.boxes)
    n = pb.shape[0]
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    ignored = common.ignored_by_iof(pb, boxes, ignore_rows, ignore_iof_thr, chunk)
    # mmdetection gives ignored priors IoU -1 with every GT. Here they are moved to
    # an empty box far away (IoU 0), which keeps the mask out of the loop body; the
    # -1 is restored where it matters: max_ov below, and no low-quality match
    # (0 == a GT's max over the other priors must not claim an ignored prior).
    far = jnp.float32(-1e9)
    cols = tuple(jnp.where(ignored, far, c) for c in common.columns(pb))
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])
    if isinstance(neg_iou_thr, tuple | list):
        neg_lo, neg_hi = neg_iou_thr
    else:
        neg_lo, neg_hi = 0.0, neg_iou_thr
    prior_ids = jnp.arange(n, dtype=jnp.int32)

    def body(carry, rows, ids, live):
        max_ov, arg, lq_idx, lq_val = carry
        ov = common.iou_with_box(cols, area, rows)  # [chunk, N]
        if match_low_quality:
            gt_max = jnp.max(ov, axis=1)
            if not gt_max_assign_all:
                gt_arg = jnp.argmax(jnp.where(ignored, -1.0, ov), axis=1)
        for j in range(rows.shape[0]):
            better = live[j] & (ov[j] > max_ov)  # strict: the first GT with the max wins
            max_ov = jnp.where(better, ov[j], max_ov)
            arg = jnp.where(better, ids[j], arg)
            if match_low_quality:
                if gt_max_assign_all:
                    hit = (ov[j] == gt_max[j]) & ~ignored
                else:
                    hit = prior_ids == gt_arg[j]
                hit = hit & live[j] & (gt_max[j] >= min_pos_iou)
                lq_idx = jnp.where(hit, ids[j], lq_idx)
                lq_val = jnp.where(hit, gt_max[j], lq_val)
        return max_ov, arg, lq_idx, lq_val

    init = (
        jnp.full((n,), -jnp.inf, jnp.float32),
        jnp.zeros((n,), jnp.int32),
        jnp.full((n,), -1, jnp.int32),
        jnp.zeros((n,), jnp.float32),
    )
    max_ov, arg, lq_idx, lq_val = common.fold_gt_chunks(body, init, boxes, match_rows, chunk)
    max_ov = jnp.where(ignored, -1.0, max_ov)

    gt_index = jnp.full((n,), common.IGNORE, jnp.int32)
    gt_index = jnp.where((max_ov >= neg_lo) & (max_ov < neg_hi), common.BACKGROUND, gt_index)
    pos = max_ov >= pos_iou_thr
    gt_index = jnp.where(pos, arg, gt_index)
    quality = jnp.where(pos, max_ov, 0.0)
    if match_low_quality:
        gt_index = jnp.where(lq_idx >= 0, lq_idx, gt_index)
        quality = jnp.where(lq_idx >= 0, lq_val, quality)
    gt_index = jnp.where(jnp.any(match_rows), gt_index, common.unmatched(ignored))
    return common.finish(gt_index, quality)
