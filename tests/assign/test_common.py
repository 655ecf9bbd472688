"""Pieces of `jaxdet.assign.common` the assigners share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.assign import common


def test_max_nonneg_equals_the_float_max():
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 257)).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero row
    x[0, 1, :] = np.float32(0.6)  # ties
    x[1, 2, 7] = np.float32(1e-40)  # a denormal
    x[2, 3, ::3] = 0.0
    x[1, 4] = rng.random(257).astype(np.float32) * np.float32(1e-30)
    for axis in (0, 1, 2, -1):
        got = jax.jit(lambda v, axis=axis: common.max_nonneg(v, axis=axis))(x)
        np.testing.assert_array_equal(np.asarray(got), x.max(axis=axis))
    # vmapped, as inside the folds; a NaN row stays NaN
    y = x.copy()
    y[2, 0, 5] = np.nan
    got = np.asarray(jax.jit(jax.vmap(lambda v: common.max_nonneg(v, axis=1)))(jnp.asarray(y)))
    np.testing.assert_array_equal(got[:2], y[:2].max(axis=2))
    assert np.isnan(got[2, 0]) and np.array_equal(got[2, 1:], y[2, 1:].max(axis=1))


def test_may_reach_never_misses_a_box_that_reaches_the_threshold():
    # Random sets of boxes (varied sizes, one degenerate, one NaN) and GTs (tiny, huge,
    # inverted, near the set and far from it): wherever some box has IoU >= t with a
    # GT, may_reach is True; it prunes some GTs by place (the envelope test).
    rng = np.random.default_rng(1)
    pruned = 0
    for case in range(20):
        n, m = 50, 80
        c = rng.uniform(100, 300, (n, 2)) + rng.uniform(0, 400) * (case % 2)
        wh = np.exp(rng.uniform(np.log(4), np.log(200), (n, 2)))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)
        boxes[0, 2:] = boxes[0, :2]  # zero area: left out
        boxes[1] = np.nan  # non-finite: left out
        gc = rng.uniform(-100, 900, (m, 2))
        gwh = np.exp(rng.uniform(np.log(1), np.log(500), (m, 2)))
        gt = np.concatenate([gc - gwh / 2, gc + gwh / 2], -1).astype(np.float32)
        gt[:5] = boxes[2:7] * np.float32(1.01)  # some GTs on boxes of the set
        gt[5, 2:] = gt[5, :2] - 3  # inverted
        cols = common.columns(jnp.asarray(boxes))
        area = (cols[2] - cols[0]) * (cols[3] - cols[1])
        for t in (0.35, 0.5, 0.6):
            reach = np.asarray(common.may_reach(cols, area, jnp.asarray(gt), t))
            iou = np.asarray(common.iou_with_box(cols, area, jnp.asarray(gt)))  # [M, n]
            hit = np.nan_to_num(iou, nan=0.0).max(1) >= t
            assert np.all(reach[hit]), (case, t)
            pruned += int((~reach & ~hit).sum())
            assert reach[:5].all()
    assert pruned > 0


def test_row_bands_cut_each_level_into_whole_rows():
    from jaxdet.core import priors as priors_lib
    shapes = priors_lib.feature_shapes((800, 1333), (8, 16, 32, 64, 128))
    p = priors_lib.make_anchors(shapes, (8, 16, 32, 64, 128), octave_base_scale=8,
                                scales_per_octave=1, ratios=(1.0,))
    bands = common.row_bands(p, 2048)
    assert bands[0][0] == 0 and sum(s for _, s in bands) == p.boxes.shape[0]
    assert all(a + s == b for (a, s), (b, _) in zip(bands, bands[1:]))  # contiguous
    for start, size, (_, w) in zip(p.level_starts, p.level_sizes, shapes):
        mine = [(a, s) for a, s in bands if start <= a < start + size]
        assert sum(s for _, s in mine) == size and all(s % w == 0 for _, s in mine)
    assert len(bands) > len(shapes)  # the big levels are cut
    no_grid = p.replace(feature_shapes=None)
    assert common.row_bands(no_grid) == list(zip(p.level_starts, p.level_sizes))
