"""jaxdet.assign.anchor_bags against hand-computed cases and NumPy versions of
FreeAnchor's bag construction and P{a in A+} (mmdetection FreeAnchorRetinaHead)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import anchor_bags
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors

from . import numpy_ref as ref


def _row_priors(n=6) -> Priors:
    # n anchors 8 x 8 in a row: x1 = 0, 8, 16, ...
    x = 8.0 * np.arange(n, dtype=np.float32)
    boxes = np.stack([x, np.zeros(n), x + 8, np.full(n, 8.0)], -1).astype(np.float32)
    return Priors(
        boxes=boxes,
        centers=np.stack([x + 4, np.full(n, 4.0)], -1).astype(np.float32),
        strides=np.full((n,), 8.0, np.float32),
        levels=np.zeros((n,), np.int32),
        level_sizes=(n,),
    )


def _gt(boxes, labels=None, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = len(boxes)
    return GroundTruth(
        boxes=boxes,
        labels=np.zeros((m,), np.int32) if labels is None else np.asarray(labels, np.int32),
        valid=np.ones((m,), bool) if valid is None else np.asarray(valid),
        ignore=np.zeros((m,), bool) if ignore is None else np.asarray(ignore),
    )


def _random_case(seed, m=7, size=96.0):
    rng = np.random.default_rng(seed)
    shapes = priors_lib.feature_shapes((int(size), int(size)), (8, 16, 32))
    pri = priors_lib.make_anchors(
        shapes, (8, 16, 32), octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1.0, 2.0)
    )
    xy = rng.uniform(0, size * 0.7, (m, 2))
    wh = rng.uniform(6, size * 0.5, (m, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    valid = rng.uniform(size=m) < 0.8
    ignore = rng.uniform(size=m) < 0.2
    labels = rng.integers(0, 3, m)
    return pri, _gt(boxes, labels, valid, ignore)


def test_hand_computed_row():
    p = _row_priors()
    # GT [4, 0, 20, 8]: IoU with anchor 0 = 4*8/(64+128-32) = 0.2, anchor 1 = 64/128 = 0.5,
    # anchor 2 = 0.2, others 0. Top-3: [1, 0, 2] (tie 0.2: lower index first).
    bags = jax.jit(lambda g: anchor_bags.build(p, g, bag_size=3))(_gt([[4, 0, 20, 8]]))
    np.testing.assert_array_equal(bags.index, [[1, 0, 2]])
    np.testing.assert_allclose(bags.iou, [[0.5, 0.2, 0.2]], rtol=1e-6)
    assert bags.valid.all()


def test_padding_and_ignore_rows_get_empty_bags():
    p = _row_priors()
    g = _gt(
        [[4, 0, 20, 8], [0, 0, 8, 8], [16, 0, 40, 8], [1, 1, 2, 2]],
        valid=[True, False, True, True],
        ignore=[False, False, True, False],
    )
    bags = anchor_bags.build(p, g, bag_size=4)
    np.testing.assert_array_equal(bags.valid.all(1), [True, False, False, True])
    np.testing.assert_array_equal(bags.valid.any(1), [True, False, False, True])
    assert np.all(np.asarray(bags.iou)[[1, 2]] == 0)
    # No GT at all: every bag empty.
    none = anchor_bags.build(p, _gt(np.zeros((3, 4)), valid=[False] * 3), bag_size=4)
    assert not np.asarray(none.valid).any()


def test_bag_size_is_clipped_to_the_number_of_anchors():
    p = _row_priors(4)
    bags = anchor_bags.build(p, _gt([[0, 0, 30, 8]]), bag_size=40)
    assert bags.index.shape == (1, 4)
    assert sorted(np.asarray(bags.index)[0].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("method", ["auto", "dense"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_topk(seed, method):
    p, g = _random_case(seed)
    k = 40
    bags = jax.jit(lambda g: anchor_bags.build(p, g, bag_size=k, method=method))(g)
    ov = ref.bbox_overlaps(g.boxes, p.boxes)  # [M, N]
    for i in range(len(g.boxes)):
        if not (g.valid[i] and not g.ignore[i]):
            assert not np.asarray(bags.valid[i]).any()
            continue
        want = np.sort(ov[i])[::-1][:k]
        np.testing.assert_allclose(bags.iou[i], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ov[i][np.asarray(bags.index[i])], want, rtol=1e-5, atol=1e-7)
        assert len(set(np.asarray(bags.index[i]).tolist())) == k  # distinct anchors
        assert np.asarray(bags.valid[i]).all()


def test_method_errors_and_priors_off_the_lattice():
    for bad in ("grid", "fast"):
        with pytest.raises(ValueError, match="unknown method"):
            anchor_bags.build(_row_priors(), _gt([[4, 0, 20, 8]]), method=bad)
    # Row priors are no lattice: 'auto' is the dense fold there.
    a = anchor_bags.build(_row_priors(), _gt([[4, 0, 20, 8], [9, 0, 30, 8]]), bag_size=3)
    d = anchor_bags.build(_row_priors(), _gt([[4, 0, 20, 8], [9, 0, 30, 8]]), bag_size=3,
                          method="dense")
    for x, y in zip(a, d):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="unknown method"):
        anchor_bags.positive_probability(_row_priors().boxes, _gt([[4, 0, 20, 8]]), 3,
                                         method="bands")


def test_chunk_size_does_not_change_the_result():
    p, g = _random_case(3, m=13)
    a = anchor_bags.build(p, g, bag_size=9, chunk=1, method="dense")
    for chunk in (3, 8):
        b = anchor_bags.build(p, g, bag_size=9, chunk=chunk, method="dense")
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def _np_positive_probability(pred, gt, num_classes, thr):
    """mmdetection FreeAnchorRetinaHead.positive_loss_single, the no_grad block."""
    rows = np.nonzero(gt.valid & ~gt.ignore)[0]
    out = np.zeros((len(pred), num_classes), np.float32)
    if len(rows) == 0:
        return out
    iou = ref.bbox_overlaps(gt.boxes[rows], pred)  # [G, N]
    t2 = np.maximum(iou.max(1, keepdims=True), thr + 1e-12)
    prob = np.clip((iou - thr) / (t2 - thr), 0, 1)
    for j, r in enumerate(rows):
        c = gt.labels[r]
        out[:, c] = np.maximum(out[:, c], prob[j])
    return out


def test_positive_probability_hand_computed():
    g = _gt([[0, 0, 10, 10]], labels=[2])
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)
    # IoUs 1, 0.8, 0.5, 0 -> t2 = 1: (IoU - 0.6) / 0.4 clipped = 1, 0.5, 0, 0 in class 2.
    out = jax.jit(lambda b, g: anchor_bags.positive_probability(b, g, 3))(pred, g)
    want = np.zeros((4, 3), np.float32)
    want[:, 2] = [1.0, 0.5, 0.0, 0.0]
    np.testing.assert_allclose(out, want, atol=1e-6)
    # Best IoU below the threshold: t2 = 0.6 + 1e-12, every IoU <= t1 -> all 0.
    low = anchor_bags.positive_probability(pred[2:], g, 3)
    assert float(jnp.max(low)) == 0.0
    # Best IoU exactly t1 (in float32 t1 + 1e-12 == t1, the reference's 0 / 0): 0, not NaN.
    edge = anchor_bags.positive_probability(np.array([[0, 0, 10, 6]], np.float32), g, 3)
    np.testing.assert_array_equal(np.asarray(edge), np.zeros((1, 3)))


def test_positive_probability_takes_the_max_over_gts_of_a_class():
    g = _gt([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 9]], labels=[0, 0, 1])
    pred = np.array([[0, 0, 10, 8], [0, 0, 10, 10]], np.float32)
    out = np.asarray(anchor_bags.positive_probability(pred, g, 2))
    # class 0: GT0 gives pred1 -> 1, pred0 -> (0.8-.6)/.4 = .5; GT1 gives pred0 -> 1: max.
    np.testing.assert_allclose(out[:, 0], [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out, _np_positive_probability(pred, g, 2, 0.6), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_positive_probability_matches_numpy(seed):
    p, g = _random_case(seed, m=9)
    rng = np.random.default_rng(seed + 10)
    # Predicted boxes: anchors jittered towards the GTs so some pass the threshold.
    gt_pick = g.boxes[rng.integers(0, len(g.boxes), len(p.boxes))]
    w = rng.uniform(0, 1, (len(p.boxes), 1))
    pred = (w * gt_pick + (1 - w) * p.boxes + rng.normal(0, 1, p.boxes.shape)).astype(np.float32)
    pred = np.concatenate(
        [np.minimum(pred[:, :2], pred[:, 2:]), np.maximum(pred[:, :2], pred[:, 2:]) + 1], -1
    )
    out = np.asarray(anchor_bags.positive_probability(pred, g, 3))
    want = _np_positive_probability(pred, g, 3, 0.6)
    np.testing.assert_allclose(out, want, atol=1e-5)
    by_level = anchor_bags.positive_probability(pred, g, 3, priors=p)
    np.testing.assert_array_equal(np.asarray(by_level), out)
    assert out.min() >= 0 and out.max() <= 1
    if (g.valid & ~g.ignore).any():
        assert out.max() == pytest.approx(1.0)  # each GT's best box maps to 1


def test_no_gt_gives_zero_probability():
    p = _row_priors()
    g = _gt(np.zeros((2, 4)), valid=[False, True], ignore=[False, True])
    assert float(jnp.max(anchor_bags.positive_probability(p.boxes, g, 3))) == 0.0


def test_jit_vmap_over_a_batch():
    p, g0 = _random_case(5)
    _, g1 = _random_case(6)
    batch = jax.tree_util.tree_map(lambda a, b: np.stack([a, b]), g0, g1)
    fn = jax.jit(jax.vmap(lambda g: anchor_bags.build(p, g, bag_size=12)))
    bags = fn(batch)
    assert bags.index.shape == (2, 7, 12) and bags.index.dtype == jnp.int32
    for i, g in enumerate((g0, g1)):
        one = anchor_bags.build(p, g, bag_size=12)
        np.testing.assert_array_equal(bags.index[i], one.index)
        np.testing.assert_array_equal(bags.valid[i], one.valid)
    probs = jax.jit(jax.vmap(lambda b, g: anchor_bags.positive_probability(b, g, 3)))(
        np.stack([p.boxes, p.boxes]), batch
    )
    assert probs.shape == (2, len(p.boxes), 3)
    np.testing.assert_allclose(probs[1], anchor_bags.positive_probability(p.boxes, g1, 3))


def _jittered_preds(p, g, seed):
    """Predicted boxes: anchors pulled towards random GTs, so many pass the threshold."""
    rng = np.random.default_rng(seed + 10)
    gt_pick = g.boxes[rng.integers(0, len(g.boxes), len(p.boxes))]
    w = rng.uniform(0, 1, (len(p.boxes), 1))
    pred = (w * gt_pick + (1 - w) * p.boxes + rng.normal(0, 1, p.boxes.shape)).astype(np.float32)
    return np.concatenate(
        [np.minimum(pred[:, :2], pred[:, 2:]), np.maximum(pred[:, :2], pred[:, 2:]) + 1], -1
    )


@pytest.mark.parametrize("slots,by_level", [(1, False), (2, False), (4, False), (1, True),
                                             (2, True)])
def test_positive_probability_batch_equals_the_per_image_one(slots, by_level):
    """Slot fast path and exact fallback: equal to vmap(positive_probability) and NumPy,
    whether or not some anchor has more nonzero classes than slots, with and without
    the per-level folds (`level_sizes`)."""
    cases = [_random_case(s, m=9) for s in range(3)]
    p = cases[0][0]
    # image 3: three near-identical GTs of three classes (3 nonzero classes per anchor)
    dup = _gt([[10, 10, 50, 50], [11, 10, 50, 51], [10, 11, 51, 50]] + [[0, 0, 0, 0]] * 6,
              labels=[0, 1, 2] + [0] * 6, valid=[True] * 3 + [False] * 6)
    gts = [g for _, g in cases] + [dup]
    preds = np.stack([_jittered_preds(p, g, i) for i, g in enumerate(gts)])
    batch = jax.tree_util.tree_map(lambda *a: np.stack(a), *gts)
    use_priors = p if by_level else None
    assert len(p.level_sizes) == 3
    fn = jax.jit(lambda b, g: anchor_bags.positive_probability_batch(b, g, 3, slots=slots,
                                                                     priors=use_priors))
    got = np.asarray(fn(preds, batch))
    for i, g in enumerate(gts):
        np.testing.assert_allclose(got[i], _np_positive_probability(preds[i], g, 3, 0.6),
                                   atol=1e-5)
    per_image = jax.vmap(lambda b, g: anchor_bags.positive_probability(b, g, 3))(preds, batch)
    # (the slot path divides once per kept pair, the scatter once per row: 1 ulp apart)
    np.testing.assert_allclose(got, per_image, rtol=1e-6, atol=1e-7)
    # a batch of the first image alone (its own choice of path)
    few = jax.tree_util.tree_map(lambda a: a[:1], batch)
    one = np.asarray(fn(preds[:1], few))
    np.testing.assert_allclose(one, per_image[:1], rtol=1e-6, atol=1e-7)
    _, _, over = anchor_bags._probability_slots(preds[3], dup, 0.6, slots, 8, use_priors)
    assert bool(over) == (slots < 3)
    # The sparse form: [B, S, N] slots, exact wherever the batch does not overflow.
    sp = jax.jit(lambda b, g: anchor_bags.positive_probability_slots(
        b, g, slots=slots, priors=use_priors))(preds, batch)
    assert sp.labels.shape == sp.probs.shape == (4, slots, len(p.boxes))
    assert bool(sp.overflow) == (slots < 3)
    if not sp.overflow:
        np.testing.assert_array_equal(np.asarray(anchor_bags.slots_to_dense(sp, 3)), got)
    sp1 = anchor_bags.positive_probability_slots(preds[:1], few, slots=slots, priors=use_priors)
    if not sp1.overflow:
        np.testing.assert_array_equal(np.asarray(anchor_bags.slots_to_dense(sp1, 3)), one)


def test_positive_probability_batch_without_gt_is_zero():
    p = _row_priors()
    g = _gt(np.zeros((2, 4)), valid=[False, True], ignore=[False, True])
    batch = jax.tree_util.tree_map(lambda a: np.stack([a, a]), g)
    out = anchor_bags.positive_probability_batch(np.stack([p.boxes, p.boxes]), batch, 3)
    assert out.shape == (2, len(p.boxes), 3) and float(jnp.max(out)) == 0.0


def test_probability_slots_hand_computed():
    # Rows 0 [0, 0, 10, 10] (class 2), 1 [0, 0, 10, 9] (class 0), 2 [0, 0, 10, 8]
    # (class 2); pred 0 = row 0's box (IoUs 1, 0.9, 0.8), pred 1 = row 1's (0.9, 1, 8/9).
    # t2 per row = its best IoU: 1, 1, 8/9. Slots in row order of the first hit, one per
    # class (max): pred 0: class 2 max(1, (0.8 - .6) / (8/9 - .6)) = 1, class 0
    # (0.9 - .6) / .4 = 0.75; pred 1: class 2 max(0.75, 1) = 1, class 0 1.
    g = _gt([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 8]], labels=[2, 0, 2])
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]], np.float32)
    batch = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], g)
    sp = anchor_bags.positive_probability_slots(pred[None], batch, slots=2)
    assert not bool(sp.overflow)
    np.testing.assert_array_equal(sp.labels[0][:, 0], [2, 0])
    np.testing.assert_allclose(sp.probs[0][:, 0], [1.0, 0.75], rtol=1e-6)
    np.testing.assert_array_equal(sp.labels[0][:, 1], [2, 0])
    np.testing.assert_allclose(sp.probs[0][:, 1], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(sp.labels[0][:, 2], [-1, -1])
    dense = anchor_bags.slots_to_dense(sp, 3)[0]
    np.testing.assert_allclose(dense, _np_positive_probability(pred, g, 3, 0.6), atol=1e-6)
    # One slot for two classes: overflow (the dense form then takes the exact scatter,
    # still equal to the reference).
    sp1 = anchor_bags.positive_probability_slots(pred[None], batch, slots=1)
    assert bool(sp1.overflow)
    full = anchor_bags.positive_probability_batch(pred[None], batch, 3, slots=1)[0]
    np.testing.assert_allclose(full, _np_positive_probability(pred, g, 3, 0.6), atol=1e-6)
