"""FSAF centre-region assignment (Zhu, He, Savvides, "Feature Selective Anchor-Free
Module for Single-Shot Object Detection", CVPR 2019, arXiv 1903.00621).

The anchor-free branch has one prior per feature-map location (mmdetection's FSAF:
a square "anchor" of side = stride, centred at (x * stride, y * stride)). For a GT
box b and its two scaled copies (same centre, sides x `pos_scale` / x `neg_scale`):
  effective E[k, n]: prior n's centre lies strictly inside GT k AND the IoF
      (intersection over the prior's area) of prior n with the effective box
      (scale `pos_scale`, paper epsilon_e = 0.2) exceeds `min_pos_iof` (0.01);
  ignoring  I[k, n]: IoF of prior n with the ignoring box (scale `neg_scale`,
      paper epsilon_i = 0.5) exceeds `min_pos_iof` (I contains E);
exactly mmdetection's `CenterRegionAssigner` (`is_prior_in_gt_core`, and its
shadow region before removing the core).

Levels. `selected_level[k]` (an FPN level index per GT, from the online feature
selection in `jaxdet.assign.fsaf_select` or from the size heuristic) makes the
assignment level-aware, as in the paper (Sec. 3.3):
  - positive for k: E[k, n] on level s_k;
  - ignored for k's class: I[k, n] on levels |l - s_k| <= `ignore_level_range`
    (paper: the ignoring region on s_k and also on the two adjacent levels,
    range 1), and E[k, n] on every other level (the instance trains only its
    selected level; mmdetection zeroes those (prior, label) weights the same way);
  - everything else is background for k.
`selected_level=None` gives mmdetection's level-agnostic assigner (every level
is a candidate; used before the selection to measure each level's loss).

Conflicts and class-specific ignoring (mmdetection semantics):
  - a prior positive for several GTs goes to the one with the smallest area
    (paper: "the smaller one has higher priority"); ties go to the later GT row
    (what a stable descending sort gives in mmdetection's `get_gt_priorities`;
    torch does not specify the order of ties);
  - ignoring is per (prior, class): the GT's class channel gets no loss, the
    other channels stay negatives (mmdetection's `shadowed_labels`). The GTs that
    lose a contested prior shadow it too;
  - `foreground_dominate=False` (mmdetection default): a positive prior that is
    also in another GT's ignoring box (near that GT's level) or lost by it, with
    the same class, becomes background with that class ignored; True keeps it
    positive. The selection's own ignoring (E off the selected level) never
    removes another GT's positive: as mmdetection's reweighting, which only
    zeroes the priors a GT owns;
  - crowd / ignore GT rows: priors whose centre lies strictly inside the crowd
    box scaled by `ignore_gt_scale` (0.5) are ignored (-2) for every class.

Output: `(Assignment, ignore_labels)` with `gt_index` [N] (-1 background, -2
ignored, k positive for GT row k), `quality` 1 on positives, and `ignore_labels`
[N, C] bool (class channels without loss). Per image, jittable, vmappable.

Two implementations, chosen by `method`: 'dense' (the reference, any priors): [M, N]
element-wise masks and one [N, M] x [M, C] product; 'auto' (the default): on priors that
tile each level without overlapping (FSAF's stride-sized squares,
`lattice.is_tiling(priors, disjoint=True)`) `center_region_lattice` gives identical
outputs from separable row / column tests and bit sets over the GTs, without any
[M, N] array; on other priors the dense path. `regions` picks the implementation and
`resolve` follows the geometry it returned.

TBLR coder (mmdetection `TBLRBBoxCoder`, `normalize_by_wh=True`): targets are the
(top, bottom, left, right) distances from the prior's centre to the box sides,
divided by the prior's height (t, b) / width (l, r) and by `normalizer` (4.0).
With FSAF's stride-sized priors a prediction of 0.25 is one stride.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdet.assign import center_region_lattice, common, lattice
from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Assignment, GroundTruth, Priors

Array = jnp.ndarray

# Paper / mmdetection defaults.
POS_SCALE = 0.2  # effective region epsilon_e
NEG_SCALE = 0.5  # ignoring region epsilon_i (mmdetection's released config uses 0.2)
MIN_POS_IOF = 0.01
IGNORE_GT_SCALE = 0.5
TBLR_NORMALIZER = 4.0


def scale_boxes(boxes: Array, scale: float) -> Array:
    """[..., 4] boxes scaled about their centres by `scale` (mmdetection `scale_boxes`)."""
    half_w = (boxes[..., 2] - boxes[..., 0]) * 0.5 * scale
    half_h = (boxes[..., 3] - boxes[..., 1]) * 0.5 * scale
    cx = (boxes[..., 2] + boxes[..., 0]) * 0.5
    cy = (boxes[..., 3] + boxes[..., 1]) * 0.5
    return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def _centers_inside(px: Array, py: Array, boxes: Array) -> Array:
    """Prior centres [N] strictly inside boxes [M, 4] -> [M, N] (mmdetection `is_located_in`)."""
    return (
        (px[None] > boxes[:, 0:1])
        & (px[None] < boxes[:, 2:3])
        & (py[None] > boxes[:, 1:2])
        & (py[None] < boxes[:, 3:4])
    )


class Regions(NamedTuple):
    """Level-agnostic geometry of one image, dense form (leaves may carry batch axes).

    effective: [M, N] bool, E of the module docstring (False on padding and crowd rows).
    ignoring:  [M, N] bool, I.
    crowd:     [N] bool, centre inside a crowd box scaled by `ignore_gt_scale`.
    """

    effective: Array
    ignoring: Array
    crowd: Array


def regions(
    priors: Priors,
    gt: GroundTruth,
    *,
    pos_scale: float = POS_SCALE,
    neg_scale: float = NEG_SCALE,
    min_pos_iof: float = MIN_POS_IOF,
    ignore_gt_scale: float = IGNORE_GT_SCALE,
    method: str = "auto",
) -> Regions | center_region_lattice.LatticeRegions:
    """Level-agnostic geometry of one image: `Regions` (dense) or, with method 'auto'
    on priors that tile each level, the same sets as `LatticeRegions` bit sets. Pass
    either to `resolve`."""
    scales = dict(pos_scale=pos_scale, neg_scale=neg_scale, min_pos_iof=min_pos_iof,
                  ignore_gt_scale=ignore_gt_scale)
    if lattice.check_method(method) == "auto" and lattice.is_tiling(priors, disjoint=True):
        return center_region_lattice.regions(priors, gt, **scales)
    return _dense_regions(priors, gt, **scales)


def _dense_regions(priors: Priors, gt: GroundTruth, *, pos_scale: float, neg_scale: float,
                   min_pos_iof: float, ignore_gt_scale: float) -> Regions:
    pb = common.as_f32(priors.boxes)
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    px = (pb[:, 0] + pb[:, 2]) / 2.0
    py = (pb[:, 1] + pb[:, 3]) / 2.0

    def iof(region_boxes):  # [M, N]: intersection over the prior's area
        return box_ops.aligned_iou(pb[None], region_boxes[:, None], mode="iof")

    rows = match_rows[:, None]
    inside = _centers_inside(px, py, boxes)
    effective = inside & (iof(scale_boxes(boxes, pos_scale)) > min_pos_iof) & rows
    ignoring = (iof(scale_boxes(boxes, neg_scale)) > min_pos_iof) & rows
    crowd_in = _centers_inside(px, py, scale_boxes(boxes, ignore_gt_scale))
    crowd = jnp.any(crowd_in & ignore_rows[:, None], axis=0)
    return Regions(effective, ignoring, crowd)


def resolve(
    geo: Regions | center_region_lattice.LatticeRegions,
    gt: GroundTruth,
    priors: Priors,
    *,
    num_classes: int,
    selected_level: Array | None = None,
    ignore_level_range: int | None = 1,
    foreground_dominate: bool = False,
) -> tuple[Assignment, Array]:
    """Turns the geometry of `regions` into (Assignment, ignore_labels [N, C]), by the
    implementation that made it.

    priors: the priors of `regions` (their levels).
    selected_level: [M] int32 level index per GT, or None (every level; mmdetection).
    ignore_level_range: the ignoring box applies on levels |l - s_k| <= this
      (paper 1: the selected and the two adjacent levels); None = every level.
    """
    kw = dict(num_classes=num_classes, selected_level=selected_level,
              ignore_level_range=ignore_level_range, foreground_dominate=foreground_dominate)
    if isinstance(geo, center_region_lattice.LatticeRegions):
        return center_region_lattice.resolve(geo, gt, priors.level_sizes, **kw)
    return _dense_resolve(geo, gt, jnp.asarray(priors.levels, jnp.int32), **kw)


def _dense_resolve(geo: Regions, gt: GroundTruth, prior_levels: Array, *, num_classes: int,
                   selected_level: Array | None, ignore_level_range: int | None,
                   foreground_dominate: bool) -> tuple[Assignment, Array]:
    """`resolve` on dense `Regions`; prior_levels: [N] int32 level index of each prior."""
    effective, ignoring, crowd = geo
    boxes, match_rows, _ = common.split_gt(gt)
    m, n = effective.shape
    labels = jnp.asarray(gt.labels, jnp.int32)
    rows = jnp.arange(m, dtype=jnp.int32)
    if selected_level is None:
        at_sel = near = jnp.ones((m, n), bool)
    else:
        dist = jnp.abs(prior_levels[None, :] - jnp.asarray(selected_level, jnp.int32)[:, None])
        at_sel = dist == 0
        near = jnp.ones((m, n), bool) if ignore_level_range is None else dist <= ignore_level_range
    cand = effective & at_sel

    # Smallest area wins; ties: the later row.
    area = jnp.where(match_rows, box_ops.areas(boxes), jnp.inf)
    key = jnp.where(cand, area[:, None], jnp.inf)
    best = jnp.min(key, axis=0)
    owner = jnp.max(jnp.where(cand & (key == best[None]), rows[:, None], -1), axis=0)
    pos = owner >= 0

    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * match_rows[:, None]

    def per_class(pairs):  # [M, N] (GT, prior) pairs -> [N, C] (prior, class) pairs
        return (pairs.astype(jnp.float32).T @ onehot) > 0

    # Geometric shadow pairs: the ignoring box near the selected level, and contested
    # priors lost to a smaller GT (mmdetection's shadowed_labels).
    geo_pairs = ignoring & near & (owner[None] != rows[:, None])
    # Selection shadow pairs: the effective region on the levels the GT does not train.
    shadow = geo_pairs if selected_level is None else geo_pairs | (effective & ~at_sel)
    # One [N, M] x [M, C] product for both shadows; the only entry where they differ
    # in the result is each positive prior's own class, found with an [M, N] pass:
    # geo_own[n] = the geometric shadow covers the class of n's owner.
    union = per_class(shadow)
    own_label = labels[jnp.maximum(owner, 0)]
    geo_own = jnp.any(geo_pairs & (labels[:, None] == own_label[None]), axis=0) & pos
    own = jax.nn.one_hot(own_label, num_classes, dtype=bool) & pos[:, None]
    if foreground_dominate:
        # the owner's class is never shadowed at its positives
        gt_index = owner
        ignore_labels = union & ~own
    else:
        # a positive shadowed in its own class becomes background (class ignored);
        # the selection never takes a positive away from another GT (as mmdetection's
        # reweighting, which only touches each GT's own priors)
        gt_index = jnp.where(geo_own, common.BACKGROUND, owner)
        kept = pos & ~geo_own
        ignore_labels = union & ~(own & kept[:, None])
    gt_index = jnp.where(crowd, common.IGNORE, gt_index)
    return common.finish(gt_index, jnp.ones((n,), jnp.float32)), ignore_labels


def assign(
    priors: Priors,
    gt: GroundTruth,
    *,
    num_classes: int,
    selected_level: Array | None = None,
    pos_scale: float = POS_SCALE,
    neg_scale: float = NEG_SCALE,
    min_pos_iof: float = MIN_POS_IOF,
    ignore_gt_scale: float = IGNORE_GT_SCALE,
    ignore_level_range: int | None = 1,
    foreground_dominate: bool = False,
    method: str = "auto",
) -> tuple[Assignment, Array]:
    """FSAF centre-region assignment of one image (see the module docstring).

    Args:
      priors: the anchor-free branch's priors (`boxes` [N, 4], `levels` [N]).
      gt: one image's GroundTruth, leaves [M, ...].
      num_classes: C, for `ignore_labels`.
      selected_level: [M] int32 level index per GT (0 = first level), or None.
      pos_scale: effective region (paper 0.2).
      neg_scale: ignoring region (paper 0.5; mmdetection's config 0.2).
      min_pos_iof: least IoF of a prior with a region (0.01).
      ignore_gt_scale: crowd boxes are shrunk by this before ignoring (0.5).
      ignore_level_range: see `resolve` (paper 1; None = mmdetection).
      foreground_dominate: see the module docstring (mmdetection default False).
      method: 'auto' (the lattice implementation where the priors tile each level, the
        same outputs) or 'dense' (the reference).
    Returns:
      (Assignment(gt_index [N] int32, quality [N] float32), ignore_labels [N, C] bool).
    """
    geo = regions(priors, gt, pos_scale=pos_scale, neg_scale=neg_scale,
                  min_pos_iof=min_pos_iof, ignore_gt_scale=ignore_gt_scale, method=method)
    return resolve(geo, gt, priors, num_classes=num_classes, selected_level=selected_level,
                   ignore_level_range=ignore_level_range,
                   foreground_dominate=foreground_dominate)


def tblr_encode(priors: Array, gt: Array, normalizer: float = TBLR_NORMALIZER) -> Array:
    """priors [..., 4], gt [..., 4] -> (top, bottom, left, right) [..., 4] (mmdet `bboxes2tblr`)."""
    cx = (priors[..., 0] + priors[..., 2]) / 2.0
    cy = (priors[..., 1] + priors[..., 3]) / 2.0
    w = priors[..., 2] - priors[..., 0]
    h = priors[..., 3] - priors[..., 1]
    tblr = jnp.stack(
        [
            (cy - gt[..., 1]) / h,
            (gt[..., 3] - cy) / h,
            (cx - gt[..., 0]) / w,
            (gt[..., 2] - cx) / w,
        ],
        axis=-1,
    )
    return tblr / normalizer


def tblr_decode(priors: Array, tblr: Array, normalizer: float = TBLR_NORMALIZER) -> Array:
    """priors [..., 4], tblr [..., 4] -> boxes [..., 4] xyxy (mmdet `tblr2bboxes`, no clip)."""
    cx = (priors[..., 0] + priors[..., 2]) / 2.0
    cy = (priors[..., 1] + priors[..., 3]) / 2.0
    w = priors[..., 2] - priors[..., 0]
    h = priors[..., 3] - priors[..., 1]
    d = tblr * normalizer
    return jnp.stack(
        [cx - d[..., 2] * w, cy - d[..., 0] * h, cx + d[..., 3] * w, cy + d[..., 1] * h], axis=-1
    )
