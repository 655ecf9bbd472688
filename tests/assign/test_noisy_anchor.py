"""Noisy-anchor candidate bags and cleanliness (jaxdet.assign.noisy_anchor)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import lattice
from jaxdet.assign import noisy_anchor as na
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors


def _priors(boxes) -> Priors:
    boxes = jnp.asarray(boxes, jnp.float32)
    n = boxes.shape[0]
    return Priors(
        boxes=boxes,
        centers=(boxes[:, :2] + boxes[:, 2:]) / 2,
        strides=jnp.full((n,), 8.0),
        levels=jnp.zeros((n,), jnp.int32),
        level_sizes=(n,),
    )


def _gt(boxes, labels=None, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = boxes.shape[0]
    return GroundTruth(
        boxes=jnp.asarray(boxes),
        labels=jnp.asarray(np.zeros(m, np.int32) if labels is None else labels, jnp.int32),
        valid=jnp.asarray(np.ones(m, bool) if valid is None else valid),
        ignore=jnp.asarray(np.zeros(m, bool) if ignore is None else ignore),
    )


def _bags(priors, gt, **kw):
    return jax.jit(lambda g: na.candidate_bags(priors, g, **kw))(gt)


# p0..p5; IoUs worked out by hand in the tests below.
PRIORS = [
    [0, 0, 10, 10],
    [0, 0, 10, 20],
    [5, 0, 15, 10],
    [20, 20, 30, 30],
    [100, 100, 110, 110],
    [22, 20, 32, 30],
]


def _np_iou(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, np.float32(1e-6))


def reference_bags(priors, boxes, valid, ignore, topk, min_pos_iou=0.0, ignore_iof_thr=0.5):
    """The port's `TopNIoUAssigner.assign_wrt_overlaps` (tasavat/mmdetection), a loop per
    GT and per bag member (ties at the N-th place: lower anchor index), then jaxdet's crowd
    rule (anchors covered by a crowd box leave their bag: -2); jaxdet's gt_index."""
    priors = np.asarray(priors, np.float32)
    boxes, valid, ignore = (np.asarray(x) for x in (boxes, valid, ignore))
    n = len(priors)
    ignored = np.zeros(n, bool)
    crowd = boxes[valid & ignore]
    if ignore_iof_thr > 0 and len(crowd):
        lt = np.maximum(priors[:, None, :2], crowd[None, :, :2])
        rb = np.minimum(priors[:, None, 2:], crowd[None, :, 2:])
        wh = np.clip(rb - lt, 0, None)
        area = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
        iof = wh[..., 0] * wh[..., 1] / np.maximum(area[:, None], 1e-6)
        ignored = iof.max(1) > ignore_iof_thr
    rows = list(np.nonzero(valid & ~ignore)[0])
    out = np.full(n, -1, np.int32)
    qual = np.zeros(n, np.float32)
    if rows:
        ov = _np_iou(boxes[rows], priors)
        for i, row in enumerate(rows):
            for ind in np.argsort(-ov[i], kind="stable")[:topk]:
                iou = ov[i, ind]
                if iou <= min_pos_iou:
                    break
                if out[ind] < 0 or ov[rows.index(out[ind]), ind] < iou:
                    out[ind], qual[ind] = row, iou
    out[ignored], qual[ignored] = -2, 0
    return out, qual


def test_hand_computed_bags():
    # GT0 = p0: IoU p0 1, p1 0.5, p2 1/3 -> top-2 {p0, p1}.
    # GT1 = p3: IoU p3 1, p5 80/120 = 2/3 -> top-2 {p3, p5}.
    a = _bags(_priors(PRIORS), _gt([[0, 0, 10, 10], [20, 20, 30, 30]]), topk=2)
    np.testing.assert_array_equal(a.gt_index, [0, 0, -1, 1, -1, 1])
    np.testing.assert_allclose(a.quality, [1, 0.5, 0, 1, 0, 2 / 3], rtol=1e-6)


def test_collision_goes_to_the_higher_iou_and_ties_to_the_earlier_gt():
    # GT2 = p1 (row 2): IoU p1 1, p0 0.5 -> bag {p1, p0}; p0 stays with GT0 (1 > 0.5),
    # p1 moves to GT2 (1 > 0.5).
    gt = _gt([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 20]])
    a = _bags(_priors(PRIORS), gt, topk=2)
    np.testing.assert_array_equal(a.gt_index, [0, 2, -1, 1, -1, 1])
    # Two identical GTs: every tie keeps the first row.
    a = _bags(_priors(PRIORS), _gt([[0, 0, 10, 10], [0, 0, 10, 10]]), topk=3)
    np.testing.assert_array_equal(a.gt_index, [0, 0, 0, -1, -1, -1])


