"""Anchor bags of FreeAnchor / Multiple Anchor Learning (MAL).

- `build`: per GT, the `bag_size` anchors with the highest IoU with it (its
  "anchor bag" A_i). Static shapes: `index [M, K]` anchor ids and `valid [M, K]`;
  padding rows (valid=False) and ignore rows (crowd) get empty bags.
- `positive_probability`: P{a_j in A+} [N, C] of FreeAnchor's negative loss,
  from the (stop-gradient-ed) predicted boxes: the IoU of anchor j's regressed box
  with GT i, mapped through the saturated linear function
  clip((IoU - t1) / (t2_i - t1), 0, 1), t1 = `bbox_thr` (0.6), t2_i = max(max_j
  IoU_ij, t1 + 1e-12); for each class c the max over the GTs of class c.
  `positive_probability_batch` is the same for a batch, faster: an anchor's
  probability is nonzero only for GTs its box overlaps at IoU > t1, i.e. for one or
  two classes in practice, so the fold keeps `PROB_SLOTS` (class, max) pairs per
  anchor in [N] accumulators and writes the [N, C] result once; where some anchor
  of the batch has more nonzero classes than slots, the whole batch takes the exact
  per-class scatter of `positive_probability` (one `lax.cond` outside the vmap, so
  the other batches never pay for it). `positive_probability_slots` returns the
  slots themselves (O(S N) instead of [N, C]); `slots_to_dense` expands them.
  Given the `priors` the boxes were regressed from (and `method='auto'`), a GT is
  folded only over the FPN levels (bands of feature rows, `lattice.row_bands`) where
  its probability can be nonzero.

References: Zhang et al., "FreeAnchor: Learning to Match Anchors for Visual
Object Detection", NeurIPS 2019 (mmdetection `FreeAnchorRetinaHead`:
`pre_anchor_topk` 50, `bbox_thr` 0.6); Ke et al., "Multiple Anchor Learning for
Visual Object Detection", CVPR 2020 (DeLightCMU/MAL `free_anchor_loss_IA.py`,
config `mal_R-50-FPN.yaml`: PRE_ANCHOR_TOPK 40, BBOX_THRESHOLD 0.6).

Both functions are per image, pure, jittable and vmappable over the batch
(`jax.vmap(lambda g: build(priors, g))(gt)`). No [M, N] matrix is built:
`build` takes each GT's candidates on the anchor lattice (`lattice.top_k_iou`)
when the priors come from `make_anchors`, and otherwise, like
`positive_probability`, walks only the valid GT rows (`common.fold_gt_chunks`).

Tie-breaking: `lax.top_k` keeps the lower anchor index among equal IoUs (torch's
`topk(sorted=False)` leaves it unspecified); the bag is sorted by decreasing IoU.
The bag losses are permutation-invariant, so only ties at the K-th place matter.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.assign import common, lattice
from jaxdet.core import boxes as box_ops
from jaxdet.core.types import GroundTruth, Priors

Array = jnp.ndarray

BAG_SIZE = 40  # MAL PRE_ANCHOR_TOPK (FreeAnchor paper / mmdetection: 50)
BBOX_THR = 0.6  # FreeAnchor / MAL BBOX_THRESHOLD
PROB_SLOTS = 2  # (class, probability) pairs per anchor on the fast path


class AnchorBags(NamedTuple):
    """Anchor bags of one image (batched: leading B).

    index: [M, K] int32 anchor ids in [0, N), sorted by decreasing IoU; 0 in empty bags.
    valid: [M, K] bool, False for every entry of a padding or ignore GT row.
    iou:   [M, K] float32 IoU of each anchor with its GT (0 in empty bags).
    """

    index: Array
    valid: Array
    iou: Array


def build(
    priors: Priors,
    gt: GroundTruth,
    *,
    bag_size: int = BAG_SIZE,
    chunk: int = 8,
    method: str = "auto",
) -> AnchorBags:
    """Per GT row, the `bag_size` anchors of highest IoU with it.

    Args:
      priors: N anchors, `priors.boxes` [N, 4].
      gt: one image's GroundTruth, leaves [M, ...]; rows with valid & ~ignore get a bag.
      bag_size: K (MAL 40, FreeAnchor 50); clipped to N.
      chunk: GT rows per loop step of the dense path (speed only).
      method: 'auto' (on an anchor lattice, `lattice.is_tiling`: a static set of
        candidates per GT, `lattice.top_k_iou`; elsewhere as 'dense') or 'dense'
        (every anchor's IoU, folded over the GT rows; the reference). Same IoUs; among
        equal IoUs at the K-th place the two may keep different anchors.
    Returns:
      AnchorBags with [M, K] leaves.
    """
    boxes, match_rows, _ = common.split_gt(gt)
    iou, index = lattice.top_k_iou(priors, boxes, match_rows, bag_size, method=method,
                                   chunk=chunk)
    valid = jnp.broadcast_to(match_rows[:, None], iou.shape)
    return AnchorBags(index=index, valid=valid, iou=jnp.where(valid, iou, 0.0))


def positive_probability(
    pred_boxes: Array,
    gt: GroundTruth,
    num_classes: int,
    *,
    bbox_thr: float = BBOX_THR,
    priors: Priors | None = None,
    method: str = "auto",
    chunk: int = 8,
) -> Array:
    """FreeAnchor's P{a_j in A+} per anchor and class, from the predicted boxes.

    Args:
      pred_boxes: [N, 4] decoded boxes of the N anchors (pass them through
        `jax.lax.stop_gradient`: the reference computes this under no_grad).
      gt: one image's GroundTruth [M, ...]; only valid & ~ignore rows count.
      num_classes: C.
      bbox_thr: t1 of the saturated linear function (0.6).
      priors: the anchors the boxes were regressed from (their levels and feature
        shapes): each GT is then folded only over the bands of feature rows where its
        probability can be nonzero (same result, faster; see `_fold_probability`).
      method: 'auto' (the per-piece folds where `priors` is given) or 'dense' (every
        GT over all boxes; the reference).
      chunk: GT rows per loop step (speed only).
    Returns:
      [N, C] float32 in [0, 1]; all zeros without GT.
    """
    def body(acc, prob, labels, live):
        # Each GT updates one column (its label). An [N, C] accumulator (a [C, N] one
        # scatters faster but makes XLA give `positive_probability_batch`'s
        # conditional a transposed output layout, which costs its fast branch a copy).
        return acc.at[:, labels].max(prob.T)

    init = lambda n: jnp.zeros((n, num_classes), jnp.float32)
    return _fold_probability(pred_boxes, gt, bbox_thr, body, init, chunk,
                             _pieces_of(priors, method))


def _pieces_of(priors: Priors | None, method: str) -> Priors | None:
    """The priors whose pieces the folds take: None with method 'dense'."""
    return priors if lattice.check_method(method) == "auto" else None


def _fold_probability(pred_boxes: Array, gt: GroundTruth, bbox_thr: float, body, init,
                      chunk: int, priors: Priors | None = None):
    """Folds `carry = body(carry, prob [chunk, n], labels [chunk], live [chunk])` over the valid,
    non-ignore GT rows: prob = the saturated linear function of the IoU of each
    predicted box with the row (module docstring), 0 on filler rows; `init(n)` gives
    the carry for n boxes, whose leaves have n as their leading axis.

    With `priors` (the anchors the boxes were regressed from) the result is the same
    with far fewer (row, box) pairs: the boxes are taken one piece at a time (a band
    of feature rows of one level, `lattice.row_bands`; carries joined at the end) and a
    row is folded over a piece only where its probability can be nonzero (`_levels`:
    by area, size and place). The row's max IoU t2 comes from a first pass over the
    same pairs (where it is <= t1 every prob of the row is 0 and the row is skipped)."""
    pred = common.as_f32(pred_boxes)
    boxes, match_rows, _ = common.split_gt(gt)
    labels = jnp.asarray(gt.labels, jnp.int32)
    t1 = float(bbox_thr)
    m = boxes.shape[0]

    def saturated(ov, t2, live):
        # prob > 0 only where IoU > t1 (there t2 >= IoU > t1): also defined where the
        # reference's t1 + 1e-12 rounds to t1 in float32 and an IoU of exactly t1 gives 0/0.
        prob = jnp.clip((ov - t1) / jnp.maximum(t2 - t1, 1e-12), 0.0, 1.0)
        return jnp.where(live[:, None] & (ov > t1), prob, 0.0)

    levels = _levels(pred, boxes, match_rows, t1, priors)
    if len(levels) == 1:  # one pass over all boxes
        cols, area = levels[0].cols, levels[0].area

        def chunk_body(carry, rows, ids, live):
            ov = common.iou_with_box(cols, area, rows)  # [chunk, N]
            t2 = jnp.maximum(common.max_nonneg(ov, axis=1)[:, None], t1 + 1e-12)
            return body(carry, saturated(ov, t2, live), labels[ids], live)

        return common.fold_gt_chunks(chunk_body, init(cols[0].shape[0]), boxes, match_rows,
                                     chunk)

    def fold_level(lv, mask, carry, dense_body):
        """dense_body(carry, ov [chunk, n], ids, live) over the level's boxes."""
        cols, area = lv.cols, lv.area

        def dense(c, rows, ids, live):
            return dense_body(c, common.iou_with_box(cols, area, rows), ids, live)

        return common.fold_gt_chunks(dense, carry, boxes, mask, common.LEVEL_CHUNK)

    # Pass 1: each row's max IoU over the pairs it reaches.
    def max_dense(gmax, ov, ids, live):
        return gmax.at[jnp.where(live, ids, m)].max(common.max_nonneg(ov, axis=1), mode="drop")

    t2 = jnp.full((m,), -1.0, jnp.float32)
    level_max = []
    for lv in levels:
        level_max.append(fold_level(lv, lv.reach, t2, max_dense))
    level_max = jnp.stack(level_max, axis=1)  # [M, L]
    t2 = jnp.max(level_max, axis=1)

    # Pass 2: the rows with some IoU > t1 on a level, over that level.
    def prob_dense(carry, ov, ids, live):
        return body(carry, saturated(ov, t2[ids][:, None], live), labels[ids], live)

    out = []
    for lv, lmax in zip(levels, level_max.T):
        out.append(fold_level(lv, lmax > t1, init(lv.size), prob_dense))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *out)


