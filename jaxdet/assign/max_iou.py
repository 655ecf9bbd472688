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

Speed: on an anchor lattice (`lattice.is_tiling`, `make_anchors` priors) the default
method 'auto' folds each GT only over the FPN levels where some anchor can reach a
threshold that changes a result (the classification thresholds, or the GT's own max
IoU for the low-quality rule); the result is the dense fold's. Most GTs reach one or
two of five levels, and rarely the finest one, which holds three quarters of the anchors.

Hyper-parameters (paper / mmdetection config defaults) are in the presets below.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxdet.assign import common, lattice
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
    method: str = "auto",
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
      method: 'auto' (where the priors tile an anchor lattice, `lattice.is_tiling`,
        and every threshold is > 0: each GT folded only over the levels where some
        anchor can reach a threshold that matters, see `_fold_levels`, the same result;
        elsewhere as 'dense') or 'dense' (every GT against all N priors; the reference).
      chunk: GT rows per loop step of the dense folds (speed only; the per-level
        folds step `common.LEVEL_CHUNK` rows).
    Returns:
      Assignment with gt_index [N] int32 and quality [N] float32.
    """
    if isinstance(neg_iou_thr, tuple | list):
        neg_lo, neg_hi = neg_iou_thr
    else:
        neg_lo, neg_hi = 0.0, neg_iou_thr
    # The least IoU at which the classification of a prior can change (neg_lo only
    # when it is a real bound: max IoU >= 0 always holds with a GT present).
    thresholds = [pos_iou_thr, neg_hi] + ([neg_lo] if neg_lo > 0 else [])
    by_level = (lattice.check_method(method) == "auto" and min(thresholds) > 0
                and lattice.is_tiling(priors))
    pb = common.as_f32(priors.boxes)
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    ignored = common.ignored_by_iof(pb, boxes, ignore_rows, ignore_iof_thr, chunk)
    # mmdetection gives ignored priors IoU -1 with every GT. Here they are moved to
    # an empty box far away (IoU 0), which keeps the mask out of the loop body; the
    # -1 is restored where it matters: max_ov below, and no low-quality match
    # (0 == a GT's max over the other priors must not claim an ignored prior).
    far = jnp.float32(-1e9)
    cols = tuple(jnp.where(ignored, far, c) for c in common.columns(pb))
    fold = dict(match_low_quality=match_low_quality, gt_max_assign_all=gt_max_assign_all,
                min_pos_iou=min_pos_iou)
    if by_level:
        max_ov, arg, lq_idx, lq_val = _fold_levels(
            priors, cols, ignored, boxes, match_rows, min(thresholds), **fold)
    else:
        max_ov, arg, lq_idx, lq_val = fold_dense(cols, ignored, boxes, match_rows, chunk=chunk,
                                                 **fold)
    return apply_rules(max_ov, arg, lq_idx, lq_val, ignored, match_rows,
                       pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr,
                       match_low_quality=match_low_quality)


def apply_rules(max_ov, arg, lq_idx, lq_val, ignored, match_rows, *, pos_iou_thr: float,
                neg_iou_thr: float | tuple[float, float], match_low_quality: bool
                ) -> Assignment:
    """Rules 1-4 on a fold's [N] results (`fold_dense`): max overlap, its first GT row,
    the low-quality row (-1: none) and its value; `ignored` [N] priors read max overlap
    -1; `match_rows` [M] the GT rows that may match (none: -1 / -2 everywhere)."""
    neg_lo, neg_hi = (tuple(neg_iou_thr) if isinstance(neg_iou_thr, tuple | list)
                      else (0.0, neg_iou_thr))
    n = max_ov.shape[0]
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


def fold_dense(cols, ignored, boxes, match_rows, *, match_low_quality, gt_max_assign_all,
               min_pos_iou, chunk, init_ov=-jnp.inf, overlaps=None):
    """Every GT row in `match_rows` against all priors (columns `cols`, each [N]).

    `overlaps(rows [chunk, 4]) -> [chunk, N]` replaces the IoU with the priors' boxes
    (the approx-anchor assigner passes the max IoU over each location's anchors).
    Returns [N] arrays (max overlap over the rows, its first row, the low-quality row
    (-1: none; the last row claiming the prior) and that row's max overlap)."""
    n = cols[0].shape[0]
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])
    prior_ids = jnp.arange(n, dtype=jnp.int32)
    if overlaps is None:
        overlaps = lambda rows: common.iou_with_box(cols, area, rows)  # noqa: E731

    def body(carry, rows, ids, live):
        max_ov, arg, lq_idx, lq_val = carry
        ov = overlaps(rows)  # [chunk, N]
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
        jnp.full((n,), init_ov, jnp.float32),
        jnp.zeros((n,), jnp.int32),
        jnp.full((n,), -1, jnp.int32),
        jnp.zeros((n,), jnp.float32),
    )
    return common.fold_gt_chunks(body, init, boxes, match_rows, chunk)


