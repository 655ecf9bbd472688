"""jaxdet.ops.rcnn_postprocess: multiclass NMS (hand case, NumPy reference, edge cases) and
mask pasting (hand case, NumPy grid_sample reference), each under jit(vmap)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxdet.ops.rcnn_postprocess import paste_masks, rcnn_postprocess

from .numpy_nms import clustered_boxes, greedy_nms

# 4 RoIs x 2 classes. RoI 1 class 0 overlaps RoI 0 class 0 (IoU 0.82: suppressed), RoI 1
# class 1 and RoI 2 class 1 are under the threshold, RoI 2 class 0 is clipped to the image
# (h 100, w 120), RoI 3 is padding (its 0.95 never shows).
BOXES = np.array(
    [
        [[0, 0, 10, 10], [0, 0, 10, 10]],
        [[1, 0, 11, 10], [50, 50, 60, 60]],
        [[20, 20, 200, 40], [0, 0, 5, 5]],
        [[30, 30, 40, 40], [30, 30, 40, 40]],
    ],
    np.float32,
)
SCORES = np.array([[0.9, 0.8], [0.7, 0.04], [0.6, 0.01], [0.3, 0.95]], np.float32)
VALID = np.array([True, True, True, False])
HW = np.array([100, 120], np.int32)
CFG = dict(score_thr=0.05, nms_iou=0.5, max_det=5, pre_nms_topk=6)


def _check_hand_case(boxes, scores, classes, valid):
    boxes, scores, classes, valid = map(np.asarray, (boxes, scores, classes, valid))
    exp = [([0, 0, 10, 10], 0.9, 0), ([0, 0, 10, 10], 0.8, 1), ([20, 20, 120, 40], 0.6, 0)]
    k = len(exp)
    assert valid.tolist() == [True] * k + [False] * (5 - k)
    np.testing.assert_allclose(boxes[:k], [e[0] for e in exp])
    np.testing.assert_allclose(scores[:k], [e[1] for e in exp])
    assert classes.dtype == np.int32 and classes[:k].tolist() == [e[2] for e in exp]
    assert np.all(boxes[k:] == 0) and np.all(scores[k:] == 0) and np.all(classes[k:] == 0)


@functools.cache
def _batched():
    return jax.jit(jax.vmap(functools.partial(rcnn_postprocess, **CFG)))


def test_hand_case_and_edge_cases_under_jit_vmap():
    nan_scores = SCORES.copy()
    nan_scores[0] = np.nan
    out = _batched()(np.stack([BOXES] * 2), np.stack([SCORES, nan_scores]),
                     np.stack([VALID, np.ones(4, bool)]), np.stack([HW, HW]))
    _check_hand_case(*(o[0] for o in out))
    # Image 1: RoI 0's scores are NaN, RoI 3 is valid: RoI 1 class 0 is no longer suppressed.
    boxes, scores, classes, valid = (np.asarray(o[1]) for o in out)
    assert valid.tolist() == [True] * 4 + [False]
    np.testing.assert_allclose(scores[:4], [0.95, 0.7, 0.6, 0.3])
    assert classes[:4].tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(boxes[:4], [[30, 30, 40, 40], [1, 0, 11, 10], [20, 20, 120, 40],
                                           [30, 30, 40, 40]])
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    # No valid RoI / everything under the threshold: no detection.
    for s, v in ((SCORES, np.zeros(4, bool)), (SCORES * 0.01, VALID)):
        out = _batched()(np.stack([BOXES] * 2), np.stack([s] * 2), np.stack([v] * 2),
                         np.stack([HW, HW]))
        assert not np.asarray(out[3]).any() and np.all(np.asarray(out[1]) == 0)


def test_class_agnostic_boxes_and_pre_nms_topk():
    # [R, 1, 4]: every class uses the RoI's box; same as broadcasting it.
    agnostic = BOXES[:, :1]
    a = rcnn_postprocess(agnostic, SCORES, VALID, HW, **CFG)
    b = rcnn_postprocess(np.repeat(agnostic, 2, axis=1), SCORES, VALID, HW, **CFG)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Only the 2 best candidates (0.9 and 0.8) enter NMS.
    _, scores, _, valid = rcnn_postprocess(BOXES, SCORES, VALID, HW, **{**CFG, "pre_nms_topk": 2})
    assert np.asarray(valid).tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(np.asarray(scores)[:2], [0.9, 0.8])


def test_against_numpy_multiclass_nms():
    rng = np.random.default_rng(0)
    r, c = 40, 3
    boxes, obj = clustered_boxes(rng, r * c, num_objects=8, size=150)
    boxes = boxes.reshape(r, c, 4)
    scores = rng.uniform(size=(r, c)).astype(np.float32) ** 2
    valid = rng.uniform(size=r) > 0.2
    hw = np.array([120, 140], np.int32)
    kw = dict(score_thr=0.05, nms_iou=0.5, max_det=30, pre_nms_topk=0)
    out = [np.asarray(o) for o in rcnn_postprocess(boxes, scores, valid, hw, **kw)]
    # mmdet multiclass_nms: candidates with score > thr, clipped, class-aware NMS, first max_det.
    roi, cls = np.nonzero((scores > 0.05) & valid[:, None])
    b = boxes[roi, cls].copy()
    b[:, 0::2] = b[:, 0::2].clip(0, 140)
    b[:, 1::2] = b[:, 1::2].clip(0, 120)
    s = scores[roi, cls]
    kept = greedy_nms(b, s, 0.5, classes=cls)[:30]
    k = len(kept)
    assert 10 < k <= 30 and out[3].sum() == k
    np.testing.assert_allclose(out[0][:k], b[kept], atol=1e-5)
    np.testing.assert_allclose(out[1][:k], s[kept])
    np.testing.assert_array_equal(out[2][:k], cls[kept])


def _np_paste(mask, box, out_hw):
    """mmdet _do_paste_mask for one mask: torch grid_sample(align_corners=False), zeros."""
    s_h, s_w = mask.shape
    x0, y0, x1, y1 = box
    out = np.zeros(out_hw)
    for i in range(out_hw[0]):
        gy = (i + 0.5 - y0) / (y1 - y0) * 2 - 1
        iy = ((gy + 1) * s_h - 1) / 2
        for j in range(out_hw[1]):
            gx = (j + 0.5 - x0) / (x1 - x0) * 2 - 1
            ix = ((gx + 1) * s_w - 1) / 2
            ya, xa = int(np.floor(iy)), int(np.floor(ix))
            for yy, wy in ((ya, 1 - (iy - ya)), (ya + 1, iy - ya)):
                for xx, wx in ((xa, 1 - (ix - xa)), (xa + 1, ix - xa)):
                    if 0 <= yy < s_h and 0 <= xx < s_w:
                        out[i, j] += wy * wx * mask[yy, xx]
    return out


def test_paste_masks_under_jit_vmap():
    rng = np.random.default_rng(1)
    masks = np.stack([
        np.stack([np.ones((28, 28)), rng.uniform(size=(28, 28))]),
        np.stack([rng.uniform(size=(28, 28)), np.full((28, 28), np.nan)]),
    ]).astype(np.float32)
    # Box in input pixels; stride 2 -> [10, 20, 30, 44] in the 64 x 48 output frame (sides of
    # at most 28 output pixels: the edge pixels fall inside / outside the mask's sample range).
    boxes = np.array([[[20, 40, 60, 88], [13.4, 7.2, 71.8, 50.6]],
                      [[-20.6, 30.2, 40.6, 150.2], [30, 30, 30, 50]]], np.float32)
    fn = jax.jit(jax.vmap(functools.partial(paste_masks, out_hw=(64, 48), stride=2)))
    out = np.asarray(fn(masks, boxes))
    assert out.shape == (2, 2, 64, 48) and out.dtype == np.float32
    expect = np.zeros((64, 48))
    expect[20:44, 10:30] = 1  # ones inside the box, zeros outside
    np.testing.assert_allclose(out[0, 0], expect, atol=1e-6)
    for b, k in ((0, 1), (1, 0)):
        np.testing.assert_allclose(out[b, k], _np_paste(masks[b, k], boxes[b, k] / 2, (64, 48)),
                                   atol=1e-5)
    assert np.all(out[1, 1] == 0)  # zero-width box (and NaN mask): zeros
    assert out.min() >= 0 and out.max() <= 1
