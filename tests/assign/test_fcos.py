"""jaxdet.assign.fcos against hand-computed cases and mmdetection's FCOSHead targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.assign import fcos
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors

from . import numpy_ref as ref

STRIDES = (8, 16, 32, 64, 128)


def _make_row_points(n=4, stride=8.0, levels=1) -> Priors:
    # `levels` copies of a row of n points at x = 4, 12, 20, ..., y = 4.
    x = 4.0 + stride * np.arange(n, dtype=np.float32)
    pts = np.tile(np.stack([x, np.full(n, 4.0, np.float32)], -1), (levels, 1))
    return Priors(
        boxes=np.concatenate([pts, pts], -1),
        centers=pts,
        strides=np.full((n * levels,), stride, np.float32),
        levels=np.repeat(np.arange(levels, dtype=np.int32), n),
        level_sizes=(n,) * levels,
    )


_ROW1 = _make_row_points()
_ROW2 = _make_row_points(levels=2)


def _row_points(levels=1) -> Priors:
    return _ROW1 if levels == 1 else _ROW2


def _gt(boxes, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = len(boxes)
    return GroundTruth(
        boxes=boxes,
        labels=np.zeros((m,), np.int32),
        valid=np.ones((m,), bool) if valid is None else np.asarray(valid),
        ignore=np.zeros((m,), bool) if ignore is None else np.asarray(ignore),
    )


_JITTED = {}


def _assign(p, g, **kw):
    # One jitted function per (priors, options): compiles only once per shape.
    kw.setdefault("regress_ranges", ((-1.0, 1e8),) * len(p.level_sizes))
    key = (id(p), tuple(sorted(kw.items())))
    if key not in _JITTED:
        _JITTED[key] = (p, jax.jit(lambda g: fcos.assign(p, g, **kw)))
    return _JITTED[key][1](g)


def test_smallest_area_wins():
    # Points x = 4, 12, 20, 28. gt0 = [0,0,16,8] (area 128), gt1 = [8,0,40,8] (256).
    # x=4: only inside gt0. x=12: inside both -> smaller area gt0. x=20, 28: gt1.
    p = _row_points()
    g = _gt([[0, 0, 16, 8], [8, 0, 40, 8]])
    a = _assign(p, g, center_sampling=False)
    np.testing.assert_array_equal(a.gt_index, [0, 0, 1, 1])
    np.testing.assert_array_equal(a.quality, [1, 1, 1, 1])
    # Equal areas: the lower GT index wins (torch's min).
    g = _gt([[0, 0, 32, 8], [0, 0, 32, 8]])
    np.testing.assert_array_equal(_assign(p, g, center_sampling=False).gt_index, [0, 0, 0, 0])


def test_center_sampling():
    # gt = [0,0,64,8], centre (32, 4); radius 1.5 * 8 = 12: centre box x in
    # (20, 44) clipped to the GT, y in (-8, 16) clipped to (0, 8). Only x = 28 is
    # strictly inside (x = 20 sits on the edge); without sampling all four are.
    p = _row_points()
    g = _gt([[0, 0, 64, 8]])
    np.testing.assert_array_equal(_assign(p, g).gt_index, [-1, -1, -1, 0])
    np.testing.assert_array_equal(_assign(p, g, center_sampling=False).gt_index, [0, 0, 0, 0])
    # radius 2.5: x in (12, 52): x = 20, 28.
    a = _assign(p, g, center_sample_radius=2.5)
    np.testing.assert_array_equal(a.gt_index, [-1, -1, 0, 0])


def test_regress_ranges():
    # Two levels with the same 4 points; level 0 takes max(l,t,r,b) in [-1, 20],
    # level 1 in [20, 100]. gt = [0,0,32,8]: max distances at x = 4, 12, 20, 28 are
    # 28, 20, 20, 28. Level 0: only x = 12, 20 (20 <= 20); level 1: all (>= 20).
    p = _row_points(levels=2)
    g = _gt([[0, 0, 32, 8]])
    a = _assign(p, g, center_sampling=False, regress_ranges=((-1, 20), (20, 100)))
    np.testing.assert_array_equal(a.gt_index, [-1, 0, 0, -1, 0, 0, 0, 0])
    # Boundary of the per-level GT pruning: gt = [0,0,40,8] has max side 40 and the
    # point x = 20 reaches exactly 20 = 40 / 2 = level 0's upper end: taken there.
    g = _gt([[0, 0, 40, 8]])
    a = _assign(p, g, center_sampling=False, regress_ranges=((-1, 20), (20, 100)))
    np.testing.assert_array_equal(a.gt_index, [-1, -1, 0, -1, 0, 0, 0, 0])


def test_ignore_regions_and_no_gt():
    p = _row_points()
    # Row 1 ignores x in (10, 30): points 12, 20, 28 -> -2 unless positive (12 is
    # gt0's); row 2 is padding.
    g = _gt(
        [[0, 0, 16, 8], [10, 0, 30, 8], [0, 0, 64, 8]],
        valid=[True, True, False],
        ignore=[False, True, False],
    )
    a = _assign(p, g, center_sampling=False)
    np.testing.assert_array_equal(a.gt_index, [0, 0, -2, -2])
    np.testing.assert_array_equal(a.quality, [1, 1, 0, 0])
    a = _assign(p, g, center_sampling=False, use_ignore=False)
    np.testing.assert_array_equal(a.gt_index, [0, 0, -1, -1])
    g = _gt(g.boxes, valid=[False, True, False], ignore=g.ignore)
    a = _assign(p, g, center_sampling=False)
    np.testing.assert_array_equal(a.gt_index, [-1, -2, -2, -2])


@pytest.mark.parametrize("center_sampling", [True, False])
def test_matches_numpy_reference(center_sampling):
    # Regress ranges scaled down with the 128 x 160 input so every level takes GTs.
    ranges = ((-1, 16), (16, 32), (32, 64), (64, 128), (128, 1e8))
    p = priors_lib.make_points(priors_lib.feature_shapes((128, 160), STRIDES), STRIDES)
    fn = jax.jit(
        jax.vmap(
            lambda g: fcos.assign(p, g, regress_ranges=ranges, center_sampling=center_sampling)
        )
    )
    for seed in range(3):
        boxes, labels, valid, ignore = ref.random_gt(np.random.default_rng(seed), 6, 12)
        a = fn(GroundTruth(boxes=boxes, labels=labels, valid=valid, ignore=ignore))
        assert a.gt_index.dtype == jnp.int32 and a.quality.dtype == jnp.float32
        for b in range(6):
            want_idx, want_q = ref.fcos(
                p.centers,
                p.strides,
                p.level_sizes,
                boxes[b],
                valid[b],
                ignore[b],
                regress_ranges=ranges,
                center_sampling=center_sampling,
            )
            np.testing.assert_array_equal(np.asarray(a.gt_index[b]), want_idx, err_msg=f"{b}")
            np.testing.assert_array_equal(np.asarray(a.quality[b]), want_q, err_msg=f"{b}")
            matched = want_idx[want_idx >= 0]
            assert np.all(valid[b][matched] & ~ignore[b][matched])
