"""Guided Anchoring's assigner, location targets and bounded IoU loss against
mmdetection 3.3 (tests/fixtures/mmdet_ga/ga.npz, recorded by
benchmarks/record_mmdet_ga.py): equal gt_inds, equal target / weight maps, the same
loss values."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxdet.assign import approx_max_iou, ga_targets
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth
from jaxdet.losses.bounded_iou import bounded_iou_loss

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mmdet_ga", "ga.npz")
IMAGE_HW, STRIDES = (128, 160), (8, 16, 32)


def _gt(boxes: np.ndarray) -> GroundTruth:
    m = len(boxes)
    return GroundTruth(boxes=boxes, labels=np.zeros(m, np.int32), valid=np.ones(m, bool),
                       ignore=np.zeros(m, bool))


def test_matches_mmdetection():
    d = dict(np.load(FIXTURE))
    shapes = priors_lib.feature_shapes(IMAGE_HW, STRIDES)
    squares = priors_lib.make_anchors(shapes, STRIDES, octave_base_scale=4, scales_per_octave=1,
                                      ratios=(1.0,))
    approxs = priors_lib.make_anchors(shapes, STRIDES, octave_base_scale=4, scales_per_octave=3,
                                      ratios=(0.5, 1.0, 2.0))
    assign = jax.jit(lambda g: approx_max_iou.assign(
        squares, approxs, g, pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.4,
        ignore_iof_thr=-1))
    loc = jax.jit(lambda g: ga_targets.loc_targets(g, shapes, STRIDES, octave_base_scale=4))
    for k in range(6):
        g = _gt(d[f"gt{k}"])
        np.testing.assert_array_equal(np.asarray(assign(g).gt_index) + 1, d[f"gt_inds{k}"])
        t, w = (np.asarray(x) for x in loc(g))
        start = 0
        for lvl, (h, wd) in enumerate(shapes):
            sl = slice(start, start + h * wd)
            np.testing.assert_array_equal(t[sl].reshape(h, wd), d[f"loc_targets{lvl}"][k])
            np.testing.assert_array_equal(w[sl].reshape(h, wd), d[f"loc_weights{lvl}"][k])
            start += h * wd
    np.testing.assert_allclose(ga_targets.loc_normalizer(6, shapes), d["loc_avg_factor"],
                               rtol=1e-6)
    np.testing.assert_allclose(bounded_iou_loss(d["biou_pred"], d["biou_target"]), d["biou"],
                               rtol=1e-6, atol=1e-7)
