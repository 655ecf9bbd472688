"""jaxdet.assign.max_iou against hand-computed cases and mmdetection's semantics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxdet.assign import max_iou
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors

from . import numpy_ref as ref


def _priors(boxes) -> Priors:
    boxes = np.asarray(boxes, np.float32)
    n = len(boxes)
    return Priors(
        boxes=boxes,
        centers=(boxes[:, :2] + boxes[:, 2:]) / 2,
        strides=np.full((n,), 8.0, np.float32),
        levels=np.zeros((n,), np.int32),
        level_sizes=(n,),
    )


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
    key = (id(p), tuple(sorted(kw.items())))
    if key not in _JITTED:
        _JITTED[key] = (p, jax.jit(lambda g: max_iou.assign(p, g, **kw)))
    return _JITTED[key][1](g)


def test_mmdet_docstring_example():
    # MaxIoUAssigner(0.5, 0.5): prior 0 has IoU 90/100 = 0.9 -> gt 0; prior 1 IoU 0 -> negative.
    p = _priors([[0, 0, 10, 10], [10, 10, 20, 20]])
    a = _assign(p, _gt([[0, 0, 10, 9]]), pos_iou_thr=0.5, neg_iou_thr=0.5)
    np.testing.assert_array_equal(a.gt_index, [0, -1])
    np.testing.assert_allclose(a.quality, [0.9, 0.0], rtol=1e-6)


def test_low_quality_match_later_gt_overwrites():
    # A = [0,0,10,10]; gt0 = [0,0,10,9] has IoU 0.9 with A, gt1 = [0,0,10,8] IoU 0.8.
    # Step 3 gives A to gt0 (max over GTs); step 4 visits gt0 (its best prior is A)
    # then gt1 (its best prior is also A, IoU 0.8 >= min_pos_iou): gt1 overwrites.
    # B = [20,20,30,30] overlaps nothing: IoU 0 < 0.4 -> negative. Gray prior C =
    # [0,0,10,20]: IoU with gt0 = 90/200 = 0.45 in [0.4, 0.5) -> ignored (-2).
    p = _priors([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 20]])
    g = _gt([[0, 0, 10, 9], [0, 0, 10, 8]])
    a = _assign(p, g)
    np.testing.assert_array_equal(a.gt_index, [1, -1, -2])
    np.testing.assert_allclose(a.quality, [0.8, 0.0, 0.0], rtol=1e-6)
    # Without low-quality matching A stays with its best GT.
    a = _assign(p, g, match_low_quality=False)
    np.testing.assert_array_equal(a.gt_index, [0, -1, -2])


def test_low_quality_below_min_pos_iou_is_skipped():
    # gt [0,0,10,4] has IoU 0.4 with A at best: a low-quality match only if min_pos_iou <= 0.4.
    p = _priors([[0, 0, 10, 10], [20, 20, 30, 30]])
    g = _gt([[0, 0, 10, 4]])
    np.testing.assert_array_equal(_assign(p, g, min_pos_iou=0.3).gt_index, [0, -1])
    # RPN preset: min_pos_iou 0.3 but neg 0.3: A (0.4) is in the gray zone without the match.
    np.testing.assert_array_equal(_assign(p, g, min_pos_iou=0.5).gt_index, [-2, -1])


def test_ignore_region_and_padding():
    # Row 1 is an ignore box covering B entirely (IoF 1 > 0.5): B -> -2, and the
    # ignore row itself is never matched. Row 2 is padding with a box on A: unused.
    p = _priors([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    g = _gt(
        [[0, 0, 10, 10], [19, 19, 31, 31], [0, 0, 10, 10]],
        valid=[True, True, False],
        ignore=[False, True, False],
    )
    a = _assign(p, g)
    np.testing.assert_array_equal(a.gt_index, [0, -2, -1])
    # ignore_iof_thr <= 0 disables ignore regions (mmdetection's -1).
    np.testing.assert_array_equal(_assign(p, g, ignore_iof_thr=-1).gt_index, [0, -1, -1])
    # No valid GT to match: background, except under ignore regions.
    g0 = _gt(g.boxes, valid=[False, True, False], ignore=g.ignore)
    np.testing.assert_array_equal(_assign(p, g0).gt_index, [-1, -2, -1])


# (The RPN / R-CNN presets run the same code paths with other thresholds.)
CONFIGS = {
    "retinanet": max_iou.RETINANET,
    "first_argmax_neg_range": dict(
        pos_iou_thr=0.6, neg_iou_thr=(0.1, 0.4), min_pos_iou=0.2, gt_max_assign_all=False
    ),
}


@pytest.mark.parametrize("method", ["dense", "auto"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_numpy_reference(name, method):
    cfg = CONFIGS[name]
    shapes = priors_lib.feature_shapes((128, 160), (8, 16, 32, 64, 128))
    p = priors_lib.make_anchors(shapes, (8, 16, 32, 64, 128))  # 9 anchors, N = 3852
    fn = jax.jit(jax.vmap(lambda g: max_iou.assign(p, g, method=method, **cfg)))
    for seed, max_wh in ((0, None), (1, 24.0)):  # 24: many GTs below the smallest anchor
        boxes, labels, valid, ignore = ref.random_gt(np.random.default_rng(seed), 6, 12,
                                                     max_wh=max_wh)
        a = fn(GroundTruth(boxes=boxes, labels=labels, valid=valid, ignore=ignore))
        assert a.gt_index.dtype == np.int32 and a.quality.dtype == np.float32
        assert a.gt_index.shape == a.quality.shape == (6, p.num_priors)
        for b in range(6):
            want_idx, want_q = ref.max_iou(p.boxes, boxes[b], valid[b], ignore[b], **cfg)
            np.testing.assert_array_equal(np.asarray(a.gt_index[b]), want_idx, err_msg=f"{b}")
            np.testing.assert_array_equal(np.asarray(a.quality[b]), want_q, err_msg=f"{b}")
            # Invariants: only valid, non-ignore rows are matched.
            matched = np.asarray(a.gt_index[b])
            matched = matched[matched >= 0]
            assert np.all(valid[b][matched] & ~ignore[b][matched])
        assert np.all(np.asarray(a.gt_index[0]) < 0)  # image 0 has no valid GT


@pytest.mark.parametrize("cfg", [dict(pos_iou_thr=0.35, neg_iou_thr=0.35), max_iou.RPN,
                                 dict(match_low_quality=False)])
def test_levels_equals_numpy_on_one_anchor_lattice(cfg):
    # One square anchor per location (HAMBox's 2.72 * stride): GTs reach one or two
    # levels each, so most (GT, level) pairs are skipped by method='auto'.
    strides = (8, 16, 32, 64, 128)
    p = priors_lib.make_anchors(priors_lib.feature_shapes((96, 128), strides), strides,
                                octave_base_scale=2.72, scales_per_octave=1, ratios=(1.0,))
    fn = jax.jit(jax.vmap(lambda g: max_iou.assign(p, g, **cfg)))
    boxes, labels, valid, ignore = ref.random_gt(np.random.default_rng(3), 5, 10, (96, 128),
                                                 max_wh=60.0)
    # Image 1 also gets a zero-width box, one far outside the image, a 1 px box and a
    # 120 x 3 sliver (its max IoU is small and tied along a row of anchors).
    boxes[1, :4] = [[30, 30, 30, 50], [500, 500, 540, 530], [10, 10, 11, 11], [4, 40, 124, 43]]
    a = fn(GroundTruth(boxes=boxes, labels=labels, valid=valid, ignore=ignore))
    for b in range(5):
        want_idx, want_q = ref.max_iou(p.boxes, boxes[b], valid[b], ignore[b], **cfg)
        np.testing.assert_array_equal(np.asarray(a.gt_index[b]), want_idx, err_msg=f"{b}")
        np.testing.assert_array_equal(np.asarray(a.quality[b]), want_q, err_msg=f"{b}")


def test_method_errors_and_the_dense_fallback():
    p = priors_lib.make_anchors(priors_lib.feature_shapes((32, 32), (8, 16)), (8, 16))
    g = _gt([[0, 0, 10, 10], [4, 6, 30, 20]])
    for bad in ("grid", "levels"):
        with pytest.raises(ValueError, match="unknown method"):
            max_iou.assign(p, g, method=bad)
    # 'auto' takes the dense fold where a threshold is 0 or the priors are no lattice.
    for prs, cfg in ((p, dict(neg_iou_thr=(0.0, 0.4), pos_iou_thr=0.0)),
                     (p.replace(feature_shapes=None), {})):
        a = max_iou.assign(prs, g, **cfg)
        d = max_iou.assign(prs, g, method="dense", **cfg)
        np.testing.assert_array_equal(a.gt_index, d.gt_index)
        np.testing.assert_array_equal(a.quality, d.quality)