def _levels(pred: Array, boxes: Array, match_rows: Array, t1: float,
            priors: Priors | None) -> list[lattice.Piece]:
    """The pieces of `priors` (`lattice.row_bands`: its levels, cut into bands of
    feature rows; one piece of all boxes without), each with `reach` [M], the GT rows
    that can have an IoU > t1 with one of the piece's boxes (`lattice.may_reach`)."""
    cols = common.columns(pred)
    area = box_ops.areas(pred)
    if priors is None or len(priors.level_sizes) < 2:
        return [lattice.Piece(0, pred.shape[0], cols, area, match_rows)]
    return lattice.reaching_pieces(priors, cols, area, boxes, match_rows, t1)


def _probability_slots(
    pred_boxes: Array, gt: GroundTruth, bbox_thr: float, slots: int, chunk: int,
    priors: Priors | None = None,
) -> tuple[Array, Array, Array]:
    """One image: (labels [S, N] int32 (-1 empty), probabilities [S, N], overflow []).

    Each GT row's nonzero probabilities go to the slot of its label (max) or to the
    first empty slot; `overflow`: some anchor had a nonzero probability for more
    than `slots` classes (its result is then incomplete).
    """

    def body(state, prob, labels, live):
        slot_l, slot_p, over = list(state[0]), list(state[1]), state[2]
        for j in range(prob.shape[0]):
            label, p = labels[j], prob[j]
            pending = p > 0  # (0 on filler rows)
            for k in range(slots):  # the slot of this label, if any
                same = pending & (slot_l[k] == label)
                slot_p[k] = jnp.where(same, jnp.maximum(slot_p[k], p), slot_p[k])
                pending = pending & ~same
            for k in range(slots):  # else the first empty slot
                put = pending & (slot_l[k] < 0)
                slot_l[k] = jnp.where(put, label, slot_l[k])
                slot_p[k] = jnp.where(put, p, slot_p[k])
                pending = pending & ~put
            over = over | pending
        return tuple(slot_l), tuple(slot_p), over

    def init(n):
        return (
            tuple(jnp.full((n,), -1, jnp.int32) for _ in range(slots)),
            tuple(jnp.zeros((n,), jnp.float32) for _ in range(slots)),
            jnp.zeros((n,), bool),
        )

    slot_l, slot_p, over = _fold_probability(pred_boxes, gt, bbox_thr, body, init, chunk,
                                             priors)
    return jnp.stack(slot_l), jnp.stack(slot_p), jnp.any(over)


