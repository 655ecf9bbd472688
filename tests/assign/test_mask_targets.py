"""jaxdet.assign.mask_targets.mask_targets: hand-computed crops, edge cases, jit(vmap)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxdet.assign.mask_targets import mask_targets

SIZE = 28


def _masks(stride):
    """Two 32 x 32 masks at 1/stride: GT 0 a rectangle over mask cells [8, 24) x [8, 24),
    GT 1 all ones."""
    m = np.zeros((2, 32, 32), np.uint8)
    m[0, 8:24, 8:24] = 1
    m[1] = 1
    return m


def _left_half():
    t = np.zeros((SIZE, SIZE), np.float32)
    t[:, :SIZE // 2] = 1
    return t


@functools.cache
def _batched(stride):
    return jax.jit(jax.vmap(functools.partial(mask_targets, mask_stride=stride, size=SIZE)))


def _rois(stride):
    # In mask cells, times the stride: the rectangle's right half plus as much outside
    # (-> left half ones), the rectangle itself (-> all ones), a RoI on GT 1 reaching
    # outside the mask (clipped to it: all ones), a RoI without target, and a NaN RoI.
    cells = np.array(
        [[16, 8, 32, 24], [8, 8, 24, 24], [-40, 20, 30, 90], [0, 0, 10, 10],
         [np.nan, 0, 10, 10]], np.float32)
    return cells * stride, np.array([0, 0, 1, -1, 0], np.int32)


def test_crops_at_mask_strides_1_and_4_under_jit_vmap():
    for stride in (1, 4):
        rois, gt_index = _rois(stride)
        gt_index2 = gt_index.copy()
        gt_index2[:] = -1  # image 1: no positive RoI
        targets, valid = _batched(stride)(
            np.stack([rois, rois]), np.stack([gt_index, gt_index2]),
            np.stack([_masks(stride)] * 2))
        targets, valid = np.asarray(targets), np.asarray(valid)
        assert targets.shape == (2, 5, SIZE, SIZE) and targets.dtype == np.float32
        np.testing.assert_array_equal(targets[0, 0], _left_half())
        np.testing.assert_array_equal(targets[0, 1], np.ones((SIZE, SIZE)))
        np.testing.assert_array_equal(targets[0, 2], np.ones((SIZE, SIZE)))
        assert valid[0].tolist() == [True, True, True, False, True]
        assert np.all(targets[0, 3:] == 0)  # no target / NaN RoI: zeros
        assert not valid[1].any() and np.all(targets[1] == 0)


def test_empty_gt_and_no_rois():
    rois, gt_index = _rois(1)
    targets, valid = mask_targets(rois, gt_index, np.zeros((0, 32, 32), np.uint8), mask_stride=1)
    assert targets.shape == (5, SIZE, SIZE) and not np.asarray(valid).any()
    assert np.all(np.asarray(targets) == 0)
    targets, valid = mask_targets(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                                  _masks(1), mask_stride=1, size=14)
    assert targets.shape == (0, 14, 14) and valid.shape == (0,)
