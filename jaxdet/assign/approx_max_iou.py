"""Approximate max-IoU assignment (Guided Anchoring; Wang et al., CVPR 2019), as
mmdetection's `ApproxMaxIoUAssigner`.

Each location carries one square anchor (its prior) and A approximate anchors (the
RetinaNet-style anchors of the location, A = 9: 3 scales x 3 ratios). The overlap of a
location with GT j is the max IoU of its A approximate anchors with j (the best
anchor shape a location could predict, sampled on a grid of shapes); on these [N]
overlaps the rules of `jaxdet.assign.max_iou` apply unchanged (negative below
`neg_iou_thr`, positive from `pos_iou_thr` to the first GT reaching the maximum,
low-quality matches with every location tied at a GT's max, the last GT winning) --
the same fold (`max_iou.fold_dense`) and rules (`max_iou.apply_rules`), with the
overlap replaced by the max over the approximate anchors.

Ignore regions: a location whose square anchor has IoF > `ignore_iof_thr` with an
ignore box is ignored (mmdetection computes the IoF of the squares; its GA configs
disable it with -1, jaxdet's default 0.5 handles crowd boxes). Padding rows never
take part; ignore rows are never matched. Hyper-parameters default to GA-RetinaNet's
`ga_assigner` (0.5 / 0.4 / min_pos 0.4); GA-RPN uses 0.7 / 0.3 / 0.3.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdet.assign import common, max_iou
from jaxdet.core.types import Assignment, GroundTruth, Priors


def assign(
    squares: Priors,
    approxs: Priors,
    gt: GroundTruth,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float | tuple[float, float] = 0.4,
    min_pos_iou: float = 0.4,
    gt_max_assign_all: bool = True,
    match_low_quality: bool = True,
    ignore_iof_thr: float = 0.5,
    chunk: int = 8,
) -> Assignment:
    """Assigns each location (square anchor) to a GT row, background or ignore.

    Args:
      squares: N square anchors, one per location (`squares.boxes` [N, 4]).
      approxs: the approximate anchors, A = `approxs.num_base` per location in the
        lattice order (`approxs.boxes` [N * A, 4], anchor index fastest).
      gt: one image's GroundTruth, leaves [M, ...].
      pos_iou_thr, neg_iou_thr, min_pos_iou: thresholds on the max IoU over a
        location's approximate anchors (GA-RetinaNet 0.5 / 0.4 / 0.4, GA-RPN
        0.7 / 0.3 / 0.3).
      gt_max_assign_all, match_low_quality: as `max_iou.assign` (both True).
      ignore_iof_thr: IoF of a square with an ignore box above which the location is
        ignored (<= 0 disables).
      chunk: GT rows per loop step (speed only).
    Returns:
      Assignment with gt_index [N] int32 and quality [N] float32 (the overlap with the
      matched GT).
    """
    sq = common.as_f32(squares.boxes)
    n = sq.shape[0]
    a = int(approxs.num_base)
    if approxs.boxes.shape[0] != n * a:
        raise ValueError(f"{approxs.boxes.shape[0]} approx anchors for {n} locations x {a}")
    ap = common.as_f32(approxs.boxes).reshape(n, a, 4)
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    ignored = common.ignored_by_iof(sq, boxes, ignore_rows, ignore_iof_thr, chunk)
    cols = [common.columns(ap[:, k]) for k in range(a)]
    areas = [(c[2] - c[0]) * (c[3] - c[1]) for c in cols]

    def overlaps(rows):  # [chunk, 4] -> [chunk, N]: max IoU over the A anchors
        ov = common.iou_with_box(cols[0], areas[0], rows)
        for c, ar in zip(cols[1:], areas[1:]):
            ov = jnp.maximum(ov, common.iou_with_box(c, ar, rows))
        return jnp.where(ignored, 0.0, ov)  # ignored: never a GT's max (rule 4)

    folded = max_iou.fold_dense(
        common.columns(sq), ignored, boxes, match_rows, match_low_quality=match_low_quality,
        gt_max_assign_all=gt_max_assign_all, min_pos_iou=min_pos_iou, chunk=chunk,
        overlaps=overlaps)
    return max_iou.apply_rules(*folded, ignored, match_rows, pos_iou_thr=pos_iou_thr,
                               neg_iou_thr=neg_iou_thr, match_low_quality=match_low_quality)
