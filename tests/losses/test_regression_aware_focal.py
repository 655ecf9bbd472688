"""HAMBox's regression-aware focal loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.losses.focal import sigmoid_focal_loss
from jaxdet.losses.regression_aware_focal import regression_aware_focal_loss


def test_hand_computed():
    # One positive anchor of class 0 (logit 0, p = 0.5) compensated at IoU 0.6, and a
    # negative (weight 1): focal(0.5, t=1) = 0.25 * 0.25 * ln 2, (t=0) 0.75 * 0.25 * ln 2.
    logits = jnp.zeros((2, 2))
    t = jnp.asarray([[1.0, 0.0], [0.0, 0.0]])
    got = regression_aware_focal_loss(logits, t, jnp.asarray([0.6, 1.0]))
    ln2 = np.log(2.0)
    want = [[0.6 * 0.0625 * ln2, 0.6 * 0.1875 * ln2], [0.1875 * ln2, 0.1875 * ln2]]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_weight_one_is_focal_and_weight_carries_no_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(scale=3, size=(3, 5, 4)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 2, size=(3, 5, 4)), jnp.float32)
    np.testing.assert_allclose(
        regression_aware_focal_loss(x, t, jnp.ones((3, 5))), sigmoid_focal_loss(x, t), rtol=1e-6
    )
    w = jnp.asarray(rng.uniform(size=(3, 5)), jnp.float32)
    gw = jax.grad(lambda w: jnp.sum(regression_aware_focal_loss(x, t, w)))(w)
    assert not np.any(np.asarray(gw))
    gx = jax.grad(lambda x: jnp.sum(regression_aware_focal_loss(x, t, w)))(x)
    np.testing.assert_allclose(
        gx, jax.grad(lambda x: jnp.sum(sigmoid_focal_loss(x, t) * w[..., None]))(x), rtol=1e-5
    )
    # Zero weight (ignored anchors): no loss; extreme logits stay finite.
    big = jnp.asarray([[100.0, -100.0]])
    out = regression_aware_focal_loss(big, jnp.asarray([[0.0, 1.0]]), jnp.zeros((1,)))
    assert np.all(np.asarray(out) == 0)


def test_jit_vmap():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 2, size=(2, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.uniform(size=(2, 6)), jnp.float32)
    got = jax.jit(jax.vmap(regression_aware_focal_loss))(x, t, w)
    np.testing.assert_allclose(got, regression_aware_focal_loss(x, t, w), rtol=1e-6)
