"""jaxdet.assign.point_assigner against hand-computed cases and a NumPy transcription of
mmdetection's `PointAssigner.assign` loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import point_assigner
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth

STRIDES = (8, 16)
# 32 x 32 input, points at offset 0: level 3 is a 4 x 4 grid at {0, 8, 16, 24}
# (indices 0-15, row-major), level 4 a 2 x 2 grid at {0, 16} (indices 16-19).
POINTS = jax.tree_util.tree_map(
    jnp.asarray,
    priors_lib.make_points(priors_lib.feature_shapes((32, 32), STRIDES), STRIDES, offset=0.0),
)


def _gt(boxes, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = len(boxes)
    return GroundTruth(
        boxes=jnp.asarray(boxes),
        labels=jnp.zeros((m,), jnp.int32),
        valid=jnp.ones((m,), bool) if valid is None else jnp.asarray(valid),
        ignore=jnp.zeros((m,), bool) if ignore is None else jnp.asarray(ignore),
    )


_JIT = {}


def _assign(gt, **kw):
    key = tuple(sorted(kw.items()))
    if key not in _JIT:
        _JIT[key] = jax.jit(lambda g: point_assigner.assign(POINTS, g, **kw))
    return _JIT[key](gt)


def _positives(a):
    idx = np.asarray(a.gt_index)
    return {int(i): int(idx[i]) for i in np.nonzero(idx >= 0)[0]}


def test_levels_and_nearest_point():
    # 12 x 12: 0.5 * 2 * log2(3) = 1.58 -> 1, clamped to level 3; centre (8, 8) -> point 5.
    # 64 x 64: log2(16) = 4 -> level 4; centre (32, 32) -> nearest (16, 16) = point 19.
    a = _assign(_gt([[2, 2, 14, 14], [0, 0, 64, 64]]))
    assert _positives(a) == {5: 0, 19: 1}
    assert set(np.asarray(a.gt_index).tolist()) == {-1, 0, 1}
    np.testing.assert_array_equal(np.asarray(a.quality) > 0, np.asarray(a.gt_index) >= 0)
    # 1000 x 10: 0.5 * (log2(250) + log2(2.5)) = 4.64 -> 4.
    np.testing.assert_array_equal(
        point_assigner.gt_levels(jnp.asarray([[0, 0, 1000, 10.0]]), 4.0, 3, 7), [4])


def test_shared_point_goes_to_the_closer_gt():
    # A: centre (8, 8), distance 0 to point 5; B: centre (9, 9), 8 x 8, distance sqrt(2)/8.
    a_box, b_box = [4, 4, 12, 12], [5, 5, 13, 13]
    assert _positives(_assign(_gt([a_box, b_box]))) == {5: 0}
    assert _positives(_assign(_gt([b_box, a_box]))) == {5: 1}
    # An exact tie stays with the earlier row (strictly smaller distance needed).
    assert _positives(_assign(_gt([a_box, a_box]))) == {5: 0}


def test_pos_num_and_index_ties():
    # Centre (12, 8), 8 x 8: points 5 (8, 8) and 6 (16, 8) both at distance 0.5.
    box = [8, 4, 16, 12]
    assert _positives(_assign(_gt([box]))) == {5: 0}  # the lower index
    assert _positives(_assign(_gt([box]), pos_num=2)) == {5: 0, 6: 0}


def test_padding_crowd_and_empty():
    box = [2, 2, 14, 14]
    ref = _assign(_gt([box]))
    # A padding row with garbage values never takes part.
    pad = _assign(_gt([[np.nan, 0, 1e9, -5], box], valid=[False, True]))
    assert _positives(pad) == {5: 1}
    # A crowd row is never assigned and ignores no point (no -2).
    crowd = _assign(_gt([box, [0, 0, 20, 20]], ignore=[False, True]))
    assert _positives(crowd) == _positives(ref)
    assert int(np.min(np.asarray(crowd.gt_index))) == -1
    only_crowd = _assign(_gt([box], ignore=[True]))
    np.testing.assert_array_equal(np.asarray(only_crowd.gt_index), -1)
    empty = _assign(_gt([box], valid=[False]))
    np.testing.assert_array_equal(np.asarray(empty.gt_index), -1)


def mmdet_point_assigner(points_xy, strides, boxes, scale=4.0, pos_num=1):
    """mmdetection's loop, transcribed (float32, distances as torch's norm)."""
    p_lvl = np.log2(strides).astype(np.int64)
    wh = np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-6).astype(np.float32)
    ctr = ((boxes[:, :2] + boxes[:, 2:]) / 2).astype(np.float32)
    g_lvl = ((np.log2(wh[:, 0] / scale) + np.log2(wh[:, 1] / scale)) / 2).astype(np.int64)
    g_lvl = np.clip(g_lvl, p_lvl.min(), p_lvl.max())
    inds = np.zeros(len(points_xy), np.int64)
    dist_rec = np.full(len(points_xy), np.inf, np.float32)
    for k in range(len(boxes)):
        sel = np.nonzero(p_lvl == g_lvl[k])[0]
        d = np.sqrt(np.sum(((points_xy[sel] - ctr[k]) / wh[k]) ** 2, axis=1)).astype(np.float32)
        order = np.argsort(d, kind="stable")[:pos_num]
        idx, md = sel[order], d[order]
        less = md < dist_rec[idx]
        inds[idx[less]] = k + 1
        dist_rec[idx[less]] = md[less]
    return inds - 1


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference_under_jit_vmap(seed):
    rng = np.random.default_rng(seed)
    strides = (8, 16, 32)
    pts = jax.tree_util.tree_map(jnp.asarray, priors_lib.make_points(
        priors_lib.feature_shapes((96, 96), strides), strides, offset=0.0))
    b, m = 3, 10
    xy = rng.uniform(0, 90, size=(b, m, 2))
    wh = rng.uniform(2, 90, size=(b, m, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    valid = rng.uniform(size=(b, m)) < 0.8
    gt = GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.zeros((b, m), jnp.int32),
                     valid=jnp.asarray(valid), ignore=jnp.zeros((b, m), bool))
    fn = jax.jit(jax.vmap(lambda g: point_assigner.assign(pts, g, pos_num=2)))
    got = np.asarray(fn(gt).gt_index)
    for i in range(b):
        rows = np.nonzero(valid[i])[0]
        want = mmdet_point_assigner(np.asarray(pts.centers), np.asarray(pts.strides),
                                     boxes[i, rows], pos_num=2)
        want = np.where(want >= 0, rows[np.maximum(want, 0)], -1)
        np.testing.assert_array_equal(got[i], want)
        single = point_assigner.assign(pts, jax.tree_util.tree_map(lambda x, i=i: x[i], gt),
                                       pos_num=2)
        np.testing.assert_array_equal(np.asarray(single.gt_index), got[i])
