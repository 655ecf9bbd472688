import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.losses.centerness import centerness_loss, centerness_targets


def test_known_values():
    ltrb = jnp.array(
        [
            [1.0, 1.0, 1.0, 1.0],  # centre: 1
            [1.0, 3.0, 2.0, 4.0],  # sqrt(1/2 * 3/4)
            [0.0, 1.0, 1.0, 1.0],  # on the left side: 0
            [-1.0, 2.0, 3.0, 1.0],  # outside (negative distance): 0
            [-1.0, -2.0, -3.0, -1.0],  # all negative: ratios would be positive, still 0
            [0.0, 0.0, 0.0, 0.0],  # padding: 0
        ]
    )
    out = centerness_targets(ltrb)
    np.testing.assert_allclose(out, [1.0, math.sqrt(0.375), 0, 0, 0, 0], rtol=1e-6)


def test_matches_mmdet_formula_on_positives():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.1, 50, (100, 4))
    lr, tb = d[:, [0, 2]], d[:, [1, 3]]
    ref = np.sqrt(lr.min(-1) / lr.max(-1) * tb.min(-1) / tb.max(-1))
    np.testing.assert_allclose(centerness_targets(jnp.asarray(d, jnp.float32)), ref, rtol=1e-5)


def test_never_nan_and_finite_grads():
    rng = np.random.default_rng(1)
    d = jnp.asarray(rng.normal(0, 5, (3, 200, 4)), jnp.bfloat16)
    out = jax.jit(jax.vmap(centerness_targets))(d)
    assert out.dtype == jnp.float32 and np.isfinite(out).all()
    assert ((out >= 0) & (out <= 1)).all()
    zeros = jnp.zeros((2, 4))
    g = jax.grad(lambda x: centerness_targets(x).sum())(jnp.concatenate([zeros, d[0, :5]]))
    assert np.isfinite(g).all()


def test_loss_is_bce():
    t = centerness_targets(jnp.array([[1.0, 3.0, 2.0, 4.0]]))
    loss = centerness_loss(jnp.zeros(1), t)
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)
    x = jnp.array([100.0, -100.0])
    g = jax.grad(lambda x: centerness_loss(x, jnp.array([0.0, 1.0])).sum())(x)
    np.testing.assert_allclose(g, [1.0, -1.0], atol=1e-6)
