"""Guided Anchoring's anchor targets (Wang et al., "Region Proposal by Guided
Anchoring", CVPR 2019), as mmdetection's `GuidedAnchorHead.ga_loc_targets` and
`ga_shape_targets`.

Location targets (`loc_targets`), per FPN level l of stride s_l and size (h_l, w_l):
  - each GT (valid, not an ignore row) goes to level
    floor(log2(sqrt(w h)) - log2(octave_base_scale x s_0) + 0.5), clamped to [0, L-1];
  - on its level, the centre region (`calc_region` with ratio (1 - center_ratio) / 2)
    gets target 1 and weight 1, the ignore region (ratio (1 - ignore_ratio) / 2)
    weight 0; GTs are applied in row order, each writing its ignore region's 0 and
    then its centre region's 1 into the weights, so a later GT's ignore region can zero
    an earlier GT's centre weight (mmdetection's loop);
  - the ignore region of the GT on the levels l - 1 and l + 1 (each at its own stride)
    goes to an ignore map;
  - locations no GT wrote: weight 0 where the ignore map is set, else `neg_weight` 0.1.
  `calc_region(box / s_l, r)` = round((1 - r) x1 + r x2), ... (round half to even, as
  torch.round), each clamped to [0, w_l] / [0, h_l], covering columns x1..x2 and rows
  y1..y2 inclusive. mmdetection's normaliser is (images x locations) / 200
  (`loc_normalizer`).

Shape targets (`shape_targets`): `approx_max_iou.assign` of the locations, then
mmdetection's `RandomSampler` (num 256, pos_fraction 0.5, no bound on negatives) as
`jaxdet.assign.sampler.balanced_sample` (the same distribution of samples; random
streams differ from torch's); each sampled positive location gets its assigned GT box
and weight 1. The shape loss's normaliser is the sampled positives plus negatives per
image, each at least 1 (mmdetection's `SamplingResult.avg_factor`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxdet.assign import approx_max_iou, common, targets
from jaxdet.assign.sampler import balanced_sample
from jaxdet.core.types import GroundTruth, Priors

Array = jnp.ndarray


def gt_levels(boxes: Array, base_size: float, num_levels: int) -> Array:
    """FPN level of each GT box [M, 4] -> [M] int32: floor(log2(sqrt(w h)) - log2(base_size)
    + 0.5) clamped to [0, num_levels - 1]; base_size = octave_base_scale x stride_0."""
    b = common.as_f32(boxes)
    scale = jnp.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    lvl = jnp.floor(jnp.log2(scale) - jnp.log2(jnp.float32(base_size)) + 0.5)
    return jnp.clip(jnp.nan_to_num(lvl, nan=0.0), 0, num_levels - 1).astype(jnp.int32)


def calc_region(box: Array, ratio: float, hw: tuple[int, int]) -> tuple[Array, ...]:
    """mmdetection's `calc_region` of a box [4] (in feature-map units): the rounded,
    clamped (x1, y1, x2, y2) int32 of the region shrunk by `ratio` on each side."""
    r, q = jnp.float32(ratio), jnp.float32(1 - ratio)
    x1 = jnp.round(q * box[0] + r * box[2])
    y1 = jnp.round(q * box[1] + r * box[3])
    x2 = jnp.round(r * box[0] + q * box[2])
    y2 = jnp.round(r * box[1] + q * box[3])
    h, w = hw
    return (jnp.clip(x1, 0, w).astype(jnp.int32), jnp.clip(y1, 0, h).astype(jnp.int32),
            jnp.clip(x2, 0, w).astype(jnp.int32), jnp.clip(y2, 0, h).astype(jnp.int32))


def _in_region(region: tuple[Array, ...], hw: tuple[int, int]) -> Array:
    """[h * w] bool: locations (row-major) with x1 <= j <= x2 and y1 <= i <= y2."""
    x1, y1, x2, y2 = region
    rows = jnp.arange(hw[0], dtype=jnp.int32)[:, None]
    cols = jnp.arange(hw[1], dtype=jnp.int32)[None, :]
    return ((rows >= y1) & (rows <= y2) & (cols >= x1) & (cols <= x2)).reshape(-1)


def loc_targets(
    gt: GroundTruth,
    feature_shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    *,
    octave_base_scale: float,
    center_ratio: float = 0.2,
    ignore_ratio: float = 0.5,
    neg_weight: float = 0.1,
) -> tuple[Array, Array]:
    """Location targets and weights of one image, concatenated over levels.

    Args:
      gt: one image's GroundTruth, leaves [M, ...] (rows valid and not ignore count).
      feature_shapes: static (h_l, w_l) per level; strides: s_l per level.
      octave_base_scale: the approximate anchors' base scale (GA-RetinaNet 4, GA-RPN 8).
      center_ratio, ignore_ratio: region ratios (0.2, 0.5); neg_weight: 0.1.
    Returns:
      (targets [N] float32 in {0, 1}, weights [N] float32 in {0, 0.1, 1}),
      N = sum_l h_l * w_l, row-major per level (the order of a lattice with one prior
      per location).
    """
    shapes = [tuple(int(v) for v in s) for s in feature_shapes]
    num_levels = len(shapes)
    r1, r2 = (1 - center_ratio) / 2, (1 - ignore_ratio) / 2
    boxes, match_rows, _ = common.split_gt(gt)
    levels = gt_levels(boxes, octave_base_scale * strides[0], num_levels)

    def body(carry, box, k, live):
        tgt, wgt, ign = carry
        lvl = levels[k]
        tgt, wgt, ign = list(tgt), list(wgt), list(ign)
        for lv, hw in enumerate(shapes):
            scaled = box / jnp.float32(strides[lv])
            in_ign = _in_region(calc_region(scaled, r2, hw), hw)
            in_ctr = _in_region(calc_region(scaled, r1, hw), hw)
            here = live & (lvl == lv)
            tgt[lv] = jnp.where(here & in_ctr, 1.0, tgt[lv])
            wgt[lv] = jnp.where(here & in_ign, 0.0, wgt[lv])
            wgt[lv] = jnp.where(here & in_ctr, 1.0, wgt[lv])
            near = live & ((lvl == lv - 1) | (lvl == lv + 1))
            ign[lv] = ign[lv] | (near & in_ign)
        return tuple(tgt), tuple(wgt), tuple(ign)

    init = (tuple(jnp.zeros((h * w,), jnp.float32) for h, w in shapes),
            tuple(jnp.full((h * w,), -1.0, jnp.float32) for h, w in shapes),
            tuple(jnp.zeros((h * w,), bool) for h, w in shapes))
    tgt, wgt, ign = common.fold_gts(body, init, boxes, match_rows)
    tgt, wgt, ign = (jnp.concatenate(x) for x in (tgt, wgt, ign))
    wgt = jnp.where((wgt < 0) & ign, 0.0, wgt)
    wgt = jnp.where(wgt < 0, jnp.float32(neg_weight), wgt)
    return tgt, wgt


def loc_normalizer(batch_size: int, feature_shapes: Sequence[tuple[int, int]]) -> float:
    """mmdetection's loc avg_factor: images x sum_l h_l w_l / 200."""
    return batch_size * sum(int(h) * int(w) for h, w in feature_shapes) / 200.0


