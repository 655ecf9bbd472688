"""jaxdet.losses.reppoints: pseudo-box transforms and the point loss, hand-computed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.losses import reppoints

# Four points (y, x): (0, 1), (2, 5), (4, 3), (6, 7); then a fifth far away.
PTS4 = np.array([0, 1, 2, 5, 4, 3, 6, 7], np.float32)
PTS5 = np.concatenate([PTS4, np.array([100, -50], np.float32)])
STD = np.sqrt(20.0 / 3.0)  # unbiased std of x (1, 5, 3, 7) and of y (0, 2, 4, 6)


def test_minmax_and_partial_minmax():
    np.testing.assert_allclose(reppoints.points_to_boxes(PTS4, "minmax"), [1, 0, 7, 6])
    np.testing.assert_allclose(reppoints.points_to_boxes(PTS5, "minmax"), [-50, 0, 7, 100])
    np.testing.assert_allclose(reppoints.points_to_boxes(PTS5, "partial_minmax"), [1, 0, 7, 6])
    with pytest.raises(ValueError):
        reppoints.points_to_boxes(PTS4, "bbox")


def test_moment_values_and_lambda_gradient():
    box = reppoints.points_to_boxes(PTS4, "moment")
    np.testing.assert_allclose(box, [4 - STD, 3 - STD, 4 + STD, 3 + STD], rtol=1e-6)
    lam = jnp.asarray([np.log(2.0), 0.0], jnp.float32)
    box = reppoints.points_to_boxes(jnp.asarray(PTS4)[None], "moment", lam)
    np.testing.assert_allclose(box, [[4 - 2 * STD, 3 - STD, 4 + 2 * STD, 3 + STD]], rtol=1e-6)
    # d x2 / d l_w = half width = 2 STD, scaled by moment_mul 0.01; l_h does not move x2.
    g = jax.grad(lambda v: reppoints.points_to_boxes(PTS4, "moment", v)[2])(lam)
    np.testing.assert_allclose(g, [0.01 * 2 * STD, 0.0], rtol=1e-5)
    np.testing.assert_allclose(reppoints.moment_lambda(lam), lam)


def test_transforms_commute_with_scale_and_shift():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5, 18)).astype(np.float32)
    shift = np.tile(np.array([3.0, -2.0], np.float32), 9)  # (y, x) = (3, -2)
    for t in reppoints.TRANSFORMS:
        a = reppoints.points_to_boxes(pts * 8 + shift, t)
        b = reppoints.points_to_boxes(pts, t) * 8 + np.array([-2, 3, -2, 3], np.float32)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_point_loss_hand_values():
    pred = np.array([[0, 0, 8, 8], [0, 0, 8, 8]], np.float32)
    tgt = np.array([[0, 0, 8, 9.6], [0, 0, 8.32, 8]], np.float32)
    # /8: differences 0.2 (>= beta: 0.2 - 0.055) and 0.04 (< beta: 0.5 * 0.04^2 / 0.11).
    got = reppoints.point_loss(pred, tgt, np.array([8.0, 8.0]))
    np.testing.assert_allclose(got, [0.145, 0.5 * 0.04**2 / 0.11], rtol=1e-4)


def test_degenerate_point_sets_have_finite_gradients():
    same = jnp.zeros((3, 18), jnp.float32)
    for t in reppoints.TRANSFORMS:
        g = jax.grad(lambda p, t=t: jnp.sum(reppoints.points_to_boxes(p, t)))(same)
        assert np.all(np.isfinite(np.asarray(g)))
    box = reppoints.points_to_boxes(same, "moment")
    np.testing.assert_array_equal(box, 0.0)