def test_anchors_without_overlap_never_join_a_bag():
    # GT1's third-best anchor has IoU 0: the bag stops at 2 (min_pos_iou 0).
    a = _bags(_priors(PRIORS), _gt([[20, 20, 30, 30]]), topk=4)
    np.testing.assert_array_equal(a.gt_index, [-1, -1, -1, 0, -1, 0])
    # min_pos_iou 0.7 drops p5 (2/3).
    a = _bags(_priors(PRIORS), _gt([[20, 20, 30, 30]]), topk=4, min_pos_iou=0.7)
    np.testing.assert_array_equal(a.gt_index, [-1, -1, -1, 0, -1, -1])
    with pytest.raises(ValueError, match="min_pos_iou"):
        na.candidate_bags(_priors(PRIORS), _gt([[20, 20, 30, 30]]), min_pos_iou=-0.1)


def test_topk_larger_than_the_number_of_anchors():
    a = _bags(_priors(PRIORS), _gt([[0, 0, 12, 12]]), topk=50)
    np.testing.assert_array_equal(a.gt_index, [0, 0, 0, -1, -1, -1])


HW = (64, 96)  # not square: catches a swapped grid
STRIDES = (8, 16, 32)
GRID = priors_lib.feature_shapes(HW, STRIDES)


def _anchors(num_base: int = 9):
    if num_base == 1:
        p = priors_lib.make_anchors(
            GRID, STRIDES, octave_base_scale=8, scales_per_octave=1, ratios=(1.0,)
        )
    else:
        p = priors_lib.make_anchors(GRID, STRIDES)
    return jax.tree_util.tree_map(jnp.asarray, p), np.asarray(p.boxes)


