"""Learning from noisy anchors: candidate bags and cleanliness (Li et al., "Learning
from Noisy Anchors for One-stage Object Detection", CVPR 2020, arXiv 1912.05086).

Instead of RetinaNet's hard IoU split, every GT gets a *candidate positive bag*: its
top-N anchors by IoU (paper N = 50; the unofficial mmdetection port
tasavat/mmdetection `TopNIoUAssigner` uses `max_n_bbox_per_gt=30`). Each anchor a in
a bag gets a *cleanliness* score from the current predictions

    c = alpha * loc_a + (1 - alpha) * cls_c,          alpha = 0.75 (paper)

with loc_a = IoU(regressed box of a, its GT) and cls_c = the predicted probability
of the GT's class at a. c is the soft classification label of a (and, through
`jaxdet.losses.noisy_anchor.reweight_factors`, its loss weight). Predictions enter
without gradient: the caller passes `stop_gradient`-ed arrays (they are
stop-gradient-ed here once more, which changes nothing for a caller that did).

Per image, jittable and vmappable:
  jax.vmap(lambda g, b, s: noisy_anchor.assign(priors, g, b, s))(gt, boxes, scores)

Bag rules (those of the port's `TopNIoUAssigner`, which is the only public code):
  1. for each valid, non-ignore GT j, its `min(topk, N)` anchors with the largest
     IoU (ties at the N-th place: see `method`);
  2. an anchor enters j's bag only if its IoU with j is > `min_pos_iou` (0: an
     anchor that does not touch j is never in its bag);
  3. an anchor in several bags goes to the GT with the highest IoU; equal IoUs go
     to the lower GT row (the port replaces only on a strictly larger IoU);
  4. every anchor in no bag is background (-1): there is no ignore band between
     the positive and negative IoUs (the port's behaviour, and the paper's point of
     replacing the hard split);
  5. anchors whose IoF with an ignore region (crowd) exceeds `ignore_iof_thr` are
     ignored (-2): they are dropped from the bags they were selected into (a bag can
     then hold fewer than N anchors). The port has no ignore handling; this is
     jaxdet's crowd rule, as in `max_iou` / `atss`.
An image without valid GT gives -1 everywhere (and -2 on ignored anchors).

Speed. `method='auto'` on an anchor lattice (`lattice.is_tiling`, anchors from
`priors.make_anchors`) never computes the IoU of a GT with all N anchors: the top-N
come from `lattice.top_k_iou` (a static staircase of candidates per level, ~1k per
GT for N = 50 and one anchor per location, against 22k anchors of an 800 x 1333
input). Exact up to float rounding; which anchor wins a tie in IoU at the N-th place
can differ from the dense path (ties are common: every anchor inside a larger GT has
IoU = its area / the GT's area); the lattice path prefers the lower level, then the
cell nearer the GT centre. `method='dense'` (and 'auto' on other priors): per GT the
IoU with every anchor and `lax.top_k` (ties: lower anchor index), folded over the GT
rows present, `chunk` at a time; it is the reference of the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.assign import common, lattice
from jaxdet.core import boxes as box_ops
from jaxdet.core.types import Assignment, GroundTruth, Priors

# Paper defaults (Li et al. 2020): bag size N and the cleanliness mixing weight alpha.
TOPK = 50
ALPHA = 0.75


def candidate_bags(
    priors: Priors,
    gt: GroundTruth,
    *,
    topk: int = TOPK,
    min_pos_iou: float = 0.0,
    ignore_iof_thr: float = 0.5,
    method: str = "auto",
    chunk: int = 8,
) -> Assignment:
    """The prediction-free part: each GT's top-`topk` anchors by IoU (rules 1-5 above).

    Args:
      priors: anchors of all levels, `priors.boxes` [N, 4] xyxy.
      gt: one image's GroundTruth, leaves [M, ...].
      topk: bag size N per GT (paper 50, port 30).
      min_pos_iou: an anchor joins a bag only with IoU > min_pos_iou (port 0); >= 0.
      ignore_iof_thr: IoF with an ignore region above which an anchor is ignored;
        <= 0 disables (mmdetection's -1).
      method: 'auto' (the lattice staircase where the priors tile, `lattice.is_tiling`;
        elsewhere as 'dense') or 'dense' (the reference); see the module docstring.
      chunk: GT rows per loop step of the dense path and of the ignore fold (speed only).
    Returns:
      Assignment: gt_index [N] int32 (-1 bg, -2 ignore, k >= 0 bag of GT row k),
      quality [N] float32 = IoU of the anchor with its GT (0 off the bags).
    """
    if min_pos_iou < 0:
        raise ValueError(f"min_pos_iou must be >= 0, got {min_pos_iou}")
    pb = common.as_f32(priors.boxes)
    n = pb.shape[0]
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    m = boxes.shape[0]
    ignored = common.ignored_by_iof(pb, boxes, ignore_rows, ignore_iof_thr, chunk)
    val, idx = lattice.top_k_iou(priors, boxes, match_rows, int(topk), method=method,
                                 chunk=chunk)

    # Collisions: the highest IoU wins, then the lowest GT row.
    member = match_rows[:, None] & (val > min_pos_iou)
    flat = idx.reshape(-1)
    v = jnp.where(member, val, -1.0).reshape(-1)
    best = jnp.full((n,), -1.0, jnp.float32).at[flat].max(v)
    rows = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[:, None], idx.shape).reshape(-1)
    wins = member.reshape(-1) & (v == best[flat])
    winner = jnp.full((n,), m, jnp.int32).at[flat].min(jnp.where(wins, rows, m))
    gt_index = jnp.where(winner < m, winner, common.BACKGROUND)
    gt_index = jnp.where(ignored, common.IGNORE, gt_index)
    return common.finish(gt_index, best)


def cleanliness_terms(
    gt_index: jax.Array, gt: GroundTruth, pred_boxes: jax.Array, pred_scores: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(loc_a, cls_c) of every anchor, 0 off the positives (gt_index < 0).

    Args:
      gt_index: [N] int32 from `candidate_bags`.
      gt: one image's GroundTruth, leaves [M, ...].
      pred_boxes: [N, 4] xyxy regressed (decoded) boxes, in input pixels.
      pred_scores: [N, C] predicted class probabilities (sigmoid of the logits).
    Returns:
      loc [N] = IoU(pred_boxes[n], gt.boxes[gt_index[n]]) in [0, 1],
      cls [N] = pred_scores[n, gt.labels[gt_index[n]]] in [0, 1]; both float32, no gradient.
    """
    pred_boxes = lax.stop_gradient(common.as_f32(pred_boxes))
    pred_scores = lax.stop_gradient(common.as_f32(pred_scores))
    pos = gt_index >= 0
    row = jnp.maximum(gt_index, 0)
    gt_boxes = jnp.where(jnp.asarray(gt.valid, bool)[:, None], common.as_f32(gt.boxes), 0.0)
    loc = box_ops.aligned_iou(pred_boxes, gt_boxes[row])
    label = jnp.asarray(gt.labels, jnp.int32)[row]
    cls = jnp.take_along_axis(pred_scores, label[:, None], axis=1)[:, 0]
    loc = jnp.where(pos, jnp.clip(loc, 0.0, 1.0), 0.0)
    cls = jnp.where(pos, jnp.clip(cls, 0.0, 1.0), 0.0)
    return loc, cls


def cleanliness(loc: jax.Array, cls: jax.Array, alpha: float = ALPHA) -> jax.Array:
    """c = alpha * loc + (1 - alpha) * cls, element-wise (paper alpha = 0.75)."""
    return alpha * loc + (1.0 - alpha) * cls


def assign(
    priors: Priors,
    gt: GroundTruth,
    pred_boxes: jax.Array,
    pred_scores: jax.Array,
    *,
    topk: int = TOPK,
    alpha: float = ALPHA,
    min_pos_iou: float = 0.0,
    ignore_iof_thr: float = 0.5,
    method: str = "auto",
    chunk: int = 8,
) -> Assignment:
    """Candidate bags with the cleanliness score as the soft label.

    Args:
      priors, gt, topk, min_pos_iou, ignore_iof_thr, method, chunk: as `candidate_bags`.
      pred_boxes: [N, 4] regressed boxes (stop_gradient-ed by the caller).
      pred_scores: [N, C] class probabilities (stop_gradient-ed by the caller).
      alpha: weight of loc_a in the cleanliness (paper 0.75).
    Returns:
      Assignment: gt_index [N] as `candidate_bags`, quality [N] = cleanliness c in
      [0, 1] on the bags (0 elsewhere).
    """
    bags = candidate_bags(
        priors,
        gt,
        topk=topk,
        min_pos_iou=min_pos_iou,
        ignore_iof_thr=ignore_iof_thr,
        method=method,
        chunk=chunk,
    )
    loc, cls = cleanliness_terms(bags.gt_index, gt, pred_boxes, pred_scores)
    return common.finish(bags.gt_index, cleanliness(loc, cls, alpha))