class SlotProbability(NamedTuple):
    """P{a in A+} of a batch in sparse form (`positive_probability_slots`).

    labels: [B, S, N] int32 class of slot s of anchor n, -1 for an empty slot.
    probs:  [B, S, N] float32 its probability (0 in empty slots); every class not
            in an anchor's slots has probability 0 ...
    overflow: [] bool ... unless this is True: some anchor of the batch had more
            nonzero classes than S, and the slots are incomplete.
    """

    labels: Array
    probs: Array
    overflow: Array


def positive_probability_slots(
    pred_boxes: Array,
    gt: GroundTruth,
    *,
    bbox_thr: float = BBOX_THR,
    slots: int = PROB_SLOTS,
    priors: Priors | None = None,
    method: str = "auto",
    chunk: int = 8,
) -> SlotProbability:
    """The nonzero entries of `positive_probability` for a batch, as (class, prob)
    slots: pred_boxes [B, N, 4], gt leaves [B, M, ...] -> SlotProbability [B, S, N].

    An anchor's probability is nonzero only for the classes of GTs its box overlaps
    at IoU > t1: one or two in practice, so S = `slots` pairs per anchor hold it
    exactly unless `overflow`. O(S N) memory instead of the [N, C] of the dense form
    (`slots_to_dense`, `positive_probability_batch`). Arguments as `positive_probability`.
    """
    pieces = _pieces_of(priors, method)
    labels, probs, over = jax.vmap(
        lambda b, g: _probability_slots(b, g, bbox_thr, int(slots), chunk, pieces)
    )(pred_boxes, gt)
    return SlotProbability(labels=labels, probs=probs, overflow=jnp.any(over))


