"""jaxdet.assign.ga_targets: Guided Anchoring's location and shape targets."""

from __future__ import annotations

import jax
import numpy as np

from jaxdet.assign import ga_targets
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import GroundTruth

from . import numpy_ref as ref

STRIDES = (8, 16, 32)
SHAPES = ((16, 16), (8, 8), (4, 4))  # a 128 x 128 input


def _gt(boxes, valid=None, ignore=None) -> GroundTruth:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = len(boxes)
    return GroundTruth(boxes=boxes, labels=np.zeros((m,), np.int32),
                       valid=np.ones((m,), bool) if valid is None else np.asarray(valid),
                       ignore=np.zeros((m,), bool) if ignore is None else np.asarray(ignore))


def _levels(x):
    out, s = [], 0
    for h, w in SHAPES:
        out.append(np.asarray(x)[s:s + h * w].reshape(h, w))
        s += h * w
    return out


def _calc_region(box, ratio, hw):
    r, q = np.float32(ratio), np.float32(1 - ratio)
    v = [np.round(q * box[0] + r * box[2]), np.round(q * box[1] + r * box[3]),
         np.round(r * box[0] + q * box[2]), np.round(r * box[1] + q * box[3])]
    lim = [hw[1], hw[0], hw[1], hw[0]]
    return [int(np.clip(x, 0, m)) for x, m in zip(v, lim)]


def ref_loc(boxes, valid, ignore, base_scale=4, shapes=SHAPES, strides=STRIDES):
    """mmdetection `ga_loc_targets` of one image (its loop and slices, float32): per
    level (targets [h, w], weights [h, w])."""
    gts = np.asarray(boxes, np.float32)[np.asarray(valid, bool) & ~np.asarray(ignore, bool)]
    tgt = [np.zeros(s, np.float32) for s in shapes]
    wgt = [np.full(s, -1, np.float32) for s in shapes]
    ign = [np.zeros(s, np.float32) for s in shapes]
    r1, r2 = (1 - 0.2) / 2, (1 - 0.5) / 2
    scale = np.sqrt((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]))
    lvls = np.floor(np.log2(scale) - np.log2(np.float32(base_scale * strides[0])) + 0.5)
    lvls = np.clip(lvls, 0, len(shapes) - 1).astype(int)
    for g, lvl in zip(gts, lvls):
        ix1, iy1, ix2, iy2 = _calc_region(g / strides[lvl], r2, shapes[lvl])
        cx1, cy1, cx2, cy2 = _calc_region(g / strides[lvl], r1, shapes[lvl])
        tgt[lvl][cy1:cy2 + 1, cx1:cx2 + 1] = 1
        wgt[lvl][iy1:iy2 + 1, ix1:ix2 + 1] = 0
        wgt[lvl][cy1:cy2 + 1, cx1:cx2 + 1] = 1
        for d in (lvl - 1, lvl + 1):
            if 0 <= d < len(shapes):
                x1, y1, x2, y2 = _calc_region(g / strides[d], r2, shapes[d])
                ign[d][y1:y2 + 1, x1:x2 + 1] = 1
    for w, i in zip(wgt, ign):
        w[(w < 0) & (i > 0)] = 0
        w[w < 0] = 0.1
    return tgt, wgt


def _loc(gt):
    return ga_targets.loc_targets(gt, SHAPES, STRIDES, octave_base_scale=4)