def _fold_levels(priors, cols, ignored, boxes, match_rows, min_threshold, *,
                 match_low_quality, gt_max_assign_all, min_pos_iou):
    """`fold_dense`'s result where it matters, folding each GT over the levels it can reach.

    GT j takes part on level l iff ub[j, l] (`lattice.level_bounds`) reaches t_j = the least
    classification threshold, or (low-quality matching) the lower bound lb[j] of its
    max IoU, with a margin for rounding. On the other levels every IoU with j is
    below t_j, so j can neither be a prior's max-IoU GT there at a value that changes
    its class, nor reach its own max (>= lb[j]) there: max IoU and first arg agree
    with the dense fold wherever the max is >= the least threshold (below it, both are
    in the same class; here it may read 0), and the low-quality matches are the same.
    The low-quality rule needs each GT's max over all levels first: a second fold
    over the (GT, level) pairs where that max is reached marks the ties (or, with
    `gt_max_assign_all=False`, the first prior reaching it is scattered)."""
    ub, lb = lattice.level_bounds(priors, cols, boxes)
    t = jnp.full(lb.shape, min_threshold, jnp.float32)
    if match_low_quality:
        t = jnp.minimum(t, lb)
    reach = match_rows[:, None] & (ub * (1 + 1e-4) + 1e-6 >= (t * (1 - 1e-4))[:, None])
    m = boxes.shape[0]
    pieces, level_max, level_arg = [], [], []
    views = []  # per level: (start, size, columns, areas, ignored) of its priors
    for start, size in zip(priors.level_starts, priors.level_sizes):
        lcols = tuple(lax.slice_in_dim(c, start, start + size) for c in cols)
        views.append((start, size, lcols, (lcols[2] - lcols[0]) * (lcols[3] - lcols[1]),
                      lax.slice_in_dim(ignored, start, start + size)))
    for lvl, (start, size, lcols, larea, lign) in enumerate(views):

        def body(carry, rows, ids, live, lcols=lcols, larea=larea, lign=lign):
            max_ov, arg, gmax, garg = carry
            ov = common.iou_with_box(lcols, larea, rows)  # [chunk, N_l]
            at = jnp.where(live, ids, m)
            gmax = gmax.at[at].set(jnp.max(ov, axis=1), mode="drop")
            if not gt_max_assign_all:
                garg = garg.at[at].set(jnp.argmax(jnp.where(lign, -1.0, ov), axis=1),
                                       mode="drop")
            for j in range(rows.shape[0]):
                better = live[j] & (ov[j] > max_ov)  # strict: the first GT with the max wins
                max_ov = jnp.where(better, ov[j], max_ov)
                arg = jnp.where(better, ids[j], arg)
            return max_ov, arg, gmax, garg

        init = (jnp.zeros((size,), jnp.float32), jnp.zeros((size,), jnp.int32),
                jnp.full((m,), -jnp.inf, jnp.float32), jnp.zeros((m,), jnp.int32))
        max_ov, arg, gmax, garg = common.fold_gt_chunks(body, init, boxes, reach[:, lvl],
                                                        common.LEVEL_CHUNK)
        pieces.append((max_ov, arg))
        level_max.append(gmax)
        level_arg.append(garg + start)
    max_ov = jnp.concatenate([p[0] for p in pieces])
    arg = jnp.concatenate([p[1] for p in pieces])
    n = max_ov.shape[0]
    if not match_low_quality:
        return max_ov, arg, jnp.full((n,), -1, jnp.int32), jnp.zeros((n,), jnp.float32)

    level_max = jnp.stack(level_max, axis=1)  # [M, L], -inf where not folded
    gt_max = jnp.max(level_max, axis=1)
    claims = match_rows & (gt_max >= min_pos_iou)
    at_max = claims[:, None] & (level_max == gt_max[:, None])  # [M, L]
    if not gt_max_assign_all:
        # The first prior reaching the max: on the first level where it is reached.
        first = jnp.argmax(at_max, axis=1)
        prior = jnp.take_along_axis(jnp.stack(level_arg, axis=1), first[:, None], 1)[:, 0]
        rows = jnp.where(claims, jnp.arange(m, dtype=jnp.int32), -1)
        lq_idx = jnp.full((n,), -1, jnp.int32).at[prior].max(rows)  # the last GT wins
    else:
        ties = []
        for lvl, (_, size, lcols, larea, lign) in enumerate(views):

            def tie_body(lq, rows, ids, live, lcols=lcols, larea=larea, lign=lign):
                ov = common.iou_with_box(lcols, larea, rows)
                for j in range(rows.shape[0]):
                    hit = live[j] & (ov[j] == gt_max[ids[j]]) & ~lign
                    lq = jnp.where(hit, ids[j], lq)  # rows in order: the last GT wins
                return lq

            ties.append(common.fold_gt_chunks(
                tie_body, jnp.full((size,), -1, jnp.int32), boxes, at_max[:, lvl],
                common.LEVEL_CHUNK))
        lq_idx = jnp.concatenate(ties)
    lq_val = jnp.where(lq_idx >= 0, gt_max[jnp.maximum(lq_idx, 0)], 0.0)
    return max_ov, arg, lq_idx, lq_val