def shape_targets(
    squares: Priors,
    approxs: Priors,
    gt: GroundTruth,
    rng: Array,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.4,
    ignore_iof_thr: float = 0.5,
    num_samples: int = 256,
    pos_fraction: float = 0.5,
) -> tuple[Array, Array, Array]:
    """Anchor-shape targets of one image.

    Args:
      squares: N square anchors (one per location); approxs: N x A approximate anchors.
      gt: one image's GroundTruth, leaves [M, ...]; rng: the sampler's key.
      pos_iou_thr, neg_iou_thr, min_pos_iou, ignore_iof_thr: `approx_max_iou.assign`.
      num_samples, pos_fraction: the sampler (256, 0.5).
    Returns:
      (gt_boxes [N, 4] the assigned GT box of the sampled positives, zeros elsewhere;
       weights [N] float32, 1 on the sampled positives; avg_factor [] float32 =
       max(#sampled positives, 1) + max(#sampled negatives, 1)).
    """
    a = approx_max_iou.assign(squares, approxs, gt, pos_iou_thr=pos_iou_thr,
                              neg_iou_thr=neg_iou_thr, min_pos_iou=min_pos_iou,
                              ignore_iof_thr=ignore_iof_thr)
    idx, valid = balanced_sample(rng, a.positive, a.negative, num=num_samples,
                                 pos_fraction=pos_fraction)
    n = a.gt_index.shape[0]
    sampled = jnp.zeros((n,), bool).at[idx].max(valid)
    weights = (sampled & a.positive).astype(jnp.float32)
    num_pos = jnp.sum(weights)
    num_neg = jnp.sum((sampled & ~a.positive).astype(jnp.float32))
    boxes, _ = targets.gather_gt(a, gt)
    boxes = jnp.where(weights[:, None] > 0, boxes, 0.0)
    avg = jnp.maximum(num_pos, 1.0) + jnp.maximum(num_neg, 1.0)
    return boxes, weights, jax.lax.stop_gradient(avg)
