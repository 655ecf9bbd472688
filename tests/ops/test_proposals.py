"""jaxdet.ops.proposals.generate_proposals: hand-computed cases, a NumPy mmdet reference,
edge cases, jit(vmap), no gradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.core.coders import delta_xywh_decode
from jaxdet.ops.proposals import generate_proposals

from .numpy_nms import clustered_boxes, greedy_nms

# Level 0 (4 anchors, pre_nms_topk 3): a3 has the best score but is 0.5 px wide
# (min_size 1), a2 is 4th by score (top-k), a1 overlaps a0 with IoU 0.82 (NMS).
# Level 1 (3 anchors): b0 is a0's box (another level: not suppressed), b2 is clipped
# to the image (h 90, w 110) and keeps a 10 x 10 box.
ANCHORS = np.array(
    [
        [0, 0, 10, 10],
        [1, 0, 11, 10],
        [20, 20, 30, 30],
        [40, 40, 40.5, 50],
        [0, 0, 10, 10],
        [50, 50, 70, 70],
        [100, 80, 130, 95],
    ],
    np.float32,
)
LOGITS = np.array([3.0, 2.0, 1.0, 4.0, 0.5, 2.5, -1.0], np.float32)
IMAGE_HW = np.array([90, 110], np.int32)
CFG = dict(level_sizes=(4, 3), pre_nms_topk=3, post_nms_topk=6, nms_iou=0.7, min_size=1.0)
EXPECTED = [(0, [0, 0, 10, 10]), (5, [50, 50, 70, 70]), (4, [0, 0, 10, 10]),
            (6, [100, 80, 110, 90])]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _check_hand_case(boxes, scores, valid):
    boxes, scores, valid = map(np.asarray, (boxes, scores, valid))
    assert valid.tolist() == [True] * 4 + [False] * 2
    np.testing.assert_allclose(boxes[:4], [b for _, b in EXPECTED], atol=1e-5)
    np.testing.assert_allclose(scores[:4], _sigmoid(LOGITS[[i for i, _ in EXPECTED]]), rtol=1e-6)
    assert np.all(boxes[4:] == 0) and np.all(scores[4:] == 0)


def test_hand_case_per_level_topk_min_size_nms():
    out = generate_proposals(LOGITS, np.zeros((7, 4), np.float32), ANCHORS, IMAGE_HW, **CFG)
    _check_hand_case(*out)
    # post_nms_topk truncates to the best K over the levels.
    boxes, scores, valid = generate_proposals(
        LOGITS, np.zeros((7, 4), np.float32), ANCHORS, IMAGE_HW,
        **{**CFG, "post_nms_topk": 2})
    assert np.asarray(valid).tolist() == [True, True]
    np.testing.assert_allclose(np.asarray(boxes), [[0, 0, 10, 10], [50, 50, 70, 70]])


def _np_proposals(logits, deltas, anchors, image_hw, level_sizes, pre, post, iou, min_size,
                  stds):
    """mmdet 3.x RPNHead._predict_by_feat_single + _bbox_post_process, NumPy."""
    scores = _sigmoid(logits).astype(np.float32)
    idx, lvl = [], []
    start = 0
    for i, size in enumerate(level_sizes):
        order = np.argsort(-scores[start:start + size], kind="stable")[:pre] + start
        idx.append(order)
        lvl.append(np.full(len(order), i))
        start += size
    idx, lvl = np.concatenate(idx), np.concatenate(lvl)
    boxes = np.asarray(delta_xywh_decode(anchors[idx], deltas[idx], stds=stds,
                                         image_hw=image_hw))
    s = scores[idx]
    keep = np.all(boxes[:, 2:] - boxes[:, :2] > min_size, axis=1)
    boxes, s, lvl = boxes[keep], s[keep], lvl[keep]
    kept = greedy_nms(boxes, s, iou, classes=lvl)[:post]
    return boxes[kept], s[kept]


def test_against_numpy_reference():
    rng = np.random.default_rng(0)
    level_sizes, n = (60, 24, 6), 90
    anchors, _ = clustered_boxes(rng, n, num_objects=6, size=120)
    logits = rng.normal(size=n).astype(np.float32)
    deltas = (rng.normal(size=(n, 4)) * 0.5).astype(np.float32)
    image_hw = np.array([100, 110], np.int32)
    stds = (0.1, 0.1, 0.2, 0.2)
    kw = dict(level_sizes=level_sizes, pre_nms_topk=20, post_nms_topk=40, nms_iou=0.5,
              min_size=4.0, box_stds=stds)
    boxes, scores, valid = map(np.asarray, generate_proposals(
        logits, deltas, anchors, image_hw, **kw))
    ref_boxes, ref_scores = _np_proposals(logits, deltas, anchors, image_hw, level_sizes, 20, 40,
                                          0.5, 4.0, stds)
    k = len(ref_scores)
    assert 5 < k < 40 and valid.sum() == k and valid[:k].all()
    np.testing.assert_allclose(boxes[:k], ref_boxes, atol=1e-4)
    np.testing.assert_allclose(scores[:k], ref_scores, rtol=1e-6)
    assert np.all(boxes[k:] == 0) and np.all(scores[k:] == 0)


@functools.cache
def _batched():
    return jax.jit(jax.vmap(functools.partial(generate_proposals, **CFG)))


def test_jit_vmap_with_edge_cases():
    """Image 0: the hand case; image 1: NaN logits and deltas. Then no valid anchors."""
    nan_logits = LOGITS.copy()
    nan_logits[[0, 5]] = np.nan  # the NaN anchors never become proposals
    nan_deltas = np.zeros((7, 4), np.float32)
    nan_deltas[4] = np.nan  # a NaN box: dropped
    logits = np.stack([LOGITS, nan_logits])
    deltas = np.stack([np.zeros((7, 4), np.float32), nan_deltas])
    anchors = np.stack([ANCHORS, ANCHORS])
    hw = np.stack([IMAGE_HW, IMAGE_HW])
    ok = np.ones((2, 7), bool)
    boxes, scores, valid = map(np.asarray, _batched()(logits, deltas, anchors, hw, valid=ok))
    _check_hand_case(boxes[0], scores[0], valid[0])
    # Image 1, level 0: a3 (too small), a1, a2 (a0 is NaN); level 1: b2 (b0 NaN box, b1 NaN).
    assert valid[1].tolist() == [True] * 3 + [False] * 3
    np.testing.assert_allclose(boxes[1, :3], [[1, 0, 11, 10], [20, 20, 30, 30],
                                              [100, 80, 110, 90]])
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()

    # No valid anchor at all (or a zero-size image): no proposal, zeros, no NaN.
    for ok, hw2 in ((np.zeros((2, 7), bool), hw), (np.ones((2, 7), bool), hw * 0)):
        boxes, scores, valid = map(np.asarray, _batched()(logits, deltas, anchors, hw2, valid=ok))
        assert not valid.any() and np.all(boxes == 0) and np.all(scores == 0)
    # Only the anchors of image 0's second level: b1, b0, b2.
    ok = np.zeros((2, 7), bool)
    ok[0, 4:] = True
    _, scores, valid = map(np.asarray, _batched()(logits, deltas, anchors, hw, valid=ok))
    assert valid[0].tolist() == [True] * 3 + [False] * 3 and not valid[1].any()
    np.testing.assert_allclose(scores[0, :3], _sigmoid([2.5, 0.5, -1.0]), rtol=1e-6)


def test_no_gradient():
    def loss(logits, deltas):
        boxes, scores, _ = generate_proposals(logits, deltas, jnp.asarray(ANCHORS), IMAGE_HW,
                                              **CFG)
        return jnp.sum(boxes) + jnp.sum(scores)

    g_logits, g_deltas = jax.grad(loss, argnums=(0, 1))(
        jnp.asarray(LOGITS), jnp.ones((7, 4), jnp.float32) * 0.1)
    assert np.all(np.asarray(g_logits) == 0) and np.all(np.asarray(g_deltas) == 0)