def test_hand_case_regions_and_neighbour_ignore():
    # 32 x 32 GT: level floor(log2 32 - log2(4 * 8) + 0.5) = 0. On P3 the box is
    # (2, 2, 6, 6): centre round(3.6)..round(4.4) = 4..4, ignore round(3.0)..round(5.0)
    # = 3..5. On P4 (1, 1, 3, 3): ignore round(1.5)..round(2.5) = 2..2 (half to even).
    tgt, wgt = _loc(_gt([[16, 16, 48, 48]]))
    t, w = _levels(tgt), _levels(wgt)
    assert t[0].sum() == 1 and t[0][4, 4] == 1 and t[1].sum() == 0 and t[2].sum() == 0
    want0 = np.full((16, 16), 0.1, np.float32)
    want0[3:6, 3:6] = 0.0
    want0[4, 4] = 1.0
    np.testing.assert_array_equal(w[0], want0)
    want1 = np.full((8, 8), 0.1, np.float32)
    want1[2, 2] = 0.0
    np.testing.assert_array_equal(w[1], want1)
    np.testing.assert_array_equal(w[2], np.float32(0.1))  # two levels away: untouched


def test_later_gt_ignore_region_zeroes_earlier_centre():
    # Two GTs on level 0: the second one's ignore region covers the first's centre.
    tgt, wgt = _loc(_gt([[16, 16, 48, 48], [24, 24, 56, 56]]))
    t, w = _levels(tgt), _levels(wgt)
    want_t, want_w = ref_loc(np.array([[16, 16, 48, 48], [24, 24, 56, 56]]), [True, True],
                              [False, False])
    np.testing.assert_array_equal(t[0], want_t[0])
    np.testing.assert_array_equal(w[0], want_w[0])
    # (24, 24, 56, 56) / 8 = (3, 3, 7, 7): ignore 4..6 covers GT 0's centre (4, 4), its
    # own centre is 5..5: (4, 4) keeps target 1 with weight 0 (mmdetection's loop order).
    assert t[0][4, 4] == 1 and w[0][4, 4] == 0 and t[0][5, 5] == 1 and w[0][5, 5] == 1


def test_matches_reference_jit_vmap_padding_and_crowd():
    rng = np.random.default_rng(1)
    boxes, labels, valid, ignore = ref.random_gt(rng, 5, 9, (128, 128))
    gt = GroundTruth(boxes=boxes, labels=labels, valid=valid, ignore=ignore)
    tgt, wgt = jax.jit(jax.vmap(_loc))(gt)
    for b in range(5):
        want_t, want_w = ref_loc(np.nan_to_num(boxes[b]), valid[b], ignore[b])
        for got, want in ((tgt[b], want_t), (wgt[b], want_w)):
            for g, w_ in zip(_levels(got), want):
                np.testing.assert_array_equal(g, w_)
    # image 0 has no valid GT: no positive, every weight 0.1
    np.testing.assert_array_equal(tgt[0], 0.0)
    np.testing.assert_allclose(wgt[0], 0.1)


def test_shape_targets_sample_positives_only_from_valid_rows():
    image_hw = (128, 128)
    shapes = priors_lib.feature_shapes(image_hw, STRIDES)
    squares = priors_lib.make_anchors(shapes, STRIDES, octave_base_scale=4, scales_per_octave=1,
                                      ratios=(1.0,))
    approxs = priors_lib.make_anchors(shapes, STRIDES, octave_base_scale=4, scales_per_octave=3,
                                      ratios=(0.5, 1.0, 2.0))
    gt = _gt([[10, 10, 60, 40], [0, 0, 0, 0], [70, 70, 120, 120]], valid=[True, False, True],
             ignore=[False, False, True])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    batch = jax.tree_util.tree_map(lambda x: np.stack([x, x]), gt)
    boxes, w, avg = jax.jit(jax.vmap(
        lambda g, k: ga_targets.shape_targets(squares, approxs, g, k)))(batch, keys)
    w = np.asarray(w)
    assert w.sum() > 0 and set(np.unique(w)) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(boxes)[w > 0], np.tile([[10, 10, 60, 40]],
                                                                    (int(w[0].sum() + w[1].sum()),
                                                                     1)))
    np.testing.assert_array_equal(np.asarray(boxes)[w == 0], 0.0)
    # avg_factor = max(pos, 1) + max(neg, 1) with 256 samples, at most 128 positive
    np.testing.assert_allclose(np.asarray(avg), 256.0)
    assert (w.sum(1) <= 128).all()
