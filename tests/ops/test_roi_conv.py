"""RoIConv offsets (`jaxdet.ops.roi_conv.box_offsets`): hand-computed cases, Cascade RPN's
`anchor_offset` geometry re-implemented in NumPy, the deform conv reading the box's grid
points, and a jit(vmap) run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.deform_conv import deform_conv2d
from jaxdet.ops.roi_conv import box_offsets, regular_window


def _expand(dy, dx):
    """Per-axis offsets [k] -> the [2 k^2] tap-major (dy, dx) vector."""
    k = len(dy)
    return np.stack([np.repeat(dy, k), np.tile(dx, k)], axis=1).reshape(-1)


@pytest.mark.parametrize("grid", ["bins", "corners"])
def test_regular_window_gives_zero_offsets(grid):
    for stride in (8, 16):
        boxes = regular_window((5, 7), stride, grid=grid)
        off = box_offsets(boxes, stride, grid=grid)
        assert off.shape == (5, 7, 18)
        np.testing.assert_allclose(np.asarray(off), 0.0, atol=1e-5)


def test_hand_computed_shifted_scaled_box():
    # Location (i=2, j=3) of stride 8 is the input point (24, 16). The box
    # [16, 8, 64, 32] is x in [2, 8], y in [1, 4] in feature units.
    boxes = np.zeros((4, 5, 4), np.float32)
    boxes[2, 3] = [16, 8, 64, 32]
    bins = np.asarray(box_offsets(jnp.asarray(boxes), 8, grid="bins"))[2, 3]
    # bins: x = 2 + 6 (b + .5) / 3 = 3, 5, 7 against 2, 3, 4 ; y = 1.5, 2.5, 3.5 against 1, 2, 3
    np.testing.assert_allclose(bins, _expand([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]), atol=1e-6)
    corners = np.asarray(box_offsets(jnp.asarray(boxes), 8, grid="corners"))[2, 3]
    # corners: x = 2, 5, 8 against 2, 3, 4 ; y = 1, 2.5, 4 against 1, 2, 3
    np.testing.assert_allclose(corners, _expand([0.0, 0.5, 1.0], [0.0, 2.0, 4.0]), atol=1e-6)
    # a zero box at the origin: every tap samples (0, 0)
    np.testing.assert_allclose(np.asarray(box_offsets(jnp.asarray(boxes), 8))[0, 0],
                               _expand([1.0, 0.0, -1.0], [1.0, 0.0, -1.0]), atol=1e-6)


def _cascade_rpn_offsets(boxes: np.ndarray, stride: float) -> np.ndarray:
    """mmdetection's `StageCascadeRPNHead.anchor_offset` for one level (ks 3, dilation 1),
    written from its formula: [H, W, 4] -> [H, W, 18]."""
    h, w = boxes.shape[:2]
    a = boxes.reshape(-1, 4)
    idx = np.arange(-1, 2, dtype=np.float64)
    yy, xx = np.meshgrid(idx, idx, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    bw = (a[:, 2] - a[:, 0]) / stride / 2 - 1
    bh = (a[:, 3] - a[:, 1]) / stride / 2 - 1
    shape_x, shape_y = bw[:, None] * xx, bh[:, None] * yy
    gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ctr_x = (a[:, 0] + a[:, 2]) / 2 / stride - gx.reshape(-1)
    ctr_y = (a[:, 1] + a[:, 3]) / 2 / stride - gy.reshape(-1)
    off = np.stack([shape_y + ctr_y[:, None], shape_x + ctr_x[:, None]], axis=-1)
    return off.reshape(h, w, 18)


def test_corners_equal_cascade_rpn_anchor_offset():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-20, 120, size=(6, 9, 2))
    wh = rng.uniform(1, 90, size=(6, 9, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    for stride in (8, 32):
        got = box_offsets(jnp.asarray(boxes), stride, grid="corners")
        np.testing.assert_allclose(np.asarray(got), _cascade_rpn_offsets(boxes, stride),
                                   rtol=1e-5, atol=1e-4)


def test_deform_conv_reads_the_bin_centres():
    # One tap of weight 1: the deform conv's output is the map at that tap's point.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 9, 10, 1)).astype(np.float32)
    boxes = np.zeros((9, 10, 4), np.float32)
    # x in [2, 8], y in [1, 7] (feature units): bin centres x 3, 5, 7 and y 2, 4, 6
    boxes[4, 5] = [2 * 8, 1 * 8, 8 * 8, 7 * 8]
    off = box_offsets(jnp.asarray(boxes), 8)[None]
    for a, b, (yy, xx) in ((0, 0, (2, 3)), (1, 2, (4, 7)), (2, 1, (6, 5))):
        kernel = np.zeros((3, 3, 1, 1), np.float32)
        kernel[a, b] = 1.0
        y = deform_conv2d(jnp.asarray(x), off.reshape(1, 9, 10, 1, 9, 2), jnp.asarray(kernel),
                          padding=1)
        np.testing.assert_allclose(float(y[0, 4, 5, 0]), x[0, yy, xx, 0], rtol=1e-5, atol=1e-5)


def test_jit_vmap_equals_per_image():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 60, size=(3, 4, 5, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(1, 40, size=xy.shape)], -1),
                        jnp.float32)
    batched = jax.jit(jax.vmap(lambda b: box_offsets(b, 16)))(boxes)
    assert batched.shape == (3, 4, 5, 18)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(box_offsets(boxes[i], 16)),
                                   atol=1e-6)
