"""jaxdet.assign.approx_max_iou: hand cases, mmdetection's rules in NumPy, invariants."""

from __future__ import annotations

import jax
import numpy as np

from jaxdet.assign import approx_max_iou
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth, Priors

from . import numpy_ref as ref


def _priors(boxes, num_base=1) -> Priors:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return Priors(boxes=boxes, centers=(boxes[:, :2] + boxes[:, 2:]) / 2,
                  strides=np.full((n,), 8.0, np.float32), levels=np.zeros((n,), np.int32),
                  level_sizes=(n,), num_base=num_base)


def _gt(boxes, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = len(boxes)
    return GroundTruth(boxes=boxes, labels=np.zeros((m,), np.int32),
                       valid=np.ones((m,), bool) if valid is None else np.asarray(valid),
                       ignore=np.zeros((m,), bool) if ignore is None else np.asarray(ignore))


def ref_approx(squares, approxs, a, boxes, valid, ignore, pos, neg, min_pos, iof):
    """mmdetection `ApproxMaxIoUAssigner.assign`: max IoU over each location's A
    approximate anchors, ignore by the squares' IoF, then `assign_wrt_overlaps`."""
    gts, rows, ignore_boxes = ref._split(boxes, valid, ignore)
    n = len(squares)
    ignored = ref._ignored_by_iof(squares, ignore_boxes, iof)
    if len(gts) == 0:
        return np.where(ignored, -2, -1).astype(np.int32)
    ov = ref.bbox_overlaps(gts, approxs).reshape(len(gts), n, a).max(axis=2)
    ov[:, ignored] = -1
    assigned = np.full(n, -1, np.int64)
    max_ov, arg = ov.max(0), ov.argmax(0)
    assigned[(max_ov >= 0) & (max_ov < neg)] = 0
    assigned[max_ov >= pos] = arg[max_ov >= pos] + 1
    for i in range(len(gts)):
        if ov[i].max() >= min_pos:
            assigned[ov[i] == ov[i].max()] = i + 1
    return ref._to_jaxdet(assigned, rows, np.zeros(n))[0]


def test_hand_case_best_shape_decides():
    # Location 0: square 10 x 10 at the origin, approxs 10 x 10 and 20 x 10.
    # Location 1: far away. GT = the 20 x 10 box: IoU 1 with location 0's second approx,
    # though the square alone has IoU 0.5.
    squares = _priors([[0, 0, 10, 10], [50, 50, 60, 60]])
    approxs = _priors([[0, 0, 10, 10], [0, 0, 20, 10], [50, 50, 60, 60], [50, 50, 70, 60]], 2)
    a = approx_max_iou.assign(squares, approxs, _gt([[0, 0, 20, 10]]), pos_iou_thr=0.7,
                              neg_iou_thr=0.3, min_pos_iou=0.3)
    np.testing.assert_array_equal(a.gt_index, [0, -1])
    np.testing.assert_allclose(a.quality, [1.0, 0.0])
    # Between the thresholds: ignored (-2); a low-quality match needs min_pos_iou.
    g = _gt([[0, 0, 10, 25]])  # IoU 0.4 with the 10 x 10 approx, 0.25 with 20 x 10
    a = approx_max_iou.assign(squares, approxs, g, pos_iou_thr=0.7, neg_iou_thr=0.3,
                              min_pos_iou=0.5)
    np.testing.assert_array_equal(a.gt_index, [-2, -1])
    a = approx_max_iou.assign(squares, approxs, g, pos_iou_thr=0.7, neg_iou_thr=0.3,
                              min_pos_iou=0.3)
    np.testing.assert_array_equal(a.gt_index, [0, -1])  # low-quality match


def test_padding_and_crowd_never_positive():
    squares = _priors([[0, 0, 10, 10], [50, 50, 60, 60]])
    approxs = _priors([[0, 0, 10, 10], [0, 0, 20, 10], [50, 50, 60, 60], [50, 50, 70, 60]], 2)
    g = _gt([[0, 0, 10, 10], [50, 50, 60, 60]], valid=[False, True], ignore=[False, True])
    a = approx_max_iou.assign(squares, approxs, g)
    np.testing.assert_array_equal(a.gt_index, [-1, -2])  # padding unmatched, crowd ignores


def test_matches_reference_jit_vmap_on_anchor_lattice():
    image_hw, strides = (64, 96), (8, 16, 32)
    shapes = priors_lib.feature_shapes(image_hw, strides)
    squares = priors_lib.make_anchors(shapes, strides, octave_base_scale=4, scales_per_octave=1,
                                      ratios=(1.0,))
    approxs = priors_lib.make_anchors(shapes, strides, octave_base_scale=4, scales_per_octave=3,
                                      ratios=(0.5, 1.0, 2.0))
    rng = np.random.default_rng(3)
    boxes, labels, valid, ignore = ref.random_gt(rng, 4, 7, image_hw)
    gt = GroundTruth(boxes=boxes, labels=labels, valid=valid, ignore=ignore)
    hp = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.4, ignore_iof_thr=0.5)
    got = jax.jit(jax.vmap(lambda g: approx_max_iou.assign(squares, approxs, g, **hp)))(gt)
    for b in range(4):
        want = ref_approx(np.asarray(squares.boxes), np.asarray(approxs.boxes), 9, boxes[b],
                          valid[b], ignore[b], 0.5, 0.4, 0.4, 0.5)
        np.testing.assert_array_equal(np.asarray(got.gt_index[b]), want)
        pos = np.asarray(got.gt_index[b]) >= 0
        assert valid[b][np.asarray(got.gt_index[b])[pos]].all()
        assert not ignore[b][np.asarray(got.gt_index[b])[pos]].any()
    np.testing.assert_array_equal(np.asarray(got.gt_index[0]) >= 0, False)  # no valid GT
