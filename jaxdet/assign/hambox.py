"""HAMBox: online high-quality anchor mining (Liu et al., "HAMBox: Delving into
Online High-quality Anchors Mining for Detecting Outer Faces", CVPR 2020,
arXiv 1912.09231).

The paper's observation: most boxes that end up well localised (regressed IoU >= 0.5)
are regressed from anchors the IoU matching left unmatched, and small ("outer")
faces get very few matched anchors. Two stages, per image:

  1. `match`: anchor matching at IoU >= T1 = 0.35 (negatives below T1), and every GT
     keeps its best anchor even below T1 (the S3FD-style low-quality match). This is
     `max_iou.assign(pos_iou_thr=T1, neg_iou_thr=T1, min_pos_iou=0)`.
  2. `compensate`: after decoding the (stop_gradient-ed) regressions, every GT j with
     n_j < K = 5 matched anchors gains up to K - n_j anchors that stage 1 left
     background and whose *regressed* box has IoU >= T2 = 0.5 with j, best regressed
     IoU first (the paper counts the K budget including the matched anchors;
     `count_matched=False` gives every GT K extra anchors instead). An anchor
     competes only for the GT its regressed box overlaps most (ties: the lower GT
     row), so no anchor is compensated twice.

The output `quality` is the weight of the positive's regression-aware focal loss
(`jaxdet.losses.regression_aware_focal`): 1 for a stage-1 match, the regressed IoU
(in [T2, 1]) for a compensated anchor, 0 elsewhere. Ignored priors (-2) and padding /
ignore GT rows never take part in the compensation; an image without GT is all
background (ignore regions stay -2).

No reference code was released (the promised PaddlePaddle code never appeared; an
unofficial partial port is chyueG/HAMBox-high-anchors-mining). Two points the paper
leaves open are fixed here and named in the arguments: the budget counts matched
anchors (`count_matched`), and an anchor goes to the GT of its highest regressed IoU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.assign import common, lattice, max_iou
from jaxdet.core.types import Assignment, GroundTruth, Priors

POS_IOU_THR = 0.35  # T1, stage-1 anchor matching
COMP_K = 5  # K, anchors per GT after compensation
COMP_IOU_THR = 0.5  # T2, regressed-box IoU of a compensated anchor
CANDIDATES = 256  # compensation candidates ranked directly (`_take_best`); speed only


def match(
    priors: Priors,
    gt: GroundTruth,
    *,
    pos_iou_thr: float = POS_IOU_THR,
    best_anchor_all_ties: bool = True,
    ignore_iof_thr: float = 0.5,
    method: str = "auto",
) -> Assignment:
    """Stage 1: IoU >= pos_iou_thr positive, below negative, plus each GT's best anchor.

    Args:
      priors: N anchors, `priors.boxes` [N, 4].
      gt: one image's GroundTruth, leaves [M, ...].
      pos_iou_thr: T1 (paper 0.35); also the negative threshold (no ignore band).
      best_anchor_all_ties: give a GT every anchor tied at its best IoU (mmdetection's
        `gt_max_assign_all`, default; also the faster path), not only the first.
      ignore_iof_thr: IoF with an ignore region above which an anchor is ignored.
      method: 'auto' or 'dense', as `max_iou.assign` (same result).
    Returns:
      Assignment: gt_index [N] int32, quality [N] float32 = 1 on the positives.
    """
    a = max_iou.assign(
        priors, gt, pos_iou_thr=pos_iou_thr, neg_iou_thr=pos_iou_thr, min_pos_iou=0.0,
        gt_max_assign_all=best_anchor_all_ties, match_low_quality=True,
        ignore_iof_thr=ignore_iof_thr, method=method,
    )
    return common.finish(a.gt_index, jnp.ones_like(a.quality))


def compensate(
    matched: Assignment,
    gt: GroundTruth,
    pred_boxes: jax.Array,
    *,
    k: int = COMP_K,
    iou_thr: float = COMP_IOU_THR,
    count_matched: bool = True,
    priors: Priors | None = None,
    method: str = "auto",
    chunk: int = 8,
    candidates: int = CANDIDATES,
) -> tuple[Assignment, jax.Array]:
    """Stage 2, online anchor compensation from the regressed boxes.

    Args:
      matched: the stage-1 Assignment of this image (gt_index [N]).
      gt: one image's GroundTruth, leaves [M, ...].
      pred_boxes: [N, 4] decoded regressions (stop_gradient-ed by the caller).
      k: K, the per-GT anchor budget (paper 5); 0 turns compensation off.
      iou_thr: T2, the least regressed IoU of a compensated anchor (paper 0.5).
      count_matched: the budget of GT j is K - n_j (paper) rather than K.
      priors: the anchors the boxes were regressed from: with method 'auto' each GT
        is folded only over the FPN levels whose regressed boxes can reach T2 with it
        (same result; see `_best_gt_levels`); None folds every GT over all N boxes.
      method: 'auto' or 'dense' (every GT over all N boxes; the reference).
      chunk: GT rows per loop step (speed only).
      candidates: C of `_take_best` (speed only).
    Returns:
      (Assignment with gt_index [N] (stage 1 plus the compensated anchors) and
      quality [N] = 1 matched / regressed IoU compensated / 0 otherwise,
      compensated [N] bool).
    """
    n = matched.gt_index.shape[0]
    boxes, match_rows, _ = common.split_gt(gt)
    m = boxes.shape[0]
    gt_index = matched.gt_index
    quality = jnp.where(gt_index >= 0, 1.0, 0.0).astype(jnp.float32)
    if k <= 0 or m == 0:
        return common.finish(gt_index, quality), jnp.zeros((n,), bool)
    pos = gt_index >= 0
    n_matched = jnp.zeros((m,), jnp.int32).at[jnp.where(pos, gt_index, m)].add(1, mode="drop")
    budget = jnp.maximum(k - n_matched, 0) if count_matched else jnp.full((m,), k, jnp.int32)
    budget = jnp.where(match_rows, budget, 0)
    # The GT each regressed box overlaps most (the first such row), by the GT fold:
    # [N] accumulators, no [M, N] matrix.
    pred_boxes = common.as_f32(pred_boxes)
    by_level = lattice.check_method(method) == "auto" and priors is not None
    if by_level and len(priors.level_sizes) > 1 and iou_thr > 0:
        best_iou, best_gt = _best_gt_levels(pred_boxes, gt_index == common.BACKGROUND, boxes,
                                            match_rows, priors, iou_thr)
    else:
        best_iou, best_gt = _best_gt(pred_boxes, boxes, match_rows, chunk)
    budget = jnp.concatenate([budget, jnp.zeros((1,), jnp.int32)])  # row m: no GT
    seg = jnp.where(gt_index == common.BACKGROUND, best_gt, m)  # stage-1 negatives only
    seg = jnp.where((best_iou >= iou_thr) & (budget[seg] > 0), seg, m)
    # Each GT takes its best candidates (ties: the lower anchor), up to its budget.
    take = _take_best(best_iou, seg, budget, m, k, candidates)
    gt_index = jnp.where(take, best_gt, gt_index)
    quality = jnp.where(take, best_iou, quality)
    return common.finish(gt_index, quality), take


def _take_best(best_iou: jax.Array, seg: jax.Array, budget: jax.Array, m: int, k: int,
               c: int) -> jax.Array:
    """[N] bool: the anchors each GT takes, its best budget[g] candidates by IoU (ties:
    the lower anchor); seg [N] is the GT an anchor competes for (m: none), best_iou [N]
    its IoU, budget [M + 1] (budget[m] = 0).

    Candidates are few (those that reach T2 and are left background): up to c of them
    are compacted and ranked within their GT directly ([c, c] comparisons). Where an
    image has more, K rounds of two segment reductions over the N anchors take each
    GT's best remaining candidate per round (the rounds stop once no GT with budget
    left has one). Both give the same set."""
    n = seg.shape[0]
    c = min(int(c), n)
    cand = seg < m
    count = jnp.sum(cand, dtype=jnp.int32)
    # The q-th candidate is where the running count first reaches q (n past the last):
    # a binary search per slot, cheaper than nonzero's scatter over the N anchors.
    running = jnp.cumsum(cand, dtype=jnp.int32)
    idx = jnp.searchsorted(running, jnp.arange(1, c + 1, dtype=jnp.int32)).astype(jnp.int32)
    live = jnp.arange(c) < count
    at = jnp.minimum(idx, n - 1)
    iou_c = jnp.where(live, best_iou[at], -1.0)
    seg_c = jnp.where(live, seg[at], m)
    ahead = ((seg_c[None, :] == seg_c[:, None]) & live[None, :]
             & ((iou_c[None, :] > iou_c[:, None])
                | ((iou_c[None, :] == iou_c[:, None]) & (idx[None, :] < idx[:, None]))))
    win = live & (jnp.sum(ahead, axis=1) < budget[seg_c])
    take_ranked = jnp.zeros((n,), bool).at[idx].set(win, mode="drop")

    overflow = count > c
    order = jnp.arange(n, dtype=jnp.int32)

    def wanted(state):
        r, remaining, _ = state
        return overflow & (r < k) & jnp.any(remaining & (r < budget[seg]))

    def one_round(state):
        r, remaining, take = state
        v = jnp.where(remaining, best_iou, -1.0)
        top = jax.ops.segment_max(v, seg, num_segments=m + 1)
        is_top = remaining & (v == top[seg])
        first = jax.ops.segment_min(jnp.where(is_top, order, n), seg, num_segments=m + 1)
        win = is_top & (order == first[seg]) & (r < budget[seg])
        return r + 1, remaining & ~win, take | win

    _, _, take_rounds = jax.lax.while_loop(
        wanted, one_round, (jnp.int32(0), cand, jnp.zeros((n,), bool)))
    return jnp.where(overflow, take_rounds, take_ranked)


def _best_gt(pred_boxes: jax.Array, boxes: jax.Array, rows_mask: jax.Array, chunk: int
             ) -> tuple[jax.Array, jax.Array]:
    """(max IoU [N] of each pred box over the GT rows in rows_mask (-1 if none), its
    row [N] int32, the first row on ties)."""
    cols = common.columns(pred_boxes)
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])

    def body(carry, rows, ids, live):
        best, arg = carry
        ov = common.iou_with_box(cols, area, rows)  # [chunk, N]
        for j in range(rows.shape[0]):
            better = live[j] & (ov[j] > best)
            best = jnp.where(better, ov[j], best)
            arg = jnp.where(better, ids[j], arg)
        return best, arg

    n = pred_boxes.shape[0]
    init = (jnp.full((n,), -1.0, jnp.float32), jnp.zeros((n,), jnp.int32))
    return common.fold_gt_chunks(body, init, boxes, rows_mask, chunk)


def _best_gt_levels(pred_boxes, wanted, boxes, rows_mask, priors, iou_thr):
    """`_best_gt` wherever its IoU is >= iou_thr on a `wanted` [N] box (elsewhere the
    IoU may read lower), folding each GT only over the levels it can reach.

    GT j is folded over level l only if it may have an IoU >= t with one of the
    level's wanted regressed boxes (`lattice.reaching_pieces`: by their areas, sizes and
    place). A GT left out of a level has IoU < t with every wanted box there, so the
    max and its first row agree with the full fold wherever the max is >= t."""
    cols = common.columns(pred_boxes)
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])
    out = [_best_gt(jnp.stack(p.cols, axis=1), boxes, p.reach, common.LEVEL_CHUNK)
           for p in lattice.reaching_pieces(priors, cols, area, boxes, rows_mask, iou_thr,
                                            bands=False, counted=wanted)]
    return jnp.concatenate([o[0] for o in out]), jnp.concatenate([o[1] for o in out])


def assign(
    priors: Priors,
    gt: GroundTruth,
    pred_boxes: jax.Array,
    *,
    pos_iou_thr: float = POS_IOU_THR,
    k: int = COMP_K,
    iou_thr: float = COMP_IOU_THR,
    count_matched: bool = True,
    best_anchor_all_ties: bool = True,
    ignore_iof_thr: float = 0.5,
    method: str = "auto",
) -> tuple[Assignment, jax.Array]:
    """`match` then `compensate`: priors [N], gt [M], pred_boxes [N, 4] (no gradient)
    -> (Assignment [N], compensated [N] bool). Arguments as the two stages; `method`
    goes to both."""
    matched = match(
        priors, gt, pos_iou_thr=pos_iou_thr, best_anchor_all_ties=best_anchor_all_ties,
        ignore_iof_thr=ignore_iof_thr, method=method,
    )
    return compensate(matched, gt, pred_boxes, k=k, iou_thr=iou_thr, count_matched=count_matched,
                      priors=priors, method=method)