def slots_to_dense(slot_prob: SlotProbability, num_classes: int) -> Array:
    """[B, N, C] float32 from the slots (exact where not `slot_prob.overflow`)."""
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    labels, probs = slot_prob.labels, slot_prob.probs
    out = jnp.zeros(probs.shape[:1] + probs.shape[2:] + (num_classes,), jnp.float32)
    for s in range(labels.shape[1]):
        out = jnp.where(labels[:, s, :, None] == classes, probs[:, s, :, None], out)
    return out


def positive_probability_batch(
    pred_boxes: Array,
    gt: GroundTruth,
    num_classes: int,
    *,
    bbox_thr: float = BBOX_THR,
    slots: int = PROB_SLOTS,
    priors: Priors | None = None,
    method: str = "auto",
    chunk: int = 8,
) -> Array:
    """`positive_probability` of a batch: pred_boxes [B, N, 4], gt leaves [B, M, ...]
    -> [B, N, C] float32, equal to `jax.vmap(positive_probability)`: the dense form of
    `positive_probability_slots`, or the exact per-class scatter where the batch
    overflows its slots (one `lax.cond` outside the vmap). Arguments as there.
    """
    slot_prob = positive_probability_slots(pred_boxes, gt, bbox_thr=bbox_thr, slots=slots,
                                           priors=priors, method=method, chunk=chunk)

    def exact():
        return jax.vmap(lambda b, g: positive_probability(
            b, g, num_classes, bbox_thr=bbox_thr, priors=priors, method=method, chunk=chunk)
        )(pred_boxes, gt)

    return lax.cond(slot_prob.overflow, exact, lambda: slots_to_dense(slot_prob, num_classes))