def _random_case(rng, m=7, n_pad=3, crowd=True):
    """Random GTs of 2..90 px (some across the border), NaN padding rows, one crowd box."""
    xy = rng.uniform(-8, 80, size=(m, 2))
    wh = rng.uniform(2, 90, size=(m, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes = np.concatenate([boxes, np.full((n_pad, 4), np.nan, np.float32)])  # padding: NaN
    valid = np.r_[np.ones(m, bool), np.zeros(n_pad, bool)]
    ignore = np.zeros(m + n_pad, bool)
    ignore[m - 1] = crowd
    labels = rng.integers(0, 3, m + n_pad).astype(np.int32)
    return boxes, labels, valid, ignore


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("topk,chunk", [(50, 8), (9, 3)])
def test_dense_matches_the_reference_loop(seed, topk, chunk):
    priors, anchors = _anchors()
    boxes, labels, valid, ignore = _random_case(np.random.default_rng(seed))
    fn = jax.jit(lambda g: na.candidate_bags(priors, g, topk=topk, chunk=chunk, method="dense"))
    a = fn(_gt(boxes, labels, valid, ignore))
    want, qual = reference_bags(anchors, boxes, valid, ignore, topk)
    np.testing.assert_array_equal(np.asarray(a.gt_index), want)
    np.testing.assert_allclose(np.asarray(a.quality), qual, atol=1e-6)


@pytest.mark.parametrize("num_base,topk", [(9, 50), (9, 7), (1, 50), (1, 400)])
def test_grid_selects_the_same_ious_as_dense(num_base, topk):
    """The staircase candidates hold every GT's top-k IoUs (ties may pick other anchors)."""
    priors, anchors = _anchors(num_base)
    boxes, _, valid, _ = _random_case(np.random.default_rng(7), m=24, n_pad=0, crowd=False)
    boxes = jnp.asarray(boxes)
    val_g, idx_g = jax.jit(
        lambda b: lattice.top_iou(priors.boxes, priors.level_sizes, GRID, priors.num_base,
                                  b, topk)
    )(boxes)
    val_d, _ = jax.jit(lambda b: lattice.top_k_iou(priors, b, jnp.asarray(valid), topk,
                                                   method="dense"))(boxes)
    k = min(topk, anchors.shape[0])
    assert val_g.shape == val_d.shape == (24, k)
    np.testing.assert_allclose(np.asarray(val_g), np.asarray(val_d), atol=1e-6)  # XLA rounding
    iou = _np_iou(np.asarray(boxes), anchors)
    idx_g = np.asarray(idx_g)
    np.testing.assert_allclose(np.take_along_axis(iou, idx_g, 1), val_g, atol=1e-6)
    assert all(len(set(row)) == k for row in idx_g)  # no anchor twice in a bag


def test_grid_equals_dense_without_collisions():
    """Far-apart GTs (no anchor in two bags): every GT's bag has the same IoUs both ways."""
    priors, anchors = _anchors()
    boxes = np.array(
        [[2, 3, 20, 14], [60, 30, 95, 63], [30, 40, 40, 50], [40, 0, 60, 8]], np.float32
    )
    gt = _gt(boxes, labels=[0, 1, 2, 0])
    g = jax.jit(lambda g: na.candidate_bags(priors, g, topk=20))(gt)
    d = jax.jit(lambda g: na.candidate_bags(priors, g, topk=20, method="dense"))(gt)
    for j in range(4):
        qg = np.sort(np.asarray(g.quality)[np.asarray(g.gt_index) == j])
        qd = np.sort(np.asarray(d.quality)[np.asarray(d.gt_index) == j])
        np.testing.assert_allclose(qg, qd, atol=1e-6)
        assert 0 < len(qg) <= 20


def test_method_and_priors_off_the_lattice():
    priors, _ = _anchors()
    gt = _gt([[0, 0, 10, 10], [30, 20, 60, 50]])
    with pytest.raises(ValueError, match="unknown method"):
        na.candidate_bags(priors, gt, method="grid")
    # A grid of the right sizes whose columns are not evenly spaced is no lattice
    # (`lattice.check_tiling`): 'auto' takes the dense path there.
    boxes = np.asarray(priors.boxes).copy()
    n0 = priors.level_sizes[0]
    lvl = boxes[:n0].reshape(GRID[0][0], GRID[0][1], priors.num_base, 4)
    lvl[:, -1, :, [0, 2]] += 3.0  # shift the last column of level 0
    bad = priors.replace(boxes=np.concatenate([lvl.reshape(-1, 4), boxes[n0:]]))
    for off in (bad, priors.replace(feature_shapes=None)):
        a = _bags(off, gt, topk=20)
        d = _bags(off, gt, topk=20, method="dense")
        np.testing.assert_array_equal(a.gt_index, d.gt_index)
        np.testing.assert_array_equal(a.quality, d.quality)


@pytest.mark.parametrize("method", ["auto", "dense"])
def test_invariants(method):
    priors, anchors = _anchors()
    boxes, labels, valid, ignore = _random_case(np.random.default_rng(3), m=9)
    topk = 20
    a = _bags(priors, _gt(boxes, labels, valid, ignore), topk=topk, method=method)
    g = np.asarray(a.gt_index)
    rows = np.nonzero(valid & ~ignore)[0]
    assert set(np.unique(g[g >= 0])) <= set(rows)  # padding and crowd never positive
    counts = np.bincount(g[g >= 0], minlength=len(boxes))
    assert counts.max() <= topk and np.all(counts[rows] > 0)
    assert np.all(np.isin(g, [-2, -1, *rows]))
    assert np.any(g == -2)  # the crowd box covers some anchors
    q = np.asarray(a.quality)
    assert np.all(q[g < 0] == 0) and np.all((q[g >= 0] > 0) & (q[g >= 0] <= 1))
    # quality = IoU with the assigned GT, which is that anchor's best IoU among its bags.
    iou = _np_iou(np.nan_to_num(boxes), anchors)
    np.testing.assert_allclose(q[g >= 0], iou[g[g >= 0], np.nonzero(g >= 0)[0]], atol=1e-6)


def test_no_gt_is_all_background_and_crowd_only_is_ignored():
    a = _bags(_priors(PRIORS), _gt(np.zeros((2, 4)), valid=[False, False]))
    np.testing.assert_array_equal(a.gt_index, [-1] * 6)
    assert np.all(np.asarray(a.quality) == 0)
    a = _bags(
        _priors(PRIORS), _gt([[0, 0, 10, 20]], valid=[True], ignore=[True]), topk=3
    )
    np.testing.assert_array_equal(a.gt_index, [-2, -2, -1, -1, -1, -1])


def test_cleanliness_hand_computed():
    gt = _gt([[0, 0, 10, 10], [20, 20, 30, 30]], labels=[2, 0])
    bags = na.candidate_bags(_priors(PRIORS), gt, topk=2)  # [0, 0, -1, 1, -1, 1]
    pred = np.asarray(PRIORS, np.float32).copy()
    pred[1] = [0, 0, 10, 10]  # p1 regressed onto GT0 exactly -> loc 1
    pred[5] = [20, 20, 30, 40]  # p5 -> IoU with GT1 = 100 / 200
    scores = np.zeros((6, 3), np.float32)
    scores[:, 2] = 0.4  # GT0's class
    scores[:, 0] = 0.8  # GT1's class
    scores[:, 1] = 0.9  # no GT has class 1
    loc, cls = na.cleanliness_terms(bags.gt_index, gt, jnp.asarray(pred), jnp.asarray(scores))
    np.testing.assert_allclose(loc, [1, 1, 0, 1, 0, 0.5], atol=1e-6)
    np.testing.assert_allclose(cls, [0.4, 0.4, 0, 0.8, 0, 0.8], atol=1e-6)
    a = na.assign(_priors(PRIORS), gt, jnp.asarray(pred), jnp.asarray(scores), topk=2)
    np.testing.assert_array_equal(a.gt_index, bags.gt_index)
    want = 0.75 * np.array([1, 1, 0, 1, 0, 0.5]) + 0.25 * np.array([0.4, 0.4, 0, 0.8, 0, 0.8])
    np.testing.assert_allclose(a.quality, want, atol=1e-6)
    a = na.assign(_priors(PRIORS), gt, jnp.asarray(pred), jnp.asarray(scores), topk=2, alpha=0.0)
    np.testing.assert_allclose(a.quality, [0.4, 0.4, 0, 0.8, 0, 0.8], atol=1e-6)


def test_predictions_carry_no_gradient():
    gt = _gt([[0, 0, 10, 10], [20, 20, 30, 30]], labels=[1, 0])
    pred = jnp.asarray(PRIORS, jnp.float32) + 1.0
    scores = jnp.full((6, 3), 0.3)

    def total(b, s):
        return jnp.sum(na.assign(_priors(PRIORS), gt, b, s, topk=2).quality)

    gb, gs = jax.grad(total, argnums=(0, 1))(pred, scores)
    assert np.all(np.asarray(gb) == 0) and np.all(np.asarray(gs) == 0)
    assert float(total(pred, scores)) > 0


def test_jit_vmap_batch():
    rng = np.random.default_rng(5)
    priors, anchors = _anchors()
    cases = [_random_case(rng) for _ in range(3)]
    gt = GroundTruth(*(jnp.asarray(np.stack([c[i] for c in cases])) for i in range(4)))
    n = anchors.shape[0]
    pred = jnp.broadcast_to(priors.boxes, (3, n, 4))
    scores = jnp.asarray(rng.uniform(size=(3, n, 3)), jnp.float32)
    fn = jax.jit(jax.vmap(lambda g, b, s: na.assign(priors, g, b, s, method="dense")))
    out = fn(gt, pred, scores)
    assert out.gt_index.shape == out.quality.shape == (3, n)
    assert out.gt_index.dtype == jnp.int32 and out.quality.dtype == jnp.float32
    for i, (boxes, labels, valid, ignore) in enumerate(cases):
        want, iou = reference_bags(anchors, boxes, valid, ignore, 50)
        np.testing.assert_array_equal(np.asarray(out.gt_index[i]), want)
        # Regressed box = anchor: loc = the anchor's IoU; cls = the score of the GT class.
        lab = labels[np.maximum(want, 0)]
        cls = np.asarray(scores[i])[np.arange(n), lab]
        q = np.where(want >= 0, 0.75 * iou + 0.25 * cls, 0)
        np.testing.assert_allclose(np.asarray(out.quality[i]), q, atol=1e-5)
    grid = jax.jit(jax.vmap(lambda g, b, s: na.assign(priors, g, b, s)))
    out = grid(gt, pred, scores)
    q = np.asarray(out.quality)
    assert np.all((q >= 0) & (q <= 1)) and np.all(q[np.asarray(out.gt_index) < 0] == 0)
    # assign passes method on: the same bags as candidate_bags' lattice path (whose
    # tie-breaking differs from the dense path's), cleanliness on top of them.
    bags = jax.jit(jax.vmap(lambda g: na.candidate_bags(priors, g)))(gt)
    np.testing.assert_array_equal(np.asarray(out.gt_index), np.asarray(bags.gt_index))
    for i in range(3):
        loc, cls = na.cleanliness_terms(bags.gt_index[i], jax.tree.map(lambda a, i=i: a[i], gt),
                                        pred[i], scores[i])
        np.testing.assert_allclose(q[i], np.asarray(na.cleanliness(loc, cls)), atol=1e-6)
