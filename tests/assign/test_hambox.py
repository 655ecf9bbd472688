"""HAMBox anchor matching and online compensation (jaxdet.assign.hambox)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import hambox as ham
from jaxdet.core.types import GroundTruth, Priors
from tests.assign import numpy_ref


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


def _gt(boxes, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = boxes.shape[0]
    return GroundTruth(
        boxes=jnp.asarray(boxes),
        labels=jnp.zeros((m,), jnp.int32),
        valid=jnp.asarray(np.ones(m, bool) if valid is None else valid),
        ignore=jnp.asarray(np.zeros(m, bool) if ignore is None else ignore),
    )


# GT [0, 0, 10, 10]. Anchor IoUs with it: a0 1, a1 50/150 = 1/3 (< 0.35), a2 0,
# a3 0, a4 0, a5 0.
GT = [[0, 0, 10, 10]]
ANCHORS = [
    [0, 0, 10, 10],
    [5, 0, 15, 10],
    [20, 0, 30, 10],
    [40, 0, 50, 10],
    [60, 0, 70, 10],
    [80, 0, 90, 10],
]
# Regressed boxes: a1 -> IoU 80/100 = 0.8, a2 -> exactly the GT (1.0), a3 -> IoU 0.6,
# a4 -> IoU 0.45 (< T2), a5 stays far away.
PRED = [
    [0, 0, 10, 10],
    [2, 0, 10, 10],
    [0, 0, 10, 10],
    [0, 0, 6, 10],
    [0, 0, 4.5, 10],
    [80, 0, 90, 10],
]


def test_match_thresholds_and_best_anchor():
    # a0 is matched at IoU 1; a1 (1/3) is below T1 = 0.35 and a negative.
    a = ham.match(_priors(ANCHORS), _gt(GT))
    np.testing.assert_array_equal(a.gt_index, [0, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(a.quality, [1, 0, 0, 0, 0, 0])
    # A GT overlapping no anchor above T1 keeps its best one (a1 here: IoU 1/3).
    a = ham.match(_priors(ANCHORS[1:]), _gt(GT))
    np.testing.assert_array_equal(a.gt_index, [0, -1, -1, -1, -1])
    # T1 = 0.3 makes a1 a regular positive.
    a = ham.match(_priors(ANCHORS), _gt(GT), pos_iou_thr=0.3)
    np.testing.assert_array_equal(a.gt_index[:2], [0, 0])


def test_compensation_hand_computed():
    priors, gt = _priors(ANCHORS), _gt(GT)
    a, comp = ham.assign(priors, gt, jnp.asarray(PRED, jnp.float32))
    # K = 5, n = 1 matched -> budget 4; candidates with regressed IoU >= 0.5: a2 (1.0),
    # a1 (0.8), a3 (0.6). a4 (0.45) is below T2.
    np.testing.assert_array_equal(a.gt_index, [0, 0, 0, 0, -1, -1])
    np.testing.assert_allclose(a.quality, [1, 0.8, 1.0, 0.6, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(comp, [False, True, True, True, False, False])
    # K = 3: budget 2 -> the two best regressed IoUs (a2, a1).
    a, comp = ham.assign(priors, gt, jnp.asarray(PRED, jnp.float32), k=3)
    np.testing.assert_array_equal(a.gt_index, [0, 0, 0, -1, -1, -1])
    # K = 1: the GT already has its one anchor -> nothing added ...
    a, comp = ham.assign(priors, gt, jnp.asarray(PRED, jnp.float32), k=1)
    assert not np.any(comp) and np.sum(np.asarray(a.gt_index) == 0) == 1
    # ... unless the budget does not count the matched anchors.
    a, comp = ham.assign(priors, gt, jnp.asarray(PRED, jnp.float32), k=1, count_matched=False)
    np.testing.assert_array_equal(np.nonzero(np.asarray(comp))[0], [2])
    # K = 0 is stage 1 alone; T2 = 0.4 admits a4 too.
    a, comp = ham.assign(priors, gt, jnp.asarray(PRED, jnp.float32), k=0)
    np.testing.assert_array_equal(a.gt_index, [0, -1, -1, -1, -1, -1])
    a, comp = ham.assign(priors, gt, jnp.asarray(PRED, jnp.float32), iou_thr=0.4)
    np.testing.assert_array_equal(comp, [False, True, True, True, True, False])


def test_anchor_goes_to_the_gt_it_regresses_to_best():
    # Two GTs; a2's regressed box overlaps GT 1 (IoU 1) more than GT 0 (IoU 0.6 ...).
    gts = [[0, 0, 10, 10], [0, 0, 10, 6]]
    anchors = [[0, 0, 10, 10], [0, 0, 10, 6], [50, 50, 60, 60], [70, 70, 80, 80]]
    pred = [[0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 6], [0, 0, 10, 9]]
    a, comp = ham.assign(_priors(anchors), _gt(gts), jnp.asarray(pred, jnp.float32))
    # stage 1: a0 -> GT 0 (IoU 1), a1 -> GT 1 (IoU 1; with GT 0 only 0.6).
    np.testing.assert_array_equal(a.gt_index, [0, 1, 1, 0])
    np.testing.assert_allclose(a.quality, [1, 1, 1, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(comp, [False, False, True, True])


def test_ignore_padding_and_empty_image():
    anchors = _priors(ANCHORS)
    pred = jnp.asarray(PRED, jnp.float32)
    # An ignore region over a2 (IoF 1): a2 becomes -2 and is never compensated.
    gt = _gt([GT[0], [19, 0, 31, 10], [np.nan] * 4], valid=[True, True, False],
             ignore=[False, True, False])
    a, comp = ham.assign(anchors, gt, pred)
    g = np.asarray(a.gt_index)
    assert g[2] == -2 and not comp[2]
    np.testing.assert_array_equal(g, [0, 0, -2, 0, -1, -1])
    assert not np.any(g >= 1)  # the ignore row and the padding row match nothing
    # An image without GT: all background, nothing compensated, qualities 0.
    gt = _gt([[np.nan] * 4, [np.nan] * 4], valid=[False, False])
    a, comp = ham.assign(anchors, gt, pred)
    np.testing.assert_array_equal(a.gt_index, -np.ones(6))
    assert not np.any(comp) and not np.any(np.asarray(a.quality))


# candidates: 256 ranks every image's candidates directly; 1 and 6 send the images
# with more than that through the rounds over all anchors (a batch mixing both).
@pytest.mark.parametrize("count_matched,candidates", [(True, 256), (False, 256), (True, 1),
                                                      (False, 6)])
def test_matches_numpy_reference_on_random_cases(count_matched, candidates):
    rng = np.random.default_rng(0)
    b, m, n = 6, 7, 300
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(4, 40, (n, 2))
    anchors = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes, labels, valid, ignore = numpy_ref.random_gt(rng, b, m, (128, 128), max_wh=50)
    # Regressed boxes: each anchor moved towards a random GT of its image, plus noise.
    preds = []
    for i in range(b):
        target = np.where(valid[i][:, None], boxes[i], anchors[:m])
        pick = target[rng.integers(0, m, n)]
        mix = rng.uniform(0, 1, (n, 1))
        preds.append(mix * pick + (1 - mix) * anchors + rng.normal(0, 1.5, (n, 4)))
    preds = np.stack(preds).astype(np.float32)
    priors = _priors(anchors)
    gt = GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels),
                     valid=jnp.asarray(valid), ignore=jnp.asarray(ignore))
    fn = jax.jit(jax.vmap(lambda g, p: ham.compensate(
        ham.match(priors, g), g, p, count_matched=count_matched, candidates=candidates)))
    a, comp = fn(gt, jnp.asarray(preds))
    total = 0
    for i in range(b):
        ref_g, ref_q, ref_c = numpy_ref.hambox(anchors, boxes[i], valid[i], ignore[i], preds[i],
                                               count_matched=count_matched)
        np.testing.assert_array_equal(np.asarray(a.gt_index[i]), ref_g, err_msg=f"image {i}")
        np.testing.assert_allclose(np.asarray(a.quality[i]), ref_q, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(comp[i]), ref_c)
        total += ref_c.sum()
        # Invariants: at most K positives gained per GT; qualities in [0, 1].
        g = np.asarray(a.gt_index[i])
        for j in np.nonzero(valid[i] & ~ignore[i])[0]:
            assert np.sum(np.asarray(comp[i]) & (g == j)) <= 5
        assert not np.any(np.isin(g, np.nonzero(~valid[i] | ignore[i])[0]))
    assert np.all((np.asarray(a.quality) >= 0) & (np.asarray(a.quality) <= 1))
    assert total > 10  # the random case exercises the compensation


def test_level_folds_match_numpy_reference_on_a_lattice():
    # make_anchors priors: with method 'auto' stage 1 takes max_iou's lattice path and
    # stage 2 folds each GT only over the levels whose regressed boxes can reach T2; both
    # must give the reference's result exactly, and the dense method's.
    from jaxdet.core import priors as priors_lib

    strides = (8, 16, 32, 64, 128)
    p = priors_lib.make_anchors(priors_lib.feature_shapes((96, 128), strides), strides,
                                octave_base_scale=2.72, scales_per_octave=1, ratios=(1.0,))
    anchors = np.asarray(p.boxes)
    n, b, m = anchors.shape[0], 4, 8
    rng = np.random.default_rng(1)
    boxes, labels, valid, ignore = numpy_ref.random_gt(rng, b, m, (96, 128), max_wh=50)
    preds = []
    for i in range(b):
        target = np.where(valid[i][:, None], boxes[i], anchors[:m])
        mix = rng.uniform(0, 1, (n, 1))
        preds.append(mix * target[rng.integers(0, m, n)] + (1 - mix) * anchors
                     + rng.normal(0, 1.5, (n, 4)))
    preds = np.stack(preds).astype(np.float32)
    gt = GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels),
                     valid=jnp.asarray(valid), ignore=jnp.asarray(ignore))
    a, comp = jax.jit(jax.vmap(lambda g, q: ham.assign(p, g, q)))(gt, jnp.asarray(preds))
    for i in range(b):
        ref_g, ref_q, ref_c = numpy_ref.hambox(anchors, boxes[i], valid[i], ignore[i], preds[i])
        np.testing.assert_array_equal(np.asarray(a.gt_index[i]), ref_g, err_msg=f"image {i}")
        np.testing.assert_allclose(np.asarray(a.quality[i]), ref_q, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(comp[i]), ref_c)
    assert np.asarray(comp).sum() > 10
    d, d_comp = jax.jit(jax.vmap(lambda g, q: ham.assign(p, g, q, method="dense")))(
        gt, jnp.asarray(preds))
    for x, y in zip((a.gt_index, a.quality, comp), (d.gt_index, d.quality, d_comp)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="unknown method"):
        ham.assign(p, jax.tree_util.tree_map(lambda x: x[0], gt), preds[0], method="levels")
